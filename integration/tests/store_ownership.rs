//! An apiserver refuses a store that belongs to another cluster.

use std::time::Duration;

use clustermesh_integration::apiserver::{Apiserver, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_store_is_refused_naming_both_clusters() {
    let c = Cluster::start("owner", 4, 1, &[]).await.unwrap();
    for (name, id) in [("intruder", 4), ("owner", 5)] {
        let mut opts = c.opts("bad", &[]);
        opts.cluster = name.into();
        opts.id = id;
        let mut a = Apiserver::spawn(opts, c.dir.path()).unwrap();
        let status = a.child.wait_exit(Duration::from_secs(20)).await.unwrap();
        assert_eq!(
            status.code(),
            Some(3),
            "exit code 3 for a foreign store; log:\n{}",
            a.child.log()
        );
        let log = a.child.log();
        assert!(
            log.contains("belongs to cluster \"owner\" (ID 4")
                && log.contains(&format!("this apiserver is cluster \"{name}\" (ID {id}")),
            "message names both clusters:\n{log}"
        );
    }
    // The rightful owner still runs and restarts fine.
    assert!(
        clustermesh_integration::http::http_get(&c.api().health, "/readyz")
            .await
            .unwrap()
            .0
            == 200
    );
}
