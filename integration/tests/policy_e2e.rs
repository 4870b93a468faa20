//! Fail-closed NetworkPolicy through the whole system (needs root): two
//! clusters in network namespaces, real apiservers fed from manifests, one
//! agent per gateway, real packets. Cluster A exports the global policy
//! "app=backend admits only app=frontend on TCP 8080". From frontend-a,
//! probes run continuously against cluster B's backend-b (relabelled from
//! app=open to app=backend) and backend-b2 (started as app=backend) while
//! B's manifests change; no probe may pass that the final policy denies once
//! the change has reached B's datapath, and the window during which the
//! allowed port is refused is measured.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::datapath_support::agent::Agent;
use crate::datapath_support::manifests::{BACKEND_PORT, ServiceSpec, pods_yaml, write_cluster};
use crate::datapath_support::topology::{Gateway, Topology};
use crate::datapath_support::traffic::start_whoami;
use crate::datapath_support::*;
use clustermesh_integration::manifests::{self, write};
use clustermesh_node_agent::datapath::netns::{named_netns_path, run_in_netns};

const FRONT_A: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 10);
const BACK_A: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 11);
const FRONT_B: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 10);
const BACK_B: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 11);
const BACK_B2: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 12);
const T: Duration = Duration::from_secs(30);

/// B's pods file: every pod of `gw` with the given app labels (None = not started).
fn pods(gw: &Gateway, apps: &[(&str, Option<&str>)]) -> String {
    let ul = gw.underlay_ip.to_string();
    let docs: Vec<String> = gw
        .pods
        .iter()
        .filter_map(|p| {
            let app = apps
                .iter()
                .find(|(n, _)| *n == p.name)
                .map_or(Some(p.app.as_str()), |(_, a)| *a)?;
            Some(manifests::pod(
                "shop",
                &p.name,
                &[("app", app)],
                &p.ip.to_string(),
                &gw.node,
                &ul,
                BACKEND_PORT,
            ))
        })
        .collect();
    manifests::docs(&docs)
}

/// One TCP probe from netns `ns`: connected and greeted within `timeout`.
fn probe(ns: &str, addr: SocketAddr, timeout: Duration) -> bool {
    run_in_netns(&named_netns_path(ns), move || {
        use std::io::Read;
        let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(timeout));
        let mut b = [0u8; 1];
        matches!(s.read(&mut b), Ok(1))
    })
    .unwrap_or(false)
}

type Run = Vec<(Instant, bool)>;

