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
use rustls::pki_types::pem::PemObject;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// Calls GetCluster presenting `identity` (or no certificate); the call must
/// fail at the transport. Returns what the diagnostic probe says about why.
async fn refused(addr: &str, ca: &str, identity: Option<(&str, &str)>) -> String {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some((c, k)) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(c, k));
    }
    let ep = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap();
    if let Ok(ch) = ep.connect().await {
        match ClusterMeshClient::new(ch)
            .get_cluster(GetClusterRequest {})
            .await
        {
            Ok(_) => panic!("GetCluster must be refused"),
            Err(s) => assert!(
                dial::is_transport_failure(&s),
                "refused at the transport, got {:?}: {}",
                s.code(),
                s.message()
            ),
        }
    }
    // The probe does the handshake itself and reads the server's verdict.
    let (cert, key) = identity.unwrap_or(("", ""));
    let why = if identity.is_some() {
        dial::probe(addr, &[ca.to_owned()], cert, key).await
    } else {
        probe_without_certificate(addr, ca).await
    };
    why.expect_err("the probe is refused too")
}

/// A probe that presents no client certificate at all.
async fn probe_without_certificate(addr: &str, ca: &str) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 16];
    match tls.read(&mut buf).await {
        Ok(n) if n > 0 => Ok(()),
        Ok(_) => Err("closed".into()),
        Err(e) => Err(dial::explain_chain(&dial::error_chain(&e))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_certificates_are_refused() {
    let c = Cluster::start("alpha", 1, 1, &[]).await.unwrap();
    let addr = c.api().grpc.clone();
    let ca_pem = std::fs::read_to_string(c.tls_dir().join("ca.crt")).unwrap();

    // No client certificate.
    let msg = refused(&addr, &ca_pem, None).await;
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
    let msg = refused(&addr, &ca_pem, Some((&cert, &key))).await;
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
    let msg = refused(&addr, &ca_pem, Some((&expired.cert_pem, &expired.key_pem))).await;
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
    // ReportAgent: only the agent role, and only names Kubernetes allows.
    let report = |node: &str| clustermesh_proto::v1::AgentReport {
        node: node.into(),
        gateway: true,
        programmed: true,
        ..Default::default()
    };
    let interval = cm
        .report_agent(report("gw-1"))
        .await
        .expect("an agent may report")
        .into_inner()
        .report_interval_ms;
    assert!(
        interval > 0 && interval <= 1000,
        "gateway interval {interval} ms"
    );
    let e = cm.report_agent(report("Not A Name")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    let e = ClusterMeshClient::new(admin.clone())
        .report_agent(report("gw-2"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());

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
