//! Plain HTTP on `--health-listen`:
//! - `/healthz`: 200 once the first snapshot is programmed and the last
//!   reconciliation succeeded, 503 (with the reason) otherwise;
//! - `/status`: JSON (watch, view, datapath, counters);
//! - `/metrics`: Prometheus text, with the datapath's per-reason counters
//!   read live from the pinned `cm_metrics` map.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use super::status::Status;
use crate::datapath::{Datapath, Metrics};

/// What the handlers read.
#[derive(Clone)]
pub struct HealthState {
    pub status: Arc<Mutex<Status>>,
    /// The pinned maps (for live counters).
    pub datapath: Arc<Mutex<Datapath>>,
}

fn reply(code: StatusCode, ctype: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn metrics(state: &HealthState) -> Option<Metrics> {
    let dp = state.datapath.lock().ok()?;
    match dp.metrics() {
        Ok(m) => Some(m),
        Err(e) => {
            warn!(error = %e, "cannot read datapath counters");
            None
        }
    }
}

fn route(state: &HealthState, path: &str) -> Response<Full<Bytes>> {
    let Ok(st) = state.status.lock().map(|s| s.clone()) else {
        return reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            "status lock poisoned\n".into(),
        );
    };
    match path {
        "/healthz" | "/readyz" => {
            if st.healthy() {
                reply(StatusCode::OK, "text/plain", "ok\n".into())
            } else {
                let why = st
                    .datapath
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "the first snapshot has not been programmed yet".into());
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: {why}\n"),
                )
            }
        }
        "/status" => {
            let m = metrics(state);
            reply(
                StatusCode::OK,
                "application/json",
                format!("{}\n", st.to_json(m.as_ref())),
            )
        }
        "/metrics" => {
            let m = metrics(state);
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                st.to_prometheus(m.as_ref()),
            )
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, state: HealthState) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "health accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let resp = route(&state, req.uri().path());
                async move { Ok::<_, Infallible>(resp) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await
            {
                debug!(%peer, error = %e, "health connection ended");
            }
        });
    }
}
