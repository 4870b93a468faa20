//! `/metrics` on the apiserver's health port, scraped over HTTP and parsed
//! by real parsers (Python's `prometheus_client`, see
//! scripts/install-deps.sh; OpenMetrics as Prometheus asks for it, and the
//! Prometheus text format otherwise): every family of DESIGN §12 with its type; a
//! peer's readiness is 1 when synced and 0 within 2 s after its apiserver is
//! SIGKILLed (status says disconnected at the same time, its records are
//! still served, although `--peer-timeout` is 10 s); refused records are
//! counted by reason; a follower replica shows the same readiness.

use std::time::{Duration, Instant};

use crate::mesh_support::*;
use crate::metrics_support::*;
use clustermesh_integration::apiserver::Cluster;
use clustermesh_integration::eventually;
use clustermesh_integration::http::http_get;
use clustermesh_proto::v1::Kind;
use serde_json::Value;

/// Heartbeats every 200 ms, but the default peer-timeout (10 s): a killed
/// peer must show disconnected long before a silent one would.
fn slow_timeout_flags() -> Vec<String> {
    [
        "--heartbeat-interval",
        "200ms",
        "--peer-timeout",
        "10s",
        "--stale-ttl",
        "60s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

async fn start_slow(name: &str, id: u32) -> Cluster {
    Cluster::start(name, id, 1, &slow_timeout_flags())
        .await
        .unwrap_or_else(|e| panic!("starting cluster {name}: {e:#}"))
}

const NODES: usize = 4;

async fn seed_alpha(a: &Cluster) {
    let mut ops = Vec::new();
    for i in 0..NODES {
        let name = format!("n{i}");
        let ip = format!("192.168.1.{i}");
        ops.push(put(
            Kind::Node,
            "alpha",
            &name,
            node("alpha", &name, &ip, true),
        ));
        let id = ident_no(1, i as u32);
        let ident = identity("alpha", id, &name);
        ops.push(put(Kind::Identity, "alpha", &id.to_string(), ident));
    }
    ops.extend(markers("alpha"));
    store(a).await.apply(&ops).await.expect("seed alpha");
}

/// Every family of DESIGN §12 (and the operator extras), with its type.
const FAMILIES: [(&str, &str); 15] = [
    ("remote_clusters", "gauge"),
    ("remote_cluster_readiness_status", "gauge"),
    ("remote_cluster_failures", "counter"),
    ("records", "gauge"),
    ("rejected_records", "counter"),
    ("watchers", "gauge"),
    ("bootstrap_seconds", "gauge"),
    ("leader", "gauge"),
    ("propagation_delay_seconds", "histogram"),
    ("propagation_clock_skew", "counter"),
    ("sync_mismatch", "gauge"),
    ("watch_events", "counter"),
    ("watch_resyncs", "counter"),
    ("etcd_errors", "counter"),
    ("sync_queue_size", "gauge"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_families_and_honest_readiness() {
    let mut a = start_slow("alpha", 1).await;
    let b = start_slow("beta", 2).await;
    seed_alpha(&a).await;
    connect(&a, &b).await;
    let mut w = merged_watcher(&b).await;
    let alpha_records = |m: &clustermesh_proto::mirror::Mirror| {
        m.records.keys().filter(|(_, c, _)| c == "alpha").count()
    };
    w.until(T, "alpha's records on beta", |m| {
        alpha_records(m) == 2 * NODES
    })
    .await
    .expect("alpha mirrored");

    // Synced: readiness 1, alpha's records counted.
    let f = eventually("beta's metrics show alpha ready", T, || async {
        let f = scrape(&b).await;
        (readiness(&f, "alpha") == Some(1.0)).then_some(f)
    })
    .await
    .expect("alpha ready in metrics");
    // Both formats: every family with its type, the same samples.
    let plain = scrape_as(&b, Format::Text).await;
    for (fams, format) in [(&f, Format::OpenMetrics), (&plain, Format::Text)] {
        for (name, ty) in FAMILIES {
            let full = format!("clustermesh_apiserver_{name}");
            let fam = fams
                .get(&full)
                .unwrap_or_else(|| panic!("{format:?}: family {full} missing: {:?}", fams.keys()));
            assert_eq!(fam.ty, ty, "{format:?}: type of {full}");
        }
        assert_eq!(readiness(fams, "alpha"), Some(1.0), "{format:?}");
    }
    assert_eq!(
        f.keys().collect::<Vec<_>>(),
        plain.keys().collect::<Vec<_>>(),
        "the same families in both formats"
    );
    let one = |name: &str| value(&f, name, name, &[]);
    assert_eq!(one("remote_clusters"), Some(1.0));
    assert_eq!(one("leader"), Some(1.0));
    // The leader's syncer has a queue for alpha, and nothing is waiting in it.
    let queue = value(
        &f,
        "sync_queue_size",
        "sync_queue_size",
        &[("source_cluster", "alpha")],
    );
    assert_eq!(queue, Some(0.0), "alpha's sync queue once synced");
    assert!(one("watchers").is_some_and(|v| v >= 1.0), "our watcher");
    assert!(one("bootstrap_seconds").is_some_and(|v| v > 0.0));
    let events = value(&f, "watch_events", "watch_events_total", &[]);
    assert!(
        events.is_some_and(|v| v >= (2 * NODES) as f64),
        "{events:?}"
    );
    for kind in ["nodes", "identities"] {
        let labels = [("source_cluster", "alpha"), ("kind", kind)];
        assert_eq!(value(&f, "records", "records", &labels), Some(NODES as f64));
    }
    let failures_before = value(
        &f,
        "remote_cluster_failures",
        "remote_cluster_failures_total",
        &[("target_cluster", "alpha")],
    )
    .expect("failures of alpha");
    // Registered and documented, fed once records carry origin stamps: no
    // sample is made up meanwhile.
    assert!(
        f["clustermesh_apiserver_propagation_delay_seconds"]
            .samples
            .is_empty()
    );

    // SIGKILL alpha's apiserver: the stream breaks, every redial is refused.
    let killed = Instant::now();
    a.replicas[0].child.kill().expect("kill alpha");
    let (mut metric_at, mut status_at) = (None, None);
    let mut last = (None, None);
    while killed.elapsed() < Duration::from_secs(5) && (metric_at.is_none() || status_at.is_none())
    {
        // Each value is timed when it was asked for (parsing comes after).
        let scraped_at = killed.elapsed();
        let f = scrape(&b).await;
        let asked_at = killed.elapsed();
        let st = peer_status(&b, "alpha").await.expect("alpha in status");
        last = (readiness(&f, "alpha"), Some(st.connected));
        if metric_at.is_none() && readiness(&f, "alpha") == Some(0.0) {
            metric_at = Some(scraped_at);
        }
        if status_at.is_none() && !st.connected {
            status_at = Some(asked_at);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("after SIGKILL: readiness 0 at {metric_at:?}, status disconnected at {status_at:?}");
    let limit = Duration::from_secs(2);
    assert!(
        metric_at.is_some_and(|t| t <= limit),
        "readiness not 0 within 2 s: {metric_at:?} (last readiness, connected: {last:?})"
    );
    assert!(
        status_at.is_some_and(|t| t <= limit),
        "status not disconnected within 2 s: {status_at:?}"
    );
    let (_, json) = http_get(&b.api().health, "/status")
        .await
        .expect("GET /status");
    let json: Value = serde_json::from_str(&json).expect("status JSON");
    let alpha = json["peers"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "alpha"))
        .cloned()
        .expect("alpha in /status");
    assert_eq!(alpha["connected"], false, "{alpha}");
    assert_eq!(alpha["ready"], false, "{alpha}");

    // The records stay (until stale-ttl): still served, never deleted.
    read_for(&mut w, Duration::from_millis(300)).await;
    assert_eq!(alpha_records(&w.mirror), 2 * NODES);
    let deletes = w
        .batches
        .iter()
        .flat_map(|b| &b.events)
        .filter(|e| {
            e.cluster == "alpha" && e.r#type == clustermesh_proto::v1::EventType::Delete as i32
        })
        .count();
    assert_eq!(deletes, 0, "nothing withdrawn downstream");
    let f = scrape(&b).await;
    let labels = [("source_cluster", "alpha"), ("kind", "nodes")];
    assert_eq!(value(&f, "records", "records", &labels), Some(NODES as f64));
    let failures = value(
        &f,
        "remote_cluster_failures",
        "remote_cluster_failures_total",
        &[("target_cluster", "alpha")],
    );
    assert!(
        failures.is_some_and(|v| v > failures_before),
        "the broken stream is a failure: {failures:?} (before {failures_before})"
    );
    assert!(!peer_status(&b, "alpha").await.expect("alpha").withdrawn);

    // Back: ready again.
    a.replicas[0].restart().await.expect("restart alpha");
    eventually("alpha ready again", T, || async {
        (readiness(&scrape(&b).await, "alpha") == Some(1.0)).then_some(())
    })
    .await
    .expect("alpha ready again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_records_are_counted_by_reason() {
    let a = start("alpha", 1, "30s").await;
    let b = start("beta", 2, "30s").await;
    let stolen = ident_no(2, 7); // beta's identity range
    let mut ops = alpha_gateway_and_identity(stolen, "evil");
    ops.extend([put(
        Kind::Node,
        "alpha",
        "liar",
        node("beta", "liar", "192.168.2.1", true),
    )]);
    ops.extend(markers("alpha"));
    store(&a).await.apply(&ops).await.expect("seed alpha");
    connect(&a, &b).await;
    let f = eventually("rejections in beta's metrics", T, || async {
        let f = scrape(&b).await;
        let n = |reason: &str| {
            value(
                &f,
                "rejected_records",
                "rejected_records_total",
                &[("source_cluster", "alpha"), ("reason", reason)],
            )
        };
        // At least once each (a reconnect would refuse them again).
        let seen = |r| n(r).is_some_and(|v| v >= 1.0);
        (seen("identity_out_of_range") && seen("foreign_record")).then_some(f)
    })
    .await
    .expect("rejections counted");
    assert_eq!(f["clustermesh_apiserver_rejected_records"].ty, "counter");
    wait_status(
        &b,
        "alpha",
        "alpha connected, rejections in status",
        T,
        |s| s.connected && s.rejected_records >= 2,
    )
    .await;
    // Only the valid record is served.
    let f = eventually("alpha's valid node served", T, || async {
        let f = scrape(&b).await;
        let labels = [("source_cluster", "alpha"), ("kind", "nodes")];
        value(&f, "records", "records", &labels)
            .is_some()
            .then_some(f)
    })
    .await
    .expect("alpha's node");
    let labels = [("source_cluster", "alpha"), ("kind", "nodes")];
    assert_eq!(value(&f, "records", "records", &labels), Some(1.0));
    assert_eq!(
        value(
            &f,
            "records",
            "records",
            &[("source_cluster", "alpha"), ("kind", "identities")]
        ),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_shows_the_leaders_view_of_the_peers() {
    let a = start_slow("alpha", 1).await;
    let mut b = start_slow("beta", 2).await;
    b.add_replica(&slow_timeout_flags())
        .await
        .expect("second beta replica");
    seed_alpha(&a).await;
    connect(&a, &b).await;
    // Both replicas: alpha ready (the follower reads the status the leader
    // persisted), exactly one of them leading.
    let leaders = eventually("alpha ready on both beta replicas", T, || async {
        let mut leaders = Vec::new();
        for r in &b.replicas {
            let f = scrape_replica(&r.health, Format::OpenMetrics).await;
            if readiness(&f, "alpha") != Some(1.0) {
                return None;
            }
            leaders.push(value(&f, "leader", "leader", &[])?);
        }
        Some(leaders)
    })
    .await
    .expect("alpha ready on every replica");
    let mut sorted = leaders.clone();
    sorted.sort_by(f64::total_cmp);
    assert_eq!(sorted, vec![0.0, 1.0], "one leader: {leaders:?}");
}
