//! One test per rule of [`super::RULES`].

use super::*;
use clustermesh_proto::v1::{Backend, Endpoint, Identity, Node, Policy, Service, ServiceBackend};
use prost::Message;

fn ev(t: EventType, kind: Kind, cluster: &str, key: &str, value: Vec<u8>) -> Event {
    Event {
        r#type: t as i32,
        kind: kind as i32,
        cluster: cluster.into(),
        key: key.into(),
        value: value.into(),
        revision: 1,
        origin_unix_micros: None,
    }
}

fn peer() -> PeerRef {
    PeerRef {
        name: "a".into(),
        id: 1,
        mode: ClusterMode::Max255,
    }
}

fn ctx() -> Context {
    Context::new(
        vec![Cidr::parse("10.2.0.0/16").unwrap()],
        vec![Cidr::parse("10.96.0.0/12").unwrap()],
        vec![("c".into(), Cidr::parse("10.3.0.0/16").unwrap())],
    )
}

const UP: EventType = EventType::Upsert;

fn reason(kind: Kind, key: &str, value: Vec<u8>) -> Option<&'static str> {
    peer()
        .check(&ev(UP, kind, "a", key, value), &ctx())
        .err()
        .map(|e| e.reason().label())
}

fn ident(id: u32, labels: &[(&str, &str)]) -> Vec<u8> {
    Identity {
        id,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        cluster: "a".into(),
        exported: true,
    }
    .encode_to_vec()
}

fn node(name: &str, cidrs: &[&str], ips: &[&str]) -> Vec<u8> {
    Node {
        name: name.into(),
        internal_ips: ips.iter().map(|s| s.to_string()).collect(),
        pod_cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
        cluster: "a".into(),
        ..Default::default()
    }
    .encode_to_vec()
}

fn ep(ip: &str, id: u32, ns: &str) -> Vec<u8> {
    Endpoint {
        ip: ip.into(),
        identity: id,
        node_ip: "192.168.1.1".into(),
        namespace: ns.into(),
        pod: "web-1".into(),
        cluster: "a".into(),
        ..Default::default()
    }
    .encode_to_vec()
}

fn svc(name: &str, frontends: &[&str], backends: &[&str]) -> Vec<u8> {
    Service {
        namespace: "shop".into(),
        name: name.into(),
        frontend_ips: frontends.iter().map(|s| s.to_string()).collect(),
        backends: backends
            .iter()
            .map(|ip| Backend {
                ip: ip.to_string(),
                ..Default::default()
            })
            .collect(),
        cluster: "a".into(),
        ..Default::default()
    }
    .encode_to_vec()
}

fn sb(ns: &str, service: &str, ip: &str) -> Vec<u8> {
    ServiceBackend {
        namespace: ns.into(),
        service: service.into(),
        backend: Some(Backend {
            ip: ip.into(),
            ready: true,
            ..Default::default()
        }),
        cluster: "a".into(),
        exported: true,
    }
    .encode_to_vec()
}

/// A backend record follows the rules of an inline backend (and of names
/// and keys): its IP must be an address outside this cluster's and other
/// peers' ranges, its key `<namespace>/<service>/<ip>`.
#[test]
fn backend_records() {
    let k = Kind::ServiceBackend;
    assert_eq!(
        reason(k, "shop/web/10.1.0.5", sb("shop", "web", "10.1.0.5")),
        None
    );
    assert_eq!(
        reason(k, "shop/web/10.1.0.6", sb("shop", "web", "10.1.0.5")),
        Some("key_mismatch")
    );
    assert_eq!(
        reason(k, "shop/web/10.2.0.9", sb("shop", "web", "10.2.0.9")),
        Some("local_pod_cidr")
    );
    assert_eq!(
        reason(k, "shop/web/10.96.0.9", sb("shop", "web", "10.96.0.9")),
        Some("local_service_cidr")
    );
    assert_eq!(
        reason(k, "shop/web/10.3.0.9", sb("shop", "web", "10.3.0.9")),
        Some("other_peer_cidr")
    );
    assert_eq!(
        reason(k, "shop/web/x", sb("shop", "web", "x")),
        Some("bad_address")
    );
    assert_eq!(
        reason(k, "shop/Web/10.1.0.5", sb("shop", "Web", "10.1.0.5")),
        Some("bad_name")
    );
    let mut foreign = ServiceBackend::decode(sb("shop", "web", "10.1.0.5").as_slice()).unwrap();
    foreign.cluster = "c".into();
    assert_eq!(
        reason(k, "shop/web/10.1.0.5", foreign.encode_to_vec()),
        Some("foreign_record")
    );
    assert_eq!(
        reason(k, "shop/web/10.1.0.5", vec![0xff]),
        Some("undecodable")
    );
}

