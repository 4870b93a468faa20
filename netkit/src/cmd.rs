//! Commands in and around network namespaces, and namespaces that remove
//! themselves.

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::netns::named_netns_path;

/// Runs a command, panicking with its stderr on failure.
pub fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `ip args…`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    run("ip", args);
}

/// Sets a sysctl (`key=value`) inside netns `ns`.
pub fn sysctl(ns: &str, kv: &str) {
    run("ip", &["netns", "exec", ns, "sysctl", "-qw", kv]);
}

/// Runs a command inside netns `ns` via nsenter (network namespace only, so
/// the host's mounts, bpffs included, stay visible).
pub fn ns_cmd(ns: &str, args: &[&str]) -> Output {
    ns_command(ns, args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run nsenter {args:?}: {e}"))
}

/// The `nsenter --net=… args…` command, to spawn or adjust.
pub fn ns_command(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", named_netns_path(ns).display()))
        .args(args);
    c
}

/// The cgroup v2 mount point, from /proc/mounts.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
    })
}

/// True if this kernel can create links of `kind` (e.g. "geneve"), tried in a
/// scratch network namespace.
pub fn kernel_has_link_type(kind: &str) -> bool {
    let ns = format!("cm{}-probe-{kind}", std::process::id());
    let ok = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !ok(&["netns", "add", &ns]) {
        return false;
    }
    let has = ok(&["-n", &ns, "link", "add", "probe0", "type", kind, "external"]);
    ok(&["netns", "del", &ns]);
    has
}

/// Network namespaces made by a test, deleted (newest first) on drop, with
/// everything in them (links, routes), even when the test panics.
#[derive(Default)]
pub struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    pub fn new() -> Self {
        Self::default()
    }

    /// `ip netns add name`, loopback up.
    pub fn add(&mut self, name: &str) -> String {
        ip(&["netns", "add", name]);
        self.names.push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"]);
        name.to_string()
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in self.names.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
