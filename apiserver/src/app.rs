//! Wiring of one apiserver replica: claim the store, load the view, serve
//! gRPC (mTLS) and health until told to stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use clustermesh_proto::v1::{
    ClusterInfo, admin_server::AdminServer, cluster_mesh_server::ClusterMeshServer,
};
use thiserror::Error;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::export::Exporter;
use crate::leader;
use crate::metrics::Metrics;
use crate::server::{ApiServer, ReplicaInfo, Runtime, tls};
use crate::store::{EtcdOptions, Store, StoreError};
use crate::view::{View, ViewConfig, feed};

/// Everything one replica needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub cluster: ClusterInfo,
    pub etcd: EtcdOptions,
    pub listen: SocketAddr,
    pub health_listen: SocketAddr,
    pub tls_dir: PathBuf,
    pub replica_id: String,
    pub heartbeat: Duration,
    pub view: ViewConfig,
    /// `kubernetes` or `manifests:DIR`; None serves only what is in the store.
    pub source: Option<String>,
    /// How long an identity no endpoint uses keeps its number.
    pub identity_gc_grace: Duration,
    /// Lease TTL of the leader key: a dead leader is replaced within it.
    pub leader_ttl: Duration,
    /// Node agents' reports and gateway leases.
    pub agents: crate::agents::AgentsConfig,
    /// The mesh syncer's liveness settings (peer-timeout, stale-ttl).
    pub mesh: crate::mesh::MeshConfig,
}

