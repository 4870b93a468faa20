//! Which address of a Node the mesh tunnels to — one rule for the agent's
//! datapath and for the apiserver's Status, so what status shows is where
//! traffic goes.

use std::net::Ipv4Addr;

use crate::v1::Node;

fn first_ipv4(list: &[String]) -> Option<Ipv4Addr> {
    list.iter().find_map(|s| s.parse::<Ipv4Addr>().ok())
}

/// The first IPv4 InternalIP: how this cluster's nodes reach each other.
pub fn internal(n: &Node) -> Option<Ipv4Addr> {
    first_ipv4(&n.internal_ips)
}

/// How peers reach a gateway: its first IPv4 ExternalIP, else its InternalIP.
pub fn peer_facing(n: &Node) -> Option<Ipv4Addr> {
    first_ipv4(&n.external_ips).or_else(|| internal(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_first_for_peers_internal_for_nodes() {
        let n = Node {
            internal_ips: vec!["fd00::1".into(), "192.168.1.11".into()],
            external_ips: vec!["203.0.113.11".into()],
            ..Default::default()
        };
        assert_eq!(internal(&n), Some(Ipv4Addr::new(192, 168, 1, 11)));
        assert_eq!(peer_facing(&n), Some(Ipv4Addr::new(203, 0, 113, 11)));
        let lan_only = Node {
            internal_ips: vec!["192.168.1.12".into()],
            ..Default::default()
        };
        assert_eq!(peer_facing(&lan_only), internal(&lan_only));
    }
}
