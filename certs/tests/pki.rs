//! Generating, writing, loading and reading back certificates.

use std::collections::BTreeMap;
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use clustermesh_certs::{
    CA_CERT_FILE, CA_KEY_FILE, Ca, CertError, InitOptions, Role, Validity, ca_common_name,
    cert_file, cert_identity, cert_identity_from_pem, init, issued_by, key_file,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

fn opts(cluster: &str, out: &Path, sans: &[&str], force: bool) -> InitOptions {
    InitOptions {
        cluster: cluster.to_owned(),
        out: out.to_owned(),
        sans: sans.iter().map(|s| s.to_string()).collect(),
        force,
    }
}

fn all_names() -> Vec<&'static str> {
    let mut names = vec![CA_CERT_FILE, CA_KEY_FILE];
    for role in Role::ALL {
        names.push(cert_file(role));
        names.push(key_file(role));
    }
    names
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            let path = e.expect("entry").path();
            let bytes = fs::read(&path).expect("read file");
            (path, bytes)
        })
        .collect()
}

fn der_of(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).expect("pem cert")
}

#[test]
fn init_writes_every_file_with_safe_modes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("tls");
    let report = init(&opts("east", &out, &[], false)).expect("init");

    let expected: Vec<PathBuf> = all_names().iter().map(|n| out.join(n)).collect();
    assert_eq!(report.files, expected);
    for path in &expected {
        let mode = fs::metadata(path).expect("metadata").permissions().mode() & 0o777;
        if path.extension().is_some_and(|e| e == "key") {
            assert_eq!(mode, 0o600, "{}", path.display());
        } else {
            assert_eq!(
                mode & 0o022,
                0,
                "{} is group/world writable",
                path.display()
            );
        }
    }
    assert_eq!(
        fs::metadata(&out).expect("dir").permissions().mode() & 0o777,
        0o700
    );
    // Only the ten files: no temporaries left behind.
    assert_eq!(fs::read_dir(&out).expect("dir").count(), 10);

    let ca = Ca::load(&out).expect("load");
    assert_eq!(ca.cluster(), "east");
    assert_eq!(
        ca.cert_pem(),
        fs::read_to_string(out.join(CA_CERT_FILE)).expect("ca.crt")
    );
}

#[test]
fn second_init_refuses_without_force_and_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path();
    init(&opts("east", out, &[], false)).expect("first init");
    let before = snapshot(out);

    let err = init(&opts("east", out, &["10.0.0.1"], false)).unwrap_err();
    match &err {
        CertError::CaExists { path } => assert_eq!(path, &out.join(CA_CERT_FILE)),
        other => panic!("expected CaExists, got {other}"),
    }
    assert!(err.to_string().contains("ca.crt"), "{err}");
    assert_eq!(snapshot(out), before);

    // ca.key alone also counts.
    fs::remove_file(out.join(CA_CERT_FILE)).expect("rm");
    let err = init(&opts("east", out, &[], false)).unwrap_err();
    assert!(matches!(err, CertError::CaExists { ref path } if path == &out.join(CA_KEY_FILE)));

    init(&opts("east", out, &[], true)).expect("forced init");
    let after = snapshot(out);
    assert_eq!(after.len(), 10);
    assert_ne!(
        after[&out.join(CA_KEY_FILE)],
        before[&out.join(CA_KEY_FILE)]
    );
    let mode = fs::metadata(out.join(CA_KEY_FILE))
        .expect("meta")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn init_with_bad_input_writes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("tls");
    let err = init(&opts("east", &out, &["not a name"], false)).unwrap_err();
    assert!(
        matches!(err, CertError::BadSan { ref san } if san == "not a name"),
        "{err}"
    );
    let err = init(&opts("Not_Valid", &out, &[], false)).unwrap_err();
    assert!(matches!(err, CertError::InvalidCluster(_)), "{err}");
    assert!(!out.exists());
}

#[test]
fn identity_round_trips_for_every_role() {
    let tmp = tempfile::tempdir().expect("tempdir");
    init(&opts("west-2", tmp.path(), &[], false)).expect("init");
    for role in Role::ALL {
        let der = der_of(&tmp.path().join(cert_file(role)));
        let id = cert_identity(der.as_ref()).expect("identity");
        assert_eq!(id.cluster, "west-2");
        assert_eq!(id.role, role);
        assert_eq!(id.issuer_cn, ca_common_name("west-2"));
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!(id.not_after_unix > now + 364 * 86400 && id.not_after_unix < now + 366 * 86400);
        let pem = fs::read_to_string(tmp.path().join(cert_file(role))).expect("pem");
        assert_eq!(cert_identity_from_pem(&pem).expect("from pem"), id);
    }
    assert_eq!(ca_common_name("west-2"), "clustermesh CA west-2");
}

