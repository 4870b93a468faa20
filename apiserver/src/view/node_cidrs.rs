//! The pod CIDRs of the view's Node records, indexed ([`CidrIndex`]) and
//! kept with every change: this cluster's own (`state/nodes/<self>/`) and
//! every peer's (`cache/nodes/<peer>/`, owned by the peer). The ingest rules
//! check each peer's records against them (`mesh::ingest_context`).
//!
//! A change of a Node record costs decoding its old and new value and a
//! few O(log n) index updates, under the view's lock; a reader takes a copy
//! of each index in O(1). The indexes used to be rebuilt from every Node
//! record (25,000 at Cilium's scale shape) up to twice a second under node
//! churn, and could lag the view by up to 500 ms (docs/benchmarks.md).

use std::sync::Arc;

use clustermesh_proto::v1::Kind;

use super::event::{Class, Target};
use crate::cidr::{CidrIndex, node_pod_cidrs};

/// This cluster's and the peers' pod CIDRs.
#[derive(Debug, Clone, Default)]
pub struct NodeCidrs {
    /// This cluster's (owner "").
    pub own: Arc<CidrIndex>,
    /// The peers', each owned by its peer's name.
    pub peers: Arc<CidrIndex>,
}

impl NodeCidrs {
    /// A Node record of `target` went from `old` to `new` (`None`: absent).
    /// Records of other kinds, and keys the view does not serve, are ignored.
    pub fn change(&mut self, target: &Target, old: Option<&[u8]>, new: Option<&[u8]>) {
        if target.kind != Kind::Node {
            return;
        }
        let (index, owner) = match target.class {
            Class::LocalRecord => (&mut self.own, ""),
            Class::PeerRecord => (&mut self.peers, target.cluster.as_str()),
            _ => return,
        };
        let before = old.map(node_pod_cidrs).unwrap_or_default();
        let after = new.map(node_pod_cidrs).unwrap_or_default();
        if before == after {
            return;
        }
        // A copy a reader holds is left as it is (copy on write, one path).
        let index = Arc::make_mut(index);
        for c in before {
            index.remove(owner, c);
        }
        for c in after {
            index.insert(owner, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cidr::Cidr;
    use clustermesh_proto::v1::Node;
    use prost::Message;

    fn node(cidrs: &[&str]) -> Vec<u8> {
        Node {
            name: "n".into(),
            pod_cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn target(key: &str) -> Target {
        Target::of(key, "self")
    }

    #[test]
    fn follows_node_changes_and_leaves_held_copies_alone() {
        let mut n = NodeCidrs::default();
        let peer = target(&format!(
            "{}cache/nodes/b/n1",
            clustermesh_proto::keys::PREFIX
        ));
        let own = target(&format!(
            "{}state/nodes/self/n1",
            clustermesh_proto::keys::PREFIX
        ));
        let ip = "10.3.0.9".parse().unwrap();
        n.change(&peer, None, Some(&node(&["10.3.0.0/24"])));
        n.change(&own, None, Some(&node(&["10.1.0.0/24"])));
        assert_eq!(n.peers.containing(&ip, "a").map(|x| x.0), Some("b"));
        assert!(n.own.any_containing(&"10.1.0.1".parse().unwrap()).is_some());
        assert!(n.own.any_containing(&ip).is_none(), "a peer's are not ours");
        let held = n.peers.clone();
        // The node moves to another range.
        n.change(
            &peer,
            Some(&node(&["10.3.0.0/24"])),
            Some(&node(&["10.4.0.0/24"])),
        );
        assert!(n.peers.containing(&ip, "a").is_none());
        assert!(held.containing(&ip, "a").is_some(), "a reader's copy stays");
        // Deleted: gone; other kinds and undecodable values change nothing.
        n.change(&peer, Some(&node(&["10.4.0.0/24"])), None);
        assert!(n.peers.is_empty());
        let ep = target(&format!(
            "{}cache/endpoints/b/10.3.0.9",
            clustermesh_proto::keys::PREFIX
        ));
        n.change(&ep, None, Some(&node(&["10.9.0.0/24"])));
        n.change(&peer, None, Some(b"\xff\xff"));
        assert!(n.peers.is_empty());
        assert_eq!(
            n.own.any_overlapping(&Cidr::parse("10.1.0.0/16").unwrap()),
            Cidr::parse("10.1.0.0/24")
        );
    }
}
