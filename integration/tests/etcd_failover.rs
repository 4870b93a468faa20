//! A three-member etcd: killing one member during a stream of writes loses no
//! event for the apiserver's watchers.

use std::time::Duration;

use clustermesh_certs::Role;
use clustermesh_integration::apiserver::Cluster;
use clustermesh_integration::etcd::EtcdClients as _;
use clustermesh_integration::watcher::Watcher;
use clustermesh_proto::keys;
use clustermesh_proto::v1::{BatchType, EventType, Kind, Node, Scope};
use prost::Message;

const WRITES: usize = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_etcd_member_loses_no_event() {
    let mut c = Cluster::start("ha", 7, 3, &[]).await.unwrap();
    let ch = c.api().channel(Role::Agent).await.unwrap();
    let mut w = Watcher::open(ch, Scope::Merged, &[Kind::Node], None)
        .await
        .unwrap();
    w.until(Duration::from_secs(10), "snapshot", |m| {
        m.snapshots == 1 && !m.in_snapshot()
    })
    .await
    .unwrap();

    // Writer: its own client on members 1 and 2 (member 0 is killed mid-stream),
    // each put retried until it lands, as any real writer would.
    let writer = c.etcd.member_client(1).await.unwrap();
    let handle = tokio::spawn(async move {
        let mut client = writer;
        for i in 0..WRITES {
            let key = keys::state(Kind::Node, "ha", &format!("n{i:04}"));
            let value = Node {
                name: format!("n{i:04}"),
                cluster: "ha".into(),
                exported: true,
                ..Default::default()
            }
            .encode_to_vec();
            let mut tries = 0;
            while let Err(e) = client.put(key.clone(), value.clone(), None).await {
                tries += 1;
                assert!(tries < 200, "put {i} keeps failing: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    // Kill a member while the writes stream in.
    tokio::time::sleep(Duration::from_millis(150)).await;
    c.etcd.kill_member(0).unwrap();
    handle.await.unwrap();

    w.until(Duration::from_secs(60), "every write", |m| {
        m.records.len() == WRITES
    })
    .await
    .unwrap();
    // Exactly one upsert per key, in revision order, no snapshot again.
    let ups: Vec<(String, i64)> = w
        .batches
        .iter()
        .filter(|b| b.r#type == BatchType::Events as i32)
        .flat_map(|b| b.events.iter())
        .filter(|e| e.r#type == EventType::Upsert as i32)
        .map(|e| (e.key.clone(), e.revision))
        .collect();
    assert_eq!(ups.len(), WRITES, "no event lost or duplicated");
    assert!(ups.windows(2).all(|p| p[0].1 < p[1].1), "in revision order");
    assert_eq!(
        w.mirror.snapshots, 1,
        "the watcher never needed a new snapshot"
    );
    // The member comes back and the apiserver is still serving.
    c.etcd.restart_member(0).await.unwrap();
    assert_eq!(
        clustermesh_integration::http::http_get(&c.api().health, "/readyz")
            .await
            .unwrap()
            .0,
        200
    );
}
