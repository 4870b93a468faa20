//! The in-memory view of the store that every Watch, Lookup and Status is
//! served from. One etcd prefix watch feeds it (see `feed`); subscribers get a
//! snapshot or a replay from the history buffer, then live batches through a
//! bounded broadcast channel. A subscriber that falls more than the channel's
//! capacity behind is cut off with a resync instruction; it never slows the
//! feed or the other subscribers.

mod event;
pub mod feed;
mod node_cidrs;
mod record;
#[cfg(test)]
mod stamp_tests;

pub use event::{Class, Target, ViewEvent, exported_flag};

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use clustermesh_proto::attest::{self, Tally};
use clustermesh_proto::v1::{Event, Kind, RecordCount, Scope, SyncedMarker};
use clustermesh_proto::{keys, stamp};
use prost::Message;
use tokio::sync::broadcast;

use crate::store::Kv;
use record::{Record, stored};

pub use node_cidrs::NodeCidrs;

/// A group of changes that share one etcd watch response, in revision order.
#[derive(Debug)]
pub struct Batch {
    /// The highest revision in the batch.
    pub revision: i64,
    pub events: Vec<ViewEvent>,
    /// The store was replaced (new epoch): every subscriber must resync.
    pub reset: bool,
}

/// One key as the view serves it to its in-process readers (kept as a
/// [`Record`]; this is a copy of its fields that shares the value).
#[derive(Debug, Clone)]
pub struct Entry {
    /// The stored bytes (a mirrored record with its propagation stamp).
    pub value: Bytes,
    pub mod_revision: i64,
    pub exported: bool,
}

/// The record the view keeps for `key`, and the propagation stamp its
/// value carries (a mirrored record's). `None` outside [`keys::PREFIX`].
fn record(
    target: &Target,
    key: &str,
    value: &Bytes,
    mod_revision: i64,
) -> Option<(Record, Option<i64>)> {
    let exported = exported_flag(target, value);
    let at = match target.class {
        Class::PeerRecord => stamp::split(value).1,
        _ => None,
    };
    let record = Record::new(key, value, mod_revision, exported, at.is_some())?;
    Some((record, at))
}

impl Entry {
    fn of(r: &Record) -> Entry {
        Entry {
            value: r.value(),
            mod_revision: r.mod_revision(),
            exported: r.exported(),
        }
    }
}

/// Tunables.
#[derive(Debug, Clone, Copy)]
pub struct ViewConfig {
    /// Events kept for resume.
    pub history_events: usize,
    /// Batches a subscriber may fall behind before it is cut off.
    pub subscriber_buffer: usize,
}

impl Default for ViewConfig {
    fn default() -> Self {
        ViewConfig {
            history_events: 50_000,
            subscriber_buffer: 4096,
        }
    }
}

/// Every key of the view, ordered.
type Entries = imbl::OrdSet<Record>;

/// The records of `entries` whose full keys start with `prefix`, in order.
fn under<'a>(entries: &'a Entries, prefix: &'a str) -> impl Iterator<Item = &'a Record> + 'a {
    // A prefix of the view's own prefix covers every key; any other prefix
    // outside it, none.
    let (from, none): (&[u8], bool) = match stored(prefix) {
        Some(p) => (p, false),
        None => (b"", !keys::PREFIX.starts_with(prefix)),
    };
    entries
        .range::<_, [u8]>((Bound::Included(from), Bound::Unbounded))
        .take_while(move |r| !none && r.key_bytes().starts_with(from))
}

struct State {
    epoch: String,
    revision: i64,
    /// A persistent map: a new subscription clones it in O(1) under the
    /// lock and builds its snapshot from the clone without holding it.
    entries: Entries,
    /// Records per (cluster, kind) among `entries`, kept with every change
    /// so that Status and `/metrics` never scan the view under its lock.
    counts: BTreeMap<(String, i32), u64>,
    history: VecDeque<Arc<Batch>>,
    history_events: usize,
    /// Resume is possible from any revision >= this (all later batches are in `history`).
    resumable_from: i64,
    ready: bool,
    /// The pod CIDRs of the Node records among `entries`, indexed.
    node_cidrs: NodeCidrs,
}

/// How a new subscription starts.
pub enum Start {
    /// A full snapshot at `revision`; `reset` when the client asked to resume and could not.
    Snapshot {
        events: Vec<Event>,
        reset: bool,
        reason: String,
    },
    /// The batches after the client's resume revision.
    Replay(Vec<Arc<Batch>>),
}

pub struct Subscription {
    pub epoch: String,
    pub revision: i64,
    pub start: Start,
    pub rx: broadcast::Receiver<Arc<Batch>>,
}

