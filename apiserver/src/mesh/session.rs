//! One connection attempt to a peer: dial (mTLS, our `remote` certificate,
//! trusting the CA registered for the peer), GetCluster and validate, then
//! Watch(scope=exported) and forward every batch to the peer loop. The loop
//! owns all state; a session only reports what happened and ends on the
//! first error.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use clustermesh_certs::{Role, cert_file, dial, key_file};
use clustermesh_proto::v1::{
    ClusterInfo, GetClusterRequest, PeerConfig, ResumePoint, Scope, WatchBatch, WatchRequest,
    cluster_mesh_client::ClusterMeshClient,
};
use prometheus_client::metrics::gauge::Gauge;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::validate::{self, PeerInfoError};
use crate::view::View;

/// The largest Watch message accepted (a snapshot chunk of 512 records).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum SessionError {
    #[error("reading this cluster's remote certificate: {0}")]
    Certs(String),
    #[error("peer {peer:?} has no address")]
    NoAddress { peer: String },
    #[error("dialing peer {peer:?}: {detail}")]
    Dial { peer: String, detail: String },
    #[error("GetCluster on peer {peer:?} at {addr}: {detail}")]
    GetCluster {
        peer: String,
        addr: String,
        detail: String,
    },
    #[error("refusing peer: {0}")]
    Refused(#[from] PeerInfoError),
    #[error("Watch on peer {peer:?} at {addr}: {detail}")]
    Watch {
        peer: String,
        addr: String,
        detail: String,
    },
    #[error("peer {peer:?} closed the watch stream")]
    Closed { peer: String },
}

/// What a session reports.
#[derive(Debug)]
pub enum SessionEvent {
    /// Validated and watching.
    Connected {
        addr: String,
        info: ClusterInfo,
    },
    Batch(WatchBatch),
    Ended(SessionError),
}

