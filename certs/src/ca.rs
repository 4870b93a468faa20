//! A cluster's certificate authority: generating, loading and issuing role certificates.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, DnsName};
use time::{Duration, OffsetDateTime, PrimitiveDateTime};

use crate::error::CertError;
use crate::identity::{
    ORGANIZATION, ca_common_name, common_name, first_cert_der, identity_uri, parse_der,
};
use crate::role::{CA_CERT_FILE, CA_KEY_FILE, Role};

/// How long a freshly generated CA is valid.
pub const CA_VALIDITY_DAYS: i64 = 3650;

/// The validity window of a certificate.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From one hour ago (tolerates clock skew) to `n` days from now.
    /// Absurd `n` saturate at the calendar's limits instead of panicking.
    pub fn days(n: i64) -> Validity {
        let now = OffsetDateTime::now_utc();
        let n = n.clamp(-3_000_000, 3_000_000);
        let not_after = now.checked_add(Duration::days(n)).unwrap_or(if n > 0 {
            PrimitiveDateTime::MAX.assume_utc()
        } else {
            PrimitiveDateTime::MIN.assume_utc()
        });
        Validity {
            not_before: now - Duration::hours(1),
            not_after,
        }
    }

    fn check(self) -> Result<(), CertError> {
        if self.not_after <= self.not_before {
            return Err(CertError::BadValidity {
                not_before: self.not_before,
                not_after: self.not_after,
            });
        }
        Ok(())
    }
}

/// A freshly issued leaf certificate and its private key, both PEM.
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[redacted]")
            .finish()
    }
}

/// A cluster's CA: its certificate and signing key.
pub struct Ca {
    cluster: String,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("cluster", &self.cluster)
            .field("cert_pem", &self.cert_pem)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// The parameters of `cluster`'s CA certificate. Deterministic apart from the
/// validity, so that a loaded CA re-encodes exactly the same subject name.
fn ca_params(cluster: &str, validity: Validity) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, ca_common_name(cluster));
    dn.push(DnType::OrganizationName, ORGANIZATION);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params
}

