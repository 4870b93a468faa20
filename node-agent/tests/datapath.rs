//! End-to-end tests of the eBPF datapath in network namespaces (need root).
//!
//! Each test builds its own topology (tests/common/topology.rs): two gateways
//! with a veth underlay and pods behind veths, the programs loaded from this
//! process into a per-test pin directory, maps programmed directly. Traffic
//! stays inside the namespaces the test creates.

mod common;

use std::net::{Ipv4Addr, SocketAddr};

use clustermesh_node_agent::datapath::{
    DatapathConfig, Direction, Loader, PROTO_ICMP, PROTO_TCP, PolicyRule, Reason, TunnelKind,
    Verdict,
};
use common::pcap::Capture;
use common::topology::{Topology, UNDERLAY_IF, identity};
use common::{ping, ping_fails, require_root, start_echo_server, tcp_echo};

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
const POD_A2: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 3);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 2);

fn two_clusters(kind: TunnelKind) -> Topology {
    let mut t = Topology::new(
        kind,
        [&[(POD_A, identity(1, 0))], &[(POD_B, identity(2, 0))]],
    );
    t.load_and_program();
    t
}

/// Pings across the tunnel both ways and checks the VNI on the wire is the
/// source pod's identity.
fn ping_across_with_identity_vni(kind: TunnelKind) {
    let t = two_clusters(kind);
    let file = std::env::temp_dir().join(format!("cm-vni-{}-{:?}.pcap", std::process::id(), kind));
    let cap = Capture::start(
        &t.gws[0].ns,
        UNDERLAY_IF,
        t.gws[0].underlay_ip,
        kind.udp_port(),
        &file,
    );
    assert!(
        ping(&t.pod(0, 0).ns, POD_B, 3),
        "podA -> podB ping across {kind:?} failed"
    );
    assert_eq!(
        cap.vni(),
        identity(1, 0),
        "VNI on the underlay must be podA's identity"
    );
    assert!(
        ping(&t.pod(1, 0).ns, POD_A, 3),
        "podB -> podA ping across {kind:?} failed"
    );
    let ma = t.datapath(0).metrics().expect("metrics");
    let mb = t.datapath(1).metrics().expect("metrics");
    assert!(ma.packets(Reason::Forwarded) >= 6, "gwA forwarded: {ma:?}");
    assert!(mb.packets(Reason::Forwarded) >= 6, "gwB forwarded: {mb:?}");
    assert_eq!(
        ma.packets(Reason::DropPolicyDeny) + mb.packets(Reason::DropPolicyDeny),
        0
    );

    // Delivery with bpf_redirect_peer (straight into the pod's netns) works as well.
    for g in 0..2 {
        let mut dp = t.datapath(g);
        let cfg = DatapathConfig {
            redirect_peer: true,
            ..dp.config().expect("config")
        };
        dp.set_config(&cfg).expect("config");
    }
    assert!(
        ping(&t.pod(0, 0).ns, POD_B, 2),
        "ping with redirect_peer delivery failed"
    );
}

#[test]
fn vxlan_ping_across_and_vni_is_source_identity() {
    if !require_root("vxlan_ping_across_and_vni_is_source_identity") {
        return;
    }
    ping_across_with_identity_vni(TunnelKind::Vxlan);
}

#[test]
fn geneve_ping_across_and_vni_is_source_identity() {
    if !require_root("geneve_ping_across_and_vni_is_source_identity") {
        return;
    }
    if !common::kernel_has_link_type("geneve") {
        eprintln!(
            "SKIP geneve_ping_across_and_vni_is_source_identity: this kernel has no geneve (CONFIG_GENEVE unset)"
        );
        return;
    }
    ping_across_with_identity_vni(TunnelKind::Geneve);
}

#[test]
fn local_pods_talk_through_from_pod() {
    if !require_root("local_pods_talk_through_from_pod") {
        return;
    }
    let mut t = Topology::new(
        TunnelKind::Vxlan,
        [
            &[(POD_A, identity(1, 0)), (POD_A2, identity(1, 1))],
            &[(POD_B, identity(2, 0))],
        ],
    );
    t.load_and_program();
    assert!(
        ping(&t.pod(0, 0).ns, POD_A2, 3),
        "local pod -> pod ping failed"
    );
    assert!(
        ping(&t.pod(0, 1).ns, POD_B, 2),
        "second local pod -> remote ping failed"
    );

    // Enforce ingress on A2 with nothing allowed: local traffic to it is dropped.
    let mut dp = t.datapath(0);
    dp.set_enforced(identity(1, 1), Direction::Ingress)
        .expect("enforce");
    let before = dp
        .metrics()
        .expect("metrics")
        .packets(Reason::DropPolicyDeny);
    assert!(
        ping_fails(&t.pod(0, 0).ns, POD_A2),
        "ping to a default-deny local pod passed"
    );
    assert!(
        dp.metrics()
            .expect("metrics")
            .packets(Reason::DropPolicyDeny)
            > before
    );
    // A2 may still open connections itself: the replies pass through CT.
    assert!(
        ping(&t.pod(0, 1).ns, POD_A, 2),
        "replies to a default-deny pod's own ping were dropped"
    );
}