#[derive(Debug, Error)]
pub enum AppError {
    #[error("invalid cluster settings: {0}")]
    Invalid(#[from] clustermesh_proto::ValidationError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("TLS: {0}")]
    Tls(#[from] clustermesh_certs::CertError),
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("source: {0}")]
    Source(#[from] crate::source::SourceConfigError),
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

impl AppError {
    /// Exit code: 3 when the store belongs to another cluster, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            AppError::Store(StoreError::Ownership(_)) => 3,
            _ => 1,
        }
    }
}

/// Connects to etcd, retrying until it answers or `stop` flips.
async fn connect_store(
    opts: &EtcdOptions,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<Option<Store>, StoreError> {
    let mut backoff = clustermesh_proto::backoff::Backoff::new(
        Duration::from_millis(200),
        Duration::from_secs(5),
    );
    loop {
        match Store::connect(opts).await {
            Ok(s) => match s.revision().await {
                Ok(_) => return Ok(Some(s)),
                Err(e) => warn!(error = %e, "etcd not answering yet"),
            },
            Err(e @ StoreError::TlsFile { .. }) => return Err(e),
            Err(e) => warn!(error = %e, "cannot reach etcd yet"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.delay()) => {}
            _ = stop.changed() => return Ok(None),
        }
    }
}

/// Hands memory freed after snapshots back to the kernel, at most once a
/// second ([`clustermesh_proto::heap`]; docs/benchmarks.md: 38 B per
/// cached record after a 250-peer cold start).
async fn release_freed_memory(mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        if !clustermesh_proto::heap::take_wanted() {
            continue;
        }
        let started = std::time::Instant::now();
        let released =
            tokio::task::spawn_blocking(clustermesh_proto::heap::release_freed_memory).await;
        if let Ok(released) = released {
            tracing::debug!(released, elapsed = ?started.elapsed(), "returned freed heap memory to the kernel");
        }
    }
}

/// Runs one replica until `stop` flips to true.
pub async fn run(
    cfg: Config,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), AppError> {
    let started = std::time::Instant::now();
    clustermesh_proto::validate::cluster_info(&cfg.cluster)?;
    let server_cfg = clustermesh_certs::server_config(&cfg.tls_dir, &[])?;
    let ca_path = cfg.tls_dir.join(clustermesh_certs::CA_CERT_FILE);
    let own_ca_pem: tls::SharedCa = Arc::new(RwLock::new(
        std::fs::read_to_string(&ca_path)
            .map_err(|source| AppError::Read {
                path: ca_path.display().to_string(),
                source,
            })?
            .into(),
    ));
    let Some(store) = connect_store(&cfg.etcd, &mut stop).await? else {
        return Ok(());
    };
    // Refuse a store that belongs to another cluster before serving anything.
    store.ensure_cluster(&cfg.cluster).await?;
    let epoch = store.ensure_epoch().await?;
    info!(cluster = %cfg.cluster.name, id = cfg.cluster.id, %epoch, etcd = store.endpoints(), "store claimed");

    let view = View::new(&cfg.cluster.name, cfg.view);
    let runtime = Arc::new(Runtime::default());
    let metrics = Metrics::new(view.clone(), runtime.clone(), started);
    tokio::spawn(feed::run(
        store.clone(),
        view.clone(),
        cfg.cluster.clone(),
        metrics.clone(),
        stop.clone(),
    ));
    tokio::spawn(release_freed_memory(stop.clone()));

    // Leader election: `leading` says whether this replica writes.
    let token = leader::token(&cfg.replica_id);
    let (leading_tx, leading) = tokio::sync::watch::channel(false);
    tokio::spawn(leader::run(
        store.clone(),
        token.clone(),
        cfg.leader_ttl,
        leading_tx,
        stop.clone(),
    ));
    {
        let (rt, mut leading) = (runtime.clone(), leading.clone());
        tokio::spawn(async move {
            loop {
                rt.leader.store(
                    *leading.borrow_and_update(),
                    std::sync::atomic::Ordering::Relaxed,
                );
                if leading.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    // Every replica tracks the agents' reports (a new leader's liveness is warm).
    let agents = crate::agents::Agents::new(cfg.agents);
    tokio::spawn(
        agents
            .clone()
            .run(view.clone(), store.clone(), stop.clone()),
    );

    // The source feeds the exporter on every replica; only the leader writes.
    if let Some(flag) = &cfg.source {
        let src = crate::source::from_flag(flag)?;
        info!(source = %src.name(), "starting source");
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        let _source_task = src.run(tx);
        let exporter = Exporter::new(
            store.clone(),
            view.clone(),
            cfg.cluster.clone(),
            cfg.identity_gc_grace,
            runtime.clone(),
            agents.live_gateways(),
        );
        tokio::spawn(exporter.run(rx, leading.clone(), token.clone(), stop.clone()));
    }

    let api = ApiServer {
        view: view.clone(),
        store: store.clone(),
        cluster: cfg.cluster.clone(),
        replica: ReplicaInfo {
            id: cfg.replica_id.clone(),
        },
        runtime: runtime.clone(),
        heartbeat: cfg.heartbeat,
        own_ca_pem: own_ca_pem.clone(),
        metrics: metrics.clone(),
        agents,
    };

    let health = TcpListener::bind(cfg.health_listen)
        .await
        .map_err(|source| AppError::Listen {
            addr: cfg.health_listen,
            source,
        })?;
    let health_task = tokio::spawn(crate::health::serve(health, api.clone()));

    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| AppError::Listen {
            addr: cfg.listen,
            source,
        })?;
    info!(listen = %cfg.listen, health = %cfg.health_listen, replica = %cfg.replica_id, "serving");
    let shared: tls::SharedConfig = Arc::new(RwLock::new(server_cfg));
    // Mesh syncer (runs while leading) and peer trust (every replica).
    let mesh_ctx = crate::mesh::MeshContext {
        store: store.clone(),
        view: view.clone(),
        cluster: cfg.cluster.clone(),
        tls_dir: cfg.tls_dir.clone(),
        tls: shared.clone(),
        own_ca: own_ca_pem,
        config: cfg.mesh.clone(),
        fence: Some(token.clone()),
        metrics,
    };
    crate::mesh::spawn(mesh_ctx, leading.clone(), stop.clone());
    let incoming = tls::incoming(listener, shared);
    let mut stop2 = stop.clone();
    let result = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .add_service(ClusterMeshServer::new(api.clone()))
        .add_service(AdminServer::new(api))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop2.changed().await;
        })
        .await;
    health_task.abort();
    result?;
    Ok(())
}
