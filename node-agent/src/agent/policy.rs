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
//! - Named ports resolve against each pod's own container ports: for
//!   ingress each selected local pod's (entries keyed by that pod), for egress
//!   each peer pod's (entries naming that pod as the peer).
//! - `port..endPort` ranges of any width become the few port prefixes that
//!   cover them exactly ([`PortPrefix::cover`], at most 30).
//! - `ipBlock` peers select addresses outside the mesh by prefix (see
//!   [`super::policy_cidr`]); a mesh pod's IP is never selected by an ipBlock.
//! - Fail-closed: a local pod whose identity record is unknown is default-deny
//!   in every direction some policy of its namespace enforces, until it is known.
//! - What cannot be programmed is refused, counted per reason and left out,
//!   never widened ([`super::policy_report`]).
//!
//! Entries are only produced for the identities of this node's pods: they
//! are the only `local_identity` the programs ever look up.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use clustermesh_proto::v1::{NamedPort, Policy, PolicyPeer, PolicyPort, PolicyRule as K8sRule};

use super::labels::{IdentityLabels, matches};
use super::policy_cidr::Blocks;
pub use super::policy_report::{PolicyReport, Refusal};
use crate::datapath::pins::{POLICY_CIDR_MAX, POLICY_MAX};
use crate::datapath::{
    Direction, Ipv4Prefix, PROTO_TCP, PROTO_UDP, PolicyLocal, PolicyPeer as Peer, PolicyRule,
    PortPrefix, Verdict,
};

/// SCTP's IP protocol number.
pub const PROTO_SCTP: u8 = 132;

/// The compiled entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledPolicy {
    pub rules: BTreeMap<PolicyRule, Verdict>,
    pub enforced: BTreeSet<(u32, Direction)>,
    /// The ipBlock prefixes of `cm_policy_cidr`.
    pub cidrs: BTreeSet<Ipv4Prefix>,
    pub report: PolicyReport,
}

/// A pod of this node as the compiler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub ip: Ipv4Addr,
    pub identity: u32,
    pub namespace: String,
    pub named_ports: Vec<NamedPort>,
}

/// A pod anywhere in the mesh that defines named ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerEndpoint {
    pub ip: Ipv4Addr,
    pub named_ports: Vec<NamedPort>,
}

/// Inputs of the compilation.
pub struct PolicyInputs<'a> {
    /// This node's pods.
    pub local: &'a [LocalEndpoint],
    /// Every known identity by number.
    pub identities: &'a BTreeMap<u32, IdentityLabels>,
    /// The pods of the mesh that define named ports, by identity.
    pub endpoints: &'a BTreeMap<u32, Vec<PeerEndpoint>>,
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

/// Whether policy `p` could select a pod of `namespace` whatever its labels
/// (the part of [`selects`] that does not need the identity record; the
/// fail-closed rule uses it for pods whose record is unknown).
fn may_select_namespace(p: &Policy, namespace: &str) -> bool {
    p.namespace == namespace
}

pub(crate) fn policy_name(p: &Policy) -> String {
    format!("{}/{}/{}", p.cluster, p.namespace, p.name)
}

/// Compiles every policy for every local identity.
pub fn compile<'p>(
    inputs: &PolicyInputs<'_>,
    policies: impl IntoIterator<Item = &'p Policy> + Clone,
) -> CompiledPolicy {
    let mut out = CompiledPolicy::default();
    let mut blocks = Blocks::default();
    for p in policies.clone() {
        blocks.gather(&mut out.report, &policy_name(p), p);
    }
    let mut locals: BTreeMap<u32, Vec<&LocalEndpoint>> = BTreeMap::new();
    for e in inputs.local {
        locals.entry(e.identity).or_default().push(e);
    }
    for (&local, pods) in &locals {
        let Some(l) = inputs.identities.get(&local) else {
            fail_closed(&mut out, local, pods, policies.clone());
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
            let mut cx = Rule {
                inputs,
                blocks: &blocks,
                policy: p,
                local,
                pods,
                out: &mut out,
            };
            if ingress {
                cx.out.enforced.insert((local, Direction::Ingress));
                for rule in &spec.ingress {
                    cx.compile(rule, Direction::Ingress);
                }
            }
            if egress {
                cx.out.enforced.insert((local, Direction::Egress));
                for rule in &spec.egress {
                    cx.compile(rule, Direction::Egress);
                }
            }
        }
    }
    if out
        .rules
        .keys()
        .any(|r| matches!(r.peer, Peer::Cidr { .. }))
    {
        out.cidrs = blocks.set.clone();
    }
    enforce_capacity(&mut out, &locals);
    out.report.ip_block_prefixes = out.cidrs.len();
    out
}

