//! Finding the local pods on the node: the host-side interface of each pod
//! from the node's routes (a `/32` route to the pod IP via its veth, as CNIs
//! such as Calico and Cilium install), or from a `--pod-dev IP=DEV`
//! override; and the pod's MAC from the neighbour table.
//!
//! Routes and neighbours are read with iproute2 (`ip -4 -o route`,
//! `ip -4 neigh`), which works in whatever network namespace the agent runs
//! in. A pod whose MAC is not in the neighbour table yet is probed with an
//! empty UDP datagram to its discard port: the kernel resolves the neighbour
//! on the way (rate-limited per pod).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::desired::PodIface;
use crate::datapath::{Ipv4Prefix, netdev};

/// How often a pod without a known MAC is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// `/32` routes without a gateway: pod IP → device.
pub fn parse_pod_routes(text: &str) -> BTreeMap<Ipv4Addr, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(dst) = words.first() else { continue };
        let Ok(prefix) = dst.parse::<Ipv4Prefix>() else {
            continue;
        };
        if prefix.len() != 32 || words.contains(&"via") {
            continue;
        }
        if let Some(dev) = words.windows(2).find(|w| w[0] == "dev").map(|w| w[1]) {
            out.entry(prefix.addr()).or_insert_with(|| dev.to_string());
        }
    }
    out
}

/// Neighbour entries with a link-layer address: (IP, device) → MAC.
pub fn parse_neighbours(text: &str) -> BTreeMap<(Ipv4Addr, String), [u8; 6]> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (Some(ip), Some(dev), Some(mac)) = (
            words.first().and_then(|s| s.parse::<Ipv4Addr>().ok()),
            words.windows(2).find(|w| w[0] == "dev").map(|w| w[1]),
            words
                .windows(2)
                .find(|w| w[0] == "lladdr")
                .and_then(|w| parse_mac(w[1])),
        ) else {
            continue;
        };
        if words.last() == Some(&"FAILED") {
            continue;
        }
        out.insert((ip, dev.to_string()), mac);
    }
    out
}

/// `aa:bb:cc:dd:ee:ff` → bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Finds the interfaces of local pods, probing the neighbours it lacks.
#[derive(Debug, Default)]
pub struct PodFinder {
    /// `--pod-dev` overrides.
    pub overrides: BTreeMap<Ipv4Addr, String>,
    last_probe: BTreeMap<Ipv4Addr, Instant>,
}

impl PodFinder {
    pub fn new(overrides: BTreeMap<Ipv4Addr, String>) -> Self {
        PodFinder {
            overrides,
            last_probe: BTreeMap::new(),
        }
    }

    /// The interfaces of `pods` that exist on the node now.
    pub fn find(&mut self, pods: &BTreeSet<Ipv4Addr>) -> BTreeMap<Ipv4Addr, PodIface> {
        let mut out = BTreeMap::new();
        if pods.is_empty() {
            self.last_probe.clear();
            return out;
        }
        let routes = match netdev::ip(&["-4", "-o", "route", "show", "table", "main"]) {
            Ok(text) => parse_pod_routes(&text),
            Err(e) => {
                warn!(error = %e, "cannot read the node's routes");
                BTreeMap::new()
            }
        };
        let neighbours = match netdev::ip(&["-4", "neigh", "show"]) {
            Ok(text) => parse_neighbours(&text),
            Err(e) => {
                debug!(error = %e, "cannot read the neighbour table");
                BTreeMap::new()
            }
        };
        for ip in pods {
            let Some(dev) = self.overrides.get(ip).or_else(|| routes.get(ip)).cloned() else {
                continue;
            };
            let dev = dev.as_str();
            let (ifindex, host_mac) = match (netdev::ifindex(dev), netdev::mac_address(dev)) {
                (Ok(i), Ok(m)) => (i, m),
                (Err(e), _) | (_, Err(e)) => {
                    debug!(%ip, dev, error = %e, "pod interface not usable yet");
                    continue;
                }
            };
            let pod_mac = neighbours.get(&(*ip, dev.to_string())).copied();
            if pod_mac.is_none() {
                self.probe(*ip);
            }
            out.insert(
                *ip,
                PodIface {
                    name: dev.to_string(),
                    ifindex,
                    host_mac,
                    pod_mac,
                },
            );
        }
        self.last_probe.retain(|ip, _| pods.contains(ip));
        out
    }

    /// Lets the next [`PodFinder::find`] probe every pod without a MAC at
    /// once (e.g. after an MTU change flushed the neighbour entries).
    pub fn reset_probes(&mut self) {
        self.last_probe.clear();
    }

    fn probe(&mut self, ip: Ipv4Addr) {
        let now = Instant::now();
        if self
            .last_probe
            .get(&ip)
            .is_some_and(|t| now.duration_since(*t) < PROBE_INTERVAL)
        {
            return;
        }
        self.last_probe.insert(ip, now);
        let sent =
            UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).and_then(|s| s.send_to(&[], (ip, 9)));
        if let Err(e) = sent {
            debug!(%ip, error = %e, "neighbour probe failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pod_routes() {
        let text = "default via 172.31.255.2 dev ul0 \n\
                    10.1.0.2 dev vp0 scope link \n\
                    10.1.0.3 dev vp1 proto static scope link \n\
                    10.2.0.0/24 via 172.31.255.2 dev ul0 proto 211 \n\
                    10.9.0.1 via 172.31.255.2 dev ul0 \n\
                    172.31.255.0/30 dev ul0 proto kernel scope link src 172.31.255.1 \n";
        let r = parse_pod_routes(text);
        assert_eq!(r.len(), 2);
        assert_eq!(r[&"10.1.0.2".parse::<Ipv4Addr>().unwrap()], "vp0");
        assert_eq!(r[&"10.1.0.3".parse::<Ipv4Addr>().unwrap()], "vp1");
    }

    #[test]
    fn parses_neighbours() {
        let text = "10.1.0.2 dev vp0 lladdr 5a:01:02:03:04:0f REACHABLE\n\
                    10.1.0.3 dev vp1  FAILED\n\
                    172.31.255.2 dev ul0 lladdr 02:00:00:00:00:02 STALE\n";
        let n = parse_neighbours(text);
        assert_eq!(n.len(), 2);
        assert_eq!(
            n[&("10.1.0.2".parse().unwrap(), "vp0".to_string())],
            [0x5a, 1, 2, 3, 4, 0x0f]
        );
        assert_eq!(parse_mac("zz:00:00:00:00:00"), None);
        assert_eq!(parse_mac("00:00:00:00:00"), None);
    }
}