#[test]
fn stream_level_rules() {
    let p = peer();
    let c = ctx();
    let id_ok = ident(0x01_0100, &[]);
    assert!(matches!(
        p.check(&ev(UP, Kind::Identity, "c", "65792", id_ok.clone()), &c),
        Err(RejectError::ForeignEvent { .. })
    ));
    assert!(matches!(
        p.check(&ev(UP, Kind::Unspecified, "a", "n", vec![]), &c),
        Err(RejectError::UnknownKind(..))
    ));
    assert_eq!(
        reason(Kind::Node, "n", vec![0; MAX_RECORD_BYTES + 1]),
        Some("too_large")
    );
    assert_eq!(reason(Kind::Node, "", vec![]), Some("bad_key"));
    assert_eq!(reason(Kind::Node, "n", vec![0xff; 8]), Some("undecodable"));
    let mut foreign = Identity::decode(id_ok.as_slice()).unwrap();
    foreign.cluster = "c".into();
    assert_eq!(
        reason(Kind::Identity, "65792", foreign.encode_to_vec()),
        Some("foreign_record")
    );
    assert_eq!(
        p.check(&ev(EventType::Delete, Kind::Node, "a", "n", vec![]), &c),
        Ok(())
    );
    assert_eq!(
        p.check(&ev(EventType::Synced, Kind::Node, "a", "", vec![]), &c),
        Ok(())
    );
}

#[test]
fn identities() {
    assert_eq!(reason(Kind::Identity, "65792", ident(0x01_0100, &[])), None);
    assert_eq!(
        reason(Kind::Identity, "2", ident(2, &[])),
        Some("reserved_identity")
    );
    assert_eq!(
        reason(Kind::Identity, "0", ident(0, &[])),
        Some("reserved_identity")
    );
    assert_eq!(
        reason(Kind::Identity, "131328", ident(0x02_0100, &[])),
        Some("identity_out_of_range")
    );
    assert_eq!(
        reason(Kind::Identity, "7", ident(0x01_0100, &[])),
        Some("key_mismatch")
    );
    for label in [
        "clustermesh.io/cluster",
        "k8s:clustermesh.io/cluster",
        "any:clustermesh.io/cluster",
        "k8s:io.cilium.k8s.policy.cluster",
    ] {
        assert_eq!(
            reason(Kind::Identity, "65792", ident(0x01_0100, &[(label, "b")])),
            Some("foreign_cluster_label"),
            "{label}"
        );
        assert_eq!(
            reason(Kind::Identity, "65792", ident(0x01_0100, &[(label, "a")])),
            None,
            "{label}"
        );
    }
}

