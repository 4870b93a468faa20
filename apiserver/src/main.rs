//! `clustermesh-apiserver`: one replica of a cluster's mesh API.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use clustermesh_apiserver::{app, store::EtcdOptions, view::ViewConfig};
use clustermesh_proto::duration;
use clustermesh_proto::v1::ClusterInfo;

/// Serves this cluster's state to its peers and node agents over mTLS gRPC.
#[derive(Parser, Debug)]
#[command(name = "clustermesh-apiserver", version)]
struct Args {
    /// This cluster's name: a DNS label of at most 32 characters, unique in the mesh.
    #[arg(long, env = "CLUSTERMESH_CLUSTER_NAME")]
    cluster_name: String,
    /// This cluster's ID: 1..=255 (or 1..=511 with --max-connected-clusters 511), unique in the mesh.
    #[arg(long, env = "CLUSTERMESH_CLUSTER_ID")]
    cluster_id: u32,
    /// The mesh size; every cluster of one mesh must use the same value.
    #[arg(long, default_value_t = 255, value_parser = parse_max_clusters)]
    max_connected_clusters: u32,
    /// etcd endpoints, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    etcd_endpoints: Vec<String>,
    /// CA certificate that signs etcd's server certificate.
    #[arg(long)]
    etcd_ca_file: Option<String>,
    /// Client certificate for etcd.
    #[arg(long, requires = "etcd_key_file")]
    etcd_cert_file: Option<String>,
    /// Client key for etcd.
    #[arg(long, requires = "etcd_cert_file")]
    etcd_key_file: Option<String>,
    /// gRPC (mTLS) listen address.
    #[arg(long, default_value = "127.0.0.1:7443")]
    listen: SocketAddr,
    /// Directory from `clustermesh certs init` (ca.crt, server.crt, server.key, ...).
    #[arg(long)]
    tls_dir: PathBuf,
    /// Plain HTTP /healthz, /readyz and /status.
    #[arg(long, default_value = "127.0.0.1:9880")]
    health_listen: SocketAddr,
    /// This replica's name in Status and logs (default: $HOSTNAME, else the pid).
    #[arg(long, env = "HOSTNAME")]
    replica_id: Option<String>,
    /// How often an idle Watch stream carries a heartbeat.
    #[arg(long, default_value = "2s", value_parser = duration::parse)]
    heartbeat_interval: std::time::Duration,
    /// Changes kept so that a Watch client can resume without a snapshot.
    #[arg(long, default_value_t = ViewConfig::default().history_events)]
    watch_history: usize,
    /// Batches a Watch client may fall behind before it is cut off and told to resync.
    #[arg(long, default_value_t = ViewConfig::default().subscriber_buffer)]
    watcher_buffer: usize,
    /// Where this cluster's state comes from: `kubernetes` (in-cluster config or KUBECONFIG)
    /// or `manifests:DIR` (Kubernetes YAML files, watched). Without it the apiserver serves
    /// what is in the store.
    #[arg(long, env = "CLUSTERMESH_SOURCE")]
    source: Option<String>,
    /// How long an identity that no endpoint uses keeps its number before it is released.
    #[arg(long, default_value = "10m", value_parser = duration::parse)]
    identity_gc_grace: std::time::Duration,
    /// Lease TTL of the leader key: when the leader dies, another replica leads within it.
    #[arg(long, default_value = "3s", value_parser = duration::parse)]
    leader_lease_ttl: std::time::Duration,
    /// A gateway node's agent must renew its report (its lease) within this to stay a usable
    /// gateway; gateways report every lease/4. Failover takes about this long (docs/mesh.md).
    #[arg(long, default_value = "1s", value_parser = duration::parse)]
    gateway_lease: std::time::Duration,
    /// A peer silent this long (no batch, no heartbeat) is shown disconnected and redialed;
    /// its records stay (see docs/mesh.md).
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    peer_timeout: std::time::Duration,
    /// How long a disconnected peer's records are kept before they are withdrawn, counted
    /// from when it became disconnected; 0 keeps them until the peer returns or is disconnected.
    #[arg(long, default_value = "2m", value_parser = duration::parse)]
    stale_ttl: std::time::Duration,
    /// This cluster's service CIDR (repeatable; default none): a peer's pod CIDRs, endpoint
    /// IPs and service backends inside it are refused (see docs/mesh.md "Ingest rules").
    #[arg(long = "service-cidr", value_parser = parse_service_cidr)]
    service_cidr: Vec<clustermesh_apiserver::mesh::ingest::Cidr>,
    /// The default per-peer quota, `name=value,...` over nodes, endpoints, identities,
    /// services, policies, backends and bytes (e.g. `endpoints=100000,bytes=128MiB`); names
    /// left out keep the built-in default (nodes=5000,endpoints=50000,identities=20000,
    /// services=10000,policies=5000,backends=100000,bytes=64MiB). `clustermesh connect --quota` overrides it per peer.
    #[arg(long, default_value = "", value_parser = clustermesh_proto::quota::parse)]
    peer_quota: clustermesh_proto::v1::PeerQuota,
    /// Log format.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn parse_max_clusters(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    clustermesh_proto::validate::max_clusters(n).map_err(|e| e.to_string())?;
    Ok(n)
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init()
    } else {
        b.init()
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    init_tracing(&args.log_format);
    let cfg = app::Config {
        cluster: ClusterInfo {
            name: args.cluster_name,
            id: args.cluster_id,
            max_connected_clusters: args.max_connected_clusters,
            capabilities: vec![
                "watch-resume".into(),
                "scope-exported".into(),
                "scope-merged".into(),
                clustermesh_proto::backends::CAPABILITY.into(),
            ],
        },
        etcd: EtcdOptions {
            endpoints: args.etcd_endpoints,
            ca_file: args.etcd_ca_file,
            cert_file: args.etcd_cert_file,
            key_file: args.etcd_key_file,
        },
        listen: args.listen,
        health_listen: args.health_listen,
        tls_dir: args.tls_dir,
        replica_id: args
            .replica_id
            .unwrap_or_else(|| format!("pid-{}", std::process::id())),
        heartbeat: args.heartbeat_interval,
        view: ViewConfig {
            history_events: args.watch_history,
            subscriber_buffer: args.watcher_buffer,
        },
        source: args.source,
        identity_gc_grace: args.identity_gc_grace,
        leader_ttl: args.leader_lease_ttl,
        agents: clustermesh_apiserver::agents::AgentsConfig {
            gateway_lease: args.gateway_lease,
        },
        mesh: clustermesh_apiserver::mesh::MeshConfig {
            peer_timeout: args.peer_timeout,
            stale_ttl: args.stale_ttl,
            service_cidrs: args.service_cidr,
            quota: clustermesh_proto::quota::or_defaults(
                &args.peer_quota,
                &clustermesh_proto::quota::DEFAULT,
            ),
            ..Default::default()
        },
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot install SIGTERM handler");
                    let _ = tokio::signal::ctrl_c().await;
                    let _ = stop_tx.send(true);
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    if let Err(e) = app::run(cfg, stop_rx).await {
        tracing::error!(error = %e, "clustermesh-apiserver failed");
        eprintln!("clustermesh-apiserver: {e}");
        std::process::exit(e.exit_code());
    }
}

fn parse_service_cidr(s: &str) -> Result<clustermesh_apiserver::mesh::ingest::Cidr, String> {
    s.parse()
}
