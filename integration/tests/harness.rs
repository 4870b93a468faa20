//! Tests of the harness itself: real etcd processes and child processes, cleaned up on drop.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use clustermesh_integration::etcd::EtcdClients as _;
use clustermesh_integration::etcd::EtcdCluster;
use clustermesh_integration::eventually;
use clustermesh_integration::process::ChildProcess;

fn pid_exists(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

async fn get_value(client: &mut etcd_client::Client, key: &str) -> Option<Vec<u8>> {
    let r = client.get(key, None).await.ok()?;
    r.kvs().first().map(|kv| kv.value().to_vec())
}

#[tokio::test]
async fn single_member_put_get_and_cleanup() {
    let cluster = EtcdCluster::start(1).await.unwrap();
    assert_eq!(cluster.endpoints().len(), 1);
    assert_eq!(cluster.endpoints_csv(), cluster.member_endpoint(0));
    let mut client = cluster.client().await.unwrap();
    client.put("/test/a", "1", None).await.unwrap();
    assert_eq!(
        get_value(&mut client, "/test/a").await.as_deref(),
        Some(&b"1"[..])
    );

    let pid = cluster.member_pid(0).unwrap();
    let dir = cluster.dir().to_path_buf();
    let data = cluster.data_dir(0);
    assert!(pid_exists(pid));
    assert!(data.is_dir());
    drop(client);
    drop(cluster);
    assert!(!pid_exists(pid), "etcd pid {pid} still exists after drop");
    assert!(!dir.exists(), "{} not removed", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_failover_and_restart() {
    let mut cluster = EtcdCluster::start(3).await.unwrap();
    assert_eq!(cluster.endpoints().len(), 3);

    let mut c0 = cluster.member_client(0).await.unwrap();
    let mut c2 = cluster.member_client(2).await.unwrap();
    c0.put("/test/x", "from-0", None).await.unwrap();
    assert_eq!(
        get_value(&mut c2, "/test/x").await.as_deref(),
        Some(&b"from-0"[..])
    );

    let pid0 = cluster.member_pid(0).unwrap();
    cluster.kill_member(0).unwrap();
    assert!(!pid_exists(pid0));
    assert_eq!(cluster.member_pid(0), None);
    assert_eq!(
        cluster.endpoints().len(),
        3,
        "stopped members keep their endpoint"
    );

    let mut client = cluster.client().await.unwrap();
    // The killed member may have been the leader: allow for an election.
    eventually(
        "write after killing member 0",
        Duration::from_secs(10),
        || {
            let mut client = client.clone();
            async move { client.put("/test/y", "after-kill", None).await.ok() }
        },
    )
    .await
    .unwrap();
    // Once a leader exists, writes through the all-endpoints client keep succeeding.
    for i in 0..20 {
        client
            .put(format!("/test/z{i}"), "v", None)
            .await
            .unwrap_or_else(|e| panic!("write {i} with member 0 down: {e}"));
    }

    // A client over all endpoints (including the dead one) gets through with retries.
    let all = cluster.client_all_endpoints().await.unwrap();
    eventually(
        "write via all-endpoints client",
        Duration::from_secs(10),
        || {
            let mut all = all.clone();
            async move { all.put("/test/all", "v", None).await.ok() }
        },
    )
    .await
    .unwrap();

    cluster.restart_member(0).await.unwrap();
    let pid0b = cluster.member_pid(0).unwrap();
    assert_ne!(pid0, pid0b);
    let mut c0 = cluster.member_client(0).await.unwrap();
    assert_eq!(
        get_value(&mut c0, "/test/y").await.as_deref(),
        Some(&b"after-kill"[..])
    );
    assert_eq!(
        get_value(&mut c0, "/test/z19").await.as_deref(),
        Some(&b"v"[..])
    );
    // With every member back, the all-endpoints client works on every request.
    let mut all = cluster.client_all_endpoints().await.unwrap();
    for i in 0..20 {
        all.put(format!("/test/w{i}"), "v", None)
            .await
            .unwrap_or_else(|e| panic!("write {i} after restart: {e}"));
    }
    let log = cluster.member_log(0);
    assert!(log.contains("initial-cluster-state existing"), "{log}");
}

#[tokio::test]
async fn wipe_and_restart_loses_data() {
    let mut cluster = EtcdCluster::start(1).await.unwrap();
    let endpoint = cluster.member_endpoint(0);
    let mut client = cluster.client().await.unwrap();
    client.put("/test/old", "v", None).await.unwrap();
    cluster.wipe_and_restart().await.unwrap();
    assert_eq!(
        cluster.member_endpoint(0),
        endpoint,
        "same endpoint after wipe"
    );
    let mut client = cluster.client().await.unwrap();
    let r = client.get("/test/old", None).await.unwrap();
    assert!(r.kvs().is_empty(), "key survived the wipe");
}

#[tokio::test]
async fn wipe_and_restart_requires_single_member() {
    let mut cluster = EtcdCluster::start(3).await.unwrap();
    let err = cluster.wipe_and_restart().await.unwrap_err();
    assert!(err.to_string().contains("1-member"), "{err}");
}

#[tokio::test]
async fn child_process_log_kill_and_drop() {
    let dir = tempfile::tempdir().unwrap();
    let args = vec!["-c".to_string(), "echo hi; sleep 30".to_string()];
    let mut child = ChildProcess::spawn("sh", Path::new("/bin/sh"), &args, dir.path()).unwrap();
    let pid = child.pid();
    eventually("\"hi\" in the log", Duration::from_secs(5), || {
        let found = child.log().contains("hi");
        async move { found.then_some(()) }
    })
    .await
    .unwrap();
    assert_eq!(child.log_tail(1), "hi");
    assert!(child.try_wait().unwrap().is_none());
    child.kill().unwrap();
    assert!(!pid_exists(pid));
    let status = child.try_wait().unwrap().expect("reaped after kill");
    assert!(!status.success());

    // Dropping a running child kills and reaps it.
    let child = ChildProcess::spawn("sh2", Path::new("/bin/sh"), &args, dir.path()).unwrap();
    let pid = child.pid();
    assert!(pid_exists(pid));
    drop(child);
    assert!(!pid_exists(pid), "pid {pid} still exists after drop");
}

#[test]
fn panic_in_scope_still_kills_child() {
    let dir = tempfile::tempdir().unwrap();
    let pid = Arc::new(AtomicU32::new(0));
    let pid_in = pid.clone();
    let log_dir = dir.path().to_path_buf();
    let result = std::panic::catch_unwind(move || {
        let args = vec!["-c".to_string(), "sleep 30".to_string()];
        let child = ChildProcess::spawn("doomed", Path::new("/bin/sh"), &args, &log_dir).unwrap();
        pid_in.store(child.pid(), Ordering::SeqCst);
        panic!("test panics while the child runs");
    });
    assert!(result.is_err());
    let pid = pid.load(Ordering::SeqCst);
    assert_ne!(pid, 0);
    assert!(!pid_exists(pid), "child {pid} survived the panic");
}

#[tokio::test]
async fn wait_exit_times_out_with_log() {
    let dir = tempfile::tempdir().unwrap();
    let args = vec!["-c".to_string(), "echo still-here; sleep 30".to_string()];
    let mut child = ChildProcess::spawn("slow", Path::new("/bin/sh"), &args, dir.path()).unwrap();
    let t = Instant::now();
    eventually("log line", Duration::from_secs(5), || {
        let found = child.log().contains("still-here");
        async move { found.then_some(()) }
    })
    .await
    .unwrap();
    let err = child
        .wait_exit(Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5));
    let msg = err.to_string();
    assert!(
        msg.contains("did not exit") && msg.contains("still-here"),
        "{msg}"
    );
}
