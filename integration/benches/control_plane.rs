//! Control-plane benchmarks, each beside its baseline in the same run:
//!
//! 1. fan-out: W agent watchers on one apiserver replica vs the same W
//!    watchers directly on etcd, for the same E writes: server CPU per
//!    delivered event (our apiserver's process vs etcd's extra CPU).
//! 2. memory: apiserver RSS per cached remote endpoint (100k records).
//! 3. propagation: a change written in cluster A until it is in cluster B's
//!    merged Watch (what B's node agents see), at a steady rate, beside the
//!    raw etcd put → watch round trip on A's etcd.
//! 4. wire: bytes a watcher receives for one backend change in a
//!    5,000-backend global service: as a backend record (this version),
//!    beside the same change in a record with inline backends (the old
//!    contract, still sent by older peers).
//! 5. propagation_histogram: changes from a peer at 1,000/s, the receiving
//!    apiserver's propagation_delay_seconds (scraped from /metrics) beside
//!    the benchmark's own measurement of the same changes.
//!
//! Run: `cargo build --release --workspace --bins && cargo bench -p clustermesh-integration --bench control_plane`
//! (numbers and the machine are written down in docs/benchmarks.md).

use clustermesh_integration::bench_env::{env_or, rss_bytes};
use std::time::{Duration, Instant};

#[path = "control_plane/histogram.rs"]
mod histogram;

use clustermesh_apiserver::store::{EtcdOptions, Store, WriteOp};
use clustermesh_certs::Role;
use clustermesh_integration::apiserver::Cluster;
use clustermesh_integration::etcd::EtcdClients as _;
use clustermesh_integration::watcher::Watcher;
use clustermesh_proto::keys;
use clustermesh_proto::v1::{
    Backend, BatchType, Endpoint, EventType, Kind, Node, Scope, Service, StatusRequest,
    cluster_mesh_client::ClusterMeshClient,
};
use etcd_client::WatchOptions;
use prost::Message;

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

fn record(i: usize, cluster: &str) -> Vec<u8> {
    Endpoint {
        ip: format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
        identity: 0x01_0100 + (i as u32 % 4000), // cluster ID 1: every bench cluster that exports is ID 1
        node_ip: format!("192.168.{}.{}", (i >> 8) & 255, i & 255),
        node_name: format!("node-{}", i % 100),
        namespace: "bench".into(),
        pod: format!("pod-{i}"),
        cluster: cluster.into(),
        exported: true,
        ..Default::default()
    }
    .encode_to_vec()
}

/// [`record`] at address `ip` (a peer's ingest rules want an endpoint's key
/// to be its IP, inside a pod CIDR the peer announces: see [`peer_gateway`]).
fn record_at(ip: &str, i: usize, cluster: &str) -> Vec<u8> {
    let mut e = Endpoint::decode(record(i, cluster).as_slice()).expect("own record");
    e.ip = ip.to_owned();
    e.encode_to_vec()
}

/// The exported gateway node of a bench peer: its pod CIDR 10.9.0.0/16
/// covers the endpoints [`paced_writes`] writes.
fn peer_gateway(cluster: &str) -> WriteOp {
    WriteOp::put(
        keys::state(Kind::Node, cluster, "gw"),
        Node {
            name: "gw".into(),
            internal_ips: vec!["192.168.1.1".into()],
            pod_cidrs: vec!["10.9.0.0/16".into()],
            gateway: true,
            cluster: cluster.into(),
            exported: true,
            ..Default::default()
        }
        .encode_to_vec(),
    )
}

async fn write_burst(store: &Store, cluster: &str, events: usize, tag: &str) -> Duration {
    let t = Instant::now();
    for i in 0..events {
        store
            .apply(&[WriteOp::put(
                keys::state(Kind::Endpoint, cluster, &format!("{tag}-{i}")),
                record(i, cluster),
            )])
            .await
            .expect("write");
    }
    t.elapsed()
}

