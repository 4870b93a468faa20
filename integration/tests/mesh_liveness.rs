//! Peer loss: a SIGKILLed and restarted peer apiserver costs nothing
//! downstream (records kept, no delete and re-add; status disconnected then
//! connected); a peer that stays down is withdrawn after stale-ttl; a peer
//! restarted with a wiped store is fully resynced with nothing left behind.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::mesh_support::*;
use clustermesh_integration::watcher::Watcher;
use clustermesh_proto::keys;
use clustermesh_proto::v1::{EventType, Kind};

/// Keys (kind, key) of `cluster`'s records in a merged watcher.
fn records_of(w: &Watcher, cluster: &str) -> BTreeSet<(Kind, String)> {
    w.mirror
        .records
        .keys()
        .filter(|(_, c, _)| c == cluster)
        .map(|(k, _, key)| (*k, key.clone()))
        .collect()
}

/// Deletes of `cluster`'s records a watcher has seen.
fn deletes_of(w: &Watcher, cluster: &str) -> Vec<String> {
    w.batches
        .iter()
        .flat_map(|b| &b.events)
        .filter(|e| e.cluster == cluster && e.r#type == EventType::Delete as i32)
        .map(|e| e.key.clone())
        .collect()
}

async fn seed_alpha(a: &clustermesh_integration::apiserver::Cluster, nodes: usize) {
    let s = store(a).await;
    let mut ops = Vec::new();
    for i in 0..nodes {
        let name = format!("n{i}");
        ops.push(put(
            Kind::Node,
            "alpha",
            &name,
            node("alpha", &name, &format!("192.168.1.{i}"), true),
        ));
        let id = ident_no(1, i as u32);
        ops.push(put(
            Kind::Identity,
            "alpha",
            &id.to_string(),
            identity("alpha", id, &name),
        ));
    }
    ops.extend(markers("alpha"));
    s.apply(&ops).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_peer_keeps_records_until_stale_ttl() {
    let mut a = start("alpha", 1, "5s").await;
    let b = start("beta", 2, "5s").await;
    let sb = store(&b).await;
    seed_alpha(&a, 5).await;
    connect(&a, &b).await;
    let mut w = merged_watcher(&b).await;
    w.until(T, "alpha's 10 records on beta", |m| {
        m.records.keys().filter(|(_, c, _)| c == "alpha").count() == 10
    })
    .await
    .unwrap();
    let before = records_of(&w, "alpha");
    wait_status(&b, "alpha", "alpha connected", T, |s| s.connected).await;

    // SIGKILL alpha's apiserver: beta shows it disconnected, keeps its records.
    let killed = Instant::now();
    a.replicas[0].child.kill().unwrap();
    let st = wait_status(&b, "alpha", "alpha disconnected", T, |s| !s.connected).await;
    println!(
        "alpha shown disconnected {:?} after SIGKILL; last_error: {}",
        killed.elapsed(),
        st.last_error
    );
    assert!(!st.withdrawn);
    assert!(st.failures >= 1);
    assert_eq!(
        cached(&sb, "alpha").await.len(),
        10 + clustermesh_proto::RECORD_KINDS.len(),
        "10 records + every kind's marker kept"
    );

    // Restart it well within stale-ttl: connected again, nothing withdrawn.
    a.replicas[0].restart().await.unwrap();
    let st = wait_status(&b, "alpha", "alpha connected again", T, |s| s.connected).await;
    println!("alpha connected again {:?} after SIGKILL", killed.elapsed());
    assert!(!st.withdrawn);
    read_for(&mut w, Duration::from_secs(1)).await;
    assert_eq!(records_of(&w, "alpha"), before);
    assert_eq!(
        deletes_of(&w, "alpha"),
        Vec::<String>::new(),
        "no withdraw and re-add downstream"
    );
    assert_eq!(
        cached(&sb, "alpha").await.len(),
        10 + clustermesh_proto::RECORD_KINDS.len()
    );

    // Now alpha stays down: records are withdrawn stale-ttl after it became
    // disconnected (peer-timeout 1s + stale-ttl 5s after the last message).
    let killed = Instant::now();
    a.replicas[0].child.kill().unwrap();
    w.until(
        Duration::from_secs(30),
        "alpha withdrawn after stale-ttl",
        |m| !m.records.keys().any(|(_, c, _)| c == "alpha"),
    )
    .await
    .unwrap();
    let took = killed.elapsed();
    println!("alpha withdrawn {took:?} after SIGKILL (peer-timeout 1s + stale-ttl 5s)");
    assert!(
        took >= Duration::from_millis(5500),
        "not before stale-ttl: {took:?}"
    );
    assert!(cached(&sb, "alpha").await.is_empty());
    let st = wait_status(&b, "alpha", "withdrawn in status", T, |s| s.withdrawn).await;
    assert!(!st.connected && st.counts.iter().all(|c| c.count == 0));

    // And when it comes back, everything is mirrored again.
    a.replicas[0].restart().await.unwrap();
    w.until(T, "alpha back after restart", |m| {
        m.records.keys().filter(|(_, c, _)| c == "alpha").count() == 10
    })
    .await
    .unwrap();
    wait_status(&b, "alpha", "alpha connected, not withdrawn", T, |s| {
        s.connected && !s.withdrawn
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_peer_is_resynced_and_swept() {
    let mut a = start("alpha", 1, "20s").await;
    let b = start("beta", 2, "20s").await;
    let sb = store(&b).await;
    seed_alpha(&a, 6).await;
    connect(&a, &b).await;
    let mut w = merged_watcher(&b).await;
    w.until(T, "alpha's 12 records on beta", |m| {
        m.records.keys().filter(|(_, c, _)| c == "alpha").count() == 12
    })
    .await
    .unwrap();

    // Wipe alpha's etcd and restart its apiserver: a new, empty store (new epoch).
    a.replicas[0].child.kill().unwrap();
    a.etcd.wipe_and_restart().await.unwrap();
    a.replicas[0].restart().await.unwrap();
    // The wiped cluster lost its registration of beta: connect it again.
    register(&a, peer_config(&b)).await.unwrap();
    // Let beta see the empty store before it is rebuilt: nothing is swept yet
    // (alpha has not marked any kind synced), so nothing downstream flaps.
    tokio::time::sleep(Duration::from_secs(2)).await;
    read_for(&mut w, Duration::from_millis(200)).await;
    assert_eq!(
        records_of(&w, "alpha").len(),
        12,
        "an empty, unsynced store withdraws nothing yet"
    );
    // Alpha rebuilds a subset (n0..n2, one changed) and marks its kinds synced.
    let sa = store(&a).await;
    let mut ops = Vec::new();
    for i in 0..3 {
        let name = format!("n{i}");
        let ip = if i == 2 {
            "192.168.9.9".to_string()
        } else {
            format!("192.168.1.{i}")
        };
        ops.push(put(
            Kind::Node,
            "alpha",
            &name,
            node("alpha", &name, &ip, true),
        ));
        let id = ident_no(1, i);
        ops.push(put(
            Kind::Identity,
            "alpha",
            &id.to_string(),
            identity("alpha", id, &name),
        ));
    }
    sa.apply(&ops).await.unwrap();
    sa.apply(&markers("alpha")).await.unwrap();

    w.until(T, "stale records swept", |m| {
        m.records.keys().filter(|(_, c, _)| c == "alpha").count() == 6
    })
    .await
    .unwrap();
    let expect: BTreeSet<(Kind, String)> = (0..3u32)
        .flat_map(|i| {
            [
                (Kind::Node, format!("n{i}")),
                (Kind::Identity, ident_no(1, i).to_string()),
            ]
        })
        .collect();
    assert_eq!(records_of(&w, "alpha"), expect);
    let n2 = w.mirror.records[&(Kind::Node, "alpha".to_string(), "n2".to_string())].clone();
    assert_eq!(
        n2,
        node("alpha", "n2", "192.168.9.9", true),
        "the changed record is updated"
    );
    // Nothing left behind in beta's store; the kept records were never deleted.
    let mut keys_now: Vec<String> = cached(&sb, "alpha").await;
    keys_now.sort();
    let mut want: Vec<String> = expect
        .iter()
        .map(|(k, key)| keys::cache(*k, "alpha", key))
        .chain(
            clustermesh_proto::RECORD_KINDS
                .iter()
                .map(|k| keys::synced("alpha", *k)),
        )
        .collect();
    want.sort();
    assert_eq!(keys_now, want);
    let deleted: BTreeSet<String> = deletes_of(&w, "alpha").into_iter().collect();
    let want_deleted: BTreeSet<String> = (3..6u32)
        .flat_map(|i| [format!("n{i}"), ident_no(1, i).to_string()])
        .collect();
    assert_eq!(
        deleted, want_deleted,
        "only the records alpha no longer has were deleted"
    );
    let st = wait_status(&b, "alpha", "alpha synced", T, |s| {
        s.connected && crate::mesh_support::all_synced(s)
    })
    .await;
    assert!(!st.withdrawn);
}

async fn replica_status(
    r: &clustermesh_integration::apiserver::Apiserver,
) -> clustermesh_proto::v1::StatusResponse {
    let ch = r.channel(clustermesh_certs::Role::Admin).await.unwrap();
    clustermesh_proto::v1::cluster_mesh_client::ClusterMeshClient::new(ch)
        .status(clustermesh_proto::v1::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_change_on_the_mirroring_side_rewrites_nothing() {
    let a = start("alpha", 1, "30s").await;
    let mut b = start("beta", 2, "30s").await;
    b.add_replica(&flags("30s")).await.unwrap();
    seed_alpha(&a, 4).await;
    connect(&a, &b).await;
    // Find beta's leader; watch and read status on the other replica.
    let leader = clustermesh_integration::eventually("a beta leader", T, || async {
        for (i, r) in b.replicas.iter().enumerate() {
            if replica_status(r).await.leader {
                return Some(i);
            }
        }
        None
    })
    .await
    .unwrap();
    let follower = 1 - leader;
    let ch = b.replicas[follower]
        .channel(clustermesh_certs::Role::Agent)
        .await
        .unwrap();
    let mut w = Watcher::open(ch, clustermesh_proto::v1::Scope::Merged, &[], None)
        .await
        .unwrap();
    w.until(T, "alpha's 8 records on beta's follower", |m| {
        m.records.keys().filter(|(_, c, _)| c == "alpha").count() == 8
            && m.synced.iter().filter(|(c, _)| c == "alpha").count()
                == clustermesh_proto::RECORD_KINDS.len()
    })
    .await
    .unwrap();
    // The leader persists peer status asynchronously (on change, at most
    // every ~2 s): the follower shows it once that write has landed.
    let follower_api = &b.replicas[follower];
    let alpha =
        clustermesh_integration::eventually("the follower shows the leader's view", T, || async {
            let st = replica_status(follower_api).await;
            st.peers
                .iter()
                .find(|p| p.name == "alpha" && p.connected)
                .cloned()
        })
        .await
        .unwrap();

    // SIGKILL beta's leader: the follower takes over, seeds its mirror from
    // the store and writes nothing for records that did not change.
    let seen = w.batches.len();
    let killed_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let killed = Instant::now();
    b.replicas[leader].child.kill().unwrap();
    clustermesh_integration::eventually("follower leads and mirrors alpha", T, || async {
        let st = replica_status(&b.replicas[follower]).await;
        let p = st.peers.iter().find(|p| p.name == "alpha")?;
        (st.leader && p.connected && p.last_heartbeat_unix_millis > killed_ms + 500).then_some(())
    })
    .await
    .unwrap();
    println!(
        "new leader mirrors alpha {:?} after the old one was killed",
        killed.elapsed()
    );
    read_for(&mut w, Duration::from_secs(1)).await;
    let alpha_events: Vec<_> = w.batches[seen..]
        .iter()
        .flat_map(|b| &b.events)
        .filter(|e| e.cluster == "alpha")
        .collect();
    assert!(
        alpha_events.is_empty(),
        "a leader change rewrites nothing downstream: {alpha_events:?}"
    );
    // The status carried over (failures are not reset by the new leader).
    let st = replica_status(&b.replicas[follower]).await;
    let after = st.peers.iter().find(|p| p.name == "alpha").unwrap();
    assert!(after.failures >= alpha.failures);
    assert_eq!(
        after.synced.len(),
        crate::mesh_support::imported_kinds(after)
    );
}
