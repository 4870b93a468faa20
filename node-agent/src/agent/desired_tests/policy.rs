//! NetworkPolicy compilation.

use super::*;

#[test]
fn ingress_policy_is_default_deny_with_namespace_sameness() {
    let mut v = mesh();
    // The policy comes from the *other* cluster: it applies here too.
    v.insert_policy(ingress_policy(
        "c2",
        "backend",
        vec![pb::PolicyRule {
            peers: vec![pod_peer(&[("app", "frontend")])],
            ports: vec![tcp(8080)],
        }],
    ));
    let c = run(&v);
    let d = &c.desired;
    assert_eq!(
        d.enforced,
        [(C1_BACK, Direction::Ingress)].into(),
        "only the selected local identity is enforced"
    );
    let want: BTreeMap<_, _> = [
        (
            rule(C1_BACK, C1_FRONT, PROTO_TCP, 8080, Direction::Ingress),
            Verdict::Allow,
        ),
        (
            rule(C1_BACK, C2_FRONT, PROTO_TCP, 8080, Direction::Ingress),
            Verdict::Allow,
        ),
    ]
    .into();
    // The tools/frontend of c2 is in another namespace: not a peer.
    assert_eq!(d.policy, want);
}

#[test]
fn cluster_label_in_selectors_restricts_clusters() {
    let mut v = mesh();
    v.insert_policy(ingress_policy(
        "c1",
        "backend",
        vec![pb::PolicyRule {
            peers: vec![pod_peer(&[
                ("app", "frontend"),
                ("clustermesh.io/cluster", "c2"),
            ])],
            ports: vec![],
        }],
    ));
    let d = run(&v).desired;
    assert_eq!(
        d.policy.keys().copied().collect::<Vec<_>>(),
        vec![rule(C1_BACK, C2_FRONT, 0, 0, Direction::Ingress)]
    );
    // A policy whose podSelector names another cluster selects no local pod.
    let mut v = mesh();
    let mut p = ingress_policy("c2", "backend", vec![]);
    if let Some(s) = p.spec.as_mut() {
        s.pod_selector = Some(LabelSelector {
            match_labels: [("app".to_string(), "backend".to_string())].into(),
            match_expressions: vec![LabelSelectorRequirement {
                key: "clustermesh.io/cluster".into(),
                operator: "In".into(),
                values: vec!["c2".into()],
            }],
        });
    }
    v.insert_policy(p);
    let d = run(&v).desired;
    assert!(d.enforced.is_empty() && d.policy.is_empty());
}

#[test]
fn namespace_selector_and_empty_rules() {
    let mut v = mesh();
    v.insert_policy(ingress_policy(
        "c1",
        "backend",
        vec![
            // Every pod of namespaces labelled team=red (c2's tools), any port.
            pb::PolicyRule {
                peers: vec![PolicyPeer {
                    namespace_selector: Some(sel(&[("team", "red")])),
                    ..Default::default()
                }],
                ports: vec![],
            },
            // Anyone, UDP only (no port number).
            pb::PolicyRule {
                peers: vec![],
                ports: vec![PolicyPort {
                    protocol: "UDP".into(),
                    ..Default::default()
                }],
            },
            // ipBlock: addresses outside the mesh, by prefix.
            pb::PolicyRule {
                peers: vec![PolicyPeer {
                    ip_block: Some(pb::IpBlock {
                        cidr: "0.0.0.0/0".into(),
                        except: vec![],
                    }),
                    ..Default::default()
                }],
                ports: vec![],
            },
        ],
    ));
    let c = run(&v);
    let keys: Vec<_> = c.desired.policy.keys().copied().collect();
    assert_eq!(
        keys,
        vec![
            rule(C1_BACK, 0, PROTO_UDP, 0, Direction::Ingress),
            rule(C1_BACK, C2_TOOL, 0, 0, Direction::Ingress),
            PolicyRule {
                peer: DpPeer::Cidr {
                    addr: Ipv4Addr::UNSPECIFIED,
                    len: 0
                },
                ..rule(C1_BACK, 0, 0, 0, Direction::Ingress)
            },
        ]
    );
    assert_eq!(
        c.desired.policy_cidrs,
        ["0.0.0.0/0".parse().unwrap()].into()
    );
    assert_eq!(c.policy.refused_total(), 0);
}

