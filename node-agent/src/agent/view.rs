//! The decoded merged view: the records a Watch (scope `merged`) delivered,
//! kept as typed protobuf messages keyed by (cluster, key).
//!
//! It is updated incrementally from the [`Change`]s that
//! [`clustermesh_proto::mirror::Mirror`] reports, so a re-snapshot of
//! unchanged data costs nothing here and a reset snapshot (mark-and-sweep)
//! arrives as exactly the upserts and deletes it implies.

use std::collections::{BTreeMap, BTreeSet};

use clustermesh_proto::mirror::Change;
use clustermesh_proto::v1::{ClusterInfo, Endpoint, Identity, Kind, Node, Policy, Service};
use prost::Message;
use tracing::warn;

/// (cluster, key) of one record within its kind.
pub type Key = (String, String);

/// Typed copy of the merged view.
#[derive(Debug, Default, Clone)]
pub struct View {
    /// The local cluster (from the snapshot header of the Watch stream).
    pub cluster: Option<ClusterInfo>,
    pub nodes: BTreeMap<Key, Node>,
    pub endpoints: BTreeMap<Key, Endpoint>,
    pub identities: BTreeMap<Key, Identity>,
    pub services: BTreeMap<Key, Service>,
    pub policies: BTreeMap<Key, Policy>,
    /// Sync markers: (cluster, kind) fully written by its exporter.
    pub synced: BTreeSet<(String, Kind)>,
    /// Records that did not decode (skipped).
    pub decode_errors: u64,
}

fn put<T: Message + Default>(map: &mut BTreeMap<Key, T>, key: Key, value: &[u8], errors: &mut u64) {
    match T::decode(value) {
        Ok(v) => {
            map.insert(key, v);
        }
        Err(e) => {
            *errors += 1;
            warn!(cluster = %key.0, key = %key.1, error = %e, "skipping a record that does not decode");
            map.remove(&key);
        }
    }
}

impl View {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one change from the mirror. Sync markers are not kept here.
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::Upsert {
                id: (kind, cluster, key),
                value,
            } => {
                let k = (cluster.clone(), key.clone());
                let e = &mut self.decode_errors;
                match kind {
                    Kind::Node => put(&mut self.nodes, k, value, e),
                    Kind::Endpoint => put(&mut self.endpoints, k, value, e),
                    Kind::Identity => put(&mut self.identities, k, value, e),
                    Kind::Service => put(&mut self.services, k, value, e),
                    Kind::Policy => put(&mut self.policies, k, value, e),
                    Kind::Unspecified => {}
                }
            }
            Change::Delete {
                id: (kind, cluster, key),
            } => {
                let k = (cluster.clone(), key.clone());
                match kind {
                    Kind::Node => {
                        self.nodes.remove(&k);
                    }
                    Kind::Endpoint => {
                        self.endpoints.remove(&k);
                    }
                    Kind::Identity => {
                        self.identities.remove(&k);
                    }
                    Kind::Service => {
                        self.services.remove(&k);
                    }
                    Kind::Policy => {
                        self.policies.remove(&k);
                    }
                    Kind::Unspecified => {}
                }
            }
            Change::Synced { cluster, kind } => {
                self.synced.insert((cluster.clone(), *kind));
            }
            Change::Unsynced { cluster, kind } => {
                self.synced.remove(&(cluster.clone(), *kind));
            }
        }
    }

    /// True once the local cluster has marked every record kind synced: its
    /// records in the view are complete (not a half-written store).
    pub fn local_synced(&self) -> bool {
        let local = self.local_cluster();
        !local.is_empty()
            && clustermesh_proto::RECORD_KINDS
                .iter()
                .all(|k| self.synced.contains(&(local.to_string(), *k)))
    }

    /// The local cluster's name ("" before the first snapshot header).
    pub fn local_cluster(&self) -> &str {
        self.cluster.as_ref().map(|c| c.name.as_str()).unwrap_or("")
    }

    /// Record counts per kind: (nodes, endpoints, identities, services, policies).
    pub fn counts(&self) -> [usize; 5] {
        [
            self.nodes.len(),
            self.endpoints.len(),
            self.identities.len(),
            self.services.len(),
            self.policies.len(),
        ]
    }

    /// Inserts a record directly (tests and tools); the key is derived from the record.
    pub fn insert_node(&mut self, n: Node) {
        self.nodes.insert((n.cluster.clone(), n.name.clone()), n);
    }

    pub fn insert_endpoint(&mut self, e: Endpoint) {
        self.endpoints.insert((e.cluster.clone(), e.ip.clone()), e);
    }

    pub fn insert_identity(&mut self, i: Identity) {
        self.identities
            .insert((i.cluster.clone(), i.id.to_string()), i);
    }

    pub fn insert_service(&mut self, s: Service) {
        self.services.insert(
            (s.cluster.clone(), format!("{}/{}", s.namespace, s.name)),
            s,
        );
    }

    pub fn insert_policy(&mut self, p: Policy) {
        self.policies.insert(
            (p.cluster.clone(), format!("{}/{}", p.namespace, p.name)),
            p,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn applies_upserts_deletes_and_skips_garbage() {
        let mut v = View::new();
        let n = Node {
            name: "gw".into(),
            cluster: "c2".into(),
            gateway: true,
            ..Default::default()
        };
        let id = (Kind::Node, "c2".to_string(), "gw".to_string());
        v.apply(&Change::Upsert {
            id: id.clone(),
            value: Bytes::from(n.encode_to_vec()),
        });
        assert_eq!(v.nodes[&("c2".into(), "gw".into())], n);
        v.apply(&Change::Upsert {
            id: (Kind::Endpoint, "c2".into(), "10.0.0.1".into()),
            value: Bytes::from_static(&[0xff, 0xff, 0xff]),
        });
        assert_eq!(v.decode_errors, 1);
        assert!(v.endpoints.is_empty());
        v.apply(&Change::Delete { id });
        assert!(v.nodes.is_empty());
    }
}
