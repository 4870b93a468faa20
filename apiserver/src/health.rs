//! Plain HTTP health endpoints: `/healthz` (the process serves) and
//! `/readyz` (the store is loaded and the feed is healthy), plus `/status`
//! (JSON summary, for humans and scripts on the node) and `/metrics`
//! (Prometheus, OpenMetrics text; see [`crate::metrics`] and docs/metrics.md).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use clustermesh_proto::v1::Kind;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::warn;

use crate::metrics::Format;
use crate::server::ApiServer;

fn reply(code: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r
}

fn route(api: &ApiServer, path: &str, accept: Option<&str>) -> Response<Full<Bytes>> {
    match path {
        "/healthz" => reply(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            let st = api.status();
            if st.ready {
                reply(StatusCode::OK, "ready\n".into())
            } else {
                let why = api
                    .view
                    .feed_error()
                    .unwrap_or_else(|| "store not loaded yet".into());
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {why}\n"),
                )
            }
        }
        "/status" => {
            let st = api.status();
            let counts: Vec<_> = st
                .counts
                .iter()
                .map(
                    |c| serde_json::json!({"cluster": c.cluster, "kind": c.kind, "count": c.count}),
                )
                .collect();
            let peers: Vec<_> = st
                .peers
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "name": p.name, "enabled": p.enabled, "connected": p.connected,
                        "ready": crate::metrics::peer_ready(p), "synced_kinds": p.synced.len(),
                        "failures": p.failures, "rejected_records": p.rejected_records,
                        "sync_mismatch": p.sync_mismatch.iter()
                            .filter_map(|m| Kind::try_from(m.kind).ok().map(|k| k.segment()))
                            .collect::<Vec<_>>(),
                        "withdrawn": p.withdrawn, "last_error": p.last_error,
                    })
                })
                .collect();
            let body = serde_json::json!({
                "cluster": api.cluster.name, "cluster_id": api.cluster.id, "replica": st.replica,
                "epoch": st.epoch, "revision": st.revision, "ready": st.ready, "leader": st.leader,
                "watchers": st.watchers, "counts": counts, "peers": peers,
            });
            reply(StatusCode::OK, format!("{body}\n"))
        }
        "/metrics" => {
            let format = Format::negotiate(accept);
            match api.metrics.encode(format) {
                Ok(text) => {
                    let mut r = reply(StatusCode::OK, text);
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(format.content_type()),
                    );
                    r
                }
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("encoding metrics: {e}\n"),
                ),
            }
        }
        _ => reply(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, api: ApiServer) {
    loop {
        let (tcp, peer): (_, SocketAddr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "health accept failed");
                continue;
            }
        };
        let api = api.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let accept = req
                    .headers()
                    .get(hyper::header::ACCEPT)
                    .and_then(|v| v.to_str().ok());
                let resp = route(&api, req.uri().path(), accept);
                async move { Ok::<_, Infallible>(resp) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "health connection ended");
            }
        });
    }
}
