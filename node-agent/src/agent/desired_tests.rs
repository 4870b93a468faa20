//! Unit tests of the desired-state computation: records go straight into a
//! [`View`], no kernel involved.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use clustermesh_proto::v1::{
    self as pb, Affinity as PbAffinity, ClusterInfo, LabelSelector, LabelSelectorRequirement,
    NamedPort, NetworkPolicySpec, PolicyPeer, PolicyPort,
};

use super::desired::{PodIface, UNKNOWN_POD_MAC, compute};
use super::services::ServiceIds;
use super::view::View;
use crate::datapath::types::IDENTITY_WORLD;
use crate::datapath::{
    Affinity, Backend, Direction, Frontend, IpcacheEntry, Ipv4Prefix, Location, PROTO_TCP,
    PROTO_UDP, PolicyRule, Verdict,
};

const NODE: &str = "c1-gw";
const GW1: Ipv4Addr = Ipv4Addr::new(172, 31, 255, 1);
const GW2: Ipv4Addr = Ipv4Addr::new(172, 31, 255, 2);
// Identities: cluster ID in bits 16..24.
const C1_FRONT: u32 = 0x01_0100;
const C1_BACK: u32 = 0x01_0101;
const C2_FRONT: u32 = 0x02_0100;
const C2_BACK: u32 = 0x02_0101;
const C2_TOOL: u32 = 0x02_0102;
const C3_FRONT: u32 = 0x03_0100;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("test IP")
}

fn node(cluster: &str, name: &str, internal: &str, cidr: &str, gateway: bool) -> pb::Node {
    pb::Node {
        name: name.into(),
        internal_ips: vec![internal.into()],
        pod_cidrs: vec![cidr.into()],
        gateway,
        cluster: cluster.into(),
        exported: true,
        ..Default::default()
    }
}

fn endpoint(
    cluster: &str,
    ip: &str,
    id: u32,
    node: &str,
    ns: &str,
    ports: &[(&str, u32)],
) -> pb::Endpoint {
    pb::Endpoint {
        ip: ip.into(),
        identity: id,
        node_ip: "192.0.2.1".into(),
        node_name: node.into(),
        namespace: ns.into(),
        pod: format!("pod-{ip}"),
        named_ports: ports
            .iter()
            .map(|(n, p)| NamedPort {
                name: n.to_string(),
                port: *p,
                protocol: "TCP".into(),
            })
            .collect(),
        cluster: cluster.into(),
        exported: true,
    }
}

fn identity(
    cluster: &str,
    id: u32,
    ns: &str,
    app: &str,
    ns_labels: &[(&str, &str)],
) -> pb::Identity {
    let mut labels: BTreeMap<String, String> = [
        ("app".to_string(), app.to_string()),
        ("io.kubernetes.pod.namespace".into(), ns.into()),
        ("clustermesh.io/cluster".into(), cluster.into()),
    ]
    .into();
    for (k, v) in ns_labels {
        labels.insert(format!("io.cilium.k8s.namespace.labels.{k}"), v.to_string());
    }
    pb::Identity {
        id,
        labels,
        cluster: cluster.into(),
        exported: true,
    }
}

fn sel(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        match_expressions: vec![],
    }
}

fn pod_peer(pairs: &[(&str, &str)]) -> PolicyPeer {
    PolicyPeer {
        pod_selector: Some(sel(pairs)),
        ..Default::default()
    }
}

fn tcp(port: u32) -> PolicyPort {
    PolicyPort {
        protocol: "TCP".into(),
        port: Some(port),
        ..Default::default()
    }
}

fn policy(cluster: &str, name: &str, spec: NetworkPolicySpec) -> pb::Policy {
    pb::Policy {
        namespace: "shop".into(),
        name: name.into(),
        spec: Some(spec),
        cluster: cluster.into(),
        exported: true,
    }
}

fn ingress_policy(cluster: &str, target: &str, rules: Vec<pb::PolicyRule>) -> pb::Policy {
    policy(
        cluster,
        &format!("allow-{target}"),
        NetworkPolicySpec {
            pod_selector: Some(sel(&[("app", target)])),
            ingress: rules,
            egress: vec![],
            policy_types: vec!["Ingress".into()],
        },
    )
}

