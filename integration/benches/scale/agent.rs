//! Stage 6 of the scale benchmark: one `clustermesh-node-agent` consuming
//! the merged state of the whole mesh (root; eBPF). The local cluster's
//! source is a manifests directory with one gateway node (`gw-a` of
//! `datapath_support::topology`, in its own network namespace with an
//! underlay veth), so the agent is a gateway with a live lease and programs
//! every remote endpoint into its ipcache. Measured:
//!
//! - **cold start**: from the agent's start to `/status` healthy (first
//!   snapshot programmed, last reconcile without error) with every mock
//!   peer's endpoint programmed (`remote_endpoints`);
//! - with `BENCH_AGENT_EARLY=1`, the agent starts before the peers are
//!   registered instead, and the figure is from the registration's start
//!   to the same state: the mesh's cold start as the agent sees it;
//! - **memory**: its RSS then, per remote endpoint (beside its RSS when its
//!   health endpoint first answered, before the snapshot);
//! - **propagation to the map**: churn again with the agent running; the
//!   agent's own `clustermesh_agent_propagation_delay_seconds` (origin stamp,
//!   taken by the mock peer when it emits the change → the change in the
//!   agent's maps), the bucket of p50/p99 over the churn.

use std::time::{Duration, Instant};

use clustermesh_integration::apiserver::Cluster;
use clustermesh_integration::bench_env::rss_bytes;
use clustermesh_integration::mock_peers::MockPeers;

use super::datapath_support::agent::{Agent, relay_into_netns};
use super::datapath_support::manifests::{ServiceSpec, write_cluster};
use super::datapath_support::topology::Topology;

const FAMILY: &str = "clustermesh_agent_propagation_delay_seconds_bucket{";

/// The namespaces and the manifests the local cluster is started from.
pub struct Setup {
    pub topo: Topology,
    pub _dir: tempfile::TempDir,
}

/// The topology (two gateway namespaces; only `gw-a` is used) and the
/// manifests of the local cluster; `--source manifests:<dir>` for it.
pub fn prepare() -> (Setup, Vec<String>) {
    let topo = Topology::new("sb", [&[], &[]]);
    let dir = tempfile::Builder::new()
        .prefix("scale-manifests-")
        .tempdir()
        .expect("manifests dir");
    write_cluster(
        dir.path(),
        &topo.gws[0],
        &ServiceSpec {
            cluster_ip: "10.96.0.10",
            affinity: "none",
            backends: vec![],
        },
        false,
    );
    let args = vec![
        "--source".to_string(),
        format!("manifests:{}", dir.path().display()),
    ];
    (Setup { topo, _dir: dir }, args)
}

fn field(s: &serde_json::Value, k: &str) -> u64 {
    s["datapath"][k].as_u64().unwrap_or(0)
}

/// Starts the agent on the gateway node, connected to `local`.
pub async fn start(setup: &Setup, local: &Cluster) -> Agent {
    let gw = &setup.topo.gws[0];
    relay_into_netns(&gw.ns, local.api().grpc.clone()).await;
    Agent::start(
        &gw.ns,
        &gw.node,
        &local.tls_dir(),
        &gw.pin_dir,
        &gw.cgroup,
        &[],
        local.dir.path(),
    )
}

/// Starts the agent and waits until it has programmed `endpoints` remote
/// endpoints; prints the figures. The running agent is returned.
pub async fn cold_start(setup: &Setup, local: &Cluster, endpoints: u64) -> Option<Agent> {
    let started = Instant::now();
    let agent = start(setup, local).await;
    wait_programmed(&agent, started, endpoints, "cold start")
        .await
        .then_some(agent)
}

