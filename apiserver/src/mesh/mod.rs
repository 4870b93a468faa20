//! The mesh syncer (DESIGN §6): mirrors every registered peer's exported
//! records into `cache/<kind>/<peer>/`, runs only while this replica leads,
//! and keeps the gRPC server's trust in step with the registered peers.
//!
//! - [`supervisor`]: watches `peers/` and runs one [`peer`] loop per peer;
//!   collects leftovers of peers that are no longer registered.
//! - [`peer`]: one peer's state machine (dial → validate → watch → mirror;
//!   liveness, withdrawal after `stale-ttl`, status).
//! - [`session`]: one connection attempt; [`cache`]: the seeded mirror and
//!   the writes it yields; [`validate`]: which peer is accepted;
//!   [`ingest`]: which of its records are (the rules table, pending records).
//! - [`status`]: per-peer status persisted under `peer-status/<peer>`.
//! - [`trust`]: rebuilds the server TLS config when `peers/` changes (every
//!   replica, leader or not).
//!
//! See docs/mesh.md for the behaviour and the defaults.

pub mod attest;
pub mod cache;
pub mod ingest;
pub mod ingest_context;
pub mod liveness;
pub mod peer;
pub mod session;
pub mod status;
pub mod supervisor;
pub mod trust;
pub mod validate;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clustermesh_proto::v1::ClusterInfo;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use crate::server::tls::SharedConfig;
use crate::store::{Applied, Store, StoreError, WriteOp};
use crate::view::{Batch, Class, View};

/// How long a peer may stay silent before it is shown disconnected
/// (5 heartbeats at the default 2 s interval).
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a disconnected peer's records are kept before they are withdrawn.
pub const DEFAULT_STALE_TTL: Duration = Duration::from_secs(120);
/// How often a peer's status is persisted when only its heartbeat moved.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(2);

/// Tunables of the syncer.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    pub peer_timeout: Duration,
    /// Zero: never withdraw a silent peer's records.
    pub stale_ttl: Duration,
    pub status_interval: Duration,
    /// This cluster's service CIDRs (`--service-cidr`): no peer's pod CIDR,
    /// endpoint or backend may lie inside them.
    pub service_cidrs: Vec<ingest::Cidr>,
    /// The default per-peer quota (`--peer-quota`, every field set): a
    /// registration's zero fields take these.
    pub quota: clustermesh_proto::v1::PeerQuota,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            peer_timeout: DEFAULT_PEER_TIMEOUT,
            stale_ttl: DEFAULT_STALE_TTL,
            status_interval: DEFAULT_STATUS_INTERVAL,
            service_cidrs: Vec::new(),
            quota: clustermesh_proto::quota::DEFAULT,
        }
    }
}

/// What the syncer works with.
pub struct MeshContext {
    pub store: Store,
    pub view: Arc<View>,
    pub cluster: ClusterInfo,
    /// Holds `remote.crt`/`remote.key` (presented to peers) and the server files.
    pub tls_dir: PathBuf,
    /// The gRPC server's TLS config, rebuilt when the registered peers change.
    pub tls: SharedConfig,
    /// This cluster's CA as auth checks it; reloaded with the TLS files.
    pub own_ca: crate::server::tls::SharedCa,
    pub config: MeshConfig,
    /// With leader election: the token every write is fenced on.
    pub fence: Option<String>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl MeshContext {
    /// Writes `ops` in order, fenced on leadership when there is a token.
    /// Puts too large for the store are left out and returned.
    pub async fn write(&self, ops: &[WriteOp]) -> Result<Applied, StoreError> {
        match &self.fence {
            Some(token) => self.store.apply_fenced(ops, token).await,
            None => self.store.apply(ops).await,
        }
    }
}

/// Starts the syncer. `leader` says whether this replica leads: peer loops
/// run only while it is true (all stop when it flips false). The trust
/// reconciler runs on every replica. Everything ends when `stop` flips.
pub fn spawn(
    ctx: MeshContext,
    leader: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let ctx = Arc::new(ctx);
    tokio::spawn(trust::run(ctx.clone(), stop.clone()));
    tokio::spawn(lead(ctx, leader, stop))
}

/// Resolves once `stop` is true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Waits until `peers/` may have changed: a batch touching a registration
/// (`peers/<name>`), a reset or a lag; or until `idle` passed. Returns false
/// when `stop` flipped. Peer-status and lease writes (several a second
/// under load) do not wake it: each wake decodes every registration.
pub(crate) async fn peers_may_have_changed(
    changes: &mut broadcast::Receiver<Arc<Batch>>,
    stop: &mut watch::Receiver<bool>,
    idle: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + idle;
    loop {
        tokio::select! {
            r = changes.recv() => match r {
                Ok(b) if !b.reset && !b.events.iter().any(|e| e.target.class == Class::Registration) => {}
                Ok(_) | Err(RecvError::Lagged(_)) => return true,
                Err(RecvError::Closed) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => return true,
                        _ = stopped(stop) => return false,
                    }
                }
            },
            _ = tokio::time::sleep_until(deadline) => return true,
            _ = stopped(stop) => return false,
        }
    }
}

async fn lead(
    ctx: Arc<MeshContext>,
    mut leader: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        // Wait for leadership. A gone sender with `false` means never.
        let leading = tokio::select! {
            r = leader.wait_for(|l| *l) => r.is_ok(),
            _ = stopped(&mut stop) => return,
        };
        if !leading {
            stopped(&mut stop).await;
            return;
        }
        info!(cluster = %ctx.cluster.name, "leading: mesh syncer starts");
        let (term_tx, term_rx) = watch::channel(false);
        let sup = tokio::spawn(supervisor::run(ctx.clone(), term_rx));
        let lost = tokio::select! {
            r = leader.wait_for(|l| !*l) => r.is_ok(),
            _ = stopped(&mut stop) => false,
        };
        if !lost && !*stop.borrow() {
            // The sender is gone with `true`: leadership is final.
            stopped(&mut stop).await;
        }
        let _ = term_tx.send(true);
        let _ = sup.await;
        if !lost || *stop.borrow() {
            return;
        }
        info!(cluster = %ctx.cluster.name, "leadership lost: mesh syncer stopped");
    }
}