/// Probes each target in its own thread until stopped.
fn probers(
    ns: &str,
    targets: &[SocketAddr],
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Run>> {
    targets
        .iter()
        .map(|addr| {
            let (ns, addr, stop) = (ns.to_string(), *addr, stop.clone());
            std::thread::spawn(move || {
                let mut out = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    let ok = probe(&ns, addr, Duration::from_millis(150));
                    out.push((at, ok));
                    if ok {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                out
            })
        })
        .collect()
}

/// The longest span of consecutive failures after `from` (first failing
/// probe's start to the next passing probe's start).
fn longest_refusal(run: &Run, from: Instant) -> Duration {
    let mut longest = Duration::ZERO;
    let mut since: Option<Instant> = None;
    for (at, ok) in run.iter().filter(|(at, _)| *at >= from) {
        match (ok, since) {
            (false, None) => since = Some(*at),
            (true, Some(s)) => {
                longest = longest.max(*at - s);
                since = None;
            }
            _ => {}
        }
    }
    longest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relabel_and_pod_start_fail_closed_end_to_end() {
    let _one_at_a_time = exclusive().await;
    if !require_root("relabel_and_pod_start_fail_closed_end_to_end") {
        return;
    }
    let t = Topology::new(
        "cmq",
        [
            &[
                ("frontend-a", "frontend", FRONT_A),
                ("backend-a", "backend", BACK_A),
            ],
            &[
                ("frontend-b", "frontend", FRONT_B),
                ("backend-b", "open", BACK_B),
                ("backend-b2", "backend", BACK_B2),
            ],
        ],
    );
    let dirs = [
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    ];
    let svc = |ip| ServiceSpec {
        cluster_ip: ip,
        affinity: "none",
        backends: vec![],
    };
    write_cluster(dirs[0].path(), &t.gws[0], &svc("10.96.1.10"), true);
    write_cluster(dirs[1].path(), &t.gws[1], &svc("10.97.1.10"), false);
    write(
        dirs[1].path(),
        "20-pods.yaml",
        &pods_yaml(&t.gws[1], &["backend-b2"]),
    )
    .expect("write");
    let a = start_cluster("east", 1, dirs[0].path()).await;
    let b = start_cluster("west", 2, dirs[1].path()).await;
    connect_peer(&a, &b).await;
    // West enforces east's global policy: it imports east's policies.
    connect_peer_importing(&b, &a).await;
    for p in t.gws.iter().flat_map(|g| &g.pods) {
        for port in [8080, 9090] {
            start_whoami(&p.ns, SocketAddr::from((p.ip, port)));
        }
    }
    let mut agents = start_gateway_agents(&t, &[&a, &b], &[]).await;
    agents[0]
        .wait("A programmed its pods and B's two", T, |s| {
            s["healthy"] == true
                && s["datapath"]["local_pods"] == 2
                && s["datapath"]["remote_endpoints"].as_u64() >= Some(2)
        })
        .await;
    agents[1]
        .wait("B programmed its pods and the policy", T, |s| {
            s["healthy"] == true
                && s["datapath"]["local_pods"] == 2
                && s["records"]["policies"].as_u64() >= Some(1)
        })
        .await;
    let fa = t.pod("frontend-a").ns.clone();
    let at = |ip, port| SocketAddr::from((ip, port));
    tokio::task::block_in_place(|| {
        assert!(
            probe(&fa, at(BACK_B, 9090), Duration::from_secs(2)),
            "backend-b is open before the relabel"
        );
    });

    let stop = Arc::new(AtomicBool::new(false));
    let targets = [
        at(BACK_B, 8080),
        at(BACK_B, 9090),
        at(BACK_B2, 8080),
        at(BACK_B2, 9090),
    ];
    let handles = probers(&fa, &targets, &stop);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let changed = Instant::now();
    write(
        dirs[1].path(),
        "20-pods.yaml",
        &pods(
            &t.gws[1],
            &[
                ("backend-b", Some("backend")),
                ("backend-b2", Some("backend")),
            ],
        ),
    )
    .expect("write");
    // Positive signals: the relabelled pod refuses 9090, the new pod admits 8080.
    let fa2 = fa.clone();
    clustermesh_integration::eventually(
        "backend-b refuses 9090 and backend-b2 admits 8080",
        T,
        || {
            let fa = fa2.clone();
            async move {
                tokio::task::block_in_place(|| {
                    (!probe(&fa, at(BACK_B, 9090), Duration::from_millis(300))
                        && probe(&fa, at(BACK_B2, 8080), Duration::from_millis(300)))
                    .then_some(())
                })
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let runs: Vec<Run> = tokio::task::block_in_place(|| {
        handles
            .into_iter()
            .map(|h| h.join().expect("prober"))
            .collect()
    });
    let after = |r: &Run| -> Run { r.iter().copied().filter(|(t, _)| *t >= changed).collect() };

    // backend-b:9090 passes until B's datapath has the relabel, then never again.
    let b9090 = after(&runs[1]);
    let first_refused = b9090
        .iter()
        .position(|(_, ok)| !ok)
        .expect("9090 refused at some point");
    assert!(
        b9090[first_refused..].iter().all(|(_, ok)| !ok),
        "backend-b:9090 passed again after the relabel reached the datapath"
    );
    let relabel_seen = b9090[first_refused].0 - changed;
    // backend-b2:9090 never passes.
    assert!(
        after(&runs[3]).iter().all(|(_, ok)| !ok),
        "backend-b2:9090 passed"
    );
    let b2_open = after(&runs[2])
        .iter()
        .find(|(_, ok)| *ok)
        .map(|(t, _)| *t - changed);
    let window = longest_refusal(&runs[0], changed);
    let closed = agents[1]
        .status()
        .map(|s| s["datapath"]["fail_closed_identities"].clone());
    println!(
        "relabel: backend-b:9090 refused {relabel_seen:?} after the manifest write ({} probes of 9090 after it, none passed); \
         backend-b:8080 (allowed before and after) was refused for at most {window:?} across the relabel; \
         backend-b2 (new pod): 8080 first admitted {b2_open:?} after the write, 9090 never ({} probes); \
         fail-closed identities at B now: {closed:?}",
        b9090.len() - first_refused,
        after(&runs[3]).len(),
    );

    refusals_reach_the_cli(&t, dirs[1].path(), &b, &mut agents[1]).await;
    drop(agents);
}

/// A policy of B with parts the agent cannot program: counted per reason in
/// the agent's /status, logged once, and shown by `clustermesh status --agent`.
async fn refusals_reach_the_cli(
    t: &Topology,
    dir: &std::path::Path,
    b: &clustermesh_integration::apiserver::Cluster,
    agent: &mut Agent,
) {
    const REFUSED: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: refused-parts
  namespace: shop
spec:
  podSelector:
    matchLabels:
      app: frontend
  policyTypes: [Ingress]
  ingress:
  - ports:
    - protocol: SCTP
      port: 5000
  - from:
    - ipBlock:
        cidr: 2001:db8::/32
";
    write(dir, "41-refused.yaml", REFUSED).expect("write");
    agent
        .wait(
            "B's agent refuses the SCTP port and the IPv6 ipBlock",
            T,
            |s| {
                let r = &s["datapath"]["policy_refused"];
                r["sctp_port"] == 1 && r["ipv6_ip_block"] == 1
            },
        )
        .await;
    let cli = clustermesh_integration::process::workspace_bin("clustermesh")
        .expect("clustermesh binary (cargo build -p clustermesh-cli --bins)");
    let run = |format: &str| {
        let out = std::process::Command::new("nsenter")
            .arg(format!(
                "--net={}",
                named_netns_path(&t.gws[1].ns).display()
            ))
            .arg(&cli)
            .args([
                "--server",
                &format!("127.0.0.1:{}", crate::datapath_support::agent::RELAY_PORT),
            ])
            .arg("--tls-dir")
            .arg(b.tls_dir())
            .args([
                "status",
                "--agent",
                &format!("127.0.0.1:{}", crate::datapath_support::agent::HEALTH_PORT),
                "-o",
                format,
            ])
            .output()
            .expect("running clustermesh status");
        assert!(
            out.status.success(),
            "clustermesh status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = tokio::task::block_in_place(|| run("table"));
    assert!(
        text.contains("ipv6_ip_block=1") && text.contains("sctp_port=1"),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&tokio::task::block_in_place(|| run("json"))).expect("status json");
    assert_eq!(
        json["agent_endpoints"][0]["policy_refused"]["sctp_port"], 1,
        "{json}"
    );
    assert_eq!(json["agent_endpoints"][0]["node"], "gw-b");
    // Plain `clustermesh status` shows the same refusals from the agent's
    // reports to its apiserver (no --agent address needed).
    let reported =
        clustermesh_integration::eventually("gw-b's report carries the refusals", T, || async {
            let ch = b.api().channel(clustermesh_certs::Role::Admin).await.ok()?;
            let st = clustermesh_proto::v1::cluster_mesh_client::ClusterMeshClient::new(ch)
                .status(clustermesh_proto::v1::StatusRequest {})
                .await
                .ok()?
                .into_inner();
            st.agents
                .into_iter()
                .filter_map(|a| a.report)
                .find(|r| r.node == "gw-b" && r.policy_refused.get("sctp_port") == Some(&1))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reported.policy_refused.get("ipv6_ip_block"), Some(&1));
    // Logged once, although every later reconciliation still refuses them.
    let entries = |s: &serde_json::Value| s["datapath"]["policy_entries"].as_u64().unwrap_or(0);
    let before = agent.status().map(|s| entries(&s)).unwrap_or(0);
    let more = format!("{REFUSED}  - ports:\n    - protocol: TCP\n      port: 80\n");
    write(dir, "41-refused.yaml", &more).expect("write");
    agent
        .wait("B recompiled the changed policy", T, |s| {
            entries(s) > before
        })
        .await;
    let log = agent.log();
    let logged = |reason: &str| {
        log.lines()
            .filter(|l| l.contains("policy rule not programmed") && l.contains(reason))
            .count()
    };
    assert_eq!(logged("sctp_port"), 1, "{log}");
    assert_eq!(logged("ipv6_ip_block"), 1, "{log}");
    let row = text
        .lines()
        .find(|l| l.contains("gw-b"))
        .unwrap_or_default();
    println!("clustermesh status --agent: {}", row.trim());
}
