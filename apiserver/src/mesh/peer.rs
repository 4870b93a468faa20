//! One peer's sync loop (see docs/mesh.md for the state machine):
//!
//! ```text
//! seed mirror from the store ─▶ dial ─▶ GetCluster + validate ─▶ Watch(exported, resume)
//!        ▲                        │ fail: failures+1, last_error,   │ batches: validate records,
//!        │ store write failed     │ jittered backoff 100 ms → 10 s  │ write the differences
//!        └────────────────────────┴──────────◀───── stream ends ────┘
//! stream ends              → redialed; shown disconnected at once if that
//!                            redial fails or takes over 1 s (records stay)
//! silent for peer-timeout  → shown disconnected (records stay), session redialed
//! disconnected + stale-ttl → records withdrawn (range deletes), mirror emptied
//! ```
//!
//! All state lives in this task; sessions only report. Every store write
//! goes through the mirror, so whatever happens (reconnect, resume refused,
//! peer wiped) only real differences are written.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use clustermesh_proto::v1::{Kind, PeerConfig, PeerStatus};
use clustermesh_proto::{ClusterMode, keys};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::cache::{PeerCache, withdraw_ops};
use super::ingest::{PeerRef, Reason, RejectError};
use super::ingest_context::ingest_context;
use super::liveness::{Backoff, Liveness};
use super::session::{Params, Session, SessionError, SessionEvent};
use super::status::{self, Board};
use super::{MeshContext, stopped};
use crate::store::{Kv, StoreError, WriteOp};

/// Writes gathered from queued batches before one store write.
const MAX_OPS_PER_WRITE: usize = 4096;
/// Distinct refusals remembered for "log once per key"; beyond, the memory
/// is cleared (a key may then be logged once more).
const MAX_LOGGED: usize = 65_536;
/// Pause before retrying after a local store failure.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// How long a seed waits for the view to catch up with the store before it
/// reads the store itself. Just after a restart the view is still loading
/// (seconds at 300,000 records). With the store to itself (the chart's own
/// etcd), the store's newest write is always one the view sees; in an etcd
/// shared with other writers the view may lag the store's revision until
/// this cluster writes again, and the seed falls back to the store.
const SEED_FROM_VIEW_WAIT: Duration = Duration::from_secs(15);

/// How long a peer whose stream just ended is still shown connected while
/// the redial runs: a redial that fails (or takes longer) shows it
/// disconnected at once, not after peer-timeout.
pub const REDIAL_GRACE: Duration = Duration::from_secs(1);
/// How often, at most, a peer over its quota is asked for a fresh snapshot
/// after room freed up (so the refused records that now fit arrive).
pub const QUOTA_RESNAPSHOT_INTERVAL: Duration = Duration::from_secs(30);

struct PeerLoop {
    ctx: Arc<MeshContext>,
    cfg: PeerConfig,
    peer: PeerRef,
    board: Arc<Board>,
    status: PeerStatus,
    live: Liveness,
    backoff: Backoff,
    /// None until seeded from the store (again after a failed write).
    cache: Option<PeerCache>,
    /// Whether the peer's last GetCluster advertised `service-backends`
    /// (None before the first connect); handed to every seeded cache.
    backend_records: Option<bool>,
    session: Option<Session>,
    /// When the current session was validated and started watching.
    session_up: Option<Instant>,
    /// A stream that was up has ended and is being redialed: shown
    /// connected until this moment unless the redial fails first.
    redial_until: Option<Instant>,
    /// The server asked for a resync: the end of the stream is no failure.
    resync: bool,
    retry_at: Instant,
    store_retry_at: Instant,
    counts_at: Option<Instant>,
    attempts: usize,
    /// Digests of the refusals and pendings already logged.
    logged: HashSet<u64>,
    /// Quota limits already logged as reached (until the peer is within its quota).
    quota_logged: HashSet<&'static str>,
    /// The earliest moment a fresh snapshot may be asked for (quota).
    resnapshot_at: Instant,
    /// Events received from the peer and not yet written (`sync_queue_size`).
    queue: prometheus_client::metrics::gauge::Gauge,
}

