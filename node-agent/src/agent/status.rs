//! The agent's status, shared by the Watch client, the reconcile loop and
//! the health endpoint, and its renderings (`/status` JSON, `/metrics`
//! Prometheus text).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde_json::json;

use crate::datapath::Metrics;

/// The Watch side.
#[derive(Clone, Debug, Default)]
pub struct WatchStatus {
    pub apiserver: String,
    pub connected: bool,
    pub epoch: String,
    pub revision: i64,
    pub snapshots: u64,
    pub resets: u64,
    pub reconnects: u64,
    pub batches: u64,
    pub last_error: Option<String>,
}

/// The datapath side.
#[derive(Clone, Debug, Default)]
pub struct DatapathStatus {
    /// The first snapshot has been applied (before that the pinned maps are
    /// left exactly as a previous agent left them).
    pub synced: bool,
    pub local_pods: usize,
    pub pending_pods: Vec<Ipv4Addr>,
    pub remote_endpoints: usize,
    /// Remote cluster -> the gateway this node tunnels its traffic to.
    pub remote_clusters: Vec<(String, Ipv4Addr)>,
    /// This node's record says it is a gateway.
    pub gateway: bool,
    /// Remote clusters without a usable gateway on one side.
    pub unreachable_clusters: Vec<String>,
    /// Outer sources the tunnel accepts.
    pub tunnel_sources: usize,
    /// This cluster's endpoints on other nodes (passed through, relayed by gateways).
    pub cluster_endpoints: usize,
    pub no_gateway: usize,
    pub invalid_endpoints: usize,
    pub ipcache_entries: usize,
    pub policy_entries: usize,
    pub enforced: usize,
    pub services: usize,
    pub routes: usize,
    pub attached: Vec<String>,
    pub applies: u64,
    pub apply_errors: u64,
    pub last_apply: Option<(usize, usize, usize)>,
    pub last_error: Option<String>,
    pub last_apply_unix_ms: i64,
    /// Policy rule parts the agent could not program, per reason (left out, never widened).
    pub policy_refused: BTreeMap<&'static str, usize>,
    pub unresolved_named_ports: usize,
    /// Local identities without a record, default-deny until it arrives.
    pub fail_closed_identities: usize,
    pub ip_block_prefixes: usize,
}

#[derive(Clone, Debug, Default)]
pub struct Status {
    pub node: String,
    pub cluster: String,
    pub cluster_id: u32,
    pub mode: String,
    pub pin_dir: String,
    pub pod_mtu: u32,
    pub watch: WatchStatus,
    pub datapath: DatapathStatus,
    /// Records in the view: nodes, endpoints, identities, services, policies.
    pub records: [usize; 5],
    /// Reports sent to the apiserver (`ReportAgent`).
    pub reports_sent: u64,
    pub propagation: super::propagation::Propagation,
}

impl Status {
    /// Healthy: connected and the datapath is in sync with the view.
    pub fn healthy(&self) -> bool {
        self.datapath.synced && self.datapath.last_error.is_none()
    }

