//! rustls configurations for the apiserver and its clients, always on the ring provider.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::error::CertError;
use crate::role::{CA_CERT_FILE, Role, cert_file, key_file};

/// The only application protocol spoken: gRPC over HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in PEM data; at least one.
fn certs_from_pem(pem: &[u8], origin: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem {
            origin: origin.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate {
            origin: origin.to_owned(),
        });
    }
    Ok(certs)
}

fn key_from_pem(pem: &[u8], origin: &str) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => CertError::NoPrivateKey {
            origin: origin.to_owned(),
        },
        e => CertError::Pem {
            origin: origin.to_owned(),
            reason: e.to_string(),
        },
    })
}

/// A trust store from (PEM data, origin) pairs; each must hold a usable CA.
fn roots<'a>(
    pems: impl IntoIterator<Item = (&'a [u8], String)>,
) -> Result<Arc<RootCertStore>, CertError> {
    let mut store = RootCertStore::empty();
    for (pem, origin) in pems {
        for cert in certs_from_pem(pem, &origin)? {
            store.add(cert).map_err(|e| CertError::NotACa {
                origin: origin.clone(),
                reason: e.to_string(),
            })?;
        }
    }
    Ok(Arc::new(store))
}

fn extra_origin(kind: &str, i: usize) -> String {
    format!("{kind} PEM #{}", i + 1)
}

fn tls_err(origin: &str) -> impl FnOnce(rustls::Error) -> CertError + '_ {
    move |source| CertError::Tls {
        origin: origin.to_owned(),
        source,
    }
}

/// rustls ServerConfig for the apiserver.
///
/// Presents `tls_dir/server.crt` + `server.key` and REQUIRES a client
/// certificate chaining to `tls_dir/ca.crt` or to one of `extra_client_cas`
/// (peer clusters' CAs, trusted for their `remote` role — restricting a peer
/// CA to that role is the caller's job, see [`crate::issued_by`]). ALPN h2.
pub fn server_config(
    tls_dir: &Path,
    extra_client_cas: &[String],
) -> Result<Arc<ServerConfig>, CertError> {
    let ca_path = tls_dir.join(CA_CERT_FILE);
    let cert_path = tls_dir.join(cert_file(Role::Server));
    let key_path = tls_dir.join(key_file(Role::Server));
    let ca_pem = read(&ca_path)?;
    let cert_pem = read(&cert_path)?;
    let key_pem = read(&key_path)?;

    let mut sources = vec![(ca_pem.as_slice(), ca_path.display().to_string())];
    sources.extend(
        extra_client_cas
            .iter()
            .enumerate()
            .map(|(i, pem)| (pem.as_bytes(), extra_origin("extra client CA", i))),
    );
    let roots = roots(sources)?;

    let cert_origin = cert_path.display().to_string();
    let chain = certs_from_pem(&cert_pem, &cert_origin)?;
    let key = key_from_pem(&key_pem, &key_path.display().to_string())?;

    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone()).build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_err(&cert_origin))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(tls_err(&cert_origin))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    tracing::debug!(dir = %tls_dir.display(), extra_client_cas = extra_client_cas.len(), "built server TLS config");
    Ok(Arc::new(config))
}

/// rustls ClientConfig presenting `tls_dir/<role>.crt` + `.key`, trusting
/// `tls_dir/ca.crt` plus `extra_server_cas` for the server. ALPN h2.
pub fn client_config(
    tls_dir: &Path,
    role: Role,
    extra_server_cas: &[String],
) -> Result<Arc<ClientConfig>, CertError> {
    let ca_path = tls_dir.join(CA_CERT_FILE);
    let cert_path = tls_dir.join(cert_file(role));
    let key_path = tls_dir.join(key_file(role));
    let ca_pem = read(&ca_path)?;
    let cert_pem = read(&cert_path)?;
    let key_pem = read(&key_path)?;

    let mut sources = vec![(ca_pem.as_slice(), ca_path.display().to_string())];
    sources.extend(
        extra_server_cas
            .iter()
            .enumerate()
            .map(|(i, pem)| (pem.as_bytes(), extra_origin("extra server CA", i))),
    );
    build_client(
        roots(sources)?,
        &cert_pem,
        &cert_path.display().to_string(),
        &key_pem,
        &key_path.display().to_string(),
    )
}

/// Like [`client_config`], from PEM strings in memory (dialing a peer with the
/// peer's CA and our own `remote` certificate).
pub fn client_config_from_pem(
    trusted_ca_pems: &[String],
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<ClientConfig>, CertError> {
    if trusted_ca_pems.is_empty() {
        return Err(CertError::NoCertificate {
            origin: "trusted CA list (empty)".to_owned(),
        });
    }
    let roots = roots(
        trusted_ca_pems
            .iter()
            .enumerate()
            .map(|(i, pem)| (pem.as_bytes(), extra_origin("trusted CA", i))),
    )?;
    build_client(
        roots,
        cert_pem.as_bytes(),
        "client certificate PEM",
        key_pem.as_bytes(),
        "client key PEM",
    )
}

fn build_client(
    roots: Arc<RootCertStore>,
    cert_pem: &[u8],
    cert_origin: &str,
    key_pem: &[u8],
    key_origin: &str,
) -> Result<Arc<ClientConfig>, CertError> {
    let chain = certs_from_pem(cert_pem, cert_origin)?;
    let key = key_from_pem(key_pem, key_origin)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err(cert_origin))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(tls_err(cert_origin))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // One client config dials one server (a peer, or this cluster's
    // apiserver): a few resumable sessions are enough. rustls' default
    // cache of 256 is allocated up front, ~14 KB per config: 3.4 MB for an
    // apiserver with 250 peers (docs/benchmarks.md, heap profile).
    config.resumption = rustls::client::Resumption::in_memory_sessions(RESUMABLE_SESSIONS);
    Ok(Arc::new(config))
}

/// TLS sessions a client config keeps for resumption.
const RESUMABLE_SESSIONS: usize = 8;

/// Whether `cert_der` is currently valid and was signed by the CA in `ca_pem`
/// (full webpki path validation against that single CA, as a client
/// certificate). Use it to tell which trusted CA actually issued a peer's
/// certificate: a CA's CN is just a name anyone can copy.
pub fn issued_by(cert_der: &[u8], ca_pem: &str) -> Result<bool, CertError> {
    let roots = roots([(ca_pem.as_bytes(), "CA PEM".to_owned())])?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider()).build()?;
    let end_entity = CertificateDer::from(cert_der);
    Ok(verifier
        .verify_client_cert(&end_entity, &[], UnixTime::now())
        .is_ok())
}
