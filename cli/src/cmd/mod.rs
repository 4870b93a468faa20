//! One module per `clustermesh` subcommand.

pub mod certs;
pub mod demo;
pub mod status;

use std::path::PathBuf;

use clustermesh_certs::{Role, dial};
use tonic::transport::Channel;

/// Where and as whom to talk: `--server` and `--tls-dir`.
#[derive(Debug, Clone)]
pub struct Conn {
    pub server: String,
    pub tls_dir: PathBuf,
}

impl Conn {
    /// An admin channel to the apiserver.
    pub async fn admin(&self) -> anyhow::Result<Channel> {
        Ok(dial::connect(&self.server, &self.tls_dir, Role::Admin).await?)
    }
}

/// Turns a gRPC error into an anyhow error that says what went wrong.
pub fn rpc_error(what: &str, server: &str, status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{what} at {server} failed: {}", dial::explain(&status))
}
