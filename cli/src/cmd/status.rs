//! `clustermesh status`: this cluster and its peers.

use std::time::{Duration, Instant};

use clustermesh_proto::v1::{Kind, PeerStatus, StatusRequest, StatusResponse};
use serde_json::{Value, json};

use super::{Conn, rpc_error};
use crate::output::{Format, age_millis, age_text, json_text, table};
use crate::progress::Progress;

pub fn kind_name(k: i32) -> &'static str {
    Kind::try_from(k)
        .map(|k| k.display_name())
        .unwrap_or("unknown")
}

fn kinds(ks: &[i32]) -> Vec<&'static str> {
    ks.iter().map(|k| kind_name(*k)).collect()
}

/// The stable JSON shape of `status -o json` (documented in docs/cli.md).
pub fn to_json(s: &StatusResponse, now_ms: i64) -> Value {
    let cluster = s.cluster.clone().unwrap_or_default();
    json!({
        "cluster": {"name": cluster.name, "id": cluster.id, "max_connected_clusters": cluster.max_connected_clusters},
        "ready": s.ready,
        "replica": s.replica,
        "leader": s.leader,
        "leader_replica": s.leader_replica,
        "epoch": s.epoch,
        "revision": s.revision,
        "watchers": s.watchers,
        "synced": kinds(&s.synced),
        "records": s.counts.iter().map(|c| json!({"cluster": c.cluster, "kind": kind_name(c.kind), "count": c.count})).collect::<Vec<_>>(),
        "source_errors": s.source_errors.iter().map(|e| json!({"file": e.file, "line": e.line, "message": e.message})).collect::<Vec<_>>(),
        "store_refused_records": s.store_refused_records,
        "peers": s.peers.iter().map(|p| json!({
            "name": p.name, "cluster_id": p.cluster_id, "addresses": p.addresses, "enabled": p.enabled,
            "connected": p.connected, "last_heartbeat_unix_millis": p.last_heartbeat_unix_millis,
            "last_heartbeat_age_millis": age_millis(p.last_heartbeat_unix_millis, now_ms),
            "synced": kinds(&p.synced),
            "records": p.counts.iter().map(|c| json!({"kind": kind_name(c.kind), "count": c.count})).collect::<Vec<_>>(),
            "failures": p.failures, "rejected_records": p.rejected_records, "rejected_by_reason": p.rejected_by_reason,
            "pending_records": p.pending_records, "pending_by_reason": p.pending_by_reason,
            "withdrawn": p.withdrawn, "last_error": p.last_error,
            "quota": p.quota.as_ref().map(|q| json!({"nodes": q.nodes, "endpoints": q.endpoints, "identities": q.identities, "services": q.services, "policies": q.policies, "bytes": q.bytes})),
            "held_bytes": p.held_bytes, "over_quota": p.over_quota, "import_policies": p.import_policies,
        })).collect::<Vec<_>>(),
    })
}

/// The QUOTA column: `ok`, or what is over it and how many records it refused.
fn quota_text(p: &PeerStatus) -> String {
    if p.over_quota.is_empty() {
        return "ok".into();
    }
    let over: Vec<String> = p
        .over_quota
        .iter()
        .map(|(limit, refused)| format!("{limit}(-{refused})"))
        .collect();
    format!("OVER:{}", over.join(","))
}

fn peer_state(p: &PeerStatus) -> &'static str {
    if !p.enabled {
        "disabled"
    } else if p.withdrawn {
        "withdrawn"
    } else if p.connected {
        "connected"
    } else {
        "disconnected"
    }
}

