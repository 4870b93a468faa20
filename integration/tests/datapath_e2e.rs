//! The datapath end to end (needs root): two clusters, each a gateway
//! network namespace with two pod namespaces, the gateways joined by a veth
//! underlay; both control planes run from manifests that describe exactly
//! this topology and are connected to each other; one
//! `clustermesh-node-agent` per gateway (under `nsenter --net`) programs the
//! eBPF datapath from its apiserver's merged view.
//!
//! Checked: ping and TCP across clusters both ways over VXLAN, with the VNI
//! on the wire equal to the sending pod's identity (Geneve is attempted and
//! reported unsupported on kernels without it); the global NetworkPolicy
//! (only app=frontend → app=backend on TCP 8080, enforced across clusters);
//! the global service (backends of both clusters, then affinity local, then
//! the fallback to remote); the pod MTU; restarting each agent while a 10/s
//! ping runs loses no packet and flushes nothing; native routing;
//! removing an endpoint from B's manifests removes it at A; and adding it
//! back moves A's agent's `clustermesh_agent_propagation_delay_seconds`
//! for B (parsed with Python's prometheus_client).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::datapath_support::agent::Agent;
use crate::datapath_support::manifests::{ServiceSpec, pods_yaml, service_yaml, write_cluster};
use crate::datapath_support::pcap::Capture;
use crate::datapath_support::topology::{Topology, UNDERLAY_IF};
use crate::datapath_support::traffic::{
    BackgroundPing, lb_connects, ping, ping_fails, start_whoami, whoami,
};
use crate::datapath_support::*;
use clustermesh_integration::apiserver::Cluster;
use clustermesh_integration::eventually;
use clustermesh_integration::manifests::write;
use clustermesh_node_agent::datapath::{Frontend, PROTO_TCP};
use tokio::task::block_in_place;

const FRONT_A: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 10);
const BACK_A: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 11);
const FRONT_B: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 10);
const BACK_B: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 11);
const SVC_A: &str = "10.96.1.10";
const SVC_B: &str = "10.97.1.10";
const T: Duration = Duration::from_secs(30);

/// Fields drop in order: agents, then control planes, then the topology.
struct Mesh {
    agents: Vec<Agent>,
    clusters: Vec<Cluster>,
    dirs: [tempfile::TempDir; 2],
    t: Topology,
}

fn svc<'a>(ip: &'a str, affinity: &'a str, backends: &[(Ipv4Addr, bool)]) -> ServiceSpec<'a> {
    ServiceSpec {
        cluster_ip: ip,
        affinity,
        backends: backends.iter().map(|(i, r)| (i.to_string(), *r)).collect(),
    }
}

async fn wait_synced(a: &mut Agent, remote_endpoints: u64) {
    a.wait("agent programmed local pods and remote endpoints", T, |s| {
        s["healthy"] == true
            && s["datapath"]["local_pods"] == 2
            && s["datapath"]["remote_endpoints"].as_u64() >= Some(remote_endpoints)
    })
    .await;
}

async fn setup() -> Mesh {
    let t = Topology::new(
        "cme",
        [
            &[
                ("frontend-a", "frontend", FRONT_A),
                ("backend-a", "backend", BACK_A),
            ],
            &[
                ("frontend-b", "frontend", FRONT_B),
                ("backend-b", "backend", BACK_B),
            ],
        ],
    );
    let dirs = [
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    ];
    // Only cluster A defines the policy: B enforces A's exported copy
    // (a global policy; B imports A's policies, docs/policy.md).
    write_cluster(
        dirs[0].path(),
        &t.gws[0],
        &svc(SVC_A, "none", &[(BACK_A, true)]),
        true,
    );
    write_cluster(
        dirs[1].path(),
        &t.gws[1],
        &svc(SVC_B, "none", &[(BACK_B, true)]),
        false,
    );
    let a = start_cluster("east", 1, dirs[0].path()).await;
    let b = start_cluster("west", 2, dirs[1].path()).await;
    connect_peer(&a, &b).await;
    // B enforces A's global policy: it imports A's policies (docs/policy.md).
    connect_peer_importing(&b, &a).await;
    for p in t.gws.iter().flat_map(|g| &g.pods) {
        for port in [8080, 9090] {
            start_whoami(&p.ns, SocketAddr::from((p.ip, port)));
        }
    }
    let mut agents = start_gateway_agents(&t, &[&a, &b], &[]).await;
    for a in &mut agents {
        wait_synced(a, 2).await;
    }
    Mesh {
        agents,
        clusters: vec![a, b],
        dirs,
        t,
    }
}

