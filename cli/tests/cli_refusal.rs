//! A CLI pointed at a cluster with the wrong certificates says exactly why
//! the server refused it (the TLS alert), not just "connection closed".

mod common;

use std::time::Duration;

use clustermesh_certs::InitOptions;
use clustermesh_localmesh::apiserver::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_is_explained() {
    let c = Cluster::start("alpha", 1, 1, &[]).await.unwrap();
    let other = tempfile::tempdir().unwrap();
    clustermesh_certs::init(&InitOptions {
        cluster: "beta".into(),
        out: other.path().into(),
        sans: vec![],
        force: false,
    })
    .unwrap();
    // Trust alpha's server, but present beta's admin certificate.
    std::fs::copy(c.tls_dir().join("ca.crt"), other.path().join("ca.crt")).unwrap();
    let args: Vec<String> = vec![
        "--server".into(),
        c.api().grpc.clone(),
        "--tls-dir".into(),
        other.path().display().to_string(),
        "status".into(),
    ];
    let r = common::cli(&args, Duration::from_secs(30)).await;
    assert!(!r.ok(), "must fail: {r:#?}");
    assert!(
        r.stderr.contains("UnknownCA") && r.stderr.contains("does not trust the certificate's CA"),
        "the refusal is explained:\n{}",
        r.stderr
    );
}
