//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

use clustermesh_proto::ValidationError;
use time::OffsetDateTime;

/// Everything that can go wrong while making, loading or using certificates.
///
/// `origin` fields name where the data came from: a file path, or a label such
/// as `extra CA PEM #2` for data handed over in memory.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("invalid cluster name: {0}")]
    InvalidCluster(#[from] ValidationError),

    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },

    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },

    #[error(
        "{} already exists; refusing to replace the cluster CA (use force/--force to replace it, \
         which invalidates every certificate the old CA issued)",
        path.display()
    )]
    CaExists { path: PathBuf },

    #[error("{origin}: invalid PEM: {reason}")]
    Pem { origin: String, reason: String },

    #[error("{origin}: no PEM certificate (BEGIN CERTIFICATE) found")]
    NoCertificate { origin: String },

    #[error("{origin}: no PEM private key found")]
    NoPrivateKey { origin: String },

    #[error("{origin}: cannot parse certificate: {reason}")]
    Parse { origin: String, reason: String },

    #[error("{origin}: cannot use private key: {reason}")]
    BadKey { origin: String, reason: String },

    #[error("{origin}: not a usable clustermesh CA: {reason}")]
    NotACa { origin: String, reason: String },

    #[error(
        "certificate (subject {subject:?}) carries no clustermesh identity: expected a URI SAN \
         clustermesh://<cluster>/<role>"
    )]
    NoIdentity { subject: String },

    #[error("certificate identity URI {uri:?} is invalid: {reason}")]
    BadIdentity { uri: String, reason: String },

    #[error("invalid subject alternative name {san:?}: expected an IP address or a DNS name")]
    BadSan { san: String },

    #[error(
        "invalid validity: not_after ({not_after}) must be later than not_before ({not_before})"
    )]
    BadValidity {
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    },

    #[error("generating {what}: {source}")]
    Generate { what: String, source: rcgen::Error },

    #[error("building TLS configuration ({origin}): {source}")]
    Tls {
        origin: String,
        source: rustls::Error,
    },

    #[error("building the client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}
