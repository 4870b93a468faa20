//! Shared helpers of the mesh_* tests: clusters with short mesh timings,
//! peer registration through the Admin RPC, records written straight into a
//! cluster's store (as the exporter would), status and cache inspection.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use clustermesh_apiserver::store::{EtcdOptions, Store, WriteOp};
use clustermesh_certs::Role;
use clustermesh_integration::apiserver::Cluster;
use clustermesh_integration::eventually;
use clustermesh_integration::watcher::Watcher;
use clustermesh_proto::v1::{
    Backend, BackendPort, Endpoint, Identity, Kind, Node, PeerConfig, PeerStatus, Scope, Service,
    ServicePort, StatusRequest, StatusResponse, SyncedMarker,
    cluster_mesh_client::ClusterMeshClient,
};
use clustermesh_proto::{RECORD_KINDS, keys};
use prost::Message;

pub const T: Duration = Duration::from_secs(20);

/// Mesh timings short enough for tests.
pub fn flags(stale_ttl: &str) -> Vec<String> {
    [
        "--heartbeat-interval",
        "200ms",
        "--peer-timeout",
        "1s",
        "--stale-ttl",
        stale_ttl,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub async fn start(name: &str, id: u32, stale_ttl: &str) -> Cluster {
    Cluster::start(name, id, 1, &flags(stale_ttl))
        .await
        .unwrap_or_else(|e| panic!("starting cluster {name}: {e:#}"))
}

pub async fn store(c: &Cluster) -> Store {
    Store::connect(&EtcdOptions {
        endpoints: c.etcd.endpoints(),
        ..Default::default()
    })
    .await
    .expect("store")
}

pub fn ca_pem(c: &Cluster) -> String {
    std::fs::read_to_string(c.tls_dir().join("ca.crt")).expect("ca.crt")
}

/// The registration of `peer` as its Admin `connect` would write it.
pub fn peer_config(peer: &Cluster) -> PeerConfig {
    peer.peer_config().expect("peer config")
}

/// ConnectPeer on `on`.
pub async fn register(on: &Cluster, peer: PeerConfig) -> Result<(), tonic::Status> {
    on.register_peer(peer).await
}

/// Registers each cluster as the other's peer, importing each other's
/// policies (these tests mirror every kind; docs/policy.md for the default).
pub async fn connect(a: &Cluster, b: &Cluster) {
    for (on, peer) in [(a, b), (b, a)] {
        let mut cfg = peer_config(peer);
        cfg.import_policies = true;
        register(on, cfg)
            .await
            .unwrap_or_else(|e| panic!("ConnectPeer {} on {}: {e}", peer.name, on.name));
    }
}

pub async fn status(c: &Cluster) -> StatusResponse {
    let ch = c.api().channel(Role::Admin).await.expect("admin channel");
    ClusterMeshClient::new(ch)
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner()
}

pub async fn peer_status(c: &Cluster, peer: &str) -> Option<PeerStatus> {
    status(c).await.peers.into_iter().find(|p| p.name == peer)
}

/// Waits until `peer`'s status on `c` satisfies `f`; returns it.
pub async fn wait_status(
    c: &Cluster,
    peer: &str,
    what: &str,
    timeout: Duration,
    f: impl Fn(&PeerStatus) -> bool,
) -> PeerStatus {
    let r = eventually(what, timeout, || async {
        peer_status(c, peer).await.filter(|s| f(s))
    })
    .await;
    match r {
        Ok(s) => s,
        Err(e) => panic!("{e}; last status: {:?}", peer_status(c, peer).await),
    }
}

/// How many kinds a peer's status can show synced: every kind, or every kind
/// but policies when it was registered without `--import-policies` (its
/// policies are not even asked for, docs/policy.md).
pub fn imported_kinds(s: &PeerStatus) -> usize {
    RECORD_KINDS
        .iter()
        .filter(|k| s.import_policies || **k != Kind::Policy)
        .count()
}

/// Every kind the peer is mirrored for is synced.
pub fn all_synced(s: &PeerStatus) -> bool {
    s.synced.len() == imported_kinds(s)
}

/// Every key mirrored from `peer` in `c`'s store (cache and sync markers).
pub async fn cached(s: &Store, peer: &str) -> Vec<String> {
    let mut out = Vec::new();
    for k in RECORD_KINDS {
        let (_, kvs) = s.list(&keys::cache_prefix(k, peer)).await.expect("list");
        out.extend(kvs.into_iter().map(|kv| kv.key));
    }
    let (_, kvs) = s.list(&keys::synced_prefix(peer)).await.expect("list");
    out.extend(kvs.into_iter().map(|kv| kv.key));
    out
}

pub async fn merged_watcher(c: &Cluster) -> Watcher {
    let ch = c.api().channel(Role::Agent).await.expect("agent channel");
    Watcher::open(ch, Scope::Merged, &[], None)
        .await
        .expect("merged watch")
}

/// Reads the watcher for `d` (heartbeats keep the stream busy).
pub async fn read_for(w: &mut Watcher, d: Duration) {
    let end = Instant::now() + d;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        if left.is_zero() || w.next(left).await.is_err() {
            break;
        }
    }
}

// ---------------------------------------------------------------- records --

/// The pod CIDR the test clusters' nodes announce: peers only accept
/// endpoints and backends inside a pod CIDR of the sending cluster's nodes
/// (docs/mesh.md "Ingest rules"), so every node carries its cluster's range.
pub fn pod_cidr(cluster: &str) -> &'static str {
    match cluster {
        "alpha" => "10.1.0.0/16",
        "beta" => "10.2.0.0/16",
        "gamma" => "10.3.0.0/16",
        _ => "10.9.0.0/16",
    }
}

