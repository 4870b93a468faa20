//! A replay of the upstream Kubernetes e2e NetworkPolicy cases
//! (`test/e2e/network/netpol`: namespaces x, y, z × pods a, b, c, ports 80
//! and 81 over TCP and UDP) across two clusters in network namespaces (needs
//! root): the servers are cluster A's nine pods, the clients cluster B's nine
//! (same namespaces and labels), every policy is global and written into both
//! clusters, so ingress is enforced at A (`from_tunnel`) and egress at B
//! (`from_pod`). Each case's expectation is written out by hand from the
//! upstream truth table — independent of the agent's compiler. Probes run in
//! parallel: 9 × 9 pairs × 2 ports × 2 protocols per case.

use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::datapath_support::agent::Agent;
use crate::datapath_support::topology::{Gateway, Topology};
use crate::datapath_support::traffic::start_whoami;
use crate::datapath_support::*;
use clustermesh_integration::manifests::{self, write};
use clustermesh_node_agent::datapath::Datapath;
use clustermesh_node_agent::datapath::netns::{named_netns_path, run_in_netns};

const T: Duration = Duration::from_secs(30);
const NS: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
const PORTS: [u16; 2] = [80, 81];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

/// (namespace, pod) of the model.
type Who = (&'static str, &'static str);

struct Case {
    name: &'static str,
    /// NetworkPolicy documents (the global annotation is added).
    policies: Vec<String>,
    /// The upstream truth: may client `c` reach server `s` on (port, proto)?
    expect: fn(c: Who, s: Who, port: u16, proto: Proto) -> bool,
}

fn np(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\n  annotations:\n    clustermesh.io/global: \"true\"\nspec:\n{spec}"
    )
}

