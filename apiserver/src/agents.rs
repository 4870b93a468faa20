//! This cluster's node agents: their reports (`ReportAgent`), the gateways'
//! liveness leases, and what Status shows of both.
//!
//! An agent's report is stored under `agents/<node>` by whichever replica
//! received it, so every replica sees every report through its view. Each
//! replica tracks, on its own monotonic clock, when it last saw a new
//! revision of each report (no clocks are compared across machines). A
//! gateway is **live** while its last report is younger than
//! `--gateway-lease` and says the datapath is programmed; the leader's
//! exporter writes that into the gateway's Node record (`gateway_live`),
//! which is how nodes and peers learn which gateways to use. A replica that
//! starts (or takes over) treats the reports already in the store as just
//! seen, so a restart of the apiserver does not take every gateway out.
//!
//! Gateways report every lease/4 (default 250 ms for a 1 s lease), other
//! nodes every [`NODE_REPORT_INTERVAL`]; the server tells each agent its
//! interval in the reply. Reports not renewed for [`FORGET_AFTER`] are
//! deleted (a node that left the cluster leaves nothing behind).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clustermesh_proto::keys;
use clustermesh_proto::v1::{AgentReport, AgentStatus, GatewayStatus, Node};
use prost::Message;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::store::{Store, WriteOp};
use crate::view::View;

/// How often nodes that are not gateways report (status only).
pub const NODE_REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// A report not renewed for this long is removed from the store.
pub const FORGET_AFTER: Duration = Duration::from_secs(300);
/// The largest report accepted.
pub const MAX_REPORT_BYTES: usize = 64 * 1024;

/// Why a report was not stored.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{0}")]
    Invalid(String),
    #[error("the store did not take it: {0}")]
    Store(String),
}

/// How often liveness is re-evaluated.
const TICK: Duration = Duration::from_millis(50);

/// Liveness settings.
#[derive(Debug, Clone, Copy)]
pub struct AgentsConfig {
    /// A gateway is live while its last report is younger than this.
    pub gateway_lease: Duration,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        AgentsConfig {
            gateway_lease: Duration::from_secs(1),
        }
    }
}

impl AgentsConfig {
    /// The report interval the server asks of an agent.
    pub fn interval(&self, gateway: bool) -> Duration {
        if gateway {
            (self.gateway_lease / 4).max(Duration::from_millis(50))
        } else {
            NODE_REPORT_INTERVAL
        }
    }
}

#[derive(Debug, Clone)]
struct Seen {
    mod_revision: i64,
    at: Instant,
    report: AgentReport,
}

/// The liveness tracker of one replica.
pub struct Agents {
    cfg: AgentsConfig,
    seen: Mutex<HashMap<String, Seen>>,
    live_tx: watch::Sender<BTreeSet<String>>,
}

impl Agents {
    pub fn new(cfg: AgentsConfig) -> Arc<Agents> {
        let (live_tx, _) = watch::channel(BTreeSet::new());
        Arc::new(Agents {
            cfg,
            seen: Mutex::new(HashMap::new()),
            live_tx,
        })
    }

    pub fn config(&self) -> AgentsConfig {
        self.cfg
    }

    /// The names of the live gateways, as they change.
    pub fn live_gateways(&self) -> watch::Receiver<BTreeSet<String>> {
        self.live_tx.subscribe()
    }

    fn is_live(&self, s: &Seen, now: Instant) -> bool {
        let lease = if s.report.gateway {
            self.cfg.gateway_lease
        } else {
            NODE_REPORT_INTERVAL * 3
        };
        now.duration_since(s.at) < lease
    }

    /// Reads the reports from the view, notes new revisions, and publishes
    /// the live gateways when they change. Returns the nodes to forget.
    fn poll(&self, view: &View) -> Vec<String> {
        let now = Instant::now();
        let entries = view.entries(&keys::agents_prefix());
        let prefix = keys::agents_prefix();
        let Ok(mut seen) = self.seen.lock() else {
            return Vec::new();
        };
        let mut present = BTreeSet::new();
        for (key, e) in entries {
            let Some(node) = key.strip_prefix(&prefix) else {
                continue;
            };
            present.insert(node.to_string());
            if seen
                .get(node)
                .is_some_and(|s| s.mod_revision == e.mod_revision)
            {
                continue;
            }
            let report = match AgentReport::decode(e.value.as_ref()) {
                Ok(r) => r,
                Err(err) => {
                    warn!(node, error = %err, "an agent report does not decode; ignoring it");
                    continue;
                }
            };
            seen.insert(
                node.to_string(),
                Seen {
                    mod_revision: e.mod_revision,
                    at: now,
                    report,
                },
            );
        }
        seen.retain(|n, _| present.contains(n));
        let live: BTreeSet<String> = seen
            .iter()
            .filter(|(_, s)| s.report.gateway && s.report.programmed && self.is_live(s, now))
            .map(|(n, _)| n.clone())
            .collect();
        self.live_tx.send_if_modified(|cur| {
            if *cur == live {
                return false;
            }
            let up: Vec<&String> = live.difference(cur).collect();
            let down: Vec<&String> = cur.difference(&live).collect();
            info!(?up, ?down, "gateway liveness changed");
            *cur = live;
            true
        });
        seen.iter()
            .filter(|(_, s)| now.duration_since(s.at) >= FORGET_AFTER)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Runs the tracker until `stop` flips.
    pub async fn run(
        self: Arc<Self>,
        view: Arc<View>,
        store: Store,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if !view.ready() {
                continue;
            }
            let forget = self.poll(&view);
            if forget.is_empty() {
                continue;
            }
            let ops: Vec<WriteOp> = forget
                .iter()
                .map(|n| WriteOp::delete(keys::agent(n)))
                .collect();
            match store.apply(&ops).await {
                Ok(_) => info!(nodes = ?forget, "forgot agents that stopped reporting"),
                Err(e) => warn!(error = %e, "cannot remove old agent reports"),
            }
        }
    }

