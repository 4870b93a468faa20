//! A peer's cache: seeding, snapshots, deferred sweeps, refusals, markers.
use super::*;
use clustermesh_proto::ClusterMode;
use clustermesh_proto::v1::Node;

fn node(name: &str, v: &str) -> Bytes {
    Node {
        name: name.into(),
        cluster: "a".into(),
        exported: true,
        labels: [("v".to_string(), v.to_string())].into(),
        ..Default::default()
    }
    .encode_to_vec()
    .into()
}
fn up(key: &str, value: Bytes) -> Event {
    Event {
        r#type: EventType::Upsert as i32,
        kind: Kind::Node as i32,
        cluster: "a".into(),
        key: key.into(),
        value,
        revision: 1,
        origin_unix_micros: None,
    }
}
fn synced() -> Event {
    Event {
        r#type: EventType::Synced as i32,
        kind: Kind::Node as i32,
        cluster: "a".into(),
        ..Default::default()
    }
}
fn batch(t: BatchType, epoch: &str, events: Vec<Event>) -> WatchBatch {
    WatchBatch {
        r#type: t as i32,
        epoch: epoch.into(),
        revision: 10,
        events,
        ..Default::default()
    }
}
/// A whole snapshot's outcome: its writes and refusals come at its end when
/// it replaces records (staged, then swept), batch by batch when it fills
/// an empty mirror; the end's flags are the snapshot's.
fn snapshot(c: &mut PeerCache, epoch: &str, events: Vec<Event>, now: Instant) -> Applied {
    let g = Duration::from_secs(5);
    let mut b = batch(BatchType::SnapshotBegin, epoch, vec![]);
    b.reset = true;
    let begin = c.apply(b, now, g, &Context::default());
    let body = c.apply(
        batch(BatchType::Snapshot, epoch, events),
        now,
        g,
        &Context::default(),
    );
    let mut end = c.apply(
        batch(BatchType::SnapshotEnd, epoch, vec![]),
        now,
        g,
        &Context::default(),
    );
    end.reset |= begin.reset;
    for mut a in [body, begin] {
        a.ops.append(&mut end.ops);
        end.ops = a.ops;
        a.rejected.append(&mut end.rejected);
        end.rejected = a.rejected;
        a.pending.append(&mut end.pending);
        end.pending = a.pending;
        a.unresolved.append(&mut end.unresolved);
        end.unresolved = a.unresolved;
    }
    end
}
fn peer() -> PeerRef {
    PeerRef {
        name: "a".into(),
        id: 1,
        mode: ClusterMode::Max255,
    }
}
fn kv(key: String, value: Bytes) -> Kv {
    Kv {
        key,
        value,
        mod_revision: 1,
    }
}

#[test]
fn seeded_snapshot_writes_only_differences() {
    let seed = vec![
        kv(keys::cache(Kind::Node, "a", "n1"), node("n1", "1")),
        kv(keys::cache(Kind::Node, "a", "n2"), node("n2", "1")),
        kv(keys::cache(Kind::Node, "zz", "n9"), node("n9", "1")),
    ];
    let marker = vec![kv(keys::synced("a", Kind::Node), Bytes::new())];
    let mut c = PeerCache::seeded(peer(), seed, marker);
    assert_eq!(c.counts()[0].count, 2, "other peers' keys are not ours");
    let now = Instant::now();
    let a = snapshot(
        &mut c,
        "e1",
        vec![
            up("n1", node("n1", "1")),
            up("n3", node("n3", "1")),
            synced(),
        ],
        now,
    );
    assert_eq!(
        a.ops,
        vec![
            WriteOp::delete(keys::cache(Kind::Node, "a", "n2")),
            WriteOp::put(keys::cache(Kind::Node, "a", "n3"), node("n3", "1")),
        ],
        "n1 unchanged: not rewritten; marker unchanged: not rewritten (a snapshot's deletes come first)"
    );
    assert!(c.resume_point().is_some());
}

#[test]
fn unsynced_reset_defers_the_sweep_until_the_marker() {
    let seed = vec![
        kv(keys::cache(Kind::Node, "a", "n1"), node("n1", "1")),
        kv(keys::cache(Kind::Node, "a", "n2"), node("n2", "1")),
    ];
    let mut c = PeerCache::seeded(peer(), seed, vec![]);
    let now = Instant::now();
    // The peer came back empty (wiped store, still rebuilding).
    let a = snapshot(&mut c, "e2", vec![], now);
    assert!(a.ops.is_empty(), "nothing withdrawn yet: {:?}", a.ops);
    assert_eq!(c.next_deadline(), Some(now + Duration::from_secs(5)));
    // It re-adds n1, then marks nodes synced: n2 goes, n1 is rewritten once.
    let g = Duration::from_secs(5);
    let a = c.apply(
        batch(BatchType::Events, "e2", vec![up("n1", node("n1", "1"))]),
        now,
        g,
        &Context::default(),
    );
    assert_eq!(a.ops.len(), 1);
    let a = c.apply(
        batch(BatchType::Events, "e2", vec![synced()]),
        now,
        g,
        &Context::default(),
    );
    assert_eq!(a.ops.len(), 2, "{:?}", a.ops);
    assert_eq!(
        a.ops[0],
        WriteOp::delete(keys::cache(Kind::Node, "a", "n2"))
    );
    assert!(matches!(&a.ops[1], WriteOp::Put { key, .. } if *key == keys::synced("a", Kind::Node)));
    assert_eq!(c.next_deadline(), None);
}

