//! Ingest validation (DESIGN §10): every record a peer sends is checked here
//! before anything is written. [`PeerRef::check`] applies the rules that need
//! only the record and this cluster's context ([`Context`]: its own pod and
//! service CIDRs, the other peers' pod CIDRs); [`gate::Gate`] applies the one
//! that depends on the peer's other records (an endpoint or service backend
//! must lie inside a pod CIDR the same peer announces) and holds records that
//! wait for their node. [`RULES`] is the table docs/mesh.md lists.

pub mod gate;
pub mod net;
pub mod quota;
mod records;

use std::net::IpAddr;
use std::sync::Arc;

use clustermesh_proto::ClusterMode;
use clustermesh_proto::v1::{Event, EventType, Kind};
use thiserror::Error;

pub use crate::cidr::CidrIndex;
pub use net::Cidr;

/// The largest record (encoded bytes) accepted from a peer. A quarter of
/// what one store write may hold ([`crate::store::MAX_RECORD_BYTES`]), so a
/// peer's record is refused here, counted in its status, before it could
/// ever be refused by the store.
pub const MAX_RECORD_BYTES: usize = 256 * 1024;
/// The longest record key accepted from a peer.
pub const MAX_KEY_BYTES: usize = 512;

// A record that passes these checks, under its `cache/<kind>/<peer>/` key
// (a few dozen bytes more than the peer's key), always fits one store write.
const _: () = assert!(MAX_RECORD_BYTES + 2 * MAX_KEY_BYTES < crate::store::MAX_RECORD_BYTES);

/// Why a record is refused (or, for [`Reason::OutsidePeerPodCidrs`], held
/// pending): a short stable label, counted per peer in its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    ForeignEvent,
    UnknownKind,
    BadKey,
    TooLarge,
    Undecodable,
    ForeignRecord,
    KeyMismatch,
    BadName,
    BadAddress,
    BadCidr,
    DefaultRoute,
    CidrTooWide,
    LocalPodCidr,
    LocalServiceCidr,
    OtherPeerCidr,
    IdentityOutOfRange,
    ReservedIdentity,
    ForeignClusterLabel,
    /// Not a refusal: the record waits (see [`gate`]).
    OutsidePeerPodCidrs,
    /// Beyond the peer's quota ([`quota`]): checked when the cache takes it.
    QuotaExceeded,
    /// The store refused the write (too large for one write).
    StoreRefused,
}

/// One row of the rules table.
pub struct Rule {
    pub reason: Reason,
    pub kinds: &'static str,
    pub refuses: &'static str,
}