    /// Stores one report (any replica); returns the interval to ask for.
    pub async fn record(
        &self,
        store: &Store,
        report: &AgentReport,
    ) -> Result<Duration, RecordError> {
        if !crate::mesh::ingest::net::is_dns_subdomain(&report.node) {
            return Err(RecordError::Invalid(format!(
                "node name {:?} is not a Kubernetes name (RFC 1123 subdomain)",
                report.node
            )));
        }
        let bytes = report.encode_to_vec();
        if bytes.len() > MAX_REPORT_BYTES {
            return Err(RecordError::Invalid(format!(
                "a report of {} bytes is over {MAX_REPORT_BYTES}",
                bytes.len()
            )));
        }
        store
            .apply(&[WriteOp::put(keys::agent(&report.node), bytes)])
            .await
            .and_then(|a: crate::store::Applied| a.all_written())
            .map_err(|e| RecordError::Store(e.to_string()))?;
        Ok(self.cfg.interval(report.gateway))
    }

    /// Status: every agent this replica knows, by node name.
    pub fn statuses(&self) -> Vec<AgentStatus> {
        let now = Instant::now();
        let Ok(seen) = self.seen.lock() else {
            return Vec::new();
        };
        let mut out: Vec<AgentStatus> = seen
            .values()
            .map(|s| AgentStatus {
                report: Some(s.report.clone()),
                live: self.is_live(s, now),
                age_ms: now.duration_since(s.at).as_millis() as u64,
            })
            .collect();
        out.sort_by(|a, b| {
            let name = |s: &AgentStatus| s.report.as_ref().map(|r| r.node.clone());
            name(a).cmp(&name(b))
        });
        out
    }
}

/// Status: the gateways of every cluster in the merged view, this cluster's
/// first, with the local agents that use each one.
pub fn gateway_statuses(view: &View, agents: &[AgentStatus]) -> Vec<GatewayStatus> {
    let local = view.local_cluster().to_string();
    let mut out: Vec<GatewayStatus> = Vec::new();
    let mut nodes: BTreeMap<(bool, String, String), Node> = BTreeMap::new();
    let mut collect = |prefix: String, peer: bool| {
        for (_, e) in view.entries(&prefix) {
            if let Ok(n) = Node::decode(e.value.as_ref())
                && n.gateway
            {
                nodes.insert((peer, n.cluster.clone(), n.name.clone()), n);
            }
        }
    };
    collect(
        keys::state_prefix(clustermesh_proto::v1::Kind::Node, &local),
        false,
    );
    for (_, e) in view.entries(&keys::peers_prefix()) {
        if let Ok(p) = clustermesh_proto::v1::PeerConfig::decode(e.value.as_ref()) {
            collect(
                keys::cache_prefix(clustermesh_proto::v1::Kind::Node, &p.name),
                true,
            );
        }
    }
    for ((peer, cluster, name), n) in nodes {
        // Where traffic goes (the agents' rule): a peer's gateway at its
        // ExternalIP when it has one, this cluster's at its InternalIP.
        let address = if peer {
            clustermesh_proto::node_address::peer_facing(&n)
        } else {
            clustermesh_proto::node_address::internal(&n)
        }
        .map(|a| a.to_string())
        .unwrap_or_default();
        let used_by = agents
            .iter()
            .filter_map(|a| a.report.as_ref())
            .filter(|r| !address.is_empty() && r.via.values().any(|v| *v == address))
            .map(|r| r.node.clone())
            .collect();
        out.push(GatewayStatus {
            cluster,
            node: name,
            address,
            live: n.gateway_live != Some(false),
            used_by,
        });
    }
    out
}
