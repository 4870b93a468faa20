//! The Watch client: scope `merged` on the local apiserver, with the `agent`
//! role certificate, applied to a [`DigestMirror`].
//!
//! The mirror outlives connections. On any failure (dial, stream error,
//! silence longer than the idle timeout, a server-requested resync) the
//! client reconnects after a jittered exponential backoff and resumes from
//! `Mirror::resume_point()`. When the server cannot resume, it sends a reset
//! snapshot, which the mirror applies with mark-and-sweep: downstream sees
//! only what really changed, never a flush.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clustermesh_certs::{Role, dial};
use clustermesh_proto::mirror::{Change, DigestMirror};
use clustermesh_proto::v1::{
    BatchType, ClusterInfo, Scope, WatchRequest, cluster_mesh_client::ClusterMeshClient,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::status::Status;

/// What the Watch client hands to the reconcile loop.
#[derive(Debug)]
pub enum WatchMsg {
    /// The local cluster, from a snapshot header.
    Cluster(ClusterInfo),
    /// Changes to the mirrored set; `snapshot_done` once a snapshot completed.
    Changes {
        changes: Vec<Change>,
        snapshot_done: bool,
        /// Propagation stamps of the live upserts among `changes`: (origin
        /// cluster, µs since the Unix epoch).
        stamps: Vec<(String, i64)>,
    },
}

/// The stamps of the live upserts of `batch` that `changes` holds.
fn stamps_of(batch: &clustermesh_proto::v1::WatchBatch, changes: &[Change]) -> Vec<(String, i64)> {
    let stamped: Vec<&clustermesh_proto::v1::Event> = batch
        .events
        .iter()
        .filter(|e| e.origin_unix_micros.is_some())
        .collect();
    if stamped.is_empty() {
        return Vec::new();
    }
    let changed: std::collections::BTreeSet<(i32, &str, &str)> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Upsert { id, .. } => Some((id.0 as i32, id.1.as_str(), id.2.as_str())),
            _ => None,
        })
        .collect();
    stamped
        .into_iter()
        .filter(|e| changed.contains(&(e.kind, e.cluster.as_str(), e.key.as_str())))
        .filter_map(|e| Some((e.cluster.clone(), e.origin_unix_micros?)))
        .collect()
}

#[derive(Clone, Debug)]
pub struct WatchConfig {
    pub apiserver: String,
    pub tls_dir: PathBuf,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// A stream silent for this long (the server sends heartbeats) is dropped.
    pub idle_timeout: Duration,
}

pub use clustermesh_proto::backoff::Backoff;

/// How a session ended without an error.
enum End {
    Closed,
    Resync(String),
}

/// Runs until the receiver goes away.
pub async fn run(cfg: WatchConfig, tx: mpsc::Sender<WatchMsg>, status: Arc<Mutex<Status>>) {
    // Digests, not values: the view keeps the decoded records, and a kept
    // value would pin the whole message buffer it was decoded from.
    let mut mirror = DigestMirror::compact().streaming_into_empty();
    let mut backoff = Backoff::new(cfg.backoff_min, cfg.backoff_max);
    loop {
        let res = session(&cfg, &mut mirror, &tx, &status, &mut backoff).await;
        if tx.is_closed() {
            return;
        }
        let delay = match res {
            Ok(End::Resync(reason)) => {
                info!(%reason, "apiserver asked for a resync; resuming");
                Duration::ZERO
            }
            Ok(End::Closed) => {
                warn!("watch stream ended; reconnecting");
                backoff.delay()
            }
            Err(e) => {
                warn!(error = %e, "watch failed; reconnecting");
                if let Ok(mut s) = status.lock() {
                    s.watch.last_error = Some(e);
                }
                backoff.delay()
            }
        };
        if let Ok(mut s) = status.lock() {
            s.watch.connected = false;
            s.watch.reconnects += 1;
        }
        tokio::time::sleep(delay).await;
    }
}

async fn session(
    cfg: &WatchConfig,
    mirror: &mut DigestMirror,
    tx: &mpsc::Sender<WatchMsg>,
    status: &Arc<Mutex<Status>>,
    backoff: &mut Backoff,
) -> Result<End, String> {
    let channel = dial::connect(&cfg.apiserver, &cfg.tls_dir, Role::Agent)
        .await
        .map_err(|e| e.to_string())?;
    let mut client = ClusterMeshClient::new(channel).max_decoding_message_size(256 << 20);
    let resume = mirror.resume_point();
    debug!(?resume, "opening watch");
    let req = WatchRequest {
        kinds: vec![],
        scope: Scope::Merged as i32,
        resume,
    };
    let mut stream = client
        .watch(req)
        .await
        .map_err(|s| dial::explain(&s))?
        .into_inner();
    if let Ok(mut s) = status.lock() {
        s.watch.connected = true;
    }
    info!(apiserver = %cfg.apiserver, "watching the merged view");
    loop {
        let msg = tokio::time::timeout(cfg.idle_timeout, stream.message())
            .await
            .map_err(|_| format!("no batch or heartbeat for {:?}", cfg.idle_timeout))?
            .map_err(|s| dial::explain(&s))?;
        let Some(batch) = msg else {
            return Ok(End::Closed);
        };
        let btype = BatchType::try_from(batch.r#type).unwrap_or(BatchType::Unspecified);
        if btype == BatchType::SnapshotBegin
            && let Some(c) = batch.cluster.clone()
            && tx.send(WatchMsg::Cluster(c)).await.is_err()
        {
            return Ok(End::Closed);
        }
        let out = mirror.apply(&batch);
        if let Ok(mut s) = status.lock() {
            s.watch.epoch = mirror.epoch.clone();
            s.watch.revision = mirror.revision;
            s.watch.snapshots = mirror.snapshots;
            s.watch.resets = mirror.resets;
            s.watch.batches += 1;
        }
        if out.snapshot_done || btype == BatchType::Events {
            backoff.reset();
        }
        if out.snapshot_done || !out.changes.is_empty() {
            let stamps = stamps_of(&batch, &out.changes);
            let m = WatchMsg::Changes {
                changes: out.changes,
                snapshot_done: out.snapshot_done,
                stamps,
            };
            if tx.send(m).await.is_err() {
                return Ok(End::Closed);
            }
        }
        if let Some(reason) = out.resync {
            return Ok(End::Resync(reason));
        }
    }
}
