//! Which clusters a policy's selectors select (`policy::in_scope`, docs/policy.md):
//! a policy that is not global keeps its single-cluster meaning, a global
//! one spans the mesh unless it names clusters.

use super::*;

fn allow_frontend(cluster: &str, global: bool) -> pb::Policy {
    let mut p = ingress_policy(
        cluster,
        "backend",
        vec![pb::PolicyRule {
            peers: vec![pod_peer(&[("app", "frontend")])],
            ports: vec![tcp(8080)],
        }],
    );
    p.global = global;
    p
}

#[test]
fn a_plain_policy_selects_only_its_own_clusters_pods() {
    let mut v = mesh();
    v.insert_policy(allow_frontend("c1", false));
    let d = run(&v).desired;
    assert_eq!(d.enforced, [(C1_BACK, Direction::Ingress)].into());
    assert_eq!(
        d.policy.keys().copied().collect::<Vec<_>>(),
        vec![rule(C1_BACK, C1_FRONT, PROTO_TCP, 8080, Direction::Ingress)],
        "c2's frontend (same namespace, same labels) is not admitted"
    );
}

#[test]
fn a_global_policy_selects_every_cluster_unless_it_names_clusters() {
    let mut v = mesh();
    v.insert_policy(allow_frontend("c1", true));
    let d = run(&v).desired;
    assert_eq!(
        d.policy.keys().copied().collect::<Vec<_>>(),
        vec![
            rule(C1_BACK, C1_FRONT, PROTO_TCP, 8080, Direction::Ingress),
            rule(C1_BACK, C2_FRONT, PROTO_TCP, 8080, Direction::Ingress),
        ]
    );
    // Naming a cluster narrows a global policy's selector to it.
    let mut v = mesh();
    let mut p = allow_frontend("c1", true);
    p.spec.as_mut().expect("spec").ingress[0].peers = vec![pod_peer(&[
        ("app", "frontend"),
        ("clustermesh.io/cluster", "c2"),
    ])];
    v.insert_policy(p);
    let d = run(&v).desired;
    assert_eq!(
        d.policy.keys().copied().collect::<Vec<_>>(),
        vec![rule(C1_BACK, C2_FRONT, PROTO_TCP, 8080, Direction::Ingress)]
    );
    // In a plain policy, naming another cluster selects nothing: it only
    // ever sees its own cluster.
    let mut v = mesh();
    let mut p = allow_frontend("c1", false);
    p.spec.as_mut().expect("spec").ingress[0].peers = vec![pod_peer(&[
        ("app", "frontend"),
        ("clustermesh.io/cluster", "c2"),
    ])];
    v.insert_policy(p);
    let d = run(&v).desired;
    assert_eq!(d.enforced, [(C1_BACK, Direction::Ingress)].into());
    assert!(d.policy.is_empty(), "{:?}", d.policy);
}

#[test]
fn a_plain_namespace_selector_peer_stays_in_its_cluster_too() {
    let mut v = mesh();
    let mut p = allow_frontend("c1", false);
    p.spec.as_mut().expect("spec").ingress[0].peers = vec![pb::PolicyPeer {
        namespace_selector: Some(sel(&[("team", "blue")])),
        ..Default::default()
    }];
    v.insert_policy(p);
    let peers: Vec<u32> = run(&v)
        .desired
        .policy
        .keys()
        .filter_map(|r| match r.peer {
            crate::datapath::PolicyPeer::Identity(id) => Some(id),
            _ => None,
        })
        .collect();
    assert_eq!(peers, vec![C1_FRONT, C1_BACK]);
}

#[test]
fn a_peers_policy_applies_here_only_when_global() {
    // The apiserver mirrors a peer's policies only with --import-policies;
    // even then one that is not global selects no pod of this cluster.
    let mut v = mesh();
    v.insert_policy(allow_frontend("c2", false));
    let d = run(&v).desired;
    assert!(d.enforced.is_empty() && d.policy.is_empty());
    let mut v = mesh();
    v.insert_policy(allow_frontend("c2", true));
    let d = run(&v).desired;
    assert_eq!(d.enforced, [(C1_BACK, Direction::Ingress)].into());
    assert_eq!(d.policy.len(), 2, "{:?}", d.policy);
}