/// Adds `by` to the count of `target`'s (cluster, kind) when it is a record.
fn count(counts: &mut BTreeMap<(String, i32), u64>, target: &Target, by: i64) {
    if !target.is_record() {
        return;
    }
    let k = (target.cluster.clone(), target.kind as i32);
    let n = counts
        .get(&k)
        .copied()
        .unwrap_or(0)
        .saturating_add_signed(by);
    if n == 0 {
        counts.remove(&k);
    } else {
        counts.insert(k, n);
    }
}

pub struct View {
    local: String,
    config: ViewConfig,
    state: Mutex<State>,
    tx: broadcast::Sender<Arc<Batch>>,
    watchers: AtomicUsize,
    feed_error: Mutex<Option<String>>,
}

impl View {
    pub fn new(local_cluster: &str, config: ViewConfig) -> Arc<View> {
        let (tx, _) = broadcast::channel(config.subscriber_buffer.max(1));
        Arc::new(View {
            local: local_cluster.to_owned(),
            config,
            state: Mutex::new(State {
                epoch: String::new(),
                revision: 0,
                entries: Entries::new(),
                counts: BTreeMap::new(),
                history: VecDeque::new(),
                history_events: 0,
                node_cidrs: NodeCidrs::default(),
                resumable_from: i64::MAX,
                ready: false,
            }),
            tx,
            watchers: AtomicUsize::new(0),
            feed_error: Mutex::new(None),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every
        // mutation below is completed before unlocking), so recover.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn local_cluster(&self) -> &str {
        &self.local
    }

    /// Loads a full listing. The first load (or one with a new epoch) replaces
    /// everything and tells subscribers to resync; a relist of the same epoch
    /// (after a compaction) is turned into one batch of the differences.
    pub fn load(&self, epoch: &str, revision: i64, kvs: Vec<Kv>) {
        let mut st = self.lock();
        if !st.ready || st.epoch != epoch {
            let had_subscribers = st.ready;
            let mut counts = BTreeMap::new();
            let mut cidrs = NodeCidrs::default();
            st.entries = kvs
                .into_iter()
                .filter_map(|kv| {
                    let target = Target::of(&kv.key, &self.local);
                    let (r, _) = record(&target, &kv.key, &kv.value, kv.mod_revision)?;
                    count(&mut counts, &target, 1);
                    cidrs.change(&target, None, Some(&kv.value));
                    Some(r)
                })
                .collect();
            st.counts = counts;
            st.node_cidrs = cidrs;
            st.epoch = epoch.to_owned();
            st.revision = revision;
            st.history.clear();
            st.history_events = 0;
            st.resumable_from = revision;
            st.ready = true;
            if had_subscribers {
                let _ = self.tx.send(Arc::new(Batch {
                    revision,
                    events: Vec::new(),
                    reset: true,
                }));
            }
            return;
        }
        // Same epoch: diff.
        let mut changes: Vec<(String, Option<(Bytes, i64)>)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for kv in kvs {
            seen.insert(kv.key.clone());
            let same = stored(&kv.key)
                .and_then(|k| st.entries.get(k))
                .is_some_and(|r| r.value_bytes() == &kv.value[..]);
            if !same {
                changes.push((kv.key, Some((kv.value, kv.mod_revision))));
            }
        }
        for r in st.entries.iter() {
            let k = r.key();
            if !seen.contains(&k) {
                changes.push((k, None));
            }
        }
        self.apply_locked(&mut st, revision, changes);
    }

    /// Applies one watch response's changes (key, Some((value, mod_revision))
    /// or None for delete). Returns the propagation stamps of the mirrored
    /// records it now serves: (origin cluster, origin µs).
    pub fn apply(
        &self,
        revision: i64,
        changes: Vec<(String, Option<(Bytes, i64)>)>,
    ) -> Vec<(String, i64)> {
        let mut st = self.lock();
        self.apply_locked(&mut st, revision, changes)
    }

    /// Count and digest ([`attest`]) of the records of `kind` this cluster
    /// exports: what a peer's mirror holds at this revision.
    fn exported_tally(&self, entries: &Entries, kind: Kind) -> Tally {
        let prefix = keys::state_prefix(kind, &self.local);
        let mut t = Tally::default();
        for r in under(entries, &prefix) {
            if r.exported() {
                t.add(attest::record_hash(
                    &r.key_after(prefix.len()),
                    r.value_bytes(),
                ));
            }
        }
        t
    }

    /// This cluster's marker of `kind` as Watch serves it: with the count and
    /// digest of what is exported now (docs/mesh.md "Attested sync").
    fn attested_marker(&self, entries: &Entries, kind: Kind, stored: &[u8]) -> Bytes {
        let mut m = SyncedMarker::decode(stored).unwrap_or_else(|_| SyncedMarker {
            cluster: self.local.clone(),
            kind: kind as i32,
            ..Default::default()
        });
        let t = self.exported_tally(entries, kind);
        m.records = t.records;
        m.digest = Some(t.digest);
        m.encode_to_vec().into()
    }

    fn apply_locked(
        &self,
        st: &mut State,
        revision: i64,
        changes: Vec<(String, Option<(Bytes, i64)>)>,
    ) -> Vec<(String, i64)> {
        let mut stamps = Vec::new();
        if revision <= st.revision {
            return stamps; // already applied (a watch resumed from an older revision)
        }
        let observed = stamp::now_micros();
        let mut events = Vec::with_capacity(changes.len());
        for (key, change) in changes {
            // The feed watches only the prefix.
            let Some(stored_key) = stored(&key) else {
                continue;
            };
            let target = Target::of(&key, &self.local);
            // The record this change replaces, for the CIDR index of nodes.
            let old_node = match target.kind {
                Kind::Node => st.entries.get(stored_key).cloned(),
                _ => None,
            };
            let exported_before = st.entries.get(stored_key).is_some_and(Record::exported);
            let mut origin_micros = None;
            let (value, rev) = match change {
                Some((value, mod_rev)) => {
                    let Some((entry, mirrored_at)) = record(&target, &key, &value, mod_rev) else {
                        continue;
                    };
                    origin_micros = match target.class {
                        Class::LocalRecord => Some(observed),
                        _ => mirrored_at,
                    };
                    if let Some(at) = mirrored_at {
                        stamps.push((target.cluster.clone(), at));
                    }
                    let served = entry.served();
                    st.node_cidrs.change(
                        &target,
                        old_node.as_ref().map(Record::value_bytes),
                        Some(&value[..]),
                    );
                    if st.entries.insert(entry).is_none() {
                        count(&mut st.counts, &target, 1);
                    }
                    (Some(served), mod_rev)
                }
                None => {
                    if st.entries.remove(stored_key).is_none() {
                        continue;
                    }
                    st.node_cidrs
                        .change(&target, old_node.as_ref().map(Record::value_bytes), None);
                    count(&mut st.counts, &target, -1);
                    (None, revision)
                }
            };
            let exported_now = value.as_ref().is_some_and(|v| exported_flag(&target, v));
            // Served with what is exported at this point of the batch.
            let value = match (target.class, value) {
                (Class::LocalSynced, Some(v)) => {
                    Some(self.attested_marker(&st.entries, target.kind, &v))
                }
                (_, v) => v,
            };
            events.push(ViewEvent {
                target,
                value,
                revision: rev,
                exported_before,
                exported_now,
                origin_micros,
            });
        }
        st.revision = revision;
        let batch = Arc::new(Batch {
            revision,
            events,
            reset: false,
        });
        st.history_events += batch.events.len();
        st.history.push_back(batch.clone());
        while st.history_events > self.config.history_events {
            match st.history.pop_front() {
                Some(old) => {
                    st.history_events -= old.events.len();
                    st.resumable_from = old.revision;
                }
                None => break,
            }
        }
        // No receivers is fine.
        let _ = self.tx.send(batch);
        stamps
    }

    /// Starts a subscription: snapshot or replay, and a receiver for what
    /// follows, taken atomically so nothing is missed or duplicated.
    pub fn subscribe(
        &self,
        scope: Scope,
        kinds: &[Kind],
        resume: Option<(&str, i64)>,
    ) -> Subscription {
        let st = self.lock();
        let rx = self.tx.subscribe();
        let mut reason = String::new();
        if let Some((epoch, rev)) = resume {
            if epoch == st.epoch && rev >= st.resumable_from && rev <= st.revision {
                let replay = st
                    .history
                    .iter()
                    .filter(|b| b.revision > rev)
                    .cloned()
                    .collect();
                return Subscription {
                    epoch: st.epoch.clone(),
                    revision: st.revision,
                    start: Start::Replay(replay),
                    rx,
                };
            }
            reason = if epoch != st.epoch {
                format!("store epoch changed ({epoch} -> {})", st.epoch)
            } else if rev > st.revision {
                format!("revision {rev} is ahead of this replica ({})", st.revision)
            } else {
                format!(
                    "revision {rev} is older than the resume buffer (from {})",
                    st.resumable_from
                )
            };
        }
        // O(1) under the lock; the snapshot is built without it, so a new
        // Watch of a large store never stalls the feed or the other streams.
        let entries = st.entries.clone();
        let (epoch, revision) = (st.epoch.clone(), st.revision);
        drop(st);
        let mut full_key = String::new();
        let events = entries
            .iter()
            .filter_map(|e| {
                e.write_key(&mut full_key);
                let target = Target::of(&full_key, &self.local);
                // Peers check the attestation; agents (merged) do not, and a
                // mass reconnect of agents should not hash the cluster each.
                let value = match (target.class, scope) {
                    (Class::LocalSynced, Scope::Exported) => {
                        self.attested_marker(&entries, target.kind, e.value_bytes())
                    }
                    _ => e.served(),
                };
                let ev = ViewEvent {
                    target,
                    value: Some(value),
                    revision: e.mod_revision(),
                    exported_before: false,
                    exported_now: e.exported(),
                    origin_micros: None,
                };
                ev.to_wire(scope, kinds)
            })
            .collect();
        Subscription {
            epoch,
            revision,
            start: Start::Snapshot {
                events,
                reset: resume.is_some(),
                reason,
            },
            rx,
        }
    }

    /// Every batch applied from now on (no snapshot): for in-process
    /// consumers that re-read the view when something changed (the mesh
    /// syncer watching `peers/`). Lagging is harmless for them: re-read.
    pub fn changes(&self) -> broadcast::Receiver<Arc<Batch>> {
        self.tx.subscribe()
    }

    pub fn epoch(&self) -> String {
        self.lock().epoch.clone()
    }
    pub fn revision(&self) -> i64 {
        self.lock().revision
    }
    pub fn ready(&self) -> bool {
        self.lock().ready
    }
    /// How many node records have changed since start (a change counter).
    /// The pod CIDRs of the Node records served now (O(1): copies of
    /// persistent indexes).
    pub fn node_cidrs(&self) -> NodeCidrs {
        self.lock().node_cidrs.clone()
    }

    /// Every entry under a full-key prefix. The lock is held only for an
    /// O(1) copy of the persistent map; the walk runs outside it, so a
    /// large prefix (every peer's nodes, every service) does not hold up
    /// the feed and the Watch streams.
    pub fn entries(&self, prefix: &str) -> Vec<(String, Entry)> {
        let entries = self.lock().entries.clone();
        under(&entries, prefix)
            .map(|r| (r.key(), Entry::of(r)))
            .collect()
    }

    /// What Watch serves of `key` (its value without a propagation stamp).
    #[cfg(test)]
    pub(crate) fn served(&self, key: &str) -> Option<Bytes> {
        let k = stored(key)?;
        self.lock().entries.get(k).map(Record::served)
    }

    pub fn get(&self, key: &str) -> Option<Entry> {
        let k = stored(key)?;
        self.lock().entries.get(k).map(Entry::of)
    }

    /// Every key under each of `prefixes`, as the store holds them, once the
    /// view has applied `revision` (a store revision read by the caller):
    /// then it holds everything the store held at that revision. `None` if
    /// it has not within `limit` (the view is still loading, or the store's
    /// newest write was outside the view's prefix, which only a shared etcd
    /// has): read the store instead.
    pub async fn listing_at(
        &self,
        revision: i64,
        prefixes: &[String],
        limit: std::time::Duration,
    ) -> Option<Vec<Vec<Kv>>> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut changes = self.tx.subscribe();
        loop {
            {
                let st = self.lock();
                if st.ready && st.revision >= revision {
                    return Some(
                        prefixes
                            .iter()
                            .map(|p| {
                                under(&st.entries, p)
                                    .map(|r| Kv {
                                        key: r.key(),
                                        value: r.value(),
                                        mod_revision: r.mod_revision(),
                                    })
                                    .collect()
                            })
                            .collect(),
                    );
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            // A first load is not broadcast: wake at least every 50 ms.
            let _ = tokio::time::timeout(Duration::from_millis(50), changes.recv()).await;
        }
    }

    /// Record counts per (cluster, kind), local and cached.
    pub fn counts(&self) -> Vec<RecordCount> {
        self.lock()
            .counts
            .iter()
            .map(|((cluster, kind), count)| RecordCount {
                cluster: cluster.clone(),
                kind: *kind,
                count: *count,
            })
            .collect()
    }

    /// Kinds this cluster has marked synced.
    pub fn synced_kinds(&self, cluster: &str) -> Vec<Kind> {
        let prefix = keys::synced_prefix(cluster);
        self.entries(&prefix)
            .into_iter()
            .filter_map(|(k, _)| match keys::parse(&k) {
                keys::StoreKey::Synced { kind, .. } => Some(kind),
                _ => None,
            })
            .collect()
    }

    pub fn watcher_guard(self: &Arc<Self>) -> WatcherGuard {
        self.watchers.fetch_add(1, Ordering::Relaxed);
        WatcherGuard(self.clone())
    }
    pub fn watchers(&self) -> usize {
        self.watchers.load(Ordering::Relaxed)
    }

    pub fn set_feed_error(&self, err: Option<String>) {
        *self.feed_error.lock().unwrap_or_else(|p| p.into_inner()) = err;
    }
    pub fn feed_error(&self) -> Option<String> {
        self.feed_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Counts a live Watch stream while held.
pub struct WatcherGuard(Arc<View>);
impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