fn svc(cluster: &str, fe: &str, aff: PbAffinity, backends: &[(&str, bool)]) -> pb::Service {
    pb::Service {
        namespace: "shop".into(),
        name: "backend".into(),
        global: true,
        shared: true,
        affinity: aff as i32,
        ports: vec![pb::ServicePort {
            name: "http".into(),
            port: 80,
            protocol: "TCP".into(),
        }],
        frontend_ips: vec![fe.into()],
        backends: backends
            .iter()
            .map(|(ip, ready)| pb::Backend {
                ip: ip.to_string(),
                ports: vec![pb::BackendPort {
                    name: "http".into(),
                    port: 8080,
                    protocol: "TCP".into(),
                }],
                ready: *ready,
                serving: *ready,
                ..Default::default()
            })
            .collect(),
        cluster: cluster.into(),
        exported: true,
    }
}

/// Two clusters: c1 (local; this node is c1-gw) and c2.
fn mesh() -> View {
    let mut v = View::new();
    v.cluster = Some(ClusterInfo {
        name: "c1".into(),
        id: 1,
        max_connected_clusters: 255,
        capabilities: vec![],
    });
    v.insert_node(node("c1", "c1-gw", "172.31.255.1", "10.1.0.0/24", true));
    v.insert_node(node(
        "c1",
        "c1-worker",
        "192.168.1.11",
        "10.1.1.0/24",
        false,
    ));
    v.insert_node(node("c2", "c2-gw", "172.31.255.2", "10.2.0.0/24", true));
    v.insert_node(node(
        "c2",
        "c2-worker",
        "192.168.2.11",
        "10.2.1.0/24",
        false,
    ));
    v.insert_endpoint(endpoint("c1", "10.1.0.10", C1_FRONT, "c1-gw", "shop", &[]));
    v.insert_endpoint(endpoint(
        "c1",
        "10.1.0.11",
        C1_BACK,
        "c1-gw",
        "shop",
        &[("http", 8080)],
    ));
    v.insert_endpoint(endpoint(
        "c1",
        "10.1.1.10",
        C1_BACK,
        "c1-worker",
        "shop",
        &[("http", 8080)],
    ));
    v.insert_endpoint(endpoint("c2", "10.2.0.10", C2_FRONT, "c2-gw", "shop", &[]));
    v.insert_endpoint(endpoint(
        "c2",
        "10.2.0.11",
        C2_BACK,
        "c2-gw",
        "shop",
        &[("http", 9090)],
    ));
    v.insert_endpoint(endpoint(
        "c2",
        "10.2.1.12",
        C2_TOOL,
        "c2-worker",
        "tools",
        &[],
    ));
    v.insert_identity(identity(
        "c1",
        C1_FRONT,
        "shop",
        "frontend",
        &[("team", "blue")],
    ));
    v.insert_identity(identity(
        "c1",
        C1_BACK,
        "shop",
        "backend",
        &[("team", "blue")],
    ));
    v.insert_identity(identity(
        "c2",
        C2_FRONT,
        "shop",
        "frontend",
        &[("team", "blue")],
    ));
    v.insert_identity(identity(
        "c2",
        C2_BACK,
        "shop",
        "backend",
        &[("team", "blue")],
    ));
    v.insert_identity(identity(
        "c2",
        C2_TOOL,
        "tools",
        "frontend",
        &[("team", "red")],
    ));
    v
}

fn iface(ifindex: u32, mac: Option<[u8; 6]>) -> PodIface {
    PodIface {
        name: format!("vp{ifindex}"),
        ifindex,
        host_mac: [2, 0, 0, 0, 0, ifindex as u8],
        pod_mac: mac,
    }
}

fn ifaces() -> BTreeMap<Ipv4Addr, PodIface> {
    [
        (ip("10.1.0.10"), iface(10, Some([2, 1, 1, 1, 1, 10]))),
        (ip("10.1.0.11"), iface(11, None)),
    ]
    .into()
}

fn run(v: &View) -> super::desired::Computed {
    compute(v, NODE, &ifaces(), &mut ServiceIds::new())
}

fn rule(local: u32, peer: u32, proto: u8, port: u16, direction: Direction) -> PolicyRule {
    PolicyRule {
        local_identity: local,
        peer_identity: peer,
        proto,
        port,
        direction,
    }
}

