//! Pods on every node (needs root): DESIGN §7's four hops, worker → gateway
//! ═ gateway → worker, with the source identity in the VNI on every hop.
//!
//! East: two gateways and a worker on a LAN; west: a gateway and a worker;
//! only the gateways are on the WAN. One `clustermesh-node-agent` per node,
//! all started with the same flags (no `--underlay-dev`): the role comes
//! from the node's record, the devices from the routes.
//!
//! Checked: ping and TCP between the workers' pods both ways; a global
//! NetworkPolicy (web → cart:8080 only) enforced at the destination node; the
//! VNI on the worker→gateway hop, on the WAN and on the gateway→worker hop;
//! spoofed tunnel packets (a stranger on the WAN, this cluster's identity
//! or a third cluster's from the peer's gateway) dropped and counted; the
//! gateways and agents in Status; and failover: the gateway in use is
//! SIGKILLed with its links down under a 5/s ping, the longest gap is
//! printed and must stay within 3 s, then the other gateway likewise.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::datapath_support::agent::{Agent, relay_into_netns};
use crate::datapath_support::nodes::{LAN_IF, NodeSpec, Nodes, WAN_IF, write_manifests};
use crate::datapath_support::pcap::Capture;
use crate::datapath_support::traffic::{GapPing, ping, ping_fails, start_whoami, whoami};
use crate::datapath_support::*;
use clustermesh_integration::apiserver::Cluster;
use clustermesh_integration::eventually;
use clustermesh_node_agent::datapath::netns::named_netns_path;
use tokio::task::block_in_place;

const WEB_E: Ipv4Addr = Ipv4Addr::new(10, 1, 3, 10);
const OTHER_E: Ipv4Addr = Ipv4Addr::new(10, 1, 3, 11);
const CART_W: Ipv4Addr = Ipv4Addr::new(10, 2, 2, 10);
const ECHO_W: Ipv4Addr = Ipv4Addr::new(10, 2, 2, 11);
const T: Duration = Duration::from_secs(40);
/// The bar of DESIGN §7 / issue: traffic back within 3 s.
const FAILOVER_BAR: Duration = Duration::from_secs(3);

/// Only cart is selected: web → cart on TCP 8080, nothing else. Defined in
/// west (where cart lives) and global, so web pods of every cluster match.
const POLICY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: cart-allow-web
  namespace: shop
  annotations:
    clustermesh.io/global: \"true\"
spec:
  podSelector:
    matchLabels:
      app: cart
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: web
    ports:
    - protocol: TCP
      port: 8080
";

/// Fields drop in order: agents, control planes, then the namespaces.
struct Mesh {
    agents: BTreeMap<String, Agent>,
    clusters: Vec<Cluster>,
    _dirs: Vec<tempfile::TempDir>,
    t: Nodes,
}

fn gateway_in_use(m: &Mesh) -> Option<String> {
    let s = m.agents["east-w1"].status()?;
    let via = s["datapath"]["remote_clusters"]
        .as_array()?
        .iter()
        .find(|c| c["cluster"] == "west")?["gateway"]
        .as_str()?
        .to_string();
    m.t.clusters[0]
        .iter()
        .find(|n| n.lan_ip.to_string() == via)
        .map(|n| n.name.clone())
}

