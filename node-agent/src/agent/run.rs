//! The agent's main loop: the Watch client feeds the view; the reconciler
//! programs the datapath when the view or the node's pod interfaces change;
//! the health endpoint and a periodic log show the counters.
//!
//! Stopping (SIGTERM, SIGINT) leaves everything in the kernel as it is: the
//! programs stay attached through their pinned links and the maps keep their
//! contents, so traffic flows while the agent is down and a new agent adopts
//! and reconciles them.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use clustermesh_proto::mirror::worth_repacking;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::block_in_place;
use tokio::time::{MissedTickBehavior, interval};
use tracing::{info, warn};

use super::config::AgentConfig;
use super::health::{self, HealthState};
use super::propagation::MAX_WAITING;
use super::reconciler::{self, Reconciler, SetupError};
use super::status::Status;
use super::watch::{self, WatchConfig, WatchMsg};
use crate::datapath::{Datapath, DatapathError, Metrics};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("bringing the datapath up: {0}")]
    Setup(#[from] SetupError),
    #[error("opening the pinned maps for the health endpoint: {0}")]
    Datapath(#[from] DatapathError),
    #[error("health endpoint on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("installing signal handlers: {0}")]
    Signal(std::io::Error),
}

/// Logs the counters that moved since the previous call.
#[derive(Default)]
struct CounterLog {
    prev: Option<Metrics>,
}

impl CounterLog {
    fn log(&mut self, dp: &Datapath) {
        let m = match dp.metrics() {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "cannot read datapath counters");
                return;
            }
        };
        let mut line = String::new();
        for (r, c) in m.iter() {
            let before = self.prev.as_ref().map(|p| p.packets(r)).unwrap_or(0);
            if c.packets > before {
                let _ = write!(
                    line,
                    " {}=+{} ({})",
                    r.name(),
                    c.packets - before,
                    c.packets
                );
            }
        }
        if !line.is_empty() {
            info!("datapath counters:{line}");
        }
        self.prev = Some(m);
    }
}

/// When the first programming may happen: after a complete snapshot, and
/// once the local cluster's records are marked synced (so a restarted agent
/// never reconciles its maps against a store that is still being filled) —
/// or, for stores without sync markers, after `sync_wait`.
struct Gate {
    snapshot_seen: bool,
    /// A snapshot ended since the last reconcile (its staging is freed),
    /// or enough live changes came ([`worth_repacking`]): repack and trim.
    trim: bool,
    /// Records changed live since the view was last repacked.
    applied: usize,
    since: Option<tokio::time::Instant>,
    sync_wait: std::time::Duration,
}

impl Gate {
    fn open(&mut self, rec: &Reconciler) -> bool {
        if !self.snapshot_seen {
            return false;
        }
        if rec.view.local_synced() {
            info!(records = ?rec.view.counts(), "local records synced; programming the datapath");
            return true;
        }
        let since = *self.since.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() >= self.sync_wait {
            warn!(
                waited = ?self.sync_wait,
                "the local cluster has not marked its records synced; programming the datapath anyway"
            );
            return true;
        }
        false
    }
}

/// Applies one Watch message to the view; true if the view changed.
fn handle(
    rec: &mut Reconciler,
    gate: &mut Gate,
    status: &Arc<Mutex<Status>>,
    waiting: &mut VecDeque<(String, i64)>,
    msg: WatchMsg,
) -> bool {
    match msg {
        WatchMsg::Cluster(c) => {
            if let Ok(mut s) = status.lock() {
                s.cluster = c.name.clone();
                s.cluster_id = c.id;
            }
            let changed = rec.view.cluster.as_ref() != Some(&c);
            rec.view.cluster = Some(c);
            changed
        }
        WatchMsg::Changes {
            changes,
            snapshot_done,
            stamps,
        } => {
            for c in &changes {
                rec.view.apply(c);
            }
            waiting.extend(stamps);
            while waiting.len() > MAX_WAITING {
                waiting.pop_front();
            }
            gate.applied += changes.len();
            if snapshot_done {
                gate.snapshot_seen = true;
                gate.trim = true;
            } else if worth_repacking(gate.applied, rec.view.counts().iter().sum()) {
                gate.trim = true;
            }
            !changes.is_empty() || snapshot_done
        }
    }
}

