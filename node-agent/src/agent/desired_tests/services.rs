//! Global services: affinity and fallbacks, service IDs.

use super::*;

#[test]
fn global_service_affinity_and_fallbacks() {
    let fe = Frontend {
        ip: ip("10.96.1.10"),
        port: 80,
        proto: PROTO_TCP,
    };
    let be = |s: &str| Backend {
        ip: ip(s),
        port: 8080,
    };
    let backends = |aff: PbAffinity, local: &[(&str, bool)], remote: &[(&str, bool)]| {
        let mut v = mesh();
        v.insert_service(svc("c1", "10.96.1.10", aff, local));
        v.insert_service(svc("c2", "10.97.1.10", PbAffinity::None, remote));
        let d = run(&v).desired;
        assert_eq!(
            d.services.len(),
            1,
            "only the local frontend: {:?}",
            d.services
        );
        d.services[&fe].backends.clone()
    };
    let local = [("10.1.0.11", true), ("10.1.1.10", false)];
    let remote = [("10.2.0.11", true)];
    assert_eq!(
        backends(PbAffinity::None, &local, &remote),
        vec![be("10.1.0.11"), be("10.2.0.11")],
        "none: both sides, ready only"
    );
    assert_eq!(
        backends(PbAffinity::Local, &local, &remote),
        vec![be("10.1.0.11")]
    );
    assert_eq!(
        backends(PbAffinity::Local, &[("10.1.0.11", false)], &remote),
        vec![be("10.2.0.11")],
        "local: falls back to remote when no local backend is ready"
    );
    assert_eq!(
        backends(PbAffinity::Remote, &local, &remote),
        vec![be("10.2.0.11")]
    );
    assert_eq!(
        backends(PbAffinity::Remote, &local, &[]),
        vec![be("10.1.0.11")],
        "remote: falls back to local"
    );
    assert!(
        backends(PbAffinity::Local, &[], &[]).is_empty(),
        "no backend: count 0"
    );

    // Not shared remotely → remote backends unused; not global locally → no frontend.
    let mut v = mesh();
    v.insert_service(svc("c1", "10.96.1.10", PbAffinity::None, &local));
    let mut r = svc("c2", "10.97.1.10", PbAffinity::None, &remote);
    r.shared = false;
    v.insert_service(r);
    let d = run(&v).desired;
    assert_eq!(d.services[&fe].backends, vec![be("10.1.0.11")]);
    let mut v = mesh();
    let mut l = svc("c1", "10.96.1.10", PbAffinity::None, &local);
    l.global = false;
    v.insert_service(l);
    assert!(run(&v).desired.services.is_empty());
    assert_eq!(run(&v).desired.services.get(&fe).map(|s| s.affinity), None);
    let mut v = mesh();
    v.insert_service(svc("c1", "10.96.1.10", PbAffinity::Local, &local));
    assert_eq!(run(&v).desired.services[&fe].affinity, Affinity::Local);
}

#[test]
fn service_ids_are_stable_and_seedable() {
    let mut v = mesh();
    v.insert_service(svc(
        "c1",
        "10.96.1.10",
        PbAffinity::None,
        &[("10.1.0.11", true)],
    ));
    let mut ids = ServiceIds::new();
    ids.seed([(
        Frontend {
            ip: ip("10.96.1.10"),
            port: 80,
            proto: PROTO_TCP,
        },
        42,
    )]);
    let a = compute(&v, NODE, &ifaces(), &mut ids, &[]).desired;
    let b = compute(&v, NODE, &ifaces(), &mut ids, &[]).desired;
    assert_eq!(a, b);
    assert_eq!(a.services.values().next().map(|s| s.service_id), Some(42));
    a.to_raw().expect("valid");
}
