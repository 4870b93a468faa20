//! Peer status: the syncer's per-peer state, persisted under
//! `peer-status/<peer>` so that every replica's Status shows it (also right
//! after a leader change).
//!
//! Peer loops publish their status on a [`Board`]; one writer task persists
//! what changed in one batched write: at once when the state changed
//! (connected, synced kinds, errors, withdrawal), every
//! [`VOLATILE_TICKS`] × `interval` when only the heartbeat time, the counts
//! or the bytes held moved. Those move for every peer all the time: written
//! every interval, 250 peers cost 125 status puts a second, a third of the
//! store's writes under Cilium's churn (docs/benchmarks.md).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clustermesh_proto::keys::{self, StoreKey};
use clustermesh_proto::v1::{PeerConfig, PeerStatus};
use prost::Message;
use tokio::sync::{Notify, watch};
use tracing::{debug, warn};

use super::MeshContext;
use crate::store::WriteOp;
use crate::view::View;

/// Ticks between writes of statuses whose state did not change.
pub const VOLATILE_TICKS: u32 = 5;

/// The status of every registered peer, for the Status RPC: the persisted
/// status where there is one, the registration's facts always winning
/// (name, ID, addresses, enabled); registered peers without a status yet
/// show as not connected.
pub fn peer_statuses(view: &View) -> Vec<PeerStatus> {
    let persisted: BTreeMap<String, PeerStatus> = view
        .entries(&keys::peer_status_prefix())
        .into_iter()
        .filter_map(|(k, e)| match keys::parse(&k) {
            StoreKey::PeerStatus(name) => PeerStatus::decode(e.value.as_ref())
                .ok()
                .map(|s| (name.to_owned(), s)),
            _ => None,
        })
        .collect();
    crate::server::admin::list(view)
        .into_iter()
        .map(|cfg| {
            let mut s = persisted.get(&cfg.name).cloned().unwrap_or_default();
            registration(&mut s, &cfg);
            if !cfg.enabled {
                s.connected = false;
            }
            s
        })
        .collect()
}

/// Copies the registration's facts into a status.
pub fn registration(s: &mut PeerStatus, cfg: &PeerConfig) {
    s.name = cfg.name.clone();
    s.cluster_id = cfg.cluster_id;
    s.addresses = cfg.addresses.clone();
    s.enabled = cfg.enabled;
    s.import_policies = cfg.import_policies;
}

/// The persisted status of one peer, if any.
pub fn persisted(view: &View, name: &str) -> Option<PeerStatus> {
    view.get(&keys::peer_status(name))
        .and_then(|e| PeerStatus::decode(e.value.as_ref()).ok())
}

/// Whether two statuses differ in more than what moves with every record
/// (heartbeat time, counts, bytes held): such a change is written at once,
/// the others at the next tick. Under churn every change moves `held_bytes`;
/// were it urgent, every record written would cost a status write as well.
/// Every field is named, so a new one must be sorted into one group.
fn state_changed(a: &PeerStatus, b: &PeerStatus) -> bool {
    let PeerStatus {
        name,
        cluster_id,
        addresses,
        connected,
        last_heartbeat_unix_millis: _,
        synced,
        counts: _,
        failures,
        last_error,
        rejected_records,
        enabled,
        withdrawn,
        rejected_by_reason,
        pending_records,
        pending_by_reason,
        quota,
        held_bytes: _,
        over_quota,
        import_policies,
        sync_mismatch,
    } = a;
    *name != b.name
        || *cluster_id != b.cluster_id
        || *addresses != b.addresses
        || *connected != b.connected
        || *synced != b.synced
        || *failures != b.failures
        || *last_error != b.last_error
        || *rejected_records != b.rejected_records
        || *enabled != b.enabled
        || *withdrawn != b.withdrawn
        || *rejected_by_reason != b.rejected_by_reason
        || *pending_records != b.pending_records
        || *pending_by_reason != b.pending_by_reason
        || *quota != b.quota
        || *over_quota != b.over_quota
        || *import_policies != b.import_policies
        || *sync_mismatch != b.sync_mismatch
}

#[derive(Default)]
struct Slot {
    current: PeerStatus,
    written: Option<PeerStatus>,
    /// Deleted: write a delete, then forget the slot.
    removed: bool,
}

/// Where peer loops publish their status.
#[derive(Default)]
pub struct Board {
    slots: Mutex<BTreeMap<String, Slot>>,
    urgent: Notify,
}

