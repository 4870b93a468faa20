//! Two gateways joined by a veth underlay, each with pods, all in network
//! namespaces this test creates (names unique per process and topology), and
//! all removed in Drop — also when the test panics.
//!
//! ```text
//!  pod ns (eth0 10.1.0.x/32)        gwA ns                         gwB ns          pod ns (10.2.0.x)
//!   eth0 ══ veth ══ vpN [from_pod]   ul0 172.31.255.1/30 ══ ul0 .2   vpN ══ eth0
//!                   cm_tun (external VXLAN/Geneve) [from_tunnel]     cm_tun
//! ```
//! Pods route everything via 169.254.1.1, resolved by a permanent neighbour
//! entry to the host-side veth's MAC (no ARP needed).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use clustermesh_netkit::pod::{NextHop, PodSpec, add_pod};
use clustermesh_netkit::{Namespaces, ip};
use clustermesh_node_agent::datapath::netns::{named_netns_path, run_in_netns};
use clustermesh_node_agent::datapath::{
    self, Datapath, DatapathConfig, DesiredState, Endpoint, IpcacheEntry, Ipv4Prefix, Loader,
    Location, TunnelKind, TunnelSender, netdev,
};

pub const TUNNEL_IF: &str = "cm_tun";
pub const UNDERLAY_IF: &str = "ul0";
const POD_MTU: u32 = 1450;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Identity of pod `n` of cluster `cluster` (cluster ID in bits 16..24).
pub fn identity(cluster: u32, n: u32) -> u32 {
    (cluster << 16) | (256 + n)
}

pub struct Pod {
    pub ns: String,
    pub ip: Ipv4Addr,
    pub identity: u32,
    /// Host-side veth, inside the gateway's namespace.
    pub host_if: String,
    pub host_ifindex: u32,
    pub host_mac: [u8; 6],
    pub pod_mac: [u8; 6],
}

pub struct Gateway {
    pub ns: String,
    pub underlay_ip: Ipv4Addr,
    pub pin_dir: PathBuf,
    pub tunnel_ifindex: u32,
    pub pods: Vec<Pod>,
    pub loader: Option<Loader>,
}

pub struct Topology {
    pub kind: TunnelKind,
    pub gws: Vec<Gateway>,
    namespaces: Namespaces,
    pin_dirs: Vec<PathBuf>,
    pub cgroups: Vec<PathBuf>,
}

fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    run_in_netns(&named_netns_path(ns), f).unwrap_or_else(|e| panic!("entering netns {ns}: {e}"))
}

