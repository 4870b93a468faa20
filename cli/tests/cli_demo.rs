//! `clustermesh demo --once` end to end: two real clusters from examples/,
//! connected, synced, both statuses and both lookups printed, exit 0.
//!
//! Needs `cargo build --workspace --bins` (for clustermesh-apiserver).

mod common;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_once_prints_a_synced_mesh() {
    let r = common::cli(&["demo".into(), "--once".into()], Duration::from_secs(240)).await;
    assert!(r.ok(), "demo --once failed: {r:#?}");
    let out = &r.stdout;
    for want in [
        "registered peer cluster2",
        "registered peer cluster1",
        "=== status of cluster1 ===",
        "=== status of cluster2 ===",
        "=== service get shop/backend, from cluster1 ===",
        "=== service get shop/backend, from cluster2 ===",
        "clustermesh context add cluster1",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    // Each side's lookup shows both clusters' backends.
    for side in ["cluster1", "cluster2"] {
        let section = out
            .split(&format!("=== service get shop/backend, from {side} ==="))
            .nth(1)
            .and_then(|s| s.split("===").next())
            .unwrap_or_default();
        for ip in ["10.1.0.11", "10.1.1.10", "10.2.0.11", "10.2.1.10"] {
            assert!(
                section.contains(ip),
                "{side}'s lookup lacks {ip}:\n{section}"
            );
        }
        assert!(section.contains("would use 4 of 4"), "{section}");
    }
    assert!(r.stderr.contains("in sync"), "{}", r.stderr);
}

#[tokio::test]
async fn demo_refuses_a_missing_examples_dir() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "demo".to_owned(),
        "--once".to_owned(),
        "--examples".to_owned(),
        dir.path().display().to_string(),
    ];
    let r = common::cli(&args, Duration::from_secs(30)).await;
    assert_eq!(r.code, Some(1), "{r:#?}");
    assert!(
        r.stderr.contains("cluster1") && r.stderr.contains("--examples"),
        "{}",
        r.stderr
    );
}
