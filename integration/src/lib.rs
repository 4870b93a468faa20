//! Test harness for the clustermesh end-to-end tests.
//!
//! Everything here starts *real* processes (etcd, workspace binaries) on loopback addresses and
//! cleans them up when the owning handle is dropped — also when a test panics. Every child gets
//! `PR_SET_PDEATHSIG(SIGKILL)`, so nothing outlives the test process even if it is killed.
//!
//! The launcher of real processes (ports, child processes, etcd clusters, apiserver replicas,
//! HTTP probes) is the crate `clustermesh-localmesh`, shared with the CLI's `demo`; its modules
//! are re-exported here so tests name one place:
//! * [`ports`] — unique free loopback ports.
//! * [`etcd`] — 1- or 3-member etcd clusters ([`etcd::EtcdCluster`]) and, here only, their
//!   etcd clients ([`etcd::EtcdClients`]).
//! * [`process`] — child processes with log files ([`process::ChildProcess`]), locating
//!   workspace binaries.
//! * [`http`] — plain HTTP GET and readiness polling.
//! * [`apiserver`] — apiserver replicas and whole clusters ([`apiserver::Cluster`]).
//! * [`eventually`] — polling helper for asynchronous conditions.

pub mod bench_env;
pub mod etcd;
pub mod manifests;
pub mod mock_peers;
pub mod watcher;

pub use clustermesh_localmesh::{apiserver, http, ports, process};

use std::future::Future;
use std::time::{Duration, Instant};

/// Interval between two polls of [`eventually`].
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `f` every 20 ms until it returns `Some(T)` or `timeout` elapses.
///
/// A single call of `f` that does not complete by the deadline is abandoned. On timeout the error
/// message names `what` and the timeout.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    let deadline = start + timeout;
    let mut attempts: u64 = 0;
    loop {
        attempts += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, f()).await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(_) => {
                anyhow::bail!(
                    "timed out after {:?} waiting for {what} ({attempts} attempts, last attempt still running at the deadline)",
                    start.elapsed()
                )
            }
        }
        let now = Instant::now();
        if now >= deadline {
            anyhow::bail!(
                "timed out after {:?} waiting for {what} ({attempts} attempts)",
                start.elapsed()
            );
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn eventually_returns_value() {
        let mut n = 0;
        let v = eventually("n reaches 3", Duration::from_secs(2), || {
            n += 1;
            let cur = n;
            async move { (cur >= 3).then_some(cur) }
        })
        .await
        .unwrap();
        assert_eq!(v, 3);
    }

    #[tokio::test]
    async fn eventually_times_out_with_message() {
        let err = eventually::<(), _, _>("the impossible", Duration::from_millis(100), || async {
            None
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("the impossible"), "{err}");
    }

    #[tokio::test]
    async fn eventually_abandons_hanging_attempt() {
        let t = Instant::now();
        let err = eventually::<(), _, _>("a hang", Duration::from_millis(100), || async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            None
        })
        .await
        .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(err.to_string().contains("a hang"), "{err}");
    }
}
