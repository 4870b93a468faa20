//! The decoded merged view: the records a Watch (scope `merged`) delivered,
//! kept as typed protobuf messages keyed by (cluster, key).
//!
//! It is updated incrementally from the [`Change`]s that
//! [`clustermesh_proto::mirror::Mirror`] reports, so a re-snapshot of
//! unchanged data costs nothing here and a reset snapshot (mark-and-sweep)
//! arrives as exactly the upserts and deletes it implies.
//!
//! Services stay whole here: `services` holds each service with all its
//! backends, put together from its record and its `ServiceBackend` records
//! (`clustermesh_proto::backends::assemble`; an older peer's record carries
//! them inline). A backend record changes its service in place (a binary
//! search in its sorted backends), so one backend change costs O(log n)
//! plus the shift, not a re-assembly.

use std::collections::{BTreeMap, BTreeSet};

use clustermesh_proto::backends;
use clustermesh_proto::mirror::{Change, repack_map};
use clustermesh_proto::v1::{
    Backend, ClusterInfo, Endpoint, Identity, Kind, Node, Policy, Service, ServiceBackend,
};
use prost::Message;
use smol_str::SmolStr;
use tracing::warn;

use super::by_cluster::ByCluster;
use super::endpoint_info::EndpointInfo;
use super::identity_info::IdentityInfo;
use super::node_info::NodeInfo;

/// (cluster, key) of one record within its kind. Names and keys of up to 23
/// bytes (cluster names, IPs, pod and node names) are kept inline, without
/// an allocation: at 250,000 remote endpoints that is two allocations fewer
/// per endpoint (docs/benchmarks.md).
pub type Key = (SmolStr, SmolStr);

/// The [`Key`] of `key` in `cluster`.
pub fn key(cluster: &str, key: &str) -> Key {
    (SmolStr::new(cluster), SmolStr::new(key))
}

/// Typed copy of the merged view.
#[derive(Debug, Default, Clone)]
pub struct View {
    /// The local cluster (from the snapshot header of the Watch stream).
    pub cluster: Option<ClusterInfo>,
    /// What the agent uses of each node ([`NodeInfo`]).
    pub nodes: BTreeMap<Key, NodeInfo>,
    /// What the agent uses of each endpoint ([`EndpointInfo`]), grouped
    /// by cluster (the name once per cluster: [`ByCluster`]).
    pub endpoints: ByCluster<EndpointInfo>,
    /// What the agent uses of each identity ([`IdentityInfo`]).
    pub identities: BTreeMap<Key, IdentityInfo>,
    /// Whole services (with every backend), by (cluster, "ns/name").
    pub services: BTreeMap<Key, Service>,
    pub policies: BTreeMap<Key, Policy>,
    /// Service records as received (inline backends of an older peer only).
    service_records: BTreeMap<Key, Service>,
    /// Backend records, by (cluster, "ns/service/ip").
    backends: BTreeMap<Key, Backend>,
    /// Sync markers: (cluster, kind) fully written by its exporter.
    pub synced: BTreeSet<(String, Kind)>,
    /// Records that did not decode (skipped).
    pub decode_errors: u64,
    /// Endpoints that define named ports (what policy resolves them from).
    pub named_port_endpoints: BTreeSet<Key>,
    /// Nodes whose record says `gateway` (what the gateway plan looks at).
    pub gateway_nodes: BTreeSet<Key>,
    /// What changed since the desired state last took it
    /// ([`super::incremental::Incremental`]).
    pub dirty: Dirty,
}

/// What changed in the view since the last [`std::mem::take`] of it: enough
/// for the desired state to recompute only the parts a change touches.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dirty {
    /// Clusters whose nodes or endpoints changed.
    pub clusters: BTreeSet<String>,
    pub identities: bool,
    pub policies: bool,
    pub services: bool,
    /// An endpoint that defines named ports came, changed or went.
    pub named_ports: bool,
}

fn put<T: Message + Default>(map: &mut BTreeMap<Key, T>, key: Key, value: &[u8], errors: &mut u64) {
    put_as::<T, T>(map, key, value, errors)
}

