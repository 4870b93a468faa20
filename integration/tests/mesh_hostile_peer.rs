//! A hostile peer (issue 11): a minimal gRPC server in Python
//! (tests/hostile_peer/server.py, not the project's server code) serves
//! GetCluster and Watch(exported) over mTLS with a certificate of this
//! project's PKI. Its snapshot holds honest records next to each kind of bad
//! record. On the receiving cluster none of the bad ones reaches the store or
//! the merged Watch, each is counted under its reason, the honest ones
//! arrive and the apiserver keeps running. A second receiving cluster gets
//! the same records in another order (endpoints and services first, the
//! nodes only later, after the test saw them pending) and ends up the same.
//! The peer is an older one (no `service-backends` capability, no `backends`
//! marker): it is still shown synced with every kind (its `services` marker
//! stands for its backends), and the backend records it sends anyway pass
//! the same rules as any (docs/mesh.md "Service backends").
//!
//! Needs python3 with grpcio and grpcio-tools (scripts/install-deps.sh).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::mesh_support::*;
use clustermesh_certs::InitOptions;
use clustermesh_integration::apiserver::Cluster;
use clustermesh_integration::eventually;
use clustermesh_integration::ports::free_port;
use clustermesh_integration::process::ChildProcess;
use clustermesh_proto::keys;
use clustermesh_proto::v1::{Kind, Node, PeerConfig, PeerStatus};
use prost::Message;
use serde_json::{Value, json};

/// This cluster's own pod range (its Node record) and service range (flag).
const OWN_POD_CIDR: &str = "10.2.0.0/16";
const SERVICE_CIDR: &str = "10.96.0.0/12";

struct Hostile {
    _dir: tempfile::TempDir,
    proc: ChildProcess,
    cfg: PeerConfig,
    release: PathBuf,
    cut: PathBuf,
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Starts the Python peer "alpha" (ID 1) serving `spec`, trusting `victim`'s CA.
async fn hostile(victim: &Cluster, mut spec: Value) -> Hostile {
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = dir.path().join("tls");
    clustermesh_certs::init(&InitOptions {
        cluster: "alpha".into(),
        out: tls.clone(),
        sans: vec![],
        force: false,
    })
    .expect("alpha's PKI");
    let release = dir.path().join("release");
    spec["cluster"] = json!({"name": "alpha", "id": 1, "max_connected_clusters": 255});
    spec["release_file"] = json!(release.display().to_string());
    let cut = dir.path().join("cut");
    spec["cut_file"] = json!(cut.display().to_string());
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).expect("spec");
    let port = free_port();
    let ready = dir.path().join("ready");
    let p = |x: &Path| x.display().to_string();
    let args = vec![
        p(&manifest_dir().join("tests/hostile_peer/server.py")),
        "--proto-root".into(),
        p(&manifest_dir().join("../proto")),
        "--port".into(),
        port.to_string(),
        "--cert".into(),
        p(&tls.join("server.crt")),
        "--key".into(),
        p(&tls.join("server.key")),
        "--client-ca".into(),
        p(&victim.tls_dir().join("ca.crt")),
        "--spec".into(),
        p(&spec_path),
        "--ready-file".into(),
        p(&ready),
    ];
    let mut proc = ChildProcess::spawn(
        &format!("hostile-peer-for-{}", victim.name),
        Path::new("python3"),
        &args,
        dir.path(),
    )
    .expect("spawning python3");
    let up = eventually("hostile peer ready", T, || async {
        ready.exists().then_some(())
    })
    .await;
    if up.is_err() || !proc.is_running() {
        panic!(
            "the hostile peer did not start (python3 with grpcio and grpcio-tools is needed: scripts/install-deps.sh): {}",
            proc.describe_failure()
        );
    }
    let ca_pem = std::fs::read_to_string(tls.join("ca.crt")).expect("alpha ca.crt");
    Hostile {
        _dir: dir,
        proc,
        cfg: PeerConfig {
            name: "alpha".into(),
            addresses: vec![format!("127.0.0.1:{port}")],
            ca_pem,
            enabled: true,
            cluster_id: 1,
            import_policies: true,
            ..Default::default()
        },
        release,
        cut,
    }
}

fn rec(kind: &str, key: &str, record: Value) -> Value {
    json!({"kind": kind, "key": key, "record": record})
}