#[test]
fn named_ports_resolve_per_side() {
    let mut v = mesh();
    let named = |name: &str| PolicyPort {
        protocol: "TCP".into(),
        named_port: Some(name.into()),
        ..Default::default()
    };
    // Ingress: the selected (local) pod's port "http" = 8080.
    v.insert_policy(ingress_policy(
        "c1",
        "backend",
        vec![pb::PolicyRule {
            peers: vec![pod_peer(&[("app", "frontend")])],
            ports: vec![named("http"), named("nope")],
        }],
    ));
    // Egress of the frontend: the destination's "http" (8080 in c1, 9090 in c2).
    v.insert_policy(policy(
        "c1",
        "frontend-egress",
        NetworkPolicySpec {
            pod_selector: Some(sel(&[("app", "frontend")])),
            ingress: vec![],
            egress: vec![pb::PolicyRule {
                peers: vec![pod_peer(&[("app", "backend")])],
                ports: vec![named("http")],
            }],
            policy_types: vec!["Egress".into()],
        },
    ));
    let c = run(&v);
    let d = &c.desired;
    // Ingress: keyed by the local pod (10.1.0.11) that defines the name.
    assert!(d.policy.contains_key(&PolicyRule {
        local: PolicyLocal::Endpoint(ip("10.1.0.11")),
        ..rule(C1_BACK, C2_FRONT, PROTO_TCP, 8080, Direction::Ingress)
    }));
    assert!(!d.policy.contains_key(&rule(
        C1_BACK,
        C2_FRONT,
        PROTO_TCP,
        8080,
        Direction::Ingress
    )));
    // Egress: keyed by each destination pod with its own number.
    let egress = |peer: &str, port| PolicyRule {
        peer: DpPeer::Endpoint(ip(peer)),
        ..rule(C1_FRONT, 0, PROTO_TCP, port, Direction::Egress)
    };
    assert!(d.policy.contains_key(&egress("10.1.0.11", 8080)));
    assert!(d.policy.contains_key(&egress("10.1.1.10", 8080)));
    assert!(d.policy.contains_key(&egress("10.2.0.11", 9090)));
    assert!(!d.policy.contains_key(&egress("10.2.0.11", 8080)));
    assert_eq!(c.policy.unresolved_named_ports, 1, "\"nope\" names no port");
    assert!(d.enforced.contains(&(C1_FRONT, Direction::Egress)));
    assert!(!d.enforced.contains(&(C1_FRONT, Direction::Ingress)));
}

#[test]
fn egress_default_deny_and_port_ranges() {
    let mut v = mesh();
    v.insert_policy(policy(
        "c1",
        "deny-egress",
        NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            ingress: vec![],
            egress: vec![],
            policy_types: vec!["Egress".into()],
        },
    ));
    let d = run(&v).desired;
    assert_eq!(
        d.enforced,
        [(C1_FRONT, Direction::Egress), (C1_BACK, Direction::Egress)].into()
    );
    assert!(d.policy.is_empty(), "nothing allowed");

    let mut v = mesh();
    v.insert_policy(ingress_policy(
        "c1",
        "backend",
        vec![pb::PolicyRule {
            peers: vec![],
            ports: vec![PolicyPort {
                protocol: "TCP".into(),
                port: Some(8000),
                end_port: Some(8002),
                ..Default::default()
            }],
        }],
    ));
    let d = run(&v).desired;
    let ports: Vec<PortPrefix> = d.policy.keys().map(|r| r.port).collect();
    assert_eq!(
        ports,
        vec![
            PortPrefix {
                port: 8000,
                len: 15
            },
            PortPrefix::exact(8002)
        ]
    );
}
