//! Runs one peer loop per registered peer while this replica leads: starts
//! loops as registrations appear, restarts them when a registration changes,
//! stops them when it vanishes, then withdraws what the peer left in the
//! cache (again: the loop may have written after an Admin disconnect's
//! delete) and its status. On start it also removes caches, markers and
//! statuses of peers that are no longer registered (a peer removed while no
//! replica led).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use clustermesh_proto::keys::{self, StoreKey};
use clustermesh_proto::v1::PeerConfig;
use clustermesh_proto::validate;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::cache::withdraw_ops;
use super::status::{self, Board};
use super::{MeshContext, peer, peers_may_have_changed};

struct Running {
    cfg: PeerConfig,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

struct Supervisor {
    ctx: Arc<MeshContext>,
    board: Arc<Board>,
    loops: BTreeMap<String, Running>,
    /// Peers whose leftovers still have to be withdrawn.
    cleanup: BTreeSet<String>,
    /// Registrations already reported as unusable (logged once).
    refused: BTreeSet<String>,
}

/// Runs until `stop` flips (leadership lost or shutdown), then stops every loop.
pub async fn run(ctx: Arc<MeshContext>, mut stop: watch::Receiver<bool>) {
    let board = Arc::new(Board::default());
    let writer = tokio::spawn(status::writer(ctx.clone(), board.clone(), stop.clone()));
    let mut changes = ctx.view.changes();
    let mut s = Supervisor {
        ctx,
        board,
        loops: BTreeMap::new(),
        cleanup: BTreeSet::new(),
        refused: BTreeSet::new(),
    };
    let mut collected = false;
    loop {
        if s.ctx.view.ready() {
            if !collected {
                s.collect_orphans();
                collected = true;
            }
            s.reconcile().await;
        }
        let idle = if !s.ctx.view.ready() {
            Duration::from_millis(100)
        } else if s.cleanup.is_empty() {
            Duration::from_secs(5)
        } else {
            Duration::from_secs(1)
        };
        if !peers_may_have_changed(&mut changes, &mut stop, idle).await {
            break;
        }
    }
    for (_, r) in std::mem::take(&mut s.loops) {
        let _ = r.stop.send(true);
        let _ = r.task.await;
    }
    let _ = writer.await;
}

impl Supervisor {
    fn registered(&self) -> BTreeMap<String, PeerConfig> {
        crate::server::admin::list(&self.ctx.view)
            .into_iter()
            .map(|p| (p.name.clone(), p))
            .collect()
    }

    /// Queues the withdrawal of leftovers of peers that are not registered.
    fn collect_orphans(&mut self) {
        let view = &self.ctx.view;
        let local = self.ctx.cluster.name.as_str();
        let registered = self.registered();
        let mut orphans: BTreeSet<String> = view
            .counts()
            .into_iter()
            .map(|c| c.cluster)
            .filter(|c| c != local && !registered.contains_key(c))
            .collect();
        for (k, _) in view.entries(&format!("{}synced/", keys::PREFIX)) {
            if let StoreKey::Synced { cluster, .. } = keys::parse(&k)
                && cluster != local
                && !registered.contains_key(cluster)
            {
                orphans.insert(cluster.to_owned());
            }
        }
        for (k, _) in view.entries(&keys::peer_status_prefix()) {
            if let StoreKey::PeerStatus(name) = keys::parse(&k)
                && !registered.contains_key(name)
            {
                self.board.remove(name);
            }
        }
        if !orphans.is_empty() {
            info!(peers = ?orphans, "withdrawing records of peers that are no longer registered");
        }
        self.cleanup.extend(orphans);
    }

    async fn reconcile(&mut self) {
        let desired = self.registered();
        let local = self.ctx.cluster.name.clone();
        // Stop loops whose registration vanished or changed.
        let changed: Vec<String> = self
            .loops
            .iter()
            .filter(|(name, r)| desired.get(*name) != Some(&r.cfg) || r.task.is_finished())
            .map(|(name, _)| name.clone())
            .collect();
        for name in changed {
            if let Some(r) = self.loops.remove(&name) {
                let _ = r.stop.send(true);
                let _ = r.task.await;
                if desired.contains_key(&name) {
                    info!(peer = %name, "peer registration changed (or its loop ended); restarting its sync loop");
                } else {
                    info!(peer = %name, "peer disconnected; withdrawing its records");
                    self.board.remove(&name);
                    self.cleanup.insert(name);
                }
            }
        }
        // A peer registered again must not lose what its new loop writes.
        self.cleanup
            .retain(|n| !desired.contains_key(n) && *n != local);
        for name in std::mem::take(&mut self.cleanup) {
            if let Err(e) = self.ctx.write(&withdraw_ops(&name)).await {
                warn!(peer = %name, error = %e, "withdrawing a removed peer's records failed; retrying");
                self.cleanup.insert(name);
            }
        }
        self.refused.retain(|n| desired.contains_key(n));
        for (name, cfg) in desired {
            if self.loops.contains_key(&name) {
                continue;
            }
            if let Err(reason) = usable(&cfg, &local) {
                if self.refused.insert(name.clone()) {
                    error!(peer = %name, %reason, "ignoring peer registration");
                }
                continue;
            }
            let (tx, rx) = watch::channel(false);
            let task = tokio::spawn(peer::run(
                self.ctx.clone(),
                cfg.clone(),
                self.board.clone(),
                rx,
            ));
            info!(peer = %name, id = cfg.cluster_id, addresses = ?cfg.addresses, enabled = cfg.enabled, "peer sync loop started");
            self.loops.insert(
                name,
                Running {
                    cfg,
                    stop: tx,
                    task,
                },
            );
        }
    }
}

/// A registration the syncer can act on (Admin checks these too; a key
/// written by other means may not be).
fn usable(cfg: &PeerConfig, local: &str) -> Result<(), String> {
    validate::cluster_name(&cfg.name).map_err(|e| e.to_string())?;
    if cfg.name == local {
        return Err("the peer has this cluster's own name".into());
    }
    Ok(())
}
