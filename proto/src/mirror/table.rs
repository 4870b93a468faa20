//! How a [`super::Mirror`] keeps its records: [`Values`] (every value, for
//! tools and tests that read what was mirrored) or [`super::Digests`] (a
//! 16-byte digest per record, for consumers that act on the reported
//! changes and need the mirror only to tell what changed).

use std::collections::BTreeMap;

use bytes::Bytes;

use super::RecordId;
use crate::attest::{self, Tally};
use crate::v1::Kind;

/// A mirror's record storage.
pub trait Table: Default + Clone + std::fmt::Debug {
    /// What is kept per record; two equal `Kept` mean an unchanged record.
    type Kept: PartialEq + Clone + std::fmt::Debug;

    fn kept(value: &Bytes) -> Self::Kept;

    fn get_kept(&self, id: &RecordId) -> Option<&Self::Kept>;
    fn put(&mut self, id: RecordId, kept: Self::Kept);
    fn take(&mut self, id: &RecordId) -> Option<Self::Kept>;
    /// Every id, consuming the table (what a snapshot swept).
    fn into_ids(self) -> Vec<RecordId>;
    /// Count and digest of what is kept of `kind` from `cluster`.
    fn tally(&self, cluster: &str, kind: Kind) -> Tally;
    /// Packs the table after a bulk fill (see [`super::Digests::repack`]).
    fn repack(&mut self) {}
    /// Records kept.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Every record's value, by id.
pub type Values = BTreeMap<RecordId, Bytes>;

impl Table for Values {
    type Kept = Bytes;

    fn kept(value: &Bytes) -> Bytes {
        value.clone()
    }

    fn get_kept(&self, id: &RecordId) -> Option<&Bytes> {
        self.get(id)
    }

    fn put(&mut self, id: RecordId, kept: Bytes) {
        self.insert(id, kept);
    }

    fn take(&mut self, id: &RecordId) -> Option<Bytes> {
        self.remove(id)
    }

    fn into_ids(self) -> Vec<RecordId> {
        self.into_keys().collect()
    }

    fn len(&self) -> usize {
        BTreeMap::len(self)
    }

    fn tally(&self, cluster: &str, kind: Kind) -> Tally {
        let from = (kind, cluster.to_owned(), String::new());
        let mut t = Tally::default();
        for ((k, c, key), v) in self.range(from..) {
            if *k != kind || c != cluster {
                break;
            }
            t.add(attest::record_hash(key, v));
        }
        t
    }
}
