//! What the agent keeps of one node record ([`NodeInfo`]): whether it is a
//! gateway, its IPv4 addresses and its IPv4 pod CIDRs, parsed once. The
//! decoded record kept its name, cluster, every address and CIDR as heap
//! strings (the name and the cluster are the view's key already): ~500
//! bytes per node, 50 B per remote endpoint at Cilium's scale shape (10
//! endpoints per node), against ~170 now (docs/benchmarks.md, "Per-peer
//! connection memory, and the heap profile read whole").

use std::net::Ipv4Addr;

use clustermesh_proto::v1::Node;

use crate::datapath::Ipv4Prefix;

/// One node as the agent keeps it. Addresses and CIDRs that are not IPv4
/// are dropped: the datapath is IPv4 only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub gateway: bool,
    /// The record's `gateway_live` (absent: a gateway counts as usable).
    pub gateway_live: Option<bool>,
    /// IPv4 InternalIPs, in the record's order.
    pub internal_ips: Box<[Ipv4Addr]>,
    /// IPv4 ExternalIPs, in the record's order.
    pub external_ips: Box<[Ipv4Addr]>,
    /// IPv4 pod CIDRs, in the record's order.
    pub pod_cidrs: Box<[Ipv4Prefix]>,
}

impl NodeInfo {
    /// How this cluster's nodes reach it: its first IPv4 InternalIP (the
    /// rule of `clustermesh_proto::node_address::internal`).
    pub fn internal(&self) -> Option<Ipv4Addr> {
        self.internal_ips.first().copied()
    }

    /// The addresses peers see it at: its IPv4 ExternalIPs when it has
    /// any, else its InternalIPs.
    pub fn peer_facing_ips(&self) -> &[Ipv4Addr] {
        if self.external_ips.is_empty() {
            &self.internal_ips
        } else {
            &self.external_ips
        }
    }

    /// How peers reach it as a gateway: the first of
    /// [`NodeInfo::peer_facing_ips`]
    /// (`clustermesh_proto::node_address::peer_facing`).
    pub fn peer_facing(&self) -> Option<Ipv4Addr> {
        self.peer_facing_ips().first().copied()
    }

    /// A gateway that may carry traffic.
    pub fn usable_gateway(&self) -> bool {
        self.gateway && self.gateway_live != Some(false)
    }
}

fn parsed<T: std::str::FromStr>(list: &[String]) -> Box<[T]> {
    list.iter().filter_map(|s| s.parse().ok()).collect()
}

impl From<Node> for NodeInfo {
    fn from(n: Node) -> Self {
        NodeInfo {
            gateway: n.gateway,
            gateway_live: n.gateway_live,
            internal_ips: parsed(&n.internal_ips),
            external_ips: parsed(&n.external_ips),
            pod_cidrs: parsed(&n.pod_cidrs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clustermesh_proto::node_address;

    #[test]
    fn keeps_ipv4_in_order_and_picks_addresses_as_the_shared_rule_does() {
        let n = Node {
            name: "gw".into(),
            cluster: "c2".into(),
            internal_ips: vec!["fd00::1".into(), "192.168.1.10".into(), "10.0.0.1".into()],
            external_ips: vec!["not an ip".into(), "203.0.113.7".into()],
            pod_cidrs: vec!["fd00:1::/64".into(), "10.2.0.0/24".into()],
            gateway: true,
            gateway_live: Some(false),
            ..Default::default()
        };
        let i = NodeInfo::from(n.clone());
        assert_eq!(
            &*i.internal_ips,
            &[
                "192.168.1.10".parse::<Ipv4Addr>().unwrap(),
                "10.0.0.1".parse().unwrap()
            ]
        );
        assert_eq!(
            &*i.external_ips,
            &["203.0.113.7".parse::<Ipv4Addr>().unwrap()]
        );
        assert_eq!(
            &*i.pod_cidrs,
            &["10.2.0.0/24".parse::<Ipv4Prefix>().unwrap()]
        );
        assert_eq!(i.internal(), node_address::internal(&n));
        assert_eq!(i.peer_facing(), node_address::peer_facing(&n));
        assert!(!i.usable_gateway());
        let plain = NodeInfo::from(Node {
            internal_ips: vec!["192.168.1.11".into()],
            ..Default::default()
        });
        assert_eq!(plain.peer_facing(), plain.internal());
        assert!(!plain.usable_gateway());
    }
}
