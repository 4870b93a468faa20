//! A pod the way a CNI sets one up: its own namespace, `eth0` with a /32,
//! the link-local next hop `169.254.1.1` as default route, and a veth whose
//! host side is in the node's namespace.

use std::net::Ipv4Addr;

use crate::cmd::{Namespaces, ip, ns_cmd, sysctl};

/// How the pod resolves its next hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextHop {
    /// Proxy ARP on the host-side veth, plus the node's /32 route to the pod
    /// (what CNIs do; the node must route 169.254.1.1 elsewhere).
    ProxyArp,
    /// A permanent neighbour entry in the pod for the host veth's MAC, and no
    /// route on the node (the datapath delivers by itself).
    Permanent,
}

pub struct PodSpec<'a> {
    pub node_ns: &'a str,
    pub pod_ns: &'a str,
    pub host_if: &'a str,
    pub ip: Ipv4Addr,
    /// MTU of both ends of the veth (None: the default).
    pub mtu: Option<u32>,
    pub next_hop: NextHop,
}

/// Creates the pod's namespace (in `namespaces`) and its veth.
pub fn add_pod(namespaces: &mut Namespaces, spec: &PodSpec<'_>) {
    let (node, pod, host_if) = (spec.node_ns, spec.pod_ns, spec.host_if);
    namespaces.add(pod);
    ip(&[
        "link", "add", host_if, "netns", node, "type", "veth", "peer", "name", "eth0", "netns", pod,
    ]);
    if let Some(mtu) = spec.mtu {
        let m = mtu.to_string();
        ip(&["-n", node, "link", "set", host_if, "mtu", &m]);
        ip(&["-n", pod, "link", "set", "eth0", "mtu", &m]);
    }
    ip(&["-n", node, "link", "set", host_if, "up"]);
    ip(&["-n", pod, "link", "set", "eth0", "up"]);
    let addr = format!("{}/32", spec.ip);
    ip(&["-n", pod, "addr", "add", &addr, "dev", "eth0"]);
    ip(&[
        "-n",
        pod,
        "route",
        "add",
        "169.254.1.1",
        "dev",
        "eth0",
        "scope",
        "link",
    ]);
    ip(&[
        "-n",
        pod,
        "route",
        "add",
        "default",
        "via",
        "169.254.1.1",
        "dev",
        "eth0",
    ]);
    match spec.next_hop {
        NextHop::ProxyArp => {
            ip(&["-n", node, "route", "add", &addr, "dev", host_if]);
            sysctl(node, &format!("net.ipv4.conf.{host_if}.proxy_arp=1"));
            sysctl(node, &format!("net.ipv4.neigh.{host_if}.proxy_delay=0"));
        }
        NextHop::Permanent => {
            let mac = mac_in(node, host_if);
            ip(&[
                "-n",
                pod,
                "neigh",
                "add",
                "169.254.1.1",
                "lladdr",
                &mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ]);
        }
    }
}

/// The MAC address of `dev` in netns `ns` ("aa:bb:…").
pub fn mac_in(ns: &str, dev: &str) -> String {
    let out = ns_cmd(ns, &["ip", "-o", "link", "show", "dev", dev]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no MAC for {dev} in {ns}: {text}"))
}
