//! Starting real `clustermesh-apiserver` processes (and the PKI and etcd they
//! need) for tests and the demo.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clustermesh_certs::{InitOptions, Role, dial};
use clustermesh_proto::v1::{ConnectPeerRequest, PeerConfig, admin_client::AdminClient};
use tonic::transport::Channel;

use crate::etcd::EtcdCluster;
use crate::http::wait_http_ok;
use crate::ports::free_port;
use crate::process::{ChildProcess, workspace_bin};

/// How to start one apiserver replica.
#[derive(Debug, Clone)]
pub struct ApiserverOpts {
    pub cluster: String,
    pub id: u32,
    pub max_connected_clusters: u32,
    pub etcd_endpoints: String,
    pub tls_dir: PathBuf,
    pub replica: String,
    pub extra_args: Vec<String>,
}

/// A running replica; SIGKILLed on drop.
pub struct Apiserver {
    pub opts: ApiserverOpts,
    pub grpc: String,
    pub health: String,
    pub child: ChildProcess,
    log_dir: PathBuf,
}

impl Apiserver {
    fn args(opts: &ApiserverOpts, grpc: &str, health: &str) -> Vec<String> {
        let mut a: Vec<String> = [
            "--cluster-name",
            &opts.cluster,
            "--cluster-id",
            &opts.id.to_string(),
            "--max-connected-clusters",
            &opts.max_connected_clusters.to_string(),
            "--etcd-endpoints",
            &opts.etcd_endpoints,
            "--listen",
            grpc,
            "--health-listen",
            health,
            "--replica-id",
            &opts.replica,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.push("--tls-dir".into());
        a.push(opts.tls_dir.display().to_string());
        a.extend(opts.extra_args.iter().cloned());
        a
    }

    /// Spawns the process without waiting for readiness.
    pub fn spawn(opts: ApiserverOpts, log_dir: &Path) -> anyhow::Result<Apiserver> {
        let grpc = format!("127.0.0.1:{}", free_port());
        let health = format!("127.0.0.1:{}", free_port());
        let bin = workspace_bin("clustermesh-apiserver")?;
        let child = ChildProcess::spawn_with_env(
            &format!("apiserver-{}-{}", opts.cluster, opts.replica),
            &bin,
            &Self::args(&opts, &grpc, &health),
            &[(
                "RUST_LOG".into(),
                std::env::var("CLUSTERMESH_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )],
            log_dir,
        )?;
        Ok(Apiserver {
            opts,
            grpc,
            health,
            child,
            log_dir: log_dir.to_owned(),
        })
    }

    /// Spawns and waits until `/readyz` answers 200.
    pub async fn start(opts: ApiserverOpts, log_dir: &Path) -> anyhow::Result<Apiserver> {
        let mut a = Self::spawn(opts, log_dir)?;
        a.wait_ready(Duration::from_secs(20)).await?;
        Ok(a)
    }

    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if !self.child.is_running() {
                bail!(
                    "apiserver exited before it was ready: {}",
                    self.child.describe_failure()
                );
            }
            if wait_http_ok(&self.health, "/readyz", Duration::from_millis(300))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "apiserver not ready after {timeout:?}: {}",
                    self.child.describe_failure()
                );
            }
        }
    }

    /// SIGKILL, then start again on the same ports.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        let bin = workspace_bin("clustermesh-apiserver")?;
        self.child = ChildProcess::spawn(
            &format!("apiserver-{}-{}", self.opts.cluster, self.opts.replica),
            &bin,
            &Self::args(&self.opts, &self.grpc, &self.health),
            &self.log_dir,
        )?;
        self.wait_ready(Duration::from_secs(20)).await
    }

    /// A channel presenting `role`'s certificate from this cluster's PKI.
    pub async fn channel(&self, role: Role) -> anyhow::Result<Channel> {
        dial::connect(&self.grpc, &self.opts.tls_dir, role)
            .await
            .with_context(|| format!("dialing {} as {}", self.grpc, role.as_str()))
    }
}

/// One cluster: an etcd, a PKI and any number of apiserver replicas.
pub struct Cluster {
    pub name: String,
    pub id: u32,
    pub etcd: EtcdCluster,
    pub dir: tempfile::TempDir,
    pub replicas: Vec<Apiserver>,
}

impl Cluster {
    /// Starts etcd (`etcd_members` members), writes a PKI and starts one replica.
    pub async fn start(
        name: &str,
        id: u32,
        etcd_members: usize,
        extra_args: &[String],
    ) -> anyhow::Result<Cluster> {
        let etcd = EtcdCluster::start(etcd_members).await?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("clustermesh-{name}-"))
            .tempdir()?;
        clustermesh_certs::init(&InitOptions {
            cluster: name.to_owned(),
            out: dir.path().join("tls"),
            sans: vec![],
            force: false,
        })?;
        let mut c = Cluster {
            name: name.to_owned(),
            id,
            etcd,
            dir,
            replicas: Vec::new(),
        };
        c.add_replica(extra_args).await?;
        Ok(c)
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    pub fn opts(&self, replica: &str, extra_args: &[String]) -> ApiserverOpts {
        ApiserverOpts {
            cluster: self.name.clone(),
            id: self.id,
            max_connected_clusters: 255,
            etcd_endpoints: self.etcd.endpoints_csv(),
            tls_dir: self.tls_dir(),
            replica: replica.to_owned(),
            extra_args: extra_args.to_vec(),
        }
    }

    /// Starts one more replica against the same etcd.
    pub async fn add_replica(&mut self, extra_args: &[String]) -> anyhow::Result<&mut Apiserver> {
        let name = format!("r{}", self.replicas.len());
        let a = Apiserver::start(self.opts(&name, extra_args), self.dir.path()).await?;
        self.replicas.push(a);
        Ok(self.replicas.last_mut().expect("just pushed"))
    }

    pub fn api(&self) -> &Apiserver {
        &self.replicas[0]
    }

    /// This cluster as a peer registration, as `clustermesh connect
    /// --import-policies` writes it on the other side: its name, ID, first
    /// replica's address and CA; the other side imports its policies (so a
    /// test sees every kind synced; set `import_policies` false to test
    /// without).
    pub fn peer_config(&self) -> anyhow::Result<PeerConfig> {
        let ca_pem = std::fs::read_to_string(self.tls_dir().join(clustermesh_certs::CA_CERT_FILE))
            .with_context(|| format!("reading {}'s ca.crt", self.name))?;
        Ok(PeerConfig {
            name: self.name.clone(),
            addresses: vec![self.api().grpc.clone()],
            ca_pem,
            enabled: true,
            cluster_id: self.id,
            import_policies: true,
            ..Default::default()
        })
    }

    /// Admin ConnectPeer on this cluster.
    pub async fn register_peer(&self, peer: PeerConfig) -> Result<(), tonic::Status> {
        let ch = self
            .api()
            .channel(Role::Admin)
            .await
            .map_err(|e| tonic::Status::unavailable(format!("{e:#}")))?;
        AdminClient::new(ch)
            .connect_peer(ConnectPeerRequest { peer: Some(peer) })
            .await
            .map(|_| ())
    }
}

/// Registers each cluster as the other's peer (both directions).
pub async fn connect(a: &Cluster, b: &Cluster) -> anyhow::Result<()> {
    for (on, peer) in [(a, b), (b, a)] {
        on.register_peer(peer.peer_config()?)
            .await
            .map_err(|e| anyhow::anyhow!("ConnectPeer {} on {}: {e}", peer.name, on.name))?;
    }
    Ok(())
}
