//! Peer registrations in the store (`peers/<name>`): validated writes and
//! reads. The mesh syncer acts on them; disconnecting withdraws the peer's
//! mirrored records at once (one range delete per kind).

use clustermesh_proto::keys::{self, StoreKey};
use clustermesh_proto::v1::{ClusterInfo, PeerConfig};
use clustermesh_proto::{RECORD_KINDS, validate};
use prost::Message;
use tonic::Status;

use crate::store::{Applied, Store, StoreError, WriteOp};
use crate::view::View;

/// Every registered peer, from the view.
pub fn list(view: &View) -> Vec<PeerConfig> {
    view.entries(&keys::peers_prefix())
        .into_iter()
        .filter(|(k, _)| matches!(keys::parse(k), StoreKey::Peer(_)))
        .filter_map(|(_, e)| PeerConfig::decode(e.value.as_ref()).ok())
        .collect()
}

/// (name, cluster ID) of every registered peer, from the view.
pub fn cluster_ids(view: &View) -> Vec<(String, u32)> {
    list(view)
        .into_iter()
        .map(|p| (p.name, p.cluster_id))
        .collect()
}

/// One registered peer, from the view.
pub fn get(view: &View, name: &str) -> Option<PeerConfig> {
    view.get(&keys::peer(name))
        .and_then(|e| PeerConfig::decode(e.value.as_ref()).ok())
        .filter(|p| p.name == name)
}

/// Checks a peer registration against this cluster and the other peers.
pub fn check(ours: &ClusterInfo, existing: &[PeerConfig], peer: &PeerConfig) -> Result<(), Status> {
    let bad = |m: String| Err(Status::invalid_argument(m));
    validate::cluster_name(&peer.name)
        .map_err(|e| Status::invalid_argument(format!("peer name: {e}")))?;
    validate::cluster_id(peer.cluster_id, ours.max_connected_clusters)
        .map_err(|e| Status::invalid_argument(format!("peer {}: {e}", peer.name)))?;
    if peer.name == ours.name {
        return bad(format!(
            "peer name {:?} is this cluster's own name",
            peer.name
        ));
    }
    if peer.cluster_id == ours.id {
        return bad(format!(
            "peer {} has cluster ID {}, which is this cluster's own ID",
            peer.name, peer.cluster_id
        ));
    }
    if let Some(other) = existing
        .iter()
        .find(|p| p.cluster_id == peer.cluster_id && p.name != peer.name)
    {
        return bad(format!(
            "peer {} has cluster ID {}, already used by peer {}",
            peer.name, peer.cluster_id, other.name
        ));
    }
    if peer.addresses.is_empty() || peer.addresses.iter().any(|a| a.trim().is_empty()) {
        return bad(format!(
            "peer {} needs at least one address (host:port)",
            peer.name
        ));
    }
    if !peer.ca_pem.contains("BEGIN CERTIFICATE") {
        return bad(format!("peer {} has no CA certificate (PEM)", peer.name));
    }
    Ok(())
}

pub async fn connect(
    store: &Store,
    view: &View,
    ours: &ClusterInfo,
    peer: PeerConfig,
) -> Result<(), Status> {
    check(ours, &list(view), &peer)?;
    store
        .apply(&[WriteOp::put(keys::peer(&peer.name), peer.encode_to_vec())])
        .await
        .and_then(Applied::all_written)
        .map_err(|e| match e {
            StoreError::TooLarge(_) => {
                Status::invalid_argument(format!("registration of peer {}: {e}", peer.name))
            }
            e => Status::unavailable(format!("writing peer {}: {e}", peer.name)),
        })?;
    Ok(())
}

/// Removes a peer and everything mirrored from it. Returns whether it was registered.
pub async fn disconnect(store: &Store, view: &View, name: &str) -> Result<bool, Status> {
    validate::cluster_name(name)
        .map_err(|e| Status::invalid_argument(format!("peer name: {e}")))?;
    if name == view.local_cluster() {
        return Err(Status::invalid_argument(format!(
            "{name:?} is this cluster's own name, not a peer"
        )));
    }
    let existed = view.get(&keys::peer(name)).is_some();
    let mut ops = vec![
        WriteOp::delete(keys::peer(name)),
        WriteOp::delete_prefix(keys::synced_prefix(name)),
        WriteOp::delete(keys::peer_status(name)),
    ];
    ops.extend(
        RECORD_KINDS
            .iter()
            .map(|k| WriteOp::delete_prefix(keys::cache_prefix(*k, name))),
    );
    store
        .apply(&ops)
        .await
        .and_then(Applied::all_written)
        .map_err(|e| Status::unavailable(format!("removing peer {name}: {e}")))?;
    Ok(existed)
}
