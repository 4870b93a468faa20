//! One Watch stream: snapshot or replay, then live batches filtered for the
//! subscriber's scope and kinds, with heartbeats. If the subscriber falls
//! behind the view's broadcast buffer it gets RESYNC and the stream ends.

use std::sync::Arc;
use std::time::Duration;

use clustermesh_proto::chunks;
use clustermesh_proto::v1::{BatchType, ClusterInfo, Kind, Scope, WatchBatch};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::mpsc;
use tonic::Status;
use tracing::{debug, info};

use crate::metrics::Metrics;
use crate::view::{Batch, Start, Subscription, View};

/// Most events gathered at once when a subscriber is behind; they go out in
/// as few EVENTS messages as [`chunks`] allows.
const COALESCE_EVENTS: usize = 1024;

/// A snapshot of at least this many events leaves enough freed memory
/// behind to be worth handing back ([`clustermesh_proto::heap`]).
const LARGE_SNAPSHOT: usize = 4096;

/// Checked on every heartbeat tick; `Some(reason)` ends the stream with PERMISSION_DENIED.
pub type Revalidate = Box<dyn Fn() -> Option<String> + Send + Sync>;

pub struct Pump {
    pub view: Arc<View>,
    pub sub: Subscription,
    pub scope: Scope,
    pub kinds: Vec<Kind>,
    pub cluster: ClusterInfo,
    pub heartbeat: Duration,
    pub peer: String,
    pub revalidate: Option<Revalidate>,
    pub metrics: Arc<Metrics>,
}

type Tx = mpsc::Sender<Result<WatchBatch, Status>>;

fn batch(t: BatchType, epoch: &str, revision: i64) -> WatchBatch {
    WatchBatch {
        r#type: t as i32,
        epoch: epoch.to_owned(),
        revision,
        ..Default::default()
    }
}

impl Pump {
    /// Runs until the client goes away or is cut off.
    pub async fn run(self, tx: Tx) {
        let _guard = self.view.watcher_guard();
        let Pump {
            sub,
            scope,
            kinds,
            cluster,
            heartbeat,
            peer,
            revalidate,
            metrics,
            ..
        } = self;
        let Subscription {
            epoch,
            revision: mut rev,
            start,
            mut rx,
        } = sub;
        let send = |b: WatchBatch| {
            let tx = tx.clone();
            let metrics = metrics.clone();
            async move {
                let events = b.events.len();
                let resync = b.r#type == BatchType::Resync as i32;
                let sent = tx.send(Ok(b)).await.is_ok();
                if sent {
                    metrics.watch_events(events);
                    if resync {
                        metrics.watch_resync();
                    }
                }
                sent
            }
        };
        match start {
            Start::Snapshot {
                events,
                reset,
                reason,
            } => {
                let mut begin = batch(BatchType::SnapshotBegin, &epoch, rev);
                begin.reset = reset;
                begin.reason = reason;
                begin.cluster = Some(cluster.clone());
                if !send(begin).await {
                    return;
                }
                for chunk in chunks::slices(&events) {
                    let mut b = batch(BatchType::Snapshot, &epoch, rev);
                    b.events = chunk.to_vec();
                    if !send(b).await {
                        return;
                    }
                }
                if !send(batch(BatchType::SnapshotEnd, &epoch, rev)).await {
                    return;
                }
                if events.len() >= LARGE_SNAPSHOT {
                    drop(events);
                    clustermesh_proto::heap::want_release();
                }
            }
            Start::Replay(batches) => {
                for b in batches {
                    let events: Vec<_> = b
                        .events
                        .iter()
                        .filter_map(|e| e.to_wire(scope, &kinds))
                        .collect();
                    if events.is_empty() {
                        continue;
                    }
                    for (events, upto) in chunks::split_events(events, b.revision) {
                        let mut out = batch(BatchType::Events, &epoch, upto);
                        out.events = events;
                        if !send(out).await {
                            return;
                        }
                    }
                }
                // Tells the client the resume worked and where it stands.
                let mut hb = batch(BatchType::Heartbeat, &epoch, rev);
                hb.cluster = Some(cluster.clone());
                if !send(hb).await {
                    return;
                }
            }
        }
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A batch taken while coalescing that must be handled on its own.
        let mut carry: Option<Result<Arc<Batch>, RecvError>> = None;
        loop {
            let r = match carry.take() {
                Some(r) => r,
                None => tokio::select! {
                    r = rx.recv() => r,
                    _ = tick.tick() => {
                        if let Some(why) = revalidate.as_ref().and_then(|check| check()) {
                            info!(%peer, reason = %why, "watch cut: access revoked");
                            let _ = tx.send(Err(Status::permission_denied(why))).await;
                            return;
                        }
                        if !send(batch(BatchType::Heartbeat, &epoch, rev)).await {
                            return;
                        }
                        continue;
                    }
                    _ = tx.closed() => {
                        debug!(%peer, "watch client went away");
                        return;
                    }
                },
            };
            match r {
                Ok(b) if b.reset => {
                    let mut out = batch(BatchType::Resync, &epoch, rev);
                    out.reason = "the store was replaced (new epoch); watch again".into();
                    let _ = send(out).await;
                    info!(%peer, "watch cut: store epoch changed");
                    return;
                }
                Ok(b) => {
                    if b.revision <= rev {
                        continue;
                    }
                    rev = b.revision;
                    let mut events: Vec<_> = b
                        .events
                        .iter()
                        .filter_map(|e| e.to_wire(scope, &kinds))
                        .collect();
                    // Behind? Everything already waiting goes out in one
                    // message (in order): fewer, larger writes exactly when
                    // the subscriber needs to catch up.
                    while events.len() < COALESCE_EVENTS {
                        match rx.try_recv() {
                            Ok(next) if !next.reset => {
                                if next.revision > rev {
                                    rev = next.revision;
                                    events.extend(
                                        next.events.iter().filter_map(|e| e.to_wire(scope, &kinds)),
                                    );
                                }
                            }
                            Ok(next) => {
                                carry = Some(Ok(next));
                                break;
                            }
                            Err(TryRecvError::Lagged(n)) => {
                                carry = Some(Err(RecvError::Lagged(n)));
                                break;
                            }
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Closed) => {
                                carry = Some(Err(RecvError::Closed));
                                break;
                            }
                        }
                    }
                    if events.is_empty() {
                        continue;
                    }
                    for (events, upto) in chunks::split_events(events, rev) {
                        let mut out = batch(BatchType::Events, &epoch, upto);
                        out.events = events;
                        if !send(out).await {
                            return;
                        }
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    let mut out = batch(BatchType::Resync, &epoch, rev);
                    out.reason = format!(
                        "watcher fell {n} batches behind the server's buffer; resume from revision {rev}"
                    );
                    info!(%peer, behind = n, revision = rev, "watch cut: subscriber too slow");
                    let _ = send(out).await;
                    return;
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}
