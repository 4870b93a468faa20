//! NetworkPolicy through the agent's compiler into the real datapath (issue
//! 13), with real packets between network namespaces (needs root): port
//! ranges of any width, named ports per pod, fail-closed relabels and pod
//! starts, ipBlock with except.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clustermesh_node_agent::datapath::{Reason, TunnelKind};
use clustermesh_proto::v1 as pb;
use common::policy::{
    Records, desired, from_app, identity, ip_block, named, policy, probe, program, tcp_named,
    tcp_range,
};
use common::topology::{Topology, identity as id_of};
use common::{ns_cmd, require_root, start_echo_server};

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
const POD_B1: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 2);
const POD_B2: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 3);
const QUICK: Duration = Duration::from_millis(400);

fn client() -> u32 {
    id_of(1, 0)
}
fn server() -> u32 {
    id_of(2, 0)
}

/// Pod A (client) behind gateway A; pods B1 and B2 (one identity, `app=server`) behind B.
fn mesh() -> Topology {
    let mut t = Topology::new(
        TunnelKind::Vxlan,
        [
            &[(POD_A, client())],
            &[(POD_B1, server()), (POD_B2, server())],
        ],
    );
    t.load_and_program();
    t
}

fn records(policies: Vec<pb::Policy>) -> Records {
    Records {
        identities: vec![
            identity(client(), "c1", "client"),
            identity(server(), "c2", "server"),
        ],
        policies,
        ..Default::default()
    }
}

fn serve(t: &Topology, g: usize, n: usize, ports: &[u16]) {
    for p in ports {
        let addr = SocketAddr::from((t.pod(g, n).ip, *p));
        start_echo_server(&t.pod(g, n).ns, addr).expect("echo server");
    }
}

/// Probes TCP `port` of `dst` from pod A: true if the echo came back.
fn reach(t: &Topology, dst: Ipv4Addr, port: u16) -> bool {
    reach_from(&t.pod(0, 0).ns, dst, port)
}

fn reach_from(ns: &str, dst: Ipv4Addr, port: u16) -> bool {
    // A denied SYN is dropped: the probe can only time out. An allowed one
    // answers within a few ms, so a short timeout plus one retry decides.
    let addr = SocketAddr::from((dst, port));
    probe(ns, addr, QUICK) || probe(ns, addr, QUICK * 2)
}

#[test]
fn port_ranges_of_any_width() {
    if !require_root("port_ranges_of_any_width") {
        return;
    }
    let t = mesh();
    serve(&t, 1, 0, &[1500, 2000, 2001, 65535]);
    let rule = |hi| pb::PolicyRule {
        peers: vec![from_app("client")],
        ports: vec![tcp_range(1, Some(hi))],
    };
    let [_, c] = program(
        &t,
        &records(vec![policy("range", "server", false, rule(2000))]),
    );
    let entries = t.datapath(1).policy_entries().expect("entries").len();
    println!(
        "1-2000: {} compiled entries, {entries} in cm_policy_lpm",
        c.rules.len()
    );
    assert_eq!(entries, 16);
    let denied_before = t
        .datapath(1)
        .metrics()
        .expect("metrics")
        .packets(Reason::DropPolicyDeny);
    assert!(reach(&t, POD_B1, 1500), "1500 is inside 1-2000");
    assert!(reach(&t, POD_B1, 2000), "2000 is the range's last port");
    assert!(!reach(&t, POD_B1, 2001), "2001 is outside 1-2000");
    assert!(!reach(&t, POD_B1, 65535));
    let denied = t
        .datapath(1)
        .metrics()
        .expect("metrics")
        .packets(Reason::DropPolicyDeny);
    assert!(denied > denied_before, "the denials are policy drops");

    let [_, c] = program(
        &t,
        &records(vec![policy("range", "server", false, rule(65535))]),
    );
    let entries = t.datapath(1).policy_entries().expect("entries").len();
    println!(
        "1-65535: {} compiled entries, {entries} in cm_policy_lpm",
        c.rules.len()
    );
    assert_eq!(entries, 16, "all ports in 16 prefixes");
    for p in [1500, 2000, 2001, 65535] {
        assert!(reach(&t, POD_B1, p), "{p} is inside 1-65535");
    }
    assert_eq!(c.report.refused_total(), 0);
}

#[test]
fn named_ports_resolve_per_pod() {
    if !require_root("named_ports_resolve_per_pod") {
        return;
    }
    let t = mesh();
    serve(&t, 1, 0, &[8080, 9090]);
    serve(&t, 1, 1, &[8080, 9090]);
    let rule = pb::PolicyRule {
        peers: vec![from_app("client")],
        ports: vec![tcp_named("http")],
    };
    let with_ports = |policies| {
        let mut r = records(policies);
        r.named_ports = [
            (POD_B1, vec![named("http", 8080)]),
            (POD_B2, vec![named("http", 9090)]),
        ]
        .into();
        r
    };
    for (what, p) in [
        (
            "ingress of the servers",
            policy("http-in", "server", false, rule.clone()),
        ),
        (
            "egress of the client",
            policy(
                "http-out",
                "client",
                true,
                pb::PolicyRule {
                    peers: vec![from_app("server")],
                    ..rule.clone()
                },
            ),
        ),
    ] {
        program(&t, &with_ports(vec![p]));
        assert!(reach(&t, POD_B1, 8080), "{what}: B1's http is 8080");
        assert!(reach(&t, POD_B2, 9090), "{what}: B2's http is 9090");
        assert!(!reach(&t, POD_B1, 9090), "{what}: 9090 is not B1's http");
        assert!(!reach(&t, POD_B2, 8080), "{what}: 8080 is not B2's http");
    }
}

