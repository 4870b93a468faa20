//! Scale at Cilium's own gate (issue 10): N mock peers (default 250) × 100
//! nodes × 1,000 endpoints × 100 identities, served over the real mTLS Watch
//! by `mock_peers`, into one real apiserver + etcd. In one run:
//!
//! 1. **raw etcd baseline**: the same number of records of the same sizes
//!    put into a fresh etcd with batched transactions (128 per txn), the
//!    floor of caching them;
//! 2. **cold start**: from registering the peers to every record cached,
//!    every peer synced (all kinds) and served in Status;
//! 3. **memory**: the apiserver's RSS per cached remote record, and etcd's DB size;
//! 4. **restart**: the apiserver SIGKILLed and started again: time to
//!    ready with every record served, and whether the store revision moved
//!    (it must not: nothing rewritten);
//! 5. **churn** ([`churn`]): Cilium's churn (per peer: nodes 0.1/s,
//!    endpoints 1/s, identities 0.2/s) for `BENCH_CHURN_SECONDS` (default
//!    20): propagation from each mock peer's change to a local merged Watch
//!    (p50/p99/max, changes matched exactly), the largest sync queue
//!    (`sync_queue_size`) and reconnects (peer failures) during it;
//! 6. **agent** ([`agent`], root, `BENCH_AGENT=0` skips it): one node agent
//!    (a gateway of the local cluster, in a network namespace) programming
//!    the whole mesh: cold start to healthy with every remote endpoint
//!    programmed, its RSS per remote endpoint, then the churn again with the
//!    agent's own propagation histogram (mock peer's change → its maps).
//!    With `BENCH_AGENT_EARLY=1` the agent starts before the peers are
//!    registered (and runs through the restart and both churns): its figure
//!    is then from the registration's start to every endpoint programmed.
//!
//! Run: `cargo build --release --workspace --bins && cargo bench -p clustermesh-integration --bench scale`
//! Sizes: `BENCH_PEERS` (250), `BENCH_NODES` (100), `BENCH_ENDPOINTS` (1000),
//! `BENCH_IDENTITIES` (100), `BENCH_CHURN_SECONDS` (20).

#[path = "scale/agent.rs"]
mod agent;
#[path = "scale/churn.rs"]
mod churn;
#[path = "../tests/datapath_support/mod.rs"]
mod datapath_support;

use clustermesh_integration::bench_env::{env_or, rss_bytes};
use std::time::{Duration, Instant};

use clustermesh_certs::Role;
use clustermesh_integration::apiserver::Cluster;
use clustermesh_integration::etcd::EtcdClients as _;
use clustermesh_integration::mock_peers::{Churn, MockPeers, Shape};
use clustermesh_proto::v1::{
    Kind, StatusRequest, StatusResponse, cluster_mesh_client::ClusterMeshClient,
};

