//! Stage 5 of the scale benchmark: Cilium's churn on the full mesh, and what
//! it costs the local apiserver:
//!
//! - **propagation**: from the moment a mock peer hands a change to its Watch
//!   streams ([`MockPeers::emitted`]) to the moment that very change arrives
//!   on a local Watch of the real apiserver (agent certificate, scope
//!   `merged`, all kinds: what a node agent asks for, over mTLS). Changes are
//!   matched exactly: every churned record carries its peer's change
//!   generation in its content ([`generation_of`]), so an arrival is paired
//!   with the emission of the same (peer, generation), never guessed;
//! - **sync queue**: `clustermesh_apiserver_sync_queue_size` (per peer:
//!   events received and not yet written) scraped from `/metrics` every
//!   [`SCRAPE_EVERY`]: the largest sum over peers and the largest single peer;
//! - **reconnects**: peer failures (Status) during the churn;
//! - **store**: the syncer's own record writes (`store_write_seconds`), and
//!   a light probe of raw etcd put → watch on the same etcd *during* the
//!   churn ([`PROBE_RATE`]): the store's latency under that very load;
//! - **baseline**: raw etcd put → watch on the local cluster's etcd, paced at
//!   the churn's mesh-wide rate, right after it in the same run (the floor of
//!   the one store round trip on the path).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clustermesh_certs::Role;
use clustermesh_integration::apiserver::Cluster;
use clustermesh_integration::etcd::EtcdClients as _;
use clustermesh_integration::http::http_get;
use clustermesh_integration::mock_peers::{Churn, Emitted, MockPeers, generation_of};
use clustermesh_proto::v1::{
    BatchType, EventType, Kind, Scope, WatchRequest, cluster_mesh_client::ClusterMeshClient,
};
use tokio::sync::broadcast::error::RecvError;

/// How often `/metrics` is scraped for the sync queue during the churn
/// (`BENCH_SCRAPE_MS`, default 200; 0: not at all).
fn scrape_every() -> Option<Duration> {
    match clustermesh_integration::bench_env::env_or::<u64>("BENCH_SCRAPE_MS", 200) {
        0 => None,
        ms => Some(Duration::from_millis(ms)),
    }
}
const HISTOGRAM: &str = "clustermesh_apiserver_propagation_delay_seconds_bucket{";
/// Puts per second of the raw-etcd probe run during the churn (light: the
/// churn itself is 325/s).
const PROBE_RATE: f64 = 20.0;
const WRITES: &str = "clustermesh_apiserver_store_write_seconds_bucket{";
/// After the churn stops: time for the last changes to arrive.
const DRAIN: Duration = Duration::from_secs(3);
const SAMPLE: &str = "clustermesh_apiserver_sync_queue_size{";

/// One churned record seen on the local Watch.
struct Arrival {
    cluster: String,
    kind: Kind,
    generation: u64,
    at: Instant,
}

/// What the local Watch saw.
#[derive(Default)]
struct Seen {
    arrivals: Vec<Arrival>,
    resyncs: u64,
    ended: Option<String>,
}

/// The largest sync queue seen, over all peers and for one peer.
#[derive(Default, Debug)]
struct QueueMax {
    samples: u64,
    failed: u64,
    total: f64,
    peer: f64,
    peer_name: String,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// CPU seconds (user + system) process `pid` has used.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start at the state.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<u64>() as f64 / 100.0
}

/// Busy and total CPU seconds of the whole machine.
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    ((total - idle) as f64 / 100.0, total as f64 / 100.0)
}

/// The pid of the etcd whose command line contains `needle` (its client address).
fn pid_with(needle: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd);
        let argv0 = cmd.split('\0').next().unwrap_or("");
        (argv0.ends_with("/etcd") || argv0 == "etcd")
            .then_some(pid)
            .filter(|_| cmd.contains(needle))
    })
}