    /// `/status` body.
    pub fn to_json(&self, metrics: Option<&Metrics>) -> serde_json::Value {
        let w = &self.watch;
        let d = &self.datapath;
        let counters: serde_json::Map<String, serde_json::Value> = metrics
            .map(|m| {
                m.iter()
                    .map(|(r, c)| {
                        (
                            r.name().to_string(),
                            json!({"packets": c.packets, "bytes": c.bytes}),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        json!({
            "node": self.node, "cluster": self.cluster, "cluster_id": self.cluster_id,
            "mode": self.mode, "pin_dir": self.pin_dir, "pod_mtu": self.pod_mtu,
            "healthy": self.healthy(),
            "watch": {
                "apiserver": w.apiserver, "connected": w.connected, "epoch": w.epoch,
                "revision": w.revision, "snapshots": w.snapshots, "resets": w.resets,
                "reconnects": w.reconnects, "batches": w.batches, "last_error": w.last_error,
            },
            "records": {
                "nodes": self.records[0], "endpoints": self.records[1],
                "identities": self.records[2], "services": self.records[3],
                "policies": self.records[4],
            },
            "datapath": {
                "synced": d.synced, "gateway": d.gateway, "local_pods": d.local_pods,
                "cluster_endpoints": d.cluster_endpoints, "tunnel_sources": d.tunnel_sources,
                "unreachable_clusters": d.unreachable_clusters,
                "pending_pods": d.pending_pods.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
                "remote_endpoints": d.remote_endpoints,
                "remote_clusters": d.remote_clusters.iter()
                    .map(|(c, gw)| json!({"cluster": c, "gateway": gw.to_string()}))
                    .collect::<Vec<_>>(),
                "no_gateway": d.no_gateway, "invalid_endpoints": d.invalid_endpoints,
                "ipcache_entries": d.ipcache_entries, "policy_entries": d.policy_entries,
                "enforced": d.enforced, "services": d.services, "routes": d.routes,
                "attached": d.attached, "applies": d.applies, "apply_errors": d.apply_errors,
                "last_apply": d.last_apply.map(|(u, del, same)| json!({"upserts": u, "deletes": del, "unchanged": same})),
                "last_apply_unix_ms": d.last_apply_unix_ms, "last_error": d.last_error,
                "policy_refused": d.policy_refused,
                "unresolved_named_ports": d.unresolved_named_ports,
                "fail_closed_identities": d.fail_closed_identities,
                "ip_block_prefixes": d.ip_block_prefixes,
            },
            "counters": counters,
        })
    }

    /// `/metrics` body (Prometheus text format).
    pub fn to_prometheus(&self, metrics: Option<&Metrics>) -> String {
        let mut s = String::new();
        let d = &self.datapath;
        let flag = |b: bool| f64::from(u8::from(b));
        // Counters (monotonic since the agent started) end in `_total`.
        let families: [(&str, &str, &str, f64); 12] = [
            (
                "gauge",
                "clustermesh_agent_watch_connected",
                "1 while the Watch stream is open.",
                flag(self.watch.connected),
            ),
            (
                "counter",
                "clustermesh_agent_watch_reconnects_total",
                "Watch reconnects since start.",
                self.watch.reconnects as f64,
            ),
            (
                "gauge",
                "clustermesh_agent_watch_revision",
                "Last store revision applied.",
                self.watch.revision as f64,
            ),
            (
                "gauge",
                "clustermesh_agent_synced",
                "1 once the first snapshot is programmed.",
                flag(d.synced),
            ),
            (
                "gauge",
                "clustermesh_agent_local_pods",
                "Local pods programmed.",
                d.local_pods as f64,
            ),
            (
                "gauge",
                "clustermesh_agent_pending_pods",
                "Local pods whose interface is not found.",
                d.pending_pods.len() as f64,
            ),
            (
                "gauge",
                "clustermesh_agent_remote_endpoints",
                "Remote endpoints programmed.",
                d.remote_endpoints as f64,
            ),
            (
                "gauge",
                "clustermesh_agent_ipcache_entries",
                "Desired ipcache entries.",
                d.ipcache_entries as f64,
            ),
            (
                "gauge",
                "clustermesh_agent_policy_entries",
                "Desired policy entries.",
                d.policy_entries as f64,
            ),
            (
                "gauge",
                "clustermesh_agent_services",
                "Programmed frontends.",
                d.services as f64,
            ),
            (
                "counter",
                "clustermesh_agent_applies_total",
                "Reconciliations applied since start.",
                d.applies as f64,
            ),
            (
                "counter",
                "clustermesh_agent_apply_errors_total",
                "Reconciliations that failed since start.",
                d.apply_errors as f64,
            ),
        ];
        for (kind, name, help, v) in families {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
        self.propagation.render(&mut s);
        let _ = writeln!(
            s,
            "# HELP clustermesh_agent_policy_refused Policy rule parts not programmed (left out, never widened), by reason.\n# TYPE clustermesh_agent_policy_refused gauge"
        );
        for (reason, n) in &d.policy_refused {
            let _ = writeln!(
                s,
                "clustermesh_agent_policy_refused{{reason=\"{reason}\"}} {n}"
            );
        }
        let _ = writeln!(
            s,
            "# HELP clustermesh_agent_policy_fail_closed_identities Local identities without a record, default-deny until it arrives.\n# TYPE clustermesh_agent_policy_fail_closed_identities gauge\nclustermesh_agent_policy_fail_closed_identities {}",
            d.fail_closed_identities
        );
        if let Some(m) = metrics {
            let _ = writeln!(
                s,
                "# HELP clustermesh_datapath_packets_total Packets by datapath outcome.\n# TYPE clustermesh_datapath_packets_total counter"
            );
            for (r, c) in m.iter() {
                let _ = writeln!(
                    s,
                    "clustermesh_datapath_packets_total{{reason=\"{}\"}} {}",
                    r.name(),
                    c.packets
                );
            }
            let _ = writeln!(
                s,
                "# HELP clustermesh_datapath_bytes_total Bytes by datapath outcome.\n# TYPE clustermesh_datapath_bytes_total counter"
            );
            for (r, c) in m.iter() {
                let _ = writeln!(
                    s,
                    "clustermesh_datapath_bytes_total{{reason=\"{}\"}} {}",
                    r.name(),
                    c.bytes
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_json_and_prometheus() {
        let mut st = Status {
            node: "gw".into(),
            ..Default::default()
        };
        st.datapath.synced = true;
        st.datapath.pending_pods = vec![Ipv4Addr::new(10, 1, 0, 9)];
        st.datapath.policy_refused = [("unknown_protocol", 2), ("policy_map_full", 0)].into();
        let m = Metrics::default();
        let j = st.to_json(Some(&m));
        assert_eq!(j["healthy"], true);
        assert_eq!(j["datapath"]["pending_pods"][0], "10.1.0.9");
        assert_eq!(j["counters"]["drop_policy_deny"]["packets"], 0);
        let p = st.to_prometheus(Some(&m));
        assert!(p.contains("clustermesh_datapath_packets_total{reason=\"drop_policy_deny\"} 0"));
        assert!(p.contains("clustermesh_agent_synced 1"));
        assert_eq!(j["datapath"]["policy_refused"]["unknown_protocol"], 2);
        assert!(p.contains("clustermesh_agent_policy_refused{reason=\"unknown_protocol\"} 2\n"));
        assert!(p.contains("# TYPE clustermesh_agent_watch_reconnects_total counter\n"));
        assert!(p.contains("# TYPE clustermesh_agent_applies_total counter\n"));
        assert!(p.contains("# TYPE clustermesh_agent_apply_errors_total counter\n"));
        assert!(!p.contains("counter\nclustermesh_agent_synced"));
    }
}
