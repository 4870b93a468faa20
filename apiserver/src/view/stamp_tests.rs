//! The view's part of propagation stamps and attested markers.

use bytes::Bytes;
use clustermesh_proto::attest::{self, Tally};
use clustermesh_proto::keys;
use clustermesh_proto::stamp;
use clustermesh_proto::v1::{EventType, Kind, Node, Scope, SyncedMarker};
use prost::Message;

use super::{Start, View, ViewConfig};

fn node(cluster: &str, name: &str, exported: bool) -> Bytes {
    Node {
        name: name.into(),
        cluster: cluster.into(),
        exported,
        ..Default::default()
    }
    .encode_to_vec()
    .into()
}

fn marker() -> Bytes {
    SyncedMarker {
        cluster: "a".into(),
        kind: Kind::Node as i32,
        records: 99,
        unix_millis: 1,
        digest: None,
    }
    .encode_to_vec()
    .into()
}

fn served_marker(s: &super::Subscription) -> Option<SyncedMarker> {
    let Start::Snapshot { events, .. } = &s.start else {
        return None;
    };
    events
        .iter()
        .find(|e| e.r#type == EventType::Synced as i32)
        .and_then(|e| SyncedMarker::decode(e.value.clone()).ok())
}

#[test]
fn markers_attest_what_is_exported_now() {
    let v = View::new("a", ViewConfig::default());
    let (n1, n2) = (node("a", "n1", true), node("a", "n2", false));
    v.load(
        "e",
        5,
        vec![
            super::Kv {
                key: keys::state(Kind::Node, "a", "n1"),
                value: n1.clone(),
                mod_revision: 3,
            },
            super::Kv {
                key: keys::state(Kind::Node, "a", "n2"),
                value: n2,
                mod_revision: 4,
            },
            super::Kv {
                key: keys::synced("a", Kind::Node),
                value: marker(),
                mod_revision: 5,
            },
        ],
    );
    let mut want = Tally::default();
    want.add(attest::record_hash("n1", &n1));
    // Exported snapshot: the stored count (99) is replaced by what is exported.
    let m = served_marker(&v.subscribe(Scope::Exported, &[], None)).expect("marker");
    assert_eq!((m.records, m.digest), (1, Some(want.digest)));
    // Merged snapshots carry the stored marker.
    let m = served_marker(&v.subscribe(Scope::Merged, &[], None)).expect("marker");
    assert_eq!((m.records, m.digest), (99, None));

    // Live: a new exported node, then the marker rewritten in the same batch,
    // then another node: the marker counts what stood before it.
    let mut sub = v.subscribe(Scope::Exported, &[], None);
    let n3 = node("a", "n3", true);
    v.apply(
        6,
        vec![
            (keys::state(Kind::Node, "a", "n3"), Some((n3.clone(), 6))),
            (keys::synced("a", Kind::Node), Some((marker(), 6))),
            (
                keys::state(Kind::Node, "a", "n4"),
                Some((node("a", "n4", true), 6)),
            ),
        ],
    );
    want.add(attest::record_hash("n3", &n3));
    let b = sub.rx.try_recv().expect("batch");
    let wire: Vec<_> = b
        .events
        .iter()
        .filter_map(|e| e.to_wire(Scope::Exported, &[]))
        .collect();
    let m = wire
        .iter()
        .find(|e| e.r#type == EventType::Synced as i32)
        .map(|e| SyncedMarker::decode(e.value.clone()).expect("marker"))
        .expect("live marker");
    assert_eq!((m.records, m.digest), (2, Some(want.digest)));
    // Live upserts of this cluster carry the time the view observed them.
    let up = wire.iter().find(|e| e.key == "n3").expect("n3");
    let at = up.origin_unix_micros.expect("stamped");
    assert!((stamp::now_micros() - at).abs() < 60_000_000);
}

#[test]
fn mirrored_stamps_are_reported_and_served() {
    let v = View::new("b", ViewConfig::default());
    v.load("e", 1, vec![]);
    let mut sub = v.subscribe(Scope::Merged, &[], None);
    let bare = node("a", "n1", true);
    let stamped = stamp::append(&bare, 1_234);
    let stamps = v.apply(
        2,
        vec![
            (keys::cache(Kind::Node, "a", "n1"), Some((stamped, 2))),
            (
                keys::cache(Kind::Node, "a", "n2"),
                Some((node("a", "n2", true), 2)),
            ),
        ],
    );
    assert_eq!(
        stamps,
        vec![("a".to_string(), 1_234)],
        "only the stamped one"
    );
    let b = sub.rx.try_recv().expect("batch");
    let n1 = b
        .events
        .iter()
        .find_map(|e| e.to_wire(Scope::Merged, &[]).filter(|w| w.key == "n1"))
        .expect("n1");
    assert_eq!(n1.origin_unix_micros, Some(1_234));
    assert_eq!(
        n1.value, bare,
        "served without the stamp: it travels in the event"
    );
    assert_eq!(
        v.served(&keys::cache(Kind::Node, "a", "n1")),
        Some(bare.clone())
    );
    // A snapshot carries no stamp.
    let Start::Snapshot { events, .. } = v.subscribe(Scope::Merged, &[], None).start else {
        panic!("snapshot");
    };
    assert!(events.iter().all(|e| e.origin_unix_micros.is_none()));
}
