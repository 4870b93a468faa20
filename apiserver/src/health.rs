//! Plain HTTP health endpoints: `/healthz` (the process serves) and
//! `/readyz` (the store is loaded and the feed is healthy), plus `/status`
//! (JSON summary, for humans and scripts on the node).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::warn;

use crate::server::ApiServer;

fn reply(code: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r
}

fn route(api: &ApiServer, path: &str) -> Response<Full<Bytes>> {
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
            let body = serde_json::json!({
                "cluster": api.cluster.name, "cluster_id": api.cluster.id, "replica": st.replica,
                "epoch": st.epoch, "revision": st.revision, "ready": st.ready, "leader": st.leader,
                "watchers": st.watchers, "counts": counts,
            });
            reply(StatusCode::OK, format!("{body}\n"))
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
                let resp = route(&api, req.uri().path());
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
