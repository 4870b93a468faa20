//! CIDRs ([`Cidr`]) and an index of owned CIDRs ([`CidrIndex`]): what the
//! ingest rules check a peer's addresses against, and what the view keeps
//! of every Node record's pod CIDRs.

mod index;

pub use index::CidrIndex;

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use clustermesh_proto::v1::Node;
use prost::Message;

/// The widest pod CIDR accepted from a peer, IPv4 (a /8 holds 16 M pods).
pub const MIN_PREFIX_V4: u8 = 8;
/// The widest pod CIDR accepted from a peer, IPv6.
pub const MIN_PREFIX_V6: u8 = 32;

/// A parsed CIDR, host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

fn to_bits(a: IpAddr) -> (u128, u8) {
    match a {
        IpAddr::V4(v) => (u32::from(v) as u128, 32),
        IpAddr::V6(v) => (u128::from(v), 128),
    }
}

fn mask(bits: u128, width: u8, prefix: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let keep = u128::MAX << (width - prefix);
    let all = if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    };
    bits & keep & all
}

impl Cidr {
    /// `a.b.c.d/n` or `x::/n`; host bits must be zero (`10.1.0.5/16` is refused).
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = s.split_once('/')?;
        let addr = IpAddr::from_str(a).ok()?;
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 3 {
            return None;
        }
        let prefix: u8 = p.parse().ok()?;
        let (bits, width) = to_bits(addr);
        if prefix > width || mask(bits, width, prefix) != bits {
            return None;
        }
        Some(Cidr { addr, prefix })
    }

    pub fn is_v4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// 0.0.0.0/0 or ::/0.
    pub fn is_default_route(&self) -> bool {
        self.prefix == 0
    }

    /// Wider than [`MIN_PREFIX_V4`] / [`MIN_PREFIX_V6`].
    pub fn too_wide(&self) -> bool {
        self.prefix
            < if self.is_v4() {
                MIN_PREFIX_V4
            } else {
                MIN_PREFIX_V6
            }
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        if ip.is_ipv4() != self.is_v4() {
            return false;
        }
        let (bits, width) = to_bits(*ip);
        let (net, _) = to_bits(self.addr);
        mask(bits, width, self.prefix) == net
    }

    /// Whether the two ranges share an address (one holds the other).
    pub fn overlaps(&self, other: &Cidr) -> bool {
        if self.is_v4() != other.is_v4() {
            return false;
        }
        if self.prefix <= other.prefix {
            self.contains(&other.addr)
        } else {
            other.contains(&self.addr)
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Cidr::parse(s)
            .ok_or_else(|| format!("{s:?} is not a CIDR (address/prefix with the host bits zero)"))
    }
}

/// The pod CIDRs of a Node record's value (none if it does not decode;
/// CIDRs that do not parse are left out).
pub fn node_pod_cidrs(value: &[u8]) -> Vec<Cidr> {
    Node::decode(value)
        .map(|n| n.pod_cidrs.iter().filter_map(|c| Cidr::parse(c)).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains(&ip("10.1.255.3")));
        assert!(!c.contains(&ip("10.2.0.1")));
        assert!(!c.contains(&ip("::1")));
        assert!(Cidr::parse("10.1.0.5/16").is_none(), "host bits set");
        assert!(Cidr::parse("10.1.0.0/33").is_none());
        assert!(Cidr::parse("10.1.0.0/+8").is_none());
        assert!(Cidr::parse("10.1.0.0").is_none());
        assert!(Cidr::parse("0.0.0.0/0").unwrap().is_default_route());
        assert!(Cidr::parse("::/0").unwrap().is_default_route());
        assert!(Cidr::parse("10.0.0.0/7").unwrap().too_wide());
        assert!(!Cidr::parse("10.0.0.0/8").unwrap().too_wide());
        assert!(Cidr::parse("fd00::/31").unwrap().too_wide());
        let v6 = Cidr::parse("fd00:0:1::/64").unwrap();
        assert!(v6.contains(&ip("fd00:0:1::5")));
        assert!(
            !Cidr::parse("fd00:1::/64")
                .unwrap()
                .overlaps(&Cidr::parse("fd00::/32").unwrap())
        );
        assert!(v6.overlaps(&Cidr::parse("fd00::/32").unwrap()));
        assert!(c.overlaps(&Cidr::parse("10.0.0.0/8").unwrap()));
        assert!(c.overlaps(&Cidr::parse("10.1.2.0/24").unwrap()));
        assert!(!c.overlaps(&Cidr::parse("10.2.0.0/16").unwrap()));
        assert_eq!(c.to_string(), "10.1.0.0/16");
    }
}