/// The ingest rules, in the order they are checked (docs/mesh.md lists them).
pub const RULES: &[Rule] = &[
    Rule {
        reason: Reason::ForeignEvent,
        kinds: "all",
        refuses: "an event whose `cluster` is not the peer",
    },
    Rule {
        reason: Reason::UnknownKind,
        kinds: "all",
        refuses: "an unknown record kind or event type",
    },
    Rule {
        reason: Reason::TooLarge,
        kinds: "all",
        refuses: "a value over 256 KiB",
    },
    Rule {
        reason: Reason::BadKey,
        kinds: "all",
        refuses: "an empty key, one over 512 bytes or with control characters",
    },
    Rule {
        reason: Reason::Undecodable,
        kinds: "all",
        refuses: "a value that does not decode as its kind",
    },
    Rule {
        reason: Reason::ForeignRecord,
        kinds: "all",
        refuses: "a record whose `cluster` is not the peer",
    },
    Rule {
        reason: Reason::KeyMismatch,
        kinds: "all",
        refuses: "a key that is not the record's own (node name, endpoint IP, `namespace/name`, `namespace/service/ip` of a backend, identity number)",
    },
    Rule {
        reason: Reason::BadName,
        kinds: "node, endpoint, service, backend, policy",
        refuses: "a node, pod or policy name that is not a DNS-1123 subdomain; a namespace or service name that is not a DNS-1123 label",
    },
    Rule {
        reason: Reason::BadAddress,
        kinds: "node, endpoint, service, backend",
        refuses: "a node address, endpoint IP, node IP, frontend or backend IP that is not an IP address",
    },
    Rule {
        reason: Reason::BadCidr,
        kinds: "node",
        refuses: "a pod CIDR that is not `address/prefix` with the host bits zero",
    },
    Rule {
        reason: Reason::DefaultRoute,
        kinds: "node",
        refuses: "a pod CIDR 0.0.0.0/0 or ::/0",
    },
    Rule {
        reason: Reason::CidrTooWide,
        kinds: "node",
        refuses: "a pod CIDR wider than /8 (IPv4) or /32 (IPv6)",
    },
    Rule {
        reason: Reason::LocalPodCidr,
        kinds: "node, endpoint, service, backend",
        refuses: "a pod CIDR overlapping, or an endpoint or backend IP inside, this cluster's pod CIDRs (its own Node records)",
    },
    Rule {
        reason: Reason::LocalServiceCidr,
        kinds: "node, endpoint, service, backend",
        refuses: "the same against this cluster's `--service-cidr`s",
    },
    Rule {
        reason: Reason::OtherPeerCidr,
        kinds: "node, endpoint, service, backend",
        refuses: "the same against the pod CIDRs another peer announces (already in the cache)",
    },
    Rule {
        reason: Reason::ReservedIdentity,
        kinds: "identity, endpoint",
        refuses: "a reserved identity (1..=255) or identity 0",
    },
    Rule {
        reason: Reason::IdentityOutOfRange,
        kinds: "identity, endpoint",
        refuses: "an identity outside the peer's cluster-ID range",
    },
    Rule {
        reason: Reason::ForeignClusterLabel,
        kinds: "identity",
        refuses: "a `clustermesh.io/cluster` label (any `source:` prefix, e.g. `k8s:`) that is not the record's cluster",
    },
    Rule {
        reason: Reason::OutsidePeerPodCidrs,
        kinds: "endpoint, service, backend",
        refuses: "nothing: an endpoint IP or backend IP outside every pod CIDR the peer announces is held pending until a node covers it",
    },
    Rule {
        reason: Reason::QuotaExceeded,
        kinds: "all",
        refuses: "a new record beyond the peer's quota of its kind, or a record whose bytes would take the peer over its byte quota (see Per-peer quotas)",
    },
];

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::ForeignEvent => "foreign_event",
            Reason::UnknownKind => "unknown_kind",
            Reason::BadKey => "bad_key",
            Reason::TooLarge => "too_large",
            Reason::Undecodable => "undecodable",
            Reason::ForeignRecord => "foreign_record",
            Reason::KeyMismatch => "key_mismatch",
            Reason::BadName => "bad_name",
            Reason::BadAddress => "bad_address",
            Reason::BadCidr => "bad_cidr",
            Reason::DefaultRoute => "default_route",
            Reason::CidrTooWide => "cidr_too_wide",
            Reason::LocalPodCidr => "local_pod_cidr",
            Reason::LocalServiceCidr => "local_service_cidr",
            Reason::OtherPeerCidr => "other_peer_cidr",
            Reason::IdentityOutOfRange => "identity_out_of_range",
            Reason::ReservedIdentity => "reserved_identity",
            Reason::ForeignClusterLabel => "foreign_cluster_label",
            Reason::OutsidePeerPodCidrs => "outside_peer_pod_cidrs",
            Reason::QuotaExceeded => "quota_exceeded",
            Reason::StoreRefused => "store_refused",
        }
    }
}

/// Why one event from a peer is rejected (never written; counted).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RejectError {
    #[error(
        "event for cluster {got:?} on peer {peer:?}'s stream: a peer may only send its own records"
    )]
    ForeignEvent { peer: String, got: String },
    #[error("event of unknown kind {0} or type {1}")]
    UnknownKind(i32, i32),
    #[error("{kind} record has an empty or oversized key ({len} bytes, at most {MAX_KEY_BYTES})")]
    BadKey { kind: &'static str, len: usize },
    #[error("{kind} {key:?} is {len} bytes, more than the {MAX_RECORD_BYTES}-byte limit")]
    TooLarge {
        kind: &'static str,
        key: String,
        len: usize,
    },
    #[error("{kind} {key:?} does not decode: {reason}")]
    Undecodable {
        kind: &'static str,
        key: String,
        reason: String,
    },
    #[error("{kind} {key:?} claims cluster {got:?} but came from peer {peer:?}")]
    ForeignRecord {
        kind: &'static str,
        key: String,
        peer: String,
        got: String,
    },
    #[error(
        "{kind} {key:?} carries identity {id} ({id:#08x}), outside peer {peer:?}'s identity range (cluster ID {peer_id}) and not reserved"
    )]
    IdentityOutOfRange {
        kind: &'static str,
        key: String,
        id: u32,
        peer: String,
        peer_id: u32,
    },
    /// Any other rule of [`RULES`].
    #[error("{kind} {key:?}: {detail} [{}]", reason.label())]
    Rule {
        reason: Reason,
        kind: &'static str,
        key: String,
        detail: String,
    },
}

impl RejectError {
    pub fn reason(&self) -> Reason {
        match self {
            RejectError::ForeignEvent { .. } => Reason::ForeignEvent,
            RejectError::UnknownKind(..) => Reason::UnknownKind,
            RejectError::BadKey { .. } => Reason::BadKey,
            RejectError::TooLarge { .. } => Reason::TooLarge,
            RejectError::Undecodable { .. } => Reason::Undecodable,
            RejectError::ForeignRecord { .. } => Reason::ForeignRecord,
            RejectError::IdentityOutOfRange { .. } => Reason::IdentityOutOfRange,
            RejectError::Rule { reason, .. } => *reason,
        }
    }
}