#[test]
fn ingress_policy_allows_only_tcp_8080() {
    if !require_root("ingress_policy_allows_only_tcp_8080") {
        return;
    }
    let t = two_clusters(TunnelKind::Vxlan);
    let (id_a, id_b) = (identity(1, 0), identity(2, 0));
    let server = SocketAddr::from((POD_B, 8080));
    start_echo_server(&t.pod(1, 0).ns, server).expect("echo server in podB");
    start_echo_server(&t.pod(1, 0).ns, SocketAddr::from((POD_B, 9090)))
        .expect("second server in podB");
    assert!(ping(&t.pod(0, 0).ns, POD_B, 2), "baseline ping failed");

    let mut dp_b = t.datapath(1);
    let rule = PolicyRule::identities(id_b, id_a, PROTO_TCP, 8080, Direction::Ingress);
    dp_b.upsert_policy(&rule, Verdict::Allow).expect("policy");
    dp_b.set_enforced(id_b, Direction::Ingress)
        .expect("enforce");
    let denied_before = dp_b
        .metrics()
        .expect("metrics")
        .packets(Reason::DropPolicyDeny);

    assert!(
        ping_fails(&t.pod(0, 0).ns, POD_B),
        "ping passed although only TCP 8080 is allowed"
    );
    let denied_after = dp_b
        .metrics()
        .expect("metrics")
        .packets(Reason::DropPolicyDeny);
    assert!(
        denied_after > denied_before,
        "DROP_POLICY_DENY did not increase ({denied_before} -> {denied_after})"
    );

    let got = tcp_echo(&t.pod(0, 0).ns, server, b"hello 8080").expect("TCP 8080 across the tunnel");
    assert_eq!(got, b"hello 8080");
    assert!(
        tcp_echo(&t.pod(0, 0).ns, SocketAddr::from((POD_B, 9090)), b"x").is_err(),
        "TCP 9090 passed"
    );
    let stats = dp_b.policy_entries().expect("policy entries");
    assert!(
        stats[&rule].packets > 0,
        "the allow entry counted no packet"
    );

    // podB's own pings to podA still work: their replies are CT replies.
    assert!(
        ping(&t.pod(1, 0).ns, POD_A, 2),
        "podB -> podA (replies via CT) failed"
    );

    // An explicit ICMP allow from podA's identity opens ping again.
    let icmp = PolicyRule::identities(id_b, id_a, PROTO_ICMP, 0, Direction::Ingress);
    dp_b.upsert_policy(&icmp, Verdict::Allow)
        .expect("icmp rule");
    assert!(
        ping(&t.pod(0, 0).ns, POD_B, 2),
        "ping with an ICMP allow entry failed"
    );
}

#[test]
fn reserved_identity_on_the_wire_is_dropped() {
    if !require_root("reserved_identity_on_the_wire_is_dropped") {
        return;
    }
    // Cluster A's pod is (wrongly) given the reserved identity 7: gwA refuses to
    // send it, and the counter says why.
    let mut t = Topology::new(
        TunnelKind::Vxlan,
        [&[(POD_A, 7)], &[(POD_B, identity(2, 0))]],
    );
    t.load_and_program();
    assert!(ping_fails(&t.pod(0, 0).ns, POD_B));
    assert!(
        t.datapath(0)
            .metrics()
            .expect("metrics")
            .packets(Reason::DropInvalidIdentity)
            > 0
    );
}