#[test]
fn local_pods_get_local_entries_and_endpoints() {
    let c = run(&mesh());
    let d = &c.desired;
    assert_eq!(c.local_pods, 2);
    assert_eq!(
        d.ipcache[&Ipv4Prefix::host(ip("10.1.0.10"))],
        IpcacheEntry {
            identity: C1_FRONT,
            location: Location::Local { ifindex: 10 }
        }
    );
    assert_eq!(d.endpoints[&10].pod_mac, [2, 1, 1, 1, 1, 10]);
    assert_eq!(d.endpoints[&10].host_mac, [2, 0, 0, 0, 0, 10]);
    assert_eq!(
        d.endpoints[&11].pod_mac, UNKNOWN_POD_MAC,
        "MAC not known yet"
    );
    // The worker's pod is not on this node; its CIDR is not programmed either.
    assert!(!d.ipcache.contains_key(&Ipv4Prefix::host(ip("10.1.1.10"))));
    assert!(!d.ipcache.contains_key(&"10.1.1.0/24".parse().unwrap()));

    // A local pod whose interface is not found is pending, not programmed.
    let mut v = mesh();
    v.insert_endpoint(endpoint("c1", "10.1.0.12", C1_FRONT, "c1-gw", "shop", &[]));
    let c = run(&v);
    assert_eq!(c.pending, vec![ip("10.1.0.12")]);
    assert!(
        !c.desired
            .ipcache
            .contains_key(&Ipv4Prefix::host(ip("10.1.0.12")))
    );
}

#[test]
fn remote_endpoints_and_cidrs_go_to_their_gateway() {
    let c = run(&mesh());
    let d = &c.desired;
    let remote = |id| IpcacheEntry {
        identity: id,
        location: Location::Remote {
            tunnel_endpoint: GW2,
        },
    };
    assert_eq!(
        d.ipcache[&Ipv4Prefix::host(ip("10.2.0.11"))],
        remote(C2_BACK)
    );
    // A pod on c2's worker: still via c2's gateway.
    assert_eq!(
        d.ipcache[&Ipv4Prefix::host(ip("10.2.1.12"))],
        remote(C2_TOOL)
    );
    assert_eq!(
        d.ipcache[&"10.2.0.0/24".parse().unwrap()],
        remote(IDENTITY_WORLD)
    );
    assert_eq!(
        d.ipcache[&"10.2.1.0/24".parse().unwrap()],
        remote(IDENTITY_WORLD)
    );
    assert_eq!(c.remote_endpoints, 3);
    assert_eq!(c.gateways, [("c2".to_string(), GW2)].into());
    // Native routes: the CIDRs (endpoints inside them need no route of their own).
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.routes[&"10.2.1.0/24".parse().unwrap()], GW2);
    assert!(
        !c.routes.values().any(|g| *g == GW1),
        "no route to the local cluster"
    );
}

#[test]
fn remote_cluster_without_gateway_or_identity_is_skipped() {
    let mut v = mesh();
    v.insert_node(node("c3", "c3-worker", "10.3.255.1", "10.3.0.0/24", false));
    v.insert_endpoint(endpoint(
        "c3",
        "10.3.0.5",
        C3_FRONT,
        "c3-worker",
        "shop",
        &[],
    ));
    v.insert_endpoint(endpoint("c2", "10.2.0.99", 0, "c2-gw", "shop", &[]));
    // An endpoint outside every CIDR gets a /32 route.
    v.insert_endpoint(endpoint("c2", "10.9.9.9", C2_FRONT, "c2-gw", "shop", &[]));
    let c = run(&v);
    assert_eq!(c.no_gateway, 1);
    assert_eq!(c.invalid_endpoints, 1);
    assert!(
        !c.desired
            .ipcache
            .contains_key(&Ipv4Prefix::host(ip("10.3.0.5")))
    );
    assert!(
        !c.desired
            .ipcache
            .contains_key(&"10.3.0.0/24".parse().unwrap())
    );
    assert_eq!(c.routes[&Ipv4Prefix::host(ip("10.9.9.9"))], GW2);
    c.desired.to_raw().expect("valid desired state");
}

#[test]
fn ingress_policy_is_default_deny_with_namespace_sameness() {
    let mut v = mesh();
    // The policy comes from the *other* cluster: it applies here too.
    v.insert_policy(ingress_policy(
        "c2",
        "backend",
        vec![pb::PolicyRule {
            peers: vec![pod_peer(&[("app", "frontend")])],
            ports: vec![tcp(8080)],
        }],
    ));
    let c = run(&v);
    let d = &c.desired;
    assert_eq!(
        d.enforced,
        [(C1_BACK, Direction::Ingress)].into(),
        "only the selected local identity is enforced"
    );
    let want: BTreeMap<_, _> = [
        (
            rule(C1_BACK, C1_FRONT, PROTO_TCP, 8080, Direction::Ingress),
            Verdict::Allow,
        ),
        (
            rule(C1_BACK, C2_FRONT, PROTO_TCP, 8080, Direction::Ingress),
            Verdict::Allow,
        ),
    ]
    .into();
    // The tools/frontend of c2 is in another namespace: not a peer.
    assert_eq!(d.policy, want);
}

