//! Identity allocation in etcd. Two keys make it safe with any number of
//! writers: `identities/by-labels/<digest>` (the number of a label set) and
//! `identities/by-id/<id>` (the label set a number belongs to). A new number
//! is taken with one transaction that creates both only if neither exists, so
//! one label set never gets two numbers and one number never two label sets.
//! Numbers stay in this cluster's range and survive restarts (they live in
//! etcd); a number is released only by `release`, guarded by its index value.

use std::collections::{BTreeMap, BTreeSet};

use clustermesh_proto::identity::{ClusterMode, IdentityError, MIN_LOCAL};
use clustermesh_proto::keys::{self, StoreKey};
use clustermesh_proto::v1::Kind;
use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use thiserror::Error;

use crate::store::{Store, StoreError};

#[derive(Debug, Error)]
pub enum AllocError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("identity range of cluster {cluster_id} is exhausted ({used} numbers in use)")]
    Exhausted { cluster_id: u32, used: usize },
    #[error(transparent)]
    Range(#[from] IdentityError),
    #[error("gave up allocating an identity for {digest} after {attempts} conflicting attempts")]
    Contended { digest: String, attempts: usize },
}

pub struct Allocator {
    /// Transactions that lost a race (the number or the label set was taken meanwhile).
    conflicts: std::sync::atomic::AtomicU64,
    store: Store,
    mode: ClusterMode,
    cluster_id: u32,
    cluster: String,
}

impl Allocator {
    pub fn new(store: Store, mode: ClusterMode, cluster_id: u32, cluster: &str) -> Allocator {
        Allocator {
            conflicts: Default::default(),
            store,
            mode,
            cluster_id,
            cluster: cluster.to_owned(),
        }
    }

    /// How many allocation transactions lost a race so far.
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every allocated (digest → identity) pair in the store, read page by page.
    pub async fn load(&self) -> Result<BTreeMap<String, u32>, StoreError> {
        let mut out = BTreeMap::new();
        self.store
            .list_pages(&keys::identity_index_prefix(), |page| {
                out.extend(page.into_iter().filter_map(|kv| {
                    match keys::parse(&kv.key) {
                        StoreKey::IdentityIndex(d) => std::str::from_utf8(&kv.value)
                            .ok()?
                            .parse::<u32>()
                            .ok()
                            .map(|id| (d.to_owned(), id)),
                        _ => None,
                    }
                }))
            })
            .await?;
        Ok(out)
    }

    /// Numbers claimed in the store (by any writer), read page by page.
    async fn claimed(&self) -> Result<BTreeSet<u32>, StoreError> {
        let mut out = BTreeSet::new();
        self.store
            .list_pages(&keys::identity_claim_prefix(), |page| {
                out.extend(
                    page.into_iter()
                        .filter_map(|kv| match keys::parse(&kv.key) {
                            StoreKey::IdentityClaim(id) => id.parse::<u32>().ok(),
                            _ => None,
                        }),
                )
            })
            .await?;
        Ok(out)
    }

    fn first_free(&self, used: &BTreeSet<u32>) -> Result<u32, AllocError> {
        let max = self.mode.max_local();
        (MIN_LOCAL..=max)
            .find(|l| {
                self.mode
                    .compose(self.cluster_id, *l)
                    .map(|id| !used.contains(&id))
                    .unwrap_or(false)
            })
            .map(|l| self.mode.compose(self.cluster_id, l))
            .transpose()?
            .ok_or(AllocError::Exhausted {
                cluster_id: self.cluster_id,
                used: used.len(),
            })
    }

    /// The identity of `digest`, allocating the lowest free number if new.
    pub async fn allocate(&self, digest: &str) -> Result<u32, AllocError> {
        let index = keys::identity_index(digest);
        let mut used = self.claimed().await?;
        const ATTEMPTS: usize = 64;
        for _ in 0..ATTEMPTS {
            let candidate = self.first_free(&used)?;
            let claim = keys::identity_claim(candidate);
            let txn = Txn::new()
                .when([
                    Compare::create_revision(index.as_str(), CompareOp::Equal, 0),
                    Compare::create_revision(claim.as_str(), CompareOp::Equal, 0),
                ])
                .and_then([
                    TxnOp::put(index.as_str(), candidate.to_string(), None),
                    TxnOp::put(claim.as_str(), digest, None),
                ])
                .or_else([TxnOp::get(index.as_str(), None)]);
            let mut c = self.store.client();
            let resp = c.txn(txn).await.map_err(|e| self.store.err(e))?;
            if resp.succeeded() {
                return Ok(candidate);
            }
            self.conflicts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            for op in resp.op_responses() {
                if let TxnOpResponse::Get(g) = op
                    && let Some(kv) = g.kvs().first()
                    && let Some(id) = std::str::from_utf8(kv.value())
                        .ok()
                        .and_then(|v| v.parse().ok())
                {
                    return Ok(id); // someone allocated this label set meanwhile
                }
            }
            used.insert(candidate); // the number was taken meanwhile: try the next
        }
        Err(AllocError::Contended {
            digest: digest.to_owned(),
            attempts: ATTEMPTS,
        })
    }

    /// Releases `id` of `digest` (index, claim and the Identity record), only
    /// if the index still says `id`. With `fence`, only while leading.
    pub async fn release(
        &self,
        digest: &str,
        id: u32,
        fence: Option<&str>,
    ) -> Result<bool, StoreError> {
        let index = keys::identity_index(digest);
        let mut when = vec![Compare::value(
            index.as_str(),
            CompareOp::Equal,
            id.to_string(),
        )];
        if let Some(token) = fence {
            when.push(Compare::value(keys::leader(), CompareOp::Equal, token));
        }
        let txn = Txn::new().when(when).and_then([
            TxnOp::delete(index.as_str(), None),
            TxnOp::delete(keys::identity_claim(id), None),
            TxnOp::delete(
                keys::state(Kind::Identity, &self.cluster, &id.to_string()),
                None,
            ),
        ]);
        let mut c = self.store.client();
        let resp = c.txn(txn).await.map_err(|e| self.store.err(e))?;
        Ok(resp.succeeded())
    }
}
