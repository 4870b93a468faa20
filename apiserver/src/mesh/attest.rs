//! Attested sync on the receiving side (docs/mesh.md "Attested sync"): a
//! peer's synced marker carries the count and digest of its kind
//! ([`clustermesh_proto::attest`]); the mirror reports what it held when the
//! marker arrived ([`clustermesh_proto::mirror::Attested`]), and this adds
//! what the ingest rules refused (the peer did send it) and decides. A kind
//! whose marker does not match is not synced: its marker is not written, the
//! deferred deletes it would release stay, and the peer is not ready.

use std::collections::{BTreeMap, BTreeSet};

use clustermesh_proto::attest::{self, Tally};
use clustermesh_proto::mirror::{Attested, RecordId};
use clustermesh_proto::v1::{Kind, SyncMismatch};
use tracing::warn;

#[derive(Debug, Default)]
pub struct Attestations {
    /// The peer's own records the ingest rules refused (value digests).
    refused: BTreeMap<RecordId, [u8; 16]>,
    /// Kinds whose last marker did not attest what was mirrored.
    mismatch: BTreeMap<Kind, SyncMismatch>,
}

impl Attestations {
    /// A snapshot starts: what it refuses is counted anew.
    pub fn snapshot_begins(&mut self) {
        self.refused.clear();
    }

    /// The peer's record `id` (with bytes `value`) was refused.
    pub fn refused(&mut self, id: RecordId, value: &[u8]) {
        self.refused.insert(id, attest::value_digest(value));
    }

    /// An event for `id` passed the rules: it is no longer a refused one.
    pub fn accepted(&mut self, id: &RecordId) {
        self.refused.remove(id);
    }

    /// The peer withdrew its marker of `kind`.
    pub fn unsynced(&mut self, kind: Kind) {
        self.mismatch.remove(&kind);
    }

    pub fn is_mismatched(&self, kind: Kind) -> bool {
        self.mismatch.contains_key(&kind)
    }

    pub fn mismatches(&self) -> Vec<SyncMismatch> {
        self.mismatch.values().cloned().collect()
    }

    fn refused_tally(&self, kind: Kind) -> Tally {
        let mut t = Tally::default();
        for ((k, _, key), d) in &self.refused {
            if *k == kind {
                t.add(attest::record_hash_of_digest(key, d));
            }
        }
        t
    }

