//! `propagation_histogram`: changes from a peer at a steady rate (1,000/s by
//! default), and the receiving apiserver's own figure for them,
//! `clustermesh_apiserver_propagation_delay_seconds{source_cluster}`
//! scraped from its `/metrics` before and after, side by side with the
//! benchmark's own measurement of the same changes:
//! - write → merged Watch: from the moment the benchmark wrote the change
//!   into A's store to the moment it arrived in B's merged Watch;
//! - stamp → merged Watch: from A's origin stamp (carried by the event) to
//!   the same arrival, on the same clock as the histogram's.
//!
//! The histogram measures A's view observing the change → B's view serving
//! it; the benchmark's stamp-based figure ends a Watch delivery later (B's
//! view → the benchmark's client), the write-based one also starts an etcd
//! round trip earlier. They agree when the histogram's quantiles fall in
//! the buckets of the benchmark's exact ones (or next to them).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clustermesh_apiserver::metrics::PROPAGATION_BUCKETS;
use clustermesh_apiserver::store::{EtcdOptions, Store, WriteOp};
use clustermesh_certs::Role;
use clustermesh_integration::apiserver::Cluster;
use clustermesh_integration::http::http_get;
use clustermesh_integration::watcher::Watcher;
use clustermesh_proto::v1::{EventType, Kind, Scope};
use clustermesh_proto::{keys, stamp};

use super::{paced_writes, peer_gateway, percentile, record_at};

const FAMILY: &str = "clustermesh_apiserver_propagation_delay_seconds";

/// The histogram's cumulative buckets (le → count) and count for `source`.
async fn scrape(health: &str, source: &str) -> (BTreeMap<u64, f64>, f64) {
    let (code, body) = http_get(health, "/metrics").await.expect("GET /metrics");
    assert_eq!(code, 200, "{body}");
    let mut buckets = BTreeMap::new();
    let mut count = 0.0;
    let label = format!("source_cluster=\"{source}\"");
    for line in body.lines() {
        let Some((series, v)) = line.rsplit_once(' ') else {
            continue;
        };
        if !series.contains(&label) {
            continue;
        }
        let Ok(v) = v.parse::<f64>() else { continue };
        if series.starts_with(&format!("{FAMILY}_bucket{{")) {
            let le = clustermesh_integration::bench_env::bucket_bound(series);
            // Keyed by the bound's bits: bounds are positive, so their order holds.
            buckets.insert(le.to_bits(), v);
        } else if series.starts_with(&format!("{FAMILY}_count{{")) {
            count = v;
        }
    }
    (buckets, count)
}

/// `histogram_quantile` (Prometheus' linear interpolation) over cumulative
/// buckets, and the bucket it falls in.
fn quantile(buckets: &[(f64, f64)], q: f64) -> (f64, (f64, f64)) {
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, c) in buckets {
        if c >= rank {
            if le.is_infinite() {
                return (prev.0, (prev.0, le));
            }
            let inb = c - prev.1;
            let v = if inb <= 0.0 {
                le
            } else {
                prev.0 + (le - prev.0) * (rank - prev.1) / inb
            };
            return (v, (prev.0, le));
        }
        prev = (le, c);
    }
    (f64::NAN, (f64::NAN, f64::NAN))
}

/// The bucket (lower, upper] an exact value falls in.
fn bucket_of(secs: f64) -> (f64, f64) {
    let mut lo = 0.0;
    for le in PROPAGATION_BUCKETS {
        if secs <= le {
            return (lo, le);
        }
        lo = le;
    }
    (lo, f64::INFINITY)
}

fn ms(s: f64) -> String {
    format!("{:.2} ms", s * 1e3)
}

fn bucket_ms((lo, hi): (f64, f64)) -> String {
    format!("({}, {}] ms", lo * 1e3, hi * 1e3)
}

