//! Issue 13: port ranges of any width, named ports per pod, fail-closed
//! identities, ipBlock with except, refusals.

use super::*;

fn ranged(lo: u32, hi: u32) -> PolicyPort {
    PolicyPort {
        protocol: "TCP".into(),
        port: Some(lo),
        end_port: Some(hi),
        ..Default::default()
    }
}

fn any_peer(ports: Vec<PolicyPort>) -> pb::PolicyRule {
    pb::PolicyRule {
        peers: vec![],
        ports,
    }
}

/// Whether the entries admit TCP `port` for the backend from any peer.
fn admits(d: &crate::datapath::DesiredState, port: u16) -> bool {
    d.policy.keys().any(|r| {
        let (lo, hi) = r.port.range();
        r.proto == PROTO_TCP && lo <= port && port <= hi
    })
}

#[test]
fn wide_port_ranges_are_few_prefixes() {
    let mut v = mesh();
    v.insert_policy(ingress_policy(
        "c1",
        "backend",
        vec![any_peer(vec![ranged(1, 2000)])],
    ));
    let c = run(&v);
    assert!(admits(&c.desired, 1500) && admits(&c.desired, 2000) && admits(&c.desired, 1));
    assert!(!admits(&c.desired, 2001) && !admits(&c.desired, 0));
    assert_eq!(c.desired.policy.len(), 16, "1-2000 is 16 prefixes");

    let mut v = mesh();
    v.insert_policy(ingress_policy(
        "c1",
        "backend",
        vec![any_peer(vec![ranged(1, 65535)])],
    ));
    let c = run(&v);
    assert!(admits(&c.desired, 1) && admits(&c.desired, 65535) && admits(&c.desired, 32768));
    assert_eq!(c.desired.policy.len(), 16, "1-65535 is 16 prefixes");
    assert_eq!(c.policy.refused_total(), 0);
}

#[test]
fn named_ports_resolve_per_pod_not_per_identity() {
    let mut v = mesh();
    // A second local backend pod with the same labels numbers "http" 9999.
    v.insert_endpoint(endpoint(
        "c1",
        "10.1.0.12",
        C1_BACK,
        "c1-gw",
        "shop",
        &[("http", 9999)],
    ));
    v.insert_policy(ingress_policy(
        "c1",
        "backend",
        vec![any_peer(vec![PolicyPort {
            protocol: "TCP".into(),
            named_port: Some("http".into()),
            ..Default::default()
        }])],
    ));
    let mut ifs = ifaces();
    ifs.insert(ip("10.1.0.12"), iface(12, None));
    let c = compute(&v, NODE, &ifs, &mut ServiceIds::new(), &[]);
    let got: BTreeMap<PolicyLocal, Vec<PortPrefix>> =
        c.desired.policy.keys().fold(BTreeMap::new(), |mut m, r| {
            m.entry(r.local).or_insert_with(Vec::new).push(r.port);
            m
        });
    assert_eq!(
        got,
        [
            (
                PolicyLocal::Endpoint(ip("10.1.0.11")),
                vec![PortPrefix::exact(8080)]
            ),
            (
                PolicyLocal::Endpoint(ip("10.1.0.12")),
                vec![PortPrefix::exact(9999)]
            ),
        ]
        .into()
    );
}

#[test]
fn unknown_local_identity_in_a_policy_namespace_is_default_deny() {
    let mut v = mesh();
    // The frontend pod was relabelled: its new identity's record is not here yet.
    let relabelled = 0x01_0199;
    v.insert_endpoint(endpoint(
        "c1",
        "10.1.0.10",
        relabelled,
        "c1-gw",
        "shop",
        &[],
    ));
    let c = run(&v);
    assert!(
        c.desired.enforced.is_empty(),
        "no policy in shop: nothing to close"
    );
    assert_eq!(c.policy.unknown_local_identities, 1);
    assert_eq!(c.policy.fail_closed_identities, 0);

    let mut p = ingress_policy("c1", "backend", vec![any_peer(vec![tcp(8080)])]);
    if let Some(s) = p.spec.as_mut() {
        s.policy_types = vec!["Ingress".into(), "Egress".into()];
    }
    v.insert_policy(p);
    let c = run(&v);
    assert!(
        c.desired
            .enforced
            .contains(&(relabelled, Direction::Ingress))
    );
    assert!(
        c.desired
            .enforced
            .contains(&(relabelled, Direction::Egress))
    );
    assert!(
        !c.desired
            .policy
            .keys()
            .any(|r| r.local == PolicyLocal::Identity(relabelled)),
        "nothing admitted until its labels are known"
    );
    assert_eq!(c.policy.fail_closed_identities, 1);

    // The record arrives: the frontend is not selected by the backend policy.
    v.insert_identity(identity("c1", relabelled, "shop", "frontend", &[]));
    let c = run(&v);
    assert!(!c.desired.enforced.iter().any(|(id, _)| *id == relabelled));
    assert_eq!(c.policy.fail_closed_identities, 0);
}

