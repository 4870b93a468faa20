//! The `clustermesh` binary against three real clusters (etcd +
//! apiserver each, `--source manifests:DIR`): `connect` pairwise; each
//! cluster's `service get -o json` shows every backend of the global
//! service grouped by cluster; a local-only service and a non-exported
//! namespace never leave their cluster; `disconnect` withdraws at once;
//! `status -o json` shows the peers.
//!
//! Needs `cargo build --workspace --bins` (for clustermesh-apiserver).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use clustermesh_localmesh::apiserver::Cluster;
use common::{cli, on, peer_flags};
use serde_json::Value;

const CLUSTERS: [(&str, u32); 3] = [("alpha", 1), ("beta", 2), ("gamma", 3)];
const T: Duration = Duration::from_secs(60);
const CMD: Duration = Duration::from_secs(30);

fn backend_ip(n: u32) -> String {
    format!("10.{n}.0.11")
}

/// One cluster's manifests: a global shop/backend, a local shop/only-NAME,
/// and `private` (not exported) with a service annotated global.
fn manifests(dir: &Path, name: &str, n: u32) {
    let node = format!("gw-{name}");
    let host = format!("192.168.{n}.10");
    let docs = [
        common::namespace("shop", true),
        common::namespace("private", false),
        common::node(&node, &host, &format!("10.{n}.0.0/24")),
        common::pod(
            "shop",
            &format!("backend-{name}"),
            "backend",
            &backend_ip(n),
            &node,
            &host,
        ),
        common::pod(
            "shop",
            &format!("only-{name}"),
            "only",
            &format!("10.{n}.0.12"),
            &node,
            &host,
        ),
        common::pod(
            "private",
            &format!("vault-{name}"),
            "vault",
            &format!("10.{n}.0.13"),
            &node,
            &host,
        ),
        common::service(
            "shop",
            "backend",
            &format!("10.96.{n}.10"),
            true,
            &backend_ip(n),
        ),
        common::service(
            "shop",
            &format!("only-{name}"),
            &format!("10.96.{n}.20"),
            false,
            &format!("10.{n}.0.12"),
        ),
        common::service(
            "private",
            "vault",
            &format!("10.96.{n}.30"),
            true,
            &format!("10.{n}.0.13"),
        ),
    ];
    common::write(dir, "all.yaml", &docs.join("---\n"));
}