/// The cumulative buckets (upper bound's bits → count) of the histogram
/// samples starting with `family` (`name_bucket{`) in `body`, summed over
/// the mock peers (`source_cluster="mock-…"`).
pub fn buckets(body: &str, family: &str) -> BTreeMap<u64, f64> {
    buckets_with(body, family, "source_cluster=\"mock-")
}

/// [`buckets`] over the series whose labels contain `label`.
pub fn buckets_with(body: &str, family: &str, label: &str) -> BTreeMap<u64, f64> {
    let mut out = BTreeMap::new();
    for line in body.lines().filter(|l| l.starts_with(family)) {
        if !line.contains(label) {
            continue;
        }
        let Some((series, v)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = v.parse::<f64>() else { continue };
        let le = clustermesh_integration::bench_env::bucket_bound(series);
        *out.entry(le.to_bits()).or_default() += v;
    }
    out
}

/// The apiserver's `propagation_delay_seconds` buckets over the mock
/// peers, and its `store_write_seconds` buckets of the syncer's record writes.
async fn histogram(health: &str) -> (BTreeMap<u64, f64>, BTreeMap<u64, f64>) {
    match http_get(health, "/metrics").await {
        Ok((200, body)) => (
            buckets(&body, HISTOGRAM),
            buckets_with(&body, WRITES, "operation=\"mesh_write\""),
        ),
        _ => Default::default(),
    }
}

/// Observations between `before` and `after`.
pub fn count(before: &BTreeMap<u64, f64>, after: &BTreeMap<u64, f64>) -> f64 {
    let inf = f64::INFINITY.to_bits();
    after.get(&inf).copied().unwrap_or(0.0) - before.get(&inf).copied().unwrap_or(0.0)
}

/// The bucket (lower, upper bound in ms) holding quantile `q` of the
/// difference `after - before`.
pub fn bucket_of(before: &BTreeMap<u64, f64>, after: &BTreeMap<u64, f64>, q: f64) -> (f64, f64) {
    let total = count(before, after);
    let mut lower = 0.0;
    for (le, n) in after {
        let d = n - before.get(le).copied().unwrap_or(0.0);
        let le = f64::from_bits(*le);
        if d >= q * total {
            return (lower * 1e3, le * 1e3);
        }
        lower = le;
    }
    (lower * 1e3, f64::INFINITY)
}

async fn sync_queue(health: &str) -> Option<(f64, f64, String)> {
    let (code, body) = http_get(health, "/metrics").await.ok()?;
    if code != 200 {
        return None;
    }
    let (mut sum, mut max, mut name) = (0.0, 0.0, String::new());
    for line in body.lines().filter(|l| l.starts_with(SAMPLE)) {
        let Some((series, v)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = v.parse::<f64>() else { continue };
        sum += v;
        if v > max {
            max = v;
            name = series
                .split("source_cluster=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("")
                .to_owned();
        }
    }
    Some((sum, max, name))
}

/// Failures of the mock peers' sync loops (Status), None if Status failed.
async fn failures(c: &Cluster) -> Option<u64> {
    super::status(c).await.map(|s| super::progress(&s).2)
}

/// Raw etcd: puts paced at `rate`/s for `seconds` into the local etcd under
/// `prefix`, each timed until the local etcd watch delivers it. Sorted delays.
async fn etcd_floor(
    c: &Cluster,
    prefix: &'static str,
    rate: f64,
    seconds: u64,
) -> anyhow::Result<Vec<Duration>> {
    let mut client = c.etcd.client().await?;
    let mut stream = client
        .watch(prefix, Some(etcd_client::WatchOptions::new().with_prefix()))
        .await?;
    let n = (rate * seconds as f64).round() as usize;
    let reader = tokio::spawn(async move {
        let mut got: HashMap<String, Instant> = HashMap::new();
        while got.len() < n {
            match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
                Ok(Ok(Some(r))) => {
                    let at = Instant::now();
                    for ev in r.events() {
                        if let Some(kv) = ev.kv() {
                            got.entry(String::from_utf8_lossy(kv.key()).into_owned())
                                .or_insert(at);
                        }
                    }
                }
                _ => break,
            }
        }
        got
    });
    let mut sent = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1.0)));
    let value = vec![b'x'; 120];
    for i in 0..n {
        tick.tick().await;
        let key = format!("{prefix}{i:08}");
        sent.insert(key.clone(), Instant::now());
        let mut kv = client.kv_client();
        let value = value.clone();
        // Independent writers, as the peers are: no put waits for another.
        tokio::spawn(async move {
            let _ = kv.put(key, value, None).await;
        });
    }
    let got = reader.await?;
    let mut d: Vec<Duration> = sent
        .iter()
        .filter_map(|(k, t)| got.get(k).map(|a| a.saturating_duration_since(*t)))
        .collect();
    d.sort();
    Ok(d)
}

