//! Worker → gateway ═ gateway → worker (DESIGN §7), measured two ways in one
//! run on the same network namespaces (`datapath_support::nodes`):
//!
//! - **throughput**: one TCP stream (iperf3) from a pod on east's worker to a
//!   pod on west's worker, through the clustermesh datapath (agents on all
//!   nodes, VXLAN with VNI = identity, relayed by both gateways) and through
//!   plain kernel VXLAN routed over the same three hops (one VXLAN device per
//!   hop, routes for the pod CIDRs, the kernel forwarding at each gateway);
//! - **failover**: under a 5/s ping between the same pods, the east gateway
//!   in use is SIGKILLed with its links down, `CM_BENCH_KILLS` times (default
//!   5; restored between kills); the longest gap of each kill is printed and
//!   the maximum is compared with the 3 s bar.
//!
//! Needs root, iperf3 and the workspace binaries:
//! ```text
//! cargo build --release --workspace --bins
//! cargo bench -p clustermesh-integration --bench datapath_hops
//! ```
//! `CM_BENCH_SECONDS` (default 10) and `CM_BENCH_ROUNDS` (default 2) as in
//! `datapath_throughput`. `CM_BENCH_PERF=DIR` also profiles every iperf3 run
//! with `perf record -a -g` (DIR/<path>-<round>.data) and records every freed
//! packet with its drop reason (`skb:kfree_skb`, DIR/<path>-<round>-drops.data),
//! over the middle of the run; docs/benchmarks.md says how they were read.

#[path = "../tests/datapath_support/mod.rs"]
mod datapath_support;

use clustermesh_integration::bench_env::env_or;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use clustermesh_integration::apiserver::Cluster;
use clustermesh_integration::eventually;
use datapath_support::agent::{Agent, relay_into_netns};
use datapath_support::nodes::{LAN_IF, Node, NodeSpec, Nodes, WAN_IF, write_manifests};
use datapath_support::topology::ip;
use datapath_support::traffic::GapPing;
use datapath_support::{connect_peer, require_root, start_cluster, wait_gateways_live};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 1, 3, 10);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 2, 2, 10);
const POD_MTU: &str = "1450";

/// One iperf3 run; (Gbit/s, retransmits). With `CM_BENCH_PERF`, profiled
/// as `label` (see the file header).
fn iperf(t: &Nodes, secs: u64, label: &str) -> (f64, u64) {
    let perf = std::env::var_os("CM_BENCH_PERF").map(|dir| {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("creating CM_BENCH_PERF");
        let window = secs.saturating_sub(3).max(1);
        // Started a second into the run (past the handshake), for its middle.
        let record = |extra: &str, file: String| {
            let out = dir.join(file);
            Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "sleep 1 && exec perf record {extra} -a -q -o '{}' -- sleep {window}",
                    out.display()
                ))
                .spawn()
                .expect("perf record (Debian package linux-perf)")
        };
        (
            record("-g", format!("{label}.data")),
            record("-e skb:kfree_skb", format!("{label}-drops.data")),
        )
    });
    let r = clustermesh_netkit::traffic::iperf(
        &t.pod("client-e").ns,
        &t.pod("server-w").ns,
        SERVER,
        secs,
    );
    if let Some((mut cpu, mut drops)) = perf {
        let _ = cpu.wait();
        let _ = drops.wait();
    }
    r
}

/// A point-to-point kernel VXLAN device `dev` (VNI `vni`) from `a` to `b`
/// over `underlay`, with 10.255.<vni>.1/30 on `a`'s side and .2 on `b`'s.
fn vxlan_hop(a: &Node, a_ip: Ipv4Addr, b: &Node, b_ip: Ipv4Addr, underlay: &str, vni: u8) {
    for (n, me, them, host) in [(a, a_ip, b_ip, 1), (b, b_ip, a_ip, 2)] {
        let dev = format!("kvx{vni}");
        ip(&[
            "-n",
            &n.ns,
            "link",
            "add",
            &dev,
            "type",
            "vxlan",
            "id",
            &vni.to_string(),
            "local",
            &me.to_string(),
            "remote",
            &them.to_string(),
            "dstport",
            "8472",
            "dev",
            underlay,
        ]);
        ip(&["-n", &n.ns, "link", "set", &dev, "mtu", POD_MTU, "up"]);
        ip(&[
            "-n",
            &n.ns,
            "addr",
            "add",
            &format!("10.255.{vni}.{host}/30"),
            "dev",
            &dev,
        ]);
    }
}

