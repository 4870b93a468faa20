//! Domain types of `cm_policy_lpm` entries: who the rule attaches to, which
//! peer it admits, and the protocol/port prefix — and their LPM keys.
//!
//! A port range is programmed as the few prefixes that cover it exactly
//! ([`PortPrefix::cover`]): `1-65535` is 16 entries, any range at most 30.

use std::net::Ipv4Addr;

use super::rules::Direction;
use super::types::{
    self, LOCAL_ENDPOINT, LOCAL_IDENTITY, PEER_CIDR_BASE, PEER_ENDPOINT, PEER_IDENTITY,
    POLICY_PREFIX_ANY_PORT, POLICY_PREFIX_ANY_PROTO, PolicyKey, PolicyKeyData, be32, ip_from_be32,
};

/// The side a rule is attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyLocal {
    /// Every local pod of a security identity.
    Identity(u32),
    /// One local pod (rules whose named port resolved on that pod).
    Endpoint(Ipv4Addr),
}

/// The other end of the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyPeer {
    /// Any peer (a rule without peers).
    Any,
    /// Every pod of a security identity (never 0).
    Identity(u32),
    /// One mesh pod (egress rules whose named port resolved on that pod).
    Endpoint(Ipv4Addr),
    /// Addresses outside the mesh whose longest ipBlock prefix is `addr/len`.
    Cidr { addr: Ipv4Addr, len: u8 },
}

/// Destination ports sharing their first `len` bits with `port` (`len` 0: any
/// port, 16: exactly `port`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortPrefix {
    pub port: u16,
    pub len: u8,
}

impl PortPrefix {
    pub const ANY: PortPrefix = PortPrefix { port: 0, len: 0 };

    /// Exactly `port`.
    pub fn exact(port: u16) -> Self {
        PortPrefix { port, len: 16 }
    }

    /// The first and last port it covers.
    pub fn range(&self) -> (u16, u16) {
        let span = ((1u32 << (16 - u32::from(self.len.min(16)))) - 1) as u16;
        let lo = self.port & !span;
        (lo, lo | span)
    }

    /// The smallest set of prefixes covering exactly `lo..=hi` (empty if
    /// `lo > hi`): at most 30 for 16-bit ports.
    pub fn cover(lo: u16, hi: u16) -> Vec<PortPrefix> {
        let mut out = Vec::new();
        let (mut lo, hi) = (u32::from(lo), u32::from(hi));
        while lo <= hi {
            // The largest aligned block starting at lo that stays within hi.
            let mut size_bits = if lo == 0 {
                16
            } else {
                lo.trailing_zeros().min(16)
            };
            while lo + (1u32 << size_bits) - 1 > hi {
                size_bits -= 1;
            }
            out.push(PortPrefix {
                port: lo as u16,
                len: (16 - size_bits) as u8,
            });
            lo += 1 << size_bits;
        }
        out
    }
}

/// One policy entry. `proto` 0 means any protocol (then `port` is [`PortPrefix::ANY`]).
/// ICMP is `proto = 1` with any port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyRule {
    pub local: PolicyLocal,
    pub peer: PolicyPeer,
    pub proto: u8,
    pub port: PortPrefix,
    pub direction: Direction,
}

impl PolicyRule {
    /// An identity-to-identity entry in the old flat form: `peer` 0 = any
    /// peer, `proto` 0 = any protocol, `port` 0 = any port.
    pub fn identities(local: u32, peer: u32, proto: u8, port: u16, direction: Direction) -> Self {
        PolicyRule {
            local: PolicyLocal::Identity(local),
            peer: if peer == 0 {
                PolicyPeer::Any
            } else {
                PolicyPeer::Identity(peer)
            },
            proto,
            port: if port == 0 || proto == 0 {
                PortPrefix::ANY
            } else {
                PortPrefix::exact(port)
            },
            direction,
        }
    }

    pub(crate) fn key(&self) -> PolicyKey {
        let (local, local_kind) = match self.local {
            PolicyLocal::Identity(id) => (id, LOCAL_IDENTITY),
            PolicyLocal::Endpoint(ip) => (be32(ip), LOCAL_ENDPOINT),
        };
        let (peer, peer_kind) = match self.peer {
            PolicyPeer::Any => (0, PEER_IDENTITY),
            PolicyPeer::Identity(id) => (id, PEER_IDENTITY),
            PolicyPeer::Endpoint(ip) => (be32(ip), PEER_ENDPOINT),
            PolicyPeer::Cidr { addr, len } => (be32(addr), PEER_CIDR_BASE + len.min(32)),
        };
        let (prefixlen, proto, port) = if self.proto == 0 {
            (POLICY_PREFIX_ANY_PROTO, 0, 0)
        } else {
            let len = self.port.len.min(16);
            let (lo, _) = PortPrefix { len, ..self.port }.range();
            (POLICY_PREFIX_ANY_PORT + u32::from(len), self.proto, lo)
        };
        PolicyKey {
            prefixlen,
            data: PolicyKeyData {
                local,
                peer,
                local_kind,
                peer_kind,
                direction: self.direction.raw(),
                proto,
                dport: types::be16(port),
                pad: 0,
            },
        }
    }