/// (cluster, backend IPs) groups of a `service get -o json`.
fn groups(v: &Value) -> Vec<(String, Vec<String>)> {
    v["clusters"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    let ips = c["backends"]
                        .as_array()
                        .map(|bs| {
                            bs.iter()
                                .filter_map(|b| b["ip"].as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default();
                    (c["cluster"].as_str().unwrap_or_default().to_owned(), ips)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `service get NS/NAME -o json` on `c` until its cluster groups are `want`.
async fn until_groups(
    c: &Cluster,
    svc: &str,
    want: &[&str],
    timeout: Duration,
) -> (Value, Duration) {
    let start = Instant::now();
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    loop {
        let r = cli(&on(c, &["service", "get", svc, "-o", "json"]), CMD).await;
        let last = if r.ok() {
            let v = r.json();
            let got: BTreeSet<String> = groups(&v).into_iter().map(|(c, _)| c).collect();
            if got == want {
                return (v, start.elapsed());
            }
            format!("groups {got:?}")
        } else {
            r.stderr.clone()
        };
        assert!(
            start.elapsed() < timeout,
            "{}: {svc} never showed clusters {want:?} within {timeout:?}; last: {last}",
            c.name
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn peer_names(status: &Value) -> BTreeSet<String> {
    status["peers"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clusters_connected_with_the_cli() {
    let root = tempfile::tempdir().unwrap();
    let mut clusters = Vec::new();
    for (name, id) in CLUSTERS {
        let dir = root.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        manifests(&dir, name, id);
        let args = [
            "--source".to_owned(),
            format!("manifests:{}", dir.display()),
        ];
        clusters.push(Cluster::start(name, id, 1, &args).await.unwrap());
    }
    let [a, b, c] = [&clusters[0], &clusters[1], &clusters[2]];

    // connect pairwise, each with one call.
    for (x, y) in [(a, b), (a, c), (b, c)] {
        let mut args = on(x, &["connect"]);
        args.extend(peer_flags(y));
        let r = cli(&args, CMD).await;
        assert!(r.ok(), "connect {} {}: {r:#?}", x.name, y.name);
        assert!(
            r.stdout.contains(&format!("registered peer {}", y.name)),
            "{}",
            r.stdout
        );
        assert!(r.stdout.contains("no private key left"), "{}", r.stdout);
    }
    // A second connect of the same pair updates, and a pair with itself is refused.
    let mut again = on(a, &["connect"]);
    again.extend(peer_flags(b));
    let r = cli(&again, CMD).await;
    assert!(r.ok() && r.stdout.contains("updated peer"), "{r:#?}");
    let mut selfie = on(a, &["connect"]);
    selfie.extend(peer_flags(a));
    let r = cli(&selfie, CMD).await;
    assert!(!r.ok() && r.stderr.contains("own --server"), "{r:#?}");

    // Every cluster sees every backend of the global service, grouped by cluster.
    let all = ["alpha", "beta", "gamma"];
    for x in [a, b, c] {
        let (v, took) = until_groups(x, "shop/backend", &all, T).await;
        eprintln!("{}: shop/backend complete after {took:?} more", x.name);
        for (cluster, ips) in groups(&v) {
            let n = CLUSTERS.iter().find(|(c, _)| *c == cluster).unwrap().1;
            assert_eq!(ips, [backend_ip(n)], "{}: group {cluster}", x.name);
        }
        assert_eq!(v["global"], true);
        assert_eq!(v["viewed_from"], x.name.as_str());
        assert_eq!(v["selected"].as_array().map(Vec::len), Some(3), "{v}");
        let frontends = v["frontend_ips"].as_array().map(Vec::len);
        assert_eq!(frontends, Some(3), "{v}");
    }

    // status --wait: every peer connected and synced.
    for x in [a, b, c] {
        let r = cli(
            &on(x, &["status", "--wait=60s", "-o", "json"]),
            Duration::from_secs(90),
        )
        .await;
        let s = r.json();
        let want: BTreeSet<String> = all
            .iter()
            .filter(|n| **n != x.name)
            .map(|n| n.to_string())
            .collect();
        assert_eq!(peer_names(&s), want, "{}: {s}", x.name);
        for p in s["peers"].as_array().unwrap() {
            assert_eq!(p["connected"], true, "{p}");
            assert!(!p["synced"].as_array().unwrap().is_empty(), "{p}");
            assert!(
                p["last_heartbeat_unix_millis"].as_i64().unwrap_or(0) > 0,
                "{p}"
            );
        }
    }

    // Local-only and non-exported records never leave their cluster.
    for x in [a, b, c] {
        let list = cli(&on(x, &["service", "list", "-o", "json"]), CMD)
            .await
            .json();
        let services = list["services"].as_array().unwrap();
        for s in services {
            let name = format!(
                "{}/{}",
                s["namespace"].as_str().unwrap(),
                s["name"].as_str().unwrap()
            );
            let clusters: Vec<&str> = s["clusters"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            if name.starts_with("shop/only-") || name == "private/vault" {
                assert_eq!(
                    clusters,
                    [x.name.as_str()],
                    "{}: {name} leaked: {s}",
                    x.name
                );
            }
            if let Some(owner) = name.strip_prefix("shop/only-") {
                assert_eq!(owner, x.name, "{}: sees {name}", x.name);
            }
        }
        for y in [a, b, c].into_iter().filter(|y| y.name != x.name) {
            let r = cli(
                &on(x, &["service", "get", &format!("shop/only-{}", y.name)]),
                CMD,
            )
            .await;
            assert!(
                !r.ok() && r.stderr.contains("NotFound"),
                "{}: {r:#?}",
                x.name
            );
        }
        let vault = cli(
            &on(x, &["service", "get", "private/vault", "-o", "json"]),
            CMD,
        )
        .await
        .json();
        let owners: Vec<String> = groups(&vault).into_iter().map(|(c, _)| c).collect();
        assert_eq!(owners, std::slice::from_ref(&x.name), "{}: {vault}", x.name);

        let eps = cli(&on(x, &["endpoint", "list", "-o", "json"]), CMD)
            .await
            .json();
        let eps = eps["endpoints"].as_array().unwrap();
        let foreign: Vec<&Value> = eps
            .iter()
            .filter(|e| e["cluster"] != x.name.as_str())
            .collect();
        assert!(
            !foreign.is_empty(),
            "{}: no peer endpoints in the merged view",
            x.name
        );
        for e in &foreign {
            assert_eq!(
                e["namespace"], "shop",
                "{}: non-exported endpoint leaked: {e}",
                x.name
            );
        }
        let ids = cli(&on(x, &["identity", "list", "-o", "json"]), CMD)
            .await
            .json();
        for i in ids["identities"].as_array().unwrap() {
            if i["cluster"] != x.name.as_str() {
                assert_ne!(
                    i["labels"]["io.kubernetes.pod.namespace"], "private",
                    "{}: {i}",
                    x.name
                );
                assert_eq!(i["exported"], true, "{i}");
            }
        }
        let nodes = cli(&on(x, &["node", "list", "-o", "json"]), CMD)
            .await
            .json();
        let node_clusters: BTreeSet<&str> = nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n["cluster"].as_str())
            .collect();
        assert_eq!(
            node_clusters,
            all.into_iter().collect(),
            "{}: {nodes}",
            x.name
        );
    }

    // disconnect withdraws at once, on both sides.
    let mut args = on(a, &["disconnect", "gamma"]);
    args.extend(peer_flags(c));
    let r = cli(&args, CMD).await;
    assert!(r.ok(), "{r:#?}");
    assert!(
        r.stdout.contains("alpha: removed peer gamma"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("gamma: removed peer alpha"),
        "{}",
        r.stdout
    );
    let (_, took) = until_groups(
        a,
        "shop/backend",
        &["alpha", "beta"],
        Duration::from_secs(2),
    )
    .await;
    eprintln!("alpha withdrew gamma's backends {took:?} after `disconnect` returned");
    until_groups(
        c,
        "shop/backend",
        &["beta", "gamma"],
        Duration::from_secs(2),
    )
    .await;
    // beta is untouched.
    until_groups(b, "shop/backend", &all, Duration::from_secs(2)).await;
    let s = cli(&on(a, &["status", "-o", "json"]), CMD).await.json();
    assert_eq!(peer_names(&s), ["beta".to_owned()].into(), "{s}");
    let nodes = cli(
        &on(a, &["node", "list", "--cluster", "gamma", "-o", "json"]),
        CMD,
    )
    .await
    .json();
    assert_eq!(nodes["nodes"].as_array().map(Vec::len), Some(0), "{nodes}");
}
