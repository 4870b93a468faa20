//! ipBlock peers: the prefix set of `cm_policy_cidr` and which of its
//! prefixes one ipBlock selects.
//!
//! Every cidr and except of every policy is a prefix of the set P. The
//! datapath maps a `world` address to the longest prefix of P containing it;
//! an ipBlock `{cidr C, except E}` selects the prefixes p of P with p ⊆ C and
//! p ⊄ e for every e in E. Since C and E are in P, an address a is in C \ E
//! exactly when its longest prefix is selected (the prefixes containing a
//! nest: the longest lies inside C if a ∈ C, and inside an except e if a ∈ e).
//!
//! Only addresses outside the mesh are matched this way: a mesh pod's IP has
//! its identity and an ipBlock never selects it (Cilium's choice; Kubernetes
//! leaves it to the implementation) — see docs/datapath.md.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use clustermesh_proto::v1::{IpBlock, Policy};

use super::desired::covers;
use super::policy_report::{PolicyReport, Refusal};
use crate::datapath::{Ipv4Prefix, PolicyPeer};

/// A parsed ipBlock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    pub cidr: Ipv4Prefix,
    pub except: Vec<Ipv4Prefix>,
}

fn parse_prefix(s: &str) -> Result<Ipv4Prefix, Refusal> {
    let (addr, len) = s.trim().split_once('/').ok_or(Refusal::InvalidIpBlock)?;
    let len: u8 = len.parse().map_err(|_| Refusal::InvalidIpBlock)?;
    match addr
        .parse::<IpAddr>()
        .map_err(|_| Refusal::InvalidIpBlock)?
    {
        IpAddr::V6(_) => Err(Refusal::Ipv6IpBlock),
        IpAddr::V4(a) => Ipv4Prefix::new(a, len).map_err(|_| Refusal::InvalidIpBlock),
    }
}

/// Parses an ipBlock; every except must lie inside the cidr.
pub fn parse(b: &IpBlock) -> Result<Block, Refusal> {
    let cidr = parse_prefix(&b.cidr)?;
    let mut except = Vec::new();
    for e in &b.except {
        let e = parse_prefix(e)?;
        if !contains(&cidr, &e) {
            return Err(Refusal::InvalidIpBlock);
        }
        except.push(e);
    }
    Ok(Block { cidr, except })
}

/// Whether `outer` contains all of `inner`.
pub fn contains(outer: &Ipv4Prefix, inner: &Ipv4Prefix) -> bool {
    outer.len() <= inner.len() && covers(outer, inner.addr())
}

impl Block {
    /// The prefixes of `set` this block selects.
    pub fn select<'s>(
        &self,
        set: &'s BTreeSet<Ipv4Prefix>,
    ) -> impl Iterator<Item = &'s Ipv4Prefix> {
        set.iter()
            .filter(|p| contains(&self.cidr, p) && !self.except.iter().any(|e| contains(e, p)))
    }

    /// The prefixes it adds to the set.
    pub fn prefixes(&self) -> impl Iterator<Item = Ipv4Prefix> + '_ {
        std::iter::once(self.cidr).chain(self.except.iter().copied())
    }
}

/// The ipBlocks of every policy, parsed once, and their prefix set.
#[derive(Default)]
pub struct Blocks {
    parsed: BTreeMap<(String, String), Result<Block, Refusal>>,
    /// Every cidr and except (the contents of `cm_policy_cidr`).
    pub set: BTreeSet<Ipv4Prefix>,
}

impl Blocks {
    /// Parses the ipBlocks of `p` (refusing the ones that cannot be
    /// programmed) and adds their prefixes to the set.
    pub fn gather(&mut self, report: &mut PolicyReport, name: &str, p: &Policy) {
        let Some(spec) = &p.spec else {
            return;
        };
        for rule in spec.ingress.iter().chain(&spec.egress) {
            for peer in &rule.peers {
                let (None, None, Some(b)) =
                    (&peer.pod_selector, &peer.namespace_selector, &peer.ip_block)
                else {
                    continue;
                };
                let key = (b.cidr.clone(), b.except.join(","));
                if self.parsed.contains_key(&key) {
                    continue;
                }
                let parsed = parse(b);
                match &parsed {
                    Ok(block) => self.set.extend(block.prefixes()),
                    Err(why) => report.refuse(
                        *why,
                        name.to_string(),
                        format!("ipBlock {} except [{}]", key.0, key.1),
                    ),
                }
                self.parsed.insert(key, parsed);
            }
        }
    }

    /// The policy peers an ipBlock compiles to: the prefixes it selects.
    pub fn peers(&self, b: &IpBlock) -> Vec<PolicyPeer> {
        let key = (b.cidr.clone(), b.except.join(","));
        match self.parsed.get(&key) {
            Some(Ok(block)) => block
                .select(&self.set)
                .map(|p| PolicyPeer::Cidr {
                    addr: p.addr(),
                    len: p.len(),
                })
                .collect(),
            _ => vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Ipv4Prefix {
        s.parse().expect("prefix")
    }

    fn block(cidr: &str, except: &[&str]) -> IpBlock {
        IpBlock {
            cidr: cidr.into(),
            except: except.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn selection_is_cidr_minus_except_over_the_whole_set() {
        let a = parse(&block("192.0.2.0/24", &["192.0.2.128/25"])).unwrap();
        let b = parse(&block("192.0.2.128/26", &[])).unwrap();
        let set: BTreeSet<Ipv4Prefix> = a.prefixes().chain(b.prefixes()).collect();
        let sa: Vec<_> = a.select(&set).copied().collect();
        assert_eq!(sa, vec![p("192.0.2.0/24")], "b's /26 lies in a's except");
        let sb: Vec<_> = b.select(&set).copied().collect();
        assert_eq!(sb, vec![p("192.0.2.128/26")]);
    }

    #[test]
    fn refusals() {
        assert_eq!(parse(&block("nope", &[])), Err(Refusal::InvalidIpBlock));
        assert_eq!(
            parse(&block("2001:db8::/32", &[])),
            Err(Refusal::Ipv6IpBlock)
        );
        assert_eq!(
            parse(&block("10.0.0.0/8", &["11.0.0.0/16"])),
            Err(Refusal::InvalidIpBlock),
            "an except outside its cidr"
        );
        assert_eq!(
            parse(&block("10.0.0.0/8", &["bad"])),
            Err(Refusal::InvalidIpBlock),
            "a bad except refuses the whole block (never widened)"
        );
    }
}
