//! `clustermesh status`: this cluster and its peers.

use std::time::{Duration, Instant};

use clustermesh_proto::v1::{
    Kind, StatusRequest, StatusResponse, cluster_mesh_client::ClusterMeshClient,
};
use serde_json::{Value, json};

use super::{Conn, rpc_error};
use crate::output::{Format, table};

fn kind_name(k: i32) -> &'static str {
    Kind::try_from(k)
        .map(|k| k.display_name())
        .unwrap_or("unknown")
}

/// The stable JSON shape of `status -o json` (documented in docs/cli.md).
pub fn to_json(s: &StatusResponse) -> Value {
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
        "synced": s.synced.iter().map(|k| kind_name(*k)).collect::<Vec<_>>(),
        "records": s.counts.iter().map(|c| json!({"cluster": c.cluster, "kind": kind_name(c.kind), "count": c.count})).collect::<Vec<_>>(),
        "source_errors": s.source_errors.iter().map(|e| json!({"file": e.file, "line": e.line, "message": e.message})).collect::<Vec<_>>(),
        "peers": s.peers.iter().map(|p| json!({
            "name": p.name, "cluster_id": p.cluster_id, "addresses": p.addresses, "enabled": p.enabled,
            "connected": p.connected, "last_heartbeat_unix_millis": p.last_heartbeat_unix_millis,
            "synced": p.synced.iter().map(|k| kind_name(*k)).collect::<Vec<_>>(),
            "records": p.counts.iter().map(|c| json!({"kind": kind_name(c.kind), "count": c.count})).collect::<Vec<_>>(),
            "failures": p.failures, "rejected_records": p.rejected_records, "withdrawn": p.withdrawn, "last_error": p.last_error,
        })).collect::<Vec<_>>(),
    })
}

/// Human rendering.
pub fn to_text(s: &StatusResponse) -> String {
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
    let synced: Vec<_> = s.synced.iter().map(|k| kind_name(*k)).collect();
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
    if !s.peers.is_empty() {
        let rows: Vec<Vec<String>> = s
            .peers
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.cluster_id.to_string(),
                    if p.connected {
                        "connected".into()
                    } else {
                        "disconnected".into()
                    },
                    p.synced
                        .iter()
                        .map(|k| kind_name(*k))
                        .collect::<Vec<_>>()
                        .join(","),
                    p.counts.iter().map(|c| c.count).sum::<u64>().to_string(),
                    p.failures.to_string(),
                    p.last_error.clone(),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(
            &[
                "PEER",
                "ID",
                "STATE",
                "SYNCED",
                "RECORDS",
                "FAILURES",
                "LAST ERROR",
            ],
            &rows,
        ));
    }
    out
}

pub async fn fetch(conn: &Conn) -> anyhow::Result<StatusResponse> {
    let mut client = ClusterMeshClient::new(conn.admin().await?);
    Ok(client
        .status(StatusRequest {})
        .await
        .map_err(|s| rpc_error("Status", &conn.server, s))?
        .into_inner())
}

pub async fn run(conn: &Conn, wait: Option<Duration>, format: Format) -> anyhow::Result<()> {
    let deadline = wait.map(|w| Instant::now() + w);
    let status = loop {
        let attempt = fetch(conn).await;
        match (&attempt, deadline) {
            (Ok(s), Some(_))
                if s.ready && s.peers.iter().all(|p| p.connected && !p.synced.is_empty()) =>
            {
                break attempt?;
            }
            (_, Some(d)) if Instant::now() < d => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            _ => break attempt?,
        }
    };
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&to_json(&status))?),
        Format::Table => print!("{}", to_text(&status)),
    }
    if deadline.is_some() && !status.ready {
        anyhow::bail!(
            "cluster {} is not ready",
            status.cluster.map(|c| c.name).unwrap_or_default()
        );
    }
    Ok(())
}
