//! Per-peer quotas (DESIGN §10): how many records of each kind, and how
//! many bytes (keys plus values), one peer may have held here, written or
//! pending. A record is checked when the peer's cache is about to take it,
//! after the ingest rules:
//!
//! - a **new** record beyond its kind's limit, or whose bytes would take
//!   the peer over its byte limit, is refused (reason `quota_exceeded`),
//!   not written and not remembered (the mirror forgets it, so a resend is
//!   checked again);
//! - an **update** of a record already held always passes the record count;
//!   one that would take the peer over its byte limit is refused and the
//!   held version withdrawn (as for any refused update: keeping it would
//!   serve stale data);
//! - deletes always pass.
//!
//! While records are refused the peer is **over quota**: [`Quota::over`]
//! counts the refusals per limit, shown in status. A full snapshot in which
//! nothing is refused clears it. When room frees up while the peer is over
//! quota, [`Quota::wants_snapshot`] asks the peer loop for a fresh snapshot
//! (rate-limited there), so that the refused records that now fit arrive.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, RandomState};

use clustermesh_proto::mirror::RecordId;
use clustermesh_proto::quota;
use clustermesh_proto::v1::{Kind, PeerQuota};

use super::{Reason, RejectError};

/// A refusal; `was_held`: an older version is held and must be withdrawn.
#[derive(Debug)]
pub struct Refused {
    pub error: RejectError,
    pub was_held: bool,
}

#[derive(Debug)]
pub struct Quota {
    limits: PeerQuota,
    /// Bytes of every record held, by kind and by a keyed hash of its key
    /// ([`Quota::slot`]; the cluster is the peer's: one book per peer).
    /// (Each kind's count is its map's length.) The book never lists its
    /// keys (the mirror does), so it keeps 12 bytes per record, not the
    /// key. Ordered maps, not hash maps: rebuilt from their sorted entries
    /// after a snapshot ([`Quota::repack`]) their nodes are full, ~14 B per
    /// record (~29 B with the key inline), against ~30 B for a hash map's
    /// slots at its load factor (docs/benchmarks.md).
    sizes: BTreeMap<Kind, BTreeMap<u64, u32>>,
    /// The hash's secret key, random per book: a peer cannot choose keys
    /// that share a slot (see [`Quota::slot`]).
    hasher: RandomState,
    bytes: u64,
    /// Refusals per limit name: those of the last full snapshot, plus those
    /// of the events since.
    over: BTreeMap<String, u64>,
    /// Refusals of the snapshot being applied (`Some` between its begin and end).
    round: Option<BTreeMap<String, u64>>,
    /// Something held went away while over quota.
    room_freed: bool,
}

impl Default for Quota {
    fn default() -> Self {
        Quota::new(quota::DEFAULT)
    }
}

/// The bytes a record costs: its key and its value.
pub fn cost(id: &RecordId, value_len: usize) -> u64 {
    (id.2.len() + value_len) as u64
}

impl Quota {
    /// `limits` with no zero field (see [`quota::or_defaults`]).
    pub fn new(limits: PeerQuota) -> Quota {
        Quota {
            limits,
            sizes: BTreeMap::new(),
            hasher: RandomState::new(),
            bytes: 0,
            over: BTreeMap::new(),
            round: None,
            room_freed: false,
        }
    }

    pub fn limits(&self) -> &PeerQuota {
        &self.limits
    }

    pub fn set_limits(&mut self, limits: PeerQuota) {
        self.limits = limits;
    }

    /// A record already in the store (seeding): counted whatever the
    /// limits (a lowered quota deletes nothing; new records wait for room).
    pub fn seed(&mut self, id: &RecordId, bytes: u64) {
        self.put(id, bytes);
    }

    /// Where `id` is booked within its kind: a 64-bit SipHash of its key
    /// under this book's random secret. Two keys of one peer and kind share
    /// a slot with a chance of about n²/2⁶⁵ (10⁻⁹ at 250,000 records), and
    /// a peer cannot aim for it without the secret; if they did, the pair
    /// would count as one record (one record over the count limit, its
    /// bytes as the later one's) and a refused update might delete a key
    /// that is not in the store: a miscount by one, never a lost record of
    /// another peer.
    fn slot(&self, id: &RecordId) -> u64 {
        self.hasher.hash_one(id.2.as_str())
    }

    fn size(&self, id: &RecordId) -> Option<u64> {
        let size = self.sizes.get(&id.0)?.get(&self.slot(id))?;
        Some(u64::from(*size))
    }

