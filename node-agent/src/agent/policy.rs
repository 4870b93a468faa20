//! Compiling NetworkPolicy records × identities into `cm_policy` entries.
//!
//! Kubernetes NetworkPolicy semantics, applied across the mesh:
//! - Which clusters a policy's selectors (its `podSelector` and its peers')
//!   can select is decided by [`in_scope`] alone (docs/policy.md): a policy
//!   that is not global only its own cluster's pods; a global one every
//!   cluster's, narrowed by `clustermesh.io/cluster` in a selector. A peer's
//!   global policies reach this agent only when this cluster imports them
//!   (`connect --import-policies`; the apiserver does not mirror them
//!   otherwise).
//! - A policy applies to the pods of its namespace in the clusters in scope
//!   (namespace sameness) whose labels its `podSelector` matches. A pod
//!   selected by a policy with type `Ingress` is default-deny for ingress
//!   (likewise `Egress`): only what some rule allows passes.
//! - Rules only allow. A rule with no peers admits every peer, a rule with no
//!   ports every port and protocol (ICMP included); a port without a number
//!   admits the whole protocol.
//! - A peer with only `podSelector` means pods of the policy's namespace (in
//!   every cluster); with `namespaceSelector` pods of the matching namespaces;
//!   with both, both must match. `clustermesh.io/cluster` in either selector
//!   restricts the match to the named clusters.
//! - Named ports resolve through the endpoints' named ports: for ingress the
//!   selected pod's own ports, for egress the peer's.
//! - `endPort` ranges are expanded, at most [`MAX_RANGE`] ports per range.
//! - **Limitation:** `ipBlock` peers are skipped (counted), so such a rule
//!   admits nothing extra; traffic from/to outside the mesh is identity
//!   `world` and is only admitted by rules without peers.
//!
//! Entries are only produced for the identities of this node's pods: they
//! are the only `local_identity` the programs ever look up.

use std::collections::{BTreeMap, BTreeSet};

use clustermesh_proto::v1::{NamedPort, Policy, PolicyPeer, PolicyPort, PolicyRule as K8sRule};

use super::labels::{IdentityLabels, matches};
use crate::datapath::{Direction, PROTO_TCP, PROTO_UDP, PolicyRule, Verdict};

/// SCTP's IP protocol number.
pub const PROTO_SCTP: u8 = 132;
/// The most ports one `port..endPort` range expands to.
pub const MAX_RANGE: u32 = 1024;

/// What the compilation could not express.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyReport {
    /// `ipBlock` peers skipped (see the module docs).
    pub skipped_ip_blocks: usize,
    /// Named ports that no endpoint defines (the port admits nothing).
    pub unresolved_named_ports: usize,
    /// Port ranges cut at [`MAX_RANGE`].
    pub truncated_ranges: usize,
    /// Local identities without an identity record (selectors cannot be evaluated:
    /// treated as selected by no policy).
    pub unknown_local_identities: usize,
}

/// The compiled entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledPolicy {
    pub rules: BTreeMap<PolicyRule, Verdict>,
    pub enforced: BTreeSet<(u32, Direction)>,
    pub report: PolicyReport,
}

/// Inputs of the compilation.
pub struct PolicyInputs<'a> {
    /// Identities of this node's pods.
    pub local: &'a BTreeSet<u32>,
    /// Every known identity by number.
    pub identities: &'a BTreeMap<u32, IdentityLabels>,
    /// Named ports of the endpoints, by identity.
    pub named_ports: &'a BTreeMap<u32, Vec<NamedPort>>,
}

/// The IP protocol of a Kubernetes protocol name (empty = TCP).
pub fn protocol_number(name: &str) -> Option<u8> {
    match name.to_ascii_uppercase().as_str() {
        "" | "TCP" => Some(PROTO_TCP),
        "UDP" => Some(PROTO_UDP),
        "SCTP" => Some(PROTO_SCTP),
        _ => None,
    }
}

