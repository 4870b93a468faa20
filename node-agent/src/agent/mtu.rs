//! MTUs: the underlay's (what the pod MTU is derived from) and the pod side
//! of each local pod's veth (set from the node).
//!
//! The pod's end of the veth lives in the pod's network namespace. iproute2
//! on the node names it: `ip -o link show dev vpN` prints the peer's ifindex
//! (`vpN@ifK`) and, when the pod's namespace is bound under /var/run/netns
//! (as CNI runtimes such as containerd and CRI-O do), `link-netns NAME`.
//! The agent then runs `ip -n NAME link set dev <peer> mtu M`. A pod whose
//! namespace has no name there is reported (the CNI must set its MTU).
//!
//! (rtnetlink's `IFLA_TARGET_NETNSID` is not an alternative for writing:
//! recent kernels treat it in `RTM_SETLINK` as the namespace to *move* the
//! link to.)

use crate::datapath::{DatapathError, netdev};

/// What `ip -o link show dev X` says about a link.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkLine {
    pub index: u32,
    pub name: String,
    pub mtu: Option<u32>,
    /// `@ifK`: the peer's ifindex (in `link_netns`, or here).
    pub peer_index: Option<u32>,
    /// `link-netns NAME`.
    pub link_netns: Option<String>,
}

/// Parses one line of `ip -o link show`.
pub fn parse_link_line(line: &str) -> Option<LinkLine> {
    let mut words = line.split_whitespace();
    let index = words.next()?.trim_end_matches(':').parse().ok()?;
    let dev = words.next()?.trim_end_matches(':');
    let (name, peer) = match dev.split_once('@') {
        Some((n, p)) => (n, p.strip_prefix("if").and_then(|k| k.parse().ok())),
        None => (dev, None),
    };
    let rest: Vec<&str> = words.collect();
    let after = |key: &str| rest.windows(2).find(|w| w[0] == key).map(|w| w[1]);
    Some(LinkLine {
        index,
        name: name.to_string(),
        mtu: after("mtu").and_then(|m| m.parse().ok()),
        peer_index: peer,
        link_netns: after("link-netns").map(str::to_string),
    })
}

fn show(args: &[&str]) -> Result<Vec<LinkLine>, DatapathError> {
    Ok(netdev::ip(args)?
        .lines()
        .filter_map(parse_link_line)
        .collect())
}

/// The MTU of `dev` in this namespace.
pub fn link_mtu(dev: &str) -> Result<u32, DatapathError> {
    show(&["-o", "link", "show", "dev", dev])?
        .first()
        .and_then(|l| l.mtu)
        .ok_or_else(|| DatapathError::invalid("link", format!("no MTU reported for {dev}")))
}

/// Sets the MTU of the pod side of the veth `host_if` to `mtu`. Returns the
/// previous MTU, or None if it was already right.
pub fn set_peer_mtu(host_if: &str, mtu: u32) -> Result<Option<u32>, DatapathError> {
    let host = show(&["-o", "link", "show", "dev", host_if])?
        .into_iter()
        .next()
        .ok_or_else(|| DatapathError::NoSuchInterface {
            name: host_if.to_string(),
        })?;
    let (Some(peer), Some(ns)) = (host.peer_index, host.link_netns) else {
        return Err(DatapathError::Unsupported(format!(
            "{host_if}: the pod's network namespace has no name under /var/run/netns; \
             its MTU must be set by the CNI"
        )));
    };
    let pod = show(&["-n", &ns, "-o", "link", "show"])?
        .into_iter()
        .find(|l| l.index == peer)
        .ok_or_else(|| DatapathError::NoSuchInterface {
            name: format!("ifindex {peer} in netns {ns}"),
        })?;
    if pod.mtu == Some(mtu) {
        return Ok(None);
    }
    let m = mtu.to_string();
    netdev::ip(&["-n", &ns, "link", "set", "dev", &pod.name, "mtu", &m])?;
    Ok(Some(pod.mtu.unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_link_lines() {
        let l = parse_link_line(
            "7: vp0@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT group default qlen 1000\\    link/ether 32:b1:bc:e5:11:69 brd ff:ff:ff:ff:ff:ff link-netns cni-1234",
        )
        .expect("parses");
        assert_eq!(l.index, 7);
        assert_eq!(l.name, "vp0");
        assert_eq!(l.mtu, Some(1500));
        assert_eq!(l.peer_index, Some(2));
        assert_eq!(l.link_netns.as_deref(), Some("cni-1234"));
        let lo = parse_link_line("1: lo: <LOOPBACK,UP> mtu 65536 qdisc noqueue").expect("lo");
        assert_eq!(
            (lo.name.as_str(), lo.peer_index, lo.mtu),
            ("lo", None, Some(65536))
        );
        let nsid = parse_link_line("3: vp1@if2: <UP> mtu 1500 link-netnsid 4").expect("nsid");
        assert_eq!(nsid.link_netns, None);
        assert!(parse_link_line("garbage").is_none());
    }

    #[test]
    fn loopback_mtu_and_no_peer() {
        assert!(link_mtu("lo").is_ok_and(|m| m > 0));
        assert!(set_peer_mtu("lo", 1400).is_err());
    }
}
