//! What the mesh syncer accepts from a peer: the peer's ClusterInfo (checked
//! against its registration, this cluster and the other peers) and every
//! record it sends (checked before anything is written).

use clustermesh_proto::v1::{
    ClusterInfo, Endpoint, Event, EventType, Identity, Kind, Node, PeerConfig, Policy, Service,
};
use clustermesh_proto::{ClusterMode, ValidationError, validate};
use prost::Message;
use thiserror::Error;

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

/// Why a peer's ClusterInfo is refused (nothing is mirrored from it).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PeerInfoError {
    #[error(
        "peer {registered:?} answers as cluster {got:?}: the address points at another cluster, or the peer was registered under the wrong name"
    )]
    NameMismatch { registered: String, got: String },
    #[error(
        "peer {name:?} answers with cluster ID {got}, but it was registered with ID {registered}: fix the registration (connect again) or the peer's --cluster-id"
    )]
    IdMismatch {
        name: String,
        registered: u32,
        got: u32,
    },
    #[error(
        "peer {name:?} runs with max-connected-clusters {got}, this cluster with {ours}: every cluster of one mesh must use the same value"
    )]
    MaxClustersMismatch { name: String, ours: u32, got: u32 },
    #[error(
        "peer {name:?} answers as this cluster itself ({what}): the registered address points back at this cluster"
    )]
    IsUs { name: String, what: String },
    #[error(
        "peer {name:?} has cluster ID {id}, already used by peer {other:?}: cluster IDs must be unique in the mesh"
    )]
    DuplicateId {
        name: String,
        id: u32,
        other: String,
    },
    #[error("peer {name:?} sent invalid cluster settings: {source}")]
    Invalid {
        name: String,
        source: ValidationError,
    },
}

/// Checks what a peer says it is (`got`) against its registration, this
/// cluster (`ours`) and the other registered peers.
pub fn peer_info(
    ours: &ClusterInfo,
    registered: &PeerConfig,
    others: &[PeerConfig],
    got: &ClusterInfo,
) -> Result<(), PeerInfoError> {
    let name = registered.name.clone();
    validate::cluster_info(got).map_err(|source| PeerInfoError::Invalid {
        name: name.clone(),
        source,
    })?;
    if got.name == ours.name {
        return Err(PeerInfoError::IsUs {
            name,
            what: format!("cluster name {:?}", got.name),
        });
    }
    if got.id == ours.id {
        return Err(PeerInfoError::IsUs {
            name,
            what: format!("cluster ID {}", got.id),
        });
    }
    if got.name != registered.name {
        return Err(PeerInfoError::NameMismatch {
            registered: name,
            got: got.name.clone(),
        });
    }
    if got.id != registered.cluster_id {
        return Err(PeerInfoError::IdMismatch {
            name,
            registered: registered.cluster_id,
            got: got.id,
        });
    }
    if got.max_connected_clusters != ours.max_connected_clusters {
        return Err(PeerInfoError::MaxClustersMismatch {
            name,
            ours: ours.max_connected_clusters,
            got: got.max_connected_clusters,
        });
    }
    if let Some(other) = others
        .iter()
        .find(|p| p.name != registered.name && p.cluster_id == got.id)
    {
        return Err(PeerInfoError::DuplicateId {
            name,
            id: got.id,
            other: other.name.clone(),
        });
    }
    Ok(())
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
}

impl RejectError {
    /// A short, stable name of the reason (the `reason` label of
    /// `clustermesh_apiserver_rejected_records_total`).
    pub fn reason(&self) -> &'static str {
        match self {
            RejectError::ForeignEvent { .. } => "foreign_event",
            RejectError::UnknownKind(..) => "unknown_kind",
            RejectError::BadKey { .. } => "bad_key",
            RejectError::TooLarge { .. } => "too_large",
            RejectError::Undecodable { .. } => "undecodable",
            RejectError::ForeignRecord { .. } => "foreign_record",
            RejectError::IdentityOutOfRange { .. } => "identity_out_of_range",
        }
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
    /// Checks one event; `Ok` means it may be applied and written.
    pub fn check(&self, e: &Event) -> Result<(), RejectError> {
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
            Ok(EventType::Delete) => self.check_key(name, &e.key),
            Ok(EventType::Upsert) => {
                self.check_key(name, &e.key)?;
                self.check_record(kind, &e.key, &e.value)
            }
            _ => Err(RejectError::UnknownKind(e.kind, e.r#type)),
        }
    }

    fn check_key(&self, kind: &'static str, key: &str) -> Result<(), RejectError> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES || key.chars().any(char::is_control) {
            return Err(RejectError::BadKey {
                kind,
                len: key.len(),
            });
        }
        Ok(())
    }

    fn check_record(&self, kind: Kind, key: &str, value: &[u8]) -> Result<(), RejectError> {
        let name = kind.segment();
        let undecodable = |e: prost::DecodeError| RejectError::Undecodable {
            kind: name,
            key: key.to_owned(),
            reason: e.to_string(),
        };
        let (cluster, identity) = match kind {
            Kind::Node => (Node::decode(value).map_err(undecodable)?.cluster, None),
            Kind::Endpoint => {
                let r = Endpoint::decode(value).map_err(undecodable)?;
                (r.cluster, Some(r.identity))
            }
            Kind::Identity => {
                let r = Identity::decode(value).map_err(undecodable)?;
                (r.cluster, Some(r.id))
            }
            Kind::Service => (Service::decode(value).map_err(undecodable)?.cluster, None),
            Kind::Policy => (Policy::decode(value).map_err(undecodable)?.cluster, None),
            Kind::Unspecified => return Err(RejectError::UnknownKind(kind as i32, 0)),
        };
        if cluster != self.name {
            return Err(RejectError::ForeignRecord {
                kind: name,
                key: key.to_owned(),
                peer: self.name.clone(),
                got: cluster,
            });
        }
        if let Some(id) = identity
            && !self.mode.owned_by(id, self.id)
        {
            return Err(RejectError::IdentityOutOfRange {
                kind: name,
                key: key.to_owned(),
                id,
                peer: self.name.clone(),
                peer_id: self.id,
            });
        }
        Ok(())
    }
}

