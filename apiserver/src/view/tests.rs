//! The view: snapshots, resume, relists, counts, listings.
use super::*;
use clustermesh_proto::v1::Node;
use prost::Message;

fn node(name: &str, exported: bool) -> Bytes {
    Node {
        name: name.into(),
        cluster: "a".into(),
        exported,
        ..Default::default()
    }
    .encode_to_vec()
    .into()
}

fn kv(key: String, value: Bytes, rev: i64) -> Kv {
    Kv {
        key,
        value,
        mod_revision: rev,
    }
}

#[test]
fn snapshot_then_resume() {
    let v = View::new(
        "a",
        ViewConfig {
            history_events: 3,
            subscriber_buffer: 16,
        },
    );
    v.load(
        "e1",
        10,
        vec![kv(keys::state(Kind::Node, "a", "n1"), node("n1", true), 5)],
    );
    let s = v.subscribe(Scope::Merged, &[], None);
    assert!(
        matches!(s.start, Start::Snapshot { ref events, reset: false, .. } if events.len() == 1)
    );
    v.apply(
        11,
        vec![(
            keys::state(Kind::Node, "a", "n2"),
            Some((node("n2", false), 11)),
        )],
    );
    v.apply(12, vec![(keys::state(Kind::Node, "a", "n1"), None)]);
    // resume from 10: replay both
    let s = v.subscribe(Scope::Merged, &[], Some(("e1", 10)));
    assert!(matches!(s.start, Start::Replay(ref b) if b.len() == 2));
    // foreign epoch: reset snapshot
    let s = v.subscribe(Scope::Exported, &[], Some(("other", 10)));
    match s.start {
        Start::Snapshot { events, reset, .. } => {
            assert!(reset);
            assert!(events.is_empty(), "n2 is not exported, n1 deleted");
        }
        _ => panic!("expected snapshot"),
    }
    // history trimmed past 10
    for r in 13..20 {
        v.apply(
            r,
            vec![(
                keys::state(Kind::Node, "a", &format!("x{r}")),
                Some((node("x", true), r)),
            )],
        );
    }
    let s = v.subscribe(Scope::Merged, &[], Some(("e1", 10)));
    assert!(matches!(s.start, Start::Snapshot { reset: true, .. }));
    // stale duplicate revision ignored
    v.apply(
        15,
        vec![(
            keys::state(Kind::Node, "a", "zz"),
            Some((node("zz", true), 15)),
        )],
    );
    assert!(v.get(&keys::state(Kind::Node, "a", "zz")).is_none());
}

/// The view holds the store under its prefix (its records keep only
/// what follows it); prefix queries shorter than it cover everything.
#[test]
fn keys_outside_the_prefix_are_not_kept() {
    let v = View::new("a", ViewConfig::default());
    let n1 = keys::state(Kind::Node, "a", "n1");
    v.load(
        "e",
        5,
        vec![
            kv(n1.clone(), node("n1", true), 3),
            kv("elsewhere/x".into(), node("x", true), 4),
        ],
    );
    v.apply(6, vec![("elsewhere/y".into(), Some((node("y", true), 6)))]);
    assert!(v.get("elsewhere/x").is_none() && v.get("elsewhere/y").is_none());
    assert_eq!(v.get(&n1).map(|e| e.mod_revision), Some(3));
    let all: Vec<String> = v.entries("").into_iter().map(|(k, _)| k).collect();
    assert_eq!(all, vec![n1.clone()]);
    assert_eq!(v.entries(&keys::PREFIX[..5]).len(), 1);
    assert!(v.entries("elsewhere/").is_empty());
    assert_eq!(v.entries(&keys::state_prefix(Kind::Node, "a"))[0].0, n1);
}

#[test]
fn relist_same_epoch_yields_diff() {
    let v = View::new("a", ViewConfig::default());
    let k1 = keys::state(Kind::Node, "a", "n1");
    let k2 = keys::state(Kind::Node, "a", "n2");
    v.load(
        "e",
        5,
        vec![
            kv(k1.clone(), node("n1", true), 3),
            kv(k2.clone(), node("n2", true), 4),
        ],
    );
    let mut s = v.subscribe(Scope::Merged, &[], None);
    v.load(
        "e",
        9,
        vec![
            kv(k1.clone(), node("n1", true), 3),
            kv(k2, node("n2-changed", true), 8),
        ],
    );
    let b = s.rx.try_recv().unwrap();
    assert_eq!(b.events.len(), 1, "only the changed record");
    assert!(!b.reset);
    v.load("e2", 3, vec![kv(k1, node("n1", true), 2)]);
    assert!(
        s.rx.try_recv().unwrap().reset,
        "new epoch resets subscribers"
    );
    assert_eq!(v.epoch(), "e2");
}

/// The counts Status serves, by scanning: what the kept counts must equal.
fn scanned(v: &View) -> Vec<(String, i32, u64)> {
    let mut m: BTreeMap<(String, i32), u64> = BTreeMap::new();
    for (k, _) in v.entries(keys::PREFIX) {
        let t = Target::of(&k, "a");
        if t.is_record() {
            *m.entry((t.cluster, t.kind as i32)).or_default() += 1;
        }
    }
    m.into_iter().map(|((c, k), n)| (c, k, n)).collect()
}

fn kept(v: &View) -> Vec<(String, i32, u64)> {
    v.counts()
        .into_iter()
        .map(|c| (c.cluster, c.kind, c.count))
        .collect()
}