fn capture_vni(m: &Mesh, g: usize, port: u16, from: &str, to: Ipv4Addr) -> u32 {
    let file = std::env::temp_dir().join(format!("cm-e2e-vni-{}-{g}.pcap", std::process::id()));
    let gw = &m.t.gws[g];
    let cap = Capture::start(&gw.ns, UNDERLAY_IF, gw.underlay_ip, port, &file);
    assert!(
        ping(&m.t.pod(from).ns, to, 2),
        "{from} -> {to} during capture"
    );
    cap.vni()
}

async fn connectivity_and_vni(m: &Mesh) {
    let t = &m.t;
    assert!(ping(&t.pod("frontend-a").ns, FRONT_B, 3), "ping A -> B");
    assert!(ping(&t.pod("frontend-b").ns, FRONT_A, 3), "ping B -> A");
    let got = whoami(&t.pod("frontend-a").ns, SocketAddr::from((FRONT_B, 9090)));
    assert_eq!(got.expect("TCP A -> B"), FRONT_B.to_string());
    let got = whoami(&t.pod("frontend-b").ns, SocketAddr::from((FRONT_A, 9090)));
    assert_eq!(got.expect("TCP B -> A"), FRONT_A.to_string());

    let id_a = endpoint(&m.clusters[0], "east", FRONT_A).await.identity;
    let id_b = endpoint(&m.clusters[1], "west", FRONT_B).await.identity;
    assert_eq!(id_a >> 16, 1, "identity {id_a:#x} carries cluster ID 1");
    assert_eq!(id_b >> 16, 2, "identity {id_b:#x} carries cluster ID 2");
    let vni = block_in_place(|| capture_vni(m, 0, 8472, "frontend-a", FRONT_B));
    assert_eq!(vni, id_a, "VNI A -> B = frontend-a's identity");
    let vni = block_in_place(|| capture_vni(m, 1, 8472, "frontend-b", FRONT_A));
    assert_eq!(vni, id_b, "VNI B -> A = frontend-b's identity");
    println!("vxlan: ping+TCP both ways; VNI {id_a:#08x} (A) and {id_b:#08x} (B) on the wire");
}

