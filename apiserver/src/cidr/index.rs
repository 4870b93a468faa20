//! CIDRs with owners, indexed so that "which of them holds this address" and
//! "which of them overlaps this range" cost a lookup per prefix length in use
//! (a handful: pod CIDRs are mostly /24s) instead of a scan of every CIDR.
//!
//! At Cilium's scale shape (250 peers × 100 nodes) the other peers' pod CIDRs
//! number ~25,000; the ingest rules check every endpoint against them, so a
//! scan made a 250,000-endpoint cold start ~6·10⁹ comparisons
//! (docs/benchmarks.md, "Scale").
//!
//! The index is kept with every Node record change ([`CidrIndex::insert`],
//! [`CidrIndex::remove`]: O(log n) each) and is a persistent map, so a copy
//! for a reader costs O(1) and a change after it copies one path.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Bound;

use smol_str::SmolStr;

use super::Cidr;

/// Address family and prefix length of one level of the index.
type Level = (bool, u8);

/// (IPv6?, prefix length, network left-aligned in 128 bits, owner).
type Key = (bool, u8, u128, SmolStr);

fn bits(ip: &IpAddr) -> (bool, u128, u8) {
    match ip {
        IpAddr::V4(v) => (false, u128::from(u32::from(*v)), 32),
        IpAddr::V6(v) => (true, u128::from(*v), 128),
    }
}

/// `bits` (of an address `width` bits wide) with all but the first `prefix` cleared.
fn masked(bits: u128, width: u8, prefix: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let keep = u128::MAX << (128 - u32::from(prefix));
    (bits << (128 - u32::from(width))) & keep
}

/// The CIDR of a level and a (left-aligned) network.
fn cidr_of((v6, prefix): Level, net: u128) -> Cidr {
    let addr = if v6 {
        IpAddr::V6(Ipv6Addr::from(net))
    } else {
        IpAddr::V4(Ipv4Addr::from((net >> 96) as u32))
    };
    Cidr { addr, prefix }
}

fn key_of(owner: &str, cidr: &Cidr) -> Key {
    let (v6, b, width) = bits(&cidr.addr);
    (
        v6,
        cidr.prefix,
        masked(b, width, cidr.prefix),
        SmolStr::new(owner),
    )
}

/// CIDRs, each with the names that announce it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrIndex {
    /// (network, owner) → how many times the owner announces it (two of a
    /// peer's nodes may, for a moment, claim the same range).
    nets: imbl::OrdMap<Key, u32>,
    /// Keys per level: the levels a lookup visits.
    levels: BTreeMap<Level, usize>,
}

