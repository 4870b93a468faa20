//! The desired datapath state of one gateway node, computed from the merged
//! view (a pure function: no kernel, no I/O — the interfaces of the local
//! pods are an input).
//!
//! - **Local pods**: the endpoints of the local cluster whose `node_name` is
//!   this node. Each needs its host-side interface (found on the node by the
//!   caller); a pod without one is reported as pending and left out.
//! - **Remote endpoints**: the endpoints of every other cluster, with their
//!   identity and, as tunnel endpoint, the gateway of their cluster: the Node
//!   record with `gateway = true` there (the first by name if several), its
//!   first IPv4 InternalIP.
//! - **Remote pod CIDRs**: every pod CIDR of every remote Node, behind its
//!   cluster's gateway, with identity `world` (a pod the agent does not know
//!   yet is still routed; policy treats it as outside the mesh).
//! - **Policy** and **global services**: see [`super::policy`] and
//!   [`super::services`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use clustermesh_proto::v1::NamedPort;

use super::labels::IdentityLabels;
use super::policy::{self, LocalEndpoint, PeerEndpoint, PolicyInputs, PolicyReport};
use super::services::{self, ServiceIds};
use super::view::View;
use crate::datapath::types::IDENTITY_WORLD;
use crate::datapath::{DesiredState, Endpoint, IpcacheEntry, Ipv4Prefix, Location};

/// Destination MAC used while a pod's MAC is unknown. Delivery with
/// `bpf_redirect_peer` (the agent's default) does not look at it; with plain
/// redirects the pod's stack accepts a unicast IP packet in an L2 broadcast.
pub const UNKNOWN_POD_MAC: [u8; 6] = [0xff; 6];

/// A local pod's host-side interface, as found on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIface {
    pub name: String,
    pub ifindex: u32,
    pub host_mac: [u8; 6],
    /// From the node's neighbour table, once known.
    pub pod_mac: Option<[u8; 6]>,
}

/// A pod of this node, from its endpoint record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPod {
    pub ip: Ipv4Addr,
    pub identity: u32,
    pub namespace: String,
    pub pod: String,
    pub named_ports: Vec<NamedPort>,
}

/// What the computation produced, and what it had to leave out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Computed {
    pub desired: DesiredState,
    /// Remote prefixes and the peer gateway (underlay IP) behind which they
    /// live: the routes of native-routing mode.
    pub routes: BTreeMap<Ipv4Prefix, Ipv4Addr>,
    /// Gateway (underlay IP) per remote cluster.
    pub gateways: BTreeMap<String, Ipv4Addr>,
    /// Local pods whose interface was not found (not programmed yet).
    pub pending: Vec<Ipv4Addr>,
    /// Local pods programmed.
    pub local_pods: usize,
    /// Remote endpoints programmed.
    pub remote_endpoints: usize,
    /// Remote endpoints left out: their cluster has no gateway node.
    pub no_gateway: usize,
    /// Endpoints left out: identity 0 (not allocated yet) or an unparsable IP.
    pub invalid_endpoints: usize,
    pub policy: PolicyReport,
}

/// The first IPv4 InternalIP of the gateway node of each cluster.
pub fn gateways(view: &View) -> BTreeMap<String, Ipv4Addr> {
    let mut out = BTreeMap::new();
    // BTreeMap order: (cluster, node name), so the first gateway by name wins.
    for ((cluster, _), node) in &view.nodes {
        if !node.gateway || out.contains_key(cluster) {
            continue;
        }
        if let Some(ip) = node
            .internal_ips
            .iter()
            .find_map(|s| s.parse::<Ipv4Addr>().ok())
        {
            out.insert(cluster.clone(), ip);
        }
    }
    out
}

/// The endpoints of the local cluster that live on `node_name`.
pub fn local_pods(view: &View, node_name: &str) -> BTreeMap<Ipv4Addr, LocalPod> {
    let local = view.local_cluster();
    view.endpoints
        .values()
        .filter(|e| e.cluster == local && e.node_name == node_name)
        .filter_map(|e| {
            Some((
                e.ip.parse().ok()?,
                LocalPod {
                    ip: e.ip.parse().ok()?,
                    identity: e.identity,
                    namespace: e.namespace.clone(),
                    pod: e.pod.clone(),
                    named_ports: e.named_ports.clone(),
                },
            ))
        })
        .collect()
}

fn valid_identity(id: u32) -> bool {
    id != 0 && id <= crate::datapath::types::IDENTITY_MAX
}

