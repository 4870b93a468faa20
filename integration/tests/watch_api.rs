//! Watch against a real apiserver and etcd: snapshot, live changes in
//! revision order, resume by (epoch, revision), and resets.

use std::time::Duration;

use clustermesh_apiserver::store::{EtcdOptions, Store, WriteOp};
use clustermesh_certs::Role;
use clustermesh_integration::apiserver::Cluster;
use clustermesh_integration::watcher::Watcher;
use clustermesh_proto::keys;
use clustermesh_proto::v1::{BatchType, EventType, Kind, Node, ResumePoint, Scope};
use prost::Message;

const T: Duration = Duration::from_secs(10);

fn node(cluster: &str, name: &str, exported: bool) -> Vec<u8> {
    Node {
        name: name.into(),
        cluster: cluster.into(),
        exported,
        internal_ips: vec!["10.0.0.1".into()],
        ..Default::default()
    }
    .encode_to_vec()
}

async fn store(c: &Cluster) -> Store {
    Store::connect(&EtcdOptions {
        endpoints: c.etcd.endpoints(),
        ..Default::default()
    })
    .await
    .unwrap()
}

fn node_names(w: &Watcher) -> Vec<String> {
    w.mirror
        .records
        .keys()
        .filter(|(k, _, _)| *k == Kind::Node)
        .map(|(_, _, key)| key.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_snapshot_live_resume_and_reset() {
    let c = Cluster::start("c1", 1, 1, &["--watch-history".into(), "8".into()])
        .await
        .unwrap();
    let s = store(&c).await;
    s.apply(&[
        WriteOp::put(keys::state(Kind::Node, "c1", "n1"), node("c1", "n1", true)),
        WriteOp::put(keys::state(Kind::Node, "c1", "n2"), node("c1", "n2", true)),
        WriteOp::put(
            keys::state(Kind::Node, "c1", "hidden"),
            node("c1", "hidden", false),
        ),
    ])
    .await
    .unwrap();
    // Let the view catch up before subscribing, so the snapshot holds all three.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let ch = c.api().channel(Role::Agent).await.unwrap();
    let mut w = Watcher::open(ch.clone(), Scope::Merged, &[], None)
        .await
        .unwrap();
    let first = w.next(T).await.unwrap().unwrap();
    assert_eq!(first.r#type, BatchType::SnapshotBegin as i32);
    assert!(!first.reset);
    assert_eq!(first.cluster.as_ref().map(|c| c.name.as_str()), Some("c1"));
    w.until(T, "snapshot end", |m| !m.in_snapshot() && m.snapshots == 1)
        .await
        .unwrap();
    assert_eq!(
        node_names(&w),
        ["hidden", "n1", "n2"],
        "merged scope includes non-exported records"
    );

    // Live: upsert n3, delete n1, update n2 — in one revision order.
    s.apply(&[WriteOp::put(
        keys::state(Kind::Node, "c1", "n3"),
        node("c1", "n3", true),
    )])
    .await
    .unwrap();
    s.apply(&[WriteOp::delete(keys::state(Kind::Node, "c1", "n1"))])
        .await
        .unwrap();
    s.apply(&[WriteOp::put(
        keys::state(Kind::Node, "c1", "n2"),
        node("c1", "n2-v2", true),
    )])
    .await
    .unwrap();
    w.until(T, "three live events", |m| {
        m.records.len() == 3 && !m.records.keys().any(|k| k.2 == "n1")
    })
    .await
    .unwrap();
    w.until(T, "update of n2", |m| {
        m.records
            .get(&(Kind::Node, "c1".into(), "n2".into()))
            .is_some_and(|v| v.as_ref() == node("c1", "n2-v2", true))
    })
    .await
    .unwrap();
    let live: Vec<(i32, String, i64)> = w
        .batches
        .iter()
        .filter(|b| b.r#type == BatchType::Events as i32)
        .flat_map(|b| {
            b.events
                .iter()
                .map(|e| (e.r#type, e.key.clone(), e.revision))
        })
        .collect();
    assert_eq!(
        live.iter()
            .map(|(t, k, _)| (*t, k.as_str()))
            .collect::<Vec<_>>(),
        [
            (EventType::Upsert as i32, "n3"),
            (EventType::Delete as i32, "n1"),
            (EventType::Upsert as i32, "n2")
        ]
    );
    assert!(
        live.windows(2).all(|p| p[0].2 < p[1].2),
        "events in store-revision order: {live:?}"
    );

    // Disconnect, change while away, resume: no snapshot, just the missed change.
    let resume = w.mirror.resume_point().unwrap();
    let mirror = w.mirror.clone();
    drop(w);
    s.apply(&[WriteOp::put(
        keys::state(Kind::Node, "c1", "n4"),
        node("c1", "n4", true),
    )])
    .await
    .unwrap();
    let mut w = Watcher::open_with(ch.clone(), Scope::Merged, &[], Some(resume.clone()), mirror)
        .await
        .unwrap();
    w.until(T, "n4 after resume", |m| {
        m.records.keys().any(|k| k.2 == "n4")
    })
    .await
    .unwrap();
    assert!(
        w.batches
            .iter()
            .all(|b| b.r#type != BatchType::SnapshotBegin as i32),
        "a resume within the buffer sends no snapshot"
    );
    assert_eq!(w.mirror.snapshots, 1);
    assert_eq!(node_names(&w), ["hidden", "n2", "n3", "n4"]);

    // A foreign epoch: full snapshot marked as a reset.
    let foreign = ResumePoint {
        epoch: "not-this-store".into(),
        revision: resume.revision,
    };
    let mut w2 = Watcher::open(ch.clone(), Scope::Merged, &[], Some(foreign))
        .await
        .unwrap();
    let b = w2.next(T).await.unwrap().unwrap();
    assert_eq!(b.r#type, BatchType::SnapshotBegin as i32);
    assert!(b.reset, "foreign epoch → reset");
    assert!(b.reason.contains("epoch"), "reason says why: {}", b.reason);

    // A revision no longer buffered (history is 8 events): reset snapshot.
    for i in 0..20 {
        s.apply(&[WriteOp::put(
            keys::state(Kind::Node, "c1", &format!("x{i}")),
            node("c1", "x", true),
        )])
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut w3 = Watcher::open(ch, Scope::Merged, &[], Some(resume))
        .await
        .unwrap();
    let b = w3.next(T).await.unwrap().unwrap();
    assert_eq!(b.r#type, BatchType::SnapshotBegin as i32);
    assert!(
        b.reset && b.reason.contains("older"),
        "old revision → reset: {}",
        b.reason
    );
    w3.until(T, "reset snapshot end", |m| {
        !m.in_snapshot() && m.snapshots == 1
    })
    .await
    .unwrap();
    assert_eq!(w3.mirror.records.len(), 24);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_scope_sees_only_exported_records() {
    let c = Cluster::start("c2", 2, 1, &[]).await.unwrap();
    let s = store(&c).await;
    let ch = c.api().channel(Role::Remote).await.unwrap();
    let mut w = Watcher::open(ch, Scope::Exported, &[Kind::Node], None)
        .await
        .unwrap();
    w.until(T, "empty snapshot", |m| {
        m.snapshots == 1 && !m.in_snapshot()
    })
    .await
    .unwrap();
    s.apply(&[
        WriteOp::put(
            keys::state(Kind::Node, "c2", "pub"),
            node("c2", "pub", true),
        ),
        WriteOp::put(
            keys::state(Kind::Node, "c2", "priv"),
            node("c2", "priv", false),
        ),
        WriteOp::put(
            keys::cache(Kind::Node, "peer", "p1"),
            node("peer", "p1", true),
        ),
        WriteOp::put(keys::synced("c2", Kind::Node), vec![]),
    ])
    .await
    .unwrap();
    w.until(T, "synced marker", |m| {
        m.synced.contains(&("c2".to_string(), Kind::Node))
    })
    .await
    .unwrap();
    assert_eq!(
        node_names(&w),
        ["pub"],
        "only this cluster's exported records, never peers' cache"
    );
    // Un-exporting a record shows up as a delete to peers.
    s.apply(&[WriteOp::put(
        keys::state(Kind::Node, "c2", "pub"),
        node("c2", "pub", false),
    )])
    .await
    .unwrap();
    w.until(T, "withdrawal", |m| m.records.is_empty())
        .await
        .unwrap();
}

/// A node record of about `pad` bytes (a label carries the padding).
fn big_node(cluster: &str, name: &str, pad: usize) -> Vec<u8> {
    let mut n = Node::decode(node(cluster, name, true).as_slice()).unwrap();
    n.labels.insert("pad".into(), "x".repeat(pad));
    n.encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_large_transaction_arrives_in_bounded_messages_and_resumes_whole() {
    use clustermesh_proto::chunks::MESSAGE_BYTES;
    let c = Cluster::start("c1", 1, 1, &[]).await.unwrap();
    let s = store(&c).await;
    let ch = c.api().channel(Role::Agent).await.unwrap();
    let mut w = Watcher::open(ch.clone(), Scope::Merged, &[], None)
        .await
        .unwrap();
    w.until(T, "snapshot end", |m| !m.in_snapshot() && m.snapshots == 1)
        .await
        .unwrap();
    let before = w.mirror.resume_point().unwrap();

    // 100 records of ~1 KiB in one transaction: one revision, ~100 KiB.
    let ops: Vec<WriteOp> = (0..100)
        .map(|i| {
            let name = format!("big{i:03}");
            WriteOp::put(
                keys::state(Kind::Node, "c1", &name),
                big_node("c1", &name, 1000),
            )
        })
        .collect();
    s.apply(&ops).await.unwrap();
    w.until(T, "all 100 records", |m| {
        m.records.keys().filter(|k| k.2.starts_with("big")).count() == 100
    })
    .await
    .unwrap();
    let parts: Vec<_> = w
        .batches
        .iter()
        .filter(|b| b.r#type == BatchType::Events as i32 && !b.events.is_empty())
        .collect();
    let revision = parts[0].events[0].revision;
    assert!(
        parts
            .iter()
            .flat_map(|b| &b.events)
            .all(|e| e.revision == revision),
        "one transaction, one revision"
    );
    assert!(
        parts.len() >= 6,
        "~100 KiB in messages of ~16 KiB: {} messages",
        parts.len()
    );
    for b in &parts {
        let bytes: usize = b.events.iter().map(|e| e.key.len() + e.value.len()).sum();
        let largest = b
            .events
            .iter()
            .map(|e| e.key.len() + e.value.len())
            .max()
            .unwrap_or(0);
        assert!(
            bytes <= MESSAGE_BYTES + largest,
            "a message holds {bytes} bytes, over the bound"
        );
    }
    let (last, cut) = parts.split_last().unwrap();
    assert_eq!(
        last.revision, revision,
        "the last message completes the transaction"
    );
    assert!(
        cut.iter().all(|b| b.revision == revision - 1),
        "a message cut inside the transaction completes only the revision before it: {:?}",
        cut.iter().map(|b| b.revision).collect::<Vec<_>>()
    );

    // A consumer that stopped after the first message resumes from its
    // revision and gets the whole transaction again: nothing is skipped.
    let resume = ResumePoint {
        epoch: before.epoch.clone(),
        revision: cut[0].revision,
    };
    let mut w2 = Watcher::open(ch, Scope::Merged, &[], Some(resume))
        .await
        .unwrap();
    w2.until(T, "the transaction replayed", |m| {
        m.records.keys().filter(|k| k.2.starts_with("big")).count() == 100
    })
    .await
    .unwrap();
    assert!(
        w2.batches
            .iter()
            .all(|b| b.r#type != BatchType::SnapshotBegin as i32),
        "a resume within the history, not a snapshot"
    );
}