fn cases() -> Vec<Case> {
    let pod_a = "  podSelector:\n    matchLabels:\n      pod: a\n";
    let all = "  podSelector: {}\n";
    vec![
        Case {
            name: "default-deny-ingress",
            policies: vec![np(
                "x",
                "deny-ingress",
                &format!("{all}  policyTypes: [Ingress]\n"),
            )],
            expect: |_, s, _, _| s.0 != "x",
        },
        Case {
            name: "default-deny-all",
            policies: vec![np(
                "x",
                "deny-all",
                &format!("{all}  policyTypes: [Ingress, Egress]\n"),
            )],
            expect: |c, s, _, _| s.0 != "x" && c.0 != "x",
        },
        Case {
            name: "allow-from-pod-in-server-namespace",
            policies: vec![np(
                "x",
                "a-from-b",
                &format!(
                    "{pod_a}  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          pod: b\n"
                ),
            )],
            expect: |c, s, _, _| s != ("x", "a") || c == ("x", "b"),
        },
        Case {
            name: "allow-from-other-namespace-by-namespace-selector",
            policies: vec![np(
                "x",
                "a-from-y",
                &format!(
                    "{pod_a}  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels:\n          ns: y\n"
                ),
            )],
            expect: |c, s, _, _| s != ("x", "a") || c.0 == "y",
        },
        Case {
            name: "namespace-selector-default-name-label",
            policies: vec![np(
                "x",
                "a-from-y-by-name",
                &format!(
                    "{pod_a}  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels:\n          kubernetes.io/metadata.name: y\n"
                ),
            )],
            expect: |c, s, _, _| s != ("x", "a") || c.0 == "y",
        },
        Case {
            name: "pod-selector-or-namespace-selector-match-expressions",
            policies: vec![np(
                "x",
                "a-from-b-or-not-x",
                &format!(
                    "{pod_a}  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - podSelector:\n        matchExpressions:\n        - {{key: pod, operator: In, values: [b]}}\n    - namespaceSelector:\n        matchExpressions:\n        - {{key: ns, operator: NotIn, values: [x]}}\n"
                ),
            )],
            expect: |c, s, _, _| s != ("x", "a") || c == ("x", "b") || c.0 != "x",
        },
        Case {
            name: "pod-selector-and-namespace-selector",
            policies: vec![np(
                "x",
                "a-from-b-in-y-z",
                &format!(
                    "{pod_a}  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          pod: b\n      namespaceSelector:\n        matchExpressions:\n        - {{key: ns, operator: In, values: [y, z]}}\n"
                ),
            )],
            expect: |c, s, _, _| s != ("x", "a") || (c.1 == "b" && c.0 != "x"),
        },
        Case {
            name: "ports-tcp-81-from-namespace-y",
            policies: vec![np(
                "x",
                "a-from-y-81",
                &format!(
                    "{pod_a}  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels:\n          ns: y\n    ports:\n    - {{protocol: TCP, port: 81}}\n"
                ),
            )],
            expect: |c, s, port, proto| {
                s != ("x", "a") || (c.0 == "y" && port == 81 && proto == Proto::Tcp)
            },
        },
        Case {
            name: "stacked-policies-overlapping-pod-selectors",
            policies: vec![
                np(
                    "x",
                    "a-from-y-80",
                    &format!(
                        "{pod_a}  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels:\n          ns: y\n    ports:\n    - {{protocol: TCP, port: 80}}\n"
                    ),
                ),
                np(
                    "x",
                    "a-from-y-81",
                    &format!(
                        "{pod_a}  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels:\n          ns: y\n    ports:\n    - {{protocol: TCP, port: 81}}\n"
                    ),
                ),
            ],
            expect: |c, s, _, proto| s != ("x", "a") || (c.0 == "y" && proto == Proto::Tcp),
        },
        Case {
            name: "end-port-range-80-81",
            policies: vec![np(
                "x",
                "a-from-y-80-81",
                &format!(
                    "{pod_a}  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels:\n          ns: y\n    ports:\n    - {{protocol: TCP, port: 80, endPort: 81}}\n"
                ),
            )],
            expect: |c, s, _, proto| s != ("x", "a") || (c.0 == "y" && proto == Proto::Tcp),
        },
        Case {
            name: "any-port-on-one-protocol",
            policies: vec![np(
                "x",
                "a-tcp-only",
                &format!(
                    "{pod_a}  policyTypes: [Ingress]\n  ingress:\n  - ports:\n    - protocol: TCP\n"
                ),
            )],
            expect: |_, s, _, proto| s != ("x", "a") || proto == Proto::Tcp,
        },
        Case {
            name: "udp-81-from-anywhere",
            policies: vec![np(
                "x",
                "a-udp-81",
                &format!(
                    "{pod_a}  policyTypes: [Ingress]\n  ingress:\n  - ports:\n    - {{protocol: UDP, port: 81}}\n"
                ),
            )],
            expect: |_, s, port, proto| s != ("x", "a") || (proto == Proto::Udp && port == 81),
        },
        Case {
            name: "deny-all-then-allow-all",
            policies: vec![
                np(
                    "x",
                    "deny-ingress",
                    &format!("{all}  policyTypes: [Ingress]\n"),
                ),
                np(
                    "x",
                    "allow-all",
                    &format!("{all}  policyTypes: [Ingress]\n  ingress:\n  - {{}}\n"),
                ),
            ],
            expect: |_, _, _, _| true,
        },
        Case {
            name: "deny-egress-of-a-namespace",
            policies: vec![np(
                "x",
                "deny-egress",
                &format!("{all}  policyTypes: [Egress]\n"),
            )],
            expect: |c, _, _, _| c.0 != "x",
        },
        Case {
            name: "egress-to-pod-and-namespace-on-port-80",
            policies: vec![np(
                "x",
                "a-to-y-b-80",
                &format!(
                    "{pod_a}  policyTypes: [Egress]\n  egress:\n  - to:\n    - podSelector:\n        matchLabels:\n          pod: b\n      namespaceSelector:\n        matchLabels:\n          ns: y\n    ports:\n    - {{protocol: TCP, port: 80}}\n"
                ),
            )],
            expect: |c, s, port, proto| {
                c != ("x", "a") || (s == ("y", "b") && port == 80 && proto == Proto::Tcp)
            },
        },
        Case {
            name: "client-side-egress-deny-wins-over-server-allow",
            policies: vec![
                np(
                    "x",
                    "a-no-egress",
                    &format!("{pod_a}  policyTypes: [Egress]\n"),
                ),
                np(
                    "y",
                    "allow-all-ingress",
                    &format!("{all}  policyTypes: [Ingress]\n  ingress:\n  - {{}}\n"),
                ),
            ],
            expect: |c, _, _, _| c != ("x", "a"),
        },
    ]
}

