//! The client side of Watch: applies batches to a local copy, with
//! mark-and-sweep on snapshots, and reports the resulting changes so a
//! consumer (the mesh syncer, the node agent) can act on exactly the
//! differences. A re-snapshot of unchanged data yields no change at all.
//!
//! A snapshot is staged to its end, then marked and swept; a consumer may
//! ask for a snapshot into an empty table (its first) to be applied batch by
//! batch instead ([`Mirror::streaming_into_empty`]): then every record is an
//! upsert and nothing can be swept, so nothing needs staging.
//!
//! What the copy keeps per record is the mirror's [`Table`]: every value
//! ([`Values`], [`Mirror::new`]) or a digest ([`Digests`],
//! [`DigestMirror::compact`]).

mod digests;
mod table;

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use prost::Message;

pub use self::digests::{Digest, Digests};
pub use self::table::{Table, Values};
use crate::attest::Tally;
use crate::v1::{BatchType, Event, EventType, Kind, ResumePoint, SyncedMarker, WatchBatch};

/// (kind, cluster, key) of one record.
pub type RecordId = (Kind, String, String);

/// What is staged while a snapshot arrives.
#[derive(Debug, Default, Clone)]
struct Staging {
    /// The records of a snapshot that replaces a table holding something,
    /// kept to its end (mark and sweep then). `None`: the table was empty
    /// when the snapshot began, so each record is an upsert and nothing can
    /// be swept; every batch's records go in and are reported at once, and
    /// no copy of the whole snapshot is held (at an agent's first snapshot
    /// of 250,000 endpoints that copy, with the receive buffers its values
    /// pinned, was the process's peak; docs/benchmarks.md).
    records: Option<BTreeMap<RecordId, Bytes>>,
    synced: BTreeSet<(String, Kind)>,
}

/// A synced marker that attests its kind's content (it has a digest), and
/// what the mirror held of that kind and cluster when the marker arrived
/// (live), or at the end of the snapshot that carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    pub cluster: String,
    pub kind: Kind,
    pub marker: Tally,
    pub mirrored: Tally,
}

/// The count and digest a marker's bytes attest, if they carry a digest
/// (a marker of an older peer has none).
pub fn marker_tally(value: &[u8]) -> Option<Tally> {
    let m = SyncedMarker::decode(value).ok()?;
    Some(Tally {
        records: m.records,
        digest: m.digest?,
    })
}

/// A change to the mirrored set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Upsert { id: RecordId, value: Bytes },
    Delete { id: RecordId },
    Synced { cluster: String, kind: Kind },
    Unsynced { cluster: String, kind: Kind },
}

/// What one batch did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    pub changes: Vec<Change>,
    /// A snapshot completed (its mark-and-sweep is in `changes`; one
    /// streamed into an empty table reported its upserts batch by batch).
    pub snapshot_done: bool,
    /// The server asked for a resync (the stream ends after this).
    pub resync: Option<String>,
    /// Markers with a digest, in order, with what was mirrored.
    pub attested: Vec<Attested>,
}

/// A mirrored copy of what a Watch stream delivered.
#[derive(Debug, Default, Clone)]
pub struct Mirror<T: Table = Values> {
    pub epoch: String,
    pub revision: i64,
    pub records: T,
    pub synced: BTreeSet<(String, Kind)>,
    staging: Option<Staging>,
    /// Markers with a digest staged while a snapshot arrives.
    staged_markers: Vec<(String, Kind, Tally)>,
    /// Snapshots received (for tests and metrics).
    pub snapshots: u64,
    /// Snapshots that were resets (a resume that could not continue).
    pub resets: u64,
    /// Live events applied since the table was last repacked.
    live_events: usize,
    /// A snapshot into an empty table is applied batch by batch
    /// ([`Mirror::streaming_into_empty`]).
    stream_into_empty: bool,
}

/// Fewest live changes worth a repack ([`worth_repacking`]).
pub const REPACK_MIN_CHANGES: usize = 10_000;

