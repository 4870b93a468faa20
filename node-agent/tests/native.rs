//! Native-routing mode in network namespaces (needs root): no encapsulation,
//! the gateways route remote pod CIDRs via each other's underlay address, and
//! `from_underlay` on the receiving gateway takes the source identity from
//! its ipcache for ingress policy.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;

use clustermesh_node_agent::datapath::netns::named_netns_path;
use clustermesh_node_agent::datapath::{
    Direction, PROTO_TCP, PolicyRule, Reason, TunnelKind, Verdict,
};
use common::topology::{Topology, UNDERLAY_IF, identity};
use common::{ping, ping_fails, require_root, start_echo_server, tcp_echo};

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 2);

/// Counts ICMP packets between the pods seen in clear on gwA's underlay.
fn plain_icmp_on_underlay(ns: &str, during: impl FnOnce()) -> usize {
    let file = std::env::temp_dir().join(format!("cm-native-{}.pcap", std::process::id()));
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", named_netns_path(ns).display()))
        .args([
            "tcpdump",
            "-n",
            "-U",
            "--immediate-mode",
            "-i",
            UNDERLAY_IF,
            "-w",
        ])
        .arg(&file)
        .args(["icmp", "and", "host", &POD_A.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tcpdump (apt-get install tcpdump)");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("listening on") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .expect("tcpdump did not start");
    during();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _ = child.kill();
    let _ = child.wait();
    let out = Command::new("tcpdump")
        .args(["-n", "-r"])
        .arg(&file)
        .output()
        .expect("tcpdump -r");
    let _ = std::fs::remove_file(&file);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("ICMP"))
        .count()
}

#[test]
fn native_routing_with_identity_from_ipcache() {
    if !require_root("native_routing_with_identity_from_ipcache") {
        return;
    }
    let mut t = Topology::new(
        TunnelKind::Vxlan,
        [&[(POD_A, identity(1, 0))], &[(POD_B, identity(2, 0))]],
    );
    t.load_and_program();
    t.go_native(["10.1.0.0/24", "10.2.0.0/24"]);

    let seen = plain_icmp_on_underlay(&t.gws[0].ns, || {
        assert!(
            ping(&t.pod(0, 0).ns, POD_B, 2),
            "podA -> podB (native) failed"
        );
    });
    assert!(
        seen >= 4,
        "expected plain ICMP on the underlay, saw {seen} packets"
    );
    assert!(
        ping(&t.pod(1, 0).ns, POD_A, 2),
        "podB -> podA (native) failed"
    );

    // Ingress policy at B keyed by A's identity, which B only knows from its ipcache.
    let server = SocketAddr::from((POD_B, 8080));
    start_echo_server(&t.pod(1, 0).ns, server).expect("echo server");
    let mut dp_b = t.datapath(1);
    dp_b.upsert_policy(
        &PolicyRule::identities(
            identity(2, 0),
            identity(1, 0),
            PROTO_TCP,
            8080,
            Direction::Ingress,
        ),
        Verdict::Allow,
    )
    .expect("policy");
    dp_b.set_enforced(identity(2, 0), Direction::Ingress)
        .expect("enforce");
    let before = dp_b
        .metrics()
        .expect("metrics")
        .packets(Reason::DropPolicyDeny);
    assert!(ping_fails(&t.pod(0, 0).ns, POD_B), "ICMP passed the policy");
    assert!(
        dp_b.metrics()
            .expect("metrics")
            .packets(Reason::DropPolicyDeny)
            > before
    );
    let got = tcp_echo(&t.pod(0, 0).ns, server, b"native").expect("TCP 8080 allowed");
    assert_eq!(got, b"native");
    assert!(
        ping(&t.pod(1, 0).ns, POD_A, 1),
        "B's own flows still pass (A has no policy)"
    );
}
