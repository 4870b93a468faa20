//! What the agent keeps of one endpoint record ([`EndpointInfo`]): the
//! fields the datapath and policy use, packed. The decoded protobuf is ~400
//! bytes per endpoint with its six strings; at 250,000 remote endpoints the
//! view's copy of them was the agent's largest allocation
//! (docs/benchmarks.md, the agent's heap profile).

use std::net::Ipv4Addr;

use clustermesh_proto::v1::{Endpoint, NamedPort};

/// One endpoint as the agent keeps it: 16 bytes inline (the IPv4 address,
/// the identity, one pointer). What most endpoints lack (named ports; the
/// details, which only the local cluster's keep; the mark of an IP that is
/// not IPv4) is behind one optional box.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    /// The address's octets; meaningful unless `extra` says `no_ipv4`.
    ip: [u8; 4],
    pub identity: u32,
    /// None: an IPv4 address, no named ports and no details.
    extra: Option<Box<Extra>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Extra {
    named_ports: Box<[NamedPort]>,
    /// `node_name`, `node_ip`, `namespace`, `pod`, NUL-separated: one
    /// allocation instead of four (empty when dropped).
    details: Box<str>,
    /// The record's IP is not an IPv4 address.
    no_ipv4: bool,
}

impl EndpointInfo {
    /// None: the record's IP is not an IPv4 address (the endpoint is
    /// counted as invalid, never programmed).
    pub fn ip(&self) -> Option<Ipv4Addr> {
        match &self.extra {
            Some(x) if x.no_ipv4 => None,
            _ => Some(Ipv4Addr::from(self.ip)),
        }
    }

    fn detail(&self, i: usize) -> &str {
        self.extra
            .as_ref()
            .and_then(|x| x.details.split('\0').nth(i))
            .unwrap_or("")
    }
    pub fn node_name(&self) -> &str {
        self.detail(0)
    }
    pub fn node_ip(&self) -> &str {
        self.detail(1)
    }
    pub fn namespace(&self) -> &str {
        self.detail(2)
    }
    pub fn pod(&self) -> &str {
        self.detail(3)
    }
    /// Empty for almost every endpoint.
    pub fn named_ports(&self) -> &[NamedPort] {
        self.extra.as_ref().map_or(&[], |x| &x.named_ports)
    }

    /// Forgets the details: only the local cluster's endpoints use them
    /// (its pods on this node, its nodes' addresses). A remote endpoint is
    /// an IP and an identity behind its cluster's gateway; its details
    /// were ~33 B per endpoint at 250,000 of them.
    pub fn drop_details(&mut self) {
        let Some(x) = self.extra.take() else {
            return;
        };
        if !x.named_ports.is_empty() || x.no_ipv4 {
            self.extra = Some(Box::new(Extra {
                named_ports: x.named_ports,
                details: Box::default(),
                no_ipv4: x.no_ipv4,
            }));
        }
    }
}

impl From<Endpoint> for EndpointInfo {
    fn from(e: Endpoint) -> Self {
        // A NUL inside a field would shift the others: such a field is cut
        // there (names and IPs never hold one).
        let clean = |s: &str| s.split('\0').next().unwrap_or("").to_owned();
        let details = [
            clean(&e.node_name),
            clean(&e.node_ip),
            clean(&e.namespace),
            clean(&e.pod),
        ]
        .join("\0");
        let ip: Option<Ipv4Addr> = e.ip.parse().ok();
        // Three separators and nothing else: no details.
        let extra = (details.len() > 3 || !e.named_ports.is_empty() || ip.is_none()).then(|| {
            Box::new(Extra {
                named_ports: e.named_ports.into_boxed_slice(),
                details: details.into_boxed_str(),
                no_ipv4: ip.is_none(),
            })
        });
        EndpointInfo {
            ip: ip.map_or([0; 4], |a| a.octets()),
            identity: e.identity,
            extra,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_what_the_datapath_uses() {
        let e = Endpoint {
            ip: "10.2.0.5".into(),
            identity: 0x02_0100,
            node_ip: "192.0.2.7".into(),
            node_name: "w1".into(),
            namespace: "shop".into(),
            pod: "web-1".into(),
            named_ports: vec![NamedPort {
                name: "http".into(),
                port: 8080,
                protocol: "TCP".into(),
            }],
            cluster: "c2".into(),
            exported: true,
        };
        let i = EndpointInfo::from(e);
        assert_eq!(i.ip(), Some(Ipv4Addr::new(10, 2, 0, 5)));
        assert_eq!(i.identity, 0x02_0100);
        assert_eq!(
            (i.node_name(), i.node_ip(), i.namespace(), i.pod()),
            ("w1", "192.0.2.7", "shop", "web-1")
        );
        assert_eq!(i.named_ports().len(), 1);
        assert_eq!(std::mem::size_of::<EndpointInfo>(), 16);
        let odd = EndpointInfo::from(Endpoint {
            ip: "fd00::1".into(),
            node_name: "a\0b".into(),
            pod: "p".into(),
            ..Default::default()
        });
        assert_eq!(odd.ip(), None, "not IPv4: kept as invalid");
        assert_eq!((odd.node_name(), odd.pod()), ("a", "p"));
    }

    #[test]
    fn dropping_details_keeps_named_ports() {
        let port = NamedPort {
            name: "http".into(),
            port: 80,
            protocol: "TCP".into(),
        };
        let mut i = EndpointInfo::from(Endpoint {
            ip: "10.0.0.1".into(),
            pod: "p".into(),
            named_ports: vec![port.clone()],
            ..Default::default()
        });
        i.drop_details();
        assert_eq!((i.pod(), i.named_ports()), ("", &[port][..]));
        let mut bare = EndpointInfo::from(Endpoint {
            ip: "10.0.0.2".into(),
            pod: "q".into(),
            ..Default::default()
        });
        bare.drop_details();
        assert!(bare.extra.is_none(), "nothing left to box");
        let mut empty = EndpointInfo::from(Endpoint::default());
        assert!(empty.named_ports().is_empty() && empty.pod().is_empty());
        assert_eq!(empty.ip(), None, "no IP: not IPv4");
        empty.drop_details();
        assert_eq!(empty.ip(), None, "the mark outlives the details");
    }
}
