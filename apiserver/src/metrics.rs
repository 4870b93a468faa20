//! The apiserver's Prometheus metrics (DESIGN §12), served as `/metrics` on
//! the health port. One [`Metrics`] per replica, created in `app::run` and
//! handed to what counts (Watch streams, the store feed, the mesh syncer).
//!
//! Two sources:
//! - events this process counts as they happen (rejected records, Watch
//!   events and resyncs, etcd errors, bootstrap time, propagation delay);
//! - state read at scrape time from the view ([`State`]): peers, their
//!   readiness and failures (the persisted peer status, so every replica,
//!   leader or not, shows what `clustermesh status` shows), record counts,
//!   watchers and leadership.
//!
//! The table of every family is in docs/metrics.md.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use clustermesh_proto::v1::{Kind, PeerStatus};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::server::Runtime;
use crate::view::View;

/// Prefix of every family.
pub const PREFIX: &str = "clustermesh_apiserver";

/// What `/metrics` answers: OpenMetrics when the scraper asks for it
/// (Prometheus does), else the Prometheus text format 0.0.4 (curl, older
/// scrapers and parsers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Text,
}

impl Format {
    /// The format an `Accept` header asks for.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// OpenMetrics text (as `prometheus-client` writes it) in the Prometheus
/// text format 0.0.4: a counter's HELP and TYPE name its samples' `_total`
/// name, and there is no `# EOF`. Gauges and histograms are written alike
/// in both (no units, exemplars or `_created` are used here).
fn to_text_format(om: &str) -> String {
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len() + 16 * counters.len());
    for line in om.lines() {
        if line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta.and_then(|(p, rest)| Some((p, rest.split_once(' ')?))) {
            Some((p, (name, tail))) if counters.contains(name) => {
                out.push_str(&format!("{p}{name}_total {tail}"));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Buckets of `propagation_delay_seconds`: 0.5 ms to 30 s.
pub const PROPAGATION_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
    30.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub source_cluster: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source_cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: String,
}

type HistogramFamily = Family<SourceLabels, Histogram, fn() -> Histogram>;

/// A labelled family that is exposed (HELP and TYPE) before its first
/// sample, so that every family of DESIGN §12 is always listed
/// (`prometheus-client` leaves empty families out).
#[derive(Debug)]
struct Listed<M>(M);

impl<M: EncodeMetric> EncodeMetric for Listed<M> {
    fn encode(
        &self,
        encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), fmt::Error> {
        self.0.encode(encoder)
    }
    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }
}

fn propagation_histogram() -> Histogram {
    Histogram::new(PROPAGATION_BUCKETS)
}

/// Every metric of one replica.
pub struct Metrics {
    registry: Registry,
    started: Instant,
    bootstrapped: AtomicBool,
    bootstrap_seconds: Gauge<f64, AtomicU64>,
    rejected_records: Family<RejectLabels, Counter>,
    /// Fed by the view's feed when it serves a mirrored record that carries
    /// its origin's stamp.
    propagation_delay: HistogramFamily,
    propagation_skewed: Family<SourceLabels, Counter>,
    watch_events: Counter,
    watch_resyncs: Counter,
    etcd_errors: Family<OperationLabels, Counter>,
    /// Seconds per store write of the syncer (all its transactions).
    store_write: Family<OperationLabels, Histogram, fn() -> Histogram>,
    /// Per peer: events received from its stream and not yet written.
    sync_queue: Family<SourceLabels, Gauge>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// The metrics of a replica serving `view`, with `runtime`'s leadership.
    /// `started`: when the replica started (for `bootstrap_seconds`).
    pub fn new(view: Arc<View>, runtime: Arc<Runtime>, started: Instant) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix(PREFIX);
        let bootstrap_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "bootstrap_seconds",
            "Seconds from the replica's start until the store was loaded into its view (it can serve)",
            bootstrap_seconds.clone(),
        );
        let rejected_records = Family::<RejectLabels, Counter>::default();
        registry.register(
            "rejected_records",
            "Records received from a peer and refused (never written), by peer and reason",
            Listed(rejected_records.clone()),
        );
        let propagation_delay: HistogramFamily =
            Family::new_with_constructor(propagation_histogram);
        registry.register(
            "propagation_delay_seconds",
            "Seconds from the origin apiserver observing a change to this apiserver serving it, by origin cluster (clocks must be synchronised)",
            Listed(propagation_delay.clone()),
        );
        let propagation_skewed = Family::<SourceLabels, Counter>::default();
        registry.register(
            "propagation_clock_skew",
            "Propagation stamps from the future (the origin's clock is ahead of ours): observed as 0 s and counted here, by origin cluster",
            Listed(propagation_skewed.clone()),
        );

        let watch_events = Counter::default();
        registry.register(
            "watch_events",
            "Record events delivered to Watch clients (snapshots, replays and live batches)",
            watch_events.clone(),
        );
        let watch_resyncs = Counter::default();
        registry.register(
            "watch_resyncs",
            "Watch streams cut with RESYNC (the subscriber fell behind, or the store was replaced)",
            watch_resyncs.clone(),
        );
        let etcd_errors = Family::<OperationLabels, Counter>::default();
        registry.register(
            "etcd_errors",
            "Failed etcd operations, by operation (feed: the view's list/watch; mesh_write: mirrored records; status_write: peer status)",
            Listed(etcd_errors.clone()),
        );
        let store_write: Family<OperationLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(propagation_histogram);
        registry.register(
            "store_write_seconds",
            "Seconds per store write of the mesh syncer, all its transactions (mesh_write: a peer's records; status_write: peer status)",
            Listed(store_write.clone()),
        );
        let sync_queue = Family::<SourceLabels, Gauge>::default();
        registry.register(
            "sync_queue_size",
            "Events received from the peer's stream and not yet written to the local store (the leader's mesh syncer), by peer",
            Listed(sync_queue.clone()),
        );
        registry.register_collector(Box::new(State { view, runtime }));
        Arc::new(Metrics {
            registry,
            started,
            bootstrapped: AtomicBool::new(false),
            bootstrap_seconds,
            rejected_records,
            propagation_delay,
            propagation_skewed,
            watch_events,
            watch_resyncs,
            etcd_errors,
            store_write,
            sync_queue,
        })
    }

