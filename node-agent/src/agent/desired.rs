//! The desired datapath state of one node (gateway or not), computed from the
//! merged view (a pure function: no kernel, no I/O — the interfaces of the
//! local pods are an input). DESIGN §7 has the four hops.
//!
//! - **Local pods**: the endpoints of the local cluster whose `node_name` is
//!   this node. Each needs its host-side interface (found on the node by the
//!   caller); a pod without one is reported as pending and left out.
//! - **This cluster's other nodes**: their endpoints and pod CIDRs, and the
//!   `--service-cidr` ranges, as `Cluster` entries: `from_pod` never touches
//!   traffic to them (the CNI's job); a gateway relays a peer's packet for
//!   one of those pods to its node's InternalIP.
//! - **Remote endpoints and pod CIDRs**: every other cluster's, tunnelled to
//!   the gateway [`super::gateways::plan`] chose for that cluster: this
//!   cluster's gateway from an ordinary node, the peer's from a gateway. Pod
//!   CIDRs carry identity `world` (a pod the agent does not know yet is still
//!   routed; policy treats it as outside the mesh).
//! - **Tunnel senders**: who may send which identities (DESIGN §10).
//! - **Policy** and **global services**: see [`super::policy`] and
//!   [`super::services`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use clustermesh_proto::v1::NamedPort;

use super::gateways::{self, GatewayPlan};
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
    /// Remote prefixes and the gateway (underlay IP) they are sent to: the
    /// routes of native-routing mode.
    pub routes: BTreeMap<Ipv4Prefix, Ipv4Addr>,
    /// Where each remote cluster's traffic goes, who may send, this node's role.
    pub plan: GatewayPlan,
    /// Local pods whose interface was not found (not programmed yet).
    pub pending: Vec<Ipv4Addr>,
    /// Local pods programmed.
    pub local_pods: usize,
    /// Remote endpoints programmed.
    pub remote_endpoints: usize,
    /// Remote endpoints left out: no usable gateway towards their cluster.
    pub no_gateway: usize,
    /// This cluster's endpoints on other nodes (passed through; relayed by gateways).
    pub cluster_endpoints: usize,
    /// Endpoints left out: identity 0 (not allocated yet) or an unparsable IP.
    pub invalid_endpoints: usize,
    pub policy: PolicyReport,
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

/// Computes the desired state for node `node_name`; `service_cidrs` are this
/// cluster's service ranges (left to the CNI like its other nodes' pods).
pub fn compute(
    view: &View,
    node_name: &str,
    ifaces: &BTreeMap<Ipv4Addr, PodIface>,
    ids: &mut ServiceIds,
    service_cidrs: &[Ipv4Prefix],
) -> Computed {
    let mut c = Computed::default();
    let local_cluster = view.local_cluster().to_string();
    let shift = view
        .cluster
        .as_ref()
        .and_then(|ci| {
            clustermesh_proto::ClusterMode::from_max_clusters(ci.max_connected_clusters).ok()
        })
        .map(|m| m.cluster_shift())
        .unwrap_or(16);
    c.plan = gateways::plan(view, node_name, shift);
    let d = &mut c.desired;
    d.tunnel_sources = c.plan.tunnel_sources.clone();

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
    let is_local = |d: &DesiredState, p: &Ipv4Prefix| {
        d.ipcache
            .get(p)
            .is_some_and(|e| matches!(e.location, Location::Local { .. }))
    };

    // This cluster: service ranges, other nodes' pod CIDRs, then their pods.
    for prefix in service_cidrs {
        d.ipcache.insert(
            *prefix,
            IpcacheEntry {
                identity: IDENTITY_WORLD,
                location: Location::Cluster { node: None },
            },
        );
    }
    let mut node_ips: BTreeMap<&str, Ipv4Addr> = BTreeMap::new();
    for ((cluster, name), node) in &view.nodes {
        if *cluster != local_cluster {
            continue;
        }
        let ip = clustermesh_proto::node_address::internal(node);
        if let Some(ip) = ip {
            node_ips.insert(name.as_str(), ip);
        }
        let own = name == node_name;
        for prefix in node
            .pod_cidrs
            .iter()
            .filter_map(|s| s.parse::<Ipv4Prefix>().ok())
        {
            if is_local(d, &prefix) {
                continue;
            }
            d.ipcache.insert(
                prefix,
                IpcacheEntry {
                    identity: IDENTITY_WORLD,
                    location: Location::Cluster {
                        node: if own { None } else { ip },
                    },
                },
            );
        }
    }
    for e in view
        .endpoints
        .values()
        .filter(|e| e.cluster == local_cluster && e.node_name != node_name)
    {
        let (Ok(ip), true) = (e.ip.parse::<Ipv4Addr>(), valid_identity(e.identity)) else {
            continue;
        };
        let prefix = Ipv4Prefix::host(ip);
        if is_local(d, &prefix) {
            continue;
        }
        let node = node_ips
            .get(e.node_name.as_str())
            .copied()
            .or_else(|| e.node_ip.parse().ok());
        d.ipcache.insert(
            prefix,
            IpcacheEntry {
                identity: e.identity,
                location: Location::Cluster { node },
            },
        );
        c.cluster_endpoints += 1;
    }

    // Remote pod CIDRs, then remote endpoints (more specific, may override a /32 CIDR).
    for ((cluster, _), node) in &view.nodes {
        if *cluster == local_cluster {
            continue;
        }
        let Some(gw) = c.plan.via.get(cluster).copied() else {
            continue;
        };
        for prefix in node
            .pod_cidrs
            .iter()
            .filter_map(|s| s.parse::<Ipv4Prefix>().ok())
        {
            if is_local(d, &prefix) {
                continue;
            }
            c.routes.insert(prefix, gw);
            d.ipcache.insert(
                prefix,
                IpcacheEntry {
                    identity: IDENTITY_WORLD,
                    location: Location::Remote {
                        tunnel_endpoint: gw,
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
        let Some(gw) = c.plan.via.get(&e.cluster).copied() else {
            c.no_gateway += 1;
            continue;
        };
        let prefix = Ipv4Prefix::host(ip);
        if is_local(d, &prefix) {
            continue;
        }
        // A /32 route only for endpoints outside every CIDR routed to the
        // same gateway: one lookup per prefix length, not a scan of the routes.
        if !routed_via(&c.routes, ip, gw) {
            c.routes.insert(prefix, gw);
        }
        d.ipcache.insert(
            prefix,
            IpcacheEntry {
                identity: e.identity,
                location: Location::Remote {
                    tunnel_endpoint: gw,
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

/// Whether some prefix in `routes` that contains `ip` goes to `gw` (at most
/// 33 map lookups, whatever the number of routes).
pub fn routed_via(routes: &BTreeMap<Ipv4Prefix, Ipv4Addr>, ip: Ipv4Addr, gw: Ipv4Addr) -> bool {
    (0..=32u8).any(|len| {
        Ipv4Prefix::new(ip, len)
            .ok()
            .and_then(|p| routes.get(&p))
            .is_some_and(|g| *g == gw)
    })
}

/// Whether `prefix` contains `ip`.
pub fn covers(prefix: &Ipv4Prefix, ip: Ipv4Addr) -> bool {
    Ipv4Prefix::new(ip, prefix.len()).is_ok_and(|p| p.addr() == prefix.addr())
}