#[test]
fn ip_block_with_except_selects_outside_addresses_by_prefix() {
    let mut v = mesh();
    v.insert_policy(ingress_policy(
        "c1",
        "backend",
        vec![pb::PolicyRule {
            peers: vec![PolicyPeer {
                ip_block: Some(pb::IpBlock {
                    cidr: "198.51.100.0/24".into(),
                    except: vec!["198.51.100.128/25".into()],
                }),
                ..Default::default()
            }],
            ports: vec![tcp(80)],
        }],
    ));
    let c = run(&v);
    let cidr = |a: &str, len| DpPeer::Cidr { addr: ip(a), len };
    let peers: Vec<DpPeer> = c.desired.policy.keys().map(|r| r.peer).collect();
    assert_eq!(peers, vec![cidr("198.51.100.0", 24)]);
    assert_eq!(
        c.desired.policy_cidrs,
        [
            "198.51.100.0/24".parse().unwrap(),
            "198.51.100.128/25".parse().unwrap()
        ]
        .into()
    );
}

#[test]
fn what_cannot_be_programmed_is_refused_never_widened() {
    let mut v = mesh();
    let port = |proto: &str, p: Option<u32>, end: Option<u32>| PolicyPort {
        protocol: proto.into(),
        port: p,
        end_port: end,
        ..Default::default()
    };
    v.insert_policy(ingress_policy(
        "c1",
        "backend",
        vec![
            any_peer(vec![
                port("ICMP", Some(1), None),
                port("TCP", Some(70000), None),
                port("TCP", Some(90), Some(80)),
                port("SCTP", Some(5000), None),
                port("SCTP", None, None),
                tcp(8080),
            ]),
            pb::PolicyRule {
                peers: vec![
                    PolicyPeer {
                        ip_block: Some(pb::IpBlock {
                            cidr: "10.0.0.0/8".into(),
                            except: vec!["not-a-cidr".into()],
                        }),
                        ..Default::default()
                    },
                    PolicyPeer {
                        ip_block: Some(pb::IpBlock {
                            cidr: "2001:db8::/32".into(),
                            except: vec![],
                        }),
                        ..Default::default()
                    },
                ],
                ports: vec![],
            },
        ],
    ));
    let c = run(&v);
    let refused = c.policy.refused();
    assert_eq!(refused["unknown_protocol"], 1);
    assert_eq!(refused["invalid_port"], 2);
    assert_eq!(refused["sctp_port"], 1);
    assert_eq!(refused["invalid_ip_block"], 1);
    assert_eq!(refused["ipv6_ip_block"], 1);
    assert_eq!(refused["policy_map_full"], 0);
    // What remains: TCP 8080 and SCTP (whole protocol); the bad blocks admit nothing.
    let keys: Vec<_> = c.desired.policy.keys().copied().collect();
    assert_eq!(
        keys,
        vec![
            rule(C1_BACK, 0, PROTO_TCP, 8080, Direction::Ingress),
            rule(C1_BACK, 0, 132, 0, Direction::Ingress),
        ]
    );
    assert!(c.desired.policy_cidrs.is_empty());
}

#[test]
fn a_full_policy_map_refuses_whole_identities_and_keeps_them_default_deny() {
    let mut v = mesh();
    // 3,000 peer identities × 30 prefixes (1-65534) for the backend: 90,000
    // entries, more than cm_policy_lpm holds; the frontend's policy is small.
    for n in 0..3000u32 {
        v.insert_identity(identity("c2", 0x02_1000 + n, "shop", "crowd", &[]));
    }
    v.insert_policy(ingress_policy(
        "c1",
        "backend",
        vec![pb::PolicyRule {
            peers: vec![pod_peer(&[("app", "crowd")])],
            ports: vec![ranged(1, 65534)],
        }],
    ));
    v.insert_policy(ingress_policy(
        "c1",
        "frontend",
        vec![any_peer(vec![tcp(80)])],
    ));
    let c = run(&v);
    assert_eq!(
        c.policy.refused()["policy_map_full"],
        1,
        "{:?}",
        c.policy.refusals
    );
    assert!(
        c.desired
            .policy
            .keys()
            .all(|r| r.local == PolicyLocal::Identity(C1_FRONT)),
        "the backend's entries are all left out"
    );
    assert_eq!(c.desired.policy.len(), 1);
    assert!(
        c.desired.enforced.contains(&(C1_BACK, Direction::Ingress)),
        "and it stays default-deny (narrowed, never widened)"
    );
}