#[test]
fn cert_without_identity_uri_is_rejected_clearly() {
    let plain = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let err = cert_identity(plain.cert.der().as_ref()).unwrap_err();
    assert!(matches!(err, CertError::NoIdentity { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("clustermesh://<cluster>/<role>"), "{msg}");
}

#[test]
fn server_cert_carries_sans_and_server_auth() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let sans = ["10.1.2.3", "api.example.com", "::1", "localhost"];
    init(&opts("east", tmp.path(), &sans, false)).expect("init");

    let der = der_of(&tmp.path().join(cert_file(Role::Server)));
    let (_, cert) = X509Certificate::from_der(der.as_ref()).expect("parse");
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    let mut uris = Vec::new();
    let san = cert
        .subject_alternative_name()
        .expect("ext")
        .expect("has SANs");
    for name in &san.value.general_names {
        match name {
            GeneralName::DNSName(d) => dns.push(d.to_string()),
            GeneralName::URI(u) => uris.push(u.to_string()),
            GeneralName::IPAddress(b) => ips.push(match b.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(*b).expect("v4")),
                _ => IpAddr::from(<[u8; 16]>::try_from(*b).expect("v6")),
            }),
            other => panic!("unexpected SAN {other:?}"),
        }
    }
    assert_eq!(dns, ["localhost", "api.example.com"]);
    let want: Vec<IpAddr> = ["127.0.0.1", "10.1.2.3", "::1"]
        .iter()
        .map(|s| s.parse().expect("ip"))
        .collect();
    assert_eq!(ips, want);
    assert_eq!(uris, ["clustermesh://east/server"]);
    let eku = cert.extended_key_usage().expect("ext").expect("eku").value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!cert.is_ca());

    for role in [Role::Admin, Role::Remote, Role::Agent] {
        let der = der_of(&tmp.path().join(cert_file(role)));
        let (_, cert) = X509Certificate::from_der(der.as_ref()).expect("parse");
        let san = cert.subject_alternative_name().expect("ext").expect("SANs");
        assert_eq!(san.value.general_names.len(), 1, "{role}: only the URI SAN");
        let eku = cert.extended_key_usage().expect("ext").expect("eku").value;
        assert!(eku.client_auth && !eku.server_auth, "{role}");
    }
}

#[test]
fn load_reports_missing_and_mismatched_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = Ca::load(tmp.path()).unwrap_err();
    assert!(matches!(err, CertError::Read { .. }), "{err}");
    assert!(err.to_string().contains("ca.crt"), "{err}");

    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    init(&opts("east", &a, &[], false)).expect("init a");
    init(&opts("east", &b, &[], false)).expect("init b");
    fs::copy(b.join(CA_KEY_FILE), a.join(CA_KEY_FILE)).expect("copy");
    let err = Ca::load(&a).unwrap_err();
    assert!(matches!(err, CertError::BadKey { .. }), "{err}");
    assert!(err.to_string().contains("ca.key"), "{err}");

    // A leaf is not a CA.
    fs::copy(b.join(cert_file(Role::Agent)), b.join(CA_CERT_FILE)).expect("copy");
    let err = Ca::load(&b).unwrap_err();
    assert!(matches!(err, CertError::NotACa { .. }), "{err}");

    fs::write(a.join(CA_CERT_FILE), "garbage").expect("write");
    let err = Ca::load(&a).unwrap_err();
    assert!(matches!(err, CertError::NoCertificate { .. }), "{err}");
}

#[test]
fn loaded_ca_issues_chaining_certs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    init(&opts("east", tmp.path(), &[], false)).expect("init");
    let ca = Ca::load(tmp.path()).expect("load");
    let leaf = ca
        .issue(Role::Remote, &[], Validity::days(1))
        .expect("issue");
    let der = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).expect("pem");
    assert!(issued_by(der.as_ref(), ca.cert_pem()).expect("check"));

    let other = Ca::generate("east").expect("other ca with the same name");
    assert!(!issued_by(der.as_ref(), other.cert_pem()).expect("check"));
}
