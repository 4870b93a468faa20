//! Rotated certificate files take effect without a restart: a server
//! certificate re-issued on disk with a new name is served within seconds.

use std::time::Duration;

use clustermesh_certs::{Ca, Role, Validity, dial};
use clustermesh_integration::apiserver::Cluster;
use clustermesh_proto::v1::{GetClusterRequest, cluster_mesh_client::ClusterMeshClient};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// GetCluster as admin, requiring the server certificate to name `name`.
async fn get_cluster_as(c: &Cluster, name: &str) -> Result<String, String> {
    let (ca, cert, key) = dial::load_pems(&c.tls_dir(), Role::Admin).map_err(|e| e.to_string())?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key))
        .domain_name(name);
    let ch = Endpoint::from_shared(format!("https://{}", c.api().grpc))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| dial::error_chain(&e))?;
    ClusterMeshClient::new(ch)
        .get_cluster(GetClusterRequest {})
        .await
        .map(|r| r.into_inner().name)
        .map_err(|s| dial::explain(&s))
}

fn write_atomic(dir: &std::path::Path, name: &str, content: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_server_certificate_is_served_without_restart() {
    let c = Cluster::start("rot", 1, 1, &[]).await.unwrap();
    let err = get_cluster_as(&c, "rotated.example")
        .await
        .expect_err("the old certificate lacks the name");
    assert!(
        err.contains("NotValidForName") || err.contains("certificate"),
        "{err}"
    );

    let ca = Ca::load(&c.tls_dir()).unwrap();
    let issued = ca
        .issue(
            Role::Server,
            &[
                "rotated.example".into(),
                "127.0.0.1".into(),
                "localhost".into(),
            ],
            Validity::days(30),
        )
        .unwrap();
    write_atomic(&c.tls_dir(), "server.key", &issued.key_pem);
    write_atomic(&c.tls_dir(), "server.crt", &issued.cert_pem);

    let name = clustermesh_integration::eventually(
        "the rotated certificate served",
        Duration::from_secs(15),
        || async { get_cluster_as(&c, "rotated.example").await.ok() },
    )
    .await
    .unwrap();
    assert_eq!(name, "rot");
    assert!(
        c.api()
            .child
            .log()
            .contains("TLS files changed on disk; reloaded")
    );
    // The running process was never restarted.
    assert!(c.api().child.exit_status().is_none());
}