#[test]
fn restart_keeps_pinned_maps_and_traffic() {
    if !require_root("restart_keeps_pinned_maps_and_traffic") {
        return;
    }
    let mut t = two_clusters(TunnelKind::Vxlan);
    let (id_a, id_b) = (identity(1, 0), identity(2, 0));
    let rule = PolicyRule::identities(id_b, id_a, PROTO_ICMP, 0, Direction::Ingress);
    {
        let mut dp = t.datapath(1);
        dp.upsert_policy(&rule, Verdict::Allow).expect("policy");
        dp.set_enforced(id_b, Direction::Ingress).expect("enforce");
    }
    assert!(ping(&t.pod(0, 0).ns, POD_B, 2));
    let before: Vec<_> = (0..2)
        .map(|g| t.datapath(g).read_state().expect("state"))
        .collect();
    let links_before = t.gws[1]
        .loader
        .as_ref()
        .expect("loaded")
        .attached()
        .expect("links");

    // The agents go away: pinned links keep the programs attached.
    for gw in &mut t.gws {
        gw.loader = None;
    }
    assert!(
        ping(&t.pod(0, 0).ns, POD_B, 2),
        "traffic stopped while the agents were down"
    );

    // The agents come back: maps are adopted, programs swapped into the links.
    for (g, state) in before.iter().enumerate() {
        t.load(g);
        let dp = t.datapath(g);
        assert_eq!(
            &dp.read_state().expect("state"),
            state,
            "gateway {g}: maps changed across the restart"
        );
    }
    assert_eq!(
        t.gws[1]
            .loader
            .as_ref()
            .expect("loaded")
            .attached()
            .expect("links"),
        links_before
    );
    assert!(ping(&t.pod(0, 0).ns, POD_B, 2), "ping after restart failed");
    assert!(t.datapath(1).policy_entries().expect("policy")[&rule].packets > 0);

    // Re-applying the same desired state (plus the policy) writes nothing.
    let mut dp = t.datapath(1);
    let mut desired = t.desired(1);
    desired.policy.insert(rule, Verdict::Allow);
    desired.enforced.insert((id_b, Direction::Ingress));
    let report = dp.apply(&desired).expect("apply");
    assert_eq!((report.upserts, report.deletes), (0, 0), "{report:?}");
    // And dropping the policy from the desired state removes exactly it.
    let report = dp.apply(&t.desired(1)).expect("apply");
    assert_eq!((report.upserts, report.deletes), (0, 2), "{report:?}");
}

#[test]
fn reload_adopts_pins_and_refuses_incompatible_ones() {
    if !require_root("reload_adopts_pins_and_refuses_incompatible_ones") {
        return;
    }
    let t = Topology::new(TunnelKind::Vxlan, [&[], &[]]);
    let dir = t.gws[0].pin_dir.clone();
    drop(Loader::load(&dir).expect("first load"));
    let cfg = DatapathConfig {
        tunnel_ifindex: 42,
        redirect_peer: true,
        ..Default::default()
    };
    t.datapath(0).set_config(&cfg).expect("config");
    drop(Loader::load(&dir).expect("second load adopts the pins"));
    assert_eq!(
        t.datapath(0).config().expect("config"),
        cfg,
        "config lost across reload"
    );

    // Put a map of another layout where cm_policy_lpm should be: refuse, name the pin.
    std::fs::remove_file(dir.join("cm_policy_lpm")).expect("unpin cm_policy_lpm");
    std::fs::rename(dir.join("cm_endpoints"), dir.join("cm_policy_lpm")).expect("rename in bpffs");
    let err = Loader::load(&dir)
        .err()
        .expect("an incompatible pin must be refused");
    let msg = err.to_string();
    assert!(
        msg.contains("cm_policy_lpm") && msg.contains("does not match"),
        "{msg}"
    );
}

#[test]
fn unknown_source_and_mismatched_identity_are_dropped() {
    if !require_root("unknown_source_and_mismatched_identity_are_dropped") {
        return;
    }
    let t = two_clusters(TunnelKind::Vxlan);
    let pod_a = t.pod(0, 0).ns.clone();

    // podA sends from an address the ipcache does not know.
    let out = common::ns_cmd(
        &pod_a,
        &["ip", "addr", "add", "10.1.0.99/32", "dev", "eth0"],
    );
    assert!(out.status.success(), "adding a second address: {out:?}");
    let out = common::ns_cmd(
        &pod_a,
        &[
            "ping",
            "-n",
            "-q",
            "-c",
            "1",
            "-W",
            "1",
            "-I",
            "10.1.0.99",
            "10.2.0.2",
        ],
    );
    assert!(
        !out.status.success(),
        "a ping from an unknown source passed"
    );
    assert!(
        t.datapath(0)
            .metrics()
            .expect("metrics")
            .packets(Reason::DropUnknownSource)
            > 0
    );

    // gwB believes podA has another identity: with strict_source the VNI
    // (podA's real identity) does not match and the packet is dropped.
    let mut dp_b = t.datapath(1);
    let mut desired = t.desired(1);
    for entry in desired.ipcache.values_mut() {
        if entry.identity == identity(1, 0) {
            entry.identity = identity(1, 5);
        }
    }
    dp_b.apply(&desired).expect("apply");
    assert!(
        ping(&pod_a, POD_B, 1),
        "without strict_source the VNI is trusted"
    );
    let cfg = DatapathConfig {
        strict_source: true,
        ..dp_b.config().expect("config")
    };
    dp_b.set_config(&cfg).expect("config");
    let before = dp_b
        .metrics()
        .expect("metrics")
        .packets(Reason::DropInvalidIdentity);
    assert!(
        ping_fails(&pod_a, POD_B),
        "strict_source let a mismatched VNI through"
    );
    assert!(
        dp_b.metrics()
            .expect("metrics")
            .packets(Reason::DropInvalidIdentity)
            > before
    );
}
