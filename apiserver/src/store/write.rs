//! Batched, transactional writes, bounded by operations and by bytes.
//!
//! etcd refuses a request over `--max-request-bytes` (1,572,864 bytes by
//! default in the etcd we run, 3.4) and a transaction over `--max-txn-ops`
//! (128). A batch is cut into transactions of at most [`MAX_TXN_OPS`]
//! operations and [`MAX_TXN_BYTES`] bytes of keys and values (plus a fixed
//! allowance per operation for its protobuf framing); the ~512 KiB left
//! under etcd's limit covers the rest of the request (framing, the fence
//! compare). etcd's gRPC server accepts `max-request-bytes` + 512 KiB, so the
//! gRPC limit is never the one hit.
//!
//! A put whose key and value exceed [`MAX_RECORD_BYTES`] cannot go into any
//! transaction: it is refused ([`TooLarge`]), logged, counted
//! ([`Store::refused_records`]) and returned in [`Applied::refused`]; the
//! other operations of the batch are still written, so one such record never
//! wedges a writer that retries.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use etcd_client::{Compare, CompareOp, DeleteOptions, Txn, TxnOp};
use thiserror::Error;
use tracing::warn;

use super::{Store, StoreError};

/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;

/// etcd's default `--max-request-bytes` (what `etcd --help` of 3.4 shows).
pub const ETCD_MAX_REQUEST_BYTES: usize = 1_572_864;

/// Bytes of keys and values (with [`OP_OVERHEAD`] per operation) in one
/// transaction: 1 MiB, a third under etcd's request limit.
pub const MAX_TXN_BYTES: usize = 1024 * 1024;

/// The largest put (key + value) the store writes: one transaction's bytes,
/// less room for the fence compare and the operation's framing.
pub const MAX_RECORD_BYTES: usize = MAX_TXN_BYTES - 4096;

/// Allowance per operation for its protobuf framing in the request.
const OP_OVERHEAD: usize = 32;

const _: () = assert!(MAX_TXN_BYTES + 256 * 1024 < ETCD_MAX_REQUEST_BYTES);

/// A put refused because no transaction can hold it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "record {key} is {bytes} bytes (key + value), more than the {MAX_RECORD_BYTES}-byte limit \
     of one store write (etcd refuses requests over {ETCD_MAX_REQUEST_BYTES} bytes); not written"
)]
pub struct TooLarge {
    pub key: String,
    pub bytes: usize,
}

/// What [`Store::apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Revision of the last transaction (0 if nothing was written).
    pub revision: i64,
    /// Puts refused as too large; everything else was written.
    pub refused: Vec<TooLarge>,
}