/// A local identity without a record: its selectors cannot be evaluated, so
/// it is default-deny in every direction any policy of its pods' namespaces
/// enforces (a policy there may select it once its labels are known).
fn fail_closed<'p>(
    out: &mut CompiledPolicy,
    local: u32,
    pods: &[&LocalEndpoint],
    policies: impl IntoIterator<Item = &'p Policy>,
) {
    out.report.unknown_local_identities += 1;
    let namespaces: BTreeSet<&str> = pods.iter().map(|e| e.namespace.as_str()).collect();
    let mut closed = false;
    for p in policies {
        if !namespaces.iter().any(|ns| may_select_namespace(p, ns)) || p.spec.is_none() {
            continue;
        }
        let (ingress, egress) = policy_types(p);
        for (on, dir) in [(ingress, Direction::Ingress), (egress, Direction::Egress)] {
            if on {
                out.enforced.insert((local, dir));
                closed = true;
            }
        }
    }
    if closed {
        out.report.fail_closed_identities += 1;
    }
}

/// Leaves out what the maps cannot hold, refusing it: whole local identities
/// (they stay default-deny) beyond `cm_policy_lpm`'s capacity, every ipBlock
/// peer beyond `cm_policy_cidr`'s.
fn enforce_capacity(out: &mut CompiledPolicy, locals: &BTreeMap<u32, Vec<&LocalEndpoint>>) {
    if out.cidrs.len() > POLICY_CIDR_MAX as usize {
        out.report.refuse(
            Refusal::CidrMapFull,
            String::new(),
            format!("{} prefixes > {POLICY_CIDR_MAX}", out.cidrs.len()),
        );
        out.rules
            .retain(|r, _| !matches!(r.peer, Peer::Cidr { .. }));
        out.cidrs.clear();
    }
    if out.rules.len() <= POLICY_MAX as usize {
        return;
    }
    let by_ip: BTreeMap<Ipv4Addr, u32> = locals
        .iter()
        .flat_map(|(id, pods)| pods.iter().map(move |e| (e.ip, *id)))
        .collect();
    let identity_of = |r: &PolicyRule| match r.local {
        PolicyLocal::Identity(id) => id,
        PolicyLocal::Endpoint(ip) => by_ip.get(&ip).copied().unwrap_or(0),
    };
    let mut per_identity: BTreeMap<u32, usize> = BTreeMap::new();
    for r in out.rules.keys() {
        *per_identity.entry(identity_of(r)).or_default() += 1;
    }
    let mut room = POLICY_MAX as usize;
    let mut dropped = BTreeSet::new();
    for (id, n) in per_identity {
        if n <= room {
            room -= n;
        } else {
            dropped.insert(id);
            out.report.refuse(
                Refusal::PolicyMapFull,
                format!("identity {id}"),
                format!("{n} entries"),
            );
        }
    }
    out.rules.retain(|r, _| !dropped.contains(&identity_of(r)));
}

/// Compiling the rules of one policy for one local identity.
struct Rule<'a, 'i> {
    inputs: &'a PolicyInputs<'i>,
    blocks: &'a Blocks,
    policy: &'a Policy,
    local: u32,
    pods: &'a [&'a LocalEndpoint],
    out: &'a mut CompiledPolicy,
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

impl Rule<'_, '_> {
    fn refuse(&mut self, why: Refusal, detail: String) {
        self.out
            .report
            .refuse(why, policy_name(self.policy), detail);
    }

    fn allow(
        &mut self,
        local: PolicyLocal,
        peer: Peer,
        proto: u8,
        port: PortPrefix,
        dir: Direction,
    ) {
        self.out.rules.insert(
            PolicyRule {
                local,
                peer,
                proto,
                port,
                direction: dir,
            },
            Verdict::Allow,
        );
    }

