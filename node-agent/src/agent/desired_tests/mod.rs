//! Unit tests of the desired-state computation: records go straight into a
//! [`View`], no kernel involved. Fixtures here; the tests by topic in
//! `ipcache.rs`, `policy.rs` and `services.rs`.

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
    PROTO_UDP, PolicyLocal, PolicyPeer as DpPeer, PolicyRule, PortPrefix, TunnelSender, Verdict,
};

pub(super) const NODE: &str = "c1-gw";
pub(super) const GW1: Ipv4Addr = Ipv4Addr::new(172, 31, 255, 1);
pub(super) const GW2: Ipv4Addr = Ipv4Addr::new(172, 31, 255, 2);
// Identities: cluster ID in bits 16..24.
pub(super) const C1_FRONT: u32 = 0x01_0100;
pub(super) const C1_BACK: u32 = 0x01_0101;
pub(super) const C2_FRONT: u32 = 0x02_0100;
pub(super) const C2_BACK: u32 = 0x02_0101;
pub(super) const C2_TOOL: u32 = 0x02_0102;
pub(super) const C3_FRONT: u32 = 0x03_0100;

pub(super) fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("test IP")
}

pub(super) fn node(
    cluster: &str,
    name: &str,
    internal: &str,
    cidr: &str,
    gateway: bool,
) -> pb::Node {
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

pub(super) fn endpoint(
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

pub(super) fn identity(
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

pub(super) fn sel(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        match_expressions: vec![],
    }
}

pub(super) fn pod_peer(pairs: &[(&str, &str)]) -> PolicyPeer {
    PolicyPeer {
        pod_selector: Some(sel(pairs)),
        ..Default::default()
    }
}

pub(super) fn tcp(port: u32) -> PolicyPort {
    PolicyPort {
        protocol: "TCP".into(),
        port: Some(port),
        ..Default::default()
    }
}

pub(super) fn policy(cluster: &str, name: &str, spec: NetworkPolicySpec) -> pb::Policy {
    pb::Policy {
        namespace: "shop".into(),
        name: name.into(),
        spec: Some(spec),
        global: true,
        cluster: cluster.into(),
        exported: true,
    }
}

pub(super) fn ingress_policy(
    cluster: &str,
    target: &str,
    rules: Vec<pb::PolicyRule>,
) -> pb::Policy {
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

pub(super) fn svc(
    cluster: &str,
    fe: &str,
    aff: PbAffinity,
    backends: &[(&str, bool)],
) -> pb::Service {
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
pub(super) fn mesh() -> View {
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

pub(super) fn iface(ifindex: u32, mac: Option<[u8; 6]>) -> PodIface {
    PodIface {
        name: format!("vp{ifindex}"),
        ifindex,
        host_mac: [2, 0, 0, 0, 0, ifindex as u8],
        pod_mac: mac,
    }
}

pub(super) fn ifaces() -> BTreeMap<Ipv4Addr, PodIface> {
    [
        (ip("10.1.0.10"), iface(10, Some([2, 1, 1, 1, 1, 10]))),
        (ip("10.1.0.11"), iface(11, None)),
    ]
    .into()
}

pub(super) fn run(v: &View) -> super::desired::Computed {
    compute(v, NODE, &ifaces(), &mut ServiceIds::new(), &[])
}

pub(super) fn rule(
    local: u32,
    peer: u32,
    proto: u8,
    port: u16,
    direction: Direction,
) -> PolicyRule {
    PolicyRule::identities(local, peer, proto, port, direction)
}

mod incremental;
mod ipcache;
mod policy;
mod policy_rules;
mod policy_scope;
mod services;
