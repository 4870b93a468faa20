//! Cluster ownership (`meta/cluster`) and the store epoch (`meta/epoch`).

use bytes::Bytes;
use clustermesh_proto::{keys, v1::ClusterInfo};
use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use prost::Message;
use rand::Rng;
use thiserror::Error;

use super::{Store, StoreError};

#[derive(Debug, Error)]
pub enum OwnershipError {
    #[error(
        "this etcd store belongs to cluster {store_name:?} (ID {store_id}, max-connected-clusters {store_max}), \
         but this apiserver is cluster {ours_name:?} (ID {ours_id}, max-connected-clusters {ours_max}); \
         refusing to start: point --etcd-endpoints at cluster {ours_name:?}'s own etcd, \
         or fix --cluster-name/--cluster-id"
    )]
    ForeignStore {
        store_name: String,
        store_id: u32,
        store_max: u32,
        ours_name: String,
        ours_id: u32,
        ours_max: u32,
    },
}

/// Create `key` with `value` unless it exists; either way return what is there.
async fn create_or_get(
    store: &Store,
    key: &str,
    value: Vec<u8>,
) -> Result<(bool, Bytes), StoreError> {
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key, value.clone(), None)])
        .or_else([TxnOp::get(key, None)]);
    let mut c = store.client();
    let resp = c.txn(txn).await.map_err(|e| store.err(e))?;
    if resp.succeeded() {
        return Ok((true, Bytes::from(value)));
    }
    for op in resp.op_responses() {
        if let TxnOpResponse::Get(g) = op
            && let Some(kv) = g.kvs().first()
        {
            return Ok((false, Bytes::copy_from_slice(kv.value())));
        }
    }
    // Deleted between the compare and the get: treat as just created by someone else.
    Ok((false, Bytes::from(value)))
}

impl Store {
    /// Claims the store for `ours`, or checks that it already belongs to it.
    pub async fn ensure_cluster(&self, ours: &ClusterInfo) -> Result<(), StoreError> {
        let key = keys::meta_cluster();
        let (_, existing) = create_or_get(self, &key, ours.encode_to_vec()).await?;
        let stored =
            ClusterInfo::decode(existing.as_ref()).map_err(|source| StoreError::Decode {
                key,
                what: "ClusterInfo",
                source,
            })?;
        if stored.name != ours.name
            || stored.id != ours.id
            || stored.max_connected_clusters != ours.max_connected_clusters
        {
            return Err(OwnershipError::ForeignStore {
                store_name: stored.name,
                store_id: stored.id,
                store_max: stored.max_connected_clusters,
                ours_name: ours.name.clone(),
                ours_id: ours.id,
                ours_max: ours.max_connected_clusters,
            }
            .into());
        }
        Ok(())
    }

    /// The store epoch: a random id written once, so it changes only when the
    /// store is wiped. Watch clients use it to tell a resumable stream from a
    /// new store.
    pub async fn ensure_epoch(&self) -> Result<String, StoreError> {
        let fresh = format!("{:016x}", rand::rng().random::<u64>());
        let (_, value) = create_or_get(self, &keys::meta_epoch(), fresh.into_bytes()).await?;
        Ok(String::from_utf8_lossy(&value).into_owned())
    }
}