async fn fanout(watchers: usize, events: usize) {
    println!("== fan-out: {watchers} watchers, {events} writes ==");
    let c = Cluster::start("bench", 1, 1, &["--watcher-buffer".into(), "65536".into()])
        .await
        .expect("cluster");
    let store = Store::connect(&EtcdOptions {
        endpoints: c.etcd.endpoints(),
        ..Default::default()
    })
    .await
    .expect("store");
    let etcd_pid = c.etcd.member_pid(0).expect("etcd pid");
    let api_pid = c.api().child.pid();

    // Ours: W agents, each on its own mTLS connection.
    let mut ws = Vec::new();
    for _ in 0..watchers {
        let ch = c.api().channel(Role::Agent).await.expect("dial");
        let mut w = Watcher::open(ch, Scope::Merged, &[Kind::Endpoint], None)
            .await
            .expect("watch");
        w.until(Duration::from_secs(30), "snapshot", |m| {
            m.snapshots == 1 && !m.in_snapshot()
        })
        .await
        .expect("snap");
        ws.push(w);
    }
    let (api0, etcd0) = (cpu_seconds(api_pid), cpu_seconds(etcd_pid));
    let readers: Vec<_> = ws
        .into_iter()
        .map(|mut w| {
            tokio::spawn(async move {
                w.until(Duration::from_secs(300), "burst", |m| {
                    m.records.len() >= events
                })
                .await
            })
        })
        .collect();
    let start = Instant::now();
    let wt = write_burst(&store, "bench", events, "a").await;
    for r in readers {
        r.await.expect("join").expect("delivery");
    }
    let took = start.elapsed();
    let (api_cpu, etcd_cpu_ours) = (cpu_seconds(api_pid) - api0, cpu_seconds(etcd_pid) - etcd0);
    let delivered = (watchers * events) as f64;
    println!(
        "ours: apiserver CPU {api_cpu:.2}s (+ etcd {etcd_cpu_ours:.2}s for writes and 1 watch) for {delivered} deliveries in {took:?} (writes {wt:?}): {:.2} µs/event",
        api_cpu * 1e6 / delivered
    );

    // Baseline: the same watchers directly on etcd (own connection each).
    let e0 = cpu_seconds(etcd_pid);
    let _ = write_burst(&store, "bench", events, "warm").await;
    let etcd_writes_only = cpu_seconds(etcd_pid) - e0;
    let prefix = keys::state_prefix(Kind::Endpoint, "bench") + "b-";
    let mut streams = Vec::new();
    for _ in 0..watchers {
        let mut client = c.etcd.client().await.expect("etcd client");
        let s = client
            .watch(prefix.clone(), Some(WatchOptions::new().with_prefix()))
            .await
            .expect("etcd watch");
        streams.push((client, s));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let e1 = cpu_seconds(etcd_pid);
    let readers: Vec<_> = streams
        .into_iter()
        .map(|(client, mut s)| {
            tokio::spawn(async move {
                let _keep = client;
                let mut n = 0;
                while n < events {
                    match s.message().await {
                        Ok(Some(r)) => n += r.events().len(),
                        _ => break,
                    }
                }
                n
            })
        })
        .collect();
    let start = Instant::now();
    let _ = write_burst(&store, "bench", events, "b").await;
    for r in readers {
        assert_eq!(
            r.await.expect("join"),
            events,
            "etcd watcher got every event"
        );
    }
    let took = start.elapsed();
    let etcd_cpu = cpu_seconds(etcd_pid) - e1;
    let etcd_fanout = (etcd_cpu - etcd_writes_only).max(0.0);
    println!(
        "etcd: CPU {etcd_cpu:.2}s (writes alone {etcd_writes_only:.2}s, so {etcd_fanout:.2}s serving watchers) for {delivered} deliveries in {took:?}: {:.2} µs/event",
        etcd_fanout * 1e6 / delivered
    );
    println!(
        "ratio (etcd / ours, CPU per delivered event): {:.2}",
        etcd_fanout / api_cpu.max(1e-9)
    );
}

/// Writes endpoint records `range` of `cluster` in transactions of 128, at
/// the key `key(ip)`; returns the bytes of the values written.
async fn put_endpoints(
    store: &Store,
    cluster: &str,
    range: std::ops::Range<usize>,
    key: impl Fn(&str) -> String,
) -> usize {
    let mut ops = Vec::with_capacity(128);
    let mut bytes = 0;
    for i in range {
        let v = record(i, cluster);
        bytes += v.len();
        let ip = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
        ops.push(WriteOp::put(key(&ip), v));
        if ops.len() == 128 {
            store.apply(&ops).await.expect("write");
            ops.clear();
        }
    }
    store.apply(&ops).await.expect("write");
    bytes
}

/// Writes `records` cached endpoints of peer `peer` and waits until the view holds them.
async fn fill_cache(
    store: &Store,
    client: &mut ClusterMeshClient<tonic::transport::Channel>,
    peer: &str,
    records: usize,
) -> usize {
    let bytes = put_endpoints(store, peer, 0..records, |ip| {
        keys::cache(Kind::Endpoint, peer, ip)
    })
    .await;
    wait_cached(client, peer, records).await;
    bytes
}

/// RSS at 0, N and 2N cached endpoints: the slope between N and 2N is the
/// marginal cost of a record (the resume history, a fixed-size buffer of
/// recent changes, is full by then and does not grow with N).
async fn memory(records: usize) {
    println!("== memory: cached remote endpoints ==");
    let c = Cluster::start("mem", 1, 1, &[]).await.expect("cluster");
    let store = Store::connect(&EtcdOptions {
        endpoints: c.etcd.endpoints(),
        ..Default::default()
    })
    .await
    .expect("store");
    let pid = c.api().child.pid();
    let ch = c.api().channel(Role::Admin).await.expect("dial");
    let mut client = ClusterMeshClient::new(ch);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r0 = rss_bytes(pid);
    let bytes = fill_cache(&store, &mut client, "peera", records).await;
    let r1 = rss_bytes(pid);
    fill_cache(&store, &mut client, "peerb", records).await;
    let r2 = rss_bytes(pid);
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "apiserver RSS {:.1} → {:.1} → {:.1} MiB at 0 / {records} / {} records: {:.0} B per record overall, {:.0} B per record marginal (record value {:.0} B, key {} B)",
        mib(r0),
        mib(r1),
        mib(r2),
        2 * records,
        (r2.saturating_sub(r0)) as f64 / (2 * records) as f64,
        (r2.saturating_sub(r1)) as f64 / records as f64,
        bytes as f64 / records as f64,
        keys::cache(Kind::Endpoint, "peera", "10.0.0.0").len()
    );
}

