//! A `clustermesh-node-agent` process inside a gateway's network namespace
//! (`nsenter --net`, network namespace only, so pins land in the host's
//! bpffs — DESIGN §8), reaching its apiserver through a relay that listens
//! inside that namespace, and queried through its health endpoint there.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clustermesh_integration::eventually;
use clustermesh_integration::process::{ChildProcess, workspace_bin};
use clustermesh_node_agent::datapath::netns::{named_netns_path, run_in_netns};
use tokio::net::{TcpListener, TcpStream};

/// Port the relay listens on inside each gateway namespace.
pub const RELAY_PORT: u16 = 7443;
/// Port of the agent's health endpoint inside each gateway namespace.
pub const HEALTH_PORT: u16 = 9900;

/// Relays TCP connections made to 127.0.0.1:`RELAY_PORT` inside netns `ns`
/// to `target` (an apiserver on the host's loopback). Sockets keep the
/// namespace they were created in, so one task bridges the two.
pub async fn relay_into_netns(ns: &str, target: String) -> tokio::task::JoinHandle<()> {
    let std_listener = run_in_netns(&named_netns_path(ns), || {
        std::net::TcpListener::bind(("127.0.0.1", RELAY_PORT))
    })
    .expect("entering the gateway namespace")
    .expect("binding the relay inside the gateway namespace");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let listener = TcpListener::from_std(std_listener).expect("tokio listener");
    tokio::spawn(async move {
        while let Ok((mut inside, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outside) = TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inside, &mut outside).await;
                }
            });
        }
    })
}

pub struct Agent {
    pub ns: String,
    pub name: String,
    args: Vec<String>,
    log_dir: PathBuf,
    pub child: Option<ChildProcess>,
}

impl Agent {
    /// Starts the agent for gateway namespace `ns` with the common flags plus `extra`.
    pub fn start(
        ns: &str,
        node: &str,
        tls_dir: &Path,
        pin_dir: &Path,
        cgroup: &Path,
        extra: &[&str],
        log_dir: &Path,
    ) -> Agent {
        let mut flags = vec![
            "--underlay-dev",
            super::topology::UNDERLAY_IF,
            "--lb-cgroup",
            cgroup.to_str().expect("cgroup path"),
        ];
        flags.extend_from_slice(extra);
        Self::start_node(ns, node, tls_dir, pin_dir, &flags, log_dir)
    }

    /// Starts the agent the way a DaemonSet does on any node: the same flags
    /// everywhere, no `--underlay-dev` (found from the routes), plus `extra`.
    pub fn start_node(
        ns: &str,
        node: &str,
        tls_dir: &Path,
        pin_dir: &Path,
        extra: &[&str],
        log_dir: &Path,
    ) -> Agent {
        let mut args: Vec<String> = vec![
            format!("--net={}", named_netns_path(ns).display()),
            workspace_bin("clustermesh-node-agent")
                .expect("clustermesh-node-agent binary (cargo build --workspace --bins)")
                .display()
                .to_string(),
        ];
        let flags = [
            "--apiserver".to_string(),
            format!("127.0.0.1:{RELAY_PORT}"),
            "--tls-dir".into(),
            tls_dir.display().to_string(),
            "--node-name".into(),
            node.into(),
            "--pin-dir".into(),
            pin_dir.display().to_string(),
            "--health-listen".into(),
            format!("127.0.0.1:{HEALTH_PORT}"),
            "--log-interval".into(),
            "5s".into(),
        ];
        args.extend(flags);
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut a = Agent {
            ns: ns.to_string(),
            name: format!("agent-{node}"),
            args,
            log_dir: log_dir.to_path_buf(),
            child: None,
        };
        a.spawn();
        a
    }

    fn spawn(&mut self) {
        let child = ChildProcess::spawn_with_env(
            &self.name,
            Path::new("/usr/bin/nsenter"),
            &self.args,
            &[(
                "RUST_LOG".into(),
                std::env::var("CLUSTERMESH_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )],
            &self.log_dir,
        )
        .expect("spawning the agent");
        self.child = Some(child);
    }

    /// SIGTERM (the datapath stays up), then start the same agent again.
    pub fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.terminate(Duration::from_secs(10))
                .expect("stopping the agent");
        }
        self.spawn();
    }

    /// Stops the agent (its datapath stays up).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.terminate(Duration::from_secs(10));
        }
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        self.child
            .as_ref()
            .map(|c| c.log_tail(60))
            .unwrap_or_default()
    }

    /// GET `path` on the health endpoint (from inside the namespace).
    pub fn get(&self, path: &str) -> Option<String> {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", named_netns_path(&self.ns).display()))
            .args(["curl", "-s", "-m", "2"])
            .arg(format!("http://127.0.0.1:{HEALTH_PORT}{path}"))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `/status` as JSON.
    pub fn status(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.get("/status")?).ok()
    }

    /// A datapath counter from `/metrics` (packets of `reason`).
    pub fn counter(&self, reason: &str) -> u64 {
        let needle = format!("clustermesh_datapath_packets_total{{reason=\"{reason}\"}} ");
        self.get("/metrics")
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix(&needle).and_then(|v| v.trim().parse().ok()))
            })
            .unwrap_or(0)
    }

    /// Waits until `/status` satisfies `f`.
    pub async fn wait(
        &mut self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&serde_json::Value) -> bool,
    ) {
        let r = eventually(what, timeout, || async {
            tokio::task::block_in_place(|| self.status()).filter(|s| f(s))
        })
        .await;
        if let Err(e) = r {
            let failure = self
                .child
                .as_mut()
                .map(|c| c.describe_failure())
                .unwrap_or_default();
            panic!(
                "{e}\nagent: {failure}\nlast status: {:?}\nlog:\n{}",
                self.status(),
                self.log()
            );
        }
    }
}

impl Agent {
    /// SIGKILL: the agent dies at once (its pinned datapath stays).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
        }
    }

    /// Starts the same agent again after [`Agent::kill`] or [`Agent::stop`].
    pub fn start_again(&mut self) {
        if self.child.is_none() {
            self.spawn();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Kill, do not terminate: the topology's Drop removes pins and namespaces.
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
        }
    }
}

/// A listening address inside a pod (for servers).
pub fn pod_addr(ip: std::net::Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}