#[test]
fn deferred_deletes_expire() {
    let seed = vec![kv(keys::cache(Kind::Node, "a", "n1"), node("n1", "1"))];
    let mut c = PeerCache::seeded(peer(), seed, vec![]);
    let now = Instant::now();
    snapshot(&mut c, "e2", vec![], now);
    assert!(c.sweep_due(now + Duration::from_secs(4)).is_empty());
    assert_eq!(c.sweep_due(now + Duration::from_secs(5)).len(), 1);
    assert!(c.is_empty());
}

#[test]
fn rejected_records_are_never_written() {
    let mut c = PeerCache::seeded(peer(), vec![], vec![]);
    let now = Instant::now();
    let foreign = Node {
        name: "x".into(),
        cluster: "c".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let a = snapshot(
        &mut c,
        "e",
        vec![up("n1", node("n1", "1")), up("x", foreign.clone().into())],
        now,
    );
    assert_eq!(a.ops.len(), 1);
    assert_eq!(a.rejected.len(), 1, "the foreign node, refused");
    let g = Duration::from_secs(5);
    let a = c.apply(
        batch(BatchType::Events, "e", vec![up("n1", foreign.into())]),
        now,
        g,
        &Context::default(),
    );
    assert_eq!(a.rejected.len(), 1);
    assert_eq!(
        a.ops,
        vec![WriteOp::delete(keys::cache(Kind::Node, "a", "n1"))],
        "an invalid update withdraws the old version"
    );
    let w = c.withdraw();
    assert_eq!(w.len(), RECORD_KINDS.len() + 1);
    assert!(c.resume_point().is_none());
}

/// An older peer (no `service-backends`) sends no `backends` marker: its
/// `services` marker stands for both, so it is shown synced; a newer
/// peer's kinds are only what it marks itself.
#[test]
fn an_older_peers_services_marker_stands_for_its_backends() {
    let svc_marker = |t: EventType| Event {
        r#type: t as i32,
        kind: Kind::Service as i32,
        cluster: "a".into(),
        ..Default::default()
    };
    let now = Instant::now();
    let mut c = PeerCache::seeded(peer(), vec![], vec![]);
    assert!(c.set_backend_records(false).is_empty());
    let a = snapshot(&mut c, "e", vec![svc_marker(EventType::Synced)], now);
    let markers: Vec<&str> = a
        .ops
        .iter()
        .filter_map(|o| match o {
            WriteOp::Put { key, .. } => Some(key.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        markers,
        [
            keys::synced("a", Kind::Service),
            keys::synced("a", Kind::ServiceBackend)
        ]
    );
    assert_eq!(c.synced_kinds(), [Kind::Service, Kind::ServiceBackend]);
    let g = Duration::from_secs(5);
    let a = c.apply(
        batch(
            BatchType::Events,
            "e",
            vec![svc_marker(EventType::Unsynced)],
        ),
        now,
        g,
        &Context::default(),
    );
    assert_eq!(
        a.ops,
        [
            WriteOp::delete(keys::synced("a", Kind::Service)),
            WriteOp::delete(keys::synced("a", Kind::ServiceBackend))
        ]
    );
    assert!(c.synced_kinds().is_empty());

    // Seeded with an older peer's services marker only (written before
    // this version): the backends marker is written on connect.
    let marker = vec![kv(keys::synced("a", Kind::Service), Bytes::new())];
    let mut c = PeerCache::seeded(peer(), vec![], marker.clone());
    let ops = c.set_backend_records(false);
    assert!(
        matches!(&ops[..], [WriteOp::Put { key, .. }] if *key == keys::synced("a", Kind::ServiceBackend))
    );
    assert_eq!(c.synced_kinds(), [Kind::Service, Kind::ServiceBackend]);

    // A newer peer: nothing implied.
    let mut c = PeerCache::seeded(peer(), vec![], marker);
    assert!(c.set_backend_records(true).is_empty());
    assert_eq!(c.synced_kinds(), [Kind::Service]);
}
