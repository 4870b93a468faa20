//! mTLS and roles against a real apiserver: every wrong certificate and every
//! call beyond a role is refused with the right code and a clear message;
//! the rightful calls pass.

use std::time::Duration;

use clustermesh_certs::{Ca, InitOptions, Role, Validity, dial};
use clustermesh_integration::apiserver::Cluster;
use clustermesh_proto::v1::{
    GetClusterRequest, ListPeersRequest, Scope, StatusRequest, WatchRequest,
    admin_client::AdminClient, cluster_mesh_client::ClusterMeshClient,
};
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// Calls GetCluster over a channel built from these PEMs; returns the error text.
async fn get_cluster_err(addr: &str, ca: &str, identity: Option<(&str, &str)>) -> String {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some((c, k)) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(c, k));
    }
    let ep = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap();
    let ch = match ep.connect().await {
        Ok(ch) => ch,
        Err(e) => return dial::explain_chain(&dial::error_chain(&e)),
    };
    match ClusterMeshClient::new(ch)
        .get_cluster(GetClusterRequest {})
        .await
    {
        Ok(_) => panic!("GetCluster must be refused"),
        Err(s) => {
            assert!(
                matches!(
                    s.code(),
                    Code::Unavailable | Code::Unknown | Code::Cancelled
                ),
                "transport refusal, got {:?}: {}",
                s.code(),
                dial::explain(&s)
            );
            eprintln!("refusal: {}", dial::explain(&s));
            dial::explain(&s)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_certificates_are_refused() {
    let c = Cluster::start("alpha", 1, 1, &[]).await.unwrap();
    let addr = c.api().grpc.clone();
    let ca_pem = std::fs::read_to_string(c.tls_dir().join("ca.crt")).unwrap();

    // No client certificate.
    let msg = get_cluster_err(&addr, &ca_pem, None).await;
    assert!(msg.contains("CertificateRequired"), "no cert: {msg}");
    assert!(msg.contains("requires a client certificate"), "hint: {msg}");

    // A certificate from another cluster's CA.
    let other = tempfile::tempdir().unwrap();
    clustermesh_certs::init(&InitOptions {
        cluster: "beta".into(),
        out: other.path().into(),
        sans: vec![],
        force: false,
    })
    .unwrap();
    let cert = std::fs::read_to_string(other.path().join("admin.crt")).unwrap();
    let key = std::fs::read_to_string(other.path().join("admin.key")).unwrap();
    let msg = get_cluster_err(&addr, &ca_pem, Some((&cert, &key))).await;
    assert!(
        msg.contains("UnknownCA") || msg.contains("BadCertificate"),
        "foreign CA: {msg}"
    );

    // An expired certificate from the right CA.
    let ca = Ca::load(&c.tls_dir()).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let expired = ca
        .issue(
            Role::Admin,
            &[],
            Validity {
                not_before: now - time::Duration::days(10),
                not_after: now - time::Duration::days(1),
            },
        )
        .unwrap();
    let msg = get_cluster_err(&addr, &ca_pem, Some((&expired.cert_pem, &expired.key_pem))).await;
    assert!(
        msg.contains("CertificateExpired") || msg.contains("Expired"),
        "expired: {msg}"
    );
    assert!(msg.contains("expired"), "hint: {msg}");

    // The server logged each refusal with a reason.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = c.api().child.log();
    assert!(
        log.matches("TLS handshake refused").count() >= 3,
        "server log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_enforced() {
    let c = Cluster::start("gamma", 3, 1, &[]).await.unwrap();
    let remote = c.api().channel(Role::Remote).await.unwrap();
    let agent = c.api().channel(Role::Agent).await.unwrap();
    let admin = c.api().channel(Role::Admin).await.unwrap();
    let server = c.api().channel(Role::Server).await.unwrap();
    let watch = |scope: Scope| WatchRequest {
        kinds: vec![],
        scope: scope as i32,
        resume: None,
    };

    // remote: exported Watch and GetCluster pass; merged, Status and Admin are denied.
    let mut cm = ClusterMeshClient::new(remote.clone());
    cm.watch(watch(Scope::Exported))
        .await
        .expect("remote may watch exported");
    assert_eq!(
        cm.get_cluster(GetClusterRequest {})
            .await
            .unwrap()
            .into_inner()
            .name,
        "gamma"
    );
    let e = cm.watch(watch(Scope::Merged)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("remote of cluster gamma") && e.message().contains("scope merged"),
        "{}",
        e.message()
    );
    assert_eq!(
        cm.status(StatusRequest {}).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let e = AdminClient::new(remote)
        .list_peers(ListPeersRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("needs role admin"), "{}", e.message());

    // agent: merged Watch and Status pass; Admin denied.
    let mut cm = ClusterMeshClient::new(agent.clone());
    cm.watch(watch(Scope::Merged))
        .await
        .expect("agent may watch merged");
    assert!(
        cm.status(StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert_eq!(
        AdminClient::new(agent)
            .list_peers(ListPeersRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );

    // the server's own certificate is not a client role.
    let e = ClusterMeshClient::new(server)
        .watch(watch(Scope::Exported))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // admin: everything.
    let mut cm = ClusterMeshClient::new(admin.clone());
    cm.watch(watch(Scope::Merged)).await.unwrap();
    cm.status(StatusRequest {}).await.unwrap();
    assert!(
        AdminClient::new(admin)
            .list_peers(ListPeersRequest {})
            .await
            .unwrap()
            .into_inner()
            .peers
            .is_empty()
    );
}
