//! Replicated apiservers on one etcd: one leader writes; SIGKILL of the
//! leader hands over within the lease TTL with nothing lost, duplicated or
//! spuriously deleted; restarting every replica keeps identity numbers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clustermesh_certs::Role;
use clustermesh_integration::apiserver::Cluster;
use clustermesh_integration::manifests as m;
use clustermesh_integration::watcher::Watcher;
use clustermesh_proto::RECORD_KINDS;
use clustermesh_proto::mirror::Mirror;
use clustermesh_proto::v1::{
    BatchType, EventType, Identity, Kind, Scope, StatusRequest,
    cluster_mesh_client::ClusterMeshClient,
};
use prost::Message;

const T: Duration = Duration::from_secs(20);
const TTL_SECS: u64 = 2;

fn write_cluster(dir: &std::path::Path, pods: usize) {
    m::write(
        dir,
        "ns.yaml",
        &m::docs(&[m::namespace("shop", &[]), m::namespace("tools", &[])]),
    )
    .unwrap();
    m::write(
        dir,
        "nodes.yaml",
        &m::node("gw", "192.168.1.10", "10.1.0.0/24", true),
    )
    .unwrap();
    let mut docs = Vec::new();
    for i in 0..pods {
        let app = ["frontend", "backend", "cache"][i % 3];
        let ns = if i % 2 == 0 { "shop" } else { "tools" };
        docs.push(m::pod(
            ns,
            &format!("p{i}"),
            &[("app", app)],
            &format!("10.1.0.{}", 10 + i),
            "gw",
            "192.168.1.10",
            80,
        ));
    }
    m::write(dir, "pods.yaml", &m::docs(&docs)).unwrap();
}

fn synced(m: &Mirror) -> bool {
    RECORD_KINDS
        .iter()
        .all(|k| m.synced.contains(&("r".to_string(), *k)))
}

fn identity_numbers(m: &Mirror) -> BTreeMap<Vec<(String, String)>, u32> {
    m.records
        .iter()
        .filter(|((k, _, _), _)| *k == Kind::Identity)
        .filter_map(|(_, v)| Identity::decode(v.as_ref()).ok())
        .map(|i| (i.labels.into_iter().collect(), i.id))
        .collect()
}

async fn leader_index(c: &Cluster) -> Option<usize> {
    for (i, r) in c.replicas.iter().enumerate() {
        if !r.child_running() {
            continue;
        }
        let Ok(ch) = r.channel(Role::Admin).await else {
            continue;
        };
        if let Ok(s) = ClusterMeshClient::new(ch).status(StatusRequest {}).await
            && s.into_inner().leader
        {
            return Some(i);
        }
    }
    None
}