/// Waits until `agent` is healthy with `endpoints` remote endpoints
/// programmed; prints the time since `started` (`what` it measures) and
/// the agent's memory. False if it never got there.
pub async fn wait_programmed(agent: &Agent, started: Instant, endpoints: u64, what: &str) -> bool {
    let pid = agent.child.as_ref().map(|c| c.pid()).unwrap_or(0);
    let mut rss_early = None;
    let mut last_print = Instant::now();
    let limit = Duration::from_secs(600);
    let mut last = serde_json::Value::Null;
    while started.elapsed() < limit {
        if let Some(s) = tokio::task::block_in_place(|| agent.status()) {
            if rss_early.is_none() {
                rss_early = Some((rss_bytes(pid), field(&s, "remote_endpoints")));
            }
            let programmed = field(&s, "remote_endpoints");
            if s["healthy"] == true && programmed >= endpoints {
                let took = started.elapsed();
                tokio::time::sleep(Duration::from_secs(2)).await;
                let rss = rss_bytes(pid);
                let (rss0, at0) = rss_early.unwrap_or((0, 0));
                println!(
                    "agent: {what} → healthy with {programmed} remote endpoints programmed ({} ipcache entries, {} remote clusters, {} tunnel sources) in {took:.2?}",
                    field(&s, "ipcache_entries"),
                    s["datapath"]["remote_clusters"]
                        .as_array()
                        .map(|v| v.len())
                        .unwrap_or(0),
                    field(&s, "tunnel_sources"),
                );
                println!(
                    "agent: RSS {:.1} MiB: {:.0} B per remote endpoint (target ≤ 200 B); {:.1} MiB when its health endpoint first answered ({at0} endpoints then): {:.0} B per endpoint over that",
                    rss as f64 / 1048576.0,
                    rss as f64 / programmed.max(1) as f64,
                    rss0 as f64 / 1048576.0,
                    rss.saturating_sub(rss0) as f64 / programmed.max(1) as f64,
                );
                return true;
            }
            if last_print.elapsed() >= Duration::from_secs(5) {
                println!(
                    "  … agent: healthy {}, {programmed} remote endpoints, {} ipcache entries after {:.0?}",
                    s["healthy"],
                    field(&s, "ipcache_entries"),
                    started.elapsed()
                );
                last_print = Instant::now();
            }
            last = s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "agent: NOT programmed after {limit:?}; last status: {last}\n{}",
        agent.log()
    );
    false
}

/// The agent's propagation histogram, summed over the mock peers.
fn histogram(agent: &Agent) -> std::collections::BTreeMap<u64, f64> {
    let body = tokio::task::block_in_place(|| agent.get("/metrics")).unwrap_or_default();
    super::churn::buckets(&body, FAMILY)
}

/// Churn again with the agent running; prints the agent's figure. With
/// `BENCH_PERF_AGENT=FILE`, `perf record -g` of the agent for 10 s of it.
pub async fn churn(local: &Cluster, mocks: &MockPeers, agent: &Agent, seconds: u64) {
    let pid = agent.child.as_ref().map(|c| c.pid()).unwrap_or(0);
    let perf = std::env::var("BENCH_PERF_AGENT").ok().and_then(|out| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "sleep 2 && exec perf record -g -q -p {pid} -o '{out}' -- sleep 10"
            ))
            .spawn()
            .ok()
    });
    let before = histogram(agent);
    let cpu0 = super::churn::cpu_seconds(pid);
    let started = Instant::now();
    super::churn::run(local, mocks, seconds).await;
    let cpu = (super::churn::cpu_seconds(pid) - cpu0) / started.elapsed().as_secs_f64();
    let after = histogram(agent);
    if let Some(mut p) = perf {
        let _ = p.wait();
    }
    println!(
        "agent: CPU from the start of the churn to its end (drain and baseline included): {:.0} % of one core",
        cpu * 100.0
    );
    let count = super::churn::count(&before, &after);
    let (lo50, hi50) = super::churn::bucket_of(&before, &after, 0.5);
    let (lo99, hi99) = super::churn::bucket_of(&before, &after, 0.99);
    println!(
        "agent: propagation mock peer's change (origin stamp) → the agent's maps (clustermesh_agent_propagation_delay_seconds), {count} changes: p50 in {lo50}–{hi50} ms, p99 in {lo99}–{hi99} ms"
    );
}
