//! Identity allocation never gives one label set two numbers nor one number
//! two label sets, even with two writers racing on the same store.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use clustermesh_apiserver::export::identities::Allocator;
use clustermesh_apiserver::store::{EtcdOptions, Store};
use clustermesh_integration::etcd::EtcdCluster;
use clustermesh_proto::{ClusterMode, IdentityKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_allocators_agree() {
    let etcd = EtcdCluster::start(1).await.unwrap();
    let opts = EtcdOptions {
        endpoints: etcd.endpoints(),
        ..Default::default()
    };
    let mode = ClusterMode::Max511;
    let shared: Vec<String> = (0..40).map(|i| format!("shared-{i:02}")).collect();
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let mut tasks = Vec::new();
    for w in 0..2 {
        let store = Store::connect(&opts).await.unwrap();
        let barrier = barrier.clone();
        // Each writer: the shared label sets (in opposite orders) and 20 of its own.
        let mut digests = shared.clone();
        if w == 1 {
            digests.reverse();
        }
        digests.extend((0..20).map(|i| format!("own-{w}-{i:02}")));
        tasks.push(tokio::spawn(async move {
            let alloc = Allocator::new(store, mode, 300, "racer");
            barrier.wait().await;
            let mut got = BTreeMap::new();
            for d in digests {
                got.insert(d.clone(), alloc.allocate(&d).await.unwrap());
            }
            (got, alloc.conflicts())
        }));
    }
    let (a, ca) = tasks.remove(0).await.unwrap();
    let (b, cb) = tasks.remove(0).await.unwrap();
    println!("allocation conflicts: writer 0: {ca}, writer 1: {cb}");
    assert!(
        ca + cb > 0,
        "the writers really raced (some transactions lost)"
    );
    for d in &shared {
        assert_eq!(a[d], b[d], "label set {d} got one number from both writers");
    }
    let mut by_id: BTreeMap<u32, BTreeSet<&String>> = BTreeMap::new();
    for (d, id) in a.iter().chain(b.iter()) {
        by_id.entry(*id).or_default().insert(d);
        assert!(
            matches!(
                mode.classify(*id),
                Ok(IdentityKind::Cluster {
                    cluster_id: 300,
                    ..
                })
            ),
            "{id} in range"
        );
    }
    for (id, ds) in &by_id {
        assert_eq!(
            ds.len(),
            1,
            "number {id} given to one label set only: {ds:?}"
        );
    }
    assert_eq!(by_id.len(), 80, "40 shared + 2×20 own label sets");
    // And the store agrees with what the writers were told.
    let store = Store::connect(&opts).await.unwrap();
    let stored = Allocator::new(store, mode, 300, "racer")
        .load()
        .await
        .unwrap();
    for (d, id) in a.iter().chain(b.iter()) {
        assert_eq!(stored.get(d), Some(id));
    }
}
