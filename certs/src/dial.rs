//! Dialing an apiserver over mTLS with a role certificate, and turning
//! transport failures into messages that say what to do.

use std::path::Path;
use std::time::Duration;

use crate::{CA_CERT_FILE, Role, cert_file, key_file};
use thiserror::Error;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

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
pub async fn connect_pem(
    addr: &str,
    ca_pems: &[String],
    cert_pem: &str,
    key_pem: &str,
) -> Result<Channel, DialError> {
    let tls = ClientTlsConfig::new()
        .ca_certificates(ca_pems.iter().map(Certificate::from_pem))
        .identity(Identity::from_pem(cert_pem, key_pem))
        .timeout(Duration::from_secs(5));
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| DialError::Address {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?
        .tls_config(tls)
        .map_err(|e| DialError::Address {
            addr: addr.to_owned(),
            reason: error_chain(&e),
        })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    endpoint.connect().await.map_err(|e| DialError::Connect {
        addr: addr.to_owned(),
        detail: explain_chain(&error_chain(&e)),
    })
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
    let host = addr
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(addr);
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("bad server name {host:?}: {e}"))?;
    let work = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| explain_chain(&e.to_string()))?;
        let mut tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
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