/// Plain kernel VXLAN over the three hops, routes for both pod CIDRs.
fn kernel_path(t: &Nodes, gw: &str, up: bool) {
    let (we, ge, gw_w, ww) = (
        t.node("east-w1"),
        t.node(gw),
        t.node("west-gw1"),
        t.node("west-w1"),
    );
    if !up {
        for (n, devs) in [(we, &[1][..]), (ge, &[1, 2]), (gw_w, &[2, 3]), (ww, &[3])] {
            for d in devs {
                ip(&["-n", &n.ns, "link", "del", &format!("kvx{d}")]);
            }
        }
        return;
    }
    let (ge_wan, gw_wan) = (ge.wan_ip.expect("wan"), gw_w.wan_ip.expect("wan"));
    vxlan_hop(we, we.lan_ip, ge, ge.lan_ip, LAN_IF, 1);
    vxlan_hop(ge, ge_wan, gw_w, gw_wan, WAN_IF, 2);
    vxlan_hop(gw_w, gw_w.lan_ip, ww, ww.lan_ip, LAN_IF, 3);
    let route = |n: &Node, cidr: &str, via: &str| {
        ip(&["-n", &n.ns, "route", "add", cidr, "via", via]);
    };
    route(we, "10.2.0.0/16", "10.255.1.2");
    route(ge, "10.2.0.0/16", "10.255.2.2");
    route(ge, &we.pod_cidr, "10.255.1.1");
    route(gw_w, "10.1.0.0/16", "10.255.2.1");
    route(gw_w, &ww.pod_cidr, "10.255.3.2");
    route(ww, "10.1.0.0/16", "10.255.3.1");
}

/// The clustermesh datapath out of the way on every node (it holds UDP 8472).
fn datapath_off(t: &Nodes) {
    for n in t.clusters.iter().flatten() {
        clustermesh_node_agent::datapath::detach_all(&n.pin_dir).expect("detach");
        let _ = Command::new("ip")
            .args(["-n", &n.ns, "link", "del", "cm_tunnel"])
            .output();
    }
}

struct Bench {
    agents: BTreeMap<String, Agent>,
    clusters: Vec<Cluster>,
    _dirs: Vec<tempfile::TempDir>,
    t: Nodes,
}

impl Bench {
    fn start_agents(&mut self) {
        for (c, cluster) in self.clusters.iter().enumerate() {
            for n in &self.t.clusters[c] {
                let a = Agent::start_node(
                    &n.ns,
                    &n.name,
                    &cluster.tls_dir(),
                    &n.pin_dir,
                    &["--lb-cgroup", "none"],
                    cluster.dir.path(),
                );
                self.agents.insert(n.name.clone(), a);
            }
        }
    }

    async fn wait_programmed(&mut self) {
        for a in self.agents.values_mut() {
            a.wait("agent programmed", Duration::from_secs(40), |s| {
                s["healthy"] == true
                    && s["datapath"]["remote_endpoints"].as_u64() >= Some(1)
                    && s["datapath"]["remote_clusters"]
                        .as_array()
                        .is_some_and(|v| v.len() == 1)
            })
            .await;
        }
    }

    fn gateway_in_use(&self) -> Option<String> {
        let s = self.agents["east-w1"].status()?;
        let via = s["datapath"]["remote_clusters"].as_array()?.first()?["gateway"]
            .as_str()?
            .to_string();
        self.t.clusters[0]
            .iter()
            .find(|n| n.lan_ip.to_string() == via)
            .map(|n| n.name.clone())
    }
}

