//! Real etcd clusters (1 or 3 members) on loopback ports.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tempfile::TempDir;

use crate::http::http_get;
use crate::ports::free_port;
use crate::process::{ChildProcess, append_to_log};

/// How long [`EtcdCluster::start`] / restarts wait for members to answer.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Raft heartbeat interval passed to etcd (ms): small for fast failover in tests.
pub const HEARTBEAT_INTERVAL_MS: u32 = 50;
/// Raft election timeout passed to etcd (ms).
pub const ELECTION_TIMEOUT_MS: u32 = 500;

/// Attempts at [`EtcdCluster::start`] when a freshly picked port was taken in the meantime.
const START_ATTEMPTS: usize = 3;

/// Path of the etcd binary: `$CLUSTERMESH_ETCD_BIN`, else `/usr/bin/etcd`, else `etcd` on `$PATH`.
pub fn etcd_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("CLUSTERMESH_ETCD_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        ensure!(
            p.is_file(),
            "CLUSTERMESH_ETCD_BIN={} is not a file",
            p.display()
        );
        return Ok(p);
    }
    let default = PathBuf::from("/usr/bin/etcd");
    if default.is_file() {
        return Ok(default);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("etcd");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!(
        "etcd binary not found (tried $CLUSTERMESH_ETCD_BIN, /usr/bin/etcd, $PATH): install etcd-server"
    )
}

#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    process: Option<ChildProcess>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
}

/// A real etcd cluster. All members are SIGKILLed and reaped, and the temp dir (data dirs and
/// logs) removed, when this is dropped.
#[derive(Debug)]
pub struct EtcdCluster {
    // Field order matters: members are dropped (killed) before the temp dir is removed.
    members: Vec<Member>,
    etcd: PathBuf,
    token: String,
    generation: u64,
    dir: TempDir,
}

fn unique_token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "clustermesh-test-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// One readiness probe of a member: etcd's `/health` answers `{"health":"true"}`
/// only when the member has a leader and serves a (linearizable) read.
async fn probe(endpoint: &str) -> anyhow::Result<()> {
    let addr = endpoint.trim_start_matches("http://");
    let (code, body) = tokio::time::timeout(Duration::from_secs(3), http_get(addr, "/health"))
        .await
        .context("probe timed out")??;
    ensure!(
        code == 200 && body.contains("\"health\":\"true\""),
        "/health answered {code} {body:?}"
    );
    Ok(())
}

impl EtcdCluster {
    /// Starts `members` (normally 1 or 3) etcd members on free loopback ports, each with its own
    /// data dir in one temp dir, and waits (up to 20 s) until every member serves a linearizable
    /// read.
    pub async fn start(members: usize) -> anyhow::Result<EtcdCluster> {
        Self::start_with_binary(members, &etcd_binary()?).await
    }

