//! The compact record table: a 16-byte digest per record
//! ([`crate::attest::value_digest`]), grouped by kind and cluster and keyed
//! by the record's key alone, so a record costs its key and its digest and
//! nothing more. An IPv4 address's key (an endpoint's) is kept as its 4
//! octets ([`KeyMap`]); other keys and cluster names of up to 23 bytes
//! (node and pod names, identities) are kept inline, without an allocation.
//!
//! At 250,000 mirrored records this replaced a `BTreeMap<RecordId, Bytes>`
//! whose every entry held two heap strings and a heap digest
//! (docs/benchmarks.md).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bytes::Bytes;
use smol_str::SmolStr;

use super::RecordId;
use super::table::Table;
use crate::attest::{self, Tally};
use crate::key_map::{KeyMap, KeyRef};
use crate::v1::Kind;

/// A record's 16-byte digest.
pub type Digest = [u8; 16];

/// Digests by kind, then cluster, then key.
#[derive(Debug, Default, Clone)]
pub struct Digests {
    groups: BTreeMap<Kind, BTreeMap<SmolStr, KeyMap<Digest>>>,
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
        let d = keys.remove(&id.2)?;
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
        self.group(cluster, kind).map_or(0, KeyMap::len)
    }

    fn group(&self, cluster: &str, kind: Kind) -> Option<&KeyMap<Digest>> {
        self.groups.get(&kind)?.get(cluster)
    }

    /// Rebuilds each group's trees from their sorted entries, so their
    /// nodes are full ([`KeyMap::repack`]). O(records).
    pub fn repack(&mut self) {
        for clusters in self.groups.values_mut() {
            for keys in clusters.values_mut() {
                keys.repack();
            }
        }
    }

    /// Every record as (kind, cluster, key), by kind, then cluster (the
    /// keys of a group in [`KeyMap`]'s order).
    pub fn ids(&self) -> impl Iterator<Item = (Kind, &str, KeyRef<'_>)> {
        self.groups.iter().flat_map(|(kind, clusters)| {
            clusters.iter().flat_map(move |(cluster, keys)| {
                keys.keys().map(move |key| (*kind, cluster.as_str(), key))
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
        if keys.insert(key, kept).is_none() {
            self.len += 1;
        }
    }

    fn take(&mut self, id: &RecordId) -> Option<Digest> {
        self.remove(id)
    }

    fn into_ids(self) -> Vec<RecordId> {
        self.ids()
            .map(|(k, c, key)| (k, c.to_owned(), key.to_string()))
            .collect()
    }

    fn repack(&mut self) {
        Digests::repack(self);
    }

    fn tally(&self, cluster: &str, kind: Kind) -> Tally {
        let mut t = Tally::default();
        let mut text = String::new();
        for (key, d) in self.group(cluster, kind).into_iter().flat_map(KeyMap::iter) {
            let key = match key {
                KeyRef::Text(s) => s,
                KeyRef::Ipv4(ip) => {
                    text.clear();
                    // Writing to a String cannot fail.
                    let _ = write!(text, "{ip}");
                    &text
                }
            };
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
            d.ids()
                .map(|(k, c, key)| (k, c, key.to_string()))
                .collect::<Vec<_>>(),
            [
                (Kind::Node, "a", "n1".to_owned()),
                (Kind::Node, "b", "n1".to_owned()),
                (
                    Kind::Endpoint,
                    "a",
                    "a-key-longer-than-twenty-three-bytes".to_owned()
                ),
            ],
            "ordered as (kind, cluster, key)"
        );
        let mut t = Tally::default();
        t.add(attest::record_hash_of_digest("n1", &[2; 16]));
        assert_eq!(d.tally("a", Kind::Node), t);
        // An address key is kept as octets, and attested as its text.
        d.put(id(Kind::Endpoint, "b", "10.0.0.1"), [5; 16]);
        let mut t = Tally::default();
        t.add(attest::record_hash_of_digest("10.0.0.1", &[5; 16]));
        assert_eq!(d.tally("b", Kind::Endpoint), t);
        assert_eq!(d.get(Kind::Endpoint, "b", "10.0.0.1"), Some(&[5; 16]));
        assert_eq!(
            d.remove(&id(Kind::Endpoint, "b", "10.0.0.1")),
            Some([5; 16])
        );
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
