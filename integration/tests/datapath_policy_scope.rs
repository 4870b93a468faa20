//! Policy semantics across clusters with real packets (needs root;
//! docs/policy.md): two clusters `west` (ID 1) and `east` (ID 2) set up as in
//! `datapath_e2e.rs`, each with an `app=web` and an `app=db` pod in `shop`.
//! West's NetworkPolicy protects its `db` and admits `app=web` on TCP 8080.
//!
//! 1. Plain (not global): west's web reaches west's db on 8080, east's web
//!    (same namespace, same labels) is dropped by west's policy.
//! 2. The same policy made global (the manifest rewritten): east's web gets
//!    in on 8080, still not on 9090.
//! 3. West's global policy changes nothing in east (east's db stays open on
//!    9090) until east imports west's policies (`import_policies`, as
//!    `clustermesh connect --import-policies` registers it); then east's db
//!    admits only web on 8080.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::datapath_support::manifests::{ServiceSpec, write_cluster};
use crate::datapath_support::topology::Topology;
use crate::datapath_support::traffic::{start_whoami, whoami};
use crate::datapath_support::*;
use clustermesh_integration::eventually;
use clustermesh_integration::manifests::write;
use tokio::task::block_in_place;

const WEB_W: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 10);
const DB_W: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 11);
const WEB_E: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 10);
const DB_E: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 11);
const T: Duration = Duration::from_secs(30);

fn policy(global: bool) -> String {
    let annotations = if global {
        "  annotations:\n    clustermesh.io/global: \"true\"\n"
    } else {
        ""
    };
    format!(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: db-allow-web
  namespace: shop
{annotations}spec:
  podSelector:
    matchLabels:
      app: db
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: web
    ports:
    - protocol: TCP
      port: 8080
"
    )
}

/// Whether `from` (a pod's netns) gets an answer from `to`.
fn reaches(from: &str, to: Ipv4Addr, port: u16) -> bool {
    block_in_place(|| whoami(from, SocketAddr::from((to, port)))).is_ok_and(|g| g == to.to_string())
}

/// Waits until `from` → `to:port` is `open` (or closed), as the agents
/// program the change.
async fn until(what: &str, from: &str, to: Ipv4Addr, port: u16, open: bool) {
    eventually(what, T, || async {
        (reaches(from, to, port) == open).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plain_policies_stay_in_their_cluster_global_ones_span_the_mesh() {
    let _one_at_a_time = exclusive().await;
    if !require_root("datapath_policy_scope") {
        return;
    }
    let t = Topology::new(
        "cmp",
        [
            &[("web-w", "web", WEB_W), ("db-w", "db", DB_W)],
            &[("web-e", "web", WEB_E), ("db-e", "db", DB_E)],
        ],
    );
    let dirs = [
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    ];
    for (g, (ip, backend)) in [("10.96.1.10", DB_W), ("10.97.1.10", DB_E)]
        .into_iter()
        .enumerate()
    {
        let svc = ServiceSpec {
            cluster_ip: ip,
            affinity: "none",
            backends: vec![(backend.to_string(), true)],
        };
        write_cluster(dirs[g].path(), &t.gws[g], &svc, false);
    }
    write(dirs[0].path(), "40-policies.yaml", &policy(false)).expect("write");
    let west = start_cluster("west", 1, dirs[0].path()).await;
    let east = start_cluster("east", 2, dirs[1].path()).await;
    connect_peer(&west, &east).await;
    connect_peer(&east, &west).await;
    for p in t.gws.iter().flat_map(|g| &g.pods) {
        for port in [8080, 9090] {
            start_whoami(&p.ns, SocketAddr::from((p.ip, port)));
        }
    }
    let mut agents = start_gateway_agents(&t, &[&west, &east], &[]).await;
    for a in &mut agents {
        a.wait("agent programmed local pods and remote endpoints", T, |s| {
            s["healthy"] == true
                && s["datapath"]["local_pods"] == 2
                && s["datapath"]["remote_endpoints"].as_u64() >= Some(2)
        })
        .await;
    }
    let ns = |name: &str| t.pod(name).ns.clone();
    let (web_w, web_e) = (ns("web-w"), ns("web-e"));

    // 1. Plain: only west's own web pods.
    until("web-w -> db-w:8080 admitted", &web_w, DB_W, 8080, true).await;
    let denied = agents[0].counter("drop_policy_deny");
    assert!(
        !reaches(&web_e, DB_W, 8080),
        "east's web passed west's plain policy"
    );
    assert!(!reaches(&web_w, DB_W, 9090), "web-w -> db-w:9090 passed");
    let after = agents[0].counter("drop_policy_deny");
    assert!(
        after > denied,
        "west's policy-deny counter did not move ({denied} -> {after})"
    );
    // East has no policy: its db is open, also to west's web on any port.
    assert!(
        reaches(&web_w, DB_E, 9090),
        "east's db is not protected yet"
    );

    // 2. Global: east's web pods are admitted too, on 8080 only.
    write(dirs[0].path(), "40-policies.yaml", &policy(true)).expect("write");
    until(
        "web-e -> db-w:8080 admitted (global)",
        &web_e,
        DB_W,
        8080,
        true,
    )
    .await;
    assert!(!reaches(&web_e, DB_W, 9090), "web-e -> db-w:9090 passed");
    assert!(reaches(&web_w, DB_W, 8080), "web-w lost access to db-w");

    // 3. West's global policy is exported; east does not import it: east's
    //    db stays open (checked after west enforces the global version).
    assert!(
        reaches(&web_w, DB_E, 9090),
        "west's policy changed east without --import-policies"
    );
    connect_peer_importing(&east, &west).await;
    until("east imports: db-e:9090 closed", &web_w, DB_E, 9090, false).await;
    assert!(
        reaches(&web_w, DB_E, 8080),
        "web-w -> db-e:8080 (admitted by the imported policy)"
    );
    assert!(reaches(&web_e, DB_E, 8080), "web-e -> db-e:8080");
    println!(
        "policy scope: plain stays in west, global admits east's web, east enforces west's only after import"
    );
    drop(agents);
}
