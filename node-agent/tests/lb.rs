//! End-to-end tests of the socket load balancer (cgroup connect4/sendmsg4/recvmsg4).
//!
//! cgroup membership is per process, so the client is this test binary
//! re-executed (`lb_client_helper`) after `sh` moved itself into a test
//! cgroup and `nsenter` put it in podA's network namespace.

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clustermesh_node_agent::datapath::netns::{named_netns_path, run_in_netns};
use clustermesh_node_agent::datapath::{
    Backend, Frontend, PROTO_TCP, PROTO_UDP, Reason, Service, TunnelKind,
};
use common::topology::{Topology, identity};
use common::{cgroup2_root, require_root, start_echo_server};

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 2);
const FRONTEND_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const MARK: &str = "LBRESULT";

/// Not a test of its own: the client side, run in a child process when
/// `CM_LB_CLIENT` is set (`tcp` or `udp`, target in `CM_LB_TARGET`).
#[test]
fn lb_client_helper() {
    let (Ok(mode), Ok(target)) = (std::env::var("CM_LB_CLIENT"), std::env::var("CM_LB_TARGET"))
    else {
        return;
    };
    let target: SocketAddr = target.parse().expect("CM_LB_TARGET");
    let result = match mode.as_str() {
        "tcp" => common::tcp_echo_here(target, b"ping-tcp")
            .map(|b| format!("{} {target}", String::from_utf8_lossy(&b))),
        "udp" => udp_roundtrip(target),
        m => panic!("unknown CM_LB_CLIENT {m}"),
    };
    match result {
        Ok(r) => println!("{MARK} ok {r}"),
        Err(e) => println!("{MARK} err {e}"),
    }
}

/// Unconnected UDP: sendto the frontend, recvfrom must report the frontend as source.
fn udp_roundtrip(target: SocketAddr) -> std::io::Result<String> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.send_to(b"ping-udp", target)?;
    let mut buf = [0u8; 64];
    let (n, from) = s.recv_from(&mut buf)?;
    Ok(format!("{} {from}", String::from_utf8_lossy(&buf[..n])))
}

/// Runs the client helper in netns `ns`, inside cgroup `cg`; returns the result line.
fn run_client(ns: &str, cg: &Path, mode: &str, target: SocketAddr) -> String {
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new("sh")
        .args(["-c", "echo $$ > \"$0/cgroup.procs\" && exec \"$@\""])
        .arg(cg)
        .arg("nsenter")
        .arg(format!("--net={}", named_netns_path(ns).display()))
        .arg(exe)
        .args([
            "--exact",
            "lb_client_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CM_LB_CLIENT", mode)
        .env("CM_LB_TARGET", target.to_string())
        .output()
        .expect("running the client helper");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.split_once(MARK).map(|(_, r)| r.trim().to_string()))
        .unwrap_or_else(|| {
            panic!(
                "client helper printed no result: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

fn make_cgroup(t: &mut Topology) -> PathBuf {
    let root = cgroup2_root().expect("a cgroup v2 mount (cgroup2 in /proc/mounts)");
    let cg = root.join(format!("cm-test-{}-{}", std::process::id(), t.gws[0].ns));
    std::fs::create_dir_all(&cg).expect("creating test cgroup");
    t.cgroups.push(cg.clone());
    cg
}

fn start_udp_echo(ns: &str, addr: SocketAddr) {
    let sock = run_in_netns(&named_netns_path(ns), move || UdpSocket::bind(addr))
        .expect("netns")
        .expect("bind UDP echo");
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    });
}

#[test]
fn connect_and_sendmsg_to_frontend_reach_backend() {
    if !require_root("connect_and_sendmsg_to_frontend_reach_backend") {
        return;
    }
    let mut t = Topology::new(
        TunnelKind::Vxlan,
        [&[(POD_A, identity(1, 0))], &[(POD_B, identity(2, 0))]],
    );
    t.load_and_program();
    let cg = make_cgroup(&mut t);
    t.gws[0]
        .loader
        .as_mut()
        .expect("loaded")
        .attach_lb(&cg)
        .expect("attach LB");
    start_echo_server(&t.pod(1, 0).ns, SocketAddr::from((POD_B, 8080))).expect("TCP backend");
    start_udp_echo(&t.pod(1, 0).ns, SocketAddr::from((POD_B, 5353)));

    let mut dp = t.datapath(0);
    let tcp_fe = Frontend {
        ip: FRONTEND_IP,
        port: 80,
        proto: PROTO_TCP,
    };
    let udp_fe = Frontend {
        ip: FRONTEND_IP,
        port: 53,
        proto: PROTO_UDP,
    };
    let svc = |id, port| Service {
        service_id: id,
        affinity: Default::default(),
        backends: vec![Backend { ip: POD_B, port }],
    };
    dp.upsert_service(&tcp_fe, &svc(1, 8080))
        .expect("tcp service");
    dp.upsert_service(&udp_fe, &svc(2, 5353))
        .expect("udp service");
    let before = dp.metrics().expect("metrics").packets(Reason::LbTranslated);

    let pod_a = t.pod(0, 0).ns.clone();
    let tcp = run_client(
        &pod_a,
        &cg,
        "tcp",
        SocketAddr::V4(SocketAddrV4::new(FRONTEND_IP, 80)),
    );
    assert_eq!(
        tcp, "ok ping-tcp 10.96.0.10:80",
        "TCP connect to the frontend"
    );
    let udp = run_client(
        &pod_a,
        &cg,
        "udp",
        SocketAddr::V4(SocketAddrV4::new(FRONTEND_IP, 53)),
    );
    assert_eq!(
        udp, "ok ping-udp 10.96.0.10:53",
        "UDP reply must come from the frontend address"
    );
    let after = dp.metrics().expect("metrics").packets(Reason::LbTranslated);
    assert!(after >= before + 2, "LB_TRANSLATED {before} -> {after}");

    // No backend left: connect is refused at once, and counted.
    dp.upsert_service(&tcp_fe, &svc(1, 8080))
        .expect("same service again");
    dp.upsert_service(
        &tcp_fe,
        &Service {
            backends: vec![],
            ..svc(1, 8080)
        },
    )
    .expect("empty service");
    assert!(
        dp.backends_raw()
            .expect("backends")
            .keys()
            .all(|k| k.service_id != 1),
        "slots left behind"
    );
    let refused = run_client(
        &pod_a,
        &cg,
        "tcp",
        SocketAddr::V4(SocketAddrV4::new(FRONTEND_IP, 80)),
    );
    assert!(
        refused.starts_with("err"),
        "connect to a frontend without backends: {refused}"
    );
    assert!(dp.metrics().expect("metrics").packets(Reason::LbNoBackend) > 0);

    assert!(dp.delete_service(&udp_fe).expect("delete"));
    assert!(
        t.gws[0]
            .loader
            .as_mut()
            .expect("loaded")
            .detach_lb(&cg)
            .expect("detach")
    );
}