/// What this cluster knows when it checks a peer's record.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// This cluster's pod CIDRs (its own Node records, `state/nodes/<self>/`).
    pub own_pods: Arc<CidrIndex>,
    /// This cluster's service CIDRs (`--service-cidr`).
    pub services: Vec<Cidr>,
    /// Pod CIDRs the peers announce (their cached Node records), by peer;
    /// the checked peer's own (`peer`) are skipped. One index shared by
    /// every peer's checks ([`crate::mesh::ingest_context::ingest_context`]).
    pub others: Arc<CidrIndex>,
    /// The peer whose records are checked.
    pub peer: String,
}

impl Context {
    /// A context from lists (tests, fuzzing): `others` are other peers' CIDRs.
    pub fn new(own_pods: Vec<Cidr>, services: Vec<Cidr>, others: Vec<(String, Cidr)>) -> Self {
        let mut own = CidrIndex::new();
        for c in own_pods {
            own.insert("", c);
        }
        let mut o = CidrIndex::new();
        for (peer, c) in others {
            o.insert(&peer, c);
        }
        Context {
            own_pods: Arc::new(own),
            services,
            others: Arc::new(o),
            peer: String::new(),
        }
    }

    /// The rule `ip` breaks by lying in a range that is not the peer's.
    fn ip_clash(&self, ip: &IpAddr) -> Option<(Reason, String)> {
        if let Some(c) = self.own_pods.any_containing(ip) {
            return Some((
                Reason::LocalPodCidr,
                format!("{ip} is inside this cluster's pod CIDR {c}"),
            ));
        }
        if let Some(c) = self.services.iter().find(|c| c.contains(ip)) {
            return Some((
                Reason::LocalServiceCidr,
                format!("{ip} is inside this cluster's service CIDR {c}"),
            ));
        }
        if let Some((p, c)) = self.others.containing(ip, &self.peer) {
            return Some((
                Reason::OtherPeerCidr,
                format!("{ip} is inside peer {p:?}'s pod CIDR {c}"),
            ));
        }
        None
    }

    /// The rule pod CIDR `cidr` breaks by overlapping a range that is not the peer's.
    fn cidr_clash(&self, cidr: &Cidr) -> Option<(Reason, String)> {
        if let Some(c) = self.own_pods.any_overlapping(cidr) {
            return Some((
                Reason::LocalPodCidr,
                format!("pod CIDR {cidr} overlaps this cluster's pod CIDR {c}"),
            ));
        }
        if let Some(c) = self.services.iter().find(|c| c.overlaps(cidr)) {
            return Some((
                Reason::LocalServiceCidr,
                format!("pod CIDR {cidr} overlaps this cluster's service CIDR {c}"),
            ));
        }
        if let Some((p, c)) = self.others.overlapping(cidr, &self.peer) {
            return Some((
                Reason::OtherPeerCidr,
                format!("pod CIDR {cidr} overlaps peer {p:?}'s pod CIDR {c}"),
            ));
        }
        None
    }
}

/// The peer a stream belongs to, for record checks.
#[derive(Debug, Clone)]
pub struct PeerRef {
    pub name: String,
    pub id: u32,
    pub mode: ClusterMode,
}

impl PeerRef {
    /// Checks one event; `Ok` means it may be applied (an endpoint or
    /// service may still wait in the [`gate::Gate`] for its node).
    pub fn check(&self, e: &Event, ctx: &Context) -> Result<(), RejectError> {
        if e.cluster != self.name {
            return Err(RejectError::ForeignEvent {
                peer: self.name.clone(),
                got: e.cluster.clone(),
            });
        }
        let kind = match Kind::try_from(e.kind) {
            Ok(k) if k != Kind::Unspecified => k,
            _ => return Err(RejectError::UnknownKind(e.kind, e.r#type)),
        };
        let name = kind.segment();
        if e.value.len() > MAX_RECORD_BYTES {
            return Err(RejectError::TooLarge {
                kind: name,
                key: truncated(&e.key),
                len: e.value.len(),
            });
        }
        match EventType::try_from(e.r#type) {
            Ok(EventType::Synced | EventType::Unsynced) => Ok(()),
            Ok(EventType::Delete) => check_key(name, &e.key),
            Ok(EventType::Upsert) => {
                check_key(name, &e.key)?;
                records::check(self, ctx, kind, &e.key, &e.value)
            }
            _ => Err(RejectError::UnknownKind(e.kind, e.r#type)),
        }
    }
}

fn check_key(kind: &'static str, key: &str) -> Result<(), RejectError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES || key.chars().any(char::is_control) {
        return Err(RejectError::BadKey {
            kind,
            len: key.len(),
        });
    }
    Ok(())
}

pub(crate) fn truncated(key: &str) -> String {
    if key.len() <= 64 {
        return key.to_owned();
    }
    let mut end = 64;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &key[..end])
}

#[cfg(test)]
mod tests;