fn namespaces_yaml() -> String {
    let docs: Vec<String> = NS
        .iter()
        .map(|n| format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {n}\n  labels:\n    kubernetes.io/metadata.name: {n}\n    ns: {n}\n"))
        .collect();
    manifests::docs(&docs)
}

fn model() -> Vec<Who> {
    NS.iter()
        .flat_map(|n| PODS.iter().map(move |p| (*n, *p)))
        .collect()
}

fn pods_yaml(gw: &Gateway) -> String {
    let ul = gw.underlay_ip.to_string();
    let docs: Vec<String> = gw
        .pods
        .iter()
        .zip(model())
        .map(|(p, (ns, pod))| {
            manifests::pod(
                ns,
                pod,
                &[("pod", pod)],
                &p.ip.to_string(),
                &gw.node,
                &ul,
                80,
            )
        })
        .collect();
    manifests::docs(&docs)
}

fn write_cluster(dir: &Path, gw: &Gateway) {
    write(dir, "00-namespaces.yaml", &namespaces_yaml()).expect("write");
    let node = manifests::node(&gw.node, &gw.underlay_ip.to_string(), &gw.pod_cidr, true);
    write(dir, "10-nodes.yaml", &node).expect("write");
    write(dir, "20-pods.yaml", &pods_yaml(gw)).expect("write");
}

/// A UDP server in netns `ns` that echoes every datagram.
fn start_udp_echo(ns: &str, addr: SocketAddr) {
    let sock = run_in_netns(&named_netns_path(ns), move || UdpSocket::bind(addr))
        .expect("entering the pod namespace")
        .unwrap_or_else(|e| panic!("binding UDP {addr} in {ns}: {e}"));
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    });
}

fn probe_once(ns: &str, addr: SocketAddr, proto: Proto, timeout: Duration) -> bool {
    run_in_netns(&named_netns_path(ns), move || match proto {
        Proto::Tcp => {
            use std::io::Read;
            let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(timeout));
            let mut b = [0u8; 1];
            matches!(s.read(&mut b), Ok(1))
        }
        Proto::Udp => {
            let Ok(s) = UdpSocket::bind(("0.0.0.0", 0)) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(timeout));
            let mut b = [0u8; 16];
            s.send_to(b"probe", addr).is_ok() && matches!(s.recv_from(&mut b), Ok((5, _)))
        }
    })
    .unwrap_or(false)
}

/// Allowed traffic answers within milliseconds; a denied probe can only time
/// out, so one retry separates loss from policy.
fn probe(ns: &str, addr: SocketAddr, proto: Proto) -> bool {
    let t = Duration::from_millis(400);
    probe_once(ns, addr, proto, t) || probe_once(ns, addr, proto, t * 2)
}

struct Probe {
    client: (usize, Who),
    server: (Ipv4Addr, Who),
    port: u16,
    proto: Proto,
}

/// Runs every probe on `threads` threads; returns the mismatches.
fn run_matrix(t: &Topology, case: &Case, threads: usize) -> Vec<String> {
    let mut probes = Vec::new();
    for (ci, c) in model().into_iter().enumerate() {
        for (si, s) in model().into_iter().enumerate() {
            for port in PORTS {
                for proto in [Proto::Tcp, Proto::Udp] {
                    probes.push(Probe {
                        client: (ci, c),
                        server: (t.gws[0].pods[si].ip, s),
                        port,
                        proto,
                    });
                }
            }
        }
    }
    let clients: Arc<Vec<String>> = Arc::new(t.gws[1].pods.iter().map(|p| p.ns.clone()).collect());
    let probes = Arc::new(probes);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let expect = case.expect;
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (clients, probes, next) = (clients.clone(), probes.clone(), next.clone());
            std::thread::spawn(move || {
                let mut bad = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(p) = probes.get(i) else {
                        return bad;
                    };
                    let got = probe(
                        &clients[p.client.0],
                        SocketAddr::from((p.server.0, p.port)),
                        p.proto,
                    );
                    let want = expect(p.client.1, p.server.1, p.port, p.proto);
                    if got != want {
                        bad.push(format!(
                            "{}/{} -> {}/{}:{} {:?}: got {}, want {}",
                            p.client.1.0,
                            p.client.1.1,
                            p.server.1.0,
                            p.server.1.1,
                            p.port,
                            p.proto,
                            if got { "allowed" } else { "denied" },
                            if want { "allowed" } else { "denied" }
                        ));
                    }
                }
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("prober"))
        .collect()
}