/// Runs one peer's loop until `stop` flips.
pub async fn run(
    ctx: Arc<MeshContext>,
    cfg: PeerConfig,
    board: Arc<Board>,
    mut stop: watch::Receiver<bool>,
) {
    let now = Instant::now();
    let mode = ClusterMode::from_max_clusters(ctx.cluster.max_connected_clusters)
        .unwrap_or(ClusterMode::Max255);
    let mut st = status::persisted(&ctx.view, &cfg.name).unwrap_or_default();
    status::registration(&mut st, &cfg);
    st.connected = false;
    let mut p = PeerLoop {
        peer: PeerRef {
            name: cfg.name.clone(),
            id: cfg.cluster_id,
            mode,
        },
        live: Liveness::new(now, ctx.config.peer_timeout, ctx.config.stale_ttl),
        backend_records: None,
        backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
        ctx,
        cfg,
        board,
        status: st,
        cache: None,
        session: None,
        session_up: None,
        redial_until: None,
        resync: false,
        retry_at: now,
        store_retry_at: now,
        counts_at: None,
        attempts: 0,
        logged: HashSet::new(),
        quota_logged: HashSet::new(),
        resnapshot_at: now,
        queue: Default::default(),
    };
    p.queue = p.ctx.metrics.sync_queue(&p.peer.name);
    loop {
        if *stop.borrow() {
            break;
        }
        p.step().await;
        p.publish();
        let wake = p.next_wake();
        let event = async {
            match p.session.as_mut() {
                Some(s) => s.rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = event => p.on_event(ev).await,
            _ = tokio::time::sleep_until(wake) => {}
            _ = stopped(&mut stop) => break,
        }
    }
    p.session = None;
    p.ctx.metrics.forget_sync_queue(&p.peer.name);
    debug!(peer = %p.peer.name, "peer sync loop stopped");
}

impl PeerLoop {
    /// Timers and transitions that do not wait for the peer.
    async fn step(&mut self) {
        let now = Instant::now();
        if self.cache.is_none() && now >= self.store_retry_at {
            match self.seed().await {
                Ok(mut c) => {
                    if self.status.withdrawn && !c.is_empty() {
                        self.status.withdrawn = false;
                    }
                    let ops = self
                        .backend_records
                        .map(|r| c.set_backend_records(r))
                        .unwrap_or_default();
                    self.cache = Some(c);
                    self.counts_at = None;
                    if !ops.is_empty() {
                        self.write(&ops, now).await;
                    }
                }
                Err(e) => {
                    self.error(format!(
                        "reading peer {}'s cache from the local store: {e}",
                        self.peer.name
                    ));
                    self.store_retry_at = now + STORE_RETRY;
                }
            }
        }
        // A validated session that has gone silent: the peer (or the path) hangs.
        if let Some(up) = self.session_up
            && now >= up.max(self.live.last_seen) + self.live.peer_timeout
        {
            self.session = None;
            self.session_up = None;
            self.fail(format!(
                "no message from peer {} for {:?} (heartbeats stopped); reconnecting",
                self.peer.name, self.live.peer_timeout
            ));
        }
        if self.session.is_none()
            && self.cfg.enabled
            && now >= self.retry_at
            && let Some(cache) = &self.cache
        {
            self.attempts += 1;
            self.session = Some(Session::start(Params {
                peer: self.cfg.clone(),
                ours: self.ctx.cluster.clone(),
                tls_dir: self.ctx.tls_dir.clone(),
                view: self.ctx.view.clone(),
                resume: cache.resume_point(),
                first_address: self.attempts,
                queue: self.queue.clone(),
            }));
        }
        if self.live.stale(now) && !self.status.withdrawn && now >= self.store_retry_at {
            let ops = match self.cache.as_mut() {
                Some(c) => c.withdraw(),
                None => withdraw_ops(&self.peer.name),
            };
            if self.write(&ops, now).await {
                warn!(peer = %self.peer.name, stale_ttl = ?self.live.stale_ttl, "peer disconnected for longer than stale-ttl: its records are withdrawn");
                self.status.withdrawn = true;
                self.counts_at = None;
            }
        }
        if let Some(cache) = self.cache.as_mut()
            && cache.next_deadline().is_some_and(|t| t <= now)
        {
            let ops = cache.sweep_due(now);
            if !ops.is_empty() {
                info!(peer = %self.peer.name, deletes = ops.len(), "peer never marked these records' kinds synced after a reset; sweeping them");
                self.write(&ops, now).await;
                self.counts_at = None;
            }
        }
        self.resnapshot_for_quota(now);
    }

    async fn seed(&self) -> Result<PeerCache, StoreError> {
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
    fn limits(&self) -> clustermesh_proto::v1::PeerQuota {
        clustermesh_proto::quota::or_defaults(
            &self.cfg.quota.unwrap_or_default(),
            &self.ctx.config.quota,
        )
    }

    /// A peer over its quota whose held records went down: ask it for a
    /// fresh snapshot (at most every [`QUOTA_RESNAPSHOT_INTERVAL`]); the
    /// refused records that now fit arrive with it. Only differences are
    /// written.
    fn resnapshot_for_quota(&mut self, now: Instant) {
        let Some(cache) = self.cache.as_mut() else {
            return;
        };
        if self.session_up.is_none() || !cache.quota().wants_snapshot() || now < self.resnapshot_at
        {
            return;
        }
        info!(peer = %self.peer.name, over = ?cache.quota().over(), "peer over its quota has room again; asking it for a fresh snapshot");
        cache.want_snapshot();
        self.resnapshot_at = now + QUOTA_RESNAPSHOT_INTERVAL;
        self.session = None;
        self.session_up = None;
        self.redial_until = Some(now + REDIAL_GRACE);
        self.retry_at = now;
    }

    async fn on_event(&mut self, ev: Option<SessionEvent>) {
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

    async fn apply(&mut self, batches: Vec<clustermesh_proto::v1::WatchBatch>, now: Instant) {
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
                value = self
                    .ctx
                    .store
                    .get(&key)
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
    async fn write(&mut self, ops: &[WriteOp], now: Instant) -> bool {
        if ops.is_empty() {
            return true;
        }
        let started = std::time::Instant::now();
        let res = self.ctx.write(ops).await;
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

    fn seen(&mut self, now: Instant) {
        self.live.seen(now);
        self.status.last_heartbeat_unix_millis = clustermesh_proto::clock::unix_millis();
    }

    fn ended(&mut self, e: Option<SessionError>) {
        self.session = None;
        let now = Instant::now();
        // A stream that was up gets one redial before it is shown
        // disconnected; the end of an attempt that never came up (the
        // redial itself failing) shows it disconnected at once.
        self.redial_until = self.session_up.take().map(|_| now + REDIAL_GRACE);
        if std::mem::take(&mut self.resync) {
            self.retry_at = now;
            return;
        }
        let text = e
            .map(|e| e.to_string())
            .unwrap_or_else(|| format!("the session with peer {} stopped", self.peer.name));
        self.fail(text);
    }

    fn fail(&mut self, text: String) {
        self.status.failures += 1;
        let delay = self.backoff.delay();
        warn!(peer = %self.peer.name, error = %text, retry_in_ms = delay.as_millis() as u64, "peer sync failed");
        self.status.last_error = text;
        self.retry_at = Instant::now() + delay;
    }

    fn error(&mut self, text: String) {
        warn!(peer = %self.peer.name, error = %text, "peer sync problem");
        self.status.last_error = text;
    }

    fn publish(&mut self) {
        let now = Instant::now();
        self.status.connected = self.cfg.enabled && self.link_up(now);
        if let Some(cache) = &self.cache {
            self.status.synced = cache.synced_kinds().into_iter().map(|k| k as i32).collect();
            self.status.sync_mismatch = cache.mismatches();
            let pending = cache.pending() as u64;
            self.status.pending_records = pending;
            self.status.pending_by_reason.clear();
            if pending > 0 {
                self.status
                    .pending_by_reason
                    .insert(Reason::OutsidePeerPodCidrs.label().to_owned(), pending);
            }
            let q = cache.quota();
            self.status.quota = Some(*q.limits());
            self.status.held_bytes = q.held_bytes();
            self.status.over_quota = q.over().clone();
            if self
                .counts_at
                .is_none_or(|t| now >= t + Duration::from_secs(1))
            {
                self.status.counts = cache.counts();
                self.counts_at = Some(now);
            }
        }
        self.board.publish(self.status.clone());
    }

    /// Whether the peer is connected: a stream is up (or was until just now
    /// and is being redialed) and the peer is not silent for peer-timeout.
    fn link_up(&self, now: Instant) -> bool {
        let stream = self.session_up.is_some() || self.redial_until.is_some_and(|t| now < t);
        stream && self.live.connected(now)
    }

    /// The next moment something is due without a message from the peer.
    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let mut wake = now + self.ctx.config.status_interval;
        let mut at = |t: Instant| wake = wake.min(t.max(now + Duration::from_millis(1)));
        if self.cache.is_none() {
            at(self.store_retry_at);
        }
        if self.session.is_none() && self.cfg.enabled {
            at(self.retry_at.max(self.store_retry_at));
        }
        if self.live.heard {
            at(self.live.disconnected_at());
        }
        if let Some(up) = self.session_up {
            at(up.max(self.live.last_seen) + self.live.peer_timeout);
        }
        if let Some(t) = self.redial_until.filter(|t| *t > now) {
            at(t);
        }
        if !self.status.withdrawn
            && let Some(t) = self.live.withdraw_at()
        {
            at(t.max(self.store_retry_at));
        }
        if let Some(t) = self.cache.as_ref().and_then(|c| c.next_deadline()) {
            at(t);
        }
        if self
            .cache
            .as_ref()
            .is_some_and(|c| c.quota().wants_snapshot())
        {
            at(self.resnapshot_at);
        }
        wake
    }
}