pub fn node(cluster: &str, name: &str, ip: &str, exported: bool) -> Bytes {
    Node {
        name: name.into(),
        internal_ips: vec![ip.into()],
        pod_cidrs: vec![pod_cidr(cluster).into()],
        cluster: cluster.into(),
        exported,
        ..Default::default()
    }
    .encode_to_vec()
    .into()
}

pub fn identity(cluster: &str, id: u32, app: &str) -> Bytes {
    Identity {
        id,
        labels: [
            ("k8s:app".to_string(), app.to_string()),
            ("clustermesh.io/cluster".to_string(), cluster.to_string()),
        ]
        .into(),
        cluster: cluster.into(),
        exported: true,
    }
    .encode_to_vec()
    .into()
}

pub fn endpoint(cluster: &str, ip: &str, identity: u32) -> Bytes {
    Endpoint {
        ip: ip.into(),
        identity,
        node_ip: "192.168.0.1".into(),
        node_name: "gw".into(),
        namespace: "shop".into(),
        pod: format!("pod-{ip}"),
        cluster: cluster.into(),
        exported: true,
        ..Default::default()
    }
    .encode_to_vec()
    .into()
}

pub fn service(cluster: &str, ns: &str, name: &str, backends: &[&str]) -> Bytes {
    Service {
        namespace: ns.into(),
        name: name.into(),
        global: true,
        // What the sources write for a global service without `shared: "false"`.
        shared: true,
        ports: vec![ServicePort {
            name: "http".into(),
            port: 80,
            protocol: "TCP".into(),
        }],
        frontend_ips: vec!["10.96.0.10".into()],
        backends: backends
            .iter()
            .map(|ip| Backend {
                ip: ip.to_string(),
                ports: vec![BackendPort {
                    name: "http".into(),
                    port: 8080,
                    protocol: "TCP".into(),
                }],
                ready: true,
                serving: true,
                ..Default::default()
            })
            .collect(),
        cluster: cluster.into(),
        exported: true,
        ..Default::default()
    }
    .encode_to_vec()
    .into()
}

/// Sync markers of every kind for `cluster` (what the exporter writes once
/// its source has listed everything).
pub fn markers(cluster: &str) -> Vec<WriteOp> {
    RECORD_KINDS
        .iter()
        .map(|k| {
            WriteOp::put(
                keys::synced(cluster, *k),
                SyncedMarker {
                    cluster: cluster.into(),
                    kind: *k as i32,
                    records: 0,
                    unix_millis: 1,
                    digest: None,
                }
                .encode_to_vec(),
            )
        })
        .collect()
}

pub fn put(kind: Kind, cluster: &str, key: &str, value: Bytes) -> WriteOp {
    WriteOp::put(keys::state(kind, cluster, key), value)
}

/// First identity number of cluster `id` (255-cluster mode) plus `n`.
/// alpha's exported gateway node "gw" and identity `id` (app=`app`): where
/// most mesh tests' seed of alpha starts.
pub fn alpha_gateway_and_identity(id: u32, app: &str) -> Vec<WriteOp> {
    vec![
        put(
            Kind::Node,
            "alpha",
            "gw",
            node("alpha", "gw", "192.168.1.1", true),
        ),
        put(
            Kind::Identity,
            "alpha",
            &id.to_string(),
            identity("alpha", id, app),
        ),
    ]
}

/// [`alpha_gateway_and_identity`] (app=web) plus the endpoint 10.1.0.5 with
/// that identity and the global service shop/web it backs.
pub fn alpha_web(id: u32) -> Vec<WriteOp> {
    let mut ops = alpha_gateway_and_identity(id, "web");
    ops.push(put(
        Kind::Endpoint,
        "alpha",
        "10.1.0.5",
        endpoint("alpha", "10.1.0.5", id),
    ));
    ops.push(put(
        Kind::Service,
        "alpha",
        "shop/web",
        service("alpha", "shop", "web", &["10.1.0.5"]),
    ));
    ops
}

pub fn ident_no(id: u32, n: u32) -> u32 {
    (id << 16) | (256 + n)
}