impl CidrIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `cidr`, announced (once more) by `owner`.
    pub fn insert(&mut self, owner: &str, cidr: Cidr) {
        let key = key_of(owner, &cidr);
        let level = (key.0, key.1);
        if let Some(n) = self.nets.get_mut(&key) {
            *n = n.saturating_add(1);
            return;
        }
        self.nets.insert(key, 1);
        *self.levels.entry(level).or_default() += 1;
    }

    /// Takes back one announcement of `cidr` by `owner` (the last one
    /// removes the pair).
    pub fn remove(&mut self, owner: &str, cidr: Cidr) {
        let key = key_of(owner, &cidr);
        let Some(n) = self.nets.get_mut(&key) else {
            return;
        };
        if *n > 1 {
            *n -= 1;
            return;
        }
        self.nets.remove(&key);
        let level = (key.0, key.1);
        if let Some(count) = self.levels.get_mut(&level) {
            *count -= 1;
            if *count == 0 {
                self.levels.remove(&level);
            }
        }
    }

    /// Number of (owner, CIDR) pairs.
    pub fn len(&self) -> usize {
        self.nets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// An owner other than `except` of a network of `level` in `from..=to`.
    fn owned_in(&self, level: Level, from: u128, to: u128, except: &str) -> Option<(&str, Cidr)> {
        let lo: Key = (level.0, level.1, from, SmolStr::default());
        self.nets
            .range((Bound::Included(lo), Bound::Unbounded))
            .take_while(|((v6, p, net, _), _)| (*v6, *p) == level && *net <= to)
            .find(|((.., owner), _)| owner != except)
            .map(|((_, _, net, owner), _)| (owner.as_str(), cidr_of(level, *net)))
    }

    /// A CIDR holding `ip`, whoever owns it.
    pub fn any_containing(&self, ip: &IpAddr) -> Option<Cidr> {
        // No owner name contains NUL (peer names are DNS labels).
        self.containing(ip, "\0").map(|(_, c)| c)
    }

    /// A CIDR overlapping `cidr`, whoever owns it.
    pub fn any_overlapping(&self, cidr: &Cidr) -> Option<Cidr> {
        self.overlapping(cidr, "\0").map(|(_, c)| c)
    }

    /// A CIDR holding `ip` and an owner of it other than `except`.
    pub fn containing(&self, ip: &IpAddr, except: &str) -> Option<(&str, Cidr)> {
        let (v6, b, width) = bits(ip);
        self.levels
            .range((v6, 0)..=(v6, u8::MAX))
            .find_map(|(&level, _)| {
                let net = masked(b, width, level.1);
                self.owned_in(level, net, net, except)
            })
    }

    /// A CIDR sharing an address with `cidr` (one holds the other) and an
    /// owner of it other than `except`.
    pub fn overlapping(&self, cidr: &Cidr, except: &str) -> Option<(&str, Cidr)> {
        let (v6, b, width) = bits(&cidr.addr);
        let start = masked(b, width, cidr.prefix);
        // The last address of `cidr`, left-aligned.
        let host = if cidr.prefix == 0 {
            u128::MAX
        } else {
            u128::MAX >> u32::from(cidr.prefix)
        };
        let end = start | host;
        self.levels
            .range((v6, 0)..=(v6, u8::MAX))
            .find_map(|(&level, _)| {
                if level.1 <= cidr.prefix {
                    // Holds `cidr` (or is it): its network is `cidr`'s, masked.
                    let net = masked(start, 128, level.1);
                    self.owned_in(level, net, net, except)
                } else {
                    // Inside `cidr`: a network between its first and last address.
                    self.owned_in(level, start, end, except)
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        Cidr::parse(s).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The scan the index replaces: the reference it must agree with.
    fn scan_containing(all: &[(String, Cidr)], ip: &IpAddr, except: &str) -> bool {
        all.iter().any(|(o, c)| o != except && c.contains(ip))
    }

    fn scan_overlapping(all: &[(String, Cidr)], x: &Cidr, except: &str) -> bool {
        all.iter().any(|(o, c)| o != except && c.overlaps(x))
    }

    #[test]
    fn finds_what_holds_an_address_and_what_overlaps_a_range() {
        let mut i = CidrIndex::new();
        i.insert("b", c("10.3.0.0/16"));
        i.insert("c", c("10.4.1.0/24"));
        i.insert("d", c("fd00:4::/64"));
        assert_eq!(
            i.containing(&ip("10.3.9.9"), "a"),
            Some(("b", c("10.3.0.0/16")))
        );
        assert_eq!(i.containing(&ip("10.3.9.9"), "b"), None, "the asker's own");
        assert_eq!(i.containing(&ip("10.4.2.1"), "a"), None);
        assert_eq!(
            i.containing(&ip("fd00:4::7"), "a"),
            Some(("d", c("fd00:4::/64")))
        );
        assert_eq!(
            i.containing(&ip("::ffff:10.3.0.1"), "a"),
            None,
            "families apart"
        );
        // Wider than an entry, narrower than one, equal to one.
        assert_eq!(
            i.overlapping(&c("10.4.0.0/16"), "a"),
            Some(("c", c("10.4.1.0/24")))
        );
        assert_eq!(
            i.overlapping(&c("10.3.7.0/24"), "a"),
            Some(("b", c("10.3.0.0/16")))
        );
        assert_eq!(
            i.overlapping(&c("10.4.1.0/24"), "a"),
            Some(("c", c("10.4.1.0/24")))
        );
        assert_eq!(i.overlapping(&c("0.0.0.0/0"), "a").map(|x| x.0), Some("b"));
        assert_eq!(i.overlapping(&c("10.5.0.0/16"), "a"), None);
        assert_eq!(
            i.overlapping(&c("fd00::/16"), "a"),
            Some(("d", c("fd00:4::/64")))
        );
        assert_eq!(i.len(), 3);
        // Announced twice, taken back once: still held; twice: gone.
        i.insert("c", c("10.4.1.0/24"));
        i.remove("c", c("10.4.1.0/24"));
        assert_eq!(i.containing(&ip("10.4.1.1"), "a").map(|x| x.0), Some("c"));
        i.remove("c", c("10.4.1.0/24"));
        assert_eq!(i.containing(&ip("10.4.1.1"), "a"), None);
        assert_eq!(i.overlapping(&c("10.4.0.0/16"), "a"), None);
        i.remove("c", c("10.4.1.0/24"));
        i.remove("nobody", c("10.3.0.0/16"));
        assert_eq!(i.len(), 2, "removing what is not held changes nothing");
        assert_eq!(i.levels.len(), 2, "an emptied level is dropped");
    }

    #[test]
    fn agrees_with_a_scan_on_random_sets() {
        // A small deterministic generator: no dependency for this.
        let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for _ in 0..200 {
            let mut all = Vec::new();
            let mut i = CidrIndex::new();
            for _ in 0..(next() % 40) {
                let prefix = 8 + (next() % 25) as u8;
                let a = Ipv4Addr::from((next() as u32) & 0x0a0f_ffff | 0x0a00_0000);
                let cidr = Cidr::parse(&format!("{a}/32")).unwrap();
                let (_, b, w) = bits(&cidr.addr);
                let net = cidr_of((false, prefix), masked(b, w, prefix));
                let owner = ["a", "b", "c"][(next() % 3) as usize];
                all.push((owner.to_string(), net));
                i.insert(owner, net);
            }
            // Take some back: the index must forget exactly those (an
            // owner that announced a range twice still holds it once).
            for _ in 0..(next() % 10) {
                if all.is_empty() {
                    break;
                }
                let (owner, net) = all.swap_remove((next() % all.len() as u64) as usize);
                i.remove(&owner, net);
            }
            let mut pairs = all.clone();
            pairs.sort();
            pairs.dedup();
            assert_eq!(i.len(), pairs.len(), "one entry per (owner, CIDR)");
            for _ in 0..50 {
                let a = IpAddr::V4(Ipv4Addr::from((next() as u32) & 0x0a0f_ffff | 0x0a00_0000));
                let except = ["a", "b", "x"][(next() % 3) as usize];
                assert_eq!(
                    i.containing(&a, except).is_some(),
                    scan_containing(&all, &a, except),
                    "{a} except {except} in {all:?}"
                );
                let prefix = (next() % 33) as u8;
                let (_, b, w) = bits(&a);
                let x = cidr_of((false, prefix), masked(b, w, prefix));
                let got = i.overlapping(&x, except);
                assert_eq!(
                    got.is_some(),
                    scan_overlapping(&all, &x, except),
                    "{x} except {except} in {all:?}"
                );
                if let Some((o, found)) = got {
                    assert!(
                        o != except && found.overlaps(&x) && all.contains(&(o.to_string(), found))
                    );
                }
            }
        }
    }
}