impl Ca {
    /// Generates a new CA for `cluster`, valid for ten years.
    pub fn generate(cluster: &str) -> Result<Ca, CertError> {
        clustermesh_proto::validate::cluster_name(cluster)?;
        let key = KeyPair::generate().map_err(|source| CertError::Generate {
            what: format!("CA key for cluster {cluster}"),
            source,
        })?;
        let params = ca_params(cluster, Validity::days(CA_VALIDITY_DAYS));
        let cert = params
            .self_signed(&key)
            .map_err(|source| CertError::Generate {
                what: format!("CA certificate for cluster {cluster}"),
                source,
            })?;
        tracing::info!(cluster, "generated cluster CA");
        Ok(Ca {
            cluster: cluster.to_owned(),
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads `dir/ca.crt` and `dir/ca.key`, checking that they belong together
    /// and form a clustermesh CA; the cluster name comes from the CA's CN.
    pub fn load(dir: &Path) -> Result<Ca, CertError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_origin = cert_path.display().to_string();
        let key_origin = key_path.display().to_string();
        let cert_bytes = std::fs::read(&cert_path).map_err(|source| CertError::Read {
            path: cert_path.clone(),
            source,
        })?;
        let key_text = std::fs::read_to_string(&key_path).map_err(|source| CertError::Read {
            path: key_path.clone(),
            source,
        })?;

        let cert_der = first_cert_der(&cert_bytes, &cert_origin)?;
        let cert = parse_der(cert_der.as_ref(), &cert_origin)?;
        let not_a_ca = |reason: String| CertError::NotACa {
            origin: cert_origin.clone(),
            reason,
        };
        if !cert.is_ca() {
            return Err(not_a_ca("basic constraints do not mark it as a CA".into()));
        }
        let cn = common_name(cert.subject())
            .ok_or_else(|| not_a_ca("the subject has no common name".into()))?;
        let cluster = cn
            .strip_prefix(&ca_common_name(""))
            .ok_or_else(|| {
                not_a_ca(format!(
                    "CN {cn:?} is not \"{}\"",
                    ca_common_name("<cluster>")
                ))
            })?
            .to_owned();
        clustermesh_proto::validate::cluster_name(&cluster)
            .map_err(|e| not_a_ca(format!("CN {cn:?}: {e}")))?;

        let key = KeyPair::from_pem(&key_text).map_err(|e| CertError::BadKey {
            origin: key_origin.clone(),
            reason: e.to_string(),
        })?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CertError::BadKey {
                origin: key_origin,
                reason: format!("it is not the private key of {cert_origin}"),
            });
        }

        // Leaves name their issuer by re-encoding the CA's subject; make sure that
        // encoding matches the certificate byte for byte, or no chain would build.
        let params = ca_params(&cluster, Validity::days(1));
        let probe = params
            .self_signed(&key)
            .map_err(|source| CertError::Generate {
                what: format!("probe certificate for {cert_origin}"),
                source,
            })?;
        let probe = parse_der(probe.der().as_ref(), "probe certificate")?;
        if probe.subject().as_raw() != cert.subject().as_raw() {
            return Err(not_a_ca(format!(
                "subject {} is not exactly CN={},O={ORGANIZATION}",
                cert.subject(),
                ca_common_name(&cluster)
            )));
        }
        if cert.validity().not_after.timestamp() < OffsetDateTime::now_utc().unix_timestamp() {
            tracing::warn!(path = %cert_origin, "the cluster CA has expired; certificates it issues will be rejected");
        }
        tracing::debug!(path = %cert_origin, cluster, "loaded cluster CA");

        let cert_pem = String::from_utf8(cert_bytes).map_err(|_| CertError::Pem {
            origin: cert_origin.clone(),
            reason: "not UTF-8 text".into(),
        })?;
        Ok(Ca {
            cluster,
            cert_pem,
            cert_der,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        self.cert_der.as_ref()
    }

    /// The CA private key, PEM (PKCS#8). Never send this anywhere.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The cluster this CA belongs to.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Issues a leaf for `role` of this CA's cluster.
    ///
    /// Every leaf carries the URI SAN `clustermesh://<cluster>/<role>`. For the
    /// server role `sans` add DNS names and IP addresses (IPs become IP SANs);
    /// other roles ignore them. EKU: server gets ServerAuth and ClientAuth, the
    /// other roles ClientAuth.
    pub fn issue(
        &self,
        role: Role,
        sans: &[String],
        validity: Validity,
    ) -> Result<IssuedCert, CertError> {
        validity.check()?;
        let uri = identity_uri(&self.cluster, role);
        let mut alt_names = vec![SanType::URI(
            uri.clone()
                .try_into()
                .map_err(|_| CertError::BadSan { san: uri.clone() })?,
        )];
        if role == Role::Server {
            for san in sans {
                let parsed = parse_san(san)?;
                if !alt_names.contains(&parsed) {
                    alt_names.push(parsed);
                }
            }
        } else if !sans.is_empty() {
            tracing::warn!(
                role = role.as_str(),
                ?sans,
                "ignoring SANs: only the server certificate carries addresses"
            );
        }

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("clustermesh {} {}", role.as_str(), self.cluster),
        );
        dn.push(DnType::OrganizationName, ORGANIZATION);
        params.distinguished_name = dn;
        params.subject_alt_names = alt_names;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match role {
            Role::Server => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            _ => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;

        let what = || format!("{} certificate for cluster {}", role.as_str(), self.cluster);
        let key = KeyPair::generate().map_err(|source| CertError::Generate {
            what: what(),
            source,
        })?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| CertError::Generate {
                what: what(),
                source,
            })?;
        tracing::debug!(cluster = %self.cluster, role = role.as_str(), not_after = %validity.not_after, "issued certificate");
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// An IP address becomes an IP SAN, anything else must be a valid DNS name.
fn parse_san(san: &str) -> Result<SanType, CertError> {
    let bad = || CertError::BadSan {
        san: san.to_owned(),
    };
    if let Ok(ip) = san.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    DnsName::try_from(san).map_err(|_| bad())?;
    Ok(SanType::DnsName(san.try_into().map_err(|_| bad())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Ca>();
    }

    #[test]
    fn sans_are_checked() {
        assert!(matches!(parse_san("10.0.0.1"), Ok(SanType::IpAddress(_))));
        assert!(matches!(parse_san("::1"), Ok(SanType::IpAddress(_))));
        assert!(matches!(
            parse_san("api.example.com"),
            Ok(SanType::DnsName(_))
        ));
        for bad in ["", "has space", "a..b", "-"] {
            assert!(
                matches!(parse_san(bad), Err(CertError::BadSan { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn generate_validates_cluster_name() {
        assert!(matches!(
            Ca::generate("Bad_Name"),
            Err(CertError::InvalidCluster(_))
        ));
        assert!(matches!(
            Ca::generate("default"),
            Err(CertError::InvalidCluster(_))
        ));
    }

    #[test]
    fn backwards_validity_is_rejected() {
        let ca = Ca::generate("c1").expect("ca");
        let err = ca.issue(Role::Agent, &[], Validity::days(-1)).unwrap_err();
        assert!(matches!(err, CertError::BadValidity { .. }), "{err}");
    }

    #[test]
    fn huge_validity_saturates() {
        let v = Validity::days(i64::MAX);
        assert!(v.not_after > v.not_before);
        let v = Validity::days(i64::MIN);
        assert!(v.not_after < v.not_before);
    }
}
