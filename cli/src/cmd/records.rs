//! `clustermesh identity list`, `endpoint list` and `node list`: the
//! merged view (this cluster and its cached peers), read from one Watch
//! snapshot with scope `merged`.

use std::collections::BTreeMap;
use std::time::Duration;

use clustermesh_proto::ClusterMode;
use clustermesh_proto::identity::IdentityKind;
use clustermesh_proto::mirror::Mirror;
use clustermesh_proto::v1::{
    Endpoint, GetClusterRequest, Identity, Kind, Node, Scope, WatchRequest,
};
use prost::Message;
use serde_json::{Value, json};

use super::{Conn, rpc_error};
use crate::output::{Format, json_text, list_or_dash, table};

/// How long to wait for the snapshot to complete.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads one complete Watch snapshot (scope merged) of `kind`.
pub async fn snapshot(conn: &Conn, kind: Kind) -> anyhow::Result<Mirror> {
    let mut client = conn.mesh().await?;
    let mut stream = client
        .watch(WatchRequest {
            kinds: vec![kind as i32],
            scope: Scope::Merged as i32,
            resume: None,
        })
        .await
        .map_err(|s| rpc_error("Watch", &conn.server, s))?
        .into_inner();
    let mut mirror = Mirror::new();
    loop {
        let batch = tokio::time::timeout(SNAPSHOT_TIMEOUT, stream.message())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "the snapshot of {} from {} did not complete within {SNAPSHOT_TIMEOUT:?}; retry, or check the apiserver",
                    kind.display_name(),
                    conn.server
                )
            })?
            .map_err(|s| rpc_error("Watch", &conn.server, s))?;
        let Some(batch) = batch else {
            anyhow::bail!(
                "{} closed the Watch stream before the snapshot ended; retry",
                conn.server
            );
        };
        let outcome = mirror.apply(&batch);
        if let Some(reason) = outcome.resync {
            anyhow::bail!("{} cut the Watch stream ({reason}); retry", conn.server);
        }
        if outcome.snapshot_done {
            return Ok(mirror);
        }
    }
}

/// Decodes every record of the mirror as `T`; undecodable ones are
/// reported on stderr and skipped.
fn decode<T: Message + Default>(m: &Mirror, cluster: Option<&str>) -> Vec<T> {
    m.records
        .iter()
        .filter(|((_, c, _), _)| cluster.is_none_or(|want| c == want))
        .filter_map(|((kind, c, key), v)| match T::decode(v.as_ref()) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!(
                    "warning: skipping {} record {c}/{key}: {e}",
                    kind.display_name()
                );
                None
            }
        })
        .collect()
}

fn labels_text(l: &BTreeMap<String, String>) -> String {
    let v: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v}")).collect();
    list_or_dash(&v)
}

fn allocated_by(mode: Option<ClusterMode>, id: u32) -> Value {
    match mode.map(|m| m.classify(id)) {
        Some(Ok(IdentityKind::Cluster { cluster_id, .. })) => json!(cluster_id),
        _ => Value::Null,
    }
}

/// The stable JSON shape of `identity list -o json`.
pub fn identities_json(ids: &[Identity], mode: Option<ClusterMode>) -> Value {
    json!({"identities": ids.iter().map(|i| json!({
        "cluster": i.cluster,
        "id": i.id,
        "cluster_id": allocated_by(mode, i.id),
        "labels": i.labels,
        "exported": i.exported,
    })).collect::<Vec<_>>()})
}

pub fn identities_text(ids: &[Identity], mode: Option<ClusterMode>) -> String {
    let rows: Vec<Vec<String>> = ids
        .iter()
        .map(|i| {
            let by = allocated_by(mode, i.id);
            vec![
                i.cluster.clone(),
                i.id.to_string(),
                by.as_u64()
                    .map_or_else(|| "reserved".into(), |c| c.to_string()),
                if i.exported { "yes" } else { "no" }.into(),
                labels_text(&i.labels),
            ]
        })
        .collect();
    table(
        &["CLUSTER", "IDENTITY", "CLUSTER ID", "EXPORTED", "LABELS"],
        &rows,
    )
}

/// The stable JSON shape of `endpoint list -o json`.
pub fn endpoints_json(eps: &[Endpoint]) -> Value {
    json!({"endpoints": eps.iter().map(|e| json!({
        "cluster": e.cluster,
        "ip": e.ip,
        "identity": e.identity,
        "namespace": e.namespace,
        "pod": e.pod,
        "node_name": e.node_name,
        "node_ip": e.node_ip,
        "named_ports": e.named_ports.iter().map(|p| json!({"name": p.name, "port": p.port, "protocol": p.protocol})).collect::<Vec<_>>(),
        "exported": e.exported,
    })).collect::<Vec<_>>()})
}

pub fn endpoints_text(eps: &[Endpoint]) -> String {
    let rows: Vec<Vec<String>> = eps
        .iter()
        .map(|e| {
            let ports: Vec<String> = e
                .named_ports
                .iter()
                .map(|p| format!("{}={}/{}", p.name, p.port, p.protocol))
                .collect();
            vec![
                e.cluster.clone(),
                e.ip.clone(),
                e.identity.to_string(),
                format!("{}/{}", e.namespace, e.pod),
                format!("{} ({})", e.node_name, e.node_ip),
                list_or_dash(&ports),
            ]
        })
        .collect();
    table(
        &["CLUSTER", "IP", "IDENTITY", "POD", "NODE", "NAMED PORTS"],
        &rows,
    )
}

