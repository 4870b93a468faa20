//! Network devices: ifindex and MAC lookups (ioctl, in the calling thread's
//! network namespace — never /sys/class/net, which `ip netns exec` remaps) and
//! the collect-metadata tunnel device.
//!
//! No netlink crate is in the dependency tree, so devices are created by
//! running iproute2's `ip` (always present where the agent runs: it is needed
//! for pods' veths anyway). A child process inherits the calling thread's
//! network namespace, so this works from inside [`super::netns::run_in_netns`].

use std::process::Command;

use tracing::{debug, info};

use super::error::{DatapathError, Result};

/// The encapsulation of the tunnel device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TunnelKind {
    /// VXLAN on UDP 8472 (the Linux/Cilium port, not IANA's 4789).
    Vxlan,
    /// Geneve on UDP 6081.
    Geneve,
}

impl TunnelKind {
    /// UDP destination port on the underlay.
    pub fn udp_port(self) -> u16 {
        match self {
            TunnelKind::Vxlan => 8472,
            TunnelKind::Geneve => 6081,
        }
    }

    /// iproute2 link type.
    pub fn link_type(self) -> &'static str {
        match self {
            TunnelKind::Vxlan => "vxlan",
            TunnelKind::Geneve => "geneve",
        }
    }

    /// Per-packet overhead over an IPv4 underlay (outer IPv4 + UDP + header + inner Ethernet).
    pub fn overhead(self) -> u32 {
        50
    }
}

impl std::str::FromStr for TunnelKind {
    type Err = DatapathError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "vxlan" => Ok(TunnelKind::Vxlan),
            "geneve" => Ok(TunnelKind::Geneve),
            other => Err(DatapathError::invalid(
                "tunnel kind",
                format!("{other:?} (want vxlan or geneve)"),
            )),
        }
    }
}

/// The ifindex of `name` in the calling thread's network namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    let c =
        std::ffi::CString::new(name).map_err(|_| DatapathError::invalid("interface name", name))?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(DatapathError::NoSuchInterface {
            name: name.to_string(),
        });
    }
    Ok(idx)
}

/// The Ethernet address of `name` (SIOCGIFHWADDR) in the calling thread's network namespace.
pub fn mac_address(name: &str) -> Result<[u8; 6]> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(DatapathError::invalid("interface name", name));
    }
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(DatapathError::io(
            "socket for SIOCGIFHWADDR",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: ifreq is plain old data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: fd is a valid socket and req a valid ifreq with a NUL-terminated name.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd was returned by socket(2) above and is closed once.
    unsafe { libc::close(fd) };
    if rc != 0 {
        if err.raw_os_error() == Some(libc::ENODEV) {
            return Err(DatapathError::NoSuchInterface {
                name: name.to_string(),
            });
        }
        return Err(DatapathError::io(format!("SIOCGIFHWADDR {name}"), err));
    }
    // SAFETY: SIOCGIFHWADDR filled the ifru_hwaddr member of the union.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(data.iter()) {
        *dst = *src as u8;
    }
    Ok(mac)
}

