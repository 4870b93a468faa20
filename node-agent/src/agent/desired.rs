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
//!
//! The state is made of parts, each a pure function of the view:
//! [`local_part`] (this node and this cluster), one [`remote_part`] per
//! remote cluster, the policy and the services. [`super::incremental`]
//! keeps them and recomputes only those a change touches; [`compute`] is
//! the same composition built from nothing. Where two parts give the same
//! prefix, a local pod wins, then a remote endpoint (of the last cluster
//! by name), then a remote pod CIDR (likewise), then this cluster's entry.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use clustermesh_proto::v1::NamedPort;

use super::gateways::GatewayPlan;
use super::incremental::Incremental;
use super::labels::IdentityLabels;
use super::policy::{
    self, CompiledPolicy, LocalEndpoint, PeerEndpoint, PolicyInputs, PolicyReport,
};
use super::services::ServiceIds;
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
    /// routes of native-routing mode. Filled by [`compute`]; the reconciler
    /// asks [`Incremental::routes`] (native mode only).
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
    view.endpoints
        .of_cluster(view.local_cluster())
        .map(|(_, e)| e)
        .filter(|e| e.node_name() == node_name)
        .filter_map(|e| {
            let ip = e.ip()?;
            Some((
                ip,
                LocalPod {
                    ip,
                    identity: e.identity,
                    namespace: e.namespace().to_owned(),
                    pod: e.pod().to_owned(),
                    named_ports: e.named_ports().to_vec(),
                },
            ))
        })
        .collect()
}

fn valid_identity(id: u32) -> bool {
    id != 0 && id <= crate::datapath::types::IDENTITY_MAX
}

/// This node's pods, this cluster's other nodes and pods, and the service
/// ranges: the part of the state that does not come from a peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalPart {
    pub ipcache: BTreeMap<Ipv4Prefix, IpcacheEntry>,
    pub endpoints: BTreeMap<u32, Endpoint>,
    /// This node's programmed pods, as policy sees them.
    pub policy_endpoints: Vec<LocalEndpoint>,
    pub pending: Vec<Ipv4Addr>,
    pub local_pods: usize,
    pub cluster_endpoints: usize,
    pub invalid_endpoints: usize,
}

impl LocalPart {
    /// Whether `p` is one of this node's pods (which no peer overrides).
    pub fn is_local(&self, p: &Ipv4Prefix) -> bool {
        self.ipcache
            .get(p)
            .is_some_and(|e| matches!(e.location, Location::Local { .. }))
    }
}