    fn put(&mut self, id: &RecordId, bytes: u64) {
        // A record is bounded by the write limit (docs/store.md), far below 4 GiB.
        let kept = u32::try_from(bytes).unwrap_or(u32::MAX);
        let bytes = u64::from(kept);
        let slot = self.slot(id);
        let sizes = self.sizes.entry(id.0).or_default();
        match sizes.insert(slot, kept) {
            Some(old) => self.bytes = self.bytes - u64::from(old) + bytes,
            None => self.bytes += bytes,
        }
    }

    /// Whether the cache may take `id` at `bytes`; on success it is counted.
    pub fn admit(&mut self, id: &RecordId, bytes: u64) -> Result<(), Refused> {
        let old = self.size(id);
        let kind = id.0;
        let held = self.held(kind);
        let limit = quota::records(&self.limits, kind);
        let refusal = if old.is_none() && held >= limit {
            Some((
                kind.segment(),
                format!(
                    "peer holds {held} {} here, its quota (a new one is refused; updates of held ones pass)",
                    kind.segment()
                ),
            ))
        } else if self.bytes - old.unwrap_or(0) + bytes > self.limits.bytes
            && bytes > old.unwrap_or(0)
        {
            Some((
                "bytes",
                format!(
                    "{bytes} more bytes would take the peer's {} held bytes over its quota of {}",
                    self.bytes - old.unwrap_or(0),
                    self.limits.bytes
                ),
            ))
        } else {
            None
        };
        match refusal {
            None => {
                self.put(id, bytes);
                Ok(())
            }
            Some((limit, detail)) => {
                let counts = self.round.as_mut().unwrap_or(&mut self.over);
                *counts.entry(limit.to_owned()).or_default() += 1;
                if old.is_some() {
                    self.remove(id);
                }
                Err(Refused {
                    error: RejectError::Rule {
                        reason: Reason::QuotaExceeded,
                        kind: kind.segment(),
                        key: super::truncated(&id.2),
                        detail,
                    },
                    was_held: old.is_some(),
                })
            }
        }
    }

    /// `id` is no longer held (deleted from the store, or no longer pending).
    pub fn remove(&mut self, id: &RecordId) {
        let slot = self.slot(id);
        let Some(sizes) = self.sizes.get_mut(&id.0) else {
            return;
        };
        if let Some(old) = sizes.remove(&slot) {
            self.bytes -= u64::from(old);
            if !self.over.is_empty() {
                self.room_freed = true;
            }
        }
    }

    pub fn snapshot_begin(&mut self) {
        self.round = Some(BTreeMap::new());
    }

    /// A full snapshot has been applied: what it refused is exactly what
    /// of the peer is missing here (nothing: within the quota again).
    pub fn snapshot_end(&mut self) {
        if let Some(round) = self.round.take() {
            self.over = round;
        }
        self.room_freed = false;
        self.repack();
    }

    /// Rebuilds the books from their sorted entries: a tree filled in key
    /// order (a snapshot, a seed) leaves its nodes about half full; one
    /// built from sorted entries fills them. O(n), once per snapshot.
    pub fn repack(&mut self) {
        for sizes in self.sizes.values_mut() {
            clustermesh_proto::mirror::repack_map(sizes);
        }
    }

    /// Refusals per limit name while over quota (empty: within it): those
    /// of the last full snapshot (exactly the records missing then) plus
    /// those since.
    pub fn over(&self) -> &BTreeMap<String, u64> {
        &self.over
    }

    /// Over quota, and room freed since: a fresh snapshot may admit more.
    pub fn wants_snapshot(&self) -> bool {
        self.room_freed && !self.over.is_empty()
    }

    /// Whether `id` is held (written, pending or deferred).
    pub fn holds(&self, id: &RecordId) -> bool {
        self.size(id).is_some()
    }

    pub fn held_bytes(&self) -> u64 {
        self.bytes
    }

    pub fn held(&self, kind: Kind) -> u64 {
        self.sizes.get(&kind).map_or(0, |s| s.len() as u64)
    }

