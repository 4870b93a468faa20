//! One module per `clustermesh` subcommand.

pub mod agents;
pub mod certs;
pub mod connect;
pub mod context;
pub mod demo;
pub mod disconnect;
pub mod records;
pub mod service;
pub mod status;
pub mod status_nodes;

use std::path::PathBuf;

use anyhow::Context as _;
use clustermesh_certs::{CA_CERT_FILE, Role, dial};
use clustermesh_proto::v1::{
    ClusterInfo, GetClusterRequest, admin_client::AdminClient,
    cluster_mesh_client::ClusterMeshClient,
};
use tonic::transport::Channel;

/// Where and as whom to talk: `--server` and `--tls-dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conn {
    pub server: String,
    pub tls_dir: PathBuf,
}

impl Conn {
    /// An admin channel to the apiserver.
    pub async fn admin(&self) -> anyhow::Result<Channel> {
        Ok(dial::connect(&self.server, &self.tls_dir, Role::Admin).await?)
    }

    /// The ClusterMesh service over an admin channel.
    pub async fn mesh(&self) -> anyhow::Result<ClusterMeshClient<Channel>> {
        Ok(ClusterMeshClient::new(self.admin().await?).max_decoding_message_size(64 << 20))
    }

    /// The CA certificate (PEM) of this TLS directory: the only file that
    /// `connect` hands to the other cluster.
    pub fn ca_pem(&self) -> anyhow::Result<String> {
        let path = self.tls_dir.join(CA_CERT_FILE);
        let pem = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (is {} a directory made by `clustermesh certs init`?)",
                path.display(),
                self.tls_dir.display()
            )
        })?;
        if !pem.contains("BEGIN CERTIFICATE") {
            anyhow::bail!("{} holds no PEM certificate", path.display());
        }
        Ok(pem)
    }
}

/// An admin connection to one apiserver and what it says about its cluster.
pub struct Admin {
    pub conn: Conn,
    pub info: ClusterInfo,
    pub mesh: ClusterMeshClient<Channel>,
    pub admin: AdminClient<Channel>,
}

impl Admin {
    /// Dials as admin and asks GetCluster. `which` names the side in errors
    /// ("this cluster", "the peer").
    pub async fn open(conn: &Conn, which: &str) -> anyhow::Result<Admin> {
        let channel = conn.admin().await.with_context(|| {
            format!(
                "{which}: connecting to {} as admin with {}",
                conn.server,
                conn.tls_dir.display()
            )
        })?;
        let mut mesh = ClusterMeshClient::new(channel.clone());
        let info = mesh
            .get_cluster(GetClusterRequest {})
            .await
            .map_err(|s| rpc_error(&format!("{which}: GetCluster"), &conn.server, s))?
            .into_inner();
        Ok(Admin {
            conn: conn.clone(),
            info,
            mesh,
            admin: AdminClient::new(channel),
        })
    }
}

/// Turns a gRPC error into an anyhow error that says what went wrong.
pub fn rpc_error(what: &str, server: &str, status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{what} at {server} failed: {}", dial::explain(&status))
}