async fn status(c: &Cluster) -> Option<StatusResponse> {
    let ch = c.api().channel(Role::Admin).await.ok()?;
    ClusterMeshClient::new(ch)
        .status(StatusRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// Records served for the mock peers, and how many peers are synced in every kind.
fn progress(s: &StatusResponse) -> (u64, usize, u64) {
    let served = s
        .counts
        .iter()
        .filter(|c| c.cluster.starts_with("mock-"))
        .map(|c| c.count)
        .sum();
    let synced = s
        .peers
        .iter()
        .filter(|p| {
            p.connected
                && clustermesh_proto::RECORD_KINDS
                    .iter()
                    .filter(|k| **k != Kind::Service && **k != Kind::Policy)
                    .all(|k| p.synced.contains(&(*k as i32)))
        })
        .count();
    let failures = s.peers.iter().map(|p| p.failures).sum();
    (served, synced, failures)
}

async fn wait_all(c: &Cluster, want: u64, peers: usize, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut last = Instant::now();
    while start.elapsed() < limit {
        if let Some(s) = status(c).await {
            let (served, synced, _) = progress(&s);
            if served >= want && synced >= peers {
                return Some(start.elapsed());
            }
            if last.elapsed() >= Duration::from_secs(5) {
                println!(
                    "  … {served}/{want} records served, {synced}/{peers} peers synced after {:?}",
                    start.elapsed()
                );
                last = Instant::now();
            }
        }
        // Polled twice a second: each poll is a new mTLS connection and a
        // Status, which an operator would not ask for ten times a second.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

/// Raw etcd: `n` records of `size` bytes put with 128-op transactions.
async fn raw_etcd(n: u64, size: usize) -> Duration {
    let etcd = clustermesh_integration::etcd::EtcdCluster::start(1)
        .await
        .expect("etcd for the baseline");
    let mut client = etcd.client().await.expect("client");
    let value = vec![b'x'; size];
    let start = Instant::now();
    let mut i = 0u64;
    while i < n {
        let ops: Vec<etcd_client::TxnOp> = (i..(i + 128).min(n))
            .map(|k| etcd_client::TxnOp::put(format!("bench/{k:08}"), value.clone(), None))
            .collect();
        i += ops.len() as u64;
        client
            .txn(etcd_client::Txn::new().and_then(ops))
            .await
            .expect("txn");
    }
    start.elapsed()
}

async fn etcd_db_size(c: &Cluster) -> i64 {
    match c.etcd.client().await {
        Ok(mut cl) => cl.status().await.map(|s| s.db_size()).unwrap_or(0),
        Err(_) => 0,
    }
}

/// The newest modification revision among the cached (mirrored) records.
async fn records_revision(c: &Cluster) -> i64 {
    let opts = etcd_client::GetOptions::new()
        .with_prefix()
        .with_keys_only()
        .with_sort(
            etcd_client::SortTarget::Mod,
            etcd_client::SortOrder::Descend,
        )
        .with_limit(1);
    match c.etcd.client().await {
        Ok(mut cl) => cl
            .get(
                format!("{}cache/", clustermesh_proto::keys::PREFIX),
                Some(opts),
            )
            .await
            .ok()
            .and_then(|r| r.kvs().first().map(|kv| kv.mod_revision()))
            .unwrap_or(0),
        Err(_) => 0,
    }
}

async fn revision(c: &Cluster) -> i64 {
    match c.etcd.client().await {
        Ok(mut cl) => cl
            .get("clustermesh/v1/meta/cluster", None)
            .await
            .ok()
            .and_then(|r| r.header().map(|h| h.revision()))
            .unwrap_or(0),
        Err(_) => 0,
    }
}

async fn run() {
    let peers = env_or::<u32>("BENCH_PEERS", 250);
    let shape = Shape {
        nodes: env_or::<u32>("BENCH_NODES", 100),
        endpoints: env_or::<u32>("BENCH_ENDPOINTS", 1000),
        identities: env_or::<u32>("BENCH_IDENTITIES", 100),
    };
    let per_peer = u64::from(shape.nodes + shape.endpoints + shape.identities);
    let want = per_peer * u64::from(peers);
    let mib = |b: u64| b as f64 / 1048576.0;
    println!("== scale: {peers} peers × {shape:?} = {want} records ==");

    // 1. Raw etcd: the same count, endpoint-sized values (~120 B).
    let raw = raw_etcd(want, 120).await;
    println!("raw etcd: {want} puts of 120 B in 128-op txns: {raw:.2?}");

    // 2. Cold start. With the agent stage, the local cluster's source is
    // the manifests of the agent's gateway node.
    let with_agent = env_or::<u32>("BENCH_AGENT", 1) == 1
        && datapath_support::require_root("scale bench, agent stage");
    let (setup, args) = if with_agent {
        let (s, a) = agent::prepare();
        (Some(s), a)
    } else {
        (None, Vec::new())
    };
    let local = Cluster::start("local", 1, 1, &args)
        .await
        .expect("local cluster");
    let ca =
        std::fs::read_to_string(local.tls_dir().join(clustermesh_certs::CA_CERT_FILE)).expect("ca");
    let mocks = MockPeers::start(2, peers, shape, Churn::default(), &ca)
        .await
        .expect("mock peers");
    // With BENCH_AGENT_EARLY=1 the agent runs from before the registration.
    let early = match &setup {
        Some(setup) if env_or::<u32>("BENCH_AGENT_EARLY", 0) == 1 => {
            Some(agent::start(setup, &local).await)
        }
        _ => None,
    };
    let pid = local.api().child.pid();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = rss_bytes(pid);
    let start = Instant::now();
    for p in &mocks.peers {
        local
            .register_peer(p.peer_config())
            .await
            .unwrap_or_else(|e| panic!("registering {}: {e}", p.name));
    }
    let registered = start.elapsed();
    let synced = wait_all(&local, want, peers as usize, Duration::from_secs(600)).await;
    let cold = start.elapsed();
    match synced {
        Some(_) => println!(
            "cold start: {peers} peers registered in {registered:.2?}; every record cached, synced and served after {cold:.2?} (target ≤ 30 s; raw etcd floor {raw:.2?})"
        ),
        None => println!("cold start: NOT complete after {cold:.2?}"),
    }
    let endpoints = u64::from(peers) * u64::from(shape.endpoints);
    let early = match early {
        Some(a) => agent::wait_programmed(
            &a,
            start,
            endpoints,
            "running before the peers were registered: registration",
        )
        .await
        .then_some(a),
        None => None,
    };

    // 3. Memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1 = rss_bytes(pid);
    let db = etcd_db_size(&local).await;
    println!(
        "memory: apiserver RSS {:.1} → {:.1} MiB: {:.0} B per cached record (target ≤ 300 B per endpoint); etcd DB {:.1} MiB",
        mib(rss0),
        mib(rss1),
        rss1.saturating_sub(rss0) as f64 / want as f64,
        db as f64 / 1048576.0
    );

    // 4. Restart.
    let rev0 = revision(&local).await;
    let rec0 = records_revision(&local).await;
    let mut local = local;
    let started = Instant::now();
    // SIGKILL, then the same replica again on the same ports.
    local.replicas[0]
        .restart()
        .await
        .expect("restarting the apiserver");
    let ready = wait_all(&local, want, peers as usize, Duration::from_secs(300)).await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rev1 = revision(&local).await;
    let rec1 = records_revision(&local).await;
    match ready {
        Some(_) => println!(
            "restart: SIGKILL → ready with all {want} records served and {peers} peers synced in {took:.2?} (target ≤ 10 s); newest cached record's revision {rec0} → {rec1} ({}); store revision {rev0} → {rev1} (status and lease writes)",
            if rec1 == rec0 {
                "no record rewritten"
            } else {
                "RECORDS REWRITTEN"
            }
        ),
        None => println!("restart: NOT ready after {took:.2?}"),
    }
    let rss2 = rss_bytes(local.api().child.pid());
    println!("after restart: apiserver RSS {:.1} MiB", mib(rss2));

    // 5. Churn.
    let churn_seconds = env_or::<u64>("BENCH_CHURN_SECONDS", 20);
    churn::run(&local, &mocks, churn_seconds).await;

    // 6. The agent (the early one, if it ran).
    if let Some(setup) = &setup {
        let running = match early {
            Some(a) => Some(a),
            None => agent::cold_start(setup, &local, endpoints).await,
        };
        if let Some(mut a) = running {
            println!("== churn again, with the agent running ==");
            agent::churn(&local, &mocks, &a, churn_seconds).await;
            a.stop();
        }
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run());
}
