//! The TLS accept loop: every accepted TCP connection is handshaken with the
//! current rustls config (mandatory client certificate) in its own task;
//! refusals are logged with the peer address and the reason.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, warn};

/// The server config in force; replace it to trust new peer CAs.
pub type SharedConfig = Arc<RwLock<Arc<rustls::ServerConfig>>>;

/// This cluster's CA (PEM) as auth checks it; replaced when `ca.crt` changes.
pub type SharedCa = Arc<RwLock<Arc<str>>>;

/// The current value of a [`SharedCa`].
pub fn current_ca(ca: &SharedCa) -> Arc<str> {
    ca.read()
        .map(|g| g.clone())
        .unwrap_or_else(|p| p.into_inner().clone())
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// After a refused handshake the alert has been written; with TLS 1.3 the
/// client may already be sending. Closing now would turn its unread bytes
/// into a RST that destroys the alert, and the client would see only "broken
/// pipe". Draining for a moment lets it read why it was refused.
async fn linger(mut tcp: TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = tcp.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

const LINGER: Duration = Duration::from_millis(500);

/// A stream of established TLS connections for `serve_with_incoming`.
pub fn incoming(
    listener: TcpListener,
    config: SharedConfig,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let cfg = config
                .read()
                .map(|c| c.clone())
                .unwrap_or_else(|p| p.into_inner().clone());
            let conn_tx = tx.clone();
            tokio::spawn(async move {
                let acceptor = TlsAcceptor::from(cfg);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp).into_fallible())
                    .await
                {
                    Ok(Ok(tls)) => {
                        debug!(peer = %addr, "TLS connection established");
                        let _ = conn_tx.send(Ok(tls)).await;
                    }
                    Ok(Err((e, tcp))) => {
                        warn!(peer = %addr, error = %e, "TLS handshake refused");
                        linger(tcp).await;
                    }
                    Err(_) => warn!(peer = %addr, "TLS handshake timed out"),
                }
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}
