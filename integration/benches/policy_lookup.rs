//! Per-packet cost of the policy lookup in `from_pod`, measured with
//! `BPF_PROG_TEST_RUN` (the kernel runs the loaded program on one crafted
//! packet `repeat` times and reports the mean time per run).
//!
//! Needs root. `cargo bench -p clustermesh-integration --bench policy_lookup`
//! (`CM_BENCH_REPEAT`, default 2,000,000 runs per measurement;
//! `CM_BENCH_ROUNDS`, default 5). Scenarios, all a TCP SYN from a local pod
//! to a remote pod (or to an address outside the mesh):
//! - `not enforced`: the source identity has no egress policy (baseline);
//! - `allow, exact port`: enforced, an identity → identity entry for port 80;
//! - `allow, 1-65535`: the same through the 16 prefixes of a full range;
//! - `deny`: enforced, no entry matches (every lookup made);
//! - `allow, ipBlock`: to a `world` address admitted by an ipBlock prefix.
//!
//! Each enforced scenario also holds 2,000 entries of other peers, so the
//! trie is not trivially small.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Command;

use clustermesh_node_agent::datapath::netns::{named_netns_path, run_in_netns};
use clustermesh_node_agent::datapath::{
    self, DatapathConfig, DesiredState, Direction, Endpoint, IpcacheEntry, Ipv4Prefix, Loader,
    Location, PROTO_TCP, PolicyLocal, PolicyPeer, PolicyRule, PortPrefix, Verdict, netdev,
};

const SRC: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
const DST: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 2);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const LOCAL_ID: u32 = 0x01_0100;
const PEER_ID: u32 = 0x02_0100;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TCP SYN from SRC:40000 to `dst`:80 in an Ethernet frame.
fn syn(dst: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    p.extend([0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0]);
    p.extend(SRC.octets());
    p.extend(dst.octets());
    p.extend(40000u16.to_be_bytes());
    p.extend(80u16.to_be_bytes());
    p.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    p
}

/// `BPF_PROG_TEST_RUN`: (return value, mean ns per run).
fn test_run(prog_fd: i32, data: &[u8], ifindex: u32, repeat: u32) -> (u32, u32) {
    let mut ctx = [0u8; 192]; // struct __sk_buff
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    let mut attr = [0u8; 80];
    let put32 =
        |a: &mut [u8; 80], off: usize, v: u32| a[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    let put64 =
        |a: &mut [u8; 80], off: usize, v: u64| a[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    put32(&mut attr, 0, prog_fd as u32);
    put32(&mut attr, 8, data.len() as u32);
    put64(&mut attr, 16, data.as_ptr() as u64);
    put32(&mut attr, 32, repeat);
    put32(&mut attr, 40, ctx.len() as u32);
    put64(&mut attr, 48, ctx.as_ptr() as u64);
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    // SAFETY: attr is a zeroed bpf_attr with the test fields set; the data
    // and ctx buffers outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            attr.as_mut_ptr(),
            attr.len() as u32,
        )
    };
    assert_eq!(
        rc,
        0,
        "BPF_PROG_TEST_RUN: {}",
        std::io::Error::last_os_error()
    );
    let get32 = |off: usize| u32::from_ne_bytes(attr[off..off + 4].try_into().unwrap_or_default());
    (get32(4), get32(36))
}

fn base(ifindex: u32) -> DesiredState {
    let mut d = DesiredState::default();
    d.endpoints.insert(
        ifindex,
        Endpoint {
            pod_mac: [2, 0, 0, 0, 0, 3],
            host_mac: [2, 0, 0, 0, 0, 4],
            identity: LOCAL_ID,
        },
    );
    d.ipcache.insert(
        Ipv4Prefix::host(SRC),
        IpcacheEntry {
            identity: LOCAL_ID,
            location: Location::Local { ifindex },
        },
    );
    d.ipcache.insert(
        Ipv4Prefix::host(DST),
        IpcacheEntry {
            identity: PEER_ID,
            location: Location::Remote {
                tunnel_endpoint: Ipv4Addr::new(172, 31, 255, 2),
            },
        },
    );
    d
}

