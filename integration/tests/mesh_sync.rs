//! Two clusters connected through the Admin RPC: each one's exported records
//! reach the other's merged Watch and global service lookup (grouped by
//! cluster); non-exported records never leave; the propagation time of one
//! add and one delete is measured; DisconnectPeer withdraws at once.

use std::time::{Duration, Instant};

use crate::mesh_support::*;
use clustermesh_apiserver::store::WriteOp;
use clustermesh_certs::Role;
use clustermesh_proto::keys;
use clustermesh_proto::v1::{
    DisconnectPeerRequest, EventType, Kind, LookupServiceRequest, admin_client::AdminClient,
    cluster_mesh_client::ClusterMeshClient,
};

fn has(
    w: &clustermesh_integration::watcher::Watcher,
    kind: Kind,
    cluster: &str,
    key: &str,
) -> bool {
    w.mirror
        .records
        .contains_key(&(kind, cluster.to_string(), key.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_records_flow_between_peers_and_disconnect_withdraws() {
    let a = start("alpha", 1, "30s").await;
    let b = start("beta", 2, "30s").await;
    let (sa, sb) = (store(&a).await, store(&b).await);
    let id_a = ident_no(1, 0);
    let mut ops = alpha_web(id_a);
    ops.push(put(
        Kind::Node,
        "alpha",
        "secret",
        node("alpha", "secret", "192.168.1.2", false),
    ));
    ops.extend(markers("alpha"));
    sa.apply(&ops).await.unwrap();
    // Beta's node announces the pod CIDR its service's backends live in:
    // without it alpha would hold the service pending (docs/mesh.md).
    let mut ops = vec![
        put(
            Kind::Node,
            "beta",
            "gw",
            node("beta", "gw", "192.168.2.1", true),
        ),
        put(
            Kind::Service,
            "beta",
            "shop/web",
            service("beta", "shop", "web", &["10.2.0.7", "10.2.0.8"]),
        ),
    ];
    ops.extend(markers("beta"));
    sb.apply(&ops).await.unwrap();

    let mut wb = merged_watcher(&b).await;
    let t0 = Instant::now();
    connect(&a, &b).await;
    wb.until(T, "alpha's exported records on beta", |m| {
        [
            (Kind::Node, "gw"),
            (Kind::Identity, id_a.to_string().as_str()),
            (Kind::Endpoint, "10.1.0.5"),
            (Kind::Service, "shop/web"),
        ]
        .iter()
        .all(|(k, key)| {
            m.records
                .contains_key(&(*k, "alpha".into(), key.to_string()))
        }) && m.synced.contains(&("alpha".into(), Kind::Endpoint))
    })
    .await
    .unwrap();
    println!("initial sync after connect: {:?}", t0.elapsed());
    assert!(
        !has(&wb, Kind::Node, "alpha", "secret"),
        "a non-exported record never leaves its cluster"
    );

    // The global lookup on beta groups backends by cluster.
    let agent_b = b.api().channel(Role::Agent).await.unwrap();
    let look = ClusterMeshClient::new(agent_b.clone())
        .lookup_service(LookupServiceRequest {
            namespace: "shop".into(),
            name: "web".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let groups: Vec<(String, Vec<String>)> = look
        .clusters
        .iter()
        .map(|c| {
            (
                c.cluster.clone(),
                c.backends.iter().map(|b| b.ip.clone()).collect(),
            )
        })
        .collect();
    assert_eq!(
        groups,
        [
            ("alpha".to_string(), vec!["10.1.0.5".to_string()]),
            (
                "beta".to_string(),
                vec!["10.2.0.7".to_string(), "10.2.0.8".to_string()]
            ),
        ]
    );
    assert_eq!(look.selected.len(), 3, "affinity none: every ready backend");

    // And the other way: alpha sees beta's service.
    let mut wa = merged_watcher(&a).await;
    wa.until(T, "beta's service on alpha", |m| {
        m.records
            .contains_key(&(Kind::Service, "beta".into(), "shop/web".into()))
    })
    .await
    .unwrap();

    // Propagation of one add and one delete (A's store → B's merged Watch).
    let t = Instant::now();
    sa.apply(&[put(
        Kind::Node,
        "alpha",
        "n2",
        node("alpha", "n2", "192.168.1.3", true),
    )])
    .await
    .unwrap();
    wb.until(T, "n2 on beta", |m| {
        m.records
            .contains_key(&(Kind::Node, "alpha".into(), "n2".into()))
    })
    .await
    .unwrap();
    let add = t.elapsed();
    let t = Instant::now();
    sa.apply(&[WriteOp::delete(keys::state(Kind::Node, "alpha", "n2"))])
        .await
        .unwrap();
    wb.until(T, "n2 gone from beta", |m| {
        !m.records
            .contains_key(&(Kind::Node, "alpha".into(), "n2".into()))
    })
    .await
    .unwrap();
    let del = t.elapsed();
    println!("propagation A store -> B merged watch: add {add:?}, delete {del:?}");

    let st = wait_status(&b, "alpha", "alpha synced on beta", T, |s| {
        s.connected && crate::mesh_support::all_synced(s)
    })
    .await;
    println!("beta's status of alpha: {st:?}");
    assert_eq!(st.rejected_records, 0);
    assert!(
        st.counts
            .iter()
            .any(|c| c.kind == Kind::Node as i32 && c.count == 1)
    );
    assert!(!st.withdrawn);
    // Every replica's Status reads the persisted status, so it also has the cluster ID.
    assert_eq!(st.cluster_id, 1);

    // Disconnect on beta: alpha's records go at once.
    let t = Instant::now();
    let existed = AdminClient::new(b.api().channel(Role::Admin).await.unwrap())
        .disconnect_peer(DisconnectPeerRequest {
            name: "alpha".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .existed;
    assert!(existed);
    wb.until(T, "alpha withdrawn from beta", |m| {
        !m.records.keys().any(|(_, c, _)| c == "alpha")
            && !m.synced.iter().any(|(c, _)| c == "alpha")
    })
    .await
    .unwrap();
    println!(
        "disconnect -> withdrawn on beta's merged watch: {:?}",
        t.elapsed()
    );
    assert!(
        wb.batches
            .iter()
            .flat_map(|b| &b.events)
            .any(|e| e.cluster == "alpha" && e.r#type == EventType::Delete as i32),
        "downstream saw the withdrawal"
    );
    // Nothing comes back (the stopped loop writes nothing after the disconnect).
    read_for(&mut wb, Duration::from_millis(1500)).await;
    assert!(cached(&sb, "alpha").await.is_empty(), "nothing left behind");
    assert!(
        peer_status(&b, "alpha").await.is_none(),
        "status gone with the peer"
    );
    assert!(sb.get(&keys::peer_status("alpha")).await.unwrap().is_none());
    assert!(!has(&wb, Kind::Node, "alpha", "gw"));
}
