//! Reading who a certificate says it is.
//!
//! Every leaf issued by [`crate::Ca::issue`] carries exactly one URI SAN
//! `clustermesh://<cluster>/<role>`; that URI, not the subject, is the identity.

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::CertError;
use crate::role::Role;

/// The scheme of identity URIs.
pub const IDENTITY_SCHEME: &str = "clustermesh://";

/// The organization (O) of every certificate subject this crate writes.
pub const ORGANIZATION: &str = "clustermesh";

/// Who a certificate says it is: read from a URI SAN `clustermesh://<cluster>/<role>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    pub cluster: String,
    pub role: Role,
    /// CN of the issuing CA (see [`ca_common_name`]). Informational: the name
    /// alone proves nothing, use [`crate::issued_by`] to check a signature.
    pub issuer_cn: String,
    /// End of validity, seconds since the Unix epoch.
    pub not_after_unix: i64,
}

/// The CN of `cluster`'s CA: `clustermesh CA <cluster>`.
pub fn ca_common_name(cluster: &str) -> String {
    format!("clustermesh CA {cluster}")
}

/// The identity URI for `role` of `cluster`.
pub fn identity_uri(cluster: &str, role: Role) -> String {
    format!("{IDENTITY_SCHEME}{cluster}/{}", role.as_str())
}

/// Reads the identity of a DER certificate.
pub fn cert_identity(cert_der: &[u8]) -> Result<CertIdentity, CertError> {
    let cert = parse_der(cert_der, "certificate")?;
    identity_of(&cert)
}

/// Reads the identity of the first certificate in a PEM string.
pub fn cert_identity_from_pem(cert_pem: &str) -> Result<CertIdentity, CertError> {
    let der = first_cert_der(cert_pem.as_bytes(), "certificate PEM")?;
    cert_identity(der.as_ref())
}

/// Parses a DER certificate, naming `origin` in errors.
pub(crate) fn parse_der<'a>(der: &'a [u8], origin: &str) -> Result<X509Certificate<'a>, CertError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok((rest, _)) => Err(CertError::Parse {
            origin: origin.to_owned(),
            reason: format!("{} trailing bytes after the certificate", rest.len()),
        }),
        Err(e) => Err(CertError::Parse {
            origin: origin.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// The first certificate in PEM data.
pub(crate) fn first_cert_der(
    pem: &[u8],
    origin: &str,
) -> Result<CertificateDer<'static>, CertError> {
    match CertificateDer::pem_slice_iter(pem).next() {
        Some(Ok(der)) => Ok(der),
        Some(Err(e)) => Err(CertError::Pem {
            origin: origin.to_owned(),
            reason: e.to_string(),
        }),
        None => Err(CertError::NoCertificate {
            origin: origin.to_owned(),
        }),
    }
}

/// The first CN of a name, if any is a readable string.
pub(crate) fn common_name(name: &x509_parser::x509::X509Name<'_>) -> Option<String> {
    name.iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

fn identity_of(cert: &X509Certificate<'_>) -> Result<CertIdentity, CertError> {
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| CertError::Parse {
            origin: "certificate".to_owned(),
            reason: format!("subject alternative names: {e}"),
        })?;
    let mut uris = sans
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with(IDENTITY_SCHEME) => Some(*uri),
            _ => None,
        });
    let Some(uri) = uris.next() else {
        return Err(CertError::NoIdentity {
            subject: cert.subject().to_string(),
        });
    };
    if let Some(other) = uris.next() {
        return Err(CertError::BadIdentity {
            uri: uri.to_owned(),
            reason: format!("the certificate carries a second identity URI {other:?}"),
        });
    }
    let (cluster, role) = parse_identity_uri(uri)?;
    let issuer_cn = common_name(cert.issuer()).unwrap_or_default();
    Ok(CertIdentity {
        cluster,
        role,
        issuer_cn,
        not_after_unix: cert.validity().not_after.timestamp(),
    })
}

fn parse_identity_uri(uri: &str) -> Result<(String, Role), CertError> {
    let bad = |reason: String| CertError::BadIdentity {
        uri: uri.to_owned(),
        reason,
    };
    let rest = uri
        .strip_prefix(IDENTITY_SCHEME)
        .ok_or_else(|| bad(format!("does not start with {IDENTITY_SCHEME}")))?;
    let (cluster, role) = rest
        .split_once('/')
        .ok_or_else(|| bad("expected clustermesh://<cluster>/<role>".to_owned()))?;
    clustermesh_proto::validate::cluster_name(cluster).map_err(|e| bad(e.to_string()))?;
    let role = Role::parse(role).ok_or_else(|| {
        bad(format!(
            "unknown role {role:?} (expected server, admin, remote or agent)"
        ))
    })?;
    Ok((cluster.to_owned(), role))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_identity_uris() {
        assert_eq!(
            parse_identity_uri("clustermesh://east-1/agent").ok(),
            Some(("east-1".to_owned(), Role::Agent))
        );
        for bad in [
            "clustermesh://east-1",
            "clustermesh://east-1/agent/x",
            "clustermesh:///agent",
            "clustermesh://East/agent",
            "clustermesh://east/root",
            "https://east/agent",
        ] {
            assert!(parse_identity_uri(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn garbage_is_a_parse_error() {
        let err = cert_identity(b"not a certificate").unwrap_err();
        assert!(matches!(err, CertError::Parse { .. }), "{err}");
        let err = cert_identity_from_pem("nothing here").unwrap_err();
        assert!(matches!(err, CertError::NoCertificate { .. }), "{err}");
    }
}
