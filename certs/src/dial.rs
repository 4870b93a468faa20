//! Dialing an apiserver over mTLS with a role certificate, and turning
//! transport failures into messages that say what to do.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::{ALPN_H2, CA_CERT_FILE, Role, cert_file, key_file};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Debug, Error)]
pub enum DialError {
    #[error(
        "reading {path}: {source} (is --tls-dir the directory made by `clustermesh certs init`?)"
    )]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("bad server address {addr:?}: {reason}")]
    Address { addr: String, reason: String },
    #[error("TLS set-up for {addr}: {reason}")]
    Tls { addr: String, reason: String },
    #[error("cannot connect to {addr}: {detail}")]
    Connect { addr: String, detail: String },
}

/// Reads the CA and the `role` key pair from a `clustermesh certs init` directory.
pub fn load_pems(tls_dir: &Path, role: Role) -> Result<(String, String, String), DialError> {
    let read = |f: &str| {
        let p = tls_dir.join(f);
        std::fs::read_to_string(&p).map_err(|source| DialError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    Ok((
        read(CA_CERT_FILE)?,
        read(cert_file(role))?,
        read(key_file(role))?,
    ))
}

/// Connects to `addr` (host:port) presenting `role`'s certificate from `tls_dir`.
pub async fn connect(addr: &str, tls_dir: &Path, role: Role) -> Result<Channel, DialError> {
    let (ca, cert, key) = load_pems(tls_dir, role)?;
    connect_pem(addr, &[ca], &cert, &key).await
}

/// Connects trusting `ca_pems` for the server, presenting `cert_pem`/`key_pem`.
///
/// The TLS is ours ([`crate::client_config_from_pem`], through
/// [`MtlsConnector`]), not tonic's `ClientTlsConfig`: tonic builds a rustls
/// config per channel with rustls' default cache of 256 resumable sessions,
/// ~14 KB allocated up front, which an apiserver holding one channel per
/// peer paid 250 times (docs/benchmarks.md, "Per-peer connection memory").
pub async fn connect_pem(
    addr: &str,
    ca_pems: &[String],
    cert_pem: &str,
    key_pem: &str,
) -> Result<Channel, DialError> {
    let config =
        crate::client_config_from_pem(ca_pems, cert_pem, key_pem).map_err(|e| DialError::Tls {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?;
    let name = server_name(addr).map_err(|reason| DialError::Address {
        addr: addr.to_owned(),
        reason,
    })?;
    // The scheme only tells tonic how to speak on the connection it gets:
    // the connector has done TLS already.
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| DialError::Address {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?
        // Bounds the whole connector call: TCP connect and TLS handshake.
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    let connector = MtlsConnector {
        addr: addr.into(),
        name,
        config,
    };
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| DialError::Connect {
            addr: addr.to_owned(),
            detail: explain_chain(&error_chain(&e)),
        })
}

/// The TLS server name of `addr` (`host:port`, an IPv6 host in brackets):
/// what the server's certificate must name.
fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = addr
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(addr);
    ServerName::try_from(host.to_owned()).map_err(|e| format!("bad server name {host:?}: {e}"))
}

/// TCP connect to `addr` and the TLS handshake (the client certificate is
/// judged by the server only after this returns, with TLS 1.3).
async fn tls_connect(
    addr: &str,
    name: ServerName<'static>,
    config: Arc<ClientConfig>,
) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// Dials one address with one rustls config, every time the channel
/// (re)connects; the URI tonic passes is the same address.
#[derive(Clone)]
struct MtlsConnector {
    addr: Arc<str>,
    name: ServerName<'static>,
    config: Arc<ClientConfig>,
}

impl tower_service::Service<Uri> for MtlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let (addr, name, config) = (self.addr.clone(), self.name.clone(), self.config.clone());
        Box::pin(async move {
            let tls = tls_connect(&addr, name, config).await?;
            if tls.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
                return Err(io::Error::other(format!(
                    "{addr} did not agree to HTTP/2 (ALPN h2): not a clustermesh apiserver?"
                )));
            }
            Ok(TokioIo::new(tls))
        })
    }
}

