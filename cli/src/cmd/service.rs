//! `clustermesh service get NS/NAME` and `clustermesh service list`.

use std::collections::BTreeSet;

use clustermesh_proto::v1::{
    Affinity, Backend, GetClusterRequest, ListServicesRequest, ListServicesResponse,
    LookupServiceRequest, LookupServiceResponse, ServicePort,
};
use serde_json::{Value, json};

use super::{Conn, rpc_error};
use crate::output::{Format, json_text, list_or_dash, table};

/// Splits "namespace/name".
pub fn parse_ref(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_owned(), name.to_owned()))
        }
        _ => Err(format!(
            "{s:?} is not NAMESPACE/NAME (for example shop/backend)"
        )),
    }
}

pub fn affinity_name(a: i32) -> &'static str {
    match Affinity::try_from(a) {
        Ok(Affinity::Local) => "local",
        Ok(Affinity::Remote) => "remote",
        _ => "none",
    }
}

fn port_json(name: &str, port: u32, protocol: &str) -> Value {
    json!({"name": name, "port": port, "protocol": protocol})
}

fn backend_json(b: &Backend) -> Value {
    json!({
        "cluster": b.cluster,
        "ip": b.ip,
        "ports": b.ports.iter().map(|p| port_json(&p.name, p.port, &p.protocol)).collect::<Vec<_>>(),
        "ready": b.ready,
        "serving": b.serving,
        "zone": b.zone,
        "node_name": b.node_name,
    })
}

