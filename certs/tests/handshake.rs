//! Real rustls handshakes over loopback TCP against `server_config`.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use clustermesh_certs::{
    CA_CERT_FILE, Ca, CertIdentity, InitOptions, Role, Validity, ca_common_name, cert_identity,
    client_config, client_config_from_pem, init, server_config,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, ClientConfig, ClientConnection, RootCertStore, ServerConfig};
use rustls::{ServerConnection, StreamOwned};

fn init_dir(dir: &Path, cluster: &str) {
    init(&InitOptions {
        cluster: cluster.to_owned(),
        out: dir.to_owned(),
        sans: vec![],
        force: false,
    })
    .expect("init");
}

fn rustls_error(e: io::Error) -> rustls::Error {
    match e
        .into_inner()
        .map(|inner| inner.downcast::<rustls::Error>())
    {
        Some(Ok(e)) => *e,
        Some(Err(other)) => rustls::Error::General(other.to_string()),
        None => rustls::Error::General("i/o error without detail".to_owned()),
    }
}

/// Runs one handshake; returns the server's view: the client's identity, or
/// the error that made the server reject it.
fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    server_name: &str,
) -> Result<CertIdentity, rustls::Error> {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server_side = thread::spawn(move || {
        let (sock, _) = listener.accept().expect("accept");
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let conn = ServerConnection::new(server).expect("server conn");
        let mut tls = StreamOwned::new(conn, sock);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).map_err(rustls_error)?;
        }
        assert_eq!(tls.conn.alpn_protocol(), Some(&b"h2"[..]));
        let peer = tls.conn.peer_certificates().expect("peer certificates");
        Ok(cert_identity(peer[0].as_ref()).expect("client identity"))
    });

    let sock = TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let name = ServerName::try_from(server_name.to_owned()).expect("server name");
    let conn = ClientConnection::new(client, name).expect("client conn");
    let mut tls = StreamOwned::new(conn, sock);
    // The client may finish (TLS 1.3) before the server has judged its
    // certificate, or see the server's alert; the server's verdict is what counts.
    while tls.conn.is_handshaking() {
        if tls.conn.complete_io(&mut tls.sock).is_err() {
            break;
        }
    }
    let _ = tls.conn.complete_io(&mut tls.sock);
    drop(tls);
    server_side.join().expect("server thread")
}

struct Mesh {
    _tmp: tempfile::TempDir,
    east: std::path::PathBuf,
    west: std::path::PathBuf,
}

fn mesh() -> Mesh {
    let tmp = tempfile::tempdir().expect("tempdir");
    let east = tmp.path().join("east");
    let west = tmp.path().join("west");
    init_dir(&east, "east");
    init_dir(&west, "west");
    Mesh {
        _tmp: tmp,
        east,
        west,
    }
}

fn ca_pem(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(CA_CERT_FILE)).expect("ca.crt")
}

#[test]
fn same_ca_agent_is_accepted_with_its_identity() {
    let m = mesh();
    let server = server_config(&m.east, &[]).expect("server config");
    for (role, name) in [(Role::Agent, "localhost"), (Role::Admin, "127.0.0.1")] {
        let client = client_config(&m.east, role, &[]).expect("client config");
        let id = handshake(server.clone(), client, name).expect("handshake");
        assert_eq!((id.cluster.as_str(), id.role), ("east", role));
        assert_eq!(id.issuer_cn, ca_common_name("east"));
    }
}

#[test]
fn client_without_certificate_is_rejected() {
    let m = mesh();
    let server = server_config(&m.east, &[]).expect("server config");
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(m.east.join(CA_CERT_FILE)).expect("ca"))
        .expect("add root");
    let mut client =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec()];
    let err = handshake(server, Arc::new(client), "localhost").unwrap_err();
    assert!(
        matches!(err, rustls::Error::NoCertificatesPresented),
        "{err:?}"
    );
}

#[test]
fn other_clusters_ca_is_rejected() {
    let m = mesh();
    let server = server_config(&m.east, &[]).expect("server config");
    // West trusts east's server but presents a west-issued certificate.
    let client = client_config(&m.west, Role::Remote, &[ca_pem(&m.east)]).expect("client");
    let err = handshake(server, client, "localhost").unwrap_err();
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ),
        "{err:?}"
    );
}

#[test]
fn expired_certificate_is_rejected() {
    let m = mesh();
    let server = server_config(&m.east, &[]).expect("server config");
    let ca = Ca::load(&m.east).expect("load");
    let now = time::OffsetDateTime::now_utc();
    let old = Validity {
        not_before: now - time::Duration::days(10),
        not_after: now - time::Duration::days(1),
    };
    let leaf = ca.issue(Role::Agent, &[], old).expect("issue");
    let client = client_config_from_pem(&[ca.cert_pem().to_owned()], &leaf.cert_pem, &leaf.key_pem)
        .expect("client");
    let err = handshake(server, client, "localhost").unwrap_err();
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        ),
        "{err:?}"
    );

    // The same loaded CA issues certificates that do work.
    let fresh = ca
        .issue(Role::Agent, &[], Validity::days(1))
        .expect("issue");
    let client =
        client_config_from_pem(&[ca.cert_pem().to_owned()], &fresh.cert_pem, &fresh.key_pem)
            .expect("client");
    let id = handshake(
        server_config(&m.east, &[]).expect("server"),
        client,
        "localhost",
    )
    .expect("fresh cert accepted");
    assert_eq!(id.role, Role::Agent);
}

#[test]
fn peer_ca_in_extra_client_cas_is_accepted() {
    let m = mesh();
    let server = server_config(&m.east, &[ca_pem(&m.west)]).expect("server config");
    let client = client_config(&m.west, Role::Remote, &[ca_pem(&m.east)]).expect("client");
    let id = handshake(server, client, "localhost").expect("handshake");
    assert_eq!((id.cluster.as_str(), id.role), ("west", Role::Remote));
    assert_eq!(id.issuer_cn, ca_common_name("west"));
}

#[test]
fn client_rejects_server_from_untrusted_ca() {
    let m = mesh();
    let server = server_config(&m.east, &[ca_pem(&m.west)]).expect("server config");
    // West does not trust east's CA for the server certificate.
    let client = client_config(&m.west, Role::Remote, &[]).expect("client");
    assert!(handshake(server, client, "localhost").is_err());
}

#[test]
fn config_errors_name_the_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = server_config(tmp.path(), &[]).unwrap_err();
    assert!(err.to_string().contains("ca.crt"), "{err}");
    let m = mesh();
    let err = server_config(&m.east, &["junk".to_owned()]).unwrap_err();
    assert!(err.to_string().contains("extra client CA PEM #1"), "{err}");
    std::fs::remove_file(m.east.join("agent.key")).expect("rm");
    let err = client_config(&m.east, Role::Agent, &[]).unwrap_err();
    assert!(err.to_string().contains("agent.key"), "{err}");
    let err = client_config_from_pem(&[], "", "").unwrap_err();
    assert!(err.to_string().contains("trusted CA"), "{err}");
}