#[test]
fn nodes() {
    let ok = node("n1", &["10.1.0.0/16"], &["192.168.1.1"]);
    assert_eq!(reason(Kind::Node, "n1", ok.clone()), None);
    assert_eq!(reason(Kind::Node, "n2", ok), Some("key_mismatch"));
    assert_eq!(
        reason(Kind::Node, "N1", node("N1", &[], &[])),
        Some("bad_name")
    );
    assert_eq!(
        reason(Kind::Node, "n1", node("n1", &[], &["192.168.1.x"])),
        Some("bad_address")
    );
    let with = |cidr: &str| reason(Kind::Node, "n1", node("n1", &[cidr], &[]));
    assert_eq!(with("10.1.0.0"), Some("bad_cidr"));
    assert_eq!(with("10.1.0.1/16"), Some("bad_cidr"));
    assert_eq!(with("0.0.0.0/0"), Some("default_route"));
    assert_eq!(with("::/0"), Some("default_route"));
    assert_eq!(with("12.0.0.0/7"), Some("cidr_too_wide"));
    assert_eq!(with("fd00::/16"), Some("cidr_too_wide"));
    assert_eq!(with("fd00:1::/64"), None);
    assert_eq!(with("10.2.5.0/24"), Some("local_pod_cidr"));
    assert_eq!(with("10.0.0.0/8"), Some("local_pod_cidr"), "holds ours");
    assert_eq!(with("10.100.0.0/16"), Some("local_service_cidr"));
    assert_eq!(with("10.3.0.0/24"), Some("other_peer_cidr"));
}