/// Computes the desired state for node `node_name`.
pub fn compute(
    view: &View,
    node_name: &str,
    ifaces: &BTreeMap<Ipv4Addr, PodIface>,
    ids: &mut ServiceIds,
) -> Computed {
    let mut c = Computed::default();
    let local_cluster = view.local_cluster().to_string();
    let d = &mut c.desired;

    // Local pods.
    let mut local_ids = BTreeSet::new();
    for (ip, pod) in local_pods(view, node_name) {
        if !valid_identity(pod.identity) {
            c.invalid_endpoints += 1;
            continue;
        }
        let Some(iface) = ifaces.get(&ip) else {
            c.pending.push(ip);
            continue;
        };
        d.endpoints.insert(
            iface.ifindex,
            Endpoint {
                pod_mac: iface.pod_mac.unwrap_or(UNKNOWN_POD_MAC),
                host_mac: iface.host_mac,
                identity: pod.identity,
            },
        );
        d.ipcache.insert(
            Ipv4Prefix::host(ip),
            IpcacheEntry {
                identity: pod.identity,
                location: Location::Local {
                    ifindex: iface.ifindex,
                },
            },
        );
        local_ids.insert(pod.identity);
        c.local_pods += 1;
    }

    // Remote pod CIDRs, then remote endpoints (more specific, may override a /32 CIDR).
    c.gateways = gateways(view);
    c.gateways.remove(&local_cluster);
    for ((cluster, _), node) in &view.nodes {
        let Some(gw) = c.gateways.get(cluster) else {
            continue;
        };
        for prefix in node
            .pod_cidrs
            .iter()
            .filter_map(|s| s.parse::<Ipv4Prefix>().ok())
        {
            if d.ipcache
                .get(&prefix)
                .is_some_and(|e| matches!(e.location, Location::Local { .. }))
            {
                continue;
            }
            c.routes.insert(prefix, *gw);
            d.ipcache.insert(
                prefix,
                IpcacheEntry {
                    identity: IDENTITY_WORLD,
                    location: Location::Remote {
                        tunnel_endpoint: *gw,
                    },
                },
            );
        }
    }
    for e in view
        .endpoints
        .values()
        .filter(|e| e.cluster != local_cluster)
    {
        let (Ok(ip), true) = (e.ip.parse::<Ipv4Addr>(), valid_identity(e.identity)) else {
            c.invalid_endpoints += 1;
            continue;
        };
        let Some(gw) = c.gateways.get(&e.cluster) else {
            c.no_gateway += 1;
            continue;
        };
        let prefix = Ipv4Prefix::host(ip);
        if d.ipcache
            .get(&prefix)
            .is_some_and(|x| matches!(x.location, Location::Local { .. }))
        {
            continue;
        }
        if !c.routes.iter().any(|(p, g)| g == gw && covers(p, ip)) {
            c.routes.insert(prefix, *gw);
        }
        d.ipcache.insert(
            prefix,
            IpcacheEntry {
                identity: e.identity,
                location: Location::Remote {
                    tunnel_endpoint: *gw,
                },
            },
        );
        c.remote_endpoints += 1;
    }

    // Policy.
    let identities: BTreeMap<u32, IdentityLabels> = view
        .identities
        .values()
        .map(|i| (i.id, IdentityLabels::from_record(i)))
        .collect();
    let local_endpoints: Vec<LocalEndpoint> = local_pods(view, node_name)
        .into_iter()
        .filter(|(ip, p)| valid_identity(p.identity) && ifaces.contains_key(ip))
        .map(|(ip, p)| LocalEndpoint {
            ip,
            identity: p.identity,
            namespace: p.namespace,
            named_ports: p.named_ports,
        })
        .collect();
    let mut endpoints: BTreeMap<u32, Vec<PeerEndpoint>> = BTreeMap::new();
    for e in view
        .endpoints
        .values()
        .filter(|e| !e.named_ports.is_empty())
    {
        if let Ok(ip) = e.ip.parse() {
            endpoints.entry(e.identity).or_default().push(PeerEndpoint {
                ip,
                named_ports: e.named_ports.clone(),
            });
        }
    }
    let compiled = policy::compile(
        &PolicyInputs {
            local: &local_endpoints,
            identities: &identities,
            endpoints: &endpoints,
        },
        view.policies.values(),
    );
    d.policy = compiled.rules;
    d.enforced = compiled.enforced;
    d.policy_cidrs = compiled.cidrs;
    c.policy = compiled.report;

    // Global services.
    d.services = services::compute(&local_cluster, view.services.values(), ids);
    c
}

/// Whether `prefix` contains `ip`.
pub fn covers(prefix: &Ipv4Prefix, ip: Ipv4Addr) -> bool {
    Ipv4Prefix::new(ip, prefix.len()).is_ok_and(|p| p.addr() == prefix.addr())
}