/// Probes B's ports continuously from pod A in the background.
struct Prober {
    stop: Arc<AtomicBool>,
    handles: Vec<std::thread::JoinHandle<Vec<(Instant, bool)>>>,
}

impl Prober {
    fn start(t: &Topology, targets: &[(Ipv4Addr, u16)]) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let handles = targets
            .iter()
            .map(|(ip, port)| {
                let (ns, addr, stop) = (
                    t.pod(0, 0).ns.clone(),
                    SocketAddr::from((*ip, *port)),
                    stop.clone(),
                );
                std::thread::spawn(move || {
                    let mut out = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let ok = probe(&ns, addr, Duration::from_millis(150));
                        out.push((started, ok));
                        if ok {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                    out
                })
            })
            .collect();
        Prober { stop, handles }
    }

    fn finish(self) -> Vec<Vec<(Instant, bool)>> {
        self.stop.store(true, Ordering::Relaxed);
        self.handles
            .into_iter()
            .map(|h| h.join().expect("prober"))
            .collect()
    }
}

fn wait_until(what: &str, f: impl Fn() -> bool) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if f() {
            return Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

/// The final policy: `app=locked` admits TCP 80 from the client, nothing else.
fn locked_policy() -> pb::Policy {
    policy(
        "locked",
        "locked",
        false,
        pb::PolicyRule {
            peers: vec![from_app("client")],
            ports: vec![tcp_range(80, None)],
        },
    )
}

#[test]
fn relabel_and_pod_start_fail_closed() {
    if !require_root("relabel_and_pod_start_fail_closed") {
        return;
    }
    let t = mesh();
    serve(&t, 1, 0, &[80, 81]);
    serve(&t, 1, 1, &[80, 81]);
    let (open, locked, fresh) = (id_of(2, 5), id_of(2, 6), id_of(2, 7));
    let mut rec = records(vec![locked_policy()]);
    rec.identities.push(identity(open, "c2", "open"));
    let apply = |rec: &Records, ids: &BTreeMap<Ipv4Addr, u32>, skip: &[Ipv4Addr]| {
        for g in [1, 0] {
            let (d, _) = desired(&t, g, rec, ids, skip);
            t.datapath(g).apply(&d).expect("apply");
        }
    };

    // B1 starts as app=open (no policy selects it); B2 is not started yet.
    let mut ids: BTreeMap<Ipv4Addr, u32> = [(POD_B1, open)].into();
    apply(&rec, &ids, &[POD_B2]);
    assert!(reach(&t, POD_B1, 81), "before the relabel B1 is open");

    // Relabel B1 to `locked` and start B2 as `locked` (a new identity each),
    // their identity records not known yet; probe all along.
    let prober = Prober::start(
        &t,
        &[(POD_B1, 80), (POD_B1, 81), (POD_B2, 80), (POD_B2, 81)],
    );
    std::thread::sleep(Duration::from_millis(300));
    ids.insert(POD_B1, locked);
    ids.insert(POD_B2, fresh);
    apply(&rec, &ids, &[]);
    // From here the maps hold the relabel: a probe that started before this
    // (while the old, open state was still programmed) may legitimately pass.
    let relabel = Instant::now();
    let compiled = desired(&t, 1, &rec, &ids, &[]).1;
    assert_eq!(
        compiled.report.fail_closed_identities, 2,
        "{:?}",
        compiled.report
    );
    // The records arrive a second later (the fail-closed window of this test).
    std::thread::sleep(Duration::from_secs(1));
    rec.identities.push(identity(locked, "c2", "locked"));
    rec.identities.push(identity(fresh, "c2", "locked"));
    let known = Instant::now();
    apply(&rec, &ids, &[]);
    let programmed = known.elapsed();
    let opened = wait_until("B1:80 and B2:80 admitted", || {
        reach(&t, POD_B1, 80) && reach(&t, POD_B2, 80)
    });
    std::thread::sleep(Duration::from_millis(300));
    let runs = prober.finish();

    let after = |v: &Vec<(Instant, bool)>| -> Vec<(Instant, bool)> {
        v.iter().copied().filter(|(at, _)| *at >= relabel).collect()
    };
    for (i, name) in ["B1:81", "B2:81"].iter().enumerate() {
        let probes = after(&runs[2 * i + 1]);
        assert!(
            probes.len() >= 5,
            "{name}: too few probes ({})",
            probes.len()
        );
        assert!(
            probes.iter().all(|(_, ok)| !ok),
            "{name}: a probe passed that the final policy denies"
        );
    }
    for (i, name) in ["B1:80", "B2:80"].iter().enumerate() {
        let probes = after(&runs[2 * i]);
        let early = probes.iter().filter(|(at, ok)| *ok && *at < known).count();
        assert_eq!(early, 0, "{name}: admitted before its identity was known");
        let first = probes
            .iter()
            .find(|(_, ok)| *ok)
            .map(|(at, _)| at.saturating_duration_since(known));
        println!(
            "{name}: {} probes after the relabel; denied while unknown; first admitted {:?} after the records were applied (apply took {programmed:?})",
            probes.len(),
            first
        );
    }
    println!(
        "fail-closed window in this test: {:?} (records 1 s after the relabel); admitted {:?} after the relabel",
        known - relabel,
        opened - relabel
    );
}

#[test]
fn ip_block_with_except_egress() {
    if !require_root("ip_block_with_except_egress") {
        return;
    }
    let t = mesh();
    // Addresses outside the mesh: on gateway A's loopback (the packets leave
    // pod A through from_pod to the gateway's own stack).
    let gw = t.gws[0].ns.clone();
    let sh = |args: &[&str]| {
        let out = ns_cmd(&gw, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let outside = ["198.51.100.1", "198.51.100.200", "203.0.113.1", "10.2.9.9"];
    for a in outside {
        sh(&["ip", "addr", "add", &format!("{a}/32"), "dev", "lo"]);
        start_echo_server(&gw, SocketAddr::from((a.parse::<Ipv4Addr>().unwrap(), 80)))
            .expect("outside server");
    }
    sh(&[
        "ip",
        "route",
        "add",
        &format!("{POD_A}/32"),
        "dev",
        &t.pod(0, 0).host_if,
    ]);
    serve(&t, 1, 0, &[80]);
    let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();

    let block = policy(
        "to-outside",
        "client",
        true,
        pb::PolicyRule {
            peers: vec![
                ip_block("198.51.100.0/24", &["198.51.100.128/25"]),
                // Covers pod B1: a mesh pod's IP is not selected by an ipBlock.
                ip_block("10.2.0.0/16", &[]),
            ],
            ports: vec![tcp_range(80, None)],
        },
    );
    let [c, _] = program(&t, &records(vec![block]));
    println!(
        "ipBlock: {} entries, {} prefixes in cm_policy_cidr",
        c.rules.len(),
        c.cidrs.len()
    );
    assert_eq!(c.cidrs.len(), 3);
    assert!(reach(&t, ip("198.51.100.1"), 80), "inside the cidr");
    assert!(!reach(&t, ip("198.51.100.200"), 80), "inside the except");
    assert!(!reach(&t, ip("203.0.113.1"), 80), "outside the cidr");
    assert!(
        reach(&t, ip("10.2.9.9"), 80),
        "outside the mesh, inside 10.2.0.0/16"
    );
    assert!(
        !reach(&t, POD_B1, 80),
        "a mesh pod is not selected by an ipBlock"
    );
}

#[test]
fn ip_block_with_except_ingress_native() {
    if !require_root("ip_block_with_except_ingress_native") {
        return;
    }
    // Native routing: B receives A's pods unencapsulated and, since B's
    // ipcache does not know them, as `world` peers outside the mesh.
    const POD_A2: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 3);
    let mut t = Topology::new(
        TunnelKind::Vxlan,
        [
            &[(POD_A, client()), (POD_A2, client())],
            &[(POD_B1, server())],
        ],
    );
    t.load_and_program();
    t.go_native(["10.1.0.0/24", "10.2.0.0/24"]);
    serve(&t, 1, 0, &[8080]);
    let rec = records(vec![policy(
        "from-outside",
        "server",
        false,
        pb::PolicyRule {
            peers: vec![ip_block("10.1.0.0/24", &["10.1.0.3/32"])],
            ports: vec![tcp_range(8080, None)],
        },
    )]);
    let none = BTreeMap::new();
    let (mut d, c) = desired(&t, 1, &rec, &none, &[]);
    d.ipcache
        .retain(|p, _| p.addr() != POD_A && p.addr() != POD_A2);
    t.datapath(1).apply(&d).expect("apply");
    assert_eq!(c.cidrs.len(), 2);
    assert!(
        reach_from(&t.pod(0, 0).ns, POD_B1, 8080),
        "10.1.0.2 is inside the cidr"
    );
    assert!(
        !reach_from(&t.pod(0, 1).ns, POD_B1, 8080),
        "10.1.0.3 is the except"
    );

    // Once B knows A's pod as a mesh endpoint, the ipBlock no longer selects it.
    t.datapath(1)
        .apply(&desired(&t, 1, &rec, &none, &[]).0)
        .expect("apply");
    assert!(
        !reach_from(&t.pod(0, 0).ns, POD_B1, 8080),
        "a mesh pod is not selected by an ipBlock"
    );
}
