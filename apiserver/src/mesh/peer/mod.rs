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
//!
//! - [`seed`]: the mirror seeded from the store (or the caught-up view);
//! - [`apply`]: the peer's batches checked and written, refusals counted;
//! - here: the loop, its timers, the session's life and the status.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use clustermesh_proto::ClusterMode;
use clustermesh_proto::v1::{PeerConfig, PeerStatus};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::cache::{PeerCache, withdraw_ops};
use super::ingest::{PeerRef, Reason};
use super::liveness::{Backoff, Liveness};
use super::session::{Params, Session, SessionError};
use super::status::{self, Board};
use super::{MeshContext, stopped};

mod apply;
mod seed;

/// Pause before retrying after a local store failure.
const STORE_RETRY: Duration = Duration::from_secs(1);

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
            match Box::pin(self.seed()).await {
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
