//! `clustermesh status --agent HOST:PORT`: the node agents' own view, read
//! from their `/status` endpoint (plain HTTP on `--health-listen`): health,
//! datapath entries and the policy rules each could not program.

use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::output::table;

/// One agent's `/status`, or why it could not be read.
pub type AgentStatus = (String, Result<Value, String>);

const TIMEOUT: Duration = Duration::from_secs(5);

/// GET `http://<addr>/status` and parse the JSON body.
pub async fn fetch(addr: &str) -> anyhow::Result<Value> {
    let get = async {
        let mut s = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to agent {addr}"))?;
        let req = format!("GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(TIMEOUT, get)
        .await
        .with_context(|| format!("agent {addr}: no answer within {TIMEOUT:?}"))??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("agent {addr}: not an HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.1 503") {
        anyhow::bail!("agent {addr}: {}", head.lines().next().unwrap_or_default());
    }
    serde_json::from_str(body).with_context(|| format!("agent {addr}: /status is not JSON"))
}

/// Every agent, in the order given; failures are kept, not fatal.
pub async fn fetch_all(addrs: &[String]) -> Vec<AgentStatus> {
    let mut out = Vec::new();
    for a in addrs {
        out.push((a.clone(), fetch(a).await.map_err(|e| format!("{e:#}"))));
    }
    out
}

/// Refusal reasons with a non-zero count, as "reason=N".
fn refused(v: &Value) -> Vec<String> {
    v["datapath"]["policy_refused"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                .map(|(r, n)| format!("{r}={n}"))
                .collect()
        })
        .unwrap_or_default()
}

/// The `agents` array of `status -o json`.
pub fn to_json(agents: &[AgentStatus]) -> Value {
    Value::Array(
        agents
            .iter()
            .map(|(addr, r)| match r {
                Ok(v) => json!({
                    "address": addr, "node": v["node"], "cluster": v["cluster"],
                    "healthy": v["healthy"],
                    "policy_entries": v["datapath"]["policy_entries"],
                    "policy_refused": v["datapath"]["policy_refused"],
                    "fail_closed_identities": v["datapath"]["fail_closed_identities"],
                    "unresolved_named_ports": v["datapath"]["unresolved_named_ports"],
                    "last_error": v["datapath"]["last_error"],
                }),
                Err(e) => json!({"address": addr, "error": e}),
            })
            .collect(),
    )
}

/// The agents table, plus one line per agent that refused policy rules.
pub fn to_text(agents: &[AgentStatus]) -> String {
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|(addr, r)| match r {
            Ok(v) => {
                let refused = refused(v);
                vec![
                    addr.clone(),
                    v["node"].as_str().unwrap_or("?").to_string(),
                    if v["healthy"].as_bool() == Some(true) {
                        "yes".into()
                    } else {
                        "NO".into()
                    },
                    v["datapath"]["policy_entries"].to_string(),
                    v["datapath"]["fail_closed_identities"].to_string(),
                    if refused.is_empty() {
                        "none".into()
                    } else {
                        refused.join(" ")
                    },
                ]
            }
            Err(e) => vec![
                addr.clone(),
                "?".into(),
                "UNREACHABLE".into(),
                "-".into(),
                "-".into(),
                e.clone(),
            ],
        })
        .collect();
    let mut out = String::from("\n");
    out.push_str(&table(
        &[
            "AGENT",
            "NODE",
            "HEALTHY",
            "POLICY ENTRIES",
            "FAIL-CLOSED",
            "POLICY REFUSED",
        ],
        &rows,
    ));
    if agents
        .iter()
        .any(|(_, r)| r.as_ref().is_ok_and(|v| !refused(v).is_empty()))
    {
        out.push_str(
            "Refused policy rules are left out (they admit less, never more): see the agent's log for each.\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_refusals() {
        let v = json!({"node": "n1", "cluster": "c1", "healthy": true,
            "datapath": {"policy_entries": 16, "fail_closed_identities": 0,
                "policy_refused": {"unknown_protocol": 2, "policy_map_full": 0}}});
        let agents = vec![
            ("n1:9876".to_string(), Ok(v)),
            ("n2:9876".to_string(), Err("connection refused".to_string())),
        ];
        let text = to_text(&agents);
        assert!(text.contains("unknown_protocol=2"), "{text}");
        assert!(!text.contains("policy_map_full"), "{text}");
        assert!(text.contains("UNREACHABLE"), "{text}");
        let j = to_json(&agents);
        assert_eq!(j[0]["policy_refused"]["unknown_protocol"], 2);
        assert_eq!(j[1]["error"], "connection refused");
    }
}