async fn setup() -> Mesh {
    let t = Nodes::new(
        "cmw",
        &[
            &[
                NodeSpec {
                    name: "gw1",
                    gateway: true,
                    pods: &[],
                },
                NodeSpec {
                    name: "gw2",
                    gateway: true,
                    pods: &[],
                },
                NodeSpec {
                    name: "w1",
                    gateway: false,
                    pods: &[("web-e", "web", WEB_E), ("other-e", "other", OTHER_E)],
                },
            ],
            &[
                NodeSpec {
                    name: "gw1",
                    gateway: true,
                    pods: &[],
                },
                NodeSpec {
                    name: "w1",
                    gateway: false,
                    pods: &[("cart-w", "cart", CART_W), ("echo-w", "echo", ECHO_W)],
                },
            ],
        ],
    );
    let dirs = vec![
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    ];
    write_manifests(dirs[0].path(), &t.clusters[0], 8080, None);
    write_manifests(dirs[1].path(), &t.clusters[1], 8080, Some(POLICY));
    let east = start_cluster("east", 1, dirs[0].path()).await;
    let west = start_cluster("west", 2, dirs[1].path()).await;
    connect_peer(&east, &west).await;
    connect_peer(&west, &east).await;
    for p in t.clusters.iter().flatten().flat_map(|n| &n.pods) {
        for port in [8080, 9090] {
            start_whoami(&p.ns, SocketAddr::from((p.ip, port)));
        }
    }
    let mut agents = BTreeMap::new();
    for (c, cluster) in [&east, &west].iter().enumerate() {
        for n in &t.clusters[c] {
            relay_into_netns(&n.ns, cluster.api().grpc.clone()).await;
            let a = Agent::start_node(
                &n.ns,
                &n.name,
                &cluster.tls_dir(),
                &n.pin_dir,
                &["--lb-cgroup", "none"],
                cluster.dir.path(),
            );
            agents.insert(n.name.clone(), a);
        }
    }
    let mut m = Mesh {
        agents,
        clusters: vec![east, west],
        _dirs: dirs,
        t,
    };
    for (name, a) in m.agents.iter_mut() {
        let worker = name.ends_with("-w1");
        a.wait(
            "agent programmed, with a gateway towards the peer",
            T,
            |s| {
                s["healthy"] == true
                    && s["datapath"]["gateway"] == !worker
                    && s["datapath"]["remote_endpoints"].as_u64() >= Some(2)
                    && s["datapath"]["remote_clusters"]
                        .as_array()
                        .is_some_and(|v| v.len() == 1)
            },
        )
        .await;
    }
    m
}

fn connectivity(m: &Mesh) {
    let t = &m.t;
    let (web, echo) = (&t.pod("web-e").ns, &t.pod("echo-w").ns);
    assert!(ping(web, ECHO_W, 3), "ping east worker -> west worker");
    assert!(ping(echo, WEB_E, 3), "ping west worker -> east worker");
    let got = whoami(web, SocketAddr::from((ECHO_W, 9090))).expect("TCP east -> west");
    assert_eq!(got, ECHO_W.to_string());
    let got = whoami(echo, SocketAddr::from((WEB_E, 9090))).expect("TCP west -> east");
    assert_eq!(got, WEB_E.to_string());
    println!("workers: ping and TCP both ways through worker -> gateway = gateway -> worker");
}

fn policy(m: &Mesh) {
    let t = &m.t;
    let (web, other) = (&t.pod("web-e").ns, &t.pod("other-e").ns);
    let dst = &m.agents["west-w1"];
    let denied = dst.counter("drop_policy_deny");
    let got = whoami(web, SocketAddr::from((CART_W, 8080))).expect("web -> cart:8080");
    assert_eq!(got, CART_W.to_string());
    assert!(
        whoami(other, SocketAddr::from((CART_W, 8080))).is_err(),
        "other -> cart:8080 passed"
    );
    assert!(
        whoami(web, SocketAddr::from((CART_W, 9090))).is_err(),
        "web -> cart:9090 passed"
    );
    assert!(ping_fails(web, CART_W), "ICMP web -> cart passed");
    let after = dst.counter("drop_policy_deny");
    assert!(
        after >= denied + 3,
        "policy-deny at the destination node moved {denied} -> {after}"
    );
    println!(
        "policy at the destination node: web -> cart:8080 ok; other pod, port 9090, ICMP dropped ({denied} -> {after})"
    );
}

/// Captures one tunnel packet from `src` on `iface` of `ns` while web pings echo.
fn capture(ns: &str, iface: &str, src: Ipv4Addr, tag: &str) -> Capture {
    let file = std::env::temp_dir().join(format!("cm-nodes-{tag}-{}.pcap", std::process::id()));
    Capture::start(ns, iface, src, 8472, &file)
}

async fn vni_on_every_hop(m: &Mesh) {
    let id = endpoint(&m.clusters[0], "east", WEB_E).await.identity;
    assert_eq!(id >> 16, 1, "identity {id:#x} carries cluster ID 1");
    let gw = gateway_in_use(m).expect("east worker's gateway");
    let (w1, egw, wgw, ww1) = (
        m.t.node("east-w1"),
        m.t.node(&gw),
        m.t.node("west-gw1"),
        m.t.node("west-w1"),
    );
    let wan = egw.wan_ip.expect("gateway WAN address");
    let caps = [
        (
            "worker -> gateway",
            capture(&w1.ns, LAN_IF, w1.lan_ip, "lan-e"),
        ),
        ("WAN", capture(&egw.ns, WAN_IF, wan, "wan")),
        (
            "gateway -> worker",
            capture(&ww1.ns, LAN_IF, wgw.lan_ip, "lan-w"),
        ),
    ];
    assert!(ping(&m.t.pod("web-e").ns, ECHO_W, 2), "ping during capture");
    for (hop, cap) in caps {
        let vni = block_in_place(|| cap.vni());
        assert_eq!(vni, id, "VNI on the {hop} hop");
    }
    println!(
        "VNI {id:#08x} (web-e's identity, cluster 1) on the worker->gateway, WAN and gateway->worker hops (via {gw})"
    );
}