/// Runs the agent until SIGTERM/SIGINT.
pub async fn run(cfg: AgentConfig) -> Result<(), AgentError> {
    let status = Arc::new(Mutex::new(Status {
        node: cfg.node_name.clone(),
        ..Default::default()
    }));
    if let Ok(mut s) = status.lock() {
        s.watch.apiserver = cfg.apiserver.clone();
    }
    let mut rec = block_in_place(|| reconciler::setup(&cfg, status.clone()))?;

    if let Some(addr) = cfg.health_listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| AgentError::Listen { addr, source })?;
        let state = HealthState {
            status: status.clone(),
            datapath: Arc::new(Mutex::new(Datapath::open(&cfg.pin_dir)?)),
        };
        info!(%addr, "health endpoint: /healthz /status /metrics");
        tokio::spawn(health::serve(listener, state));
    }

    let (tx, mut rx) = mpsc::channel(1024);
    let watch = tokio::spawn(watch::run(
        WatchConfig {
            apiserver: cfg.apiserver.clone(),
            tls_dir: cfg.tls_dir.clone(),
            backoff_min: cfg.backoff_min,
            backoff_max: cfg.backoff_max,
            idle_timeout: cfg.idle_timeout,
        },
        tx,
        status.clone(),
    ));

    let reporter = tokio::spawn(super::report::run(
        cfg.apiserver.clone(),
        cfg.tls_dir.clone(),
        status.clone(),
        cfg.backoff_min,
        cfg.backoff_max,
    ));

    let mut scan = interval(cfg.scan_interval);
    scan.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut log = interval(cfg.log_interval);
    log.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut resync = interval(cfg.resync_interval);
    resync.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut counters = CounterLog::default();
    let mut term = signal(SignalKind::terminate()).map_err(AgentError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AgentError::Signal)?;
    let mut waiting: VecDeque<(String, i64)> = VecDeque::new();
    let mut gate = Gate {
        snapshot_seen: false,
        trim: false,
        applied: 0,
        since: None,
        sync_wait: cfg.sync_wait,
    };

    loop {
        let mut view_changed = false;
        let mut due = false;
        tokio::select! {
            m = rx.recv() => {
                let Some(m) = m else { break };
                view_changed |= handle(&mut rec, &mut gate, &status, &mut waiting, m);
                while let Ok(m) = rx.try_recv() {
                    view_changed |= handle(&mut rec, &mut gate, &status, &mut waiting, m);
                }
            }
            _ = scan.tick() => {
                due = block_in_place(|| rec.scan()) || rec.needs_retry();
            }
            _ = resync.tick() => due = true,
            _ = log.tick() => {
                block_in_place(|| counters.log(rec.datapath()));
                continue;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
        if !rec.synced {
            if !gate.open(&rec) {
                continue;
            }
            rec.synced = true;
            view_changed = true;
        }
        if !(view_changed || due) {
            continue;
        }
        block_in_place(|| {
            // Local pods may have come or gone only if the local cluster's
            // records changed (a scan runs `ip route` and `ip neigh`).
            if view_changed && rec.view.dirty.clusters.contains(rec.view.local_cluster()) {
                rec.scan();
            }
            rec.reconcile();
            if std::mem::take(&mut gate.trim) {
                gate.applied = 0;
                rec.repack();
                let started = std::time::Instant::now();
                let released = clustermesh_proto::heap::release_freed_memory();
                tracing::debug!(released, elapsed = ?started.elapsed(), "returned freed heap memory to the kernel");
            }
        });
        // The changes are in the maps once a reconcile applied without error.
        if !waiting.is_empty()
            && let Ok(mut s) = status.lock()
            && s.datapath.last_error.is_none()
        {
            let now = clustermesh_proto::stamp::now_micros();
            for (source, at) in waiting.drain(..) {
                s.propagation.observe(&source, at, now);
            }
        }
    }
    watch.abort();
    reporter.abort();
    block_in_place(|| counters.log(rec.datapath()));
    info!("agent stopping: programs stay attached and maps pinned");
    Ok(())
}
