//! The clustermesh wire contract (`clustermesh.v1`) and the small domain
//! helpers every side needs: the 24-bit identity layout, store key names and
//! validation of cluster names and IDs.

pub mod attest;
pub mod backends;
pub mod backoff;
pub mod chunks;
pub mod clock;
pub mod duration;
pub mod heap;
pub mod identity;
pub mod key_map;
pub mod keys;
pub mod mirror;
pub mod node_address;
pub mod quota;
pub mod selection;
pub mod stamp;
pub mod validate;

/// Generated protobuf and gRPC code for `clustermesh.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("clustermesh.v1");
}

pub use identity::{ClusterMode, IdentityError, IdentityKind};
pub use validate::ValidationError;

use v1::Kind;

/// All record kinds, in the order a consumer should apply a snapshot
/// (identities before the endpoints that reference them, a service before
/// its backends).
pub const RECORD_KINDS: [Kind; 6] = [
    Kind::Identity,
    Kind::Node,
    Kind::Endpoint,
    Kind::Service,
    Kind::ServiceBackend,
    Kind::Policy,
];

impl Kind {
    /// The store path segment of a kind (`state/<segment>/...`).
    pub fn segment(self) -> &'static str {
        match self {
            Kind::Unspecified => "unspecified",
            Kind::Node => "nodes",
            Kind::Endpoint => "endpoints",
            Kind::Identity => "identities",
            Kind::Service => "services",
            Kind::Policy => "policies",
            Kind::ServiceBackend => "backends",
        }
    }

    /// The kind named by a store path segment.
    pub fn from_segment(segment: &str) -> Option<Kind> {
        RECORD_KINDS.into_iter().find(|k| k.segment() == segment)
    }

    /// A short human name ("nodes", "endpoints", ...), as used by the CLI.
    pub fn display_name(self) -> &'static str {
        self.segment()
    }
}

impl v1::RecordHeader {
    /// Reads `cluster` and `exported` from the bytes of any record kind.
    pub fn peek(record: &[u8]) -> Result<Self, prost::DecodeError> {
        prost::Message::decode(record)
    }
}
