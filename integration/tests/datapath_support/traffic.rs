//! Traffic between the pods of the topology: the shared kit's probes
//! (`clustermesh_netkit::traffic`), plus clients of the socket load balancer
//! (which acts per cgroup, so they run as child processes placed in the
//! agent's cgroup).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use clustermesh_netkit::named_netns_path;
pub use clustermesh_netkit::traffic::{
    BackgroundPing, GapPing, ping, ping_fails, start_whoami, whoami,
};

/// Opens `n` connections to `target` from pod netns `ns` inside cgroup `cg`
/// (where the agent attached the socket load balancer) and returns what
/// each answered ("FAIL" for a failed connection).
pub fn lb_connects(ns: &str, cg: &Path, target: SocketAddr, n: u32) -> Vec<String> {
    let script = format!(
        "for i in $(seq {n}); do timeout 3 bash -c 'read -r l < /dev/tcp/{}/{} && echo \"$l\"' || echo FAIL; done",
        target.ip(),
        target.port()
    );
    let out = Command::new("sh")
        .args(["-c", "echo $$ > \"$0/cgroup.procs\" && exec \"$@\""])
        .arg(cg)
        .arg("nsenter")
        .arg(format!("--net={}", named_netns_path(ns).display()))
        .args(["bash", "-c", &script])
        .output()
        .expect("running the load-balancer client");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .collect()
}
