//! Clusters of several nodes in network namespaces: per cluster a LAN (a
//! bridge in its own namespace) that every node joins with `lan0`, and one
//! WAN bridge that only gateways join with `wan0`. Workers have no WAN link
//! and no default route, so their only way out is through a gateway.
//!
//! ```text
//!   pod ns ══ vpN ─ node ns (lan0 192.168.<c>.<n>/24) ─┐
//!                                                    bridge in <c>-lan ns
//!   gateway node ns: lan0 + wan0 203.0.113.<c><n>/24 ─── bridge in wan ns
//! ```
//! Pods are set up the way a CNI would (eth0 /32, default via 169.254.1.1
//! answered by proxy ARP, a /32 route on the node). Everything is removed in
//! Drop, pins included.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use clustermesh_node_agent::datapath;

use clustermesh_integration::manifests::{self, write};
use clustermesh_netkit::pod::{NextHop, PodSpec, add_pod};
use clustermesh_netkit::{Namespaces, ip, sysctl};

pub const LAN_IF: &str = "lan0";
pub const WAN_IF: &str = "wan0";

pub struct NodePod {
    pub name: String,
    pub app: String,
    pub ip: Ipv4Addr,
    pub ns: String,
}

pub struct Node {
    /// Kubernetes node name, e.g. `east-gw1`.
    pub name: String,
    pub ns: String,
    pub gateway: bool,
    pub lan_ip: Ipv4Addr,
    pub wan_ip: Option<Ipv4Addr>,
    pub pod_cidr: String,
    pub pin_dir: PathBuf,
    pub pods: Vec<NodePod>,
}

/// One node to build: (name suffix, gateway, pods as (name, app, IP)).
pub struct NodeSpec<'a> {
    pub name: &'a str,
    pub gateway: bool,
    pub pods: &'a [(&'a str, &'a str, Ipv4Addr)],
}

pub struct Nodes {
    /// Per cluster (index = cluster ID − 1), its nodes.
    pub clusters: Vec<Vec<Node>>,
    pub wan_ns: String,
    namespaces: Namespaces,
    tag: String,
}

