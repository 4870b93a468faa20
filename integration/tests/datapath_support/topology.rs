//! The network namespaces of the datapath end-to-end test and benchmark: two
//! gateway nodes joined by a veth underlay, each with pods behind veths, set
//! up the way a CNI would (what the agent discovers on its own):
//!
//! ```text
//!  pod ns: eth0 10.1.0.x/32                 gateway ns (gwa)                    gwb
//!   default via 169.254.1.1 ══ veth ══ vpN  (proxy ARP, route 10.1.0.x/32 dev vpN)
//!                                            ul0 172.31.255.1/30 ════ ul0 172.31.255.2/30
//! ```
//! The pod resolves its link-local next hop by proxy ARP on the host-side
//! veth (the gateway routes 169.254.1.1 towards the underlay, so the kernel
//! answers for it). Everything is removed in Drop, pins and cgroups included.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use clustermesh_netkit::Namespaces;
use clustermesh_netkit::pod::{NextHop, PodSpec, add_pod};
use clustermesh_node_agent::datapath;

pub const UNDERLAY_IF: &str = "ul0";

pub struct Pod {
    /// Kubernetes name (and app label value's role).
    pub name: String,
    pub app: String,
    pub ip: Ipv4Addr,
    /// Network namespace of the pod.
    pub ns: String,
    /// Host-side veth in the gateway namespace.
    pub host_if: String,
}

pub struct Gateway {
    pub ns: String,
    pub node: String,
    pub underlay_ip: Ipv4Addr,
    pub pod_cidr: String,
    pub pin_dir: PathBuf,
    pub cgroup: PathBuf,
    pub pods: Vec<Pod>,
}

pub struct Topology {
    pub gws: Vec<Gateway>,
    namespaces: Namespaces,
}

pub use clustermesh_netkit::{ip, run, sysctl};

fn cgroup2_root() -> PathBuf {
    clustermesh_netkit::cgroup2_root().expect("a cgroup v2 mount (cgroup2 in /proc/mounts)")
}

impl Topology {
    /// `pods[g]` = (name, app, IP) of gateway g's pods. Gateway g gets pod CIDR
    /// 10.(g+1).0.0/24 and underlay 172.31.255.(g+1).
    pub fn new(tag: &str, pods: [&[(&str, &str, Ipv4Addr)]; 2]) -> Topology {
        let id = format!("{tag}{}", std::process::id());
        let mut t = Topology {
            gws: Vec::new(),
            namespaces: Namespaces::new(),
        };
        let cg_root = cgroup2_root();
        for (g, letter) in ["a", "b"].iter().enumerate() {
            let ns = format!("{id}-gw{letter}");
            t.add_netns(&ns);
            let cgroup = cg_root.join(format!("cm-{id}-gw{letter}"));
            std::fs::create_dir_all(&cgroup).expect("creating a test cgroup");
            t.gws.push(Gateway {
                ns,
                node: format!("gw-{letter}"),
                underlay_ip: Ipv4Addr::new(172, 31, 255, g as u8 + 1),
                pod_cidr: format!("10.{}.0.0/24", g + 1),
                pin_dir: datapath::default_pin_dir(&format!("{id}-gw{letter}")),
                cgroup,
                pods: Vec::new(),
            });
        }
        let (a, b) = (t.gws[0].ns.clone(), t.gws[1].ns.clone());
        ip(&[
            "link",
            "add",
            UNDERLAY_IF,
            "netns",
            &a,
            "type",
            "veth",
            "peer",
            "name",
            UNDERLAY_IF,
            "netns",
            &b,
        ]);
        for (g, list) in pods.iter().enumerate() {
            let (ns, me, peer) = (
                t.gws[g].ns.clone(),
                t.gws[g].underlay_ip,
                t.gws[1 - g].underlay_ip,
            );
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{me}/30"),
                "dev",
                UNDERLAY_IF,
            ]);
            ip(&["-n", &ns, "link", "set", UNDERLAY_IF, "up"]);
            sysctl(&ns, "net.ipv4.ip_forward=1");
            // Proxy ARP answers for 169.254.1.1 because the gateway routes it elsewhere.
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                "169.254.1.1/32",
                "via",
                &peer.to_string(),
            ]);
            for (n, (name, app, pod_ip)) in list.iter().enumerate() {
                let pod = t.add_pod(g, n, name, app, *pod_ip, &id);
                t.gws[g].pods.push(pod);
            }
        }
        t
    }

    fn add_netns(&mut self, ns: &str) {
        self.namespaces.add(ns);
    }

    fn add_pod(
        &mut self,
        g: usize,
        n: usize,
        name: &str,
        app: &str,
        pod_ip: Ipv4Addr,
        id: &str,
    ) -> Pod {
        let gw = self.gws[g].ns.clone();
        let pod_ns = format!("{id}-p{}{n}", ["a", "b"][g]);
        let host_if = format!("vp{n}");
        add_pod(
            &mut self.namespaces,
            &PodSpec {
                node_ns: &gw,
                pod_ns: &pod_ns,
                host_if: &host_if,
                ip: pod_ip,
                mtu: None,
                next_hop: NextHop::ProxyArp,
            },
        );
        Pod {
            name: name.to_string(),
            app: app.to_string(),
            ip: pod_ip,
            ns: pod_ns,
            host_if,
        }
    }

    /// The pod named `name` (any gateway).
    pub fn pod(&self, name: &str) -> &Pod {
        self.gws
            .iter()
            .flat_map(|g| &g.pods)
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// The MTU of a pod's eth0.
    pub fn pod_mtu(&self, name: &str) -> u32 {
        let out = Command::new("ip")
            .args(["-n", &self.pod(name).ns, "-o", "link", "show", "eth0"])
            .output()
            .expect("ip link show");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "mtu")
            .nth(1)
            .and_then(|m| m.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for gw in &self.gws {
            if let Err(e) = datapath::destroy(&gw.pin_dir) {
                eprintln!("cleanup: removing pins {}: {e}", gw.pin_dir.display());
            }
        }
        for gw in &self.gws {
            let _ = std::fs::remove_dir(&gw.cgroup);
        }
    }
}
