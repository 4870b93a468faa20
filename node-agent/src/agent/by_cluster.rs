//! Records of one kind grouped by cluster ([`ByCluster`]): each cluster's
//! name is kept once, not once per record. For the view's endpoints (the
//! agent's largest map: 250,000 remote endpoints at Cilium's scale shape)
//! that is a 48-byte entry instead of 72 (docs/benchmarks.md); an
//! endpoint's key, its IPv4 address, is kept as 4 octets ([`KeyMap`]), so
//! the entry is 20 bytes.

use std::collections::BTreeMap;

use clustermesh_proto::key_map::{KeyMap, KeyRef};
use smol_str::SmolStr;

use super::view::Key;

/// Values by (cluster, key), ordered by cluster, then key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ByCluster<V> {
    groups: BTreeMap<SmolStr, KeyMap<V>>,
    len: usize,
}

impl<V> Default for ByCluster<V> {
    fn default() -> Self {
        ByCluster {
            groups: BTreeMap::new(),
            len: 0,
        }
    }
}

impl<V> ByCluster<V> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, k: &Key) -> Option<&V> {
        self.groups.get(&k.0)?.get(&k.1)
    }

    /// The value `k` had, if any.
    pub fn insert(&mut self, k: Key, v: V) -> Option<V> {
        let (cluster, key) = k;
        let old = self.groups.entry(cluster).or_default().insert(key, v);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn remove(&mut self, k: &Key) -> Option<V> {
        let group = self.groups.get_mut(&k.0)?;
        let old = group.remove(&k.1)?;
        if group.is_empty() {
            self.groups.remove(&k.0);
        }
        self.len -= 1;
        Some(old)
    }

    /// The records of `cluster`, by key.
    pub fn of_cluster<'a>(&'a self, cluster: &str) -> impl Iterator<Item = (KeyRef<'a>, &'a V)> {
        self.groups.get(cluster).into_iter().flat_map(KeyMap::iter)
    }

    /// The clusters that have records, in order.
    pub fn clusters(&self) -> impl Iterator<Item = &str> {
        self.groups.keys().map(SmolStr::as_str)
    }

    /// Rebuilds each cluster's map from its sorted entries (full nodes;
    /// see [`KeyMap::repack`]). O(records).
    pub fn repack(&mut self) {
        for group in self.groups.values_mut() {
            group.repack();
        }
    }
}

impl<V> std::ops::Index<&Key> for ByCluster<V> {
    type Output = V;

    /// Panics when `k` is absent, like a map's index (tests).
    fn index(&self, k: &Key) -> &V {
        match self.get(k) {
            Some(v) => v,
            None => panic!("no record {}/{}", k.0, k.1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::view::key;

    #[test]
    fn groups_counts_and_forgets_empty_clusters() {
        let mut m: ByCluster<u32> = ByCluster::default();
        assert_eq!(m.insert(key("b", "2"), 1), None);
        assert_eq!(m.insert(key("a", "1"), 2), None);
        assert_eq!(m.insert(key("b", "1"), 3), None);
        assert_eq!(
            m.insert(key("b", "1"), 4),
            Some(3),
            "a replaced record counts once"
        );
        assert_eq!(m.len(), 3);
        assert_eq!(m[&key("b", "1")], 4);
        assert_eq!(m.get(&key("a", "1")), Some(&2));
        assert_eq!(m.clusters().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(
            m.of_cluster("b")
                .map(|(k, v)| (k.to_string(), *v))
                .collect::<Vec<_>>(),
            [("1".to_owned(), 4), ("2".to_owned(), 1)]
        );
        assert_eq!(m.of_cluster("zz").count(), 0);
        assert_eq!(m.remove(&key("a", "1")), Some(2));
        assert_eq!(m.remove(&key("a", "1")), None);
        assert_eq!(
            m.clusters().collect::<Vec<_>>(),
            ["b"],
            "an emptied cluster goes"
        );
        m.repack();
        assert_eq!(
            m.of_cluster("b").map(|(_, v)| *v).collect::<Vec<_>>(),
            [4, 1],
            "repacked, same content"
        );
        assert_eq!(m.len(), 2);
        assert!(!m.is_empty());
    }
}