fn bridge_ns(t: &mut Nodes, ns: &str) {
    t.namespaces.add(ns);
    ip(&["-n", ns, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", ns, "link", "set", "br0", "up"]);
}

/// A veth from `node_ns` (`dev`, address `addr/24`) into bridge namespace `br_ns`.
fn attach(br_ns: &str, port: &str, node_ns: &str, dev: &str, addr: Ipv4Addr) {
    ip(&[
        "link", "add", port, "netns", br_ns, "type", "veth", "peer", "name", dev, "netns", node_ns,
    ]);
    ip(&["-n", br_ns, "link", "set", port, "master", "br0"]);
    ip(&["-n", br_ns, "link", "set", port, "up"]);
    ip(&[
        "-n",
        node_ns,
        "addr",
        "add",
        &format!("{addr}/24"),
        "dev",
        dev,
    ]);
    ip(&["-n", node_ns, "link", "set", dev, "up"]);
}

impl Nodes {
    /// `clusters[c]` = the nodes of cluster c+1 (LAN 192.168.<c+1>.0/24; the
    /// n-th node gets .<n+11>, pod CIDR 10.<c+1>.<n+1>.0/24; gateways also
    /// get WAN 203.0.113.<(c+1)*10+n+1>).
    pub fn new(tag: &str, clusters: &[&[NodeSpec<'_>]]) -> Nodes {
        let tag = format!("{tag}{}", std::process::id());
        let mut t = Nodes {
            clusters: Vec::new(),
            wan_ns: format!("{tag}-wan"),
            namespaces: Namespaces::new(),
            tag: tag.clone(),
        };
        let wan_ns = t.wan_ns.clone();
        bridge_ns(&mut t, &wan_ns);
        for (c, specs) in clusters.iter().enumerate() {
            let cid = c as u8 + 1;
            let lan_ns = format!("{tag}-l{cid}");
            bridge_ns(&mut t, &lan_ns);
            let mut nodes = Vec::new();
            for (n, spec) in specs.iter().enumerate() {
                let ns = format!("{tag}-c{cid}n{n}");
                t.namespaces.add(&ns);
                let lan_ip = Ipv4Addr::new(192, 168, cid, n as u8 + 11);
                attach(&lan_ns, &format!("p{n}"), &ns, LAN_IF, lan_ip);
                let wan_ip = spec.gateway.then(|| {
                    let a = Ipv4Addr::new(203, 0, 113, cid * 10 + n as u8 + 1);
                    attach(&wan_ns, &format!("c{cid}p{n}"), &ns, WAN_IF, a);
                    a
                });
                sysctl(&ns, "net.ipv4.ip_forward=1");
                // Proxy ARP answers for the pods' next hop because the node routes it elsewhere.
                ip(&["-n", &ns, "route", "add", "169.254.1.1/32", "dev", LAN_IF]);
                let name = format!("{}-{}", ["east", "west", "north"][c.min(2)], spec.name);
                let mut node = Node {
                    pin_dir: datapath::default_pin_dir(&format!("{tag}-{name}")),
                    name,
                    ns: ns.clone(),
                    gateway: spec.gateway,
                    lan_ip,
                    wan_ip,
                    pod_cidr: format!("10.{cid}.{}.0/24", n + 1),
                    pods: Vec::new(),
                };
                for (k, (pname, app, pip)) in spec.pods.iter().enumerate() {
                    let pod_ns = format!("{tag}-c{cid}n{n}p{k}");
                    add_pod(
                        &mut t.namespaces,
                        &PodSpec {
                            node_ns: &ns,
                            pod_ns: &pod_ns,
                            host_if: &format!("vp{k}"),
                            ip: *pip,
                            mtu: None,
                            next_hop: NextHop::ProxyArp,
                        },
                    );
                    node.pods.push(NodePod {
                        name: pname.to_string(),
                        app: app.to_string(),
                        ip: *pip,
                        ns: pod_ns,
                    });
                }
                nodes.push(node);
            }
            t.clusters.push(nodes);
        }
        t
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> &Node {
        self.clusters
            .iter()
            .flatten()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// The pod named `name`.
    pub fn pod(&self, name: &str) -> &NodePod {
        self.clusters
            .iter()
            .flatten()
            .flat_map(|n| &n.pods)
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// Takes a node's LAN and WAN links down (or up again).
    pub fn links(&self, node: &str, up: bool) {
        let n = self.node(node);
        let state = if up { "up" } else { "down" };
        ip(&["-n", &n.ns, "link", "set", LAN_IF, state]);
        if n.wan_ip.is_some() {
            ip(&["-n", &n.ns, "link", "set", WAN_IF, state]);
        }
        if up {
            // The route of the pods' next hop goes with the link.
            let _ = Command::new("ip")
                .args([
                    "-n",
                    &n.ns,
                    "route",
                    "replace",
                    "169.254.1.1/32",
                    "dev",
                    LAN_IF,
                ])
                .output();
        }
    }

    /// A namespace on the WAN that belongs to no cluster (`203.0.113.99`).
    pub fn wan_stranger(&mut self) -> String {
        let ns = self.namespaces.add(&format!("{}-x", self.tag));
        attach(
            &self.wan_ns,
            "xp0",
            &ns,
            WAN_IF,
            Ipv4Addr::new(203, 0, 113, 99),
        );
        ns
    }
}

/// Writes the manifests of one cluster's `nodes` into `dir`: namespace
/// `shop`, the Nodes (LAN address as InternalIP; gateways labelled, with the
/// WAN address as ExternalIP), every pod (named port `http` on `port`), and
/// `policies` (YAML) if given.
pub fn write_manifests(dir: &std::path::Path, nodes: &[Node], port: u16, policies: Option<&str>) {
    write(
        dir,
        "00-namespaces.yaml",
        &manifests::namespace("shop", &[]),
    )
    .expect("write");
    let docs: Vec<String> = nodes
        .iter()
        .map(|n| match n.wan_ip {
            Some(wan) => manifests::node_with_external(
                &n.name,
                &n.lan_ip.to_string(),
                &wan.to_string(),
                &n.pod_cidr,
                n.gateway,
            ),
            None => manifests::node(&n.name, &n.lan_ip.to_string(), &n.pod_cidr, n.gateway),
        })
        .collect();
    write(dir, "10-nodes.yaml", &manifests::docs(&docs)).expect("write");
    let pods: Vec<String> = nodes
        .iter()
        .flat_map(|n| {
            n.pods.iter().map(move |p| {
                manifests::pod(
                    "shop",
                    &p.name,
                    &[("app", &p.app)],
                    &p.ip.to_string(),
                    &n.name,
                    &n.lan_ip.to_string(),
                    port,
                )
            })
        })
        .collect();
    write(dir, "20-pods.yaml", &manifests::docs(&pods)).expect("write");
    if let Some(p) = policies {
        write(dir, "40-policies.yaml", p).expect("write");
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for n in self.clusters.iter().flatten() {
            if let Err(e) = datapath::destroy(&n.pin_dir) {
                eprintln!("cleanup: removing pins {}: {e}", n.pin_dir.display());
            }
        }
        // The namespaces go with `self.namespaces`, after the pins.
    }
}