impl Board {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes a peer's status; a state change is written at once.
    pub fn publish(&self, status: PeerStatus) {
        let mut slots = self.lock();
        let slot = slots.entry(status.name.clone()).or_default();
        let urgent = slot
            .written
            .as_ref()
            .is_none_or(|w| state_changed(w, &status));
        slot.current = status;
        slot.removed = false;
        drop(slots);
        if urgent {
            self.urgent.notify_one();
        }
    }

    /// Forgets a peer and deletes its persisted status.
    pub fn remove(&self, name: &str) {
        self.lock().entry(name.to_owned()).or_default().removed = true;
        self.urgent.notify_one();
    }

    /// The writes that bring the store up to date, with what they write:
    /// every difference, or (`volatile` false) only changes of state.
    fn pending(&self, volatile: bool) -> (Vec<WriteOp>, Vec<(String, Option<PeerStatus>)>) {
        let slots = self.lock();
        let mut ops = Vec::new();
        let mut done = Vec::new();
        for (name, slot) in slots.iter() {
            let due = match slot.written.as_ref() {
                None => true,
                Some(w) if volatile => *w != slot.current,
                Some(w) => state_changed(w, &slot.current),
            };
            if slot.removed {
                ops.push(WriteOp::delete(keys::peer_status(name)));
                done.push((name.clone(), None));
            } else if due {
                ops.push(WriteOp::put(
                    keys::peer_status(name),
                    slot.current.encode_to_vec(),
                ));
                done.push((name.clone(), Some(slot.current.clone())));
            }
        }
        (ops, done)
    }

    fn written(&self, done: Vec<(String, Option<PeerStatus>)>) {
        let mut slots = self.lock();
        for (name, status) in done {
            match status {
                None => {
                    if slots.get(&name).is_some_and(|s| s.removed) {
                        slots.remove(&name);
                    }
                }
                Some(s) => {
                    if let Some(slot) = slots.get_mut(&name) {
                        slot.written = Some(s);
                    }
                }
            }
        }
    }
}

/// Persists the board until `stop` flips (leadership lost or shutdown).
pub async fn writer(ctx: Arc<MeshContext>, board: Arc<Board>, mut stop: watch::Receiver<bool>) {
    let interval = ctx.config.status_interval;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u32;
    loop {
        let volatile = tokio::select! {
            _ = board.urgent.notified() => false,
            _ = tick.tick() => {
                ticks = ticks.wrapping_add(1);
                ticks.is_multiple_of(VOLATILE_TICKS)
            }
            _ = stop.changed() => return,
        };
        if *stop.borrow() {
            return;
        }
        let (ops, done) = board.pending(volatile);
        if ops.is_empty() {
            continue;
        }
        let started = std::time::Instant::now();
        let res = ctx.write(&ops).await;
        ctx.metrics
            .store_write("status_write", started.elapsed().as_secs_f64());
        match res {
            Ok(_) => {
                debug!(peers = done.len(), "peer status written");
                board.written(done);
            }
            Err(e) => {
                warn!(error = %e, "writing peer status failed; retrying");
                ctx.metrics.etcd_error("status_write");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn board_writes_changes_once() {
        let b = Board::default();
        let s = PeerStatus {
            name: "a".into(),
            connected: true,
            ..Default::default()
        };
        b.publish(s.clone());
        let (ops, done) = b.pending(false);
        assert_eq!(ops.len(), 1, "a first status is written at once");
        b.written(done);
        assert!(b.pending(true).0.is_empty(), "nothing new");
        let mut hb = s.clone();
        hb.last_heartbeat_unix_millis = 5;
        assert!(
            !state_changed(&s, &hb),
            "heartbeat time alone is not urgent"
        );
        let held = PeerStatus {
            held_bytes: 4096,
            ..hb.clone()
        };
        assert!(!state_changed(&hb, &held), "nor the bytes held");
        let failed = PeerStatus {
            failures: 1,
            ..hb.clone()
        };
        assert!(state_changed(&hb, &failed), "a failure is");
        b.publish(hb);
        assert!(b.pending(false).0.is_empty(), "not by an urgent write");
        assert_eq!(b.pending(true).0.len(), 1, "but by the next volatile one");
        b.remove("a");
        let (ops, done) = b.pending(false);
        assert_eq!(ops, vec![WriteOp::delete(keys::peer_status("a"))]);
        b.written(done);
        assert!(b.pending(true).0.is_empty());
    }
}