    pub(crate) fn from_key(k: &PolicyKey) -> Option<Self> {
        let d = &k.data;
        let local = match d.local_kind {
            LOCAL_IDENTITY => PolicyLocal::Identity(d.local),
            LOCAL_ENDPOINT => PolicyLocal::Endpoint(ip_from_be32(d.local)),
            _ => return None,
        };
        let peer = match d.peer_kind {
            PEER_IDENTITY if d.peer == 0 => PolicyPeer::Any,
            PEER_IDENTITY => PolicyPeer::Identity(d.peer),
            PEER_ENDPOINT => PolicyPeer::Endpoint(ip_from_be32(d.peer)),
            kind if (PEER_CIDR_BASE..=PEER_CIDR_BASE + 32).contains(&kind) => PolicyPeer::Cidr {
                addr: ip_from_be32(d.peer),
                len: kind - PEER_CIDR_BASE,
            },
            _ => return None,
        };
        let (proto, port) = match k.prefixlen {
            POLICY_PREFIX_ANY_PROTO => (0, PortPrefix::ANY),
            n if (POLICY_PREFIX_ANY_PORT..=POLICY_PREFIX_ANY_PORT + 16).contains(&n) => (
                d.proto,
                PortPrefix {
                    port: types::port_from_be16(d.dport),
                    len: (n - POLICY_PREFIX_ANY_PORT) as u8,
                },
            ),
            _ => return None,
        };
        Some(PolicyRule {
            local,
            peer,
            proto,
            port,
            direction: Direction::from_raw(d.direction)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::rules::PROTO_TCP;

    fn covered(v: &[PortPrefix]) -> Vec<(u16, u16)> {
        v.iter().map(PortPrefix::range).collect()
    }

    #[test]
    fn cover_is_exact_and_small() {
        assert_eq!(PortPrefix::cover(80, 80), vec![PortPrefix::exact(80)]);
        let all = PortPrefix::cover(1, 65535);
        assert_eq!(all.len(), 16);
        assert_eq!(PortPrefix::cover(0, 65535), vec![PortPrefix::ANY]);
        assert!(PortPrefix::cover(2, 1).is_empty());
        let mut worst = 0;
        for (lo, hi) in [(1, 2000), (1, 65534), (2, 65534), (1024, 2047), (7, 9)] {
            let c = PortPrefix::cover(lo, hi);
            worst = worst.max(c.len());
            // Contiguous, in order, exactly lo..=hi.
            let r = covered(&c);
            assert_eq!(r[0].0, lo);
            assert_eq!(r[r.len() - 1].1, hi);
            for w in r.windows(2) {
                assert_eq!(u32::from(w[0].1) + 1, u32::from(w[1].0));
            }
        }
        assert_eq!(PortPrefix::cover(1, 65534).len(), 30, "the worst case");
        assert!(worst <= 30);
        assert_eq!(covered(&PortPrefix::cover(1, 2000)).len(), 16);
    }

    #[test]
    fn keys_round_trip() {
        for r in [
            PolicyRule::identities(65792, 0, PROTO_TCP, 8080, Direction::Ingress),
            PolicyRule::identities(65792, 131328, 0, 0, Direction::Egress),
            PolicyRule {
                local: PolicyLocal::Endpoint(Ipv4Addr::new(10, 1, 0, 2)),
                peer: PolicyPeer::Cidr {
                    addr: Ipv4Addr::new(192, 0, 2, 0),
                    len: 24,
                },
                proto: PROTO_TCP,
                port: PortPrefix { port: 1024, len: 6 },
                direction: Direction::Ingress,
            },
            PolicyRule {
                local: PolicyLocal::Identity(7),
                peer: PolicyPeer::Endpoint(Ipv4Addr::new(10, 2, 0, 9)),
                proto: PROTO_TCP,
                port: PortPrefix::exact(9090),
                direction: Direction::Egress,
            },
        ] {
            assert_eq!(PolicyRule::from_key(&r.key()), Some(r), "{r:?}");
        }
        let k = PolicyRule::identities(1, 0, PROTO_TCP, 8080, Direction::Ingress).key();
        assert_eq!(k.data.dport.to_ne_bytes(), [0x1f, 0x90]);
        assert_eq!(k.prefixlen, types::POLICY_PREFIX_FULL);
    }
}