    /// Compares `peer`'s attested markers with what was mirrored (plus what
    /// was refused). Returns the kinds whose state (matching or not)
    /// changed. At a snapshot's end, a kind whose marker there carried no
    /// digest (or that has no marker) is no longer held as mismatched.
    pub fn evaluate(
        &mut self,
        peer: &str,
        attested: &[Attested],
        snapshot_done: bool,
    ) -> BTreeSet<Kind> {
        let mut changed = BTreeSet::new();
        let mut seen = BTreeSet::new();
        for a in attested.iter().filter(|a| a.cluster == peer) {
            seen.insert(a.kind);
            let refused = self.refused_tally(a.kind);
            let mirrored = Tally {
                records: a.mirrored.records + refused.records,
                digest: a.mirrored.digest.wrapping_add(refused.digest),
            };
            let was = self.is_mismatched(a.kind);
            if a.marker == mirrored {
                self.mismatch.remove(&a.kind);
            } else {
                if !was {
                    warn!(
                        peer,
                        kind = a.kind.segment(),
                        marker_records = a.marker.records,
                        mirrored_records = mirrored.records,
                        marker_digest = format!("{:016x}", a.marker.digest),
                        mirrored_digest = format!("{:016x}", mirrored.digest),
                        "the peer's synced marker does not attest what was mirrored; the kind is not synced"
                    );
                }
                self.mismatch.insert(
                    a.kind,
                    SyncMismatch {
                        kind: a.kind as i32,
                        marker_records: a.marker.records,
                        mirrored_records: mirrored.records,
                        marker_digest: a.marker.digest,
                        mirrored_digest: mirrored.digest,
                    },
                );
            }
            if was != self.is_mismatched(a.kind) {
                changed.insert(a.kind);
            }
        }
        if snapshot_done {
            let stale: Vec<Kind> = self
                .mismatch
                .keys()
                .filter(|k| !seen.contains(k))
                .copied()
                .collect();
            for k in stale {
                self.mismatch.remove(&k);
                changed.insert(k);
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use clustermesh_proto::ClusterMode;
    use clustermesh_proto::keys;
    use clustermesh_proto::v1::{BatchType, Event, EventType, Node, SyncedMarker, WatchBatch};
    use prost::Message;
    use tokio::time::Instant;

    use super::*;
    use crate::mesh::cache::PeerCache;
    use crate::mesh::ingest::{Context, PeerRef};
    use crate::store::WriteOp;

    fn node(name: &str, ip: &str) -> Bytes {
        Node {
            name: name.into(),
            internal_ips: vec![ip.into()],
            cluster: "a".into(),
            exported: true,
            ..Default::default()
        }
        .encode_to_vec()
        .into()
    }
    fn up(key: &str, value: Bytes) -> Event {
        Event {
            r#type: EventType::Upsert as i32,
            kind: Kind::Node as i32,
            cluster: "a".into(),
            key: key.into(),
            value,
            ..Default::default()
        }
    }
    fn marker(records: u64, digest: Option<u64>) -> Event {
        Event {
            r#type: EventType::Synced as i32,
            kind: Kind::Node as i32,
            cluster: "a".into(),
            value: SyncedMarker {
                cluster: "a".into(),
                kind: Kind::Node as i32,
                records,
                unix_millis: 1,
                digest,
            }
            .encode_to_vec()
            .into(),
            ..Default::default()
        }
    }
    /// The honest tally of `recs` (key, bytes).
    fn tally(recs: &[(&str, &Bytes)]) -> Tally {
        let mut t = Tally::default();
        for (k, v) in recs {
            t.add(attest::record_hash(k, v));
        }
        t
    }
    fn batch(t: BatchType, events: Vec<Event>) -> WatchBatch {
        WatchBatch {
            r#type: t as i32,
            epoch: "e".into(),
            revision: 5,
            events,
            ..Default::default()
        }
    }
    fn cache() -> PeerCache {
        PeerCache::seeded(
            PeerRef {
                name: "a".into(),
                id: 1,
                mode: ClusterMode::Max255,
            },
            vec![],
            vec![],
        )
    }
    fn apply(c: &mut PeerCache, b: WatchBatch) -> crate::mesh::cache::Applied {
        c.apply(
            b,
            Instant::now(),
            Duration::from_secs(5),
            &Context::default(),
        )
    }
    fn snapshot(c: &mut PeerCache, events: Vec<Event>) -> Vec<WriteOp> {
        let mut ops = apply(c, batch(BatchType::SnapshotBegin, vec![])).ops;
        let a = apply(c, batch(BatchType::Snapshot, events));
        ops.extend(a.ops);
        ops.extend(apply(c, batch(BatchType::SnapshotEnd, vec![])).ops);
        ops
    }
    fn writes_marker(ops: &[WriteOp]) -> bool {
        let key = keys::synced("a", Kind::Node);
        ops.iter()
            .any(|o| matches!(o, WriteOp::Put { key: k, .. } if *k == key))
    }

    #[test]
    fn an_honest_marker_counts_refused_records_too() {
        let (n1, bad) = (node("n1", "192.168.0.1"), node("n2", "not-an-ip"));
        let t = tally(&[("n1", &n1), ("n2", &bad)]);
        let mut c = cache();
        let ops = snapshot(
            &mut c,
            vec![
                up("n1", n1),
                up("n2", bad),
                marker(t.records, Some(t.digest)),
            ],
        );
        assert_eq!(c.counts()[0].count, 1, "n2 was refused, not mirrored");
        assert!(writes_marker(&ops), "{ops:?}");
        assert!(c.mismatches().is_empty());
        assert_eq!(c.synced_kinds(), vec![Kind::Node]);
    }

    #[test]
    fn a_lying_marker_is_not_written_until_one_attests_the_mirror() {
        let n1 = node("n1", "192.168.0.1");
        let t = tally(&[("n1", &n1)]);
        let mut c = cache();
        let ops = snapshot(
            &mut c,
            vec![up("n1", n1.clone()), marker(t.records + 1, Some(t.digest))],
        );
        assert!(!writes_marker(&ops), "{ops:?}");
        assert_eq!(c.synced_kinds(), Vec::<Kind>::new());
        let m = c.mismatches();
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].marker_records, m[0].mirrored_records), (2, 1));
        assert_eq!(m[0].mirrored_digest, t.digest);

        // Live: the marker is attested where it stands in the batch (a later
        // change of the same batch does not count), and now it matches.
        let n2 = node("n2", "192.168.0.2");
        let t2 = tally(&[("n1", &n1), ("n2", &n2)]);
        let n3 = node("n3", "192.168.0.3");
        let a = apply(
            &mut c,
            batch(
                BatchType::Events,
                vec![
                    up("n2", n2),
                    marker(t2.records, Some(t2.digest)),
                    up("n3", n3),
                ],
            ),
        );
        assert!(writes_marker(&a.ops), "{:?}", a.ops);
        assert!(c.mismatches().is_empty());
        assert_eq!(c.synced_kinds(), vec![Kind::Node]);

        // A later lie about an already synced kind takes its marker back.
        let a = apply(&mut c, batch(BatchType::Events, vec![marker(0, Some(0))]));
        assert_eq!(
            a.ops,
            vec![WriteOp::delete(keys::synced("a", Kind::Node))],
            "marker withdrawn"
        );
        assert_eq!(c.synced_kinds(), Vec::<Kind>::new());
    }

    #[test]
    fn a_marker_without_digest_is_accepted_as_before() {
        let mut c = cache();
        let ops = snapshot(
            &mut c,
            vec![up("n1", node("n1", "192.168.0.1")), marker(7, None)],
        );
        assert!(writes_marker(&ops));
        assert!(c.mismatches().is_empty());
    }
}
