//! Batched, transactional writes.

use bytes::Bytes;
use etcd_client::{Compare, CompareOp, DeleteOptions, Txn, TxnOp};

use super::{Store, StoreError};

/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;

/// One write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    Put {
        key: String,
        value: Bytes,
    },
    Delete {
        key: String,
    },
    /// Deletes every key under the prefix (a whole peer, a whole kind).
    DeletePrefix {
        prefix: String,
    },
}

impl WriteOp {
    pub fn put(key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        WriteOp::Put {
            key: key.into(),
            value: value.into(),
        }
    }
    pub fn delete(key: impl Into<String>) -> Self {
        WriteOp::Delete { key: key.into() }
    }
    pub fn delete_prefix(prefix: impl Into<String>) -> Self {
        WriteOp::DeletePrefix {
            prefix: prefix.into(),
        }
    }

    fn to_txn_op(&self) -> TxnOp {
        match self {
            WriteOp::Put { key, value } => TxnOp::put(key.as_str(), value.to_vec(), None),
            WriteOp::Delete { key } => TxnOp::delete(key.as_str(), None),
            WriteOp::DeletePrefix { prefix } => {
                TxnOp::delete(prefix.as_str(), Some(DeleteOptions::new().with_prefix()))
            }
        }
    }
}

impl Store {
    /// Like [`Store::apply`], but every transaction only commits while the
    /// `leader` key still holds `token`: a replica that lost leadership cannot
    /// write, even before it notices. Fails with [`StoreError::NotLeader`].
    pub async fn apply_fenced(&self, ops: &[WriteOp], token: &str) -> Result<i64, StoreError> {
        let mut rev = 0;
        let mut c = self.client();
        let leader = clustermesh_proto::keys::leader();
        for chunk in ops.chunks(MAX_TXN_OPS) {
            let txn = Txn::new()
                .when([Compare::value(leader.as_str(), CompareOp::Equal, token)])
                .and_then(chunk.iter().map(WriteOp::to_txn_op).collect::<Vec<_>>());
            let resp = c.txn(txn).await.map_err(|e| self.err(e))?;
            if !resp.succeeded() {
                return Err(StoreError::NotLeader);
            }
            rev = resp.header().map(|h| h.revision()).unwrap_or(rev);
        }
        Ok(rev)
    }

    /// Applies `ops` in transactions of at most [`MAX_TXN_OPS`] operations,
    /// in order. Each transaction is atomic; the whole call is not (a batch
    /// that needs more than one transaction becomes visible in steps, each
    /// step in order). Returns the revision of the last transaction (0 if
    /// `ops` is empty).
    pub async fn apply(&self, ops: &[WriteOp]) -> Result<i64, StoreError> {
        let mut rev = 0;
        let mut c = self.client();
        for chunk in ops.chunks(MAX_TXN_OPS) {
            let txn = Txn::new().and_then(chunk.iter().map(WriteOp::to_txn_op).collect::<Vec<_>>());
            let resp = c.txn(txn).await.map_err(|e| self.err(e))?;
            rev = resp.header().map(|h| h.revision()).unwrap_or(rev);
        }
        Ok(rev)
    }
}