/// Whether `applied` live changes since the last repack of a table of
/// `records` are worth repacking it (and, for a process, trimming its heap).
/// A table that fills through live changes, not one snapshot (an agent that
/// was running while the peers came), keeps the half-full nodes of inserts
/// in key order: 492 B per remote endpoint in the agent, against 382 B
/// after a snapshot (docs/benchmarks.md). A repack is O(records), so it
/// waits for half as many changes: O(1) per change, amortized.
pub fn worth_repacking(applied: usize, records: usize) -> bool {
    applied >= REPACK_MIN_CHANGES && applied >= records / 2
}

/// Rebuilds `map` from its sorted entries. A `BTreeMap` filled in key
/// order (a snapshot, a seed from the store) splits every full node in the
/// middle and leaves its nodes a little over half full; built from sorted
/// entries (`collect` bulk-builds them) they are full. O(entries): after a
/// bulk fill, or when [`worth_repacking`] says so.
pub fn repack_map<K: Ord, V>(map: &mut std::collections::BTreeMap<K, V>) {
    *map = std::mem::take(map).into_iter().collect();
}

/// A mirror that keeps a digest per record ([`Digests`]).
pub type DigestMirror = Mirror<Digests>;

/// Puts `e` into `records` and reports it, unless the same value is held.
fn upsert<T: Table>(records: &mut T, e: &Event, changes: &mut Vec<Change>) {
    let id = id_of(e);
    let kept = T::kept(&e.value);
    if records.get_kept(&id) != Some(&kept) {
        records.put(id.clone(), kept);
        changes.push(Change::Upsert {
            id,
            value: e.value.clone(),
        });
    }
}

fn id_of(e: &Event) -> RecordId {
    (
        Kind::try_from(e.kind).unwrap_or(Kind::Unspecified),
        e.cluster.clone(),
        e.key.clone(),
    )
}

impl Mirror<Values> {
    /// A mirror that keeps every value.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Mirror<Digests> {
    /// A mirror that keeps only a 128-bit digest of each record's value: for
    /// consumers that act on the reported changes (which still carry the full
    /// values) and need the mirror only to tell what changed.
    pub fn compact() -> Self {
        Self::default()
    }
}

impl<T: Table> Mirror<T> {
    /// Applies a snapshot that arrives into an empty table (the first one,
    /// or the first after the table was emptied) batch by batch: each
    /// batch's upserts are reported with it, and no copy of the snapshot
    /// is staged. A consumer that acts on each outcome as it comes (the
    /// node agent, which programs nothing before `snapshot_done`) holds
    /// one message at a time instead of the whole snapshot. A snapshot
    /// into a table that holds records is staged and swept either way.
    pub fn streaming_into_empty(mut self) -> Self {
        self.stream_into_empty = true;
        self
    }

    /// Seeds one record (e.g. from a store) as if a snapshot had delivered it.
    pub fn seed(&mut self, id: RecordId, value: &Bytes) {
        self.records.put(id, T::kept(value));
    }

    /// Count and digest ([`crate::attest`]) of what the mirror holds of
    /// `kind` from `cluster`.
    pub fn tally(&self, cluster: &str, kind: Kind) -> Tally {
        self.records.tally(cluster, kind)
    }

    fn attest(&self, cluster: &str, kind: Kind, marker: Tally) -> Attested {
        Attested {
            cluster: cluster.to_owned(),
            kind,
            marker,
            mirrored: self.tally(cluster, kind),
        }
    }

    /// Where to resume from, once something has been received.
    pub fn resume_point(&self) -> Option<ResumePoint> {
        (!self.epoch.is_empty() && self.staging.is_none()).then(|| ResumePoint {
            epoch: self.epoch.clone(),
            revision: self.revision,
        })
    }

    /// True while a snapshot is being received.
    pub fn in_snapshot(&self) -> bool {
        self.staging.is_some()
    }