/// Runs `ip <args>`; the error carries its stderr.
pub fn ip(args: &[&str]) -> Result<String> {
    let command = format!("ip {}", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| DatapathError::Command {
            command: command.clone(),
            detail: format!("cannot run: {e}"),
        })?;
    if !out.status.success() {
        return Err(DatapathError::Command {
            command,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    debug!(%command, "ran");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Creates (or adopts) the collect-metadata tunnel device `name` and brings it
/// up; returns its ifindex. An existing device is adopted only if it is of the
/// right kind, in external (collect-metadata) mode and on the right port.
pub fn ensure_tunnel_device(kind: TunnelKind, name: &str, mtu: Option<u32>) -> Result<u32> {
    let port = kind.udp_port().to_string();
    if ifindex(name).is_ok() {
        let details = ip(&["-d", "link", "show", "dev", name])?;
        if !tunnel_details_match(&details, kind) {
            return Err(DatapathError::invalid(
                "tunnel device",
                format!(
                    "{name} exists but is not a {} external device on port {port}: {details}",
                    kind.link_type()
                ),
            ));
        }
        debug!(name, "adopting existing tunnel device");
    } else {
        // Generic link options (mtu) go before `type`: iproute2 hands
        // everything after it to the vxlan/geneve parser.
        let mut args = vec!["link", "add", name];
        let mtu_s = mtu.map(|m| m.to_string());
        if let Some(m) = mtu_s.as_deref() {
            args.extend(["mtu", m]);
        }
        args.extend([
            "type",
            kind.link_type(),
            "external",
            "dstport",
            port.as_str(),
        ]);
        ip(&args).map_err(|e| match e {
            DatapathError::Command { detail, .. } if detail.contains("Unknown device type") => {
                DatapathError::Unsupported(format!(
                    "this kernel has no {} devices (CONFIG_{})",
                    kind.link_type(),
                    kind.link_type().to_uppercase()
                ))
            }
            other => other,
        })?;
        info!(name, kind = kind.link_type(), port = %port, "created tunnel device");
    }
    ip(&["link", "set", "dev", name, "up"])?;
    ifindex(name)
}

fn tunnel_details_match(details: &str, kind: TunnelKind) -> bool {
    let port = format!("dstport {}", kind.udp_port());
    let kind_word = format!("{} ", kind.link_type());
    details.contains(&kind_word) && details.contains("external") && details.contains(&port)
}

/// The device the node's traffic to other nodes leaves by, found from the
/// routes: the default route's device, else the first device with a global
/// IPv4 address (not loopback, not `exclude`). Used when `--underlay-dev` is
/// not given (its MTU gives the pod MTU).
pub fn discover_underlay(exclude: &str) -> Result<String> {
    let default = ip(&["-4", "-o", "route", "show", "default"])?;
    if let Some(dev) = dev_after_keyword(&default) {
        return Ok(dev);
    }
    let addrs = ip(&["-4", "-o", "addr", "show", "scope", "global"])?;
    addrs
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|d| d.split('@').next().unwrap_or(d).to_string())
        .find(|d| d != "lo" && d != exclude)
        .ok_or_else(|| {
            DatapathError::invalid(
                "underlay device",
                "no default route and no device with a global IPv4 address (give --underlay-dev)",
            )
        })
}

/// The device of the route the kernel would take to `dst` (`ip route get`).
pub fn route_device(dst: std::net::Ipv4Addr) -> Result<String> {
    let out = ip(&["-4", "-o", "route", "get", &dst.to_string()])?;
    dev_after_keyword(&out)
        .ok_or_else(|| DatapathError::invalid("route", format!("no device in {out:?}")))
}

fn dev_after_keyword(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        w.windows(2)
            .find(|p| p[0] == "dev")
            .map(|p| p[1].to_string())
    })
}

/// Deletes link `name` if it exists.
pub fn delete_link(name: &str) -> Result<()> {
    if ifindex(name).is_err() {
        return Ok(());
    }
    ip(&["link", "del", "dev", name]).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tunnel_kind() {
        assert_eq!("vxlan".parse::<TunnelKind>().ok(), Some(TunnelKind::Vxlan));
        assert_eq!(
            "geneve".parse::<TunnelKind>().ok(),
            Some(TunnelKind::Geneve)
        );
        assert!("gre".parse::<TunnelKind>().is_err());
        assert_eq!(TunnelKind::Vxlan.udp_port(), 8472);
        assert_eq!(TunnelKind::Geneve.udp_port(), 6081);
    }

    #[test]
    fn matches_ip_details() {
        let vx = "5: cm_vxlan: <BROADCAST> mtu 1450\n    vxlan external id 0 srcport 0 0 dstport 8472 nolearning";
        assert!(tunnel_details_match(vx, TunnelKind::Vxlan));
        assert!(!tunnel_details_match(vx, TunnelKind::Geneve));
        assert!(!tunnel_details_match(
            "vxlan id 42 dstport 8472",
            TunnelKind::Vxlan
        ));
    }

    #[test]
    fn loopback_lookups() {
        assert_eq!(ifindex("lo").ok(), Some(1));
        assert_eq!(mac_address("lo").ok(), Some([0; 6]));
        assert!(matches!(
            ifindex("cm-no-such-if0"),
            Err(DatapathError::NoSuchInterface { .. })
        ));
    }
}
