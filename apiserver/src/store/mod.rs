//! The etcd store: key layout (see `clustermesh_proto::keys`), protobuf values,
//! batched transactional writes, cluster ownership and the store epoch.
//!
//! etcd types never leave this module: callers see `Store`, `WriteOp` and
//! `StoreError`.

mod meta;
mod read;
mod write;

pub use meta::OwnershipError;
pub use read::PAGE_KEYS;
pub use write::{
    Applied, ETCD_MAX_REQUEST_BYTES, MAX_RECORD_BYTES, MAX_TXN_BYTES, MAX_TXN_OPS, TooLarge,
    WriteOp,
};

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{Client, ConnectOptions, TlsOptions};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("etcd at {endpoints}: {source}")]
    Etcd {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error(transparent)]
    Ownership(#[from] OwnershipError),
    #[error("this replica is no longer the leader; write refused")]
    NotLeader,
    #[error("value at {key} is not a valid {what}: {source}")]
    Decode {
        key: String,
        what: &'static str,
        #[source]
        source: prost::DecodeError,
    },
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    #[error(
        "reading {prefix} at store revision {revision}: that revision was compacted during the \
         paged read; read it again at the current revision"
    )]
    Compacted { prefix: String, revision: i64 },
    #[error("reading etcd TLS file {path}: {source}")]
    TlsFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// How to reach etcd.
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

impl EtcdOptions {
    fn connect_options(&self) -> Result<ConnectOptions, StoreError> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        let read = |p: &String| {
            std::fs::read(p).map_err(|source| StoreError::TlsFile {
                path: p.clone(),
                source,
            })
        };
        if self.ca_file.is_some() || self.cert_file.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.ca_file {
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
            }
            if let (Some(c), Some(k)) = (&self.cert_file, &self.key_file) {
                tls = tls.identity(etcd_client::Identity::from_pem(read(c)?, read(k)?));
            }
            opts = opts.with_tls(tls);
        }
        Ok(opts)
    }
}

/// One key-value pair read from the store.
#[derive(Debug, Clone)]
pub struct Kv {
    pub key: String,
    pub value: Bytes,
    pub mod_revision: i64,
}

/// A handle on the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    client: Client,
    endpoints: String,
    /// Puts refused as too large (shared by clones).
    refused: Arc<AtomicU64>,
}

impl Store {
    /// Connects to etcd (fails if no endpoint answers within a few seconds).
    pub async fn connect(opts: &EtcdOptions) -> Result<Store, StoreError> {
        let endpoints = opts.endpoints.join(",");
        let client = Client::connect(&opts.endpoints, Some(opts.connect_options()?))
            .await
            .map_err(|source| StoreError::Etcd {
                endpoints: endpoints.clone(),
                source,
            })?;
        Ok(Store {
            client,
            endpoints,
            refused: Arc::default(),
        })
    }

    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    pub(crate) fn err(&self, source: etcd_client::Error) -> StoreError {
        StoreError::Etcd {
            endpoints: self.endpoints.clone(),
            source,
        }
    }

    /// The raw client, for the view feed's watch and for leader election.
    pub(crate) fn client(&self) -> Client {
        self.client.clone()
    }
}