/// Sends one VXLAN packet (VNI `vni`, inner ICMP echo to `dst`) from netns `ns` to `to`:8472.
fn send_vxlan(ns: &str, to: Ipv4Addr, vni: u32, src: Ipv4Addr, dst: Ipv4Addr) {
    let script = format!(
        r#"
import socket, struct
def csum(b):
    if len(b) % 2: b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b)//2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff
icmp = struct.pack('!BBHHH', 8, 0, 0, 0x4242, 1) + b'spoof'
icmp = icmp[:2] + struct.pack('!H', csum(icmp)) + icmp[4:]
src = socket.inet_aton('{src}'); dst = socket.inet_aton('{dst}')
ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0, src, dst)
ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
eth = b'\x02\0\0\0\0\x01' + b'\x02\0\0\0\0\x02' + b'\x08\x00'
vx = struct.pack('!II', 0x08000000, {vni} << 8)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(3):
    s.sendto(vx + eth + ip + icmp, ('{to}', 8472))
"#
    );
    let out = Command::new("nsenter")
        .arg(format!("--net={}", named_netns_path(ns).display()))
        .args(["python3", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "sending the spoofed packet: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn spoofing(m: &mut Mesh) {
    let id_e = endpoint(&m.clusters[0], "east", OTHER_E).await.identity;
    let third = (3u32 << 16) | 300;
    let stranger = m.t.wan_stranger();
    let gws = ["east-gw1", "east-gw2"];
    let sum = |m: &Mesh, c: &str| gws.iter().map(|g| m.agents[*g].counter(c)).sum::<u64>();
    let (src0, spoof0) = (sum(m, "drop_tunnel_source"), sum(m, "drop_identity_spoof"));
    let west_gw = m.t.node("west-gw1").ns.clone();
    for g in gws {
        let wan = m.t.node(g).wan_ip.expect("wan");
        // A stranger on the WAN, with a valid west identity.
        send_vxlan(&stranger, wan, (2 << 16) | 256, CART_W, WEB_E);
        // West's gateway sending east's own identity, and a third cluster's.
        send_vxlan(&west_gw, wan, id_e, OTHER_E, WEB_E);
        send_vxlan(&west_gw, wan, third, CART_W, WEB_E);
    }
    let r = eventually("spoofed packets counted", T, || async {
        let (src, spoof) = (sum(m, "drop_tunnel_source"), sum(m, "drop_identity_spoof"));
        (src >= src0 + 6 && spoof >= spoof0 + 12).then_some((src, spoof))
    })
    .await;
    let (src, spoof) = r.unwrap_or_else(|e| {
        panic!(
            "{e}: drop_tunnel_source {src0} -> {}, drop_identity_spoof {spoof0} -> {}",
            sum(m, "drop_tunnel_source"),
            sum(m, "drop_identity_spoof")
        )
    });
    println!(
        "spoofing: stranger dropped as drop_tunnel_source ({src0} -> {src}); east's and a third cluster's identity from west's gateway dropped as drop_identity_spoof ({spoof0} -> {spoof})"
    );
    // Honest traffic still flows.
    assert!(ping(&m.t.pod("web-e").ns, ECHO_W, 2), "ping after spoofing");
}

async fn status_shows_gateways_and_agents(m: &Mesh) {
    let s = mesh_status(&m.clusters[0]).await;
    let names: Vec<&str> = s
        .agents
        .iter()
        .filter_map(|a| a.report.as_ref().map(|r| r.node.as_str()))
        .collect();
    assert_eq!(
        names,
        ["east-gw1", "east-gw2", "east-w1"],
        "agents in status"
    );
    assert!(
        s.agents.iter().all(|a| a.live),
        "all agents live: {:?}",
        s.agents
    );
    let local: Vec<_> = s.gateways.iter().filter(|g| g.cluster == "east").collect();
    assert_eq!(local.len(), 2, "east gateways: {:?}", s.gateways);
    assert!(local.iter().all(|g| g.live));
    let used: Vec<_> = local.iter().filter(|g| !g.used_by.is_empty()).collect();
    assert_eq!(
        used.len(),
        1,
        "one east gateway in use by the worker: {local:?}"
    );
    assert!(used[0].used_by.contains(&"east-w1".to_string()));
    let peer: Vec<_> = s.gateways.iter().filter(|g| g.cluster == "west").collect();
    assert_eq!(peer.len(), 1);
    assert_eq!(
        peer[0].address, "203.0.113.21",
        "peers are reached at the ExternalIP"
    );
    println!(
        "status: east gateways {:?}, west gateway {} used by {:?}",
        local
            .iter()
            .map(|g| (&g.node, g.live, &g.used_by))
            .collect::<Vec<_>>(),
        peer[0].node,
        peer[0].used_by
    );
}

async fn wait_gateways_live(m: &Mesh, want: usize) {
    crate::datapath_support::wait_gateways_live(&m.clusters[0], "east", want, T).await;
}

/// Kills gateway `gw` (SIGKILL and links down) under a 5/s ping; returns the gap.
async fn kill_gateway(m: &mut Mesh, gw: &str) -> Duration {
    let other = if gw == "east-gw1" {
        "east-gw2"
    } else {
        "east-gw1"
    };
    let ping = GapPing::start(&m.t.pod("web-e").ns.clone(), ECHO_W);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = Instant::now();
    m.agents.get_mut(gw).expect("agent").kill();
    m.t.links(gw, false);
    // Positive signal: the worker moved to the other gateway ...
    let r = eventually(&format!("the east worker uses {other}"), T, || async {
        (gateway_in_use(m).as_deref() == Some(other)).then_some(())
    })
    .await;
    r.unwrap_or_else(|e| panic!("{e}"));
    let moved = killed.elapsed();
    // ... and replies arrive through it for a while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (gap, answered, last) = block_in_place(|| ping.finish());
    assert!(answered > 10, "only {answered} replies");
    println!(
        "failover: killed {gw}; the worker switched to {other} after {moved:?}; longest ping gap {gap:?} ({answered} answered, last seq {last})"
    );
    gap
}

async fn restore_gateway(m: &mut Mesh, gw: &str) {
    m.t.links(gw, true);
    m.agents.get_mut(gw).expect("agent").start_again();
    wait_gateways_live(m, 2).await;
}

async fn failover(m: &mut Mesh) {
    let first = gateway_in_use(m).expect("gateway in use");
    let gap1 = kill_gateway(m, &first).await;
    restore_gateway(m, &first).await;
    // Back on the first (the deterministic choice) once it is live again.
    let r = eventually("the worker back on its first gateway", T, || async {
        (gateway_in_use(m).as_deref() == Some(first.as_str())).then_some(())
    })
    .await;
    r.unwrap_or_else(|e| panic!("{e}"));
    let second = if first == "east-gw1" {
        "east-gw2"
    } else {
        "east-gw1"
    };
    let gap2 = kill_failover_of_unused(m, second).await;
    restore_gateway(m, second).await;
    assert!(gap1 <= FAILOVER_BAR, "gap {gap1:?} after killing {first}");
    assert!(gap2 <= FAILOVER_BAR, "gap {gap2:?} after killing {second}");
}

/// Kills the gateway not in use: traffic must not notice beyond the bar.
async fn kill_failover_of_unused(m: &mut Mesh, gw: &str) -> Duration {
    let ping = GapPing::start(&m.t.pod("web-e").ns.clone(), ECHO_W);
    tokio::time::sleep(Duration::from_secs(2)).await;
    m.agents.get_mut(gw).expect("agent").kill();
    m.t.links(gw, false);
    wait_gateways_live(m, 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (gap, answered, _) = block_in_place(|| ping.finish());
    assert!(answered > 10, "only {answered} replies");
    println!("failover: killed {gw} (not in use): longest ping gap {gap:?}");
    gap
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_on_every_node_cross_the_mesh_through_gateways() {
    let _one_at_a_time = exclusive().await;
    if !require_root("pods_on_every_node_cross_the_mesh_through_gateways") {
        return;
    }
    let mut m = setup().await;
    block_in_place(|| connectivity(&m));
    block_in_place(|| policy(&m));
    vni_on_every_hop(&m).await;
    spoofing(&mut m).await;
    status_shows_gateways_and_agents(&m).await;
    failover(&mut m).await;
    block_in_place(|| connectivity(&m));
}