impl Applied {
    /// `Err` with the first refusal if anything was refused.
    pub fn all_written(self) -> Result<i64, StoreError> {
        match self.refused.into_iter().next() {
            Some(r) => Err(r.into()),
            None => Ok(self.revision),
        }
    }
}

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

    /// The key's and value's bytes (what counts against the limits).
    pub fn bytes(&self) -> usize {
        match self {
            WriteOp::Put { key, value } => key.len() + value.len(),
            WriteOp::Delete { key } => key.len(),
            // The range end is about as long as the prefix.
            WriteOp::DeletePrefix { prefix } => 2 * prefix.len(),
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

/// Cuts `ops` into transactions within [`MAX_TXN_OPS`] and [`MAX_TXN_BYTES`],
/// in order, leaving out (and returning) the puts no transaction can hold.
pub fn plan(ops: &[WriteOp]) -> (Vec<Vec<&WriteOp>>, Vec<TooLarge>) {
    let mut txns: Vec<Vec<&WriteOp>> = Vec::new();
    let mut refused = Vec::new();
    let mut cur: Vec<&WriteOp> = Vec::new();
    let mut cur_bytes = 0;
    for op in ops {
        let bytes = op.bytes();
        if bytes > MAX_RECORD_BYTES {
            let key = match op {
                WriteOp::Put { key, .. } | WriteOp::Delete { key } => key,
                WriteOp::DeletePrefix { prefix } => prefix,
            };
            refused.push(TooLarge {
                key: key.clone(),
                bytes,
            });
            continue;
        }
        let cost = bytes + OP_OVERHEAD;
        if !cur.is_empty() && (cur.len() == MAX_TXN_OPS || cur_bytes + cost > MAX_TXN_BYTES) {
            txns.push(std::mem::take(&mut cur));
            cur_bytes = 0;
        }
        cur.push(op);
        cur_bytes += cost;
    }
    if !cur.is_empty() {
        txns.push(cur);
    }
    (txns, refused)
}

impl Store {
    /// Like [`Store::apply`], but every transaction only commits while the
    /// `leader` key still holds `token`: a replica that lost leadership cannot
    /// write, even before it notices. Fails with [`StoreError::NotLeader`].
    pub async fn apply_fenced(&self, ops: &[WriteOp], token: &str) -> Result<Applied, StoreError> {
        self.apply_inner(ops, Some(token)).await
    }

    /// Applies `ops` in transactions of at most [`MAX_TXN_OPS`] operations
    /// and [`MAX_TXN_BYTES`] bytes, in order. Each transaction is atomic; the
    /// whole call is not (a batch that needs more than one transaction
    /// becomes visible in steps, each step in order). Puts over
    /// [`MAX_RECORD_BYTES`] are refused and returned; the rest is written.
    pub async fn apply(&self, ops: &[WriteOp]) -> Result<Applied, StoreError> {
        self.apply_inner(ops, None).await
    }

    async fn apply_inner(
        &self,
        ops: &[WriteOp],
        fence: Option<&str>,
    ) -> Result<Applied, StoreError> {
        let (txns, refused) = plan(ops);
        for r in &refused {
            warn!(key = %r.key, bytes = r.bytes, limit = MAX_RECORD_BYTES, "record too large for the store; refused, the rest of the batch is written");
        }
        self.refused
            .fetch_add(refused.len() as u64, Ordering::Relaxed);
        let mut out = Applied {
            revision: 0,
            refused,
        };
        let mut c = self.client();
        let leader = clustermesh_proto::keys::leader();
        for chunk in txns {
            let mut txn = Txn::new();
            if let Some(token) = fence {
                txn = txn.when([Compare::value(leader.as_str(), CompareOp::Equal, token)]);
            }
            let txn = txn.and_then(
                chunk
                    .into_iter()
                    .map(WriteOp::to_txn_op)
                    .collect::<Vec<_>>(),
            );
            let resp = c.txn(txn).await.map_err(|e| self.err(e))?;
            if fence.is_some() && !resp.succeeded() {
                return Err(StoreError::NotLeader);
            }
            out.revision = resp.header().map(|h| h.revision()).unwrap_or(out.revision);
        }
        Ok(out)
    }

    /// Puts refused as too large by this process so far.
    pub fn refused_records(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, len: usize) -> WriteOp {
        WriteOp::put(key, vec![0u8; len])
    }

    #[test]
    fn transactions_are_bounded_by_count_and_bytes() {
        let ops: Vec<_> = (0..300).map(|i| put(&format!("k{i}"), 10)).collect();
        let (txns, refused) = plan(&ops);
        assert!(refused.is_empty());
        assert_eq!(
            txns.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![128, 128, 44]
        );
        let ops: Vec<_> = (0..10).map(|i| put(&format!("k{i}"), 300_000)).collect();
        let (txns, _) = plan(&ops);
        assert_eq!(
            txns.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![3, 3, 3, 1]
        );
        for t in &txns {
            let bytes: usize = t.iter().map(|o| o.bytes() + OP_OVERHEAD).sum();
            assert!(bytes <= MAX_TXN_BYTES);
        }
    }

    #[test]
    fn an_oversized_put_is_refused_and_the_rest_kept_in_order() {
        let ops = vec![
            put("a", 1),
            put("big", MAX_RECORD_BYTES),
            put("b", MAX_RECORD_BYTES - 1),
            WriteOp::delete("c"),
            put("d", 10_000),
        ];
        let (txns, refused) = plan(&ops);
        assert_eq!(
            refused,
            vec![TooLarge {
                key: "big".into(),
                bytes: MAX_RECORD_BYTES + 3
            }]
        );
        let keys: Vec<Vec<usize>> = txns
            .iter()
            .map(|t| t.iter().map(|o| o.bytes()).collect())
            .collect();
        assert_eq!(keys, vec![vec![2, MAX_RECORD_BYTES, 1], vec![10_001]]);
        assert!(refused[0].to_string().contains("not written"));
    }
}