    fn peers(&self, rule: &K8sRule) -> Vec<Peer> {
        if rule.peers.is_empty() {
            return vec![Peer::Any];
        }
        let mut peers = BTreeSet::new();
        for peer in &rule.peers {
            if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
                if let Some(b) = &peer.ip_block {
                    peers.extend(self.blocks.peers(b));
                }
                continue;
            }
            for (id, l) in self.inputs.identities {
                if peer_matches(self.policy, peer, l) {
                    peers.insert(Peer::Identity(*id));
                }
            }
        }
        peers.into_iter().collect()
    }

    fn compile(&mut self, rule: &K8sRule, dir: Direction) {
        let peers = self.peers(rule);
        let local = PolicyLocal::Identity(self.local);
        if rule.ports.is_empty() {
            for peer in &peers {
                self.allow(local, *peer, 0, PortPrefix::ANY, dir);
            }
            return;
        }
        for port in &rule.ports {
            let Some(proto) = protocol_number(&port.protocol) else {
                self.refuse(
                    Refusal::UnknownProtocol,
                    format!("protocol {:?}", port.protocol),
                );
                continue;
            };
            if let Some(name) = &port.named_port {
                self.named(&peers, name, proto, dir);
                continue;
            }
            let Some(prefixes) = self.numeric(port, proto) else {
                continue;
            };
            for peer in &peers {
                for pp in &prefixes {
                    self.allow(local, *peer, proto, *pp, dir);
                }
            }
        }
    }

    /// The port prefixes of a numeric port (or the whole protocol); `None` if refused.
    fn numeric(&mut self, port: &PolicyPort, proto: u8) -> Option<Vec<PortPrefix>> {
        let Some(start) = port.port.filter(|p| *p != 0) else {
            return Some(vec![PortPrefix::ANY]);
        };
        let end = port.end_port.unwrap_or(start);
        let (Ok(lo), Ok(hi)) = (u16::try_from(start), u16::try_from(end)) else {
            self.refuse(Refusal::InvalidPort, format!("port {start}..{end}"));
            return None;
        };
        if hi < lo {
            self.refuse(Refusal::InvalidPort, format!("port {start}..{end}"));
            return None;
        }
        if proto == PROTO_SCTP {
            self.refuse(Refusal::SctpPort, format!("SCTP port {start}..{end}"));
            return None;
        }
        Some(PortPrefix::cover(lo, hi))
    }

    /// A named port: ingress resolves on each selected local pod, egress on
    /// each peer pod.
    fn named(&mut self, peers: &[Peer], name: &str, proto: u8, dir: Direction) {
        if proto == PROTO_SCTP {
            self.refuse(Refusal::SctpPort, format!("SCTP port {name:?}"));
            return;
        }
        let mut resolved = false;
        match dir {
            Direction::Ingress => {
                let pods: Vec<(Ipv4Addr, Vec<u16>)> = self
                    .pods
                    .iter()
                    .map(|e| (e.ip, resolve(&e.named_ports, name, proto)))
                    .collect();
                for (ip, numbers) in pods {
                    for n in numbers {
                        resolved = true;
                        for peer in peers {
                            let port = PortPrefix::exact(n);
                            self.allow(PolicyLocal::Endpoint(ip), *peer, proto, port, dir);
                        }
                    }
                }
            }
            Direction::Egress => {
                let local = PolicyLocal::Identity(self.local);
                let mut targets: Vec<(Ipv4Addr, u16)> = Vec::new();
                for peer in peers {
                    let ids: Vec<u32> = match peer {
                        Peer::Any => self.inputs.endpoints.keys().copied().collect(),
                        Peer::Identity(id) => vec![*id],
                        Peer::Cidr { addr, len } => {
                            self.refuse(
                                Refusal::NamedPortToIpBlock,
                                format!("port {name:?} to {addr}/{len}"),
                            );
                            continue;
                        }
                        Peer::Endpoint(_) => continue,
                    };
                    for id in ids {
                        for e in self.inputs.endpoints.get(&id).into_iter().flatten() {
                            for n in resolve(&e.named_ports, name, proto) {
                                targets.push((e.ip, n));
                            }
                        }
                    }
                }
                for (ip, n) in targets {
                    resolved = true;
                    self.allow(local, Peer::Endpoint(ip), proto, PortPrefix::exact(n), dir);
                }
            }
        }
        if !resolved {
            self.out.report.unresolved_named_ports += 1;
        }
    }
}

/// The numbers `name` has among `ports` for `proto`.
fn resolve(ports: &[NamedPort], name: &str, proto: u8) -> Vec<u16> {
    ports
        .iter()
        .filter(|np| np.name == name && protocol_number(&np.protocol) == Some(proto))
        .filter_map(|np| u16::try_from(np.port).ok().filter(|p| *p != 0))
        .collect()
}
