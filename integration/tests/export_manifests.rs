//! Cluster state export from a manifests directory into the store, seen
//! through a merged Watch: add, relabel (new identity, old one released
//! after the grace period), delete, and a broken file that loses nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use clustermesh_certs::Role;
use clustermesh_integration::apiserver::Cluster;
use clustermesh_integration::manifests as m;
use clustermesh_integration::watcher::Watcher;
use clustermesh_proto::mirror::Mirror;
use clustermesh_proto::v1::{
    BatchType, Endpoint, EventType, Identity, Kind, Scope, StatusRequest,
    cluster_mesh_client::ClusterMeshClient,
};
use clustermesh_proto::{ClusterMode, IdentityKind, RECORD_KINDS};
use prost::Message;

const T: Duration = Duration::from_secs(15);

fn endpoint(mirror: &Mirror, ip: &str) -> Option<Endpoint> {
    mirror
        .records
        .get(&(Kind::Endpoint, "c1".to_string(), ip.to_string()))
        .and_then(|v| Endpoint::decode(v.as_ref()).ok())
}

fn identities(mirror: &Mirror) -> BTreeMap<u32, Identity> {
    mirror
        .records
        .iter()
        .filter(|((k, _, _), _)| *k == Kind::Identity)
        .filter_map(|(_, v)| Identity::decode(v.as_ref()).ok())
        .map(|i| (i.id, i))
        .collect()
}

fn base(dir: &std::path::Path) {
    m::write(dir, "ns.yaml", &m::docs(&[m::namespace("shop", &[])])).unwrap();
    m::write(
        dir,
        "nodes.yaml",
        &m::node("gw", "192.168.1.10", "10.1.0.0/24", true),
    )
    .unwrap();
    m::write(
        dir,
        "frontend.yaml",
        &m::pod(
            "shop",
            "frontend-1",
            &[("app", "frontend")],
            "10.1.0.5",
            "gw",
            "192.168.1.10",
            80,
        ),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_edits_flow_into_the_store() {
    let dir = tempfile::tempdir().unwrap();
    base(dir.path());
    let args: Vec<String> = [
        "--source".into(),
        format!("manifests:{}", dir.path().display()),
        "--identity-gc-grace".into(),
        "1s".into(),
    ]
    .into();
    let c = Cluster::start("c1", 1, 1, &args).await.unwrap();
    let ch = c.api().channel(Role::Agent).await.unwrap();
    let mut w = Watcher::open(ch.clone(), Scope::Merged, &[], None)
        .await
        .unwrap();

    // Everything exported and every kind marked synced.
    w.until(T, "all kinds synced", |m| {
        RECORD_KINDS
            .iter()
            .all(|k| m.synced.contains(&("c1".to_string(), *k)))
    })
    .await
    .unwrap();
    let fe = endpoint(&w.mirror, "10.1.0.5").expect("frontend endpoint");
    let mode = ClusterMode::Max255;
    assert!(
        matches!(
            mode.classify(fe.identity),
            Ok(IdentityKind::Cluster { cluster_id: 1, .. })
        ),
        "{}",
        fe.identity
    );
    let ids = identities(&w.mirror);
    let fe_id = &ids[&fe.identity];
    assert_eq!(
        fe_id.labels.get("app").map(String::as_str),
        Some("frontend")
    );
    assert_eq!(
        fe_id
            .labels
            .get("clustermesh.io/cluster")
            .map(String::as_str),
        Some("c1")
    );
    assert_eq!(fe.node_ip, "192.168.1.10");

    // Add a pod with new labels → its endpoint and a new identity.
    m::write(
        dir.path(),
        "backend.yaml",
        &m::pod(
            "shop",
            "backend-1",
            &[("app", "backend")],
            "10.1.0.6",
            "gw",
            "192.168.1.10",
            8080,
        ),
    )
    .unwrap();
    w.until(T, "backend endpoint", |m| endpoint(m, "10.1.0.6").is_some())
        .await
        .unwrap();
    let be = endpoint(&w.mirror, "10.1.0.6").unwrap();
    assert_ne!(be.identity, fe.identity, "new label set, new identity");
    assert!(identities(&w.mirror).contains_key(&be.identity));

    // A second pod with the frontend's labels shares its identity.
    m::write(
        dir.path(),
        "frontend2.yaml",
        &m::pod(
            "shop",
            "frontend-2",
            &[("app", "frontend")],
            "10.1.0.7",
            "gw",
            "192.168.1.10",
            80,
        ),
    )
    .unwrap();
    w.until(T, "second frontend", |m| endpoint(m, "10.1.0.7").is_some())
        .await
        .unwrap();
    assert_eq!(
        endpoint(&w.mirror, "10.1.0.7").unwrap().identity,
        fe.identity
    );

    // Relabel the backend → new identity; the old one released after the grace period.
    m::write(
        dir.path(),
        "backend.yaml",
        &m::pod(
            "shop",
            "backend-1",
            &[("app", "backend"), ("tier", "gold")],
            "10.1.0.6",
            "gw",
            "192.168.1.10",
            8080,
        ),
    )
    .unwrap();
    w.until(T, "relabelled backend", |m| {
        endpoint(m, "10.1.0.6").is_some_and(|e| e.identity != be.identity)
    })
    .await
    .unwrap();
    let relabelled = endpoint(&w.mirror, "10.1.0.6").unwrap().identity;
    assert!(
        identities(&w.mirror).contains_key(&be.identity),
        "old identity kept during the grace period"
    );
    w.until(T, "old identity released", |m| {
        !identities(m).contains_key(&be.identity)
    })
    .await
    .unwrap();
    assert!(identities(&w.mirror).contains_key(&relabelled));

    // A syntactically broken file: a clear error naming the file, nothing lost.
    m::write(
        dir.path(),
        "backend.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: [unclosed\n",
    )
    .unwrap();
    let mut client = ClusterMeshClient::new(ch.clone());
    let mut errors = Vec::new();
    for _ in 0..100 {
        errors = client
            .status(StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .source_errors;
        if !errors.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].file.ends_with("backend.yaml") && errors[0].line > 0,
        "{errors:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.until(T, "nothing lost", |m| endpoint(m, "10.1.0.6").is_some())
        .await
        .unwrap();
    assert!(
        c.api().child.log().contains("backend.yaml"),
        "error in the log too"
    );

    // Delete the frontend pods → their endpoints go.
    std::fs::remove_file(dir.path().join("frontend.yaml")).unwrap();
    std::fs::remove_file(dir.path().join("frontend2.yaml")).unwrap();
    w.until(T, "frontends gone", |m| {
        endpoint(m, "10.1.0.5").is_none() && endpoint(m, "10.1.0.7").is_none()
    })
    .await
    .unwrap();

    // No record was ever deleted and re-added with the same value along the way.
    let deletes = w
        .batches
        .iter()
        .filter(|b| b.r#type == BatchType::Events as i32)
        .flat_map(|b| b.events.iter())
        .filter(|e| e.r#type == EventType::Delete as i32 && e.kind == Kind::Node as i32)
        .count();
    assert_eq!(
        deletes, 0,
        "the node never changed, so it was never deleted"
    );
}