/// The stable JSON shape of `node list -o json`.
pub fn nodes_json(nodes: &[Node]) -> Value {
    json!({"nodes": nodes.iter().map(|n| json!({
        "cluster": n.cluster,
        "name": n.name,
        "internal_ips": n.internal_ips,
        "external_ips": n.external_ips,
        "pod_cidrs": n.pod_cidrs,
        "gateway": n.gateway,
        "labels": n.labels,
        "exported": n.exported,
    })).collect::<Vec<_>>()})
}

pub fn nodes_text(nodes: &[Node]) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.cluster.clone(),
                n.name.clone(),
                list_or_dash(&n.internal_ips),
                list_or_dash(&n.pod_cidrs),
                if n.gateway { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    table(
        &["CLUSTER", "NAME", "INTERNAL IPS", "POD CIDRS", "GATEWAY"],
        &rows,
    )
}

/// Which list to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    Identities,
    Endpoints,
    Nodes,
}

pub async fn run(
    conn: &Conn,
    what: What,
    cluster: Option<&str>,
    format: Format,
) -> anyhow::Result<()> {
    let kind = match what {
        What::Identities => Kind::Identity,
        What::Endpoints => Kind::Endpoint,
        What::Nodes => Kind::Node,
    };
    let m = snapshot(conn, kind).await?;
    let out = match what {
        What::Identities => {
            let info = conn
                .mesh()
                .await?
                .get_cluster(GetClusterRequest {})
                .await
                .map_err(|s| rpc_error("GetCluster", &conn.server, s))?
                .into_inner();
            let mode = ClusterMode::from_max_clusters(info.max_connected_clusters).ok();
            let mut ids: Vec<Identity> = decode(&m, cluster);
            ids.sort_by(|a, b| (&a.cluster, a.id).cmp(&(&b.cluster, b.id)));
            match format {
                Format::Json => json_text(&identities_json(&ids, mode)),
                Format::Table => identities_text(&ids, mode),
            }
        }
        What::Endpoints => {
            let eps: Vec<Endpoint> = decode(&m, cluster);
            match format {
                Format::Json => json_text(&endpoints_json(&eps)),
                Format::Table => endpoints_text(&eps),
            }
        }
        What::Nodes => {
            let nodes: Vec<Node> = decode(&m, cluster);
            match format {
                Format::Json => json_text(&nodes_json(&nodes)),
                Format::Table => nodes_text(&nodes),
            }
        }
    };
    print!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use clustermesh_proto::v1::NamedPort;

    #[test]
    fn identity_shapes() {
        let ids = vec![
            Identity {
                id: 2,
                cluster: "c1".into(),
                ..Default::default()
            },
            Identity {
                id: (1 << 16) | 300,
                labels: [("app".to_string(), "backend".to_string())].into(),
                cluster: "c1".into(),
                exported: true,
            },
        ];
        let mode = Some(ClusterMode::Max255);
        let v = identities_json(&ids, mode);
        assert!(v["identities"][0]["cluster_id"].is_null());
        assert_eq!(v["identities"][1]["cluster_id"], 1);
        assert_eq!(v["identities"][1]["labels"]["app"], "backend");
        let t = identities_text(&ids, mode);
        assert!(t.lines().nth(1).unwrap().contains("reserved"), "{t}");
        assert!(t.lines().nth(2).unwrap().ends_with("app=backend"), "{t}");
    }

    #[test]
    fn endpoint_and_node_shapes() {
        let e = Endpoint {
            ip: "10.1.0.11".into(),
            identity: 65836,
            node_ip: "192.168.1.10".into(),
            node_name: "gw".into(),
            namespace: "shop".into(),
            pod: "backend-1".into(),
            named_ports: vec![NamedPort {
                name: "http".into(),
                port: 8080,
                protocol: "TCP".into(),
            }],
            cluster: "c1".into(),
            exported: true,
        };
        let v = endpoints_json(std::slice::from_ref(&e));
        assert_eq!(v["endpoints"][0]["named_ports"][0]["port"], 8080);
        assert_eq!(v["endpoints"][0]["cluster"], "c1");
        assert!(endpoints_text(&[e]).contains("shop/backend-1"));
        let n = Node {
            name: "gw".into(),
            internal_ips: vec!["192.168.1.10".into()],
            pod_cidrs: vec!["10.1.0.0/24".into()],
            gateway: true,
            cluster: "c2".into(),
            ..Default::default()
        };
        let v = nodes_json(std::slice::from_ref(&n));
        assert_eq!(v["nodes"][0]["gateway"], true);
        assert_eq!(v["nodes"][0]["pod_cidrs"][0], "10.1.0.0/24");
        let t = nodes_text(&[n]);
        assert!(t.lines().nth(1).unwrap().starts_with("c2 "), "{t}");
    }

    #[test]
    fn decode_filters_and_skips_garbage() {
        let mut m = Mirror::new();
        let node = |c: &str| Node {
            name: "n".into(),
            cluster: c.into(),
            ..Default::default()
        };
        for c in ["a", "b"] {
            m.records.insert(
                (Kind::Node, c.into(), "n".into()),
                Bytes::from(node(c).encode_to_vec()),
            );
        }
        m.records.insert(
            (Kind::Node, "a".into(), "bad".into()),
            Bytes::from_static(&[0xff, 0xff, 0xff]),
        );
        let all: Vec<Node> = decode(&m, None);
        assert_eq!(all.len(), 2);
        let only_b: Vec<Node> = decode(&m, Some("b"));
        assert_eq!(only_b.len(), 1);
        assert_eq!(only_b[0].cluster, "b");
    }
}
