//! A peer's Watch batches turned into store writes: gathered from the
//! session's queue, checked by the mirror and the ingest rules, written,
//! and every refusal counted (see [`super`] for the loop).

use std::hash::{DefaultHasher, Hash, Hasher};

use clustermesh_proto::keys;
use clustermesh_proto::v1::WatchBatch;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{PeerLoop, STORE_RETRY};
use crate::mesh::ingest::{Reason, RejectError};
use crate::mesh::ingest_context::ingest_context;
use crate::mesh::session::SessionEvent;
use crate::store::WriteOp;

/// Writes gathered from queued batches before one store write.
const MAX_OPS_PER_WRITE: usize = 4096;
/// Distinct refusals remembered for "log once per key"; beyond, the memory
/// is cleared (a key may then be logged once more).
const MAX_LOGGED: usize = 65_536;

impl PeerLoop {
    pub(super) async fn on_event(&mut self, ev: Option<SessionEvent>) {
        let now = Instant::now();
        match ev {
            Some(SessionEvent::Connected { addr, info }) => {
                self.session_up = Some(now);
                self.redial_until = None;
                self.seen(now);
                info!(peer = %self.peer.name, %addr, id = info.id, resume = self.cache.as_ref().and_then(|c| c.resume_point()).is_some(), "connected to peer; watching its exported records");
                let records = info
                    .capabilities
                    .iter()
                    .any(|c| c == clustermesh_proto::backends::CAPABILITY);
                self.backend_records = Some(records);
                if let Some(cache) = self.cache.as_mut() {
                    let ops = cache.set_backend_records(records);
                    if !ops.is_empty() {
                        self.write(&ops, now).await;
                    }
                }
            }
            Some(SessionEvent::Batch(b)) => {
                self.seen(now);
                let mut batches = vec![b];
                // Gather what is already queued into one store write.
                let mut ended = None;
                if let Some(s) = self.session.as_mut() {
                    while batches.iter().map(|b| b.events.len()).sum::<usize>() < MAX_OPS_PER_WRITE
                    {
                        match s.rx.try_recv() {
                            Ok(SessionEvent::Batch(b)) => batches.push(b),
                            Ok(other) => {
                                ended = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                }
                let events = batches.iter().map(|b| b.events.len()).sum();
                let queued = self.session.as_ref().map(|s| s.queued.clone());
                self.apply(batches, now).await;
                if let Some(q) = queued {
                    q.done(events);
                }
                if let Some(other) = ended {
                    Box::pin(self.on_event(Some(other))).await;
                }
            }
            Some(SessionEvent::Ended(e)) => self.ended(Some(e)),
            None => self.ended(None),
        }
    }

    async fn apply(&mut self, batches: Vec<WatchBatch>, now: Instant) {
        let Some(cache) = self.cache.as_mut() else {
            return;
        };
        let grace = self.ctx.config.stale_ttl;
        // Current and O(1) to take: the view keeps the CIDR indexes.
        let ctx = ingest_context(&self.ctx, &self.peer.name);
        let mut ops: Vec<WriteOp> = Vec::new();
        let mut rejected = Vec::new();
        let mut pending = Vec::new();
        let mut unresolved = Vec::new();
        let mut snapshot_done = false;
        for b in batches {
            let a = cache.apply(b, now, grace, &ctx);
            ops.extend(a.ops);
            rejected.extend(a.rejected);
            pending.extend(a.pending);
            unresolved.extend(a.unresolved);
            if a.reset {
                info!(peer = %self.peer.name, "peer sends a full snapshot (its store changed or the resume point was too old); writing only the differences");
            }
            snapshot_done |= a.snapshot_done;
            if let Some(reason) = a.resync {
                info!(peer = %self.peer.name, %reason, "peer asked for a resync");
                self.resync = true;
            }
        }
        // Records a node change took back, whose value is in an earlier batch
        // of this write or only in the store (not deleted yet: the deletes
        // are in `ops`).
        for id in unresolved {
            let key = keys::cache(id.0, &self.peer.name, &id.2);
            let mut value = ops.iter().rev().find_map(|o| match o {
                WriteOp::Put { key: k, value } if *k == key => Some(value.clone()),
                _ => None,
            });
            if value.is_none() {
                value = Box::pin(self.ctx.store.get(&key))
                    .await
                    .ok()
                    .flatten()
                    .map(|kv| kv.value);
            }
            cache.resolve(id, value.as_ref());
        }
        for id in pending {
            if self.first_time(&(id.0 as i32, &id.2)) {
                info!(peer = %self.peer.name, kind = id.0.segment(), key = %id.2, reason = Reason::OutsidePeerPodCidrs.label(), "record held pending: its IPs are outside every pod CIDR the peer announces (yet); written once a node of the peer covers them");
            }
        }
        for r in &rejected {
            self.count_rejected(r.reason());
            let text = r.to_string();
            let first = match r {
                // Once per limit while over quota, not once per record.
                RejectError::Rule {
                    reason: Reason::QuotaExceeded,
                    kind,
                    ..
                } => self.quota_logged.insert(kind),
                _ => self.first_time(&text),
            };
            if first {
                warn!(peer = %self.peer.name, reason = r.reason().label(), error = %text, "rejected record from peer; not written");
            }
            self.status.last_error = format!("rejected record: {text}");
        }
        if self
            .cache
            .as_ref()
            .is_some_and(|c| c.quota().over().is_empty())
        {
            self.quota_logged.clear();
        }
        if ops.is_empty() && !snapshot_done {
            return;
        }
        let writes = ops.len();
        if self.write(&ops, now).await && snapshot_done {
            self.backoff.reset();
            self.status.withdrawn = false;
            self.counts_at = None;
            info!(peer = %self.peer.name, writes, "peer snapshot applied");
        }
    }

    /// Writes, or on failure forgets the mirror (it no longer matches the
    /// store): the next attempt reseeds from the store and resnapshots.
    pub(super) async fn write(&mut self, ops: &[WriteOp], now: Instant) -> bool {
        if ops.is_empty() {
            return true;
        }
        let started = std::time::Instant::now();
        // Boxed here and at the loop's other store calls: an etcd call's
        // future is kilobytes, and inline it would size every idle peer
        // loop's task (docs/benchmarks.md, "Per-peer connection memory").
        let res = Box::pin(self.ctx.write(ops)).await;
        self.ctx
            .metrics
            .store_write("mesh_write", started.elapsed().as_secs_f64());
        match res {
            Ok(applied) => {
                if let Some(last) = applied.refused.last() {
                    // Counted like any rejected record; the rest was written.
                    for _ in &applied.refused {
                        self.count_rejected(Reason::StoreRefused);
                    }
                    self.status.last_error = format!("rejected record: {last}");
                }
                true
            }
            Err(e) => {
                self.ctx.metrics.etcd_error("mesh_write");
                self.error(format!(
                    "writing peer {}'s records to the local store: {e}",
                    self.peer.name
                ));
                self.status.failures += 1;
                self.cache = None;
                self.session = None;
                self.session_up = None;
                self.store_retry_at = now + STORE_RETRY;
                self.retry_at = self.store_retry_at;
                false
            }
        }
    }

    fn count_rejected(&mut self, reason: Reason) {
        self.ctx
            .metrics
            .rejected(&self.peer.name, reason.label(), 1);
        self.status.rejected_records += 1;
        *self
            .status
            .rejected_by_reason
            .entry(reason.label().to_owned())
            .or_default() += 1;
    }

    /// Whether `what` is logged for the first time (log once per key).
    fn first_time(&mut self, what: &impl Hash) -> bool {
        let mut h = DefaultHasher::new();
        what.hash(&mut h);
        if self.logged.len() >= MAX_LOGGED {
            self.logged.clear();
        }
        self.logged.insert(h.finish())
    }
}