pub async fn run(rate: u64, count: usize) {
    println!(
        "== propagation_histogram: {count} changes at {rate}/s from peer A; B's propagation_delay_seconds{{source_cluster=A}} vs the benchmark's own measurement =="
    );
    let a = Cluster::start("hist-a", 1, 1, &[]).await.expect("a");
    let b = Cluster::start("hist-b", 2, 1, &[]).await.expect("b");
    let store = Store::connect(&EtcdOptions {
        endpoints: a.etcd.endpoints(),
        ..Default::default()
    })
    .await
    .expect("store");
    // A's node announces the pod CIDR the endpoints are in (B's ingest rules).
    store.apply(&[peer_gateway("hist-a")]).await.expect("node");
    clustermesh_integration::apiserver::connect(&a, &b)
        .await
        .expect("connect");
    let ch = b.api().channel(Role::Agent).await.expect("dial");
    let mut w = Watcher::open(ch, Scope::Merged, &[Kind::Endpoint], None)
        .await
        .expect("watch");
    w.until(Duration::from_secs(10), "snapshot", |m| {
        m.snapshots == 1 && !m.in_snapshot()
    })
    .await
    .expect("snap");
    store
        .apply(&[WriteOp::put(
            keys::state(Kind::Endpoint, "hist-a", "10.9.255.1"),
            record_at("10.9.255.1", 0, "hist-a"),
        )])
        .await
        .expect("warm");
    w.until(Duration::from_secs(30), "warm-up record", |m| {
        m.records.keys().any(|k| k.2 == "10.9.255.1")
    })
    .await
    .expect("warm");
    let health = b.api().health.clone();
    let (before, n0) = scrape(&health, "hist-a").await;

    let sent = Arc::new(Mutex::new(HashMap::new()));
    let writer = tokio::spawn(paced_writes(
        store.clone(),
        "hist-a".into(),
        count,
        rate,
        sent.clone(),
    ));
    let mut by_write = Vec::with_capacity(count);
    let mut by_stamp = Vec::with_capacity(count);
    let mut unstamped = 0usize;
    while by_write.len() < count {
        let batch = w
            .next(Duration::from_secs(30))
            .await
            .expect("batch")
            .expect("open");
        let (now, now_us) = (Instant::now(), stamp::now_micros());
        for e in &batch.events {
            if e.r#type != EventType::Upsert as i32 {
                continue;
            }
            let Some(t) = sent.lock().expect("lock").get(&e.key).copied() else {
                continue;
            };
            by_write.push(now.duration_since(t));
            match e.origin_unix_micros {
                Some(at) => by_stamp.push(Duration::from_micros(
                    now_us.saturating_sub(at).max(0) as u64
                )),
                None => unstamped += 1,
            }
        }
    }
    let took = writer.await.expect("writer");
    let (after, n1) = scrape(&health, "hist-a").await;
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, c)| {
            (
                f64::from_bits(*le),
                c - before.get(le).copied().unwrap_or(0.0),
            )
        })
        .collect();
    by_write.sort();
    by_stamp.sort();
    println!(
        "achieved write rate: {:.0}/s; histogram count +{} for {count} changes ({unstamped} arrived without a stamp)",
        count as f64 / took.as_secs_f64(),
        n1 - n0
    );
    println!("| figure | p50 | p99 |");
    println!("|---|---|---|");
    let mut agree = true;
    let (h50, b50) = quantile(&delta, 0.5);
    let (h99, b99) = quantile(&delta, 0.99);
    println!(
        "| B's propagation_delay_seconds (histogram_quantile; bucket) | {} {} | {} {} |",
        ms(h50),
        bucket_ms(b50),
        ms(h99),
        bucket_ms(b99)
    );
    for (name, v) in [
        ("benchmark: A's origin stamp → B's merged Watch", &by_stamp),
        (
            "benchmark: write into A's store → B's merged Watch",
            &by_write,
        ),
    ] {
        let (p50, p99) = (
            percentile(v, 0.5).as_secs_f64(),
            percentile(v, 0.99).as_secs_f64(),
        );
        println!(
            "| {name} | {} {} | {} {} |",
            ms(p50),
            bucket_ms(bucket_of(p50)),
            ms(p99),
            bucket_ms(bucket_of(p99))
        );
        if name.contains("stamp") {
            // Same bucket, or the histogram's next below (it ends one Watch
            // delivery earlier).
            let near = |h: (f64, f64), b: (f64, f64)| h == b || h.1 == b.0;
            agree = near(b50, bucket_of(p50)) && near(b99, bucket_of(p99));
        }
    }
    println!(
        "agreement (histogram's quantile buckets = the benchmark's, or the one just below): {}",
        if agree { "yes" } else { "NO" }
    );
}