/// A running session; aborted when dropped.
pub struct Session {
    pub rx: mpsc::Receiver<SessionEvent>,
    task: JoinHandle<()>,
    /// This session's part of the peer's sync queue.
    pub queued: Arc<Queued>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One session's part of the peer's sync queue (the gauge
/// `sync_queue_size`): events received from its stream and not yet written
/// to the local store. The session adds a batch's events before handing it
/// over; the peer loop takes them off once their write is done. What was
/// never taken off (batches dropped with the session, a send cut short by
/// the abort) leaves the gauge when the last holder (the session's task, the
/// [`Session`], a batch under way in the loop) lets go.
#[derive(Debug)]
pub struct Queued {
    events: AtomicI64,
    gauge: Gauge,
}

impl Queued {
    pub fn new(gauge: Gauge) -> Queued {
        Queued {
            events: AtomicI64::new(0),
            gauge,
        }
    }
    fn add(&self, events: usize) {
        self.events.fetch_add(events as i64, Ordering::Relaxed);
        self.gauge.inc_by(events as i64);
    }
    /// `events` of this session were written (or dropped by the loop).
    pub fn done(&self, events: usize) {
        self.events.fetch_sub(events as i64, Ordering::Relaxed);
        self.gauge.dec_by(events as i64);
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.gauge.dec_by(self.events.load(Ordering::Relaxed));
    }
}

/// Everything one attempt needs.
pub struct Params {
    pub peer: PeerConfig,
    pub ours: ClusterInfo,
    pub tls_dir: PathBuf,
    pub view: Arc<View>,
    pub resume: Option<ResumePoint>,
    /// Which registered address to try first (rotates between attempts).
    pub first_address: usize,
    /// The peer's sync queue gauge (see [`Queued`]).
    pub queue: Gauge,
}

impl Session {
    pub fn start(p: Params) -> Session {
        let (tx, rx) = mpsc::channel(64);
        let queued = Arc::new(Queued::new(p.queue.clone()));
        let mine = queued.clone();
        let task = tokio::spawn(async move {
            let end = run(p, &tx, &mine).await;
            let _ = tx.send(SessionEvent::Ended(end)).await;
        });
        Session { rx, task, queued }
    }
}

/// Hints `dial::explain_chain` adds for the CLI, which mislead about a peer link.
const CLI_HINTS: [&str; 2] = [
    " (the other side does not trust the certificate's CA: use the --tls-dir of the right cluster, or `clustermesh connect` the clusters first)",
    " (nothing listens there: is the apiserver running, and is --server right?)",
];

/// Says what a transport failure means for a peer link.
fn hint(peer: &str, mut text: String) -> String {
    for h in CLI_HINTS {
        text = text.replace(h, "");
    }
    if text.contains("Connection refused") || text.contains("ConnectionRefused") {
        format!(
            "{text} [nothing listens there: is peer {peer:?}'s apiserver running, and is its registered address right?]"
        )
    } else if text.contains("invalid peer certificate") || text.contains("UnknownIssuer") {
        format!(
            "{text} [peer {peer:?}'s server certificate is not issued by the CA registered for it: register the peer again with its current ca.crt]"
        )
    } else if text.contains("UnknownCA")
        || text.contains("CertificateRequired")
        || text.contains("BadCertificate")
        || text.contains("fatal alert")
    {
        format!(
            "{text} [peer {peer:?} does not accept this cluster's remote certificate: register this cluster on the peer too, with this cluster's ca.crt]"
        )
    } else {
        text
    }
}

async fn run(p: Params, tx: &mpsc::Sender<SessionEvent>, queued: &Queued) -> SessionError {
    let name = p.peer.name.clone();
    let read = |f: &str| {
        let path = p.tls_dir.join(f);
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let (cert, key) = match (read(cert_file(Role::Remote)), read(key_file(Role::Remote))) {
        (Ok(c), Ok(k)) => (c, k),
        (Err(e), _) | (_, Err(e)) => return SessionError::Certs(e),
    };
    if p.peer.addresses.is_empty() {
        return SessionError::NoAddress { peer: name };
    }
    // Try every address once, starting with the rotating one.
    let n = p.peer.addresses.len();
    let mut channel = None;
    let mut errors = Vec::new();
    for i in 0..n {
        let addr = &p.peer.addresses[(p.first_address + i) % n];
        // The dial and the calls are boxed: their futures are kilobytes and
        // would otherwise size this task for the whole session.
        match Box::pin(dial::connect_pem(
            addr,
            std::slice::from_ref(&p.peer.ca_pem),
            &cert,
            &key,
        ))
        .await
        {
            Ok(ch) => {
                channel = Some((addr.clone(), ch));
                break;
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    let Some((addr, channel)) = channel else {
        return SessionError::Dial {
            detail: hint(&name, errors.join("; ")),
            peer: name,
        };
    };
    let mut client = ClusterMeshClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let status_text = |s: &tonic::Status| hint(&name, dial::explain(s));
    let info = match tokio::time::timeout(
        CALL_TIMEOUT,
        Box::pin(client.get_cluster(GetClusterRequest {})),
    )
    .await
    {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(s)) => {
            // A refused TLS session shows up as "connection closed" here;
            // ask the server ourselves for the exact reason.
            let mut detail = status_text(&s);
            if dial::is_transport_failure(&s)
                && let Err(why) = Box::pin(dial::probe(
                    &addr,
                    std::slice::from_ref(&p.peer.ca_pem),
                    &cert,
                    &key,
                ))
                .await
            {
                detail = hint(&name, format!("the peer refused our TLS session: {why}"));
            }
            return SessionError::GetCluster {
                detail,
                peer: name,
                addr,
            };
        }
        Err(_) => {
            return SessionError::GetCluster {
                detail: format!("no answer within {CALL_TIMEOUT:?}"),
                peer: name,
                addr,
            };
        }
    };
    // The other peers' IDs are read again at each check, not held for the
    // session: held, every session kept every registration decoded (at 250
    // peers, 30 MB; docs/benchmarks.md).
    let others = || crate::server::admin::cluster_ids(&p.view);
    if let Err(e) = validate::peer_info(&p.ours, &p.peer, &others(), &info) {
        return e.into();
    }
    // An older peer refuses a Watch naming a kind it does not know: backend
    // records are asked for only from a peer that advertises them.
    let backend_records = info
        .capabilities
        .iter()
        .any(|c| c == clustermesh_proto::backends::CAPABILITY);
    let req = WatchRequest {
        // Without --import-policies the peer's policies are not even asked for.
        kinds: if p.peer.import_policies {
            Vec::new()
        } else {
            clustermesh_proto::RECORD_KINDS
                .into_iter()
                .filter(|k| *k != clustermesh_proto::v1::Kind::Policy)
                .filter(|k| backend_records || *k != clustermesh_proto::v1::Kind::ServiceBackend)
                .map(|k| k as i32)
                .collect()
        },
        scope: Scope::Exported as i32,
        resume: p.resume,
    };
    let mut stream = match tokio::time::timeout(CALL_TIMEOUT, Box::pin(client.watch(req))).await {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(s)) => {
            return SessionError::Watch {
                detail: status_text(&s),
                peer: name,
                addr,
            };
        }
        Err(_) => {
            return SessionError::Watch {
                detail: format!("no answer within {CALL_TIMEOUT:?}"),
                peer: name,
                addr,
            };
        }
    };
    if tx
        .send(SessionEvent::Connected {
            addr: addr.clone(),
            info,
        })
        .await
        .is_err()
    {
        return SessionError::Closed { peer: name };
    }
    loop {
        match stream.message().await {
            Ok(Some(b)) => {
                // A snapshot announces who serves it: it must still be the peer.
                if let Some(info) = &b.cluster
                    && let Err(e) = validate::peer_info(&p.ours, &p.peer, &others(), info)
                {
                    return e.into();
                }
                queued.add(b.events.len());
                if tx.send(SessionEvent::Batch(b)).await.is_err() {
                    return SessionError::Closed { peer: name };
                }
            }
            Ok(None) => return SessionError::Closed { peer: name },
            Err(s) => {
                return SessionError::Watch {
                    detail: status_text(&s),
                    peer: name,
                    addr,
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_session_never_handed_over_leaves_the_queue_with_it() {
        let gauge = Gauge::default();
        let a = Arc::new(Queued::new(gauge.clone()));
        let b = Arc::new(Queued::new(gauge.clone()));
        a.add(512);
        a.add(181);
        b.add(3);
        assert_eq!(gauge.get(), 696);
        a.done(512);
        assert_eq!(gauge.get(), 184, "the written batch left the queue");
        // Session `a` ends with one batch still queued; a holder remains.
        let held = a.clone();
        drop(a);
        assert_eq!(gauge.get(), 184, "still held");
        drop(held);
        assert_eq!(gauge.get(), 3, "the dropped batch left with the session");
        b.done(3);
        drop(b);
        assert_eq!(gauge.get(), 0);
    }
}
