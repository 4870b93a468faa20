//! docs/cli.md documents every `-o json` shape; this keeps the document and
//! the code in step: each documented example must have exactly the keys
//! (recursively) that the command produces.

use std::path::Path;

use clustermesh_cli::cmd::{context, records, service, status};
use clustermesh_cli::config::{Config, Context};
use clustermesh_proto::ClusterMode;
use clustermesh_proto::v1::{
    Backend, BackendPort, ClusterBackends, ClusterInfo, Endpoint, Identity, Kind,
    ListServicesResponse, LookupServiceResponse, NamedPort, Node, PeerStatus, RecordCount,
    ServicePort, ServiceSummary, SourceError, StatusResponse,
};
use serde_json::Value;

/// Keys whose values are free-form maps (their keys are data, not schema).
const MAPS: [&str; 1] = ["labels"];

/// Compares the shape of `doc` with `got`; returns the differences.
fn shape_diff(path: &str, doc: &Value, got: &Value, out: &mut Vec<String>) {
    match (doc, got) {
        (Value::Object(d), Value::Object(g)) => {
            for k in d.keys().filter(|k| !g.contains_key(*k)) {
                out.push(format!("{path}.{k}: documented but not produced"));
            }
            for k in g.keys().filter(|k| !d.contains_key(*k)) {
                out.push(format!("{path}.{k}: produced but not documented"));
            }
            for (k, dv) in d {
                if let (Some(gv), false) = (g.get(k), MAPS.contains(&k.as_str())) {
                    shape_diff(&format!("{path}.{k}"), dv, gv, out);
                }
            }
        }
        (Value::Array(d), Value::Array(g)) => {
            if let (Some(d0), Some(g0)) = (d.first(), g.first()) {
                shape_diff(&format!("{path}[]"), d0, g0, out);
            }
        }
        (Value::Null, _) | (_, Value::Null) => {}
        (d, g) => {
            let kind = |v: &Value| match v {
                Value::Bool(_) => "bool",
                Value::Number(_) => "number",
                Value::String(_) => "string",
                Value::Array(_) => "array",
                Value::Object(_) => "object",
                Value::Null => "null",
            };
            if kind(d) != kind(g) {
                out.push(format!(
                    "{path}: documented as {} but is {}",
                    kind(d),
                    kind(g)
                ));
            }
        }
    }
}

/// The JSON block that follows `marker` in docs/cli.md.
fn documented(doc: &str, marker: &str) -> Value {
    let at = doc
        .find(marker)
        .unwrap_or_else(|| panic!("docs/cli.md has no {marker:?}"));
    let rest = &doc[at..];
    let start = rest.find("```json\n").expect("a json block follows") + 8;
    let end = rest[start..].find("```").expect("the block ends") + start;
    serde_json::from_str(&rest[start..end])
        .unwrap_or_else(|e| panic!("the block after {marker:?} is not JSON: {e}"))
}

fn check(doc: &str, marker: &str, got: Value) {
    let mut diffs = Vec::new();
    shape_diff("$", &documented(doc, marker), &got, &mut diffs);
    assert!(
        diffs.is_empty(),
        "docs/cli.md ({marker}) and the code disagree:\n{}\nproduced: {got:#}",
        diffs.join("\n")
    );
}

fn backend() -> Backend {
    Backend {
        ip: "10.1.0.11".into(),
        ports: vec![BackendPort {
            name: "http".into(),
            port: 8080,
            protocol: "TCP".into(),
        }],
        ready: true,
        serving: true,
        zone: "a".into(),
        node_name: "n".into(),
        cluster: "c1".into(),
    }
}

#[test]
fn every_documented_json_shape_matches() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/cli.md"))
        .expect("reading docs/cli.md");

    let cfg = Config {
        current_context: Some("c1".into()),
        contexts: vec![Context {
            name: "c1".into(),
            server: "a:1".into(),
            tls_dir: "/pki".into(),
        }],
    };
    check(
        &doc,
        "`context list -o json`",
        context::to_json(&cfg, Path::new("/c.yaml")),
    );

    let st = StatusResponse {
        cluster: Some(ClusterInfo {
            name: "c1".into(),
            id: 1,
            max_connected_clusters: 255,
            capabilities: vec!["x".into()],
        }),
        counts: vec![RecordCount {
            cluster: "c1".into(),
            kind: Kind::Node as i32,
            count: 1,
        }],
        source_errors: vec![SourceError {
            file: "f".into(),
            line: 1,
            message: "m".into(),
        }],
        synced: vec![Kind::Node as i32],
        peers: vec![PeerStatus {
            name: "c2".into(),
            addresses: vec!["b:1".into()],
            synced: vec![Kind::Node as i32],
            counts: vec![RecordCount {
                cluster: "c2".into(),
                kind: Kind::Node as i32,
                count: 1,
            }],
            last_heartbeat_unix_millis: 5,
            ..Default::default()
        }],
        gateways: vec![clustermesh_proto::v1::GatewayStatus {
            cluster: "c1".into(),
            node: "gw".into(),
            address: "10.0.0.1".into(),
            live: true,
            used_by: vec!["w".into()],
        }],
        agents: vec![clustermesh_proto::v1::AgentStatus {
            report: Some(clustermesh_proto::v1::AgentReport {
                node: "w".into(),
                via: [("west".to_string(), "10.0.0.1".to_string())].into(),
                policy_refused: [("sctp_port".to_string(), 1)].into(),
                ..Default::default()
            }),
            live: true,
            age_ms: 1,
        }],
        ..Default::default()
    };
    check(&doc, "`status -o json`", status::to_json(&st, 10));

    let lookup = LookupServiceResponse {
        namespace: "shop".into(),
        name: "backend".into(),
        ports: vec![ServicePort {
            name: "http".into(),
            port: 80,
            protocol: "TCP".into(),
        }],
        frontend_ips: vec!["10.96.1.10".into()],
        clusters: vec![ClusterBackends {
            cluster: "c1".into(),
            backends: vec![backend()],
        }],
        selected: vec![backend()],
        ..Default::default()
    };
    check(
        &doc,
        "`service get -o json`",
        service::lookup_json(&lookup, "c1"),
    );

    let list = ListServicesResponse {
        services: vec![ServiceSummary {
            namespace: "shop".into(),
            name: "backend".into(),
            clusters: vec!["c1".into()],
            ..Default::default()
        }],
    };
    check(&doc, "Columns: `NAMESPACE NAME", service::list_json(&list));

    let ids = [Identity {
        id: 65792,
        labels: [("a".to_string(), "b".to_string())].into(),
        cluster: "c1".into(),
        exported: true,
    }];
    check(
        &doc,
        "`identity list` (table",
        records::identities_json(&ids, Some(ClusterMode::Max255)),
    );

    let eps = [Endpoint {
        named_ports: vec![NamedPort {
            name: "http".into(),
            port: 80,
            protocol: "TCP".into(),
        }],
        ..Default::default()
    }];
    check(
        &doc,
        "`endpoint list` (table",
        records::endpoints_json(&eps),
    );

    let nodes = [Node {
        internal_ips: vec!["1.1.1.1".into()],
        external_ips: vec!["2.2.2.2".into()],
        pod_cidrs: vec!["10.0.0.0/24".into()],
        ..Default::default()
    }];
    check(&doc, "`node list` (table", records::nodes_json(&nodes));
}