/// [`put`] of a record kept as `T`, made from its decoded message `M`.
fn put_as<M: Message + Default, T: From<M>>(
    map: &mut BTreeMap<Key, T>,
    key: Key,
    value: &[u8],
    errors: &mut u64,
) {
    match decoded::<M, T>(&key, value, errors) {
        Some(v) => {
            map.insert(key, v);
        }
        None => {
            map.remove(&key);
        }
    }
}

/// A record's value decoded as `M` and kept as `T`; `None` (counted in
/// `errors`, logged) when it does not decode: the caller forgets the key.
fn decoded<M: Message + Default, T: From<M>>(
    key: &Key,
    value: &[u8],
    errors: &mut u64,
) -> Option<T> {
    match M::decode(value) {
        Ok(v) => Some(v.into()),
        Err(e) => {
            *errors += 1;
            warn!(cluster = %key.0, key = %key.1, error = %e, "skipping a record that does not decode");
            None
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
                let k = self::key(cluster, key);
                self.mark(*kind, cluster);
                // Until the local cluster is known, everything is kept.
                let remote = self.cluster.is_some() && **cluster != *self.local_cluster();
                let e = &mut self.decode_errors;
                match kind {
                    Kind::Node => {
                        put_as::<Node, NodeInfo>(&mut self.nodes, k.clone(), value, e);
                        self.index_gateway(k);
                    }
                    Kind::Endpoint => {
                        match decoded::<Endpoint, EndpointInfo>(&k, value, e) {
                            Some(mut ep) => {
                                if remote {
                                    ep.drop_details();
                                }
                                self.endpoints.insert(k.clone(), ep);
                            }
                            None => {
                                self.endpoints.remove(&k);
                            }
                        }
                        self.index_named_ports(k);
                    }
                    Kind::Identity => put_as::<Identity, _>(&mut self.identities, k, value, e),
                    Kind::Service => {
                        put(&mut self.service_records, k.clone(), value, e);
                        self.assemble(&k);
                    }
                    Kind::ServiceBackend => match ServiceBackend::decode(value.as_ref()) {
                        Ok(ServiceBackend {
                            backend: Some(b), ..
                        }) => self.backend_upsert(k, b),
                        _ => {
                            *e += 1;
                            warn!(cluster = %k.0, key = %k.1, "skipping a backend record that does not decode");
                            self.backend_delete(&k);
                        }
                    },
                    Kind::Policy => put(&mut self.policies, k, value, e),
                    Kind::Unspecified => {}
                }
            }
            Change::Delete {
                id: (kind, cluster, key),
            } => {
                let k = self::key(cluster, key);
                self.mark(*kind, cluster);
                match kind {
                    Kind::Node => {
                        self.nodes.remove(&k);
                        self.index_gateway(k);
                    }
                    Kind::Endpoint => {
                        self.endpoints.remove(&k);
                        self.index_named_ports(k);
                    }
                    Kind::Identity => {
                        self.identities.remove(&k);
                    }
                    Kind::Service => {
                        self.service_records.remove(&k);
                        self.services.remove(&k);
                    }
                    Kind::ServiceBackend => self.backend_delete(&k),
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

    /// Rebuilds the record maps from their sorted entries, after a snapshot:
    /// filled in key order, a `BTreeMap`'s nodes are a little over half
    /// full; built from sorted entries they are full (at 250,000 remote
    /// endpoints, ~75 bytes an endpoint; docs/benchmarks.md). O(records).
    pub fn repack(&mut self) {
        repack_map(&mut self.nodes);
        self.endpoints.repack();
        repack_map(&mut self.identities);
        repack_map(&mut self.services);
        repack_map(&mut self.policies);
        repack_map(&mut self.service_records);
        repack_map(&mut self.backends);
    }

    /// Notes a change of `kind` in `cluster` in [`View::dirty`].
    fn mark(&mut self, kind: Kind, cluster: &str) {
        let d = &mut self.dirty;
        match kind {
            Kind::Node | Kind::Endpoint => {
                if !d.clusters.contains(cluster) {
                    d.clusters.insert(cluster.to_owned());
                }
            }
            Kind::Identity => d.identities = true,
            Kind::Service | Kind::ServiceBackend => d.services = true,
            Kind::Policy => d.policies = true,
            Kind::Unspecified => {}
        }
    }

    /// Keeps [`View::gateway_nodes`] right for node `k` (after it changed).
    fn index_gateway(&mut self, k: Key) {
        if self.nodes.get(&k).is_some_and(|n| n.gateway) {
            self.gateway_nodes.insert(k);
        } else {
            self.gateway_nodes.remove(&k);
        }
    }

    /// The gateway nodes, in key order.
    pub fn gateways(&self) -> impl Iterator<Item = (&Key, &NodeInfo)> {
        self.gateway_nodes
            .iter()
            .filter_map(|k| Some((k, self.nodes.get(k)?)))
    }

    /// Keeps [`View::named_port_endpoints`] right for endpoint `k` (after
    /// it changed); flags a change there.
    fn index_named_ports(&mut self, k: Key) {
        let has = self
            .endpoints
            .get(&k)
            .is_some_and(|e| !e.named_ports().is_empty());
        let had = if has {
            !self.named_port_endpoints.insert(k)
        } else {
            self.named_port_endpoints.remove(&k)
        };
        if has || had {
            self.dirty.named_ports = true;
        }
    }

    /// The distinct clusters of `map`'s keys, in order: one lookup per
    /// cluster, not a walk over every record.
    pub fn clusters_of<V>(map: &BTreeMap<Key, V>) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        let mut next = map.keys().next();
        while let Some((c, _)) = next {
            out.push(c.as_str());
            // The smallest cluster name after `c` is `c` + NUL.
            next = map
                .range((SmolStr::from(format!("{c}\0")), SmolStr::default())..)
                .next()
                .map(|(k, _)| k);
        }
        out
    }

    /// The records of `cluster` in `map`.
    pub fn of_cluster<'a, V>(
        map: &'a BTreeMap<Key, V>,
        cluster: &'a str,
    ) -> impl Iterator<Item = (&'a Key, &'a V)> + 'a {
        map.range((SmolStr::new(cluster), SmolStr::default())..)
            .take_while(move |((c, _), _)| c == cluster)
    }

    /// True once the local cluster has marked every record kind synced: its
    /// records in the view are complete (not a half-written store). The
    /// `backends` marker counts only when the local apiserver advertises
    /// `service-backends` (an older one never writes it).
    pub fn local_synced(&self) -> bool {
        let local = self.local_cluster();
        let splits = self.cluster.as_ref().is_some_and(|c| {
            c.capabilities
                .iter()
                .any(|x| x == clustermesh_proto::backends::CAPABILITY)
        });
        !local.is_empty()
            && clustermesh_proto::RECORD_KINDS
                .iter()
                .filter(|k| splits || **k != Kind::ServiceBackend)
                .all(|k| self.synced.contains(&(local.to_string(), *k)))
    }

    /// The bit position of the cluster ID in this cluster's identities (16
    /// while the cluster is not known yet).
    pub fn cluster_shift(&self) -> u32 {
        self.cluster
            .as_ref()
            .and_then(|ci| {
                clustermesh_proto::ClusterMode::from_max_clusters(ci.max_connected_clusters).ok()
            })
            .map(|m| m.cluster_shift())
            .unwrap_or(16)
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

    /// Re-assembles one whole service from its record and backend records.
    fn assemble(&mut self, k: &Key) {
        let Some(rec) = self.service_records.get(k) else {
            self.services.remove(k);
            return;
        };
        let prefix = format!("{}/", k.1);
        let recs = self
            .backends
            .range((k.0.clone(), SmolStr::new(&prefix))..)
            .take_while(|((c, key), _)| *c == k.0 && key.starts_with(&prefix))
            .map(|(_, b)| b);
        let whole = backends::assemble(rec, recs);
        self.services.insert(k.clone(), whole);
    }

    /// The whole service a backend key belongs to, and the backend's IP.
    fn service_of(k: &Key) -> Option<(Key, String)> {
        let (ns, svc, ip) = backends::split_key(&k.1)?;
        Some((
            (k.0.clone(), SmolStr::from(format!("{ns}/{svc}"))),
            ip.to_owned(),
        ))
    }

    fn backend_upsert(&mut self, k: Key, b: Backend) {
        let Some((sk, ip)) = Self::service_of(&k) else {
            return;
        };
        if let Some(whole) = self.services.get_mut(&sk) {
            let want = backends::ip_order(&ip);
            match whole
                .backends
                .binary_search_by(|x| backends::ip_order(&x.ip).cmp(&want))
            {
                Ok(i) => whole.backends[i] = b.clone(),
                Err(i) => whole.backends.insert(i, b.clone()),
            }
        }
        self.backends.insert(k, b);
    }

    fn backend_delete(&mut self, k: &Key) {
        if self.backends.remove(k).is_none() {
            return;
        }
        let Some((sk, ip)) = Self::service_of(k) else {
            return;
        };
        // An inline backend of the same IP (an older record) shows again.
        let inline = self
            .service_records
            .get(&sk)
            .and_then(|r| r.backends.iter().find(|b| b.ip == ip).cloned());
        if let Some(whole) = self.services.get_mut(&sk) {
            let want = backends::ip_order(&ip);
            if let Ok(i) = whole
                .backends
                .binary_search_by(|x| backends::ip_order(&x.ip).cmp(&want))
            {
                match inline {
                    Some(b) => whole.backends[i] = b,
                    None => {
                        whole.backends.remove(i);
                    }
                }
            }
        }
    }

    /// Inserts a record directly (tests and tools); the key is derived from the record.
    pub fn insert_node(&mut self, n: Node) {
        self.mark(Kind::Node, &n.cluster);
        let k = key(&n.cluster, &n.name);
        self.nodes.insert(k.clone(), n.into());
        self.index_gateway(k);
    }

    pub fn insert_endpoint(&mut self, e: Endpoint) {
        self.mark(Kind::Endpoint, &e.cluster);
        let k = key(&e.cluster, &e.ip);
        self.endpoints.insert(k.clone(), e.into());
        self.index_named_ports(k);
    }

    pub fn insert_identity(&mut self, i: Identity) {
        self.mark(Kind::Identity, &i.cluster);
        self.identities
            .insert(key(&i.cluster, &i.id.to_string()), i.into());
    }

    pub fn insert_service(&mut self, s: Service) {
        self.mark(Kind::Service, &s.cluster);
        let k = key(&s.cluster, &format!("{}/{}", s.namespace, s.name));
        self.service_records.insert(k.clone(), s);
        self.assemble(&k);
    }

    pub fn insert_policy(&mut self, p: Policy) {
        self.mark(Kind::Policy, &p.cluster);
        self.policies
            .insert(key(&p.cluster, &format!("{}/{}", p.namespace, p.name)), p);
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
        assert_eq!(v.nodes[&("c2".into(), "gw".into())], n.into());
        v.apply(&Change::Upsert {
            id: (Kind::Endpoint, "c2".into(), "10.0.0.1".into()),
            value: Bytes::from_static(&[0xff, 0xff, 0xff]),
        });
        assert_eq!(v.decode_errors, 1);
        assert!(v.endpoints.is_empty());
        v.apply(&Change::Delete { id });
        assert!(v.nodes.is_empty());
    }

    /// Only the local cluster's endpoints keep their details (node, pod):
    /// the rest is what the datapath needs of a remote one.
    #[test]
    fn remote_endpoints_keep_no_details() {
        let mut v = View::new();
        let ep = |cluster: &str| Endpoint {
            ip: "10.0.0.1".into(),
            cluster: cluster.into(),
            identity: 7,
            node_name: "w1".into(),
            node_ip: "192.0.2.1".into(),
            namespace: "ns".into(),
            pod: "p".into(),
            ..Default::default()
        };
        let up = |v: &mut View, cluster: &str| {
            v.apply(&Change::Upsert {
                id: (Kind::Endpoint, cluster.into(), "ns/p".into()),
                value: Bytes::from(ep(cluster).encode_to_vec()),
            })
        };
        // The local cluster not known yet: everything is kept.
        up(&mut v, "c2");
        assert_eq!(v.endpoints[&key("c2", "ns/p")].pod(), "p");
        v.cluster = Some(ClusterInfo {
            name: "c1".into(),
            ..Default::default()
        });
        up(&mut v, "c1");
        up(&mut v, "c2");
        let local = &v.endpoints[&key("c1", "ns/p")];
        assert_eq!((local.node_name(), local.pod()), ("w1", "p"));
        let remote = &v.endpoints[&key("c2", "ns/p")];
        assert_eq!(
            (remote.ip(), remote.identity),
            (Some([10, 0, 0, 1].into()), 7)
        );
        assert_eq!(
            (remote.node_name(), remote.node_ip(), remote.pod()),
            ("", "", "")
        );
    }

    #[test]
    fn repack_keeps_every_record() {
        let mut v = View::new();
        for i in 0..1_000u32 {
            v.insert_endpoint(Endpoint {
                ip: format!("10.0.{}.{}", i / 250, i % 250),
                cluster: format!("c{}", i % 3),
                identity: i,
                ..Default::default()
            });
        }
        let before = v.endpoints.clone();
        v.repack();
        assert_eq!(v.endpoints, before);
        // Still a working map after the rebuild.
        v.insert_endpoint(Endpoint {
            ip: "10.9.0.1".into(),
            cluster: "c1".into(),
            ..Default::default()
        });
        assert_eq!(v.endpoints.len(), 1_001);
        assert_eq!(v.endpoints.of_cluster("c1").count(), 334);
    }

    /// The view of a service stays whole: its record and its backend
    /// records (in any order) make one service with every backend; an older
    /// record's inline backends count too.
    #[test]
    fn services_are_assembled_from_their_records() {
        let mut v = View::new();
        let svc = Service {
            namespace: "ns".into(),
            name: "web".into(),
            global: true,
            cluster: "c2".into(),
            ..Default::default()
        };
        let b = |ip: &str, ready: bool| Backend {
            ip: ip.into(),
            ready,
            ..Default::default()
        };
        let up_b = |v: &mut View, ip: &str, ready: bool| {
            let rec = backends::record(&svc, &b(ip, ready));
            v.apply(&Change::Upsert {
                id: (
                    Kind::ServiceBackend,
                    "c2".into(),
                    backends::key("ns", "web", ip),
                ),
                value: Bytes::from(rec.encode_to_vec()),
            });
        };
        let key = key("c2", "ns/web");
        let ips = |v: &View| -> Vec<(String, bool)> {
            v.services[&key]
                .backends
                .iter()
                .map(|b| (b.ip.clone(), b.ready))
                .collect()
        };
        // A backend before its service: kept, shown once the service comes.
        up_b(&mut v, "10.0.0.10", true);
        assert!(v.services.is_empty());
        v.apply(&Change::Upsert {
            id: (Kind::Service, "c2".into(), "ns/web".into()),
            value: Bytes::from(svc.encode_to_vec()),
        });
        up_b(&mut v, "10.0.0.9", true);
        up_b(&mut v, "10.0.0.2", false);
        assert_eq!(
            ips(&v),
            [
                ("10.0.0.2".into(), false),
                ("10.0.0.9".into(), true),
                ("10.0.0.10".into(), true)
            ]
        );
        up_b(&mut v, "10.0.0.2", true);
        v.apply(&Change::Delete {
            id: (Kind::ServiceBackend, "c2".into(), "ns/web/10.0.0.9".into()),
        });
        assert_eq!(
            ips(&v),
            [("10.0.0.2".into(), true), ("10.0.0.10".into(), true)]
        );
        // An older peer's record: inline backends, and the union with records.
        let old = Service {
            backends: vec![b("10.0.0.9", false), b("10.0.0.2", false)],
            ..svc.clone()
        };
        v.apply(&Change::Upsert {
            id: (Kind::Service, "c2".into(), "ns/web".into()),
            value: Bytes::from(old.encode_to_vec()),
        });
        assert_eq!(
            ips(&v),
            [
                ("10.0.0.2".into(), true),
                ("10.0.0.9".into(), false),
                ("10.0.0.10".into(), true)
            ],
            "a backend record wins over an inline backend of the same IP"
        );
        v.apply(&Change::Delete {
            id: (Kind::ServiceBackend, "c2".into(), "ns/web/10.0.0.2".into()),
        });
        assert_eq!(v.services[&key].backends[0], b("10.0.0.2", false));
        v.apply(&Change::Delete {
            id: (Kind::Service, "c2".into(), "ns/web".into()),
        });
        assert!(v.services.is_empty());
    }
}