/// Geneve: exercised when the kernel has it, otherwise the agent must refuse clearly.
async fn geneve(m: &mut Mesh) {
    if !kernel_has_link_type("geneve") {
        let gw = &m.t.gws[0];
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", gw.ns))
            .arg(
                clustermesh_integration::process::workspace_bin("clustermesh-node-agent")
                    .expect("bin"),
            )
            .args(["--tls-dir", "/nonexistent", "--node-name", "geneve-probe"])
            .args([
                "--tunnel",
                "geneve",
                "--tunnel-dev",
                "cm_gnv",
                "--underlay-dev",
                UNDERLAY_IF,
            ])
            .args([
                "--pin-dir",
                "/sys/fs/bpf/clustermesh-geneve-probe",
                "--lb-cgroup",
                "none",
            ])
            .output()
            .expect("running the agent");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "geneve agent started on a kernel without geneve"
        );
        assert!(
            err.contains("CONFIG_GENEVE"),
            "unclear geneve refusal: {err}"
        );
        println!(
            "SKIP geneve datapath: this kernel has no geneve; the agent reports it: {}",
            err.lines()
                .find(|l| l.contains("CONFIG_GENEVE"))
                .unwrap_or_default()
                .trim()
        );
        return;
    }
    for a in &mut m.agents {
        a.stop();
    }
    for (g, a) in m.agents.iter_mut().enumerate() {
        let gw = &m.t.gws[g];
        *a = Agent::start(
            &gw.ns,
            &gw.node,
            &m.clusters[g].tls_dir(),
            &gw.pin_dir,
            &gw.cgroup,
            &["--tunnel", "geneve", "--tunnel-dev", "cm_gnv"],
            m.clusters[g].dir.path(),
        );
        wait_synced(a, 2).await;
    }
    let id_a = endpoint(&m.clusters[0], "east", FRONT_A).await.identity;
    let vni = block_in_place(|| capture_vni(m, 0, 6081, "frontend-a", FRONT_B));
    assert_eq!(vni, id_a, "Geneve VNI = frontend-a's identity");
    assert!(
        ping(&m.t.pod("frontend-b").ns, FRONT_A, 2),
        "geneve ping B -> A"
    );
    println!("geneve: ping both ways, VNI {vni:#08x}");
    restart_with(m, &[]).await;
}

async fn restart_with(m: &mut Mesh, extra: &[&str]) {
    for a in &mut m.agents {
        a.stop();
    }
    for (g, a) in m.agents.iter_mut().enumerate() {
        let gw = &m.t.gws[g];
        *a = Agent::start(
            &gw.ns,
            &gw.node,
            &m.clusters[g].tls_dir(),
            &gw.pin_dir,
            &gw.cgroup,
            extra,
            m.clusters[g].dir.path(),
        );
    }
    for a in &mut m.agents {
        wait_synced(a, 1).await;
    }
}

fn policy(m: &Mesh) {
    let t = &m.t;
    let (fa, ba) = (&t.pod("frontend-a").ns, &t.pod("backend-a").ns);
    let b = &m.agents[1];
    let denied = b.counter("drop_policy_deny");
    let got = whoami(fa, SocketAddr::from((BACK_B, 8080))).expect("frontend-a -> backend-b:8080");
    assert_eq!(got, BACK_B.to_string());
    assert!(
        whoami(ba, SocketAddr::from((BACK_B, 8080))).is_err(),
        "backend-a -> backend-b:8080 passed"
    );
    assert!(
        whoami(fa, SocketAddr::from((BACK_B, 9090))).is_err(),
        "frontend-a -> backend-b:9090 passed"
    );
    assert!(
        ping_fails(fa, BACK_B),
        "ICMP frontend-a -> backend-b passed"
    );
    let after = b.counter("drop_policy_deny");
    assert!(
        after >= denied + 5,
        "policy-deny at B moved {denied} -> {after}"
    );
    // Same policy, same cluster: enforced between local pods too.
    assert_eq!(
        whoami(fa, SocketAddr::from((BACK_A, 8080))).expect("local 8080"),
        BACK_A.to_string()
    );
    assert!(
        ping_fails(fa, BACK_A),
        "ICMP frontend-a -> backend-a passed"
    );
    println!(
        "policy: frontend->backend:8080 ok; other pod/port/ICMP dropped ({denied} -> {after} policy-deny at B)"
    );
}