/// The local part for node `node_name`; `service_cidrs` are this cluster's
/// service ranges (left to the CNI like its other nodes' pods).
pub fn local_part(
    view: &View,
    node_name: &str,
    ifaces: &BTreeMap<Ipv4Addr, PodIface>,
    service_cidrs: &[Ipv4Prefix],
) -> LocalPart {
    let mut c = LocalPart::default();
    let local_cluster = view.local_cluster();
    for (ip, pod) in local_pods(view, node_name) {
        if !valid_identity(pod.identity) {
            c.invalid_endpoints += 1;
            continue;
        }
        let Some(iface) = ifaces.get(&ip) else {
            c.pending.push(ip);
            continue;
        };
        c.endpoints.insert(
            iface.ifindex,
            Endpoint {
                pod_mac: iface.pod_mac.unwrap_or(UNKNOWN_POD_MAC),
                host_mac: iface.host_mac,
                identity: pod.identity,
            },
        );
        c.ipcache.insert(
            Ipv4Prefix::host(ip),
            IpcacheEntry {
                identity: pod.identity,
                location: Location::Local {
                    ifindex: iface.ifindex,
                },
            },
        );
        c.policy_endpoints.push(LocalEndpoint {
            ip,
            identity: pod.identity,
            namespace: pod.namespace,
            named_ports: pod.named_ports,
        });
        c.local_pods += 1;
    }

    // This cluster: service ranges, other nodes' pod CIDRs, then their pods.
    for prefix in service_cidrs {
        c.ipcache.insert(
            *prefix,
            IpcacheEntry {
                identity: IDENTITY_WORLD,
                location: Location::Cluster { node: None },
            },
        );
    }
    let mut node_ips: BTreeMap<&str, Ipv4Addr> = BTreeMap::new();
    for ((_, name), node) in View::of_cluster(&view.nodes, local_cluster) {
        let ip = node.internal();
        if let Some(ip) = ip {
            node_ips.insert(name.as_str(), ip);
        }
        let own = name == node_name;
        for &prefix in node.pod_cidrs.iter() {
            if c.is_local(&prefix) {
                continue;
            }
            c.ipcache.insert(
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
    for (_, e) in view.endpoints.of_cluster(local_cluster) {
        if e.node_name() == node_name {
            continue;
        }
        let (Some(ip), true) = (e.ip(), valid_identity(e.identity)) else {
            continue;
        };
        let prefix = Ipv4Prefix::host(ip);
        if c.is_local(&prefix) {
            continue;
        }
        let node = node_ips
            .get(e.node_name())
            .copied()
            .or_else(|| e.node_ip().parse().ok());
        c.ipcache.insert(
            prefix,
            IpcacheEntry {
                identity: e.identity,
                location: Location::Cluster { node },
            },
        );
        c.cluster_endpoints += 1;
    }
    c
}

/// One remote cluster's pod CIDRs and endpoints, tunnelled to `via` (the
/// gateway the plan chose for it; None: no path, nothing programmed).
///
/// Every entry of a part goes to `via`, and a pod CIDR always carries
/// identity `world`: a part keeps the prefixes and each endpoint's
/// identity, and makes the [`IpcacheEntry`] when asked
/// ([`RemotePart::endpoint`], [`RemotePart::cidr`]). At 250,000 remote
/// endpoints that is ~12 B per endpoint against ~39 B for a map of whole
/// entries that inserts had left partly empty (docs/benchmarks.md).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemotePart {
    pub via: Option<Ipv4Addr>,
    /// The pod CIDRs of the cluster's nodes (identity `world`).
    pub cidrs: BTreeSet<Ipv4Prefix>,
    /// Each endpoint's identity, by its /32.
    pub endpoints: BTreeMap<Ipv4Prefix, u32>,
    /// Valid endpoints left out for want of a gateway.
    pub no_gateway: usize,
    /// Endpoints with identity 0 (or out of range) or an unparsable IP.
    pub invalid_endpoints: usize,
}

/// The remote part of `cluster`. Its maps are built from sorted entries
/// (`collect` bulk-builds a B-tree with full nodes).
pub fn remote_part(view: &View, cluster: &str, via: Option<Ipv4Addr>) -> RemotePart {
    let mut r = RemotePart {
        via,
        ..Default::default()
    };
    if via.is_some() {
        r.cidrs = View::of_cluster(&view.nodes, cluster)
            .flat_map(|(_, node)| node.pod_cidrs.iter().copied())
            .collect();
    }
    let mut endpoints = Vec::new();
    for (_, e) in view.endpoints.of_cluster(cluster) {
        let (Some(ip), true) = (e.ip(), valid_identity(e.identity)) else {
            r.invalid_endpoints += 1;
            continue;
        };
        if via.is_none() {
            r.no_gateway += 1;
            continue;
        }
        endpoints.push((Ipv4Prefix::host(ip), e.identity));
    }
    // Two records of one IP: the later key wins, as inserts in key order did.
    r.endpoints = endpoints.into_iter().collect();
    r
}

impl RemotePart {
    fn entry(&self, identity: u32) -> Option<IpcacheEntry> {
        self.via.map(|gw| IpcacheEntry {
            identity,
            location: Location::Remote {
                tunnel_endpoint: gw,
            },
        })
    }

    /// The entry of the endpoint at `p` (a /32), if the cluster has one.
    pub fn endpoint(&self, p: &Ipv4Prefix) -> Option<IpcacheEntry> {
        self.entry(*self.endpoints.get(p)?)
    }

    /// The entry of the pod CIDR `p`, if a node of the cluster announces it.
    pub fn cidr(&self, p: &Ipv4Prefix) -> Option<IpcacheEntry> {
        self.cidrs
            .contains(p)
            .then(|| self.entry(IDENTITY_WORLD))
            .flatten()
    }

    /// The pod CIDRs' entries, in prefix order.
    pub fn cidr_entries(&self) -> impl Iterator<Item = (Ipv4Prefix, IpcacheEntry)> + '_ {
        self.cidrs
            .iter()
            .filter_map(|p| Some((*p, self.entry(IDENTITY_WORLD)?)))
    }

    /// The endpoints' entries, in prefix order.
    pub fn endpoint_entries(&self) -> impl Iterator<Item = (Ipv4Prefix, IpcacheEntry)> + '_ {
        self.endpoints
            .iter()
            .filter_map(|(p, id)| Some((*p, self.entry(*id)?)))
    }

    /// Every prefix the part gives an entry for.
    pub fn prefixes(&self) -> impl Iterator<Item = &Ipv4Prefix> + '_ {
        self.cidrs.iter().chain(self.endpoints.keys())
    }

    /// Adds to `out` every prefix whose entry differs between `old` and
    /// this part (all of both when the gateway changed).
    pub fn changed_since(&self, old: &RemotePart, out: &mut BTreeSet<Ipv4Prefix>) {
        if self.via != old.via {
            out.extend(old.prefixes().chain(self.prefixes()));
            return;
        }
        out.extend(self.cidrs.symmetric_difference(&old.cidrs));
        changed_keys(&old.endpoints, &self.endpoints, out);
    }

    /// Native routes (only native mode asks): the pod CIDRs, and a /32 for
    /// each endpoint outside every CIDR of its cluster.
    pub fn routes(&self) -> BTreeMap<Ipv4Prefix, Ipv4Addr> {
        let Some(gw) = self.via else {
            return BTreeMap::new();
        };
        let mut routes: BTreeMap<Ipv4Prefix, Ipv4Addr> =
            self.cidrs.iter().map(|p| (*p, gw)).collect();
        for p in self.endpoints.keys() {
            // One lookup per prefix length, not a scan of the routes.
            if !routed_via(&routes, p.addr(), gw) {
                routes.insert(*p, gw);
            }
        }
        routes
    }
}