    /// Like [`EtcdCluster::start`] with an explicit etcd binary.
    pub async fn start_with_binary(members: usize, etcd: &Path) -> anyhow::Result<EtcdCluster> {
        ensure!(members >= 1, "an etcd cluster needs at least one member");
        let etcd = etcd.to_path_buf();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut cluster = Self::create(members, etcd.clone())?;
            match cluster.start_all().await {
                Ok(()) => return Ok(cluster),
                Err(e) => {
                    let conflict = cluster.members.iter().any(|m| {
                        m.process
                            .as_ref()
                            .is_some_and(|p| p.log().contains("address already in use"))
                    });
                    if conflict && attempt < START_ATTEMPTS {
                        tracing::warn!("etcd port conflict, retrying with fresh ports: {e:#}");
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    fn create(members: usize, etcd: PathBuf) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("clustermesh-etcd-")
            .tempdir()
            .context("creating etcd temp dir")?;
        let members = (0..members)
            .map(|i| Member {
                name: format!("etcd-{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                process: None,
            })
            .collect();
        Ok(EtcdCluster {
            members,
            etcd,
            token: unique_token(),
            generation: 0,
            dir,
        })
    }

    async fn start_all(&mut self) -> anyhow::Result<()> {
        for i in 0..self.members.len() {
            self.spawn_member(i, "new")?;
        }
        let all: Vec<usize> = (0..self.members.len()).collect();
        self.wait_ready(&all).await
    }

    fn args(&self, i: usize, state: &str) -> Vec<String> {
        let m = &self.members[i];
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("{}-g{}", self.token, self.generation);
        [
            ("--name", m.name.clone()),
            ("--data-dir", self.data_dir(i).display().to_string()),
            ("--listen-client-urls", m.client_url()),
            ("--advertise-client-urls", m.client_url()),
            ("--listen-peer-urls", m.peer_url()),
            ("--initial-advertise-peer-urls", m.peer_url()),
            ("--initial-cluster", initial_cluster),
            ("--initial-cluster-state", state.to_string()),
            ("--initial-cluster-token", token),
            ("--logger", "zap".to_string()),
            ("--log-outputs", "stderr".to_string()),
            ("--log-level", "warn".to_string()),
            ("--heartbeat-interval", HEARTBEAT_INTERVAL_MS.to_string()),
            ("--election-timeout", ELECTION_TIMEOUT_MS.to_string()),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_string(), v])
        .collect()
    }

    fn spawn_member(&mut self, i: usize, state: &str) -> anyhow::Result<()> {
        let args = self.args(i, state);
        let log_dir = self.dir.path().to_path_buf();
        let name = self.members[i].name.clone();
        append_to_log(
            &log_dir.join(format!("{name}.log")),
            &format!("=== harness: starting {name} (initial-cluster-state {state}) ==="),
        );
        let mut cmd = std::process::Command::new(&self.etcd);
        cmd.args(&args);
        // Don't let the developer's environment configure the test etcd.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD") {
                cmd.env_remove(k);
            }
        }
        let p = ChildProcess::spawn_command(&name, cmd, &log_dir)
            .with_context(|| format!("starting etcd member {name}"))?;
        self.members[i].process = Some(p);
        Ok(())
    }

    /// Waits until every member in `which` serves a linearizable read, failing early (with the
    /// log tail) if one of them exits.
    async fn wait_ready(&mut self, which: &[usize]) -> anyhow::Result<()> {
        let start = Instant::now();
        let deadline = start + READY_TIMEOUT;
        for &i in which {
            let endpoint = self.members[i].client_url();
            loop {
                let exited = match self.members[i].process.as_mut() {
                    Some(p) => p.try_wait()?.is_some(),
                    None => true,
                };
                if exited {
                    let what = self.describe_member(i);
                    bail!("etcd member at {endpoint} exited during startup: {what}");
                }
                let err = match probe(&endpoint).await {
                    Ok(()) => break,
                    Err(e) => e,
                };
                if Instant::now() >= deadline {
                    let what = self.describe_member(i);
                    bail!(
                        "etcd member at {endpoint} did not answer within {READY_TIMEOUT:?} (last error: {err:#}): {what}"
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        tracing::debug!(members = ?which, elapsed = ?start.elapsed(), "etcd ready");
        Ok(())
    }

    fn describe_member(&mut self, i: usize) -> String {
        match self.members[i].process.as_mut() {
            Some(p) => p.describe_failure(),
            None => format!("{} was never started", self.members[i].name),
        }
    }

    fn check_index(&self, i: usize) -> anyhow::Result<()> {
        ensure!(
            i < self.members.len(),
            "etcd member index {i} out of range (cluster has {} members)",
            self.members.len()
        );
        Ok(())
    }

    /// Number of members (running or not).
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// `http://127.0.0.1:PORT` of every member, including stopped ones.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// [`EtcdCluster::endpoints`] joined with commas.
    pub fn endpoints_csv(&self) -> String {
        self.endpoints().join(",")
    }

    /// Client URL of member `i`. Panics if `i` is out of range.
    pub fn member_endpoint(&self, i: usize) -> String {
        assert!(
            i < self.members.len(),
            "etcd member index {i} out of range (cluster has {} members)",
            self.members.len()
        );
        self.members[i].client_url()
    }

    /// The temp dir holding data dirs and logs (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Data dir of member `i`.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("etcd-{i}.data"))
    }

    /// Pid of member `i` if it is running (not killed by the harness).
    pub fn member_pid(&self, i: usize) -> Option<u32> {
        self.members
            .get(i)?
            .process
            .as_ref()
            .filter(|p| p.exit_status().is_none())
            .map(ChildProcess::pid)
    }

    /// Whole log of member `i` (all its runs).
    pub fn member_log(&self, i: usize) -> String {
        match self.members.get(i) {
            Some(m) => crate::process::read_log(&self.dir.path().join(format!("{}.log", m.name))),
            None => format!("<no etcd member {i}>"),
        }
    }

    /// SIGKILLs member `i` and waits for it. No-op if it is already stopped.
    pub fn kill_member(&mut self, i: usize) -> anyhow::Result<()> {
        self.check_index(i)?;
        if let Some(p) = self.members[i].process.as_mut() {
            p.kill()
                .with_context(|| format!("killing etcd member {}", self.members[i].name))?;
        }
        Ok(())
    }

    /// Restarts member `i` (killing it first if it is running) on the same ports and data dir,
    /// with `--initial-cluster-state existing`, and waits until it answers.
    pub async fn restart_member(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill_member(i)?;
        self.spawn_member(i, "existing")?;
        self.wait_ready(&[i])
            .await
            .with_context(|| format!("restarting etcd member {}", self.members[i].name))
    }

    /// 1-member clusters only: kills the member, deletes its data dir and starts a fresh one
    /// (new, empty store; new cluster id) on the same port.
    pub async fn wipe_and_restart(&mut self) -> anyhow::Result<()> {
        ensure!(
            self.members.len() == 1,
            "wipe_and_restart needs a 1-member cluster (this one has {})",
            self.members.len()
        );
        self.kill_member(0)?;
        let data = self.data_dir(0);
        if data.exists() {
            std::fs::remove_dir_all(&data)
                .with_context(|| format!("removing etcd data dir {}", data.display()))?;
        }
        self.generation += 1;
        self.spawn_member(0, "new")?;
        self.wait_ready(&[0])
            .await
            .context("restarting wiped etcd member")
    }

    /// The client URLs of the *running* members (every member's when none runs).
    ///
    /// Stopped members are left out because etcd-client's balanced channel (tonic `Reconnect` +
    /// tower p2c) does not skip a dead endpoint: requests routed to it fail with
    /// "tcp connect error" (etcdv3/etcd-client#39).
    pub fn running_endpoints(&self) -> Vec<String> {
        let running: Vec<String> = self
            .members
            .iter()
            .enumerate()
            .filter(|(i, _)| self.member_pid(*i).is_some())
            .map(|(_, m)| m.client_url())
            .collect();
        if running.is_empty() {
            self.endpoints()
        } else {
            running
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(p) = m.process.as_mut()
                && let Err(e) = p.kill()
            {
                tracing::warn!(member = %m.name, "failed to kill etcd member: {e:#}");
            }
        }
        // `dir` (TempDir) is removed when the fields are dropped, after this.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_contain_required_flags() {
        let c = EtcdCluster::create(3, PathBuf::from("/usr/bin/etcd")).unwrap();
        let a = c.args(1, "existing").join(" ");
        for flag in [
            "--name etcd-1",
            "--initial-cluster-state existing",
            "--heartbeat-interval 50",
            "--election-timeout 500",
            "--log-level warn",
        ] {
            assert!(a.contains(flag), "{flag} missing in {a}");
        }
        assert_eq!(c.endpoints().len(), 3);
        assert!(c.endpoints_csv().matches("http://127.0.0.1:").count() == 3);
    }

    #[tokio::test]
    async fn single_member_starts_and_answers_health() {
        let c = EtcdCluster::start(1).await.unwrap();
        probe(&c.member_endpoint(0)).await.unwrap();
        assert_eq!(c.running_endpoints(), c.endpoints());
    }

    #[tokio::test]
    async fn startup_failure_reports_log_tail() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake-etcd");
        std::fs::write(&fake, "#!/bin/sh\necho \"boom: $1 $2\" >&2\nexit 2\n").unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = EtcdCluster::start_with_binary(1, &fake).await.unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("exited during startup"), "{msg}");
        assert!(msg.contains("exit code 2"), "{msg}");
        assert!(msg.contains("boom: --name etcd-0"), "{msg}");
    }

    #[tokio::test]
    async fn bad_index_is_an_error() {
        let mut c = EtcdCluster::start(1).await.unwrap();
        assert!(c.kill_member(5).is_err());
        assert!(c.restart_member(5).await.is_err());
    }
}