#[test]
fn endpoints() {
    let id = 0x01_0100;
    assert_eq!(
        reason(Kind::Endpoint, "10.1.0.5", ep("10.1.0.5", id, "shop")),
        None
    );
    assert_eq!(
        reason(Kind::Endpoint, "nope", ep("nope", id, "shop")),
        Some("bad_address")
    );
    assert_eq!(
        reason(Kind::Endpoint, "10.1.0.6", ep("10.1.0.5", id, "shop")),
        Some("key_mismatch")
    );
    assert_eq!(
        reason(Kind::Endpoint, "10.2.0.5", ep("10.2.0.5", id, "shop")),
        Some("local_pod_cidr")
    );
    assert_eq!(
        reason(Kind::Endpoint, "10.96.0.5", ep("10.96.0.5", id, "shop")),
        Some("local_service_cidr")
    );
    assert_eq!(
        reason(Kind::Endpoint, "10.3.0.5", ep("10.3.0.5", id, "shop")),
        Some("other_peer_cidr")
    );
    assert_eq!(
        reason(Kind::Endpoint, "10.1.0.5", ep("10.1.0.5", id, "Shop")),
        Some("bad_name")
    );
    assert_eq!(
        reason(Kind::Endpoint, "10.1.0.5", ep("10.1.0.5", 2, "shop")),
        Some("reserved_identity")
    );
    let err = peer()
        .check(
            &ev(
                UP,
                Kind::Endpoint,
                "a",
                "10.1.0.1",
                ep("10.1.0.1", 0x03_0100, "shop"),
            ),
            &ctx(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("outside peer \"a\""), "{err}");
}

#[test]
fn services_and_policies() {
    assert_eq!(
        reason(
            Kind::Service,
            "shop/web",
            svc("web", &["172.20.0.1"], &["10.1.0.5"])
        ),
        None
    );
    assert_eq!(
        reason(Kind::Service, "shop/web", svc("web", &["x"], &[])),
        Some("bad_address")
    );
    assert_eq!(
        reason(Kind::Service, "shop/web", svc("web", &[], &["10.2.0.9"])),
        Some("local_pod_cidr")
    );
    assert_eq!(
        reason(Kind::Service, "shop/web", svc("web", &[], &["10.1.0.x"])),
        Some("bad_address")
    );
    assert_eq!(
        reason(Kind::Service, "shop/other", svc("web", &[], &[])),
        Some("key_mismatch")
    );
    assert_eq!(
        reason(Kind::Service, "shop/Web", svc("Web", &[], &[])),
        Some("bad_name")
    );
    let pol = |ns: &str, name: &str| {
        Policy {
            namespace: ns.into(),
            name: name.into(),
            cluster: "a".into(),
            ..Default::default()
        }
        .encode_to_vec()
    };
    assert_eq!(
        reason(Kind::Policy, "shop/allow.web", pol("shop", "allow.web")),
        None
    );
    assert_eq!(
        reason(Kind::Policy, "sh_op/x", pol("sh_op", "x")),
        Some("bad_name")
    );
}

#[test]
fn every_reason_has_a_row() {
    for r in RULES {
        assert!(!r.reason.label().is_empty() && !r.refuses.is_empty());
    }
    assert!(
        RULES
            .iter()
            .any(|r| r.reason == Reason::ForeignClusterLabel)
    );
}

/// Through the peer's cache: the store writes, in both orders of arrival.
mod through_the_cache {
    use super::*;
    use crate::mesh::cache::PeerCache;
    use crate::store::WriteOp;
    use bytes::Bytes;
    use clustermesh_proto::keys;
    use clustermesh_proto::v1::{BatchType, WatchBatch};
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tokio::time::Instant;

    fn batch(t: BatchType, events: Vec<Event>) -> WatchBatch {
        WatchBatch {
            r#type: t as i32,
            epoch: "e".into(),
            revision: 10,
            events,
            ..Default::default()
        }
    }
    fn apply(c: &mut PeerCache, t: BatchType, events: Vec<Event>) -> Vec<WriteOp> {
        c.apply(
            batch(t, events),
            Instant::now(),
            Duration::from_secs(5),
            &ctx(),
        )
        .ops
    }
    fn puts(ops: &[WriteOp]) -> Vec<String> {
        ops.iter()
            .filter_map(|o| match o {
                WriteOp::Put { key, .. } => Some(key.clone()),
                _ => None,
            })
            .collect()
    }
    fn node_ev() -> Event {
        ev(UP, Kind::Node, "a", "n1", node("n1", &["10.1.0.0/16"], &[]))
    }
    fn ep_ev() -> Event {
        ev(
            UP,
            Kind::Endpoint,
            "a",
            "10.1.0.5",
            ep("10.1.0.5", 0x01_0100, "shop"),
        )
    }
    /// The writes of a whole snapshot: at its end when it replaces records
    /// (staged, then swept), batch by batch when it fills an empty mirror.
    fn snapshot(c: &mut PeerCache, chunks: Vec<Vec<Event>>) -> Vec<WriteOp> {
        let streams = c.is_empty();
        let mut ops = apply(c, BatchType::SnapshotBegin, vec![]);
        for ch in chunks {
            let w = apply(c, BatchType::Snapshot, ch);
            assert!(
                streams || w.is_empty(),
                "a staged snapshot writes at its end"
            );
            ops.extend(w);
        }
        ops.extend(apply(c, BatchType::SnapshotEnd, vec![]));
        ops
    }

    #[test]
    fn order_of_arrival_does_not_matter() {
        let mut a = PeerCache::seeded(peer(), vec![], vec![]);
        let mut b = PeerCache::seeded(peer(), vec![], vec![]);
        let wa = snapshot(&mut a, vec![vec![node_ev()], vec![ep_ev()]]);
        let wb = snapshot(&mut b, vec![vec![ep_ev()], vec![node_ev()]]);
        let (mut pa, mut pb) = (puts(&wa), puts(&wb));
        pa.sort();
        pb.sort();
        assert_eq!(pa, pb);
        assert!(pa.contains(&keys::cache(Kind::Endpoint, "a", "10.1.0.5")));
        // Events: the endpoint first waits, its node then admits it. The
        // lookup plays the store (the view in the apiserver).
        let stored: Arc<Mutex<BTreeMap<String, Bytes>>> = Default::default();
        let s2 = stored.clone();
        let mut c = PeerCache::seeded(peer(), vec![], vec![])
            .with_lookup(Arc::new(move |k: &str| s2.lock().unwrap().get(k).cloned()));
        let store = |ops: &[WriteOp]| {
            for o in ops {
                if let WriteOp::Put { key, value } = o {
                    stored.lock().unwrap().insert(key.clone(), value.clone());
                }
            }
        };
        snapshot(&mut c, vec![]);
        assert!(apply(&mut c, BatchType::Events, vec![ep_ev()]).is_empty());
        assert_eq!(c.pending(), 1);
        assert_eq!(
            c.counts().len(),
            0,
            "a pending record is not counted as stored"
        );
        let w = apply(&mut c, BatchType::Events, vec![node_ev()]);
        assert_eq!(puts(&w).len(), 2, "node and endpoint: {w:?}");
        store(&w);
        assert_eq!(c.pending(), 0);
        // The node goes: so does the endpoint, which waits again.
        let del = Event {
            r#type: EventType::Delete as i32,
            value: Default::default(),
            ..node_ev()
        };
        let w = apply(&mut c, BatchType::Events, vec![del]);
        assert_eq!(
            w,
            vec![
                WriteOp::delete(keys::cache(Kind::Node, "a", "n1")),
                WriteOp::delete(keys::cache(Kind::Endpoint, "a", "10.1.0.5")),
            ]
        );
        assert_eq!(c.pending(), 1);
        // It comes back: so does the endpoint, from the value the gate kept.
        let w = apply(&mut c, BatchType::Events, vec![node_ev()]);
        assert_eq!(
            puts(&w),
            vec![
                keys::cache(Kind::Node, "a", "n1"),
                keys::cache(Kind::Endpoint, "a", "10.1.0.5"),
            ]
        );
        let w = apply(
            &mut c,
            BatchType::Events,
            vec![Event {
                r#type: EventType::Delete as i32,
                value: Default::default(),
                ..node_ev()
            }],
        );
        assert_eq!(w.len(), 2);
        // The peer drops the endpoint too: forgotten, nothing to write.
        let del = Event {
            r#type: EventType::Delete as i32,
            value: Default::default(),
            ..ep_ev()
        };
        assert!(apply(&mut c, BatchType::Events, vec![del]).is_empty());
        assert_eq!(c.pending(), 0);
    }

    /// A backend record waits for a node of the peer covering its IP, like
    /// an endpoint, and leaves the store with that node.
    #[test]
    fn a_backend_record_waits_for_its_node() {
        let mut c = PeerCache::seeded(peer(), vec![], vec![]);
        snapshot(&mut c, vec![]);
        let b = ev(
            UP,
            Kind::ServiceBackend,
            "a",
            "shop/web/10.1.0.5",
            sb("shop", "web", "10.1.0.5"),
        );
        assert!(apply(&mut c, BatchType::Events, vec![b]).is_empty());
        assert_eq!(c.pending(), 1);
        let w = apply(&mut c, BatchType::Events, vec![node_ev()]);
        assert_eq!(
            puts(&w),
            vec![
                keys::cache(Kind::Node, "a", "n1"),
                keys::cache(Kind::ServiceBackend, "a", "shop/web/10.1.0.5"),
            ]
        );
        assert_eq!(c.pending(), 0);
        let del = Event {
            r#type: EventType::Delete as i32,
            value: Default::default(),
            ..node_ev()
        };
        let w = apply(&mut c, BatchType::Events, vec![del]);
        assert!(w.contains(&WriteOp::delete(keys::cache(
            Kind::ServiceBackend,
            "a",
            "shop/web/10.1.0.5"
        ))));
    }

    #[test]
    fn stored_records_are_checked_again_when_seeded() {
        let kv = |kind: Kind, key: &str, value: Vec<u8>| crate::store::Kv {
            key: keys::cache(kind, "a", key),
            value: value.into(),
            mod_revision: 1,
        };
        let records = vec![
            kv(Kind::Node, "bad", node("bad", &["0.0.0.0/0"], &[])),
            kv(
                Kind::Endpoint,
                "10.1.0.5",
                ep("10.1.0.5", 0x01_0100, "shop"),
            ),
            kv(Kind::Identity, "2", ident(2, &[])),
        ];
        let (mut c, ops, refused) =
            PeerCache::seeded_checked(peer(), records, vec![], Some(&ctx()));
        let reasons: Vec<&str> = refused.iter().map(|r| r.reason().label()).collect();
        assert_eq!(reasons, ["default_route", "reserved_identity"]);
        assert_eq!(
            ops,
            vec![
                WriteOp::delete(keys::cache(Kind::Node, "a", "bad")),
                WriteOp::delete(keys::cache(Kind::Identity, "a", "2")),
                WriteOp::delete(keys::cache(Kind::Endpoint, "a", "10.1.0.5")),
            ]
        );
        assert_eq!(c.pending(), 1, "the uncovered endpoint waits for its node");
        let w = apply(&mut c, BatchType::Events, vec![node_ev()]);
        assert_eq!(puts(&w).len(), 2);
    }

    #[test]
    fn a_withdrawn_value_not_at_hand_is_resolved_from_the_store() {
        let mut c = PeerCache::seeded(peer(), vec![], vec![]);
        snapshot(&mut c, vec![]);
        apply(&mut c, BatchType::Events, vec![node_ev(), ep_ev()]);
        let del = Event {
            r#type: EventType::Delete as i32,
            value: Default::default(),
            ..node_ev()
        };
        let a = c.apply(
            batch(BatchType::Events, vec![del]),
            Instant::now(),
            Duration::from_secs(5),
            &ctx(),
        );
        let ep_id = (Kind::Endpoint, "a".to_string(), "10.1.0.5".to_string());
        assert_eq!(a.unresolved, vec![ep_id.clone()]);
        assert!(a.ops.contains(&WriteOp::delete(keys::cache(
            Kind::Endpoint,
            "a",
            "10.1.0.5"
        ))));
        c.resolve(ep_id, Some(&ep_ev().value));
        assert_eq!(c.pending(), 1);
        let w = apply(&mut c, BatchType::Events, vec![node_ev()]);
        assert!(puts(&w).contains(&keys::cache(Kind::Endpoint, "a", "10.1.0.5")));
    }

    #[test]
    fn over_quota_refuses_new_records_keeps_updates_and_refills_on_a_fresh_snapshot() {
        let q = clustermesh_proto::v1::PeerQuota {
            endpoints: 2,
            ..clustermesh_proto::quota::DEFAULT
        };
        let mut c = PeerCache::seeded(peer(), vec![], vec![]).with_quota(q);
        let e = |ip: &str, ns: &str| ev(UP, Kind::Endpoint, "a", ip, ep(ip, 0x01_0100, ns));
        let all = vec![
            node_ev(),
            e("10.1.0.1", "shop"),
            e("10.1.0.2", "shop"),
            e("10.1.0.3", "shop"),
        ];
        apply(&mut c, BatchType::SnapshotBegin, vec![]);
        // Into an empty cache: applied (and refused) batch by batch.
        let mut a = c.apply(
            batch(BatchType::Snapshot, all.clone()),
            Instant::now(),
            Duration::from_secs(5),
            &ctx(),
        );
        let end = c.apply(
            batch(BatchType::SnapshotEnd, vec![]),
            Instant::now(),
            Duration::from_secs(5),
            &ctx(),
        );
        assert!(end.snapshot_done && end.ops.is_empty() && end.rejected.is_empty());
        a.ops.extend(end.ops);
        let reasons: Vec<&str> = a.rejected.iter().map(|r| r.reason().label()).collect();
        assert_eq!(reasons, ["quota_exceeded"]);
        assert_eq!(
            puts(&a.ops).len(),
            3,
            "the node and two endpoints: {:?}",
            a.ops
        );
        assert!(!puts(&a.ops).contains(&keys::cache(Kind::Endpoint, "a", "10.1.0.3")));
        assert_eq!(c.quota().over().get("endpoints"), Some(&1));
        // An update of a held record passes; the refused one is still refused.
        let w = apply(&mut c, BatchType::Events, vec![e("10.1.0.1", "other")]);
        assert_eq!(puts(&w), [keys::cache(Kind::Endpoint, "a", "10.1.0.1")]);
        let a = c.apply(
            batch(BatchType::Events, vec![e("10.1.0.3", "other")]),
            Instant::now(),
            Duration::from_secs(5),
            &ctx(),
        );
        assert!(a.ops.is_empty() && a.rejected.len() == 1);
        // The peer deletes a held one: room, so a fresh snapshot is wanted.
        let del = Event {
            r#type: EventType::Delete as i32,
            value: Default::default(),
            ..e("10.1.0.2", "shop")
        };
        assert_eq!(apply(&mut c, BatchType::Events, vec![del]).len(), 1);
        assert!(c.quota().wants_snapshot());
        c.want_snapshot();
        assert!(c.resume_point().is_none(), "a full snapshot, not a resume");
        let w = snapshot(
            &mut c,
            vec![vec![
                node_ev(),
                e("10.1.0.1", "other"),
                e("10.1.0.3", "other"),
            ]],
        );
        assert_eq!(puts(&w), [keys::cache(Kind::Endpoint, "a", "10.1.0.3")]);
        assert!(
            c.quota().over().is_empty(),
            "everything fits: not over quota"
        );
        assert!(c.resume_point().is_some());
    }

    /// Found by fuzzing (fuzz/ watch_batches): a service kept after a reset
    /// snapshot dropped it (deferred until its kind is synced) whose node
    /// then went was made pending, so a returning node would have written
    /// back a service the peer no longer has; and the cache counted it as
    /// stored after deleting it.
    #[test]
    fn a_deferred_service_whose_node_goes_is_deleted_not_held() {
        let svc = || {
            let v = Service {
                namespace: "shop".into(),
                name: "s0".into(),
                backends: vec![Backend {
                    ip: "10.1.1.1".into(),
                    ..Default::default()
                }],
                cluster: "a".into(),
                ..Default::default()
            };
            ev(UP, Kind::Service, "a", "shop/s0", v.encode_to_vec())
        };
        let mut c = PeerCache::seeded(peer(), vec![], vec![]);
        let w = snapshot(&mut c, vec![vec![node_ev(), svc()]]);
        assert_eq!(puts(&w).len(), 2);
        // A reset snapshot without them: kept (deferred), nothing synced yet.
        assert!(snapshot(&mut c, vec![]).is_empty());
        assert_eq!(c.counts().len(), 2);
        // Nodes synced: the node goes, and the service it covered goes with it.
        let synced = Event {
            r#type: EventType::Synced as i32,
            key: String::new(),
            value: Default::default(),
            ..node_ev()
        };
        let w = apply(&mut c, BatchType::Events, vec![synced]);
        assert!(w.contains(&WriteOp::delete(keys::cache(Kind::Node, "a", "n1"))));
        assert!(w.contains(&WriteOp::delete(keys::cache(Kind::Service, "a", "shop/s0"))));
        assert_eq!(c.pending(), 0, "the peer no longer has it: not pending");
        assert!(c.counts().iter().all(|n| n.kind != Kind::Service as i32));
        // The node returns: the service does not.
        let w = apply(&mut c, BatchType::Events, vec![node_ev()]);
        assert_eq!(puts(&w), [keys::cache(Kind::Node, "a", "n1")]);
    }

    /// Found by fuzzing (fuzz/ watch_batches): one batch deleting a node and
    /// then updating an endpoint it covered left the old endpoint in the
    /// store while the new version waited pending.
    #[test]
    fn an_endpoint_updated_after_its_node_went_in_the_same_batch_leaves_the_store() {
        let mut c = PeerCache::seeded(peer(), vec![], vec![]);
        let w = snapshot(&mut c, vec![vec![node_ev(), ep_ev()]]);
        assert_eq!(puts(&w).len(), 2);
        let del = Event {
            r#type: EventType::Delete as i32,
            value: Default::default(),
            ..node_ev()
        };
        let changed = ev(
            UP,
            Kind::Endpoint,
            "a",
            "10.1.0.5",
            ep("10.1.0.5", 0x01_0101, "shop"),
        );
        let w = apply(&mut c, BatchType::Events, vec![del, changed]);
        assert!(
            w.contains(&WriteOp::delete(keys::cache(
                Kind::Endpoint,
                "a",
                "10.1.0.5"
            ))),
            "{w:?}"
        );
        assert_eq!(c.pending(), 1);
        assert!(c.counts().iter().all(|n| n.kind != Kind::Endpoint as i32));
        // The node returns: the new version is written.
        let w = apply(&mut c, BatchType::Events, vec![node_ev()]);
        assert!(puts(&w).contains(&keys::cache(Kind::Endpoint, "a", "10.1.0.5")));
    }

    /// Found by fuzzing (fuzz/ watch_batches, after 420 k runs): one batch
    /// with a new endpoint refused for quota, a delete that frees room, and a
    /// second version of the same endpoint, now admitted: the store held it
    /// but the cache's books (counts, quota) did not.
    #[test]
    fn a_record_refused_then_admitted_in_one_batch_is_in_the_books() {
        let q = clustermesh_proto::v1::PeerQuota {
            endpoints: 2,
            ..clustermesh_proto::quota::DEFAULT
        };
        let mut c = PeerCache::seeded(peer(), vec![], vec![]).with_quota(q);
        let e = |ip: &str, id: u32| ev(UP, Kind::Endpoint, "a", ip, ep(ip, id, "shop"));
        let w = snapshot(
            &mut c,
            vec![vec![
                node_ev(),
                e("10.1.0.1", 0x01_0100),
                e("10.1.0.2", 0x01_0100),
            ]],
        );
        assert_eq!(puts(&w).len(), 3, "{w:?}");
        let del = Event {
            r#type: EventType::Delete as i32,
            value: Default::default(),
            ..e("10.1.0.1", 0x01_0100)
        };
        let r = c.apply(
            batch(
                BatchType::Events,
                vec![e("10.1.0.3", 0x01_0100), del, e("10.1.0.3", 0x01_0101)],
            ),
            Instant::now(),
            Duration::from_secs(5),
            &ctx(),
        );
        let reasons: Vec<&str> = r.rejected.iter().map(|x| x.reason().label()).collect();
        assert_eq!(reasons, ["quota_exceeded"], "the first version, while full");
        let third = keys::cache(Kind::Endpoint, "a", "10.1.0.3");
        assert!(
            puts(&r.ops).contains(&third),
            "the second version: {:?}",
            r.ops
        );
        let endpoints = c
            .counts()
            .iter()
            .find(|n| n.kind == Kind::Endpoint as i32)
            .map(|n| n.count);
        assert_eq!(
            endpoints,
            Some(2),
            "10.1.0.2 and 10.1.0.3 are stored and counted"
        );
        assert_eq!(c.quota().held(Kind::Endpoint), 2);
    }

    /// Found by fuzzing the first fix of the case above (a corpus input): a
    /// node written and then, in the same batch, sent again with a foreign
    /// cluster (refused, so withdrawn) is neither stored nor counted.
    #[test]
    fn a_record_withdrawn_later_in_its_batch_is_not_counted() {
        let mut c = PeerCache::seeded(peer(), vec![], vec![]);
        let foreign = ev(UP, Kind::Node, "a", "n1", node("n1", &["10.1.0.0/16"], &[]));
        let foreign = Event {
            value: {
                let mut n = clustermesh_proto::v1::Node::decode(foreign.value.as_ref()).unwrap();
                n.cluster = "x".into();
                n.encode_to_vec().into()
            },
            ..foreign
        };
        let w = apply(&mut c, BatchType::Events, vec![node_ev(), foreign]);
        assert_eq!(
            w.last(),
            Some(&WriteOp::delete(keys::cache(Kind::Node, "a", "n1"))),
            "{w:?}"
        );
        assert!(
            c.counts().iter().all(|n| n.kind != Kind::Node as i32),
            "{:?}",
            c.counts()
        );
    }
}
