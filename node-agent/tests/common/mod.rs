//! Test harness for the datapath: the shared network-namespace kit
//! (`clustermesh_netkit`: root check, commands, pods, traffic, captures) and
//! this crate's own two-gateway topology that programs the maps directly.
#![allow(dead_code, unused_imports)] // each test binary uses a different subset

pub mod policy;
pub mod topology;

pub use clustermesh_netkit::traffic::{
    ping, ping_fails, start_echo_server, tcp_echo, tcp_echo_here,
};
pub use clustermesh_netkit::{cgroup2_root, kernel_has_link_type, ns_cmd, pcap, require_root};