fn node_rec(name: &str, cidr: &str) -> Value {
    rec(
        "KIND_NODE",
        name,
        json!({
            "name": name, "internal_ips": ["192.168.1.1"], "pod_cidrs": [cidr],
            "cluster": "alpha", "exported": true,
        }),
    )
}

fn ep_rec(ip: &str) -> Value {
    rec(
        "KIND_ENDPOINT",
        ip,
        json!({
            "ip": ip, "identity": 65792, "node_ip": "192.168.1.1", "node_name": "gw",
            "namespace": "shop", "pod": "web-1", "cluster": "alpha", "exported": true,
        }),
    )
}

fn id_rec(id: u32, labels: Value) -> Value {
    rec(
        "KIND_IDENTITY",
        &id.to_string(),
        json!({
            "id": id, "labels": labels, "cluster": "alpha", "exported": true,
        }),
    )
}

fn svc_rec(name: &str, backend: &str) -> Value {
    rec(
        "KIND_SERVICE",
        &format!("shop/{name}"),
        json!({
            "namespace": "shop", "name": name, "global": true,
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            "frontend_ips": ["172.20.0.10"],
            "backends": [{"ip": backend, "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "ready": true, "serving": true}],
            "cluster": "alpha", "exported": true,
        }),
    )
}

/// A backend record (docs/mesh.md "Service backends") of `shop/<service>`
/// under `key`, for the backend `ip`. This peer is an older one (it does not
/// advertise `service-backends`), but a hostile peer sends what it likes.
fn backend_rec(service: &str, key: &str, ip: &str) -> Value {
    rec(
        "KIND_SERVICE_BACKEND",
        key,
        json!({
            "namespace": "shop", "service": service,
            "backend": {"ip": ip, "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "ready": true, "serving": true},
            "cluster": "alpha", "exported": true,
        }),
    )
}

/// (nodes, everything else): honest records next to each kind of bad one.
fn records() -> (Vec<Value>, Vec<Value>) {
    let nodes = vec![
        node_rec("gw", "10.1.0.0/16"),         // honest
        node_rec("evil-default", "0.0.0.0/0"), // default_route
        node_rec("evil-steal", OWN_POD_CIDR),  // local_pod_cidr
    ];
    let rest = vec![
        id_rec(
            65792,
            json!({"k8s:app": "web", "clustermesh.io/cluster": "alpha"}),
        ), // honest
        id_rec(
            65793,
            json!({"k8s:app": "evil", "clustermesh.io/cluster": "beta"}),
        ), // foreign_cluster_label
        id_rec(
            65794,
            json!({"k8s:app": "evil", "k8s:clustermesh.io/cluster": "beta"}),
        ), // foreign_cluster_label
        id_rec(2, json!({"reserved:world": ""})), // reserved_identity
        ep_rec("10.1.0.5"),                       // honest
        ep_rec("10.2.0.9"),                       // local_pod_cidr
        ep_rec("10.50.0.7"),                      // outside every pod CIDR alpha announces: pending
        ep_rec("not-an-ip"),                      // bad_address
        ep_rec("10.96.0.20"),                     // local_service_cidr
        svc_rec("web", "10.1.0.5"),               // honest
        svc_rec("leak", "10.50.0.8"),             // backend outside alpha's CIDRs: pending
        backend_rec("web", "shop/web/10.1.0.6", "10.1.0.6"), // honest
        backend_rec("web", "shop/web/10.2.0.11", "10.2.0.11"), // local_pod_cidr
        backend_rec("web", "shop/web/10.1.0.99", "10.1.0.7"), // key_mismatch
        backend_rec("leak", "shop/leak/10.50.0.9", "10.50.0.9"), // outside alpha's CIDRs: pending
    ];
    (nodes, rest)
}

fn honest() -> BTreeSet<(Kind, String)> {
    [
        (Kind::Node, "gw"),
        (Kind::Identity, "65792"),
        (Kind::Endpoint, "10.1.0.5"),
        (Kind::Service, "shop/web"),
        (Kind::ServiceBackend, "shop/web/10.1.0.6"),
    ]
    .into_iter()
    .map(|(k, s)| (k, s.to_string()))
    .collect()
}

/// The refusals each reason must count (at least: a reconnect resends).
fn refusals() -> BTreeMap<String, u64> {
    [
        ("default_route", 1),
        ("local_pod_cidr", 3),
        ("key_mismatch", 1),
        ("foreign_cluster_label", 2),
        ("reserved_identity", 1),
        ("bad_address", 1),
        ("local_service_cidr", 1),
    ]
    .into_iter()
    .map(|(r, n)| (r.to_string(), n))
    .collect()
}

/// A receiving cluster: its own node (its pod range) and a service CIDR.
async fn victim(name: &str, id: u32) -> (Cluster, clustermesh_integration::watcher::Watcher) {
    let mut args = flags("30s");
    args.extend(["--service-cidr".to_string(), SERVICE_CIDR.to_string()]);
    let c = Cluster::start(name, id, 1, &args)
        .await
        .unwrap_or_else(|e| panic!("starting {name}: {e:#}"));
    let own = Node {
        name: "own-gw".into(),
        internal_ips: vec!["192.168.2.1".into()],
        pod_cidrs: vec![OWN_POD_CIDR.into()],
        cluster: name.into(),
        exported: true,
        ..Default::default()
    }
    .encode_to_vec();
    let mut ops = vec![put(Kind::Node, name, "own-gw", own.into())];
    ops.extend(markers(name));
    store(&c).await.apply(&ops).await.expect("own records");
    // The syncer reads this cluster's pod CIDRs from its view, as the merged
    // Watch does: wait until that shows the node.
    let mut w = merged_watcher(&c).await;
    w.until(T, "own node in the view", |m| {
        m.records
            .contains_key(&(Kind::Node, name.to_string(), "own-gw".to_string()))
    })
    .await
    .expect("own node");
    (c, w)
}

/// alpha's records in `c`'s store, as (kind, key).
async fn cached_records(c: &Cluster) -> BTreeSet<(Kind, String)> {
    let s = store(c).await;
    let mut out = BTreeSet::new();
    for k in cached(&s, "alpha").await {
        if let keys::StoreKey::Record { kind, key, .. } = keys::parse(&k) {
            out.insert((kind, key.to_string()));
        }
    }
    out
}

fn counted_as_expected(s: &PeerStatus) -> bool {
    refusals()
        .iter()
        .all(|(r, n)| s.rejected_by_reason.get(r).is_some_and(|got| got >= n))
        && s.pending_records == 3
}

fn check_final(name: &str, st: &PeerStatus, stored: &BTreeSet<(Kind, String)>) {
    println!("{name}: rejected_by_reason {:?}", st.rejected_by_reason);
    println!(
        "{name}: pending {} {:?}",
        st.pending_records, st.pending_by_reason
    );
    println!("{name}: last_error {}", st.last_error);
    assert_eq!(
        stored,
        &honest(),
        "{name}: only the honest records are stored"
    );
    let reasons: BTreeSet<&String> = st.rejected_by_reason.keys().collect();
    let want = refusals();
    assert_eq!(
        reasons,
        want.keys().collect(),
        "{name}: every refusal under its reason"
    );
    assert_eq!(
        st.pending_by_reason,
        [("outside_peer_pod_cidrs".to_string(), 3)].into(),
        "{name}: the endpoint, the service and the backend outside alpha's pod CIDRs wait"
    );
    assert!(
        st.connected,
        "{name}: the rest of the peer's records keep flowing"
    );
    assert!(
        st.synced.contains(&(Kind::ServiceBackend as i32)),
        "{name}: an older peer's services marker stands for its backends"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_peer_cannot_hijack_spoof_or_claim_our_ranges() {
    let (nodes, rest) = records();

    // --- Order A: nodes first, then identities, then endpoints and services.
    let (mut b, mut wb) = victim("beta", 2).await;
    let spec_a = json!({
        "snapshot": [nodes.clone(), rest.clone()],
        "snapshot_synced": ["KIND_NODE", "KIND_ENDPOINT", "KIND_IDENTITY", "KIND_SERVICE", "KIND_POLICY"],
    });
    let mut peer_a = hostile(&b, spec_a).await;
    register(&b, peer_a.cfg.clone())
        .await
        .expect("ConnectPeer alpha on beta");
    let st = wait_status(
        &b,
        "alpha",
        "alpha synced with its refusals counted",
        T,
        |s| crate::mesh_support::all_synced(s) && counted_as_expected(s),
    )
    .await;
    let stored_b = cached_records(&b).await;
    check_final("beta", &st, &stored_b);
    // The merged Watch (what node agents see) has the honest records only.
    wb.until(T, "alpha's honest records on beta's merged watch", |m| {
        honest()
            .iter()
            .all(|(k, key)| m.records.contains_key(&(*k, "alpha".into(), key.clone())))
            && m.synced.contains(&("alpha".into(), Kind::Endpoint))
    })
    .await
    .expect("merged watch");
    let merged: BTreeSet<(Kind, String)> = wb
        .mirror
        .records
        .keys()
        .filter(|(_, c, _)| c == "alpha")
        .map(|(k, _, key)| (*k, key.clone()))
        .collect();
    assert_eq!(merged, honest(), "no bad record on the merged watch");
    assert!(b.replicas[0].child.is_running(), "beta's apiserver runs on");
    assert!(peer_a.proc.is_running());

    // The peer cuts the stream; the resent snapshot counts every refusal
    // again, but each key is logged once.
    let first = st.rejected_by_reason.clone();
    std::fs::write(&peer_a.cut, b"cut").expect("cut the stream");
    let again = wait_status(
        &b,
        "alpha",
        "refusals counted again after the resend",
        T,
        |s| {
            first
                .iter()
                .all(|(r, n)| s.rejected_by_reason.get(r).is_some_and(|got| got > n))
        },
    )
    .await;
    println!("beta after the resend: {:?}", again.rejected_by_reason);
    assert_eq!(again.pending_records, 3, "pending stays pending");
    assert_eq!(cached_records(&b).await, honest());
    let log = b.api().child.log();
    let logged = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    let refused: u64 = refusals().values().sum();
    assert_eq!(
        logged("rejected record from peer") as u64,
        refused,
        "each refused record is logged once, not on every resend"
    );
    assert_eq!(
        logged("record held pending"),
        3,
        "pending records are logged once"
    );
    assert!(b.replicas[0].child.is_running(), "beta's apiserver runs on");
    assert_eq!(
        status(&b).await.cluster.map(|c| c.name),
        Some("beta".into())
    );

    // --- Order B: endpoints and services first (reversed), the nodes only
    // later, in an EVENTS batch after the snapshot.
    let mut rev = rest.clone();
    rev.reverse();
    let mut nodes_rev = nodes.clone();
    nodes_rev.reverse();
    let (mut g, _wg) = victim("gamma", 3).await;
    let spec_b = json!({
        "snapshot": [rev],
        "snapshot_synced": ["KIND_ENDPOINT", "KIND_IDENTITY", "KIND_SERVICE", "KIND_POLICY"],
        "later": nodes_rev,
        "later_synced": ["KIND_NODE"],
    });
    let mut peer_b = hostile(&g, spec_b).await;
    register(&g, peer_b.cfg.clone())
        .await
        .expect("ConnectPeer alpha on gamma");
    // Before any node: the honest endpoint and service wait with the two
    // that never get a node; none of them is written.
    let st = wait_status(&g, "alpha", "endpoints and services pending", T, |s| {
        s.synced.len() + 1 == crate::mesh_support::imported_kinds(s) && s.pending_records == 6
    })
    .await;
    println!("gamma before the nodes: pending {:?}", st.pending_by_reason);
    let before = cached_records(&g).await;
    assert!(
        !before
            .iter()
            .any(|(k, _)| matches!(k, Kind::Endpoint | Kind::Service | Kind::ServiceBackend)),
        "nothing pending is written: {before:?}"
    );
    std::fs::write(&peer_b.release, b"go").expect("release the nodes");
    let st = wait_status(
        &g,
        "alpha",
        "nodes arrived, honest records admitted",
        T,
        |s| crate::mesh_support::all_synced(s) && counted_as_expected(s),
    )
    .await;
    let stored_g = match eventually("gamma stores the honest records", T, || async {
        let s = cached_records(&g).await;
        (s == honest()).then_some(s)
    })
    .await
    {
        Ok(s) => s,
        Err(e) => panic!("{e}: {:?}", cached_records(&g).await),
    };
    check_final("gamma", &st, &stored_g);
    assert_eq!(stored_b, stored_g, "the order of arrival does not matter");
    let keys_of = |s: &PeerStatus| s.rejected_by_reason.keys().cloned().collect::<Vec<_>>();
    let st_b = peer_status(&b, "alpha")
        .await
        .expect("beta's status of alpha");
    assert_eq!(keys_of(&st_b), keys_of(&st));
    assert_eq!(st_b.pending_by_reason, st.pending_by_reason);
    assert!(
        g.replicas[0].child.is_running(),
        "gamma's apiserver runs on"
    );
    assert!(peer_b.proc.is_running());
}