    /// Every family, in `format`.
    pub fn encode(&self, format: Format) -> Result<String, fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(match format {
            Format::OpenMetrics => out,
            Format::Text => to_text_format(&out),
        })
    }

    /// The view was loaded for the first time: records the bootstrap time.
    pub fn bootstrapped(&self) {
        if !self.bootstrapped.swap(true, Ordering::Relaxed) {
            self.bootstrap_seconds
                .set(self.started.elapsed().as_secs_f64());
        }
    }

    /// `count` records from `peer` refused for `reason` ([`crate::mesh::validate::RejectError::reason`]).
    pub fn rejected(&self, peer: &str, reason: &str, count: u64) {
        self.rejected_records
            .get_or_create(&RejectLabels {
                source_cluster: peer.to_owned(),
                reason: reason.to_owned(),
            })
            .inc_by(count);
    }

    /// Observes one change's end-to-end delay from `source`: stamped by its
    /// origin at `origin_micros`, served here at `now_micros`. A stamp from
    /// the future (clock skew) is observed as 0 and counted.
    pub fn propagation(&self, source: &str, origin_micros: i64, now_micros: i64) {
        let labels = SourceLabels {
            source_cluster: source.to_owned(),
        };
        let seconds = match clustermesh_proto::stamp::delay_seconds(origin_micros, now_micros) {
            Ok(s) => s,
            Err(_skew) => {
                self.propagation_skewed.get_or_create(&labels).inc();
                0.0
            }
        };
        self.propagation_delay
            .get_or_create(&labels)
            .observe(seconds);
    }

    /// The sync queue gauge of `peer` (shared: the peer's loop and its
    /// sessions move it).
    pub fn sync_queue(&self, peer: &str) -> Gauge {
        self.sync_queue
            .get_or_create(&SourceLabels {
                source_cluster: peer.to_owned(),
            })
            .clone()
    }

    /// `peer`'s sync loop stopped: its queue is no longer shown.
    pub fn forget_sync_queue(&self, peer: &str) {
        self.sync_queue.remove(&SourceLabels {
            source_cluster: peer.to_owned(),
        });
    }

    pub fn watch_events(&self, n: usize) {
        self.watch_events.inc_by(n as u64);
    }

    pub fn watch_resync(&self) {
        self.watch_resyncs.inc();
    }

    /// A failed etcd operation (`feed`, `mesh_write`, `status_write`).
    pub fn etcd_error(&self, operation: &str) {
        self.etcd_errors
            .get_or_create(&OperationLabels {
                operation: operation.to_owned(),
            })
            .inc();
    }

    /// One store write of the syncer (`operation` as for [`Metrics::etcd_error`]) took `seconds`.
    pub fn store_write(&self, operation: &str, seconds: f64) {
        self.store_write
            .get_or_create(&OperationLabels {
                operation: operation.to_owned(),
            })
            .observe(seconds);
    }
}

/// A peer is ready while its stream is up (`connected`), it has marked
/// kinds synced, no marker failed its attestation, and its records are not
/// withdrawn.
pub fn peer_ready(p: &PeerStatus) -> bool {
    p.enabled && p.connected && !p.synced.is_empty() && !p.withdrawn && p.sync_mismatch.is_empty()
}

/// Families read from the view at scrape time.
struct State {
    view: Arc<View>,
    runtime: Arc<Runtime>,
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

fn kind_label(kind: i32) -> &'static str {
    Kind::try_from(kind)
        .map(|k| k.segment())
        .unwrap_or("unknown")
}

impl Collector for State {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let peers = crate::mesh::status::peer_statuses(&self.view);

        let g = ConstGauge::new(peers.len() as i64);
        g.encode(encoder.encode_descriptor(
            "remote_clusters",
            "Registered remote clusters (peers)",
            None,
            MetricType::Gauge,
        )?)?;