/// Human rendering, with heartbeat ages relative to `now_ms`.
pub fn to_text(s: &StatusResponse, now_ms: i64) -> String {
    let c = s.cluster.clone().unwrap_or_default();
    let mut out = format!(
        "Cluster {} (ID {}, max {} clusters): {}\nReplica {}{}, store epoch {} at revision {}, {} watcher(s)\n",
        c.name,
        c.id,
        c.max_connected_clusters,
        if s.ready { "ready" } else { "NOT READY" },
        s.replica,
        if s.leader { " (leader)" } else { "" },
        s.epoch,
        s.revision,
        s.watchers
    );
    let synced = kinds(&s.synced);
    out.push_str(&format!(
        "Synced kinds: {}\n",
        if synced.is_empty() {
            "none".to_string()
        } else {
            synced.join(", ")
        }
    ));
    for e in &s.source_errors {
        out.push_str(&format!(
            "Source error: {}:{}: {}\n",
            e.file, e.line, e.message
        ));
    }
    if s.store_refused_records > 0 {
        out.push_str(&format!(
            "Records refused as too large for one store write: {} (see the apiserver log)\n",
            s.store_refused_records
        ));
    }
    let rows: Vec<Vec<String>> = s
        .counts
        .iter()
        .map(|r| {
            vec![
                r.cluster.clone(),
                kind_name(r.kind).to_string(),
                r.count.to_string(),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(&["CLUSTER", "KIND", "RECORDS"], &rows));
    out.push('\n');
    if s.peers.is_empty() {
        out.push_str("No peers: connect one with `clustermesh connect --peer-server ADDR --peer-tls-dir DIR`.\n");
        return out;
    }
    let rows: Vec<Vec<String>> = s
        .peers
        .iter()
        .map(|p| {
            let synced = kinds(&p.synced);
            // Policies not imported are never synced: "all" without them.
            let all = clustermesh_proto::RECORD_KINDS.iter().all(|k| {
                p.synced.contains(&(*k as i32)) || (*k == Kind::Policy && !p.import_policies)
            });
            vec![
                p.name.clone(),
                p.cluster_id.to_string(),
                peer_state(p).into(),
                age_text(age_millis(p.last_heartbeat_unix_millis, now_ms)),
                if all {
                    "all".into()
                } else if synced.is_empty() {
                    "-".into()
                } else {
                    synced.join(",")
                },
                p.counts.iter().map(|c| c.count).sum::<u64>().to_string(),
                p.failures.to_string(),
                p.rejected_records.to_string(),
                p.pending_records.to_string(),
                quota_text(p),
                if p.import_policies { "yes" } else { "no" }.into(),
                p.last_error.clone(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "PEER",
            "ID",
            "STATE",
            "HEARTBEAT",
            "SYNCED",
            "RECORDS",
            "FAILURES",
            "REJECTED",
            "PENDING",
            "QUOTA",
            "POLICIES",
            "LAST ERROR",
        ],
        &rows,
    ));
    out
}

pub async fn fetch(conn: &Conn) -> anyhow::Result<StatusResponse> {
    let mut client = conn.mesh().await?;
    Ok(client
        .status(StatusRequest {})
        .await
        .map_err(|s| rpc_error("Status", &conn.server, s))?
        .into_inner())
}

/// What `--wait` is still waiting for; None when the cluster is ready and
/// every enabled peer is connected and synced.
pub fn pending(s: &StatusResponse) -> Option<String> {
    if !s.ready {
        return Some("the apiserver to be ready".into());
    }
    let waiting: Vec<String> = s
        .peers
        .iter()
        .filter(|p| p.enabled)
        .filter_map(|p| {
            if !p.connected {
                Some(format!("{} to connect", p.name))
            } else if p.synced.is_empty() {
                Some(format!("{} to sync", p.name))
            } else {
                None
            }
        })
        .collect();
    (!waiting.is_empty()).then(|| {
        let total = s.peers.iter().filter(|p| p.enabled).count();
        format!(
            "{} ({}/{total} peers synced)",
            waiting.join(", "),
            total - waiting.len()
        )
    })
}

/// Polls Status until nothing is [`pending`] or `timeout` passes. Returns
/// the last status and, on timeout, what was still pending.
pub async fn wait(
    conn: &Conn,
    timeout: Duration,
) -> anyhow::Result<(StatusResponse, Option<String>)> {
    let deadline = Instant::now() + timeout;
    let mut progress = Progress::stderr();
    loop {
        let what = match fetch(conn).await {
            Ok(s) => match pending(&s) {
                None => {
                    progress.finish("");
                    return Ok((s, None));
                }
                Some(w) if Instant::now() >= deadline => {
                    progress.finish("");
                    return Ok((s, Some(w)));
                }
                Some(w) => w,
            },
            Err(e) if Instant::now() >= deadline => {
                progress.finish("");
                return Err(e.context(format!("no answer from {} within {timeout:?}", conn.server)));
            }
            Err(e) => format!("{} to answer ({e:#})", conn.server),
        };
        progress.update(&format!("waiting for {what}"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `status [--wait[=DUR]]`: prints the status; with --wait, fails (after
/// printing the last status) when it is not all ready and synced in time.
pub async fn run(conn: &Conn, wait_for: Option<Duration>, format: Format) -> anyhow::Result<()> {
    let (status, still) = match wait_for {
        Some(t) => wait(conn, t).await?,
        None => (fetch(conn).await?, None),
    };
    let now = clustermesh_proto::clock::unix_millis();
    match format {
        Format::Json => print!("{}", json_text(&to_json(&status, now))),
        Format::Table => print!("{}", to_text(&status, now)),
    }
    if let (Some(w), Some(t)) = (still, wait_for) {
        anyhow::bail!(
            "still waiting for {w} after {t:?}: see the peers' STATE and LAST ERROR above, and the apiserver logs"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clustermesh_proto::v1::{ClusterInfo, RecordCount};

    fn sample() -> StatusResponse {
        StatusResponse {
            cluster: Some(ClusterInfo {
                name: "c1".into(),
                id: 1,
                max_connected_clusters: 255,
                capabilities: vec![],
            }),
            ready: true,
            peers: vec![PeerStatus {
                name: "c2".into(),
                cluster_id: 2,
                addresses: vec!["127.0.0.1:2".into()],
                connected: true,
                enabled: true,
                last_heartbeat_unix_millis: 10_000,
                synced: vec![Kind::Node as i32, Kind::Service as i32],
                counts: vec![RecordCount {
                    cluster: "c2".into(),
                    kind: Kind::Node as i32,
                    count: 2,
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn json_shape() {
        let v = to_json(&sample(), 13_000);
        assert_eq!(v["cluster"]["name"], "c1");
        let p = &v["peers"][0];
        assert_eq!(p["name"], "c2");
        assert_eq!(p["connected"], true);
        assert_eq!(p["last_heartbeat_age_millis"], 3000);
        assert_eq!(p["synced"], json!(["nodes", "services"]));
        assert_eq!(p["records"][0], json!({"kind": "nodes", "count": 2}));
        let mut s = sample();
        s.peers[0].last_heartbeat_unix_millis = 0;
        assert!(to_json(&s, 1)["peers"][0]["last_heartbeat_age_millis"].is_null());
    }

    #[test]
    fn table_has_heartbeat_age() {
        let t = to_text(&sample(), 15_000);
        let head = t.lines().find(|l| l.starts_with("PEER")).unwrap();
        assert!(head.contains("HEARTBEAT"), "{t}");
        let row = t.lines().find(|l| l.starts_with("c2 ")).unwrap();
        assert!(row.contains("connected") && row.contains("5s ago"), "{t}");
        assert!(row.contains("nodes,services"), "{t}");
        let mut s = sample();
        s.peers[0].synced = clustermesh_proto::RECORD_KINDS
            .iter()
            .map(|k| *k as i32)
            .collect();
        let t = to_text(&s, 15_000);
        let row = t.lines().find(|l| l.starts_with("c2 ")).unwrap();
        assert!(row.contains(" all "), "{t}");
        assert!(
            row.contains(" ok ") && row.trim_end().ends_with(" no"),
            "{t}"
        );
        s.peers[0].over_quota = [("endpoints".to_string(), 12)].into();
        s.peers[0].import_policies = true;
        let t = to_text(&s, 15_000);
        let row = t.lines().find(|l| l.starts_with("c2 ")).unwrap();
        assert!(
            row.contains("OVER:endpoints(-12)") && row.trim_end().ends_with(" yes"),
            "{t}"
        );
        let v = to_json(&s, 15_000);
        assert_eq!(v["peers"][0]["over_quota"]["endpoints"], 12);
        assert_eq!(v["peers"][0]["import_policies"], true);
    }

    #[test]
    fn pending_reasons() {
        assert_eq!(pending(&sample()), None);
        let mut s = sample();
        s.peers[0].synced.clear();
        assert_eq!(pending(&s).unwrap(), "c2 to sync (0/1 peers synced)");
        s.peers[0].connected = false;
        assert!(pending(&s).unwrap().starts_with("c2 to connect"));
        s.peers[0].enabled = false;
        assert_eq!(pending(&s), None, "disabled peers are not waited for");
        s.ready = false;
        assert!(pending(&s).unwrap().contains("ready"));
    }
}
