//! What the mesh syncer accepts from a peer: the peer's ClusterInfo (checked
//! against its registration, this cluster and the other peers). Every
//! record it sends is checked by [`super::ingest`] before anything is written.

use clustermesh_proto::v1::{ClusterInfo, PeerConfig};
use clustermesh_proto::{ValidationError, validate};
use thiserror::Error;

pub use super::ingest::{MAX_KEY_BYTES, MAX_RECORD_BYTES, PeerRef, RejectError};

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
/// cluster (`ours`) and the registered peers (`others`: name, cluster ID).
pub fn peer_info(
    ours: &ClusterInfo,
    registered: &PeerConfig,
    others: &[(String, u32)],
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
    if let Some((other, _)) = others
        .iter()
        .find(|(n, id)| *n != registered.name && *id == got.id)
    {
        return Err(PeerInfoError::DuplicateId {
            name,
            id: got.id,
            other: other.clone(),
        });
    }
    Ok(())
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
            peer_info(
                &ours,
                &reg,
                &[("a".into(), 1), ("c".into(), 1)],
                &info("a", 1)
            ),
            Err(PeerInfoError::DuplicateId { .. })
        ));
        assert!(matches!(
            peer_info(&ours, &reg, &[], &info("A", 1)),
            Err(PeerInfoError::Invalid { .. })
        ));
    }
}
