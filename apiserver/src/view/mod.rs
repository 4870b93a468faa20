//! The in-memory view of the store that every Watch, Lookup and Status is
//! served from. One etcd prefix watch feeds it (see `feed`); subscribers get a
//! snapshot or a replay from the history buffer, then live batches through a
//! bounded broadcast channel. A subscriber that falls more than the channel's
//! capacity behind is cut off with a resync instruction; it never slows the
//! feed or the other subscribers.

mod event;
pub mod feed;
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
use record::Record;

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
    /// `value` ends with a propagation stamp ([`stamp::STAMP_LEN`] bytes).
    pub stamped: bool,
}

/// The record the view keeps for `key`, and the propagation stamp its
/// value carries (a mirrored record's).
fn record(target: &Target, key: &str, value: &Bytes, mod_revision: i64) -> (Record, Option<i64>) {
    let exported = exported_flag(target, value);
    let at = match target.class {
        Class::PeerRecord => stamp::split(value).1,
        _ => None,
    };
    let record = Record::new(key, value, mod_revision, exported, at.is_some());
    (record, at)
}

impl Entry {
    fn of(r: &Record) -> Entry {
        Entry {
            value: r.value(),
            mod_revision: r.mod_revision(),
            exported: r.exported(),
            stamped: r.stamped(),
        }
    }