#[tokio::test]
async fn a_listing_waits_for_the_revision_and_holds_what_the_store_did() {
    let v = Arc::new(View::new("a", ViewConfig::default()));
    let cache = |n: &str| keys::cache(Kind::Node, "b", n);
    let prefixes = [
        keys::cache_prefix(Kind::Node, "b"),
        keys::synced_prefix("b"),
    ];
    // Not loaded yet: no listing within the limit.
    assert!(
        v.listing_at(1, &prefixes, Duration::from_millis(60))
            .await
            .is_none()
    );
    v.load("e1", 10, vec![kv(cache("x"), node("x", true), 6)]);
    // Behind the asked revision: none; a later change brings it there,
    // and the waiting listing sees that change.
    let waiting = {
        let v = v.clone();
        let prefixes = prefixes.clone();
        tokio::spawn(async move { v.listing_at(12, &prefixes, Duration::from_secs(20)).await })
    };
    v.apply(
        12,
        vec![
            (cache("y"), Some((node("y", true), 12))),
            (keys::synced("b", Kind::Node), Some((Bytes::new(), 12))),
        ],
    );
    let lists = waiting.await.expect("task").expect("caught up");
    let keys: Vec<Vec<String>> = lists
        .iter()
        .map(|l| l.iter().map(|kv| kv.key.clone()).collect())
        .collect();
    assert_eq!(
        keys,
        vec![
            vec![cache("x"), cache("y")],
            vec![keys::synced("b", Kind::Node)]
        ]
    );
    assert_eq!(lists[0][1].mod_revision, 12);
    assert_eq!(lists[0][0].value, node("x", true));
}

#[test]
fn kept_counts_equal_a_scan_through_loads_upserts_and_deletes() {
    let v = View::new("a", ViewConfig::default());
    let state = |n: &str| keys::state(Kind::Node, "a", n);
    let cache = |c: &str, n: &str| keys::cache(Kind::Node, c, n);
    v.load(
        "e1",
        10,
        vec![
            kv(state("n1"), node("n1", true), 5),
            kv(cache("b", "x"), node("x", true), 6),
            kv(keys::synced("a", Kind::Node), Bytes::new(), 7),
            // A state record of another cluster name is not served, not counted.
            kv(keys::state(Kind::Node, "zz", "n"), node("n", true), 8),
        ],
    );
    assert_eq!(kept(&v), scanned(&v));
    assert_eq!(
        kept(&v),
        vec![
            ("a".into(), Kind::Node as i32, 1),
            ("b".into(), Kind::Node as i32, 1)
        ]
    );
    let mut rev = 10;
    let mut step = |changes: Vec<(String, Option<(Bytes, i64)>)>| {
        rev += 1;
        v.apply(rev, changes);
        assert_eq!(kept(&v), scanned(&v), "after revision {rev}");
    };
    step(vec![(state("n2"), Some((node("n2", true), 11)))]);
    step(vec![(state("n2"), Some((node("n2", false), 12)))]); // update: same count
    step(vec![
        (cache("b", "y"), Some((node("y", true), 13))),
        (cache("c", "z"), Some((node("z", true), 13))),
    ]);
    step(vec![(cache("b", "x"), None), (cache("b", "x"), None)]); // twice: once counted
    step(vec![(cache("c", "z"), None)]); // the last of c's: c is gone
    step(vec![(keys::synced("a", Kind::Node), None)]);
    assert_eq!(
        kept(&v),
        vec![
            ("a".into(), Kind::Node as i32, 2),
            ("b".into(), Kind::Node as i32, 1)
        ]
    );
    // A same-epoch relist turned into differences keeps them too.
    v.load("e1", 20, vec![kv(state("n1"), node("n1", true), 5)]);
    assert_eq!(kept(&v), scanned(&v));
    assert_eq!(kept(&v), vec![("a".into(), Kind::Node as i32, 1)]);
}

#[test]
fn node_cidrs_follow_loads_changes_relists_and_deletes() {
    let with_cidr = |cidr: &str| -> Bytes {
        Node {
            name: "n".into(),
            pod_cidrs: vec![cidr.into()],
            ..Default::default()
        }
        .encode_to_vec()
        .into()
    };
    let ip = |s: &str| -> std::net::IpAddr { s.parse().unwrap() };
    let v = View::new("a", ViewConfig::default());
    let peer_node = keys::cache(Kind::Node, "b", "n1");
    v.load(
        "e1",
        10,
        vec![
            kv(
                keys::state(Kind::Node, "a", "n1"),
                with_cidr("10.1.0.0/24"),
                5,
            ),
            kv(peer_node.clone(), with_cidr("10.2.0.0/24"), 6),
        ],
    );
    let before = v.node_cidrs();
    assert!(before.own.any_containing(&ip("10.1.0.7")).is_some());
    assert_eq!(
        before.peers.containing(&ip("10.2.0.7"), "c").map(|x| x.0),
        Some("b")
    );
    // The peer's node moves: the old range is released at once.
    v.apply(
        11,
        vec![(peer_node.clone(), Some((with_cidr("10.3.0.0/24"), 11)))],
    );
    let now = v.node_cidrs();
    assert!(now.peers.any_containing(&ip("10.2.0.7")).is_none());
    assert!(now.peers.any_containing(&ip("10.3.0.7")).is_some());
    assert!(
        before.peers.any_containing(&ip("10.2.0.7")).is_some(),
        "a copy taken before is unchanged"
    );
    // A relist of the same epoch that lost the node: a delete.
    v.load(
        "e1",
        12,
        vec![kv(
            keys::state(Kind::Node, "a", "n1"),
            with_cidr("10.1.0.0/24"),
            5,
        )],
    );
    assert!(v.node_cidrs().peers.is_empty());
    v.apply(13, vec![(keys::state(Kind::Node, "a", "n1"), None)]);
    assert!(v.node_cidrs().own.is_empty());
}
