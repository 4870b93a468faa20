//! The agent's reports to its apiserver (`ReportAgent`): what `clustermesh
//! status` shows per node, and for a gateway its liveness lease. The server
//! answers with the interval to report at (a gateway's is a fraction of
//! `--gateway-lease`); failures are retried with the shared backoff.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clustermesh_certs::{Role, dial};
use clustermesh_proto::backoff::Backoff;
use clustermesh_proto::v1::{AgentReport, cluster_mesh_client::ClusterMeshClient};
use tracing::{debug, warn};

use super::status::Status;

/// How often the status is looked at: a change of role, of programming or
/// of the gateways in use is reported at once, not at the next interval.
const LOOK: Duration = Duration::from_millis(50);

/// The part of a report whose change is sent at once.
fn essence(r: &AgentReport) -> AgentReport {
    AgentReport {
        gateway: r.gateway,
        programmed: r.programmed,
        via: r.via.clone(),
        policy_refused: r.policy_refused.clone(),
        ..Default::default()
    }
}

/// The report of the agent's current status.
pub fn report(s: &Status, sequence: u64) -> AgentReport {
    let d = &s.datapath;
    AgentReport {
        node: s.node.clone(),
        gateway: d.gateway,
        programmed: d.synced && d.last_error.is_none(),
        mode: s.mode.clone(),
        via: d
            .remote_clusters
            .iter()
            .map(|(c, a)| (c.clone(), a.to_string()))
            .collect(),
        local_pods: d.local_pods as u64,
        remote_endpoints: d.remote_endpoints as u64,
        last_error: d.last_error.clone().unwrap_or_default(),
        sequence,
        unix_millis: clustermesh_proto::clock::unix_millis(),
        policy_refused: d
            .policy_refused
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| (r.to_string(), *n as u64))
            .collect(),
        fail_closed_identities: d.fail_closed_identities as u64,
    }
}

/// Reports until the task is aborted.
pub async fn run(
    apiserver: String,
    tls_dir: PathBuf,
    status: Arc<Mutex<Status>>,
    backoff_min: Duration,
    backoff_max: Duration,
) {
    let mut backoff = Backoff::new(backoff_min, backoff_max);
    let mut sequence = 0u64;
    let mut client: Option<ClusterMeshClient<tonic::transport::Channel>> = None;
    loop {
        let c = match client.take() {
            Some(c) => c,
            None => match dial::connect(&apiserver, &tls_dir, Role::Agent).await {
                Ok(ch) => ClusterMeshClient::new(ch),
                Err(e) => {
                    warn!(error = %e, "cannot reach the apiserver to report");
                    tokio::time::sleep(backoff.delay()).await;
                    continue;
                }
            },
        };
        // Nothing is reported before the first programming: the previous
        // agent's report (and its pinned datapath) stands until then, so a
        // restart never marks a working gateway unusable.
        let Some(synced) = status.lock().ok().map(|s| s.datapath.synced) else {
            return;
        };
        if !synced {
            client = Some(c);
            tokio::time::sleep(LOOK).await;
            continue;
        }
        sequence += 1;
        let Some(r) = status.lock().ok().map(|s| report(&s, sequence)) else {
            return;
        };
        let mut c2 = c.clone();
        let r_sent = r.clone();
        let sent = tokio::time::timeout(Duration::from_secs(2), c2.report_agent(r)).await;
        let wait = match sent {
            Ok(Ok(resp)) => {
                backoff.reset();
                client = Some(c);
                let ms = resp.into_inner().report_interval_ms.clamp(50, 60_000);
                Duration::from_millis(u64::from(ms))
            }
            Ok(Err(s)) => {
                warn!(error = %dial::explain(&s), "report refused");
                backoff.delay()
            }
            Err(_) => {
                debug!("report timed out; redialing");
                backoff.delay()
            }
        };
        if let Ok(mut s) = status.lock() {
            s.reports_sent = sequence;
        }
        let sent_essence = essence(&r_sent);
        let until = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < until {
            tokio::time::sleep(LOOK.min(until - tokio::time::Instant::now())).await;
            let now = status.lock().ok().map(|s| essence(&report(&s, 0)));
            if now.is_some_and(|e| e != sent_essence) {
                break;
            }
        }
    }
}