    /// What Watch serves: the origin's bytes, without a propagation stamp
    /// (it travels in `Event.origin_unix_micros`).
    pub fn served(&self) -> Bytes {
        let stamp = if self.stamped { stamp::STAMP_LEN } else { 0 };
        self.value.slice(..self.value.len() - stamp)
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

/// The records of `entries` whose keys start with `prefix`, in order.
fn under<'a>(entries: &'a Entries, prefix: &'a str) -> impl Iterator<Item = &'a Record> + 'a {
    entries
        .range::<_, [u8]>((Bound::Included(prefix.as_bytes()), Bound::Unbounded))
        .take_while(move |r| r.key_bytes().starts_with(prefix.as_bytes()))
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
    /// Node records applied (changed or deleted) so far: lets the ingest
    /// CIDR indexes skip a rebuild when no node changed.
    node_changes: u64,
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
                node_changes: 0,
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
            st.entries = kvs
                .into_iter()
                .map(|kv| {
                    let target = Target::of(&kv.key, &self.local);
                    count(&mut counts, &target, 1);
                    record(&target, &kv.key, &kv.value, kv.mod_revision).0
                })
                .collect();
            st.counts = counts;
            st.node_changes += 1;
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
            let same = st
                .entries
                .get(kv.key.as_bytes())
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
            let target = Target::of(&key, &self.local);
            if target.kind == Kind::Node {
                st.node_changes += 1;
            }
            let exported_before = st.entries.get(key.as_bytes()).is_some_and(Record::exported);
            let mut origin_micros = None;
            let (value, rev) = match change {
                Some((value, mod_rev)) => {
                    let (entry, mirrored_at) = record(&target, &key, &value, mod_rev);
                    origin_micros = match target.class {
                        Class::LocalRecord => Some(observed),
                        _ => mirrored_at,
                    };
                    if let Some(at) = mirrored_at {
                        stamps.push((target.cluster.clone(), at));
                    }
                    let served = entry.served();
                    if st.entries.insert(entry).is_none() {
                        count(&mut st.counts, &target, 1);
                    }
                    (Some(served), mod_rev)
                }
                None => {
                    if st.entries.remove(key.as_bytes()).is_none() {
                        continue;
                    }
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
        let events = entries
            .iter()
            .filter_map(|e| {
                let target = Target::of(&e.key_after(0), &self.local);
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
    pub fn node_changes(&self) -> u64 {
        self.lock().node_changes
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

    pub fn get(&self, key: &str) -> Option<Entry> {
        self.lock().entries.get(key.as_bytes()).map(Entry::of)
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
mod tests {
    use super::*;
    use clustermesh_proto::v1::Node;
    use prost::Message;

    fn node(name: &str, exported: bool) -> Bytes {
        Node {
            name: name.into(),
            cluster: "a".into(),
            exported,
            ..Default::default()
        }
        .encode_to_vec()
        .into()
    }

    fn kv(key: String, value: Bytes, rev: i64) -> Kv {
        Kv {
            key,
            value,
            mod_revision: rev,
        }
    }

    #[test]
    fn snapshot_then_resume() {
        let v = View::new(
            "a",
            ViewConfig {
                history_events: 3,
                subscriber_buffer: 16,
            },
        );
        v.load(
            "e1",
            10,
            vec![kv(keys::state(Kind::Node, "a", "n1"), node("n1", true), 5)],
        );
        let s = v.subscribe(Scope::Merged, &[], None);
        assert!(
            matches!(s.start, Start::Snapshot { ref events, reset: false, .. } if events.len() == 1)
        );
        v.apply(
            11,
            vec![(
                keys::state(Kind::Node, "a", "n2"),
                Some((node("n2", false), 11)),
            )],
        );
        v.apply(12, vec![(keys::state(Kind::Node, "a", "n1"), None)]);
        // resume from 10: replay both
        let s = v.subscribe(Scope::Merged, &[], Some(("e1", 10)));
        assert!(matches!(s.start, Start::Replay(ref b) if b.len() == 2));
        // foreign epoch: reset snapshot
        let s = v.subscribe(Scope::Exported, &[], Some(("other", 10)));
        match s.start {
            Start::Snapshot { events, reset, .. } => {
                assert!(reset);
                assert!(events.is_empty(), "n2 is not exported, n1 deleted");
            }
            _ => panic!("expected snapshot"),
        }
        // history trimmed past 10
        for r in 13..20 {
            v.apply(
                r,
                vec![(
                    keys::state(Kind::Node, "a", &format!("x{r}")),
                    Some((node("x", true), r)),
                )],
            );
        }
        let s = v.subscribe(Scope::Merged, &[], Some(("e1", 10)));
        assert!(matches!(s.start, Start::Snapshot { reset: true, .. }));
        // stale duplicate revision ignored
        v.apply(
            15,
            vec![(
                keys::state(Kind::Node, "a", "zz"),
                Some((node("zz", true), 15)),
            )],
        );
        assert!(v.get(&keys::state(Kind::Node, "a", "zz")).is_none());
    }

    #[test]
    fn relist_same_epoch_yields_diff() {
        let v = View::new("a", ViewConfig::default());
        let k1 = keys::state(Kind::Node, "a", "n1");
        let k2 = keys::state(Kind::Node, "a", "n2");
        v.load(
            "e",
            5,
            vec![
                kv(k1.clone(), node("n1", true), 3),
                kv(k2.clone(), node("n2", true), 4),
            ],
        );
        let mut s = v.subscribe(Scope::Merged, &[], None);
        v.load(
            "e",
            9,
            vec![
                kv(k1.clone(), node("n1", true), 3),
                kv(k2, node("n2-changed", true), 8),
            ],
        );
        let b = s.rx.try_recv().unwrap();
        assert_eq!(b.events.len(), 1, "only the changed record");
        assert!(!b.reset);
        v.load("e2", 3, vec![kv(k1, node("n1", true), 2)]);
        assert!(
            s.rx.try_recv().unwrap().reset,
            "new epoch resets subscribers"
        );
        assert_eq!(v.epoch(), "e2");
    }

    /// The counts Status serves, by scanning: what the kept counts must equal.
    fn scanned(v: &View) -> Vec<(String, i32, u64)> {
        let mut m: BTreeMap<(String, i32), u64> = BTreeMap::new();
        for (k, _) in v.entries(keys::PREFIX) {
            let t = Target::of(&k, "a");
            if t.is_record() {
                *m.entry((t.cluster, t.kind as i32)).or_default() += 1;
            }
        }
        m.into_iter().map(|((c, k), n)| (c, k, n)).collect()
    }

    fn kept(v: &View) -> Vec<(String, i32, u64)> {
        v.counts()
            .into_iter()
            .map(|c| (c.cluster, c.kind, c.count))
            .collect()
    }

    #[tokio::test]
    async fn a_listing_waits_for_the_revision_and_holds_what_the_store_did() {
        let v = Arc::new(View::new("a", ViewConfig::default()));
        let cache = |n: &str| keys::cache(Kind::Node, "b", n);
        let prefixes = [
            keys::cache_prefix(Kind::Node, "b"),
            keys::synced_prefix("b"),
        ];
        // Not loaded yet: no listing within the limit.
        assert!(
            v.listing_at(1, &prefixes, Duration::from_millis(60))
                .await
                .is_none()
        );
        v.load("e1", 10, vec![kv(cache("x"), node("x", true), 6)]);
        // Behind the asked revision: none; a later change brings it there,
        // and the waiting listing sees that change.
        let waiting = {
            let v = v.clone();
            let prefixes = prefixes.clone();
            tokio::spawn(async move { v.listing_at(12, &prefixes, Duration::from_secs(20)).await })
        };
        v.apply(
            12,
            vec![
                (cache("y"), Some((node("y", true), 12))),
                (keys::synced("b", Kind::Node), Some((Bytes::new(), 12))),
            ],
        );
        let lists = waiting.await.expect("task").expect("caught up");
        let keys: Vec<Vec<String>> = lists
            .iter()
            .map(|l| l.iter().map(|kv| kv.key.clone()).collect())
            .collect();
        assert_eq!(
            keys,
            vec![
                vec![cache("x"), cache("y")],
                vec![keys::synced("b", Kind::Node)]
            ]
        );
        assert_eq!(lists[0][1].mod_revision, 12);
        assert_eq!(lists[0][0].value, node("x", true));
    }

    #[test]
    fn kept_counts_equal_a_scan_through_loads_upserts_and_deletes() {
        let v = View::new("a", ViewConfig::default());
        let state = |n: &str| keys::state(Kind::Node, "a", n);
        let cache = |c: &str, n: &str| keys::cache(Kind::Node, c, n);
        v.load(
            "e1",
            10,
            vec![
                kv(state("n1"), node("n1", true), 5),
                kv(cache("b", "x"), node("x", true), 6),
                kv(keys::synced("a", Kind::Node), Bytes::new(), 7),
                // A state record of another cluster name is not served, not counted.
                kv(keys::state(Kind::Node, "zz", "n"), node("n", true), 8),
            ],
        );
        assert_eq!(kept(&v), scanned(&v));
        assert_eq!(
            kept(&v),
            vec![
                ("a".into(), Kind::Node as i32, 1),
                ("b".into(), Kind::Node as i32, 1)
            ]
        );
        let mut rev = 10;
        let mut step = |changes: Vec<(String, Option<(Bytes, i64)>)>| {
            rev += 1;
            v.apply(rev, changes);
            assert_eq!(kept(&v), scanned(&v), "after revision {rev}");
        };
        step(vec![(state("n2"), Some((node("n2", true), 11)))]);
        step(vec![(state("n2"), Some((node("n2", false), 12)))]); // update: same count
        step(vec![
            (cache("b", "y"), Some((node("y", true), 13))),
            (cache("c", "z"), Some((node("z", true), 13))),
        ]);
        step(vec![(cache("b", "x"), None), (cache("b", "x"), None)]); // twice: once counted
        step(vec![(cache("c", "z"), None)]); // the last of c's: c is gone
        step(vec![(keys::synced("a", Kind::Node), None)]);
        assert_eq!(
            kept(&v),
            vec![
                ("a".into(), Kind::Node as i32, 2),
                ("b".into(), Kind::Node as i32, 1)
            ]
        );
        // A same-epoch relist turned into differences keeps them too.
        v.load("e1", 20, vec![kv(state("n1"), node("n1", true), 5)]);
        assert_eq!(kept(&v), scanned(&v));
        assert_eq!(kept(&v), vec![("a".into(), Kind::Node as i32, 1)]);
    }
}