async fn wait_backends(pin: &Path, want: &[Ipv4Addr]) {
    let fe = Frontend {
        ip: SVC_A.parse().expect("ip"),
        port: 80,
        proto: PROTO_TCP,
    };
    let mut want = want.to_vec();
    want.sort();
    eventually(&format!("backends {want:?}"), T, || async {
        (lb_backends(pin, fe).as_deref() == Some(&want[..])).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: have {:?}", lb_backends(pin, fe)));
}

async fn global_service(m: &Mesh) {
    let (pin, cg, ns) = (
        &m.t.gws[0].pin_dir,
        &m.t.gws[0].cgroup,
        &m.t.pod("frontend-a").ns,
    );
    let target: SocketAddr = format!("{SVC_A}:80").parse().expect("addr");
    let count =
        |answers: &[String], ip: Ipv4Addr| answers.iter().filter(|a| **a == ip.to_string()).count();

    wait_backends(pin, &[BACK_A, BACK_B]).await;
    let got = block_in_place(|| lb_connects(ns, cg, target, 30));
    assert!(!got.iter().any(|a| a == "FAIL"), "failed connects: {got:?}");
    assert!(
        count(&got, BACK_A) > 0 && count(&got, BACK_B) > 0,
        "not both clusters: {got:?}"
    );
    println!(
        "service (affinity none): {} local, {} remote of 30",
        count(&got, BACK_A),
        count(&got, BACK_B)
    );

    let dir = m.dirs[0].path();
    write(
        dir,
        "30-services.yaml",
        &service_yaml(&svc(SVC_A, "local", &[(BACK_A, true)])),
    )
    .expect("write");
    wait_backends(pin, &[BACK_A]).await;
    let got = block_in_place(|| lb_connects(ns, cg, target, 10));
    assert_eq!(count(&got, BACK_A), 10, "affinity local: {got:?}");

    write(
        dir,
        "30-services.yaml",
        &service_yaml(&svc(SVC_A, "local", &[(BACK_A, false)])),
    )
    .expect("write");
    wait_backends(pin, &[BACK_B]).await;
    let got = block_in_place(|| lb_connects(ns, cg, target, 10));
    assert_eq!(
        count(&got, BACK_B),
        10,
        "affinity local without a ready local backend: {got:?}"
    );
    println!("service: affinity local -> local only; local not ready -> remote only");
}

async fn restart_under_ping(m: &mut Mesh) {
    let before = [
        ipcache_len(&m.t.gws[0].pin_dir),
        ipcache_len(&m.t.gws[1].pin_dir),
    ];
    let bg = BackgroundPing::start(&m.t.pod("frontend-a").ns, FRONT_B, 100);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for g in 0..2 {
        let started = Instant::now();
        block_in_place(|| m.agents[g].restart());
        wait_synced(&mut m.agents[g], 2).await;
        let s = m.agents[g].status().expect("status");
        assert_eq!(
            s["datapath"]["last_apply"]["deletes"], 0,
            "restart deleted entries: {s}"
        );
        println!(
            "agent {g} restarted and resynced in {:?}",
            started.elapsed()
        );
    }
    let (sent, received, text) = block_in_place(|| bg.finish());
    assert!(
        sent >= 90 && received == sent,
        "ping lost packets across restarts: {text}"
    );
    let after = [
        ipcache_len(&m.t.gws[0].pin_dir),
        ipcache_len(&m.t.gws[1].pin_dir),
    ];
    assert_eq!(before, after, "ipcache sizes changed across restarts");
    println!("restart: {received}/{sent} pings answered at 10/s while both agents restarted");
}

async fn native(m: &mut Mesh) {
    restart_with(m, &["--tunnel", "native"]).await;
    let routes = std::process::Command::new("ip")
        .args(["-n", &m.t.gws[0].ns, "route", "show", "proto", "211"])
        .output()
        .expect("ip route");
    let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
    assert!(
        routes.contains("10.2.0.0/24 via 172.31.255.2"),
        "native routes at A: {routes}"
    );
    let fa = &m.t.pod("frontend-a").ns;
    assert_eq!(
        whoami(fa, SocketAddr::from((BACK_B, 8080))).expect("native 8080"),
        BACK_B.to_string()
    );
    assert!(
        ping(&m.t.pod("backend-b").ns, FRONT_A, 2),
        "native ping B -> A"
    );
    assert!(
        ping_fails(fa, BACK_B),
        "native: ICMP to backend-b passed the policy"
    );
    println!(
        "native routing: routes {:?}, TCP and ping across, policy enforced",
        routes.trim()
    );
    restart_with(m, &[]).await;
}

async fn endpoint_removal(m: &Mesh) {
    let pin = &m.t.gws[0].pin_dir;
    assert!(has_host_entry(pin, FRONT_B));
    let started = Instant::now();
    write(
        m.dirs[1].path(),
        "20-pods.yaml",
        &pods_yaml(&m.t.gws[1], &["frontend-b"]),
    )
    .expect("write");
    eventually("frontend-b gone from A's ipcache", T, || async {
        (!has_host_entry(pin, FRONT_B)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let took = started.elapsed();
    // A still tunnels 10.2.0.0/24 to B (the pod CIDR); B, which owned the
    // pod, drops it once its own agent has removed the local entry (that
    // may land a moment after A's update: the two agents are independent).
    let pin_b = &m.t.gws[1].pin_dir;
    eventually("frontend-b gone from B's ipcache", T, || async {
        (!has_host_entry(pin_b, FRONT_B)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let before = m.agents[1].counter("drop_unknown_dest");
    assert!(
        block_in_place(|| ping_fails(&m.t.pod("frontend-a").ns, FRONT_B)),
        "traffic to a removed endpoint"
    );
    let after = m.agents[1].counter("drop_unknown_dest");
    assert!(
        after > before,
        "B did not count the drops ({before} -> {after})"
    );
    println!(
        "removal: frontend-b left A's ipcache {took:?} after B's manifest changed; \
         traffic stopped (dropped at B as unknown destination)"
    );
}

/// A's agent's propagation histogram count for `source` (its `/metrics`
/// parsed by prometheus_client's text parser).
fn agent_propagation_count(a: &Agent, source: &str) -> f64 {
    const PARSE: &str = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families as p
src = sys.argv[1]
n = 0.0
for f in p(sys.stdin.read()):
    if f.name == "clustermesh_agent_propagation_delay_seconds":
        assert f.type == "histogram", f.type
        for s in f.samples:
            if s.name.endswith("_count") and s.labels.get("source_cluster") == src:
                n = s.value
print(n)
"#;
    let body = a.get("/metrics").unwrap_or_default();
    let mut child = std::process::Command::new("python3")
        .args(["-c", PARSE, source])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("python3 ran");
    assert!(
        out.status.success(),
        "the parser refused the agent's /metrics:\n{body}"
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0.0)
}

async fn agent_propagation(m: &Mesh) {
    let pin = &m.t.gws[0].pin_dir;
    let before = agent_propagation_count(&m.agents[0], "west");
    write(
        m.dirs[1].path(),
        "20-pods.yaml",
        &pods_yaml(&m.t.gws[1], &[]),
    )
    .expect("write");
    eventually("frontend-b back in A's ipcache", T, || async {
        has_host_entry(pin, FRONT_B).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let after = eventually("A's agent observed west's change", T, || async {
        let n = agent_propagation_count(&m.agents[0], "west");
        (n > before).then_some(n)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", m.agents[0].get("/metrics").unwrap_or_default()));
    println!("agent propagation histogram for west: {before} -> {after} observations");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn datapath_e2e() {
    let _one_at_a_time = exclusive().await;
    if !require_root("datapath_e2e") {
        return;
    }
    let mut m = setup().await;
    assert_eq!(
        m.t.pod_mtu("frontend-a"),
        1450,
        "pod MTU = underlay 1500 - 50 (VXLAN)"
    );
    connectivity_and_vni(&m).await;
    geneve(&mut m).await;
    block_in_place(|| policy(&m));
    global_service(&m).await;
    restart_under_ping(&mut m).await;
    native(&mut m).await;
    endpoint_removal(&m).await;
    agent_propagation(&m).await;
    if std::env::var_os("CM_E2E_SHOW_LOGS").is_some() {
        for a in &m.agents {
            println!("--- {} ---\n{}", a.name, a.log());
        }
    }
}