/// Adds to `out` every key whose value differs between `old` and `new`.
pub fn changed_keys<V: PartialEq>(
    old: &BTreeMap<Ipv4Prefix, V>,
    new: &BTreeMap<Ipv4Prefix, V>,
    out: &mut BTreeSet<Ipv4Prefix>,
) {
    for (p, e) in old {
        if new.get(p) != Some(e) {
            out.insert(*p);
        }
    }
    for p in new.keys() {
        if !old.contains_key(p) {
            out.insert(*p);
        }
    }
}

/// The policy of this node's programmed pods (`local`).
pub fn policy_part(view: &View, local: &[LocalEndpoint]) -> CompiledPolicy {
    // Entries exist only for this node's pods: with none, the identities
    // are never looked at (a gateway without pods skips the walk).
    let identities: BTreeMap<u32, IdentityLabels> = if local.is_empty() {
        BTreeMap::new()
    } else {
        view.identities
            .values()
            .map(|i| (i.id, IdentityLabels::from_info(i)))
            .collect()
    };
    let mut endpoints: BTreeMap<u32, Vec<PeerEndpoint>> = BTreeMap::new();
    for e in view
        .named_port_endpoints
        .iter()
        .filter_map(|k| view.endpoints.get(k))
    {
        if let Some(ip) = e.ip() {
            endpoints.entry(e.identity).or_default().push(PeerEndpoint {
                ip,
                named_ports: e.named_ports().to_vec(),
            });
        }
    }
    policy::compile(
        &PolicyInputs {
            local,
            identities: &identities,
            endpoints: &endpoints,
        },
        view.policies.values(),
    )
}

/// Computes the desired state for node `node_name` from nothing (the same
/// parts [`Incremental`] keeps).
pub fn compute(
    view: &View,
    node_name: &str,
    ifaces: &BTreeMap<Ipv4Addr, PodIface>,
    ids: &mut ServiceIds,
    service_cidrs: &[Ipv4Prefix],
) -> Computed {
    let mut inc = Incremental::default();
    inc.update(view, node_name, ifaces, ids, service_cidrs);
    let routes = inc.routes();
    let mut c = inc.into_computed();
    c.routes = routes;
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