    /// Forgets every record (the peer was withdrawn); the limits stay.
    pub fn clear(&mut self) {
        *self = Quota::new(self.limits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(kind: Kind, key: &str) -> RecordId {
        (kind, "a".into(), key.into())
    }

    #[test]
    fn new_records_beyond_the_count_are_refused_updates_pass() {
        let mut q = Quota::new(PeerQuota {
            endpoints: 2,
            ..quota::DEFAULT
        });
        let (e1, e2, e3) = (
            id(Kind::Endpoint, "1"),
            id(Kind::Endpoint, "2"),
            id(Kind::Endpoint, "3"),
        );
        q.admit(&e1, 10).unwrap();
        q.admit(&e2, 10).unwrap();
        let r = q.admit(&e3, 10).unwrap_err();
        assert_eq!(r.error.reason(), Reason::QuotaExceeded);
        assert!(!r.was_held);
        assert_eq!(q.over().get("endpoints"), Some(&1));
        // Other kinds have their own limit.
        q.admit(&id(Kind::Node, "n"), 10).unwrap();
        // Updates of held records pass.
        q.admit(&e1, 20).unwrap();
        assert_eq!(q.held(Kind::Endpoint), 2);
        assert_eq!(q.held_bytes(), 40);
        assert!(!q.wants_snapshot());
        // Room frees: a snapshot is wanted; one that fits clears the mark.
        q.remove(&e2);
        assert!(q.wants_snapshot());
        q.snapshot_begin();
        q.admit(&e2, 10).unwrap();
        q.snapshot_end();
        assert!(q.over().is_empty());
        assert!(!q.wants_snapshot());
        // A snapshot that refuses again shows what it refused.
        assert!(q.admit(&e3, 10).is_err());
        assert!(q.admit(&e3, 10).is_err());
        assert_eq!(q.over().get("endpoints"), Some(&2), "events add up");
        q.snapshot_begin();
        assert!(q.admit(&e3, 10).is_err());
        q.snapshot_end();
        assert_eq!(q.over().get("endpoints"), Some(&1));
    }

    #[test]
    fn bytes_limit_refuses_growth_and_withdraws_the_held_version() {
        let mut q = Quota::new(PeerQuota {
            bytes: 100,
            ..quota::DEFAULT
        });
        let (a, b) = (id(Kind::Identity, "1"), id(Kind::Identity, "2"));
        q.admit(&a, 60).unwrap();
        assert!(q.admit(&b, 50).is_err(), "60 + 50 > 100");
        q.admit(&b, 40).unwrap();
        // Shrinking always passes, growing beyond does not.
        q.admit(&a, 50).unwrap();
        let r = q.admit(&a, 70).unwrap_err();
        assert!(r.was_held);
        assert_eq!(q.held(Kind::Identity), 1, "the held version is gone");
        assert_eq!(q.held_bytes(), 40);
        assert_eq!(q.over().get("bytes"), Some(&2));
    }

    #[test]
    fn every_key_is_booked_apart_and_found_again() {
        // The book keeps a hash per key, not the key: 20,000 keys (long and
        // short, two kinds sharing keys) count one each, updates find their
        // own slot, and removing them all leaves nothing.
        let mut q = Quota::new(PeerQuota {
            endpoints: 100_000,
            identities: 100_000,
            bytes: u64::MAX,
            ..quota::DEFAULT
        });
        let key = |i: u32| {
            if i.is_multiple_of(2) {
                format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255)
            } else {
                format!("default/a-pod-name-longer-than-twenty-three-bytes-{i}")
            }
        };
        for i in 0..10_000 {
            q.admit(&id(Kind::Endpoint, &key(i)), 10).unwrap();
            q.admit(&id(Kind::Identity, &key(i)), 5).unwrap();
        }
        assert_eq!(q.held(Kind::Endpoint), 10_000);
        assert_eq!(q.held(Kind::Identity), 10_000);
        assert_eq!(q.held_bytes(), 150_000);
        q.repack();
        for i in 0..10_000 {
            assert!(q.holds(&id(Kind::Endpoint, &key(i))));
            q.admit(&id(Kind::Endpoint, &key(i)), 20).unwrap();
        }
        assert_eq!(q.held(Kind::Endpoint), 10_000, "updates, not new records");
        assert_eq!(q.held_bytes(), 250_000);
        assert!(!q.holds(&id(Kind::Endpoint, "10.255.255.255")));
        for i in 0..10_000 {
            q.remove(&id(Kind::Endpoint, &key(i)));
        }
        assert_eq!(q.held(Kind::Endpoint), 0);
        assert_eq!(q.held_bytes(), 50_000, "the identities stay");
        q.clear();
        assert_eq!(q.held_bytes(), 0);
        assert_eq!(q.limits().endpoints, 100_000, "limits survive a clear");
    }

    #[test]
    fn a_lowered_quota_deletes_nothing() {
        let mut q = Quota::new(PeerQuota {
            nodes: 1,
            ..quota::DEFAULT
        });
        q.seed(&id(Kind::Node, "a"), 5);
        q.seed(&id(Kind::Node, "b"), 5);
        assert_eq!(q.held(Kind::Node), 2);
        q.admit(&id(Kind::Node, "a"), 6).unwrap();
        assert!(q.admit(&id(Kind::Node, "c"), 5).is_err());
    }
}