#[test]
fn cluster_label_in_selectors_restricts_clusters() {
    let mut v = mesh();
    v.insert_policy(ingress_policy(
        "c1",
        "backend",
        vec![pb::PolicyRule {
            peers: vec![pod_peer(&[
                ("app", "frontend"),
                ("clustermesh.io/cluster", "c2"),
            ])],
            ports: vec![],
        }],
    ));
    let d = run(&v).desired;
    assert_eq!(
        d.policy.keys().copied().collect::<Vec<_>>(),
        vec![rule(C1_BACK, C2_FRONT, 0, 0, Direction::Ingress)]
    );
    // A policy whose podSelector names another cluster selects no local pod.
    let mut v = mesh();
    let mut p = ingress_policy("c2", "backend", vec![]);
    if let Some(s) = p.spec.as_mut() {
        s.pod_selector = Some(LabelSelector {
            match_labels: [("app".to_string(), "backend".to_string())].into(),
            match_expressions: vec![LabelSelectorRequirement {
                key: "clustermesh.io/cluster".into(),
                operator: "In".into(),
                values: vec!["c2".into()],
            }],
        });
    }
    v.insert_policy(p);
    let d = run(&v).desired;
    assert!(d.enforced.is_empty() && d.policy.is_empty());
}

#[test]
fn namespace_selector_and_empty_rules() {
    let mut v = mesh();
    v.insert_policy(ingress_policy(
        "c1",
        "backend",
        vec![
            // Every pod of namespaces labelled team=red (c2's tools), any port.
            pb::PolicyRule {
                peers: vec![PolicyPeer {
                    namespace_selector: Some(sel(&[("team", "red")])),
                    ..Default::default()
                }],
                ports: vec![],
            },
            // Anyone, UDP only (no port number).
            pb::PolicyRule {
                peers: vec![],
                ports: vec![PolicyPort {
                    protocol: "UDP".into(),
                    ..Default::default()
                }],
            },
            // ipBlock peers are skipped.
            pb::PolicyRule {
                peers: vec![PolicyPeer {
                    ip_block: Some(pb::IpBlock {
                        cidr: "0.0.0.0/0".into(),
                        except: vec![],
                    }),
                    ..Default::default()
                }],
                ports: vec![],
            },
        ],
    ));
    let c = run(&v);
    let keys: Vec<_> = c.desired.policy.keys().copied().collect();
    assert_eq!(
        keys,
        vec![
            rule(C1_BACK, 0, PROTO_UDP, 0, Direction::Ingress),
            rule(C1_BACK, C2_TOOL, 0, 0, Direction::Ingress),
        ]
    );
    assert_eq!(c.policy.skipped_ip_blocks, 1);
}

#[test]
fn named_ports_resolve_per_side() {
    let mut v = mesh();
    let named = |name: &str| PolicyPort {
        protocol: "TCP".into(),
        named_port: Some(name.into()),
        ..Default::default()
    };
    // Ingress: the selected (local) pod's port "http" = 8080.
    v.insert_policy(ingress_policy(
        "c1",
        "backend",
        vec![pb::PolicyRule {
            peers: vec![pod_peer(&[("app", "frontend")])],
            ports: vec![named("http"), named("nope")],
        }],
    ));
    // Egress of the frontend: the destination's "http" (8080 in c1, 9090 in c2).
    v.insert_policy(policy(
        "c1",
        "frontend-egress",
        NetworkPolicySpec {
            pod_selector: Some(sel(&[("app", "frontend")])),
            ingress: vec![],
            egress: vec![pb::PolicyRule {
                peers: vec![pod_peer(&[("app", "backend")])],
                ports: vec![named("http")],
            }],
            policy_types: vec!["Egress".into()],
        },
    ));
    let c = run(&v);
    let d = &c.desired;
    assert!(d.policy.contains_key(&rule(
        C1_BACK,
        C2_FRONT,
        PROTO_TCP,
        8080,
        Direction::Ingress
    )));
    assert!(
        d.policy
            .contains_key(&rule(C1_FRONT, C1_BACK, PROTO_TCP, 8080, Direction::Egress))
    );
    assert!(
        d.policy
            .contains_key(&rule(C1_FRONT, C2_BACK, PROTO_TCP, 9090, Direction::Egress))
    );
    assert!(
        !d.policy
            .contains_key(&rule(C1_FRONT, C2_BACK, PROTO_TCP, 8080, Direction::Egress))
    );
    assert_eq!(c.policy.unresolved_named_ports, 1, "\"nope\" names no port");
    assert!(d.enforced.contains(&(C1_FRONT, Direction::Egress)));
    assert!(!d.enforced.contains(&(C1_FRONT, Direction::Ingress)));
}

