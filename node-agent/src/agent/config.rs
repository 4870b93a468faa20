//! The agent's configuration (built from the command line by main.rs).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::datapath::TunnelKind;

/// How traffic reaches peer gateways.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Encapsulated, VNI = source identity.
    Tunnel(TunnelKind),
    /// Plain routing via the peer gateway; identity from the ipcache.
    Native,
}

impl Mode {
    /// Per-packet overhead on the underlay: what the pod MTU gives up.
    /// VXLAN over IPv4: 20 (outer IPv4) + 8 (UDP) + 8 (VXLAN) + 14 (inner
    /// Ethernet) = 50; Geneve without options likewise (its header is 8 bytes
    /// too; the datapath sends no options). Native: none.
    pub fn overhead(self) -> u32 {
        match self {
            Mode::Tunnel(k) => k.overhead(),
            Mode::Native => 0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Tunnel(k) => k.link_type(),
            Mode::Native => "native",
        }
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "native" => Ok(Mode::Native),
            other => other
                .parse::<TunnelKind>()
                .map(Mode::Tunnel)
                .map_err(|_| format!("{other:?}: want vxlan, geneve or native")),
        }
    }
}

/// Parses a `--pod-dev IP=DEV` override.
pub fn parse_pod_dev(s: &str) -> Result<(Ipv4Addr, String), String> {
    let (ip, dev) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: want IP=DEV"))?;
    let ip = ip
        .parse()
        .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
    if dev.is_empty() || dev.len() >= 16 {
        return Err(format!("{dev:?} is not an interface name"));
    }
    Ok((ip, dev.to_string()))
}

/// Everything the agent needs to run.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The local clustermesh-apiserver (host:port).
    pub apiserver: String,
    /// `clustermesh certs init` directory (ca.crt, agent.crt, agent.key).
    pub tls_dir: PathBuf,
    /// This node's name: its endpoints are the local pods.
    pub node_name: String,
    pub mode: Mode,
    /// The device towards the other nodes and the peer gateways (MTU source;
    /// native mode attaches here). None: found from the routes at start.
    pub underlay_dev: Option<String>,
    /// This cluster's service ranges: left to the CNI, like its other nodes' pods.
    pub service_cidrs: Vec<crate::datapath::Ipv4Prefix>,
    /// Name of the collect-metadata tunnel device.
    pub tunnel_dev: String,
    /// `--pod-dev` overrides: pod IP → host-side interface.
    pub pod_devs: BTreeMap<Ipv4Addr, String>,
    pub pin_dir: PathBuf,
    pub health_listen: Option<SocketAddr>,
    /// cgroup v2 directory for the socket load balancer (None: no global-service LB).
    pub lb_cgroup: Option<PathBuf>,
    /// Set the pod side of each local pod's veth to the pod MTU.
    pub set_pod_mtu: bool,
    /// Deliver to pods with `bpf_redirect_peer`.
    pub redirect_peer: bool,
    /// How often counters are logged.
    pub log_interval: Duration,
    /// How often pod interfaces are looked for.
    pub scan_interval: Duration,
    /// How often the maps are re-read and reconciled in full (drift repair).
    pub resync_interval: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub idle_timeout: Duration,
    /// After the first snapshot, how long to wait for the local cluster's
    /// sync markers before programming anyway.
    pub sync_wait: Duration,
}

impl AgentConfig {
    /// A configuration with the defaults for everything optional.
    pub fn new(
        apiserver: &str,
        tls_dir: PathBuf,
        node_name: &str,
        mode: Mode,
        underlay_dev: Option<&str>,
    ) -> Self {
        AgentConfig {
            apiserver: apiserver.to_string(),
            tls_dir,
            node_name: node_name.to_string(),
            mode,
            underlay_dev: underlay_dev.map(str::to_string),
            service_cidrs: Vec::new(),
            tunnel_dev: "cm_tunnel".into(),
            pod_devs: BTreeMap::new(),
            pin_dir: crate::datapath::default_pin_dir(node_name),
            health_listen: None,
            lb_cgroup: None,
            set_pod_mtu: true,
            redirect_peer: true,
            log_interval: Duration::from_secs(30),
            scan_interval: Duration::from_secs(1),
            resync_interval: Duration::from_secs(60),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            sync_wait: Duration::from_secs(10),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_modes_and_pod_devs() {
        assert_eq!("vxlan".parse::<Mode>(), Ok(Mode::Tunnel(TunnelKind::Vxlan)));
        assert_eq!("native".parse::<Mode>(), Ok(Mode::Native));
        assert!("gre".parse::<Mode>().is_err());
        assert_eq!(Mode::Tunnel(TunnelKind::Vxlan).overhead(), 50);
        assert_eq!(Mode::Tunnel(TunnelKind::Geneve).overhead(), 50);
        assert_eq!(Mode::Native.overhead(), 0);
        assert_eq!(
            parse_pod_dev("10.1.0.2=vp0"),
            Ok(("10.1.0.2".parse().unwrap(), "vp0".to_string()))
        );
        assert!(parse_pod_dev("10.1.0.2").is_err());
        assert!(parse_pod_dev("x=vp0").is_err());
    }
}
