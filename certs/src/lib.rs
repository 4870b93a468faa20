//! clustermesh PKI: each cluster's CA, the four role certificates it issues
//! (`server`, `admin`, `remote`, `agent`), reading the role back out of a
//! certificate, and the rustls configurations for mutual TLS (DESIGN.md §5).
//!
//! A certificate's identity is its URI SAN `clustermesh://<cluster>/<role>`.
//! All TLS configurations use the ring provider explicitly, never the process
//! default.

mod ca;
pub mod dial;
mod error;
mod identity;
mod init;
mod role;
mod tls;

pub use ca::{CA_VALIDITY_DAYS, Ca, IssuedCert, Validity};
pub use error::CertError;
pub use identity::{
    CertIdentity, IDENTITY_SCHEME, ORGANIZATION, ca_common_name, cert_identity,
    cert_identity_from_pem, identity_uri,
};
pub use init::{DEFAULT_SERVER_SANS, InitOptions, InitReport, LEAF_VALIDITY_DAYS, init};
pub use role::{CA_CERT_FILE, CA_KEY_FILE, Role, cert_file, key_file};
pub use tls::{ALPN_H2, client_config, client_config_from_pem, issued_by, server_config};