/// The policy types in effect, defaulted the Kubernetes way when empty.
fn policy_types(p: &Policy) -> (bool, bool) {
    let spec = p.spec.as_ref();
    let types = spec.map(|s| s.policy_types.as_slice()).unwrap_or(&[]);
    if types.is_empty() {
        let egress = spec.is_some_and(|s| !s.egress.is_empty());
        return (true, egress);
    }
    (
        types.iter().any(|t| t.eq_ignore_ascii_case("Ingress")),
        types.iter().any(|t| t.eq_ignore_ascii_case("Egress")),
    )
}

/// Whether any selector of policy `p` may select identity `l` by its
/// cluster: a policy that is not global keeps its single-cluster meaning
/// (only pods of the policy's own cluster, as Cilium's
/// `policy-default-local-cluster`); a global one may select pods of every
/// cluster (a selector naming clusters with `clustermesh.io/cluster` then
/// narrows it like any label).
pub fn in_scope(p: &Policy, l: &IdentityLabels) -> bool {
    p.global || l.cluster == p.cluster
}

/// Whether policy `p` selects the identity `l`.
fn selects(p: &Policy, l: &IdentityLabels) -> bool {
    if p.namespace != l.namespace || !in_scope(p, l) {
        return false;
    }
    let sel = p.spec.as_ref().and_then(|s| s.pod_selector.as_ref());
    sel.is_none_or(|s| matches(s, &l.pod))
}

/// A peer of a rule: any identity, or one identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Peer {
    Any,
    Id(u32),
}

impl Peer {
    fn raw(self) -> u32 {
        match self {
            Peer::Any => 0,
            Peer::Id(id) => id,
        }
    }
}

/// Compiles every policy for every local identity.
pub fn compile<'p>(
    inputs: &PolicyInputs<'_>,
    policies: impl IntoIterator<Item = &'p Policy> + Clone,
) -> CompiledPolicy {
    let mut out = CompiledPolicy::default();
    for &local in inputs.local {
        let Some(l) = inputs.identities.get(&local) else {
            out.report.unknown_local_identities += 1;
            continue;
        };
        for p in policies.clone() {
            if !selects(p, l) {
                continue;
            }
            let (ingress, egress) = policy_types(p);
            let Some(spec) = p.spec.as_ref() else {
                continue;
            };
            if ingress {
                out.enforced.insert((local, Direction::Ingress));
                for rule in &spec.ingress {
                    compile_rule(inputs, &mut out, p, local, rule, Direction::Ingress);
                }
            }
            if egress {
                out.enforced.insert((local, Direction::Egress));
                for rule in &spec.egress {
                    compile_rule(inputs, &mut out, p, local, rule, Direction::Egress);
                }
            }
        }
    }
    out
}

fn peer_matches(policy: &Policy, peer: &PolicyPeer, l: &IdentityLabels) -> bool {
    if !in_scope(policy, l) {
        return false;
    }
    match (&peer.pod_selector, &peer.namespace_selector) {
        (None, None) => false,
        (Some(ps), None) => l.namespace == policy.namespace && matches(ps, &l.pod),
        (None, Some(ns)) => matches(ns, &l.namespace_labels),
        (Some(ps), Some(ns)) => matches(ns, &l.namespace_labels) && matches(ps, &l.pod),
    }
}

fn peers_of(
    inputs: &PolicyInputs<'_>,
    out: &mut CompiledPolicy,
    p: &Policy,
    rule: &K8sRule,
) -> Vec<Peer> {
    if rule.peers.is_empty() {
        return vec![Peer::Any];
    }
    let mut peers = BTreeSet::new();
    for peer in &rule.peers {
        if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
            if peer.ip_block.is_some() {
                out.report.skipped_ip_blocks += 1;
            }
            continue;
        }
        for (id, l) in inputs.identities {
            if peer_matches(p, peer, l) {
                peers.insert(Peer::Id(*id));
            }
        }
    }
    peers.into_iter().collect()
}

