//! The compact record table: a 16-byte digest per record
//! ([`crate::attest::value_digest`]), grouped by kind and cluster and keyed
//! by the record's key alone, so a record costs its key and its digest and
//! nothing more. Keys and cluster names of up to 23 bytes (IPs, node and
//! pod names, identities) are kept inline, without an allocation.
//!
//! At 250,000 mirrored records this replaced a `BTreeMap<RecordId, Bytes>`
//! whose every entry held two heap strings and a heap digest
//! (docs/benchmarks.md).

use std::collections::BTreeMap;

use bytes::Bytes;
use smol_str::SmolStr;

use super::RecordId;
use super::table::Table;
use crate::attest::{self, Tally};
use crate::v1::Kind;

/// A record's 16-byte digest.
pub type Digest = [u8; 16];

/// Digests by kind, then cluster, then key.
#[derive(Debug, Default, Clone)]
pub struct Digests {
    groups: BTreeMap<Kind, BTreeMap<SmolStr, BTreeMap<SmolStr, Digest>>>,
    len: usize,
}

impl Digests {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, kind: Kind, cluster: &str, key: &str) -> Option<&Digest> {
        self.groups.get(&kind)?.get(cluster)?.get(key)
    }

    pub fn contains_key(&self, id: &RecordId) -> bool {
        self.get(id.0, &id.1, &id.2).is_some()
    }

    /// Forgets one record; its digest if it was kept.
    pub fn remove(&mut self, id: &RecordId) -> Option<Digest> {
        let clusters = self.groups.get_mut(&id.0)?;
        let keys = clusters.get_mut(id.1.as_str())?;
        let d = keys.remove(id.2.as_str())?;
        if keys.is_empty() {
            clusters.remove(id.1.as_str());
            if clusters.is_empty() {
                self.groups.remove(&id.0);
            }
        }
        self.len -= 1;
        Some(d)
    }

    /// How many records of `kind` from `cluster` are kept.
    pub fn count(&self, cluster: &str, kind: Kind) -> usize {
        self.group(cluster, kind).map_or(0, BTreeMap::len)
    }

    fn group(&self, cluster: &str, kind: Kind) -> Option<&BTreeMap<SmolStr, Digest>> {
        self.groups.get(&kind)?.get(cluster)
    }

    /// Rebuilds each group's tree from its sorted entries, so its nodes
    /// are full ([`super::repack_map`]). O(records).
    pub fn repack(&mut self) {
        for clusters in self.groups.values_mut() {
            for keys in clusters.values_mut() {
                super::repack_map(keys);
            }
        }
    }

    /// Every record as (kind, cluster, key), in that order.
    pub fn ids(&self) -> impl Iterator<Item = (Kind, &str, &str)> {
        self.groups.iter().flat_map(|(kind, clusters)| {
            clusters.iter().flat_map(move |(cluster, keys)| {
                keys.keys()
                    .map(move |key| (*kind, cluster.as_str(), key.as_str()))
            })
        })
    }
}

impl Table for Digests {
    type Kept = Digest;

    fn len(&self) -> usize {
        Digests::len(self)
    }

    fn kept(value: &Bytes) -> Digest {
        attest::value_digest(value)
    }

    fn get_kept(&self, id: &RecordId) -> Option<&Digest> {
        self.get(id.0, &id.1, &id.2)
    }

    fn put(&mut self, id: RecordId, kept: Digest) {
        let (kind, cluster, key) = id;
        let keys = self
            .groups
            .entry(kind)
            .or_default()
            .entry(SmolStr::new(cluster))
            .or_default();
        if keys.insert(SmolStr::new(key), kept).is_none() {
            self.len += 1;
        }
    }

    fn take(&mut self, id: &RecordId) -> Option<Digest> {
        self.remove(id)
    }

    fn into_ids(self) -> Vec<RecordId> {
        self.ids()
            .map(|(k, c, key)| (k, c.to_owned(), key.to_owned()))
            .collect()
    }

    fn repack(&mut self) {
        Digests::repack(self);
    }

    fn tally(&self, cluster: &str, kind: Kind) -> Tally {
        let mut t = Tally::default();
        for (key, d) in self.group(cluster, kind).into_iter().flatten() {
            t.add(attest::record_hash_of_digest(key, d));
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(kind: Kind, cluster: &str, key: &str) -> RecordId {
        (kind, cluster.into(), key.into())
    }

    #[test]
    fn keeps_counts_and_forgets_by_group() {
        let mut d = Digests::default();
        d.put(id(Kind::Node, "a", "n1"), [1; 16]);
        d.put(id(Kind::Node, "a", "n1"), [2; 16]);
        d.put(id(Kind::Node, "b", "n1"), [3; 16]);
        d.put(
            id(Kind::Endpoint, "a", "a-key-longer-than-twenty-three-bytes"),
            [4; 16],
        );
        assert_eq!(d.len(), 3, "a replaced record counts once");
        assert_eq!(d.get(Kind::Node, "a", "n1"), Some(&[2; 16]));
        assert_eq!(d.count("a", Kind::Node), 1);
        assert_eq!(
            d.ids().collect::<Vec<_>>(),
            [
                (Kind::Node, "a", "n1"),
                (Kind::Node, "b", "n1"),
                (Kind::Endpoint, "a", "a-key-longer-than-twenty-three-bytes"),
            ],
            "ordered as (kind, cluster, key)"
        );
        let mut t = Tally::default();
        t.add(attest::record_hash_of_digest("n1", &[2; 16]));
        assert_eq!(d.tally("a", Kind::Node), t);
        assert_eq!(d.remove(&id(Kind::Node, "b", "n1")), Some([3; 16]));
        assert_eq!(d.remove(&id(Kind::Node, "b", "n1")), None);
        assert_eq!(d.count("b", Kind::Node), 0);
        assert_eq!(d.len(), 2);
        assert!(!d.contains_key(&id(Kind::Node, "b", "n1")));
        d.repack();
        assert_eq!(
            d.get(Kind::Node, "a", "n1"),
            Some(&[2; 16]),
            "repacked, same content"
        );
        assert_eq!(d.len(), 2);
        assert_eq!(d.into_ids().len(), 2);
    }
}
