//! Native-routing mode: the node's routes to remote pod CIDRs (and to remote
//! endpoints outside every CIDR) via the peer gateway's underlay IP.
//!
//! Routes are managed with iproute2, like the tunnel device, and tagged with
//! the routing protocol number [`ROUTE_PROTO`], so the agent recognises its
//! own routes after a restart: it reads them from the kernel and changes only
//! the difference (a restart never removes a route that is still wanted).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use tracing::{info, warn};

use crate::datapath::{DatapathError, Ipv4Prefix, netdev};

/// `proto` value of the routes this agent owns (unassigned in rt_protos).
pub const ROUTE_PROTO: &str = "211";

/// Parses `ip -4 -o route show proto 211`: prefix → gateway.
pub fn parse_owned_routes(text: &str) -> BTreeMap<Ipv4Prefix, Ipv4Addr> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (Some(prefix), Some(via)) = (
            words.first().and_then(|s| s.parse::<Ipv4Prefix>().ok()),
            words
                .windows(2)
                .find(|w| w[0] == "via")
                .and_then(|w| w[1].parse::<Ipv4Addr>().ok()),
        ) else {
            continue;
        };
        out.insert(prefix, via);
    }
    out
}

/// The routes the agent installed (read from the kernel).
pub fn installed() -> Result<BTreeMap<Ipv4Prefix, Ipv4Addr>, DatapathError> {
    let text = netdev::ip(&[
        "-4",
        "-o",
        "route",
        "show",
        "table",
        "main",
        "proto",
        ROUTE_PROTO,
    ])?;
    Ok(parse_owned_routes(&text))
}

/// What [`reconcile`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteReport {
    pub added: usize,
    pub removed: usize,
    pub failed: usize,
}

/// Makes the owned routes equal to `want` (prefix → peer gateway).
pub fn reconcile(want: &BTreeMap<Ipv4Prefix, Ipv4Addr>) -> Result<RouteReport, DatapathError> {
    let have = installed()?;
    let mut r = RouteReport::default();
    for (prefix, gw) in want {
        if have.get(prefix) == Some(gw) {
            continue;
        }
        let (p, g) = (prefix.to_string(), gw.to_string());
        match netdev::ip(&["route", "replace", &p, "via", &g, "proto", ROUTE_PROTO]) {
            Ok(_) => {
                info!(prefix = %p, via = %g, "route added");
                r.added += 1;
            }
            Err(e) => {
                warn!(prefix = %p, via = %g, error = %e, "cannot add route");
                r.failed += 1;
            }
        }
    }
    for prefix in have.keys().filter(|p| !want.contains_key(p)) {
        let p = prefix.to_string();
        match netdev::ip(&["route", "del", &p, "proto", ROUTE_PROTO]) {
            Ok(_) => {
                info!(prefix = %p, "route removed");
                r.removed += 1;
            }
            Err(e) => {
                warn!(prefix = %p, error = %e, "cannot remove route");
                r.failed += 1;
            }
        }
    }
    Ok(r)
}

/// Turns on IPv4 forwarding in the agent's network namespace (native mode
/// hands pods' packets to the node's routing).
pub fn enable_forwarding() -> std::io::Result<()> {
    let path = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(path)?.trim() != "1" {
        std::fs::write(path, "1")?;
        info!("enabled net.ipv4.ip_forward");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_owned_routes() {
        let text = "10.2.0.0/24 via 172.31.255.2 dev ul0 proto 211 \n\
                    10.9.9.9 via 172.31.255.2 dev ul0 proto 211 \n\
                    garbage\n";
        let r = parse_owned_routes(text);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[&"10.9.9.9/32".parse().unwrap()],
            "172.31.255.2".parse::<Ipv4Addr>().unwrap()
        );
    }
}
