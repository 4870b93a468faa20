//! Which gateway each flow goes through, and who may send through the tunnel.
//!
//! A node's role comes from its own Node record (`gateway: true`). Usable
//! gateways are the gateway nodes whose record does not say
//! `gateway_live: false` (the apiserver sets it from the agent's lease; a
//! record without the field, from an older peer, counts as usable). When no
//! gateway of a cluster is live, all its gateway nodes count as usable: a
//! gateway whose agent is restarting (a DaemonSet upgrade) still forwards
//! with its pinned datapath, and with nothing live there is nothing better to
//! send to.
//!
//! The choice is deterministic and the same at both ends: for the cluster
//! pair {A, B} (names sorted), each side takes its gateway and the other's by
//! rendezvous hashing of the pair over the usable gateways' names. So A's
//! nodes, A's gateways and B's gateways agree on one gateway of A and one of
//! B per pair, different pairs spread over the gateways, and when a gateway
//! goes away only the pairs that used it move.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use sha2::{Digest, Sha256};

use super::node_info::NodeInfo;
use super::view::View;
use crate::datapath::TunnelSender;

/// The gateway decisions of one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayPlan {
    /// This node's own record says it is a gateway.
    pub is_gateway: bool,
    /// Remote cluster -> where this node tunnels that cluster's traffic: this
    /// cluster's chosen gateway (InternalIP) from an ordinary node, the peer's
    /// chosen gateway (ExternalIP if it has one) from a gateway.
    pub via: BTreeMap<String, Ipv4Addr>,
    /// Remote clusters that have endpoints but no usable path (no usable
    /// gateway on one side).
    pub unreachable: Vec<String>,
    /// Outer source -> who it is (the tunnel source checks).
    pub tunnel_sources: BTreeMap<Ipv4Addr, TunnelSender>,
    /// Cluster name -> cluster ID, as the identities of each cluster say.
    pub cluster_ids: BTreeMap<String, u32>,
}

/// The key both ends of a cluster pair hash with.
pub fn pair_key(a: &str, b: &str) -> String {
    if a <= b {
        format!("{a}/{b}")
    } else {
        format!("{b}/{a}")
    }
}

/// Rendezvous choice among `names` for `key`: the name with the highest
/// SHA-256 of `key` and the name (ties, impossible in practice, by name).
pub fn choose<'a>(key: &str, names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    names.into_iter().max_by(|x, y| {
        let score = |n: &str| {
            let mut h = Sha256::new();
            h.update(key.as_bytes());
            h.update([0]);
            h.update(n.as_bytes());
            h.finalize()
        };
        score(x).cmp(&score(y)).then_with(|| y.cmp(x))
    })
}

/// The cluster ID of each cluster, from the identities it allocated
/// (identity >> shift; ingest refuses identities outside a peer's range).
fn cluster_ids(view: &View, shift: u32) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    // The first allocated identity of each cluster (in key order): a few
    // steps per cluster, not a walk over every identity.
    for cluster in View::clusters_of(&view.identities) {
        if let Some((_, id)) = View::of_cluster(&view.identities, cluster)
            .find(|(_, id)| id.id > clustermesh_proto::identity::reserved::MAX)
        {
            out.insert(cluster.to_owned(), id.id >> shift);
        }
    }
    if let Some(c) = &view.cluster {
        out.insert(c.name.clone(), c.id);
    }
    out
}

/// Computes the plan of node `node_name`.
pub fn plan(view: &View, node_name: &str, shift: u32) -> GatewayPlan {
    let local = view.local_cluster().to_string();
    let mut p = GatewayPlan {
        is_gateway: view
            .nodes
            .get(&super::view::key(&local, node_name))
            .is_some_and(|n| n.gateway),
        cluster_ids: cluster_ids(view, shift),
        ..Default::default()
    };
    // Usable gateways per cluster, by name (BTreeMap order); all gateway
    // nodes of a cluster where none is live.
    let mut usable_by_cluster: BTreeMap<&str, Vec<(&str, &NodeInfo)>> = BTreeMap::new();
    let mut all_by_cluster: BTreeMap<&str, Vec<(&str, &NodeInfo)>> = BTreeMap::new();
    for ((cluster, name), n) in view.gateways() {
        all_by_cluster.entry(cluster).or_default().push((name, n));
        if n.usable_gateway() {
            usable_by_cluster
                .entry(cluster)
                .or_default()
                .push((name, n));
        }
    }
    for (cluster, all) in all_by_cluster {
        usable_by_cluster.entry(cluster).or_insert(all);
    }
    let remote_clusters: std::collections::BTreeSet<&str> = View::clusters_of(&view.nodes)
        .into_iter()
        .chain(view.endpoints.clusters())
        .filter(|c| *c != local)
        .collect();
    let pick = |cluster: &str, key: &str| -> Option<&NodeInfo> {
        let list = usable_by_cluster.get(cluster)?;
        let name = choose(key, list.iter().map(|(name, _)| *name))?;
        list.iter().find(|(n, _)| *n == name).map(|(_, n)| *n)
    };
    for remote in remote_clusters {
        let key = pair_key(&local, remote);
        let addr = if p.is_gateway {
            pick(remote, &key).and_then(NodeInfo::peer_facing)
        } else {
            pick(&local, &key).and_then(NodeInfo::internal)
        };
        match addr {
            // An ordinary node also needs the peer to have a usable gateway.
            Some(a) if p.is_gateway || pick(remote, &key).is_some() => {
                p.via.insert(remote.to_string(), a);
            }
            _ => p.unreachable.push(remote.to_string()),
        }
    }
    // Tunnel senders: every node of this cluster (its InternalIPs and
    // ExternalIPs), and every gateway of a peer (live or not: in-flight
    // packets of a gateway going away are still its cluster's) — its
    // ExternalIPs when it has any, else its InternalIPs. This cluster's
    // entries win over a peer's that claims the same address.
    for ((cluster, _), n) in view.gateways().filter(|((c, _), _)| *c != local) {
        let Some(cluster_id) = p.cluster_ids.get(cluster.as_str()).copied() else {
            continue;
        };
        for &a in n.peer_facing_ips() {
            p.tunnel_sources
                .insert(a, TunnelSender::PeerGateway { cluster_id });
        }
    }
    for (_, n) in View::of_cluster(&view.nodes, &local) {
        let sender = if n.gateway {
            TunnelSender::LocalGateway
        } else {
            TunnelSender::LocalNode
        };
        for &a in n.internal_ips.iter().chain(n.external_ips.iter()) {
            p.tunnel_sources.insert(a, sender);
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_is_stable_and_moves_only_the_lost_pairs() {
        let all = ["gw-1", "gw-2", "gw-3"];
        let keys: Vec<String> = (0..50)
            .map(|i| pair_key("east", &format!("c{i}")))
            .collect();
        let before: Vec<&str> = keys.iter().map(|k| choose(k, all).unwrap()).collect();
        // Every gateway gets some pairs.
        for g in all {
            assert!(before.contains(&g), "{g} never chosen");
        }
        let after: Vec<&str> = keys
            .iter()
            .map(|k| choose(k, ["gw-1", "gw-3"]).unwrap())
            .collect();
        for (b, a) in before.iter().zip(&after) {
            if *b != "gw-2" {
                assert_eq!(b, a, "a pair moved although its gateway stayed");
            }
        }
        assert_eq!(pair_key("a", "b"), pair_key("b", "a"));
        assert_eq!(choose("k", Vec::<&str>::new()), None);
    }
}