#[test]
fn egress_default_deny_and_port_ranges() {
    let mut v = mesh();
    v.insert_policy(policy(
        "c1",
        "deny-egress",
        NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            ingress: vec![],
            egress: vec![],
            policy_types: vec!["Egress".into()],
        },
    ));
    let d = run(&v).desired;
    assert_eq!(
        d.enforced,
        [(C1_FRONT, Direction::Egress), (C1_BACK, Direction::Egress)].into()
    );
    assert!(d.policy.is_empty(), "nothing allowed");

    let mut v = mesh();
    v.insert_policy(ingress_policy(
        "c1",
        "backend",
        vec![pb::PolicyRule {
            peers: vec![],
            ports: vec![PolicyPort {
                protocol: "TCP".into(),
                port: Some(8000),
                end_port: Some(8002),
                ..Default::default()
            }],
        }],
    ));
    let d = run(&v).desired;
    let ports: Vec<u16> = d.policy.keys().map(|r| r.port).collect();
    assert_eq!(ports, vec![8000, 8001, 8002]);
}

#[test]
fn global_service_affinity_and_fallbacks() {
    let fe = Frontend {
        ip: ip("10.96.1.10"),
        port: 80,
        proto: PROTO_TCP,
    };
    let be = |s: &str| Backend {
        ip: ip(s),
        port: 8080,
    };
    let backends = |aff: PbAffinity, local: &[(&str, bool)], remote: &[(&str, bool)]| {
        let mut v = mesh();
        v.insert_service(svc("c1", "10.96.1.10", aff, local));
        v.insert_service(svc("c2", "10.97.1.10", PbAffinity::None, remote));
        let d = run(&v).desired;
        assert_eq!(
            d.services.len(),
            1,
            "only the local frontend: {:?}",
            d.services
        );
        d.services[&fe].backends.clone()
    };
    let local = [("10.1.0.11", true), ("10.1.1.10", false)];
    let remote = [("10.2.0.11", true)];
    assert_eq!(
        backends(PbAffinity::None, &local, &remote),
        vec![be("10.1.0.11"), be("10.2.0.11")],
        "none: both sides, ready only"
    );
    assert_eq!(
        backends(PbAffinity::Local, &local, &remote),
        vec![be("10.1.0.11")]
    );
    assert_eq!(
        backends(PbAffinity::Local, &[("10.1.0.11", false)], &remote),
        vec![be("10.2.0.11")],
        "local: falls back to remote when no local backend is ready"
    );
    assert_eq!(
        backends(PbAffinity::Remote, &local, &remote),
        vec![be("10.2.0.11")]
    );
    assert_eq!(
        backends(PbAffinity::Remote, &local, &[]),
        vec![be("10.1.0.11")],
        "remote: falls back to local"
    );
    assert!(
        backends(PbAffinity::Local, &[], &[]).is_empty(),
        "no backend: count 0"
    );

    // Not shared remotely → remote backends unused; not global locally → no frontend.
    let mut v = mesh();
    v.insert_service(svc("c1", "10.96.1.10", PbAffinity::None, &local));
    let mut r = svc("c2", "10.97.1.10", PbAffinity::None, &remote);
    r.shared = false;
    v.insert_service(r);
    let d = run(&v).desired;
    assert_eq!(d.services[&fe].backends, vec![be("10.1.0.11")]);
    let mut v = mesh();
    let mut l = svc("c1", "10.96.1.10", PbAffinity::None, &local);
    l.global = false;
    v.insert_service(l);
    assert!(run(&v).desired.services.is_empty());
    assert_eq!(run(&v).desired.services.get(&fe).map(|s| s.affinity), None);
    let mut v = mesh();
    v.insert_service(svc("c1", "10.96.1.10", PbAffinity::Local, &local));
    assert_eq!(run(&v).desired.services[&fe].affinity, Affinity::Local);
}

#[test]
fn service_ids_are_stable_and_seedable() {
    let mut v = mesh();
    v.insert_service(svc(
        "c1",
        "10.96.1.10",
        PbAffinity::None,
        &[("10.1.0.11", true)],
    ));
    let mut ids = ServiceIds::new();
    ids.seed([(
        Frontend {
            ip: ip("10.96.1.10"),
            port: 80,
            proto: PROTO_TCP,
        },
        42,
    )]);
    let a = compute(&v, NODE, &ifaces(), &mut ids).desired;
    let b = compute(&v, NODE, &ifaces(), &mut ids).desired;
    assert_eq!(a, b);
    assert_eq!(a.services.values().next().map(|s| s.service_id), Some(42));
    a.to_raw().expect("valid");
}