impl Topology {
    /// Builds the namespaces and links. `pods[g]` lists (IP, identity) of gateway g's pods.
    pub fn new(kind: TunnelKind, pods: [&[(Ipv4Addr, u32)]; 2]) -> Topology {
        let id = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let mut t = Topology {
            kind,
            gws: Vec::new(),
            namespaces: Namespaces::new(),
            pin_dirs: Vec::new(),
            cgroups: Vec::new(),
        };
        let underlay = [
            Ipv4Addr::new(172, 31, 255, 1),
            Ipv4Addr::new(172, 31, 255, 2),
        ];
        for (g, letter) in ["a", "b"].iter().enumerate() {
            let ns = format!("cm{id}-gw{letter}");
            t.add_netns(&ns);
            let pin_dir = datapath::default_pin_dir(&format!("test-{id}-gw{letter}"));
            t.pin_dirs.push(pin_dir.clone());
            t.gws.push(Gateway {
                ns,
                underlay_ip: underlay[g],
                pin_dir,
                tunnel_ifindex: 0,
                pods: Vec::new(),
                loader: None,
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
        for gw in &t.gws {
            ip(&[
                "-n",
                &gw.ns,
                "addr",
                "add",
                &format!("{}/30", gw.underlay_ip),
                "dev",
                UNDERLAY_IF,
            ]);
            ip(&["-n", &gw.ns, "link", "set", UNDERLAY_IF, "up"]);
        }
        for (g, list) in pods.iter().enumerate() {
            for (n, (pod_ip, identity)) in list.iter().enumerate() {
                let pod_ns = format!("cm{id}-p{}{n}", ["a", "b"][g]);
                let pod = t.add_pod(g, &pod_ns, &format!("vp{n}"), *pod_ip, *identity);
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
        pod_ns: &str,
        host_if: &str,
        pod_ip: Ipv4Addr,
        identity: u32,
    ) -> Pod {
        let gw_ns = self.gws[g].ns.clone();
        add_pod(
            &mut self.namespaces,
            &PodSpec {
                node_ns: &gw_ns,
                pod_ns,
                host_if,
                ip: pod_ip,
                mtu: Some(POD_MTU),
                next_hop: NextHop::Permanent,
            },
        );
        let hif = host_if.to_string();
        let (host_ifindex, host_mac) = in_ns(&gw_ns, move || {
            (
                netdev::ifindex(&hif).expect("host veth"),
                netdev::mac_address(&hif).expect("mac"),
            )
        });
        let pod_mac = in_ns(pod_ns, || netdev::mac_address("eth0").expect("pod mac"));
        Pod {
            ns: pod_ns.to_string(),
            ip: pod_ip,
            identity,
            host_if: host_if.to_string(),
            host_ifindex,
            host_mac,
            pod_mac,
        }
    }

    /// Loads the programs for gateway `g` from inside its netns (a dedicated
    /// thread with setns, so bpffs pins land in the host's bpffs), creates the
    /// tunnel device and attaches from_tunnel and from_pod.
    pub fn load(&mut self, g: usize) {
        let kind = self.kind;
        let pin_dir = self.gws[g].pin_dir.clone();
        let pod_ifs: Vec<String> = self.gws[g].pods.iter().map(|p| p.host_if.clone()).collect();
        let (loader, tun) = in_ns(
            &self.gws[g].ns,
            move || -> datapath::Result<(Loader, u32)> {
                let tun = netdev::ensure_tunnel_device(kind, TUNNEL_IF, None)?;
                let mut l = Loader::load(&pin_dir)?;
                l.attach_from_tunnel(TUNNEL_IF)?;
                for p in &pod_ifs {
                    l.attach_from_pod(p)?;
                }
                Ok((l, tun))
            },
        )
        .unwrap_or_else(|e| panic!("loading datapath of gateway {g}: {e}"));
        self.gws[g].loader = Some(loader);
        self.gws[g].tunnel_ifindex = tun;
    }

    /// The maps of gateway `g`.
    pub fn datapath(&self, g: usize) -> Datapath {
        Datapath::open(&self.gws[g].pin_dir)
            .unwrap_or_else(|e| panic!("opening maps of gateway {g}: {e}"))
    }

    /// Gateway `g`'s desired state: its pods local, the other gateway's pods remote.
    pub fn desired(&self, g: usize) -> DesiredState {
        let mut d = DesiredState::default();
        for (i, gw) in self.gws.iter().enumerate() {
            for p in &gw.pods {
                let location = if i == g {
                    d.endpoints.insert(
                        p.host_ifindex,
                        Endpoint {
                            pod_mac: p.pod_mac,
                            host_mac: p.host_mac,
                            identity: p.identity,
                        },
                    );
                    Location::Local {
                        ifindex: p.host_ifindex,
                    }
                } else {
                    Location::Remote {
                        tunnel_endpoint: gw.underlay_ip,
                    }
                };
                d.ipcache.insert(
                    Ipv4Prefix::host(p.ip),
                    IpcacheEntry {
                        identity: p.identity,
                        location,
                    },
                );
            }
            // The other gateway is cluster i+1's: the tunnel accepts its identities.
            if i != g {
                d.tunnel_sources.insert(
                    gw.underlay_ip,
                    TunnelSender::PeerGateway {
                        cluster_id: i as u32 + 1,
                    },
                );
            }
        }
        d
    }

    /// Loads both gateways, writes their config and applies their desired state.
    pub fn load_and_program(&mut self) {
        for g in 0..self.gws.len() {
            self.load(g);
            let mut dp = self.datapath(g);
            let cfg = DatapathConfig {
                tunnel_ifindex: self.gws[g].tunnel_ifindex,
                gateway: true,
                cluster_id: g as u16 + 1,
                cluster_shift: 16,
                ..Default::default()
            };
            dp.set_config(&cfg).expect("config");
            dp.apply(&self.desired(g)).expect("apply");
        }
    }

    /// Switches both gateways to native routing: `from_underlay` attached,
    /// the native flag set, forwarding on, a route to the other side's pods
    /// (`cidrs[g]` holds gateway g's pod CIDR) via the other gateway.
    pub fn go_native(&mut self, cidrs: [&str; 2]) {
        for g in 0..self.gws.len() {
            let ns = self.gws[g].ns.clone();
            let mut loader = self.gws[g].loader.take().expect("loaded");
            let loader = in_ns(&ns, move || {
                loader.attach_from_underlay(UNDERLAY_IF).map(|()| loader)
            })
            .expect("attach from_underlay");
            self.gws[g].loader = Some(loader);
            let mut dp = self.datapath(g);
            let cfg = DatapathConfig {
                native: true,
                ..dp.config().expect("config")
            };
            dp.set_config(&cfg).expect("config");
            ip(&[
                "netns",
                "exec",
                &ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ]);
            let peer = self.gws[1 - g].underlay_ip.to_string();
            ip(&["-n", &ns, "route", "add", cidrs[1 - g], "via", &peer]);
        }
    }

    pub fn pod(&self, g: usize, n: usize) -> &Pod {
        &self.gws[g].pods[n]
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for gw in &mut self.gws {
            gw.loader = None;
        }
        for dir in &self.pin_dirs {
            if let Err(e) = datapath::destroy(dir) {
                eprintln!("cleanup: removing pins {}: {e}", dir.display());
            }
        }
        // The namespaces go with `self.namespaces` (after the pins above).
        for cg in &self.cgroups {
            let _ = std::fs::remove_dir(cg);
        }
    }
}