async fn wait_policies(agents: &mut [Agent], n: u64) {
    for a in agents.iter_mut() {
        a.wait(&format!("{n} policies programmed"), T, |s| {
            s["healthy"] == true && s["records"]["policies"].as_u64() == Some(n)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_netpol_cases_across_two_clusters() {
    let _one_at_a_time = exclusive().await;
    if !require_root("upstream_netpol_cases_across_two_clusters") {
        return;
    }
    let started = Instant::now();
    let ips = |c: u8| -> Vec<(String, Ipv4Addr)> {
        model()
            .iter()
            .enumerate()
            .map(|(i, (n, p))| (format!("{n}-{p}"), Ipv4Addr::new(10, c, 0, 10 + i as u8)))
            .collect()
    };
    let (ia, ib) = (ips(1), ips(2));
    let pa: Vec<(&str, &str, Ipv4Addr)> = ia
        .iter()
        .map(|(n, ip)| (n.as_str(), "server", *ip))
        .collect();
    let pb: Vec<(&str, &str, Ipv4Addr)> = ib
        .iter()
        .map(|(n, ip)| (n.as_str(), "client", *ip))
        .collect();
    let t = Topology::new("cmn", [&pa, &pb]);
    let dirs = [
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    ];
    for (d, gw) in dirs.iter().zip(&t.gws) {
        write_cluster(d.path(), gw);
    }
    let a = start_cluster("east", 1, dirs[0].path()).await;
    let b = start_cluster("west", 2, dirs[1].path()).await;
    connect_peer(&a, &b).await;
    connect_peer(&b, &a).await;
    for p in &t.gws[0].pods {
        for port in PORTS {
            start_whoami(&p.ns, SocketAddr::from((p.ip, port)));
            start_udp_echo(&p.ns, SocketAddr::from((p.ip, port)));
        }
    }
    let mut agents = start_gateway_agents(&t, &[&a, &b], &[]).await;
    for ag in &mut agents {
        ag.wait("9 local pods and 9 remote endpoints", T, |s| {
            s["healthy"] == true
                && s["datapath"]["local_pods"] == 9
                && s["datapath"]["remote_endpoints"].as_u64() == Some(9)
        })
        .await;
    }
    let threads = 48;
    let mut failures = Vec::new();
    let mut summary = Vec::new();
    for case in cases() {
        let case_started = Instant::now();
        for d in &dirs {
            write(
                d.path(),
                "40-policies.yaml",
                &manifests::docs(&case.policies),
            )
            .expect("write");
        }
        // Each view: this cluster's copies and the peer's exported ones.
        // Each cluster enforces its own copy (the peers do not import each
        // other's policies: docs/policy.md), so each agent sees one set.
        wait_policies(&mut agents, case.policies.len() as u64).await;
        for gw in &t.gws {
            Datapath::open(&gw.pin_dir)
                .and_then(|mut d| d.flush_ct())
                .expect("flush CT");
        }
        let bad = tokio::task::block_in_place(|| run_matrix(&t, &case, threads));
        summary.push(format!(
            "{}: {} probes, {} mismatches, {:?}",
            case.name,
            81 * 4,
            bad.len(),
            case_started.elapsed()
        ));
        for m in bad {
            failures.push(format!("{}: {m}", case.name));
        }
        for d in &dirs {
            write(d.path(), "40-policies.yaml", "").expect("write");
        }
        wait_policies(&mut agents, 0).await;
    }
    for s in &summary {
        println!("{s}");
    }
    println!(
        "{} cases × 324 probes across two clusters in {:?}",
        summary.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} probes differ from the upstream truth tables:\n{}",
        failures.len(),
        failures.join("\n")
    );
    drop(agents);
}