fn truncated(key: &str) -> String {
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
mod tests {
    use super::*;

    fn info(name: &str, id: u32) -> ClusterInfo {
        ClusterInfo {
            name: name.into(),
            id,
            max_connected_clusters: 255,
            capabilities: vec![],
        }
    }
    fn peer(name: &str, id: u32) -> PeerConfig {
        PeerConfig {
            name: name.into(),
            cluster_id: id,
            ..Default::default()
        }
    }

    #[test]
    fn peer_info_checks() {
        let ours = info("b", 2);
        let reg = peer("a", 1);
        assert_eq!(peer_info(&ours, &reg, &[], &info("a", 1)), Ok(()));
        assert!(matches!(
            peer_info(&ours, &reg, &[], &info("x", 1)),
            Err(PeerInfoError::NameMismatch { .. })
        ));
        assert!(matches!(
            peer_info(&ours, &reg, &[], &info("a", 3)),
            Err(PeerInfoError::IdMismatch { .. })
        ));
        assert!(matches!(
            peer_info(&ours, &reg, &[], &info("b", 1)),
            Err(PeerInfoError::IsUs { .. })
        ));
        assert!(matches!(
            peer_info(&ours, &reg, &[], &info("a", 2)),
            Err(PeerInfoError::IsUs { .. })
        ));
        let mut big = info("a", 1);
        big.max_connected_clusters = 511;
        assert!(matches!(
            peer_info(&ours, &reg, &[], &big),
            Err(PeerInfoError::MaxClustersMismatch { .. })
        ));
        assert!(matches!(
            peer_info(&ours, &reg, &[reg.clone(), peer("c", 1)], &info("a", 1)),
            Err(PeerInfoError::DuplicateId { .. })
        ));
        assert!(matches!(
            peer_info(&ours, &reg, &[], &info("A", 1)),
            Err(PeerInfoError::Invalid { .. })
        ));
    }

    fn ev(t: EventType, kind: Kind, cluster: &str, key: &str, value: Vec<u8>) -> Event {
        Event {
            r#type: t as i32,
            kind: kind as i32,
            cluster: cluster.into(),
            key: key.into(),
            value: value.into(),
            revision: 1,
        }
    }

    #[test]
    fn record_checks() {
        let p = PeerRef {
            name: "a".into(),
            id: 1,
            mode: ClusterMode::Max255,
        };
        let ident = |id: u32, cluster: &str| {
            Identity {
                id,
                cluster: cluster.into(),
                exported: true,
                ..Default::default()
            }
            .encode_to_vec()
        };
        let up = EventType::Upsert;
        assert_eq!(
            p.check(&ev(up, Kind::Identity, "a", "65792", ident(0x01_0100, "a"))),
            Ok(())
        );
        assert_eq!(
            p.check(&ev(up, Kind::Identity, "a", "2", ident(2, "a"))),
            Ok(()),
            "reserved identities are fine"
        );
        assert!(matches!(
            p.check(&ev(up, Kind::Identity, "a", "x", ident(0x02_0100, "a"))),
            Err(RejectError::IdentityOutOfRange { .. })
        ));
        assert!(matches!(
            p.check(&ev(up, Kind::Identity, "a", "x", ident(0x01_0100, "c"))),
            Err(RejectError::ForeignRecord { .. })
        ));
        assert!(matches!(
            p.check(&ev(up, Kind::Identity, "c", "x", ident(0x01_0100, "a"))),
            Err(RejectError::ForeignEvent { .. })
        ));
        let epd = Endpoint {
            ip: "10.0.0.1".into(),
            identity: 0x03_0100,
            cluster: "a".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let err = p
            .check(&ev(up, Kind::Endpoint, "a", "10.0.0.1", epd))
            .unwrap_err();
        assert!(err.to_string().contains("outside peer \"a\""), "{err}");
        assert!(matches!(
            p.check(&ev(up, Kind::Node, "a", "n", vec![0xff; 8])),
            Err(RejectError::Undecodable { .. })
        ));
        assert!(matches!(
            p.check(&ev(up, Kind::Node, "a", "n", vec![0; MAX_RECORD_BYTES + 1])),
            Err(RejectError::TooLarge { .. })
        ));
        assert!(matches!(
            p.check(&ev(up, Kind::Node, "a", "", vec![])),
            Err(RejectError::BadKey { .. })
        ));
        assert!(matches!(
            p.check(&ev(up, Kind::Unspecified, "a", "n", vec![])),
            Err(RejectError::UnknownKind(..))
        ));
        assert_eq!(
            p.check(&ev(EventType::Delete, Kind::Node, "a", "n", vec![])),
            Ok(())
        );
        assert_eq!(
            p.check(&ev(EventType::Synced, Kind::Node, "a", "", vec![])),
            Ok(())
        );
    }
}
