//! What the policy compiler could not program, by reason.
//!
//! A refused rule part is never widened: it is left out (its rule admits
//! less, fail-closed), counted here per reason, shown in `/status`,
//! `/metrics` and `clustermesh status`, and logged once per (reason, policy,
//! detail) by the reconciler.

use std::collections::{BTreeMap, BTreeSet};

/// Why a rule (or part of one) was not programmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// A protocol other than TCP, UDP or SCTP: the port is left out.
    UnknownProtocol,
    /// A port outside 1..=65535, or an `endPort` below `port`.
    InvalidPort,
    /// An SCTP port number: the datapath parses TCP/UDP ports only (a whole-
    /// protocol SCTP rule is programmed).
    SctpPort,
    /// An ipBlock whose cidr or except does not parse, or an except outside
    /// its cidr: the peer is left out (dropping only the except would widen).
    InvalidIpBlock,
    /// An IPv6 ipBlock: the datapath is IPv4-only.
    Ipv6IpBlock,
    /// A named port in an egress rule to an ipBlock (no pod defines it).
    NamedPortToIpBlock,
    /// `cm_policy_lpm` would overflow: the entries of this local identity are
    /// left out (it stays default-deny).
    PolicyMapFull,
    /// `cm_policy_cidr` would overflow: every ipBlock peer is left out.
    CidrMapFull,
}

impl Refusal {
    pub const ALL: [Refusal; 8] = [
        Refusal::UnknownProtocol,
        Refusal::InvalidPort,
        Refusal::SctpPort,
        Refusal::InvalidIpBlock,
        Refusal::Ipv6IpBlock,
        Refusal::NamedPortToIpBlock,
        Refusal::PolicyMapFull,
        Refusal::CidrMapFull,
    ];

    /// The label in `/status`, `/metrics` and the CLI.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::UnknownProtocol => "unknown_protocol",
            Refusal::InvalidPort => "invalid_port",
            Refusal::SctpPort => "sctp_port",
            Refusal::InvalidIpBlock => "invalid_ip_block",
            Refusal::Ipv6IpBlock => "ipv6_ip_block",
            Refusal::NamedPortToIpBlock => "named_port_to_ip_block",
            Refusal::PolicyMapFull => "policy_map_full",
            Refusal::CidrMapFull => "cidr_map_full",
        }
    }
}

/// One refused item: the reason, the policy (`cluster/namespace/name`, or the
/// identity for map-full) and what exactly.
pub type RefusalKey = (Refusal, String, String);

/// What the compilation could not express.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyReport {
    /// Every refused item (deduplicated across the local identities that
    /// share a rule).
    pub refusals: BTreeSet<RefusalKey>,
    /// Named ports that no selected pod (ingress) or peer pod (egress)
    /// defines: Kubernetes semantics, the port admits nothing.
    pub unresolved_named_ports: usize,
    /// Local identities without an identity record.
    pub unknown_local_identities: usize,
    /// Of those, the ones in a namespace some policy selects: default-deny in
    /// that policy's directions until the record arrives (fail-closed).
    pub fail_closed_identities: usize,
    /// ipBlock prefixes programmed into `cm_policy_cidr`.
    pub ip_block_prefixes: usize,
}

impl PolicyReport {
    pub(crate) fn refuse(&mut self, why: Refusal, policy: String, detail: String) {
        self.refusals.insert((why, policy, detail));
    }

    /// Refused items per reason (every reason present, 0 included).
    pub fn refused(&self) -> BTreeMap<&'static str, usize> {
        let mut out: BTreeMap<&'static str, usize> =
            Refusal::ALL.iter().map(|r| (r.label(), 0)).collect();
        for (r, _, _) in &self.refusals {
            *out.entry(r.label()).or_default() += 1;
        }
        out
    }

    /// Total refused items.
    pub fn refused_total(&self) -> usize {
        self.refusals.len()
    }
}