    /// Applies one batch.
    pub fn apply(&mut self, b: &WatchBatch) -> Outcome {
        let mut out = Outcome::default();
        match BatchType::try_from(b.r#type).unwrap_or(BatchType::Unspecified) {
            BatchType::SnapshotBegin => {
                // A snapshot that follows an unfinished one (the stream broke)
                // finds the records that one streamed in: it stages.
                let stream = self.stream_into_empty && self.records.is_empty();
                self.staging = Some(Staging {
                    records: (!stream).then(BTreeMap::new),
                    synced: BTreeSet::new(),
                });
                self.staged_markers.clear();
                self.snapshots += 1;
                if b.reset {
                    self.resets += 1;
                }
                self.epoch = b.epoch.clone();
            }
            BatchType::Snapshot => {
                if let Some(Staging { records, synced }) = self.staging.as_mut() {
                    for e in &b.events {
                        match EventType::try_from(e.r#type) {
                            Ok(EventType::Upsert) => match records.as_mut() {
                                Some(recs) => {
                                    recs.insert(id_of(e), e.value.clone());
                                }
                                None => upsert(&mut self.records, e, &mut out.changes),
                            },
                            Ok(EventType::Synced) => {
                                let kind = Kind::try_from(e.kind).unwrap_or(Kind::Unspecified);
                                synced.insert((e.cluster.clone(), kind));
                                if let Some(t) = marker_tally(&e.value) {
                                    self.staged_markers.push((e.cluster.clone(), kind, t));
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            BatchType::SnapshotEnd => {
                if let Some(Staging { records, synced }) = self.staging.take() {
                    // Mark and sweep: what the snapshot brought is taken
                    // out of the old table; what is left there is gone.
                    // (Streamed into an empty table: already in.)
                    if let Some(recs) = records {
                        let mut old = std::mem::take(&mut self.records);
                        for (id, v) in recs {
                            let kept = T::kept(&v);
                            if old.take(&id).as_ref() != Some(&kept) {
                                out.changes.push(Change::Upsert {
                                    id: id.clone(),
                                    value: v,
                                });
                            }
                            self.records.put(id, kept);
                        }
                        for id in old.into_ids() {
                            out.changes.push(Change::Delete { id });
                        }
                    }
                    self.records.repack();
                    self.live_events = 0;
                    for (c, k) in synced.difference(&self.synced) {
                        out.changes.push(Change::Synced {
                            cluster: c.clone(),
                            kind: *k,
                        });
                    }
                    for (c, k) in self.synced.difference(&synced) {
                        out.changes.push(Change::Unsynced {
                            cluster: c.clone(),
                            kind: *k,
                        });
                    }
                    self.synced = synced;
                    self.revision = b.revision;
                    out.snapshot_done = true;
                    for (c, k, t) in std::mem::take(&mut self.staged_markers) {
                        out.attested.push(self.attest(&c, k, t));
                    }
                }
            }
            BatchType::Events => {
                for e in &b.events {
                    let kind = Kind::try_from(e.kind).unwrap_or(Kind::Unspecified);
                    match EventType::try_from(e.r#type) {
                        Ok(EventType::Upsert) => upsert(&mut self.records, e, &mut out.changes),
                        Ok(EventType::Delete) => {
                            let id = id_of(e);
                            if self.records.take(&id).is_some() {
                                out.changes.push(Change::Delete { id });
                            }
                        }
                        Ok(EventType::Synced) => {
                            if let Some(t) = marker_tally(&e.value) {
                                out.attested.push(self.attest(&e.cluster, kind, t));
                            }
                            if self.synced.insert((e.cluster.clone(), kind)) {
                                out.changes.push(Change::Synced {
                                    cluster: e.cluster.clone(),
                                    kind,
                                });
                            }
                        }
                        Ok(EventType::Unsynced)
                            if self.synced.remove(&(e.cluster.clone(), kind)) =>
                        {
                            out.changes.push(Change::Unsynced {
                                cluster: e.cluster.clone(),
                                kind,
                            });
                        }
                        _ => {}
                    }
                }
                self.live_events += b.events.len();
                if worth_repacking(self.live_events, self.records.len()) {
                    self.records.repack();
                    self.live_events = 0;
                }
                self.revision = self.revision.max(b.revision);
            }
            BatchType::Heartbeat => {
                if self.staging.is_none() && b.epoch == self.epoch {
                    self.revision = self.revision.max(b.revision);
                }
            }
            BatchType::Resync => out.resync = Some(b.reason.clone()),
            BatchType::Unspecified => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: EventType, key: &str, v: &str) -> Event {
        Event {
            r#type: t as i32,
            kind: Kind::Node as i32,
            cluster: "a".into(),
            key: key.into(),
            value: Bytes::from(v.to_owned()),
            revision: 0,
            origin_unix_micros: None,
        }
    }
    fn b(t: BatchType, rev: i64, events: Vec<Event>) -> WatchBatch {
        WatchBatch {
            r#type: t as i32,
            epoch: "e".into(),
            revision: rev,
            events,
            ..Default::default()
        }
    }

    #[test]
    fn a_repack_waits_for_enough_changes() {
        assert!(!worth_repacking(9_999, 0), "too few to matter");
        assert!(worth_repacking(10_000, 0));
        assert!(worth_repacking(10_000, 20_000));
        assert!(!worth_repacking(10_000, 300_000), "half the table first");
        assert!(worth_repacking(150_000, 300_000));
    }

    /// A table filled by live events is repacked along the way and keeps
    /// every record, and tells changes apart as before.
    #[test]
    fn live_events_past_the_repack_threshold_lose_nothing() {
        let mut m = DigestMirror::compact();
        let mut rev = 1;
        for chunk in 0..25 {
            rev += 1;
            let events = (0..1_000)
                .map(|i| ev(EventType::Upsert, &format!("k{chunk}-{i}"), "v"))
                .collect();
            m.apply(&b(BatchType::Events, rev, events));
        }
        assert_eq!(m.records.len(), 25_000);
        assert!(m.live_events < REPACK_MIN_CHANGES, "repacked on the way");
        let o = m.apply(&b(
            BatchType::Events,
            rev + 1,
            vec![
                ev(EventType::Upsert, "k3-7", "v"),
                ev(EventType::Upsert, "k3-8", "w"),
                ev(EventType::Delete, "k24-999", ""),
            ],
        ));
        assert_eq!(o.changes.len(), 2, "the unchanged record is no change");
        assert_eq!(m.records.len(), 24_999);
    }

    #[test]
    fn snapshot_mark_and_sweep() {
        mark_and_sweep(Mirror::new());
        mark_and_sweep(DigestMirror::compact());
        mark_and_sweep(DigestMirror::compact().streaming_into_empty());
    }

    #[test]
    fn compact_keeps_digests_but_reports_values() {
        let mut m = DigestMirror::compact();
        m.seed(
            (Kind::Node, "a".into(), "x".into()),
            &Bytes::from_static(b"1"),
        );
        m.apply(&b(BatchType::SnapshotBegin, 5, vec![]));
        m.apply(&b(
            BatchType::Snapshot,
            5,
            vec![
                ev(EventType::Upsert, "x", "1"),
                ev(EventType::Upsert, "y", "2"),
            ],
        ));
        let o = m.apply(&b(BatchType::SnapshotEnd, 5, vec![]));
        assert_eq!(
            o.changes,
            vec![Change::Upsert {
                id: (Kind::Node, "a".into(), "y".into()),
                value: Bytes::from_static(b"2")
            }]
        );
        assert_eq!(
            m.records.get(Kind::Node, "a", "y"),
            Some(&crate::attest::value_digest(b"2")),
            "digests, not values"
        );
        let o = m.apply(&b(
            BatchType::Events,
            6,
            vec![ev(EventType::Upsert, "x", "3")],
        ));
        assert_eq!(o.changes.len(), 1, "a changed value is a change");
    }

    fn mark_and_sweep<T: Table>(mut m: Mirror<T>) {
        let streams = m.stream_into_empty;
        m.apply(&b(BatchType::SnapshotBegin, 5, vec![]));
        let o = m.apply(&b(
            BatchType::Snapshot,
            5,
            vec![
                ev(EventType::Upsert, "x", "1"),
                ev(EventType::Upsert, "y", "1"),
                ev(EventType::Upsert, "y", "1"),
            ],
        ));
        // Streamed into an empty table: each batch's upserts come with it.
        assert_eq!(o.changes.len(), if streams { 2 } else { 0 });
        assert!(!o.snapshot_done);
        assert!(m.resume_point().is_none(), "no resume mid-snapshot");
        let o = m.apply(&b(BatchType::SnapshotEnd, 5, vec![]));
        assert!(o.snapshot_done);
        assert_eq!(
            o.changes.len(),
            if streams { 0 } else { 2 },
            "a repeated record is one upsert"
        );
        assert_eq!(
            m.resume_point(),
            Some(ResumePoint {
                epoch: "e".into(),
                revision: 5
            })
        );
        // Re-snapshot: x unchanged, y gone, z new → exactly those changes.
        m.apply(&b(BatchType::SnapshotBegin, 9, vec![]));
        m.apply(&b(
            BatchType::Snapshot,
            9,
            vec![
                ev(EventType::Upsert, "x", "1"),
                ev(EventType::Upsert, "z", "1"),
            ],
        ));
        let o = m.apply(&b(BatchType::SnapshotEnd, 9, vec![]));
        assert_eq!(o.changes.len(), 2, "{:?}", o.changes);
        assert!(o.changes.contains(&Change::Delete {
            id: (Kind::Node, "a".into(), "y".into())
        }));
        // Events
        let o = m.apply(&b(
            BatchType::Events,
            10,
            vec![
                ev(EventType::Upsert, "x", "1"),
                ev(EventType::Delete, "z", ""),
            ],
        ));
        assert_eq!(o.changes.len(), 1, "unchanged upsert is not a change");
        assert_eq!(m.revision, 10);
        assert_eq!(
            m.apply(&b(BatchType::Resync, 10, vec![])).resync,
            Some(String::new())
        );
    }

    #[test]
    fn a_snapshot_after_a_broken_first_one_sweeps_what_that_one_streamed() {
        let mut m = DigestMirror::compact().streaming_into_empty();
        m.apply(&b(BatchType::SnapshotBegin, 5, vec![]));
        let o = m.apply(&b(
            BatchType::Snapshot,
            5,
            vec![
                ev(EventType::Upsert, "x", "1"),
                ev(EventType::Upsert, "y", "1"),
            ],
        ));
        assert_eq!(o.changes.len(), 2);
        // The stream breaks here; the next one starts over (no resume point).
        assert!(m.resume_point().is_none());
        m.apply(&b(BatchType::SnapshotBegin, 7, vec![]));
        let o = m.apply(&b(
            BatchType::Snapshot,
            7,
            vec![
                ev(EventType::Upsert, "x", "1"),
                ev(EventType::Upsert, "z", "1"),
            ],
        ));
        assert!(o.changes.is_empty(), "staged: the table was not empty");
        let o = m.apply(&b(BatchType::SnapshotEnd, 7, vec![]));
        assert!(o.snapshot_done);
        let mut changes = o.changes;
        changes.sort_by_key(|c| format!("{c:?}"));
        assert_eq!(
            changes,
            [
                Change::Delete {
                    id: (Kind::Node, "a".into(), "y".into())
                },
                Change::Upsert {
                    id: (Kind::Node, "a".into(), "z".into()),
                    value: Bytes::from("1")
                },
            ]
        );
        assert_eq!(m.records.len(), 2);
    }
}