/// The stable JSON shape of `service get -o json`.
pub fn lookup_json(r: &LookupServiceResponse, viewed_from: &str) -> Value {
    json!({
        "namespace": r.namespace,
        "name": r.name,
        "viewed_from": viewed_from,
        "global": r.global,
        "affinity": affinity_name(r.affinity),
        "ports": r.ports.iter().map(|p| port_json(&p.name, p.port, &p.protocol)).collect::<Vec<_>>(),
        "frontend_ips": r.frontend_ips,
        "clusters": r.clusters.iter().map(|c| json!({
            "cluster": c.cluster,
            "backends": c.backends.iter().map(backend_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "selected": r.selected.iter().map(backend_json).collect::<Vec<_>>(),
    })
}

fn ports_text(ports: &[ServicePort]) -> String {
    let v: Vec<String> = ports
        .iter()
        .map(|p| {
            let proto = if p.protocol.is_empty() {
                "TCP"
            } else {
                &p.protocol
            };
            if p.name.is_empty() {
                format!("{}/{proto}", p.port)
            } else {
                format!("{} {}/{proto}", p.name, p.port)
            }
        })
        .collect();
    list_or_dash(&v)
}

fn yes(b: bool) -> String {
    if b { "yes".into() } else { "no".into() }
}

/// Human rendering of a lookup.
pub fn lookup_text(r: &LookupServiceResponse, viewed_from: &str) -> String {
    let mut out = format!(
        "Service {}/{}: {}, affinity {}\nPorts: {}\nFrontends: {}\n\n",
        r.namespace,
        r.name,
        if r.global { "global" } else { "local" },
        affinity_name(r.affinity),
        ports_text(&r.ports),
        list_or_dash(&r.frontend_ips).replace(',', ", "),
    );
    let selected: BTreeSet<(&str, &str)> = r
        .selected
        .iter()
        .map(|b| (b.cluster.as_str(), b.ip.as_str()))
        .collect();
    let rows: Vec<Vec<String>> = r
        .clusters
        .iter()
        .flat_map(|c| c.backends.iter().map(move |b| (c.cluster.as_str(), b)))
        .map(|(cluster, b)| {
            let ports: Vec<String> = b
                .ports
                .iter()
                .map(|p| format!("{}/{}", p.port, p.protocol))
                .collect();
            vec![
                cluster.to_owned(),
                b.ip.clone(),
                list_or_dash(&ports),
                yes(b.ready),
                yes(b.serving),
                if b.zone.is_empty() {
                    "-".into()
                } else {
                    b.zone.clone()
                },
                if b.node_name.is_empty() {
                    "-".into()
                } else {
                    b.node_name.clone()
                },
                yes(selected.contains(&(cluster, b.ip.as_str()))),
            ]
        })
        .collect();
    if rows.is_empty() {
        out.push_str("No backends.\n");
    } else {
        out.push_str(&table(
            &[
                "CLUSTER", "BACKEND", "PORTS", "READY", "SERVING", "ZONE", "NODE", "SELECTED",
            ],
            &rows,
        ));
    }
    let total: usize = r.clusters.iter().map(|c| c.backends.len()).sum();
    out.push_str(&format!(
        "\nA client in {viewed_from} would use {} of {total} backend(s) (affinity {}).\n",
        r.selected.len(),
        affinity_name(r.affinity)
    ));
    out
}

pub async fn fetch(
    conn: &Conn,
    ns: &str,
    name: &str,
) -> anyhow::Result<(LookupServiceResponse, String)> {
    let mut client = conn.mesh().await?;
    let here = client
        .get_cluster(GetClusterRequest {})
        .await
        .map_err(|s| rpc_error("GetCluster", &conn.server, s))?
        .into_inner()
        .name;
    let r = client
        .lookup_service(LookupServiceRequest {
            namespace: ns.to_owned(),
            name: name.to_owned(),
        })
        .await
        .map_err(|s| {
            let hint = if s.code() == tonic::Code::NotFound {
                " (list the known services with `clustermesh service list`)"
            } else {
                ""
            };
            anyhow::anyhow!("{}{hint}", rpc_error("LookupService", &conn.server, s))
        })?
        .into_inner();
    Ok((r, here))
}

pub async fn get(conn: &Conn, reference: &str, format: Format) -> anyhow::Result<()> {
    let (ns, name) = parse_ref(reference).map_err(anyhow::Error::msg)?;
    let (r, here) = fetch(conn, &ns, &name).await?;
    match format {
        Format::Json => print!("{}", json_text(&lookup_json(&r, &here))),
        Format::Table => print!("{}", lookup_text(&r, &here)),
    }
    Ok(())
}

/// The stable JSON shape of `service list -o json`.
pub fn list_json(r: &ListServicesResponse) -> Value {
    json!({
        "services": r.services.iter().map(|s| json!({
            "namespace": s.namespace,
            "name": s.name,
            "global": s.global,
            "shared": s.shared,
            "affinity": affinity_name(s.affinity),
            "clusters": s.clusters,
            "backends": s.backends,
            "ready_backends": s.ready_backends,
        })).collect::<Vec<_>>(),
    })
}

pub fn list_text(r: &ListServicesResponse) -> String {
    if r.services.is_empty() {
        return "No services.\n".into();
    }
    let rows: Vec<Vec<String>> = r
        .services
        .iter()
        .map(|s| {
            vec![
                s.namespace.clone(),
                s.name.clone(),
                yes(s.global),
                yes(s.shared),
                affinity_name(s.affinity).into(),
                list_or_dash(&s.clusters),
                format!("{}/{}", s.ready_backends, s.backends),
            ]
        })
        .collect();
    table(
        &[
            "NAMESPACE",
            "NAME",
            "GLOBAL",
            "SHARED",
            "AFFINITY",
            "CLUSTERS",
            "READY/BACKENDS",
        ],
        &rows,
    )
}

pub async fn list(conn: &Conn, global_only: bool, format: Format) -> anyhow::Result<()> {
    let r = conn
        .mesh()
        .await?
        .list_services(ListServicesRequest { global_only })
        .await
        .map_err(|s| rpc_error("ListServices", &conn.server, s))?
        .into_inner();
    match format {
        Format::Json => print!("{}", json_text(&list_json(&r))),
        Format::Table => print!("{}", list_text(&r)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clustermesh_proto::v1::{BackendPort, ClusterBackends, ServiceSummary};

    fn be(cluster: &str, ip: &str, ready: bool) -> Backend {
        Backend {
            ip: ip.into(),
            ports: vec![BackendPort {
                name: "http".into(),
                port: 8080,
                protocol: "TCP".into(),
            }],
            ready,
            serving: ready,
            zone: "z".into(),
            node_name: "n".into(),
            cluster: cluster.into(),
        }
    }

    fn sample() -> LookupServiceResponse {
        LookupServiceResponse {
            namespace: "shop".into(),
            name: "backend".into(),
            global: true,
            affinity: Affinity::Local as i32,
            ports: vec![ServicePort {
                name: "http".into(),
                port: 80,
                protocol: "TCP".into(),
            }],
            frontend_ips: vec!["10.96.1.10".into(), "10.97.1.10".into()],
            clusters: vec![
                ClusterBackends {
                    cluster: "c1".into(),
                    backends: vec![be("c1", "10.1.0.11", true)],
                },
                ClusterBackends {
                    cluster: "c2".into(),
                    backends: vec![be("c2", "10.2.0.11", false)],
                },
            ],
            selected: vec![be("c1", "10.1.0.11", true)],
        }
    }

    #[test]
    fn refs() {
        assert_eq!(
            parse_ref("shop/backend"),
            Ok(("shop".into(), "backend".into()))
        );
        for bad in ["shop", "/x", "x/", "a/b/c"] {
            assert!(parse_ref(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lookup_json_shape() {
        let v = lookup_json(&sample(), "c1");
        assert_eq!(v["affinity"], "local");
        assert_eq!(v["viewed_from"], "c1");
        assert_eq!(v["clusters"][1]["cluster"], "c2");
        assert_eq!(
            v["clusters"][0]["backends"][0],
            json!({"cluster": "c1", "ip": "10.1.0.11",
                   "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                   "ready": true, "serving": true, "zone": "z", "node_name": "n"})
        );
        assert_eq!(v["selected"].as_array().map(Vec::len), Some(1));
        assert_eq!(v["ports"][0]["port"], 80);
    }

    #[test]
    fn lookup_table() {
        let t = lookup_text(&sample(), "c1");
        assert!(
            t.contains("Service shop/backend: global, affinity local"),
            "{t}"
        );
        assert!(t.contains("Frontends: 10.96.1.10, 10.97.1.10"), "{t}");
        let row = t.lines().find(|l| l.starts_with("c2 ")).unwrap();
        assert!(row.contains("10.2.0.11") && row.ends_with("no"), "{t}");
        let row = t.lines().find(|l| l.starts_with("c1 ")).unwrap();
        assert!(row.ends_with("yes"), "{t}");
        assert!(t.contains("would use 1 of 2 backend(s)"), "{t}");
    }

    #[test]
    fn list_shapes() {
        let r = ListServicesResponse {
            services: vec![ServiceSummary {
                namespace: "shop".into(),
                name: "backend".into(),
                global: true,
                clusters: vec!["c1".into(), "c2".into()],
                backends: 4,
                ready_backends: 3,
                ..Default::default()
            }],
        };
        let v = list_json(&r);
        assert_eq!(v["services"][0]["clusters"], json!(["c1", "c2"]));
        assert_eq!(v["services"][0]["affinity"], "none");
        let t = list_text(&r);
        assert!(t.lines().nth(1).unwrap().contains("c1,c2"), "{t}");
        assert!(t.contains("3/4"), "{t}");
    }
}