/// The whole `source()` chain of an error, joined.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// Adds a hint to a TLS or transport failure text.
pub fn explain_chain(chain: &str) -> String {
    let hint = if chain.contains("CertificateRequired") {
        "the server requires a client certificate"
    } else if chain.contains("UnknownCA") || chain.contains("UnknownIssuer") {
        "the other side does not trust the certificate's CA: use the --tls-dir of the right cluster, or `clustermesh connect` the clusters first"
    } else if chain.contains("CertificateExpired") || chain.contains("Expired") {
        "a certificate has expired: reissue it with `clustermesh certs init --force`"
    } else if chain.contains("BadCertificate") || chain.contains("invalid peer certificate") {
        "the certificate was rejected"
    } else if chain.contains("Connection refused") || chain.contains("ConnectionRefused") {
        "nothing listens there: is the apiserver running, and is --server right?"
    } else if chain.contains("NotValidForName") {
        "the server certificate does not name this address: reissue it with --san"
    } else {
        ""
    };
    if hint.is_empty() {
        chain.to_owned()
    } else {
        format!("{chain} ({hint})")
    }
}

/// A gRPC status as a one-line message with a hint.
pub fn explain(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Some(src) = std::error::Error::source(status) {
        text = format!("{text}: {}", error_chain(src));
    }
    explain_chain(&text)
}

/// Why a server refuses us, found by doing the TLS handshake ourselves and
/// reading its first answer. Used after a call failed at the transport: with
/// TLS 1.3 the server judges the client certificate after the client
/// considers the handshake done, and the HTTP/2 client may report only
/// "connection closed" for the request while the alert went to its connection
/// task. `Ok(())` means the server accepted the handshake.
pub async fn probe(
    addr: &str,
    ca_pems: &[String],
    cert_pem: &str,
    key_pem: &str,
) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cfg =
        crate::client_config_from_pem(ca_pems, cert_pem, key_pem).map_err(|e| e.to_string())?;
    let name = server_name(addr)?;
    let work = async {
        let mut tls = tls_connect(addr, name, cfg)
            .await
            .map_err(|e| explain_chain(&error_chain(&e)))?;
        // The HTTP/2 preface and an empty SETTINGS frame, as a real client sends.
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .map_err(|e| explain_chain(&error_chain(&e)))?;
        let mut buf = [0u8; 64];
        match tls.read(&mut buf).await {
            Ok(0) => Err("the server closed the connection without a reason".to_owned()),
            Ok(_) => Ok(()),
            Err(e) => Err(explain_chain(&error_chain(&e))),
        }
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .unwrap_or_else(|_| Err("no answer from the server within 5 s".to_owned()))
}

/// [`probe`] with the `role` certificate of a `certs init` directory.
pub async fn probe_dir(addr: &str, tls_dir: &Path, role: Role) -> Result<(), String> {
    let (ca, cert, key) = load_pems(tls_dir, role).map_err(|e| e.to_string())?;
    probe(addr, &[ca], &cert, &key).await
}

/// True for gRPC failures that happened at the transport (where [`probe`] can tell more).
pub fn is_transport_failure(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    ) && (status.message().contains("transport")
        || status.message().contains("canceled")
        || status.message().contains("connection"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_name_is_the_host_of_the_address() {
        let name = |a: &str| server_name(a).map(|n| n.to_str().into_owned());
        assert_eq!(name("127.0.0.1:7443").as_deref(), Ok("127.0.0.1"));
        assert_eq!(name("[::1]:7443").as_deref(), Ok("::1"));
        assert_eq!(
            name("apiserver.east.example:443").as_deref(),
            Ok("apiserver.east.example")
        );
        assert!(name("not a host:1").is_err());
    }
}