trait Running {
    fn child_running(&self) -> bool;
}
impl Running for clustermesh_integration::apiserver::Apiserver {
    fn child_running(&self) -> bool {
        self.child.exit_status().is_none()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_and_full_restart() {
    let dir = tempfile::tempdir().unwrap();
    write_cluster(dir.path(), 12);
    let args: Vec<String> = [
        "--source".into(),
        format!("manifests:{}", dir.path().display()),
        "--leader-lease-ttl".into(),
        format!("{TTL_SECS}s"),
    ]
    .into();
    let mut c = Cluster::start("r", 5, 1, &args).await.unwrap();
    c.add_replica(&args).await.unwrap();

    // Exactly one leader.
    let leader = clustermesh_integration::eventually("a leader", T, || leader_index(&c))
        .await
        .unwrap();
    let follower = 1 - leader;

    // Watch through the follower (it keeps serving while the leader dies).
    let ch = c.replicas[follower].channel(Role::Agent).await.unwrap();
    let mut w = Watcher::open(ch, Scope::Merged, &[], None).await.unwrap();
    w.until(T, "all kinds synced", synced).await.unwrap();
    let before = w.mirror.records.clone();
    let ids_before = identity_numbers(&w.mirror);
    assert_eq!(before.keys().filter(|k| k.0 == Kind::Endpoint).count(), 12);
    let seen_before = w.batches.len();

    // SIGKILL the leader; the follower takes over within the lease TTL.
    c.replicas[leader].child.kill().unwrap();
    let killed = Instant::now();
    clustermesh_integration::eventually("the follower to lead", T, || async {
        (leader_index(&c).await == Some(follower)).then_some(())
    })
    .await
    .unwrap();
    let takeover = killed.elapsed();
    println!("leader takeover after SIGKILL: {takeover:?} (lease TTL {TTL_SECS}s)");
    assert!(
        takeover <= Duration::from_secs(TTL_SECS + 2),
        "took over within the TTL (+ detection slack): {takeover:?}"
    );

    // A change after the kill is written by the new leader.
    m::write(
        dir.path(),
        "late.yaml",
        &m::pod(
            "shop",
            "late",
            &[("app", "late")],
            "10.1.0.200",
            "gw",
            "192.168.1.10",
            80,
        ),
    )
    .unwrap();
    w.until(T, "the late pod", |m| {
        m.records
            .contains_key(&(Kind::Endpoint, "r".into(), "10.1.0.200".into()))
    })
    .await
    .unwrap();

    // Nothing was deleted, re-added or rewritten: every event since the kill is the late pod's.
    let after: Vec<_> = w.batches[seen_before..]
        .iter()
        .filter(|b| b.r#type == BatchType::Events as i32)
        .flat_map(|b| b.events.iter())
        .collect();
    assert!(
        after.iter().all(|e| e.r#type != EventType::Delete as i32),
        "no spurious delete"
    );
    assert!(
        after
            .iter()
            .all(|e| e.kind == Kind::Identity as i32 || e.key == "10.1.0.200"),
        "only the new pod's records changed: {:?}",
        after.iter().map(|e| (&e.kind, &e.key)).collect::<Vec<_>>()
    );
    for (k, v) in &before {
        assert_eq!(w.mirror.records.get(k), Some(v), "record {k:?} unchanged");
    }
    assert_eq!(
        w.mirror.records.len(),
        before.len() + 2,
        "one endpoint and one identity added, nothing else"
    );

    // Restart every replica: every identity keeps its number.
    c.replicas[leader].restart().await.unwrap();
    c.replicas[follower].restart().await.unwrap();
    clustermesh_integration::eventually("a leader after restart", T, || leader_index(&c))
        .await
        .unwrap();
    let ch = c.replicas[0].channel(Role::Agent).await.unwrap();
    let mut w2 = Watcher::open(ch, Scope::Merged, &[], None).await.unwrap();
    w2.until(T, "synced after restart", synced).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids_after = identity_numbers(&w2.mirror);
    for (labels, id) in &ids_before {
        assert_eq!(
            ids_after.get(labels),
            Some(id),
            "identity {labels:?} kept its number"
        );
    }
}

/// The `leader` key's value (the holder's token) and lease.
async fn leader_key(c: &Cluster) -> Option<(String, i64)> {
    use clustermesh_integration::etcd::EtcdClients as _;
    let mut cl = c.etcd.client().await.ok()?;
    let r = cl.get(clustermesh_proto::keys::leader(), None).await.ok()?;
    r.kvs()
        .first()
        .map(|kv| (String::from_utf8_lossy(kv.value()).into_owned(), kv.lease()))
}

/// A replica SIGKILLed while it leads and started again (same replica name,
/// as a restarted container keeps its pod's name) takes the leader key back
/// at once instead of waiting out the dead run's lease: with a 60 s lease,
/// leading again within 30 s is only possible by that takeover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_takes_its_key_back_without_waiting_for_the_lease() {
    let flags = ["--leader-lease-ttl".to_string(), "60s".to_string()];
    let mut c = Cluster::start("relead", 1, 1, &flags)
        .await
        .expect("cluster");
    clustermesh_integration::eventually("the replica leads", T, || async {
        leader_index(&c).await.filter(|i| *i == 0)
    })
    .await
    .expect("leader");
    let (first, first_lease) = leader_key(&c).await.expect("the first run's leader key");
    let t = Instant::now();
    c.replicas[0].restart().await.expect("restart");
    clustermesh_integration::eventually(
        "the restarted replica leads again",
        Duration::from_secs(30),
        || async { leader_index(&c).await.filter(|i| *i == 0) },
    )
    .await
    .expect("the restarted replica took its key back before the 60 s lease ran out");
    println!("leading again {:?} after the SIGKILL", t.elapsed());
    // The key now holds the new run's token on a new lease: the token every
    // write of the new run is fenced on.
    let (now, lease) = leader_key(&c).await.expect("leader key");
    assert_ne!(now, first, "a new run's token");
    assert_ne!(lease, first_lease, "on the new run's lease");
    assert_eq!(now.rsplit_once('/').map(|(r, _)| r), Some("r0"), "{now}");
}