/// Runs Cilium's churn for `seconds` on every mock peer and prints the figures.
pub async fn run(local: &Cluster, mocks: &MockPeers, seconds: u64) {
    let ch = local
        .api()
        .channel(Role::Agent)
        .await
        .expect("agent channel");
    let mut client = ClusterMeshClient::new(ch).max_decoding_message_size(64 << 20);
    let mut stream = client
        .watch(WatchRequest {
            kinds: vec![],
            scope: Scope::Merged as i32,
            resume: None,
        })
        .await
        .expect("merged watch")
        .into_inner();

    // The reader: through the snapshot, then every live churned record.
    let stop = Arc::new(AtomicBool::new(false));
    let (live_tx, live_rx) = tokio::sync::oneshot::channel::<Instant>();
    let opened = Instant::now();
    let reader = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut seen = Seen::default();
            let mut live_tx = Some(live_tx);
            while !stop.load(Ordering::Relaxed) {
                let msg = match tokio::time::timeout(Duration::from_secs(1), stream.message()).await
                {
                    Err(_) => continue,
                    Ok(Ok(Some(b))) => b,
                    Ok(Ok(None)) => {
                        seen.ended = Some("stream ended".into());
                        break;
                    }
                    Ok(Err(s)) => {
                        seen.ended = Some(format!("stream failed: {s}"));
                        break;
                    }
                };
                let at = Instant::now();
                match BatchType::try_from(msg.r#type) {
                    Ok(BatchType::SnapshotEnd) => {
                        if let Some(tx) = live_tx.take() {
                            let _ = tx.send(at);
                        }
                        continue;
                    }
                    Ok(BatchType::Resync) => {
                        seen.resyncs += 1;
                        continue;
                    }
                    Ok(BatchType::Events) => {}
                    _ => continue,
                }
                for ev in &msg.events {
                    if ev.r#type != EventType::Upsert as i32 || !ev.cluster.starts_with("mock-") {
                        continue;
                    }
                    let Ok(kind) = Kind::try_from(ev.kind) else {
                        continue;
                    };
                    if let Some(generation) = generation_of(kind, &ev.value) {
                        seen.arrivals.push(Arrival {
                            cluster: ev.cluster.clone(),
                            kind,
                            generation,
                            at,
                        });
                    }
                }
            }
            seen
        })
    };
    match tokio::time::timeout(Duration::from_secs(300), live_rx).await {
        Ok(Ok(at)) => println!(
            "churn: local merged Watch (agent role) got its snapshot in {:.2?}",
            at - opened
        ),
        _ => {
            println!("churn: the local merged Watch never finished its snapshot; skipped");
            return;
        }
    }

    // Emissions, the sync queue, reconnects.
    let mut emitted_rx = mocks.emitted();
    let collector = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut out: Vec<Emitted> = Vec::new();
            let mut lost = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(500), emitted_rx.recv()).await {
                    Ok(Ok(e)) => out.push(e),
                    Ok(Err(RecvError::Lagged(n))) => lost += n,
                    Ok(Err(RecvError::Closed)) => break,
                    Err(_) => {}
                }
            }
            (out, lost)
        })
    };
    let health = local.api().health.clone();
    let every = scrape_every();
    let scraper = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut q = QueueMax::default();
            let Some(every) = every else { return q };
            let mut tick = tokio::time::interval(every);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                match sync_queue(&health).await {
                    Some((sum, max, name)) => {
                        q.samples += 1;
                        q.total = q.total.max(sum);
                        if max > q.peer {
                            q.peer = max;
                            q.peer_name = name;
                        }
                    }
                    None => q.failed += 1,
                }
            }
            q
        })
    };
    // What the peers' loops still hold from before (a restart's resync)
    // drains first: the churn's queue is measured on its own.
    let waited = Instant::now();
    let mut first = None;
    loop {
        let q = sync_queue(&local.api().health).await;
        if first.is_none() {
            first = q.clone();
        }
        let empty = q.is_some_and(|(sum, _, _)| sum == 0.0);
        if empty || waited.elapsed() > Duration::from_secs(120) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some((sum, max, name)) = first {
        println!(
            "churn: sync queue before the churn: {sum} events (largest: {max}, {name}); empty after {:.2?}",
            waited.elapsed()
        );
    }
    let failures0 = failures(local).await;
    let (hist0, writes0) = histogram(&local.api().health).await;
    let api_pid = local.api().child.pid();
    let etcd_pid = local
        .etcd
        .endpoints()
        .first()
        .and_then(|e| pid_with(e.trim_start_matches("http://")));
    let me = std::process::id();
    let cpu0 = (
        cpu_seconds(api_pid),
        etcd_pid.map(cpu_seconds).unwrap_or(0.0),
        cpu_seconds(me),
        machine_cpu(),
    );
    let started = Instant::now();
    mocks.set_churn(Churn::CILIUM_SCALE);
    // A light probe of etcd itself under the same load, at the same time.
    let (_, probe) = tokio::join!(
        tokio::time::sleep(Duration::from_secs(seconds)),
        etcd_floor(local, "bench/probe/", PROBE_RATE, seconds)
    );
    mocks.set_churn(Churn::default());
    let churned = started.elapsed();
    let cpu1 = (
        cpu_seconds(api_pid),
        etcd_pid.map(cpu_seconds).unwrap_or(0.0),
        cpu_seconds(me),
        machine_cpu(),
    );
    tokio::time::sleep(DRAIN).await;
    let failures1 = failures(local).await;
    let (hist1, writes1) = histogram(&local.api().health).await;
    stop.store(true, Ordering::Relaxed);
    let q = scraper.await.expect("scraper");
    let (emitted, lost) = collector.await.expect("collector");
    let seen = reader.await.expect("reader");

    // Pair every arrival with its emission.
    let sent: HashMap<(&str, u64), &Emitted> = emitted
        .iter()
        .map(|e| ((e.cluster.as_str(), e.generation), e))
        .collect();
    let mut delays: BTreeMap<Kind, Vec<Duration>> = BTreeMap::new();
    let mut arrived = std::collections::HashSet::new();
    let mut unmatched = 0u64;
    for a in &seen.arrivals {
        let key = (a.cluster.as_str(), a.generation);
        match sent.get(&key) {
            Some(e) if e.kind == a.kind => {
                if arrived.insert(key) {
                    delays
                        .entry(a.kind)
                        .or_default()
                        .push(a.at.saturating_duration_since(e.at));
                }
            }
            _ => unmatched += 1,
        }
    }
    let missing = emitted.len() - arrived.len();
    let mut all: Vec<Duration> = delays.values().flatten().copied().collect();
    all.sort();
    println!(
        "churn: {} peers × {:?} for {churned:.2?}: {} changes emitted ({:.0}/s mesh-wide), {} arrived on the local Watch, {missing} never arrived, {unmatched} arrivals without a matching emission, {lost} emissions lost by the benchmark's own receiver",
        mocks.peers.len(),
        Churn::CILIUM_SCALE,
        emitted.len(),
        emitted.len() as f64 / churned.as_secs_f64(),
        all.len(),
    );
    println!(
        "churn: propagation mock peer → local merged Watch, {} changes: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target p99 ≤ 10 ms)",
        all.len(),
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.99)),
        ms(all.last().copied().unwrap_or_default()),
    );
    for (kind, d) in &mut delays {
        d.sort();
        println!(
            "churn:   {:<10} {:>6} changes: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            kind.segment(),
            d.len(),
            ms(percentile(d, 0.5)),
            ms(percentile(d, 0.99)),
            ms(d.last().copied().unwrap_or_default()),
        );
    }
    let (lo50, hi50) = bucket_of(&hist0, &hist1, 0.5);
    let (lo99, hi99) = bucket_of(&hist0, &hist1, 0.99);
    println!(
        "churn: the apiserver's own propagation_delay_seconds over the mock peers (origin stamp → its view serves it): p50 in {lo50}–{hi50} ms, p99 in {lo99}–{hi99} ms"
    );
    let (lo50, hi50) = bucket_of(&writes0, &writes1, 0.5);
    let (lo99, hi99) = bucket_of(&writes0, &writes1, 0.99);
    println!(
        "churn: the syncer's record writes (store_write_seconds, operation mesh_write: one etcd transaction round trip each, fence included), {:.0} writes: p50 in {lo50}–{hi50} ms, p99 in {lo99}–{hi99} ms",
        count(&writes0, &writes1)
    );
    let secs = churned.as_secs_f64();
    let share = |a: f64, b: f64| (b - a) / secs * 100.0;
    let (busy0, total0) = cpu0.3;
    let (busy1, total1) = cpu1.3;
    println!(
        "churn: CPU during the churn (% of one core): apiserver {:.0} %, etcd {:.0} %, benchmark process ({} mock peers + Watch client) {:.0} %; whole machine {:.0} % busy of {:.0} cores",
        share(cpu0.0, cpu1.0),
        share(cpu0.1, cpu1.1),
        mocks.peers.len(),
        share(cpu0.2, cpu1.2),
        (busy1 - busy0) / (total1 - total0).max(1e-9) * 100.0,
        (total1 - total0) / secs,
    );
    match every {
        Some(every) => println!(
            "churn: sync queue (sync_queue_size, {} scrapes every {every:?}, {} failed): max over all peers {} events, max of one peer {} ({}) (target ≤ 1,000)",
            q.samples, q.failed, q.total, q.peer, q.peer_name
        ),
        None => println!("churn: sync queue not scraped (BENCH_SCRAPE_MS=0)"),
    }
    match (failures0, failures1) {
        (Some(a), Some(b)) => println!(
            "churn: reconnects (peer failures) during the churn: {} (target 0); local Watch resyncs {}{}",
            b.saturating_sub(a),
            seen.resyncs,
            seen.ended
                .as_deref()
                .map(|e| format!(", local Watch {e}"))
                .unwrap_or_default()
        ),
        _ => println!("churn: reconnects unknown (Status failed)"),
    }

    match probe {
        Ok(d) => println!(
            "churn: raw etcd put → watch on the local etcd during the churn (a probe at {PROBE_RATE:.0}/s beside it), {} puts: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            d.len(),
            ms(percentile(&d, 0.5)),
            ms(percentile(&d, 0.99)),
            ms(d.last().copied().unwrap_or_default()),
        ),
        Err(e) => println!("churn: raw etcd probe failed: {e:#}"),
    }
    // The floor, at the same rate.
    let rate = emitted.len() as f64 / churned.as_secs_f64();
    let secs = seconds.min(10);
    match etcd_floor(local, "bench/floor/", rate, secs).await {
        Ok(d) => println!(
            "churn: baseline raw etcd put → watch on the local etcd, {:.0}/s for {secs} s, {} puts: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            rate,
            d.len(),
            ms(percentile(&d, 0.5)),
            ms(percentile(&d, 0.99)),
            ms(d.last().copied().unwrap_or_default()),
        ),
        Err(e) => println!("churn: baseline raw etcd failed: {e:#}"),
    }
}