        let mut fam = encoder.encode_descriptor(
            "remote_cluster_readiness_status",
            "1 while the peer's stream is up and synced, 0 otherwise",
            None,
            MetricType::Gauge,
        )?;
        for p in &peers {
            ConstGauge::new(i64::from(peer_ready(p)))
                .encode(fam.encode_family(&[("target_cluster", p.name.as_str())])?)?;
        }

        let mut fam = encoder.encode_descriptor(
            "remote_cluster_failures",
            "Failed attempts and broken streams of the peer's sync loop (the status's failures)",
            None,
            MetricType::Counter,
        )?;
        for p in &peers {
            ConstCounter::new(p.failures)
                .encode(fam.encode_family(&[("target_cluster", p.name.as_str())])?)?;
        }

        let mut fam = encoder.encode_descriptor(
            "sync_mismatch",
            "1 while the peer's synced marker of the kind does not attest what was mirrored (count or digest differ): the kind is not synced, the peer not ready",
            None,
            MetricType::Gauge,
        )?;
        for p in &peers {
            for kind in clustermesh_proto::RECORD_KINDS {
                let bad = p.sync_mismatch.iter().any(|m| m.kind == kind as i32);
                let labels = [
                    ("source_cluster", p.name.as_str()),
                    ("kind", kind.segment()),
                ];
                ConstGauge::new(i64::from(bad)).encode(fam.encode_family(&labels)?)?;
            }
        }

        let mut fam = encoder.encode_descriptor(
            "records",
            "Records this apiserver serves, by source cluster (this one or a peer) and kind",
            None,
            MetricType::Gauge,
        )?;
        for c in self.view.counts() {
            let labels = [
                ("source_cluster", c.cluster.as_str()),
                ("kind", kind_label(c.kind)),
            ];
            ConstGauge::new(c.count as i64).encode(fam.encode_family(&labels)?)?;
        }

        ConstGauge::new(self.view.watchers() as i64).encode(encoder.encode_descriptor(
            "watchers",
            "Open Watch streams (agents, peers, CLI)",
            None,
            MetricType::Gauge,
        )?)?;

        let leader = self.runtime.leader.load(Ordering::Relaxed);
        ConstGauge::new(i64::from(leader)).encode(encoder.encode_descriptor(
            "leader",
            "1 while this replica holds the leader lease (writes, runs the mesh syncer)",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::ViewConfig;

    #[test]
    fn every_family_is_encoded() {
        let view = View::new("alpha", ViewConfig::default());
        let m = Metrics::new(view, Arc::new(Runtime::default()), Instant::now());
        m.rejected("beta", "too_large", 2);
        m.watch_events(3);
        m.etcd_error("feed");
        m.store_write("mesh_write", 0.002);
        m.sync_queue("beta").inc_by(5);
        m.sync_queue("beta").dec_by(2);
        let text = m.encode(Format::OpenMetrics).expect("encode");
        for (name, ty) in [
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
            ("store_write_seconds", "histogram"),
            ("sync_queue_size", "gauge"),
        ] {
            let line = format!("# TYPE {PREFIX}_{name} {ty}\n");
            assert!(text.contains(&line), "{line:?} missing in:\n{text}");
        }
        assert!(text.contains(
            "clustermesh_apiserver_rejected_records_total{source_cluster=\"beta\",reason=\"too_large\"} 2"
        ));
        assert!(text.contains("clustermesh_apiserver_watch_events_total 3"));
        assert!(text.contains("clustermesh_apiserver_sync_queue_size{source_cluster=\"beta\"} 3"));
        m.forget_sync_queue("beta");
        let text = m.encode(Format::OpenMetrics).expect("encode");
        assert!(text.contains("# TYPE clustermesh_apiserver_sync_queue_size gauge\n"));
        assert!(!text.contains("sync_queue_size{"));
        assert!(text.ends_with("# EOF\n"));

        let plain = m.encode(Format::Text).expect("encode");
        assert!(plain.contains("# TYPE clustermesh_apiserver_watch_events_total counter\n"));
        assert!(plain.contains("# HELP clustermesh_apiserver_watch_events_total Record events"));
        assert!(plain.contains("clustermesh_apiserver_watch_events_total 3\n"));
        assert!(plain.contains("# TYPE clustermesh_apiserver_leader gauge\n"));
        assert!(!plain.contains("# EOF"));
    }

    #[test]
    fn accept_header_picks_the_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(Format::negotiate(None), Format::Text);
    }

    #[test]
    fn readiness_needs_a_synced_connected_peer() {
        let mut p = PeerStatus {
            enabled: true,
            connected: true,
            synced: vec![Kind::Node as i32],
            ..Default::default()
        };
        assert!(peer_ready(&p));
        p.connected = false;
        assert!(!peer_ready(&p), "a broken stream is not ready");
        p.connected = true;
        p.synced.clear();
        assert!(!peer_ready(&p), "connected but not synced");
    }
}
