//! The node part of `clustermesh status`: every cluster's gateways (live or
//! not, and which local agents use each) and this cluster's node agents
//! (role, datapath programmed, towards which gateway), the way
//! `subctl show connections` lists a cluster's gateways and routes.

use clustermesh_proto::v1::{AgentStatus, GatewayStatus};
use serde_json::{Value, json};

use crate::output::table;

pub fn gateways_json(g: &[GatewayStatus]) -> Value {
    g.iter()
        .map(|g| {
            json!({"cluster": g.cluster, "node": g.node, "address": g.address,
                   "live": g.live, "used_by": g.used_by})
        })
        .collect()
}

pub fn agents_json(a: &[AgentStatus]) -> Value {
    a.iter()
        .map(|a| {
            let r = a.report.clone().unwrap_or_default();
            json!({"node": r.node, "gateway": r.gateway, "programmed": r.programmed,
                   "live": a.live, "age_millis": a.age_ms, "mode": r.mode, "via": r.via,
                   "local_pods": r.local_pods, "remote_endpoints": r.remote_endpoints,
                   "policy_refused": r.policy_refused,
                   "fail_closed_identities": r.fail_closed_identities,
                   "last_error": r.last_error})
        })
        .collect()
}

/// The GATEWAY and NODE tables (empty when there is nothing to show).
pub fn to_text(gateways: &[GatewayStatus], agents: &[AgentStatus]) -> String {
    let mut out = String::new();
    if !gateways.is_empty() {
        let rows: Vec<Vec<String>> = gateways
            .iter()
            .map(|g| {
                vec![
                    g.cluster.clone(),
                    g.node.clone(),
                    g.address.clone(),
                    if g.live { "live" } else { "DOWN" }.into(),
                    if g.used_by.is_empty() {
                        "-".into()
                    } else {
                        g.used_by.join(",")
                    },
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(
            &["CLUSTER", "GATEWAY", "ADDRESS", "STATE", "IN USE BY"],
            &rows,
        ));
    }
    if !agents.is_empty() {
        let rows: Vec<Vec<String>> = agents
            .iter()
            .map(|a| {
                let r = a.report.clone().unwrap_or_default();
                let via: Vec<String> = r.via.iter().map(|(c, g)| format!("{c}→{g}")).collect();
                let refused: Vec<String> = r
                    .policy_refused
                    .iter()
                    .map(|(reason, n)| format!("{reason}={n}"))
                    .collect();
                let list = |v: Vec<String>| {
                    if v.is_empty() {
                        "-".into()
                    } else {
                        v.join(",")
                    }
                };
                vec![
                    r.node,
                    if r.gateway { "gateway" } else { "node" }.into(),
                    if !a.live {
                        "silent".into()
                    } else if r.programmed {
                        "programmed".into()
                    } else {
                        "NOT PROGRAMMED".into()
                    },
                    r.local_pods.to_string(),
                    r.remote_endpoints.to_string(),
                    list(via),
                    list(refused),
                    r.last_error,
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(
            &[
                "NODE",
                "ROLE",
                "DATAPATH",
                "PODS",
                "REMOTE",
                "VIA",
                "POLICY REFUSED",
                "LAST ERROR",
            ],
            &rows,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clustermesh_proto::v1::AgentReport;

    #[test]
    fn tables_show_live_gateways_and_the_way_each_node_goes() {
        let g = vec![
            GatewayStatus {
                cluster: "east".into(),
                node: "east-gw1".into(),
                address: "192.168.1.11".into(),
                live: true,
                used_by: vec!["east-w1".into()],
            },
            GatewayStatus {
                cluster: "east".into(),
                node: "east-gw2".into(),
                address: "192.168.1.12".into(),
                live: false,
                used_by: vec![],
            },
        ];
        let a = vec![AgentStatus {
            report: Some(AgentReport {
                node: "east-w1".into(),
                programmed: true,
                via: [("west".to_string(), "192.168.1.11".to_string())].into(),
                policy_refused: [("sctp_port".to_string(), 2)].into(),
                ..Default::default()
            }),
            live: true,
            age_ms: 100,
        }];
        let text = to_text(&g, &a);
        assert!(text.contains("east-gw2") && text.contains("DOWN"), "{text}");
        assert!(text.contains("west→192.168.1.11"), "{text}");
        assert!(text.contains("programmed"), "{text}");
        assert!(
            text.contains("sctp_port=2"),
            "policy refusals shown: {text}"
        );
        assert_eq!(agents_json(&a)[0]["via"]["west"], "192.168.1.11");
        assert_eq!(gateways_json(&g)[1]["live"], false);
        assert_eq!(to_text(&[], &[]), "");
    }
}
