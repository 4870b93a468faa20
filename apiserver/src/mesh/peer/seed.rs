//! Seeding a peer's mirror from what the local store already holds, so that
//! the first snapshot after a restart, a leader change or a failed write
//! writes only real differences (see [`super`] for the loop).

use std::time::Duration;

use clustermesh_proto::keys;
use clustermesh_proto::v1::Kind;
use tracing::{debug, info, warn};

use super::PeerLoop;
use crate::mesh::cache::PeerCache;
use crate::mesh::ingest_context::ingest_context;
use crate::store::{Kv, StoreError, WriteOp};

/// How long a seed waits for the view to catch up with the store before it
/// reads the store itself. Just after a restart the view is still loading
/// (seconds at 300,000 records). With the store to itself (the chart's own
/// etcd), the store's newest write is always one the view sees; in an etcd
/// shared with other writers the view may lag the store's revision until
/// this cluster writes again, and the seed falls back to the store.
const SEED_FROM_VIEW_WAIT: Duration = Duration::from_secs(15);

impl PeerLoop {
    pub(super) async fn seed(&self) -> Result<PeerCache, StoreError> {
        let (mut records, mut synced) = self.seed_listing().await?;
        let mut dropped = Vec::new();
        if !self.cfg.import_policies {
            // Policies mirrored while they were imported go (DESIGN §10:
            // a peer's policies apply here only while imported).
            let policies = keys::cache_prefix(Kind::Policy, &self.peer.name);
            let marker = keys::synced(&self.peer.name, Kind::Policy);
            let before = records.len() + synced.len();
            records.retain(|kv| !kv.key.starts_with(&policies));
            synced.retain(|kv| kv.key != marker);
            if records.len() + synced.len() < before {
                dropped = vec![WriteOp::delete_prefix(policies), WriteOp::delete(marker)];
            }
        }
        // What the store holds passes today's rules too (an older version,
        // or this cluster's ranges, may have let it in).
        let ctx = ingest_context(&self.ctx, &self.peer.name);
        let (cache, mut ops, refused) =
            PeerCache::seeded_checked(self.peer.clone(), records, synced, Some(&ctx));
        let cache = cache
            .with_quota(self.limits())
            .with_import_policies(self.cfg.import_policies);
        if !dropped.is_empty() {
            info!(peer = %self.peer.name, "peer's policies are not imported (connect --import-policies): its mirrored policies are deleted");
            ops.extend(dropped);
        }
        for r in &refused {
            warn!(peer = %self.peer.name, reason = r.reason().label(), error = %r, "stored record fails the ingest rules; deleted");
        }
        if !ops.is_empty() {
            info!(peer = %self.peer.name, deletes = ops.len(), "stored records no longer vouched for are deleted");
            self.ctx.write(&ops).await?;
        }
        Ok(cache.with_view(self.ctx.view.clone()))
    }

    /// What the store holds of this peer: its cached records and its sync
    /// markers. Read from the view once it has caught up with the store's
    /// current revision (every write of an earlier leader is before it, and
    /// only this replica writes now: writes are fenced on the leader key), so
    /// that a restart does not read every peer's records from etcd a second
    /// time beside the view's own load; from the store when the view does
    /// not catch up within [`SEED_FROM_VIEW_WAIT`].
    async fn seed_listing(&self) -> Result<(Vec<Kv>, Vec<Kv>), StoreError> {
        let (prefixes, synced_prefix) = PeerCache::seed_prefixes(&self.peer.name);
        let revision = self.ctx.store.revision().await?;
        let mut all: Vec<String> = prefixes.to_vec();
        all.push(synced_prefix.clone());
        if let Some(mut lists) = self
            .ctx
            .view
            .listing_at(revision, &all, SEED_FROM_VIEW_WAIT)
            .await
        {
            let synced = lists.pop().unwrap_or_default();
            debug!(peer = %self.peer.name, revision, "seeded from the view");
            return Ok((lists.into_iter().flatten().collect(), synced));
        }
        info!(peer = %self.peer.name, revision, "the view has not caught up with the store; seeding from the store");
        let mut records = Vec::new();
        for p in prefixes {
            records.extend(self.ctx.store.list(&p).await?.1);
        }
        let synced = self.ctx.store.list(&synced_prefix).await?.1;
        Ok((records, synced))
    }

    /// The quota in force: the registration's, zero fields from `--peer-quota`.
    pub(super) fn limits(&self) -> clustermesh_proto::v1::PeerQuota {
        clustermesh_proto::quota::or_defaults(
            &self.cfg.quota.unwrap_or_default(),
            &self.ctx.config.quota,
        )
    }
}