/// Waits until `client`'s apiserver holds `n` records of `peer`, then settles.
async fn wait_cached(
    client: &mut ClusterMeshClient<tonic::transport::Channel>,
    peer: &str,
    n: usize,
) {
    loop {
        let st = client
            .status(StatusRequest {})
            .await
            .expect("status")
            .into_inner();
        if st
            .counts
            .iter()
            .filter(|r| r.cluster == peer && r.kind == Kind::Endpoint as i32)
            .map(|r| r.count)
            .sum::<u64>() as usize
            >= n
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Through the real path: cluster A exports N then 2N endpoints, cluster B's
/// syncer mirrors them; B's RSS slope between N and 2N is what one cached
/// remote endpoint costs (view entry + the syncer's compact mirror entry).
async fn memory_mesh(records: usize) {
    println!("== memory through the mesh syncer: B caching A's endpoints ==");
    let a = Cluster::start("mem-a", 1, 1, &[]).await.expect("a");
    let b = Cluster::start("mem-b", 2, 1, &[]).await.expect("b");
    clustermesh_integration::apiserver::connect(&a, &b)
        .await
        .expect("connect");
    let store = Store::connect(&EtcdOptions {
        endpoints: a.etcd.endpoints(),
        ..Default::default()
    })
    .await
    .expect("store");
    let pid = b.api().child.pid();
    let ch = b.api().channel(Role::Admin).await.expect("dial");
    let mut client = ClusterMeshClient::new(ch);
    let key = |ip: &str| keys::state(Kind::Endpoint, "mem-a", ip);
    // The peer's endpoints must lie inside a pod CIDR one of its nodes
    // announces, or B's syncer holds them pending (docs/mesh.md).
    let node = Node {
        name: "node-0".into(),
        internal_ips: vec!["192.168.0.1".into()],
        pod_cidrs: vec!["10.0.0.0/8".into()],
        cluster: "mem-a".into(),
        exported: true,
        ..Default::default()
    };
    store
        .apply(&[WriteOp::put(
            keys::state(Kind::Node, "mem-a", "node-0"),
            node.encode_to_vec(),
        )])
        .await
        .expect("node");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r0 = rss_bytes(pid);
    put_endpoints(&store, "mem-a", 0..records, key).await;
    wait_cached(&mut client, "mem-a", records).await;
    let r1 = rss_bytes(pid);
    put_endpoints(&store, "mem-a", records..2 * records, key).await;
    wait_cached(&mut client, "mem-a", 2 * records).await;
    let r2 = rss_bytes(pid);
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "B's apiserver RSS {:.1} → {:.1} → {:.1} MiB at 0 / {records} / {} cached endpoints: {:.0} B per record marginal (view + syncer mirror)",
        mib(r0),
        mib(r1),
        mib(r2),
        2 * records,
        (r2.saturating_sub(r1)) as f64 / records as f64
    );
}

async fn wire(backends: usize) {
    println!("== wire: one backend change in a {backends}-backend global service ==");
    let c = Cluster::start("wire", 1, 1, &[]).await.expect("cluster");
    let store = Store::connect(&EtcdOptions {
        endpoints: c.etcd.endpoints(),
        ..Default::default()
    })
    .await
    .expect("store");
    // Ports and node names as the exporter writes them for an EndpointSlice.
    let backend = |i: usize| Backend {
        ip: format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
        ports: vec![clustermesh_proto::v1::BackendPort {
            name: "http".into(),
            port: 8080,
            protocol: "TCP".into(),
        }],
        ready: true,
        serving: true,
        node_name: format!("node-{}", i % 100),
        ..Default::default()
    };
    let svc = |name: &str| Service {
        namespace: "shop".into(),
        name: name.into(),
        global: true,
        shared: true,
        frontend_ips: vec!["10.96.0.10".into()],
        cluster: "wire".into(),
        exported: true,
        backends: (0..backends).map(backend).collect(),
        ..Default::default()
    };
    // Baseline, the old contract (an older peer's record): backends inline.
    let mut old = svc("inline");
    let old_key = keys::state(Kind::Service, "wire", "shop/inline");
    // This version: the record without backends, one record per backend.
    let new = svc("split");
    let mut ops = vec![
        WriteOp::put(old_key.clone(), old.encode_to_vec()),
        WriteOp::put(
            keys::state(Kind::Service, "wire", "shop/split"),
            clustermesh_proto::backends::without_backends(&new).encode_to_vec(),
        ),
    ];
    for b in &new.backends {
        ops.push(WriteOp::put(
            keys::state(
                Kind::ServiceBackend,
                "wire",
                &clustermesh_proto::backends::key("shop", "split", &b.ip),
            ),
            clustermesh_proto::backends::record(&new, b).encode_to_vec(),
        ));
    }
    store.apply(&ops).await.expect("write");
    let ch = c.api().channel(Role::Remote).await.expect("dial");
    let mut w = Watcher::open(ch, Scope::Exported, &[], None)
        .await
        .expect("watch");
    w.until(Duration::from_secs(30), "snapshot", |m| {
        m.records.len() > backends && !m.in_snapshot()
    })
    .await
    .expect("snap");
    // One change each, one after the other, each read from the real Watch.
    let next_event = async |w: &mut Watcher| loop {
        let b = w
            .next(Duration::from_secs(10))
            .await
            .expect("batch")
            .expect("open");
        if b.r#type == BatchType::Events as i32 && !b.events.is_empty() {
            break b;
        }
    };
    old.backends[17].ready = false;
    store
        .apply(&[WriteOp::put(old_key, old.encode_to_vec())])
        .await
        .expect("write");
    let old_batch = next_event(&mut w).await;
    let mut b17 = new.backends[17].clone();
    b17.ready = false;
    store
        .apply(&[WriteOp::put(
            keys::state(
                Kind::ServiceBackend,
                "wire",
                &clustermesh_proto::backends::key("shop", "split", &b17.ip),
            ),
            clustermesh_proto::backends::record(&new, &b17).encode_to_vec(),
        )])
        .await
        .expect("write");
    let new_batch = next_event(&mut w).await;
    assert_eq!(new_batch.events.len(), 1);
    println!(
        "one backend's readiness changed, as a backend record (this version): {} B in the WatchBatch ({} B record; +5 B gRPC framing, + TLS record overhead)",
        new_batch.encoded_len(),
        new_batch.events[0].value.len()
    );
    println!(
        "baseline, the same change in a record with inline backends (older peers): {} B in the WatchBatch ({} B record)",
        old_batch.encoded_len(),
        old.encoded_len()
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(name: &str, mut v: Vec<Duration>) {
    v.sort();
    println!(
        "{name}: n={} p50 {:?} p90 {:?} p99 {:?} max {:?}",
        v.len(),
        percentile(&v, 0.5),
        percentile(&v, 0.9),
        percentile(&v, 0.99),
        v.last().copied().unwrap_or_default()
    );
}

/// Writes `count` changes at `rate`/s into `cluster`'s state with `store`,
/// remembering when each key was written.
async fn paced_writes(
    store: Store,
    cluster: String,
    count: usize,
    rate: u64,
    sent: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>>,
) -> Duration {
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let mut inflight = tokio::task::JoinSet::new();
    for i in 0..count {
        tick.tick().await;
        let key = format!("10.9.{}.{}", i / 256, i % 256);
        let op = WriteOp::put(
            keys::state(Kind::Endpoint, &cluster, &key),
            record_at(&key, i, &cluster),
        );
        sent.lock().expect("lock").insert(key, Instant::now());
        let s = store.clone();
        inflight.spawn(async move { s.apply(&[op]).await.expect("write") });
        while inflight.len() > 64 {
            inflight.join_next().await;
        }
    }
    while inflight.join_next().await.is_some() {}
    start.elapsed()
}

async fn propagation(rate: u64, count: usize) {
    println!("== propagation: {count} changes at {rate}/s, cluster A → cluster B's merged view ==");
    let a = Cluster::start("prop-a", 1, 1, &[]).await.expect("a");
    let b = Cluster::start("prop-b", 2, 1, &[]).await.expect("b");
    clustermesh_integration::apiserver::connect(&a, &b)
        .await
        .expect("connect");
    let store = Store::connect(&EtcdOptions {
        endpoints: a.etcd.endpoints(),
        ..Default::default()
    })
    .await
    .expect("store");
    let ch = b.api().channel(Role::Agent).await.expect("dial");
    let mut w = Watcher::open(ch, Scope::Merged, &[Kind::Endpoint], None)
        .await
        .expect("watch");
    w.until(Duration::from_secs(10), "snapshot", |m| {
        m.snapshots == 1 && !m.in_snapshot()
    })
    .await
    .expect("snap");
    // Warm the path (peer connected and synced).
    store
        .apply(&[
            peer_gateway("prop-a"),
            WriteOp::put(
                keys::state(Kind::Endpoint, "prop-a", "10.9.255.1"),
                record_at("10.9.255.1", 0, "prop-a"),
            ),
        ])
        .await
        .expect("w");
    w.until(Duration::from_secs(30), "warm-up record", |m| {
        m.records.keys().any(|k| k.2 == "10.9.255.1")
    })
    .await
    .expect("warm");

    let sent = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let writer = tokio::spawn(paced_writes(
        store.clone(),
        "prop-a".into(),
        count,
        rate,
        sent.clone(),
    ));
    let mut lat = Vec::with_capacity(count);
    while lat.len() < count {
        let b = w
            .next(Duration::from_secs(30))
            .await
            .expect("batch")
            .expect("open");
        let now = Instant::now();
        for e in &b.events {
            if e.r#type == EventType::Upsert as i32
                && let Some(t) = sent.lock().expect("lock").get(&e.key)
            {
                lat.push(now.duration_since(*t));
            }
        }
    }
    let took = writer.await.expect("writer");
    println!(
        "achieved write rate: {:.0}/s",
        count as f64 / took.as_secs_f64()
    );
    summary("A store → B merged Watch", lat);

    // Baseline: raw etcd put → watch on A's etcd, same pacing.
    let mut client = a.etcd.client().await.expect("etcd");
    let mut ws = client
        .watch(
            keys::state_prefix(Kind::Endpoint, "base"),
            Some(WatchOptions::new().with_prefix()),
        )
        .await
        .expect("w");
    let sent = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let writer = tokio::spawn(paced_writes(
        store,
        "base".into(),
        count,
        rate,
        sent.clone(),
    ));
    let mut lat = Vec::with_capacity(count);
    while lat.len() < count {
        let Ok(Some(r)) = ws.message().await else {
            break;
        };
        let now = Instant::now();
        for e in r.events() {
            if let Some(kv) = e.kv() {
                let key = String::from_utf8_lossy(kv.key())
                    .rsplit('/')
                    .next()
                    .unwrap_or("")
                    .to_owned();
                if let Some(t) = sent.lock().expect("lock").get(&key) {
                    lat.push(now.duration_since(*t));
                }
            }
        }
    }
    writer.await.expect("writer");
    summary(
        "baseline: raw etcd put → watch (same etcd, same pacing)",
        lat,
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let run = |name: &str| only.is_empty() || only.split(',').any(|o| o == name);
    rt.block_on(async {
        if run("fanout") {
            fanout(
                env_or::<usize>("BENCH_WATCHERS", 1000),
                env_or::<usize>("BENCH_EVENTS", 1000),
            )
            .await;
        }
        if run("memory") {
            memory(env_or::<usize>("BENCH_RECORDS", 100_000)).await;
        }
        if run("memory_mesh") {
            memory_mesh(env_or::<usize>("BENCH_RECORDS", 100_000)).await;
        }
        if run("wire") {
            wire(5000).await;
        }
        if run("propagation_histogram") {
            histogram::run(
                env_or::<usize>("BENCH_RATE", 1000) as u64,
                env_or::<usize>("BENCH_CHANGES", 5000),
            )
            .await;
        }
        if run("propagation") {
            propagation(
                env_or::<usize>("BENCH_RATE", 1000) as u64,
                env_or::<usize>("BENCH_CHANGES", 5000),
            )
            .await;
        }
    });
}
