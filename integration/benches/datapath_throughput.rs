//! Cross-cluster TCP throughput between two pods: through the clustermesh
//! datapath (agents programming eBPF from two connected control planes,
//! VXLAN with VNI = source identity) and through plain kernel VXLAN routing
//! in the same network-namespace topology, in one run.
//!
//! Needs root, iperf3 and the workspace binaries:
//! ```text
//! cargo build --release --workspace --bins
//! cargo bench -p clustermesh-integration --bench datapath_throughput
//! ```
//! `CM_BENCH_SECONDS` sets the iperf3 duration (default 10 s),
//! `CM_BENCH_ROUNDS` the number of rounds (default 1; each round measures
//! both paths), `CM_BENCH_AGENT_ARGS` extra agent flags. Results are printed
//! as a Markdown table (docs/benchmarks.md).

#[path = "../tests/datapath_support/mod.rs"]
mod datapath_support;

use clustermesh_integration::bench_env::env_or;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use clustermesh_integration::apiserver::Cluster;
use datapath_support::agent::{Agent, relay_into_netns};
use datapath_support::manifests::{ServiceSpec, write_cluster};
use datapath_support::topology::{Topology, UNDERLAY_IF, ip};
use datapath_support::{connect_peer, require_root, start_cluster};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 10);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 10);
const POD_MTU: &str = "1450";

struct Throughput {
    gbps: f64,
    retransmits: u64,
}

/// One iperf3 run from the client pod to the server pod.
fn iperf(t: &Topology, secs: u64) -> Throughput {
    let (gbps, retransmits) = clustermesh_netkit::traffic::iperf(
        &t.pod("client-a").ns,
        &t.pod("server-b").ns,
        SERVER,
        secs,
    );
    Throughput { gbps, retransmits }
}

/// Plain kernel VXLAN between the gateways, pod CIDRs routed over it.
fn kernel_vxlan(t: &Topology, up: bool) {
    for (g, gw) in t.gws.iter().enumerate() {
        if !up {
            ip(&["-n", &gw.ns, "link", "del", "vx0"]);
            continue;
        }
        let peer = &t.gws[1 - g];
        let (me, them) = (gw.underlay_ip.to_string(), peer.underlay_ip.to_string());
        ip(&[
            "-n",
            &gw.ns,
            "link",
            "add",
            "vx0",
            "type",
            "vxlan",
            "id",
            "42",
            "local",
            &me,
            "remote",
            &them,
            "dstport",
            "8472",
            "dev",
            UNDERLAY_IF,
        ]);
        ip(&["-n", &gw.ns, "link", "set", "vx0", "mtu", POD_MTU, "up"]);
        let addr = format!("192.168.255.{}/30", g + 1);
        ip(&["-n", &gw.ns, "addr", "add", &addr, "dev", "vx0"]);
        let via = format!("192.168.255.{}", 2 - g);
        ip(&[
            "-n",
            &gw.ns,
            "route",
            "add",
            &peer.pod_cidr,
            "via",
            &via,
            "dev",
            "vx0",
        ]);
    }
}

/// Takes the clustermesh datapath out of the way: programs detached (the
/// agents are stopped), tunnel device removed (it holds UDP 8472).
fn datapath_off(t: &Topology) {
    for gw in &t.gws {
        clustermesh_node_agent::datapath::detach_all(&gw.pin_dir).expect("detach");
        let _ = Command::new("ip")
            .args(["-n", &gw.ns, "link", "del", "cm_tunnel"])
            .output();
    }
}

async fn start_agents(t: &Topology, clusters: &[&Cluster]) -> Vec<Agent> {
    let mut agents = Vec::new();
    for (g, c) in clusters.iter().enumerate() {
        let gw = &t.gws[g];
        let extra = std::env::var("CM_BENCH_AGENT_ARGS").unwrap_or_default();
        let extra: Vec<&str> = extra.split_whitespace().collect();
        let mut agent = Agent::start(
            &gw.ns,
            &gw.node,
            &c.tls_dir(),
            &gw.pin_dir,
            &gw.cgroup,
            &extra,
            c.dir.path(),
        );
        agent
            .wait("agent programmed", Duration::from_secs(30), |s| {
                s["healthy"] == true
                    && s["datapath"]["local_pods"] == 1
                    && s["datapath"]["remote_endpoints"].as_u64() >= Some(1)
            })
            .await;
        agents.push(agent);
    }
    agents
}

async fn run() {
    let secs = env_or::<u64>("CM_BENCH_SECONDS", 10);
    let rounds = env_or::<u64>("CM_BENCH_ROUNDS", 1).max(1);
    let t = Topology::new(
        "cmb",
        [
            &[("client-a", "frontend", CLIENT)],
            &[("server-b", "frontend", SERVER)],
        ],
    );
    for p in t.gws.iter().flat_map(|g| &g.pods) {
        ip(&["-n", &p.ns, "link", "set", "eth0", "mtu", POD_MTU]);
    }
    // Both control planes run during both measurements (same background load).
    let dirs = [
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    ];
    for (g, dir) in dirs.iter().enumerate() {
        let svc = ServiceSpec {
            cluster_ip: ["10.96.1.10", "10.97.1.10"][g],
            affinity: "none",
            backends: vec![],
        };
        write_cluster(dir.path(), &t.gws[g], &svc, false);
    }
    let a = start_cluster("east", 1, dirs[0].path()).await;
    let b = start_cluster("west", 2, dirs[1].path()).await;
    connect_peer(&a, &b).await;
    connect_peer(&b, &a).await;
    for (g, c) in [&a, &b].iter().enumerate() {
        relay_into_netns(&t.gws[g].ns, c.api().grpc.clone()).await;
    }

    let (mut ours, mut idle, mut base) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate the order, so a drift in background load favours neither.
        for ours_now in [round % 2 == 1, round % 2 == 0] {
            if ours_now {
                let mut agents = start_agents(&t, &[&a, &b]).await;
                ours.push(tokio::task::block_in_place(|| iperf(&t, secs)));
                // The programs stay attached (pinned links) when the agents stop.
                for ag in &mut agents {
                    ag.stop();
                }
                idle.push(tokio::task::block_in_place(|| iperf(&t, secs)));
            } else {
                datapath_off(&t);
                kernel_vxlan(&t, true);
                base.push(tokio::task::block_in_place(|| iperf(&t, secs)));
                kernel_vxlan(&t, false);
            }
        }
    }
    let mean = |v: &[Throughput]| v.iter().map(|r| r.gbps).sum::<f64>() / v.len() as f64;
    let list = |v: &[Throughput]| {
        v.iter()
            .map(|r| format!("{:.2} ({} retr.)", r.gbps, r.retransmits))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("\n| path | TCP throughput, mean Gbit/s | runs (Gbit/s) |\n|---|---|---|");
    println!(
        "| clustermesh datapath (eBPF, VXLAN, VNI = identity) | {:.2} | {} |",
        mean(&ours),
        list(&ours)
    );
    println!(
        "| clustermesh datapath, agents stopped (programs pinned) | {:.2} | {} |",
        mean(&idle),
        list(&idle)
    );
    println!(
        "| plain kernel VXLAN routing | {:.2} | {} |",
        mean(&base),
        list(&base)
    );
    println!(
        "\nratio (ours / kernel VXLAN): {:.1} % with the agents running, {:.1} % with them stopped \
         ({rounds} round(s) of {secs} s, one TCP stream each)",
        100.0 * mean(&ours) / mean(&base),
        100.0 * mean(&idle) / mean(&base)
    );
}

fn main() {
    if !require_root("datapath_throughput") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run());
}
