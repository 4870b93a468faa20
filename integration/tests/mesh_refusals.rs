//! Refusals of the mesh syncer and of the serving side, each with a clear
//! error and nothing written: a registration whose ID or name does not match
//! what the peer says; a duplicate cluster ID (refused by the Admin RPC); a
//! peer sending identities outside its range or records claiming another
//! cluster; a peer whose CA we do not trust; `remote` certificates of
//! clusters that are not registered (or not signed by the registered CA);
//! a `remote` certificate used for an Admin call.

use std::time::Duration;

use crate::mesh_support::*;
use clustermesh_certs::{InitOptions, Role, cert_file, dial, key_file};
use clustermesh_proto::v1::{
    DisconnectPeerRequest, GetClusterRequest, Kind, ListPeersRequest, PeerConfig,
    admin_client::AdminClient, cluster_mesh_client::ClusterMeshClient,
};
use tonic::Code;

fn other_pki(name: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    clustermesh_certs::init(&InitOptions {
        cluster: name.into(),
        out: dir.path().join("tls"),
        sans: vec![],
        force: false,
    })
    .unwrap();
    let ca = std::fs::read_to_string(dir.path().join("tls/ca.crt")).unwrap();
    (dir, ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatched_duplicate_untrusted_and_out_of_range_peers_are_refused() {
    let a = start("alpha", 1, "30s").await;
    let b = start("beta", 2, "30s").await;
    let (sa, sb) = (store(&a).await, store(&b).await);
    let id_ok = ident_no(1, 0);
    let mut ops = alpha_gateway_and_identity(id_ok, "web");
    ops.extend(markers("alpha"));
    sa.apply(&ops).await.unwrap();
    // Alpha accepts beta's remote certificate.
    register(&a, peer_config(&b)).await.unwrap();

    // 1. Registered on beta with the wrong cluster ID.
    let mut wrong_id = peer_config(&a);
    wrong_id.cluster_id = 9;
    register(&b, wrong_id).await.unwrap();
    // 2. Alpha's address registered under another name.
    let mut wrong_name = peer_config(&a);
    wrong_name.name = "gamma".into();
    wrong_name.cluster_id = 3;
    register(&b, wrong_name).await.unwrap();
    // 3. A peer whose CA is not the one that signed its server certificate.
    let (_pki, foreign_ca) = other_pki("epsilon");
    let mut untrusted = peer_config(&a);
    untrusted.name = "epsilon".into();
    untrusted.cluster_id = 5;
    untrusted.ca_pem = foreign_ca.clone();
    register(&b, untrusted).await.unwrap();

    let st = wait_status(&b, "alpha", "ID mismatch reported", T, |s| {
        !s.last_error.is_empty()
    })
    .await;
    println!("wrong ID    -> {}", st.last_error);
    assert!(
        st.last_error.contains("registered with ID 9"),
        "{}",
        st.last_error
    );
    assert!(!st.connected);
    let st = wait_status(&b, "gamma", "name mismatch reported", T, |s| {
        !s.last_error.is_empty()
    })
    .await;
    println!("wrong name  -> {}", st.last_error);
    assert!(
        st.last_error.contains("answers as cluster \"alpha\""),
        "{}",
        st.last_error
    );
    let st = wait_status(&b, "epsilon", "untrusted CA reported", T, |s| {
        !s.last_error.is_empty()
    })
    .await;
    println!("foreign CA  -> {}", st.last_error);
    assert!(
        st.last_error.contains("not issued by the CA registered"),
        "{}",
        st.last_error
    );
    assert!(!st.connected && st.failures >= 1);

    // 4. Duplicate cluster IDs are refused by the Admin RPC itself.
    let mut dup = peer_config(&a);
    dup.name = "delta".into();
    dup.cluster_id = 9;
    let e = register(&b, dup.clone()).await.unwrap_err();
    println!("duplicate ID -> {:?}: {}", e.code(), e.message());
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("already used by peer alpha"),
        "{}",
        e.message()
    );
    dup.cluster_id = 2;
    let e = register(&b, dup).await.unwrap_err();
    assert!(
        e.message().contains("this cluster's own ID"),
        "{}",
        e.message()
    );

    // Nothing of any of them was written.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for p in ["alpha", "gamma", "epsilon", "delta"] {
        assert!(cached(&sb, p).await.is_empty(), "nothing cached for {p}");
    }

    // 5. Fix the registrations; alpha now sends records outside its range.
    let admin_b = AdminClient::new(b.api().channel(Role::Admin).await.unwrap());
    for p in ["gamma", "epsilon"] {
        admin_b
            .clone()
            .disconnect_peer(DisconnectPeerRequest { name: p.into() })
            .await
            .unwrap();
    }
    register(&b, peer_config(&a)).await.unwrap();
    let stolen = ident_no(2, 7); // beta's range
    sa.apply(&[
        put(
            Kind::Identity,
            "alpha",
            &stolen.to_string(),
            identity("alpha", stolen, "evil"),
        ),
        put(
            Kind::Endpoint,
            "alpha",
            "10.1.0.66",
            endpoint("alpha", "10.1.0.66", stolen),
        ),
        put(
            Kind::Endpoint,
            "alpha",
            "10.1.0.5",
            endpoint("alpha", "10.1.0.5", id_ok),
        ),
        put(
            Kind::Node,
            "alpha",
            "liar",
            node("beta", "liar", "192.168.2.1", true),
        ),
    ])
    .await
    .unwrap();
    let st = wait_status(&b, "alpha", "alpha synced with rejections", T, |s| {
        s.connected && crate::mesh_support::all_synced(s) && s.rejected_records >= 3
    })
    .await;
    println!(
        "rejected {} records; last error: {}",
        st.rejected_records, st.last_error
    );
    assert_eq!(st.rejected_records, 3);
    assert!(
        st.last_error.starts_with("rejected record:"),
        "{}",
        st.last_error
    );
    let mut keys_b = cached(&sb, "alpha").await;
    keys_b.retain(|k| k.contains("/cache/"));
    keys_b.sort();
    let mut want = vec![
        clustermesh_proto::keys::cache(Kind::Node, "alpha", "gw"),
        clustermesh_proto::keys::cache(Kind::Identity, "alpha", &id_ok.to_string()),
        clustermesh_proto::keys::cache(Kind::Endpoint, "alpha", "10.1.0.5"),
    ];
    want.sort();
    assert_eq!(keys_b, want, "only valid records are written");
    // Live: a valid record turned invalid is withdrawn, not kept stale.
    sa.apply(&[put(
        Kind::Endpoint,
        "alpha",
        "10.1.0.5",
        endpoint("alpha", "10.1.0.5", stolen),
    )])
    .await
    .unwrap();
    wait_status(&b, "alpha", "live rejection counted", T, |s| {
        s.rejected_records == 4
    })
    .await;
    clustermesh_integration::eventually("invalid update withdrawn", T, || async {
        let k = clustermesh_proto::keys::cache(Kind::Endpoint, "alpha", "10.1.0.5");
        sb.get(&k).await.ok()?.is_none().then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_certificates_need_a_registered_peer_and_its_ca() {
    let a = start("alpha", 1, "30s").await;
    let b = start("beta", 2, "30s").await;
    let a_ca = ca_pem(&a);
    let (gdir, gamma_ca) = other_pki("gamma");
    let read = |f: &str| std::fs::read_to_string(gdir.path().join("tls").join(f)).unwrap();
    let (gcert, gkey) = (read(cert_file(Role::Remote)), read(key_file(Role::Remote)));
    let get_cluster = |ch: tonic::transport::Channel| async move {
        ClusterMeshClient::new(ch)
            .get_cluster(GetClusterRequest {})
            .await
            .map(|r| r.into_inner())
    };

    // Not trusted at all: the TLS handshake fails.
    let r = match dial::connect_pem(&a.api().grpc, std::slice::from_ref(&a_ca), &gcert, &gkey).await
    {
        Ok(ch) => get_cluster(ch).await.map_err(|s| dial::explain(&s)),
        Err(e) => Err(e.to_string()),
    };
    println!("unknown CA -> {r:?}");
    assert!(r.is_err());

    // Gamma's CA trusted (registered for "zeta"), "gamma" not registered:
    // the TLS layer accepts, the call is refused.
    let zeta = PeerConfig {
        name: "zeta".into(),
        addresses: vec!["127.0.0.1:1".into()],
        ca_pem: gamma_ca.clone(),
        enabled: false,
        cluster_id: 26,
        ..Default::default()
    };
    register(&a, zeta).await.unwrap();
    let e = clustermesh_integration::eventually("gamma's CA trusted by alpha", T, || async {
        let ch = dial::connect_pem(&a.api().grpc, std::slice::from_ref(&a_ca), &gcert, &gkey)
            .await
            .ok()?;
        get_cluster(ch)
            .await
            .err()
            .filter(|s| s.code() == Code::PermissionDenied)
    })
    .await
    .unwrap();
    println!("unregistered cluster -> {:?}: {}", e.code(), e.message());
    assert!(
        e.message().contains("not a registered peer"),
        "{}",
        e.message()
    );

    // "gamma" registered, but with another CA: its certificate is refused.
    let gamma = PeerConfig {
        name: "gamma".into(),
        addresses: vec!["127.0.0.1:1".into()],
        ca_pem: ca_pem(&b),
        enabled: false,
        cluster_id: 3,
        ..Default::default()
    };
    register(&a, gamma).await.unwrap();
    let e = clustermesh_integration::eventually("gamma refused: wrong CA", T, || async {
        let ch = dial::connect_pem(&a.api().grpc, std::slice::from_ref(&a_ca), &gcert, &gkey)
            .await
            .ok()?;
        get_cluster(ch)
            .await
            .err()
            .filter(|s| s.code() == Code::Unauthenticated)
    })
    .await
    .unwrap();
    println!("wrong CA for the peer -> {:?}: {}", e.code(), e.message());
    assert!(
        e.message().contains("not signed by the CA registered"),
        "{}",
        e.message()
    );

    // A registered peer's remote certificate may read, not administer.
    register(&a, peer_config(&b)).await.unwrap();
    let (_, bcert, bkey) = dial::load_pems(&b.tls_dir(), Role::Remote).unwrap();
    let info =
        clustermesh_integration::eventually("beta's remote accepted by alpha", T, || async {
            let ch = dial::connect_pem(&a.api().grpc, std::slice::from_ref(&a_ca), &bcert, &bkey)
                .await
                .ok()?;
            get_cluster(ch).await.ok()
        })
        .await
        .unwrap();
    assert_eq!(info.name, "alpha");
    let ch = dial::connect_pem(&a.api().grpc, std::slice::from_ref(&a_ca), &bcert, &bkey)
        .await
        .unwrap();
    let e = AdminClient::new(ch)
        .list_peers(ListPeersRequest {})
        .await
        .unwrap_err();
    println!("remote used for Admin -> {:?}: {}", e.code(), e.message());
    assert_eq!(e.code(), Code::PermissionDenied);
}