/// Port numbers a named port resolves to on the endpoints of `identity`.
fn named(inputs: &PolicyInputs<'_>, identity: u32, name: &str, proto: u8) -> BTreeSet<u16> {
    inputs
        .named_ports
        .get(&identity)
        .into_iter()
        .flatten()
        .filter(|np| np.name == name && protocol_number(&np.protocol) == Some(proto))
        .filter_map(|np| u16::try_from(np.port).ok().filter(|p| *p != 0))
        .collect()
}

/// (proto, port) pairs of one PolicyPort for one (local, peer) pair.
fn ports_of(
    inputs: &PolicyInputs<'_>,
    report: &mut PolicyReport,
    port: &PolicyPort,
    dir: Direction,
    local: u32,
    peer: Peer,
) -> Vec<(u8, u16)> {
    let Some(proto) = protocol_number(&port.protocol) else {
        return vec![];
    };
    if let Some(name) = &port.named_port {
        // Ingress: the selected pod's own port; egress: the destination's.
        let ids: Vec<u32> = match (dir, peer) {
            (Direction::Ingress, _) => vec![local],
            (Direction::Egress, Peer::Id(id)) => vec![id],
            (Direction::Egress, Peer::Any) => inputs.named_ports.keys().copied().collect(),
        };
        let found: BTreeSet<u16> = ids
            .iter()
            .flat_map(|id| named(inputs, *id, name, proto))
            .collect();
        return found.into_iter().map(|p| (proto, p)).collect();
    }
    match port.port {
        None | Some(0) => vec![(proto, 0)],
        Some(start) => {
            let Ok(start) = u16::try_from(start) else {
                return vec![];
            };
            let end = port
                .end_port
                .and_then(|e| u16::try_from(e).ok())
                .filter(|e| *e >= start)
                .unwrap_or(start);
            let mut last = u32::from(end);
            if last - u32::from(start) + 1 > MAX_RANGE {
                report.truncated_ranges += 1;
                last = u32::from(start) + MAX_RANGE - 1;
            }
            (u32::from(start)..=last)
                .filter_map(|p| u16::try_from(p).ok())
                .map(|p| (proto, p))
                .collect()
        }
    }
}

fn compile_rule(
    inputs: &PolicyInputs<'_>,
    out: &mut CompiledPolicy,
    p: &Policy,
    local: u32,
    rule: &K8sRule,
    dir: Direction,
) {
    let peers = peers_of(inputs, out, p, rule);
    // Named ports that resolved for at least one peer.
    let mut resolved = vec![false; rule.ports.len()];
    for peer in peers {
        let pairs: Vec<(u8, u16)> = if rule.ports.is_empty() {
            vec![(0, 0)]
        } else {
            let mut v = Vec::new();
            for (i, port) in rule.ports.iter().enumerate() {
                // Egress to any peer with a named port: one entry per peer
                // identity that defines it (the number differs per peer).
                if dir == Direction::Egress && peer == Peer::Any && port.named_port.is_some() {
                    let name = port.named_port.as_deref().unwrap_or_default();
                    let Some(proto) = protocol_number(&port.protocol) else {
                        continue;
                    };
                    for id in inputs.named_ports.keys() {
                        for n in named(inputs, *id, name, proto) {
                            resolved[i] = true;
                            out.rules.insert(
                                PolicyRule {
                                    local_identity: local,
                                    peer_identity: *id,
                                    proto,
                                    port: n,
                                    direction: dir,
                                },
                                Verdict::Allow,
                            );
                        }
                    }
                    continue;
                }
                let pairs = ports_of(inputs, &mut out.report, port, dir, local, peer);
                resolved[i] |= !pairs.is_empty();
                v.extend(pairs);
            }
            v
        };
        for (proto, port) in pairs {
            out.rules.insert(
                PolicyRule {
                    local_identity: local,
                    peer_identity: peer.raw(),
                    proto,
                    port,
                    direction: dir,
                },
                Verdict::Allow,
            );
        }
    }
    out.report.unresolved_named_ports += rule
        .ports
        .iter()
        .zip(&resolved)
        .filter(|(p, ok)| p.named_port.is_some() && !**ok)
        .count();
}
