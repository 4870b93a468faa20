//! Network namespaces for clustermesh: entering one ([`netns`], used by the
//! node agent itself), and the **one** test kit of every datapath test, in
//! `node-agent/tests/` and in `integration/`: the root check, commands in a
//! namespace ([`cmd`]), namespaces removed on drop, CNI-like pods ([`pod`]),
//! traffic probes ([`traffic`]) and tunnel captures ([`pcap`]).

pub mod cmd;
pub mod netns;
pub mod pcap;
pub mod pod;
pub mod traffic;

pub use cmd::{Namespaces, cgroup2_root, ip, kernel_has_link_type, ns_cmd, run, sysctl};
pub use netns::{enter_netns, named_netns_path, run_in_netns};

/// True if a root-only test may run. Not root: panics when `CI` is set (it
/// must not silently pass there), else prints SKIP and returns false.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test} needs root (network namespaces, eBPF): run as root");
    }
    eprintln!("SKIP {test}: needs root (network namespaces, eBPF)");
    false
}