/// Longest gap of a 5/s ping around one kill of the gateway in use.
async fn one_kill(b: &mut Bench) -> (String, Duration, Duration) {
    // Both east gateways live first: the worker's choice among them is then
    // the deterministic one it comes back to after the restore.
    wait_gateways_live(&b.clusters[0], "east", 2, Duration::from_secs(30)).await;
    let gw = b.gateway_in_use().expect("gateway in use");
    let other = if gw == "east-gw1" {
        "east-gw2"
    } else {
        "east-gw1"
    };
    let ping = GapPing::start(&b.t.pod("client-e").ns, SERVER);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = Instant::now();
    b.agents.get_mut(&gw).expect("agent").kill();
    b.t.links(&gw, false);
    eventually(
        "the worker on the other gateway",
        Duration::from_secs(30),
        || async { (b.gateway_in_use().as_deref() == Some(other)).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let switched = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (gap, _, _) = tokio::task::block_in_place(|| ping.finish());
    // Restore: links up, agent back, both gateways live again.
    b.t.links(&gw, true);
    b.agents.get_mut(&gw).expect("agent").start_again();
    wait_gateways_live(&b.clusters[0], "east", 2, Duration::from_secs(30)).await;
    eventually(
        "the worker back on the gateway it used with both live",
        Duration::from_secs(30),
        || async { (b.gateway_in_use().as_deref() == Some(gw.as_str())).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nworker status: {:?}\nrestarted gateway's log:\n{}",
            b.agents["east-w1"].status(),
            b.agents[&gw].log()
        )
    });
    (gw, switched, gap)
}

async fn run() {
    let secs = env_or::<u64>("CM_BENCH_SECONDS", 10);
    let rounds = env_or::<u64>("CM_BENCH_ROUNDS", 2).max(1);
    let kills = env_or::<u64>("CM_BENCH_KILLS", 5);
    let gw = |name| NodeSpec {
        name,
        gateway: true,
        pods: &[],
    };
    let t = Nodes::new(
        "cmh",
        &[
            &[
                gw("gw1"),
                gw("gw2"),
                NodeSpec {
                    name: "w1",
                    gateway: false,
                    pods: &[("client-e", "client", CLIENT)],
                },
            ],
            &[
                gw("gw1"),
                NodeSpec {
                    name: "w1",
                    gateway: false,
                    pods: &[("server-w", "server", SERVER)],
                },
            ],
        ],
    );
    for p in t.clusters.iter().flatten().flat_map(|n| &n.pods) {
        ip(&["-n", &p.ns, "link", "set", "eth0", "mtu", POD_MTU]);
    }
    let dirs = vec![
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    ];
    write_manifests(dirs[0].path(), &t.clusters[0], 5201, None);
    write_manifests(dirs[1].path(), &t.clusters[1], 5201, None);
    let east = start_cluster("east", 1, dirs[0].path()).await;
    let west = start_cluster("west", 2, dirs[1].path()).await;
    connect_peer(&east, &west).await;
    connect_peer(&west, &east).await;
    for (c, cluster) in [&east, &west].iter().enumerate() {
        for n in &t.clusters[c] {
            relay_into_netns(&n.ns, cluster.api().grpc.clone()).await;
        }
    }
    let mut b = Bench {
        agents: BTreeMap::new(),
        clusters: vec![east, west],
        _dirs: dirs,
        t,
    };

    // Failover first (the datapath is needed; throughput takes it down and up).
    b.start_agents();
    b.wait_programmed().await;
    let mut gaps = Vec::new();
    for _ in 0..kills {
        let (gw, switched, gap) = one_kill(&mut b).await;
        println!("kill {gw}: worker switched after {switched:?}, longest ping gap {gap:?}");
        gaps.push((switched, gap));
    }

    let (mut ours, mut base) = (Vec::new(), Vec::new());
    let in_use = b.gateway_in_use().expect("gateway in use");
    for round in 0..rounds {
        for ours_now in [round % 2 == 1, round % 2 == 0] {
            if ours_now {
                if b.agents.is_empty() {
                    b.start_agents();
                }
                b.wait_programmed().await;
                ours.push(tokio::task::block_in_place(|| {
                    iperf(&b.t, secs, &format!("ours-{round}"))
                }));
            } else {
                b.agents.clear();
                datapath_off(&b.t);
                kernel_path(&b.t, &in_use, true);
                base.push(tokio::task::block_in_place(|| {
                    iperf(&b.t, secs, &format!("kernel-{round}"))
                }));
                kernel_path(&b.t, &in_use, false);
            }
        }
    }
    let mean = |v: &[(f64, u64)]| v.iter().map(|r| r.0).sum::<f64>() / v.len() as f64;
    let list = |v: &[(f64, u64)]| {
        v.iter()
            .map(|r| format!("{:.2} ({} retr.)", r.0, r.1))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "\n| worker → gateway → gateway → worker | TCP, mean Gbit/s | runs (Gbit/s) |\n|---|---|---|"
    );
    println!(
        "| clustermesh datapath (agents on every node, relayed twice) | {:.2} | {} |",
        mean(&ours),
        list(&ours)
    );
    println!(
        "| plain kernel VXLAN, routed over the same three hops | {:.2} | {} |",
        mean(&base),
        list(&base)
    );
    println!(
        "\nratio (ours / kernel): {:.1} % ({rounds} round(s) of {secs} s, one TCP stream)",
        100.0 * mean(&ours) / mean(&base)
    );
    let worst = gaps.iter().map(|g| g.1).max().unwrap_or_default();
    let worst_switch = gaps.iter().map(|g| g.0).max().unwrap_or_default();
    println!(
        "\nfailover over {} kills (default --gateway-lease 1s): longest ping gap p100 {worst:?} \
         (bar 3 s: {}), slowest switch {worst_switch:?}; gaps {:?}",
        gaps.len(),
        if worst <= Duration::from_secs(3) {
            "met"
        } else {
            "MISSED"
        },
        gaps.iter().map(|g| g.1).collect::<Vec<_>>()
    );
}

fn main() {
    if !require_root("datapath_hops") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run());
}
