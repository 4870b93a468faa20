//! A pod added to cluster A's manifests (as a ready backend of a global
//! service) appears in cluster B's LookupService, and disappears when it is
//! removed; the propagation times are printed (figures, not assertions).

use std::time::Instant;

use crate::mesh_support::*;
use clustermesh_certs::Role;
use clustermesh_integration::apiserver::Cluster;
use clustermesh_integration::manifests as m;
use clustermesh_proto::v1::{LookupServiceRequest, cluster_mesh_client::ClusterMeshClient};

fn cluster_files(dir: &std::path::Path, c: &str, net: u8, backends: &[&str]) {
    m::write(dir, "ns.yaml", &m::namespace("shop", &[])).unwrap();
    m::write(
        dir,
        "node.yaml",
        &m::node(
            &format!("{c}-gw"),
            &format!("192.168.{net}.10"),
            &format!("10.{net}.0.0/24"),
            true,
        ),
    )
    .unwrap();
    let mut docs = Vec::new();
    for ip in backends {
        let name = format!("backend-{}", ip.replace('.', "-"));
        docs.push(m::pod(
            "shop",
            &name,
            &[("app", "backend")],
            ip,
            &format!("{c}-gw"),
            &format!("192.168.{net}.10"),
            8080,
        ));
    }
    docs.push(m::service(
        "shop",
        "backend",
        &format!("10.9{net}.0.10"),
        80,
        8080,
        true,
        backends,
    ));
    m::write(dir, "backend.yaml", &m::docs(&docs)).unwrap();
}

async fn backends_seen_from(c: &Cluster) -> Vec<String> {
    let ch = c.api().channel(Role::Agent).await.unwrap();
    match ClusterMeshClient::new(ch)
        .lookup_service(LookupServiceRequest {
            namespace: "shop".into(),
            name: "backend".into(),
        })
        .await
    {
        Ok(r) => r
            .into_inner()
            .clusters
            .into_iter()
            .flat_map(|g| g.backends.into_iter().map(|b| b.ip))
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_added_and_removed_in_a_shows_in_b_lookup() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    cluster_files(da.path(), "a", 1, &["10.1.0.11"]);
    cluster_files(db.path(), "b", 2, &["10.2.0.11"]);
    let with_source = |d: &std::path::Path| {
        let mut f = flags("0");
        f.extend(["--source".to_string(), format!("manifests:{}", d.display())]);
        f
    };
    let a = Cluster::start("pa", 1, 1, &with_source(da.path()))
        .await
        .unwrap();
    let b = Cluster::start("pb", 2, 1, &with_source(db.path()))
        .await
        .unwrap();
    connect(&a, &b).await;
    clustermesh_integration::eventually("B sees A's backend", T, || async {
        backends_seen_from(&b)
            .await
            .contains(&"10.1.0.11".to_string())
            .then_some(())
    })
    .await
    .unwrap();

    // Add a pod (and its EndpointSlice entry) in A.
    let t = Instant::now();
    cluster_files(da.path(), "a", 1, &["10.1.0.11", "10.1.0.12"]);
    clustermesh_integration::eventually("the new backend in B's lookup", T, || async {
        backends_seen_from(&b)
            .await
            .contains(&"10.1.0.12".to_string())
            .then_some(())
    })
    .await
    .unwrap();
    let added = t.elapsed();

    // Remove it again.
    let t = Instant::now();
    cluster_files(da.path(), "a", 1, &["10.1.0.11"]);
    clustermesh_integration::eventually("the backend gone from B's lookup", T, || async {
        (!backends_seen_from(&b)
            .await
            .contains(&"10.1.0.12".to_string()))
        .then_some(())
    })
    .await
    .unwrap();
    let removed = t.elapsed();
    println!(
        "pod in A → B's lookup: added after {added:?}, removed after {removed:?} (manifest poll 200 ms + export + mesh sync + lookup polling 20 ms)"
    );
    assert_eq!(
        backends_seen_from(&b).await.len(),
        2,
        "A's remaining backend and B's own"
    );
}
