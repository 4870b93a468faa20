//! Plain-HTTP GET for probing health ports (the apiserver's `/readyz`,
//! etcd's `/health`), on hyper's HTTP/1 client.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::process::tail;

/// Overall time limit of one [`http_get`].
pub const HTTP_GET_TIMEOUT: Duration = Duration::from_secs(10);

/// GET `http://{addr}{path}`; returns the status code and the body as lossy
/// UTF-8. Times out after [`HTTP_GET_TIMEOUT`].
pub async fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    tokio::time::timeout(HTTP_GET_TIMEOUT, get(addr, path))
        .await
        .with_context(|| format!("GET http://{addr}{path} timed out after {HTTP_GET_TIMEOUT:?}"))?
        .with_context(|| format!("GET http://{addr}{path}"))
}

async fn get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .context("connecting")?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake")?;
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, addr)
        .body(Empty::<Bytes>::new())
        .context("building the request")?;
    let result = async {
        let resp = sender.send_request(req).await.context("sending request")?;
        let code = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .context("reading the body")?
            .to_bytes();
        anyhow::Ok((code, String::from_utf8_lossy(&body).into_owned()))
    }
    .await;
    conn.abort();
    result
}

/// Polls `GET http://{addr}{path}` until it answers 200 or `timeout` elapses; the error carries
/// the last status (and body) or the last connection error.
pub async fn wait_http_ok(addr: &str, path: &str, timeout: Duration) -> anyhow::Result<()> {
    wait_http(addr, path, timeout, |_| true).await
}

/// Like [`wait_http_ok`], and the body must also satisfy `accept`.
pub async fn wait_http(
    addr: &str,
    path: &str,
    timeout: Duration,
    accept: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let per_try = remaining.min(Duration::from_secs(2));
        let last = match tokio::time::timeout(per_try, get(addr, path)).await {
            Ok(Ok((200, body))) if accept(&body) => return Ok(()),
            Ok(Ok((code, body))) => format!("status {code}, body {:?}", tail(&body, 5)),
            Ok(Err(e)) => format!("error: {e:#}"),
            Err(_) => format!("attempt timed out after {per_try:?}"),
        };
        if Instant::now() >= deadline {
            bail!("GET http://{addr}{path} did not return 200 within {timeout:?}; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn plain_chunked_and_waiting() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let mut n = 0;
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 1024];
                let _ = s.read(&mut buf).await;
                n += 1;
                let resp: &[u8] = match n {
                    1 => b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 8\r\n\r\nnotready",
                    2 => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
                    3 => b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
                    _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                };
                let _ = s.write_all(resp).await;
            }
        });
        let (code, body) = http_get(&addr, "/healthz").await.unwrap();
        assert_eq!((code, body.as_str()), (503, "notready"));
        let (code, body) = http_get(&addr, "healthz").await.unwrap();
        assert_eq!((code, body.as_str()), (200, "abcde"));
        wait_http(&addr, "/healthz", Duration::from_secs(5), |b| b == "ok")
            .await
            .unwrap();
        server.abort();

        let port = crate::ports::free_port();
        let err = wait_http_ok(
            &format!("127.0.0.1:{port}"),
            "/x",
            Duration::from_millis(200),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("did not return 200"), "{err}");
    }
}