fn enforced(ifindex: u32) -> DesiredState {
    let mut d = base(ifindex);
    d.enforced.insert((LOCAL_ID, Direction::Egress));
    for n in 0..2000u32 {
        d.policy.insert(
            PolicyRule::identities(LOCAL_ID, 0x03_0000 + n, PROTO_TCP, 8080, Direction::Egress),
            Verdict::Allow,
        );
    }
    d
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP policy_lookup: needs root (eBPF, netns)");
        return;
    }
    let repeat: u32 = std::env::var("CM_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let rounds: usize = std::env::var("CM_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let ns = format!("cmbench-pol-{}", std::process::id());
    ip(&["netns", "add", &ns]);
    let pin_dir = datapath::default_pin_dir(&format!("bench-pol-{}", std::process::id()));
    let result = std::panic::catch_unwind(|| run(&ns, &pin_dir, repeat, rounds));
    let _ = datapath::destroy(&pin_dir);
    let _ = Command::new("ip").args(["netns", "del", &ns]).output();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn run(ns: &str, pin_dir: &std::path::Path, repeat: u32, rounds: usize) {
    ip(&[
        "-n", ns, "link", "add", "vb0", "type", "veth", "peer", "name", "vb1",
    ]);
    ip(&["-n", ns, "link", "set", "vb0", "up"]);
    ip(&["-n", ns, "link", "set", "vb1", "up"]);
    let pin = pin_dir.to_path_buf();
    let path = named_netns_path(ns);
    let (mut loader, ifindex, tun) = run_in_netns(&path, move || {
        let l = Loader::load(&pin).expect("load");
        (
            l,
            netdev::ifindex("vb0").expect("vb0"),
            netdev::ifindex("vb1").expect("vb1"),
        )
    })
    .expect("netns");
    let fd = loader.from_pod_fd().expect("from_pod fd");
    let mut dp = loader.datapath().expect("maps");
    dp.set_config(&DatapathConfig {
        tunnel_ifindex: tun,
        ..Default::default()
    })
    .expect("config");

    let range = {
        let mut d = enforced(ifindex);
        for pp in PortPrefix::cover(1, 65535) {
            d.policy.insert(
                PolicyRule {
                    local: PolicyLocal::Identity(LOCAL_ID),
                    peer: PolicyPeer::Identity(PEER_ID),
                    proto: PROTO_TCP,
                    port: pp,
                    direction: Direction::Egress,
                },
                Verdict::Allow,
            );
        }
        d
    };
    let exact = {
        let mut d = enforced(ifindex);
        d.policy.insert(
            PolicyRule::identities(LOCAL_ID, PEER_ID, PROTO_TCP, 80, Direction::Egress),
            Verdict::Allow,
        );
        d
    };
    let ip_block = {
        let mut d = enforced(ifindex);
        let p: Ipv4Prefix = "198.51.100.0/24".parse().expect("prefix");
        d.policy_cidrs.insert(p);
        d.policy.insert(
            PolicyRule {
                local: PolicyLocal::Identity(LOCAL_ID),
                peer: PolicyPeer::Cidr {
                    addr: p.addr(),
                    len: p.len(),
                },
                proto: PROTO_TCP,
                port: PortPrefix::exact(80),
                direction: Direction::Egress,
            },
            Verdict::Allow,
        );
        d
    };
    let scenarios: Vec<(&str, DesiredState, Ipv4Addr, u32)> = vec![
        ("not enforced", base(ifindex), DST, TC_ACT_REDIRECT),
        ("allow, exact port", exact, DST, TC_ACT_REDIRECT),
        ("allow, 1-65535", range, DST, TC_ACT_REDIRECT),
        ("deny", enforced(ifindex), DST, TC_ACT_SHOT),
        ("allow, ipBlock", ip_block, OUTSIDE, TC_ACT_OK),
    ];
    let mut results: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
    for _ in 0..rounds {
        for (i, (name, state, dst, want)) in scenarios.iter().enumerate() {
            dp.apply(state).expect("apply");
            dp.flush_ct().expect("flush ct");
            let data = syn(*dst);
            let (ifx, want, name) = (ifindex, *want, name.to_string());
            let (rc, ns_per_run) =
                run_in_netns(&path, move || test_run(fd, &data, ifx, repeat)).expect("netns");
            assert_eq!(rc, want, "{name}: program returned {rc}");
            results.entry(i).or_default().push(ns_per_run);
        }
    }
    println!(
        "| scenario | from_pod, ns per packet (median of {rounds} × {repeat} runs) | all rounds |"
    );
    println!("|---|---|---|");
    for (i, (name, ..)) in scenarios.iter().enumerate() {
        let mut v = results.remove(&i).unwrap_or_default();
        v.sort_unstable();
        let median = v.get(v.len() / 2).copied().unwrap_or(0);
        println!("| {name} | {median} | {v:?} |");
    }
    drop(loader);
}
