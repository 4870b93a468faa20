//! Test harness for the datapath: root check, netns topology, traffic tools.
#![allow(dead_code)] // each test binary uses a different subset

pub mod pcap;
pub mod policy;
pub mod topology;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use clustermesh_node_agent::datapath::netns::{named_netns_path, run_in_netns};

/// True if the tests may run. Not root: panics under CI (they must not
/// silently pass there), otherwise prints why and returns false.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("datapath tests need root: run as root ({test})");
    }
    eprintln!("SKIP {test}: datapath tests need root (netns, eBPF); run as root");
    false
}

/// Runs a command (with args) inside netns `ns` via nsenter (network namespace only).
pub fn ns_cmd(ns: &str, args: &[&str]) -> Output {
    let netns = format!("--net={}", named_netns_path(ns).display());
    Command::new("nsenter")
        .arg(netns)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run nsenter {args:?}: {e}"))
}

/// Pings `dst` from netns `ns`; true if every echo got a reply.
pub fn ping(ns: &str, dst: Ipv4Addr, count: u32) -> bool {
    let c = count.to_string();
    let d = dst.to_string();
    let out = ns_cmd(
        ns,
        &["ping", "-n", "-q", "-c", &c, "-i", "0.2", "-W", "2", &d],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let want = format!("{count} received");
    out.status.success() && text.contains(&want)
}

/// Pings `dst` from `ns` and returns true if *no* echo was answered.
pub fn ping_fails(ns: &str, dst: Ipv4Addr) -> bool {
    let d = dst.to_string();
    let out = ns_cmd(
        ns,
        &["ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "1", &d],
    );
    !out.status.success()
}

/// Starts an echo server bound to `addr` inside netns `ns` (the socket stays in
/// that namespace; the accept loop runs on a plain thread).
pub fn start_echo_server(ns: &str, addr: SocketAddr) -> std::io::Result<()> {
    let listener = run_in_netns(&named_netns_path(ns), move || TcpListener::bind(addr))
        .map_err(std::io::Error::other)??;
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 1024];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(())
}

/// Connects from netns `ns` to `addr`, sends `msg` and returns what came back.
pub fn tcp_echo(ns: &str, addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let msg = msg.to_vec();
    run_in_netns(&named_netns_path(ns), move || tcp_echo_here(addr, &msg))
        .map_err(std::io::Error::other)?
}

/// Connects (from the current network namespace) to `addr`, sends `msg` and
/// returns what came back.
pub fn tcp_echo_here(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(msg)?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got)?;
    Ok(got)
}

/// The cgroup v2 mount point, from /proc/mounts.
pub fn cgroup2_root() -> Option<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[2] == "cgroup2").then(|| Path::new(f[1]).to_path_buf())
    })
}

/// True if this kernel can create links of `kind` (e.g. "geneve"), tried in a
/// scratch network namespace.
pub fn kernel_has_link_type(kind: &str) -> bool {
    let ns = format!("cm{}-probe-{kind}", std::process::id());
    let run = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !run(&["netns", "add", &ns]) {
        return false;
    }
    let ok = run(&["-n", &ns, "link", "add", "probe0", "type", kind, "external"]);
    run(&["netns", "del", &ns]);
    ok
}
