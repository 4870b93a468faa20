//! The single etcd prefix watch that feeds the view. Survives etcd going away:
//! it resumes the watch from the last applied revision, relists after a
//! compaction (the view turns a relist into a diff), and resets the view when
//! the store was wiped (new epoch).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clustermesh_proto::keys;
use clustermesh_proto::v1::ClusterInfo;
use etcd_client::{EventType, WatchOptions};
use tokio_util_shim::CancelToken;
use tracing::{debug, info, warn};

use super::View;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// Minimal cancellation: a watch channel that flips to `true`.
pub mod tokio_util_shim {
    pub type CancelToken = tokio::sync::watch::Receiver<bool>;
}

/// Runs until `stop` flips. Errors are logged, shown through the view's feed
/// error (and so /readyz), and retried with capped exponential backoff.
pub async fn run(
    store: Store,
    view: Arc<View>,
    info: ClusterInfo,
    metrics: Arc<Metrics>,
    mut stop: CancelToken,
) {
    let mut backoff = clustermesh_proto::backoff::Backoff::new(
        Duration::from_millis(100),
        Duration::from_secs(3),
    );
    loop {
        let result = tokio::select! {
            r = feed_once(&store, &view, &info, &metrics) => r,
            _ = stop.changed() => return,
        };
        match result {
            Ok(()) => {
                debug!("etcd watch ended; resuming");
                backoff.reset();
            }
            Err(e) => {
                let delay = backoff.delay();
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "store feed failed");
                metrics.etcd_error("feed");
                view.set_feed_error(Some(e.to_string()));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

async fn feed_once(
    store: &Store,
    view: &View,
    info: &ClusterInfo,
    metrics: &Metrics,
) -> Result<(), StoreError> {
    // The store may have been wiped and recreated while we ran: reclaim it
    // (ownership is checked again, so a store swapped for another cluster's
    // is refused, not served).
    store.ensure_cluster(info).await?;
    let epoch = store.ensure_epoch().await?;
    let start = if view.ready() && view.epoch() == epoch {
        view.revision() + 1
    } else {
        let (rev, kvs) = store.list(keys::PREFIX).await?;
        info!(revision = rev, keys = kvs.len(), epoch = %epoch, "view loaded from store");
        view.load(&epoch, rev, kvs);
        clustermesh_proto::heap::want_release();
        metrics.bootstrapped();
        rev + 1
    };
    let mut client = store.watch_client();
    let mut stream = client
        .watch(
            keys::PREFIX,
            Some(WatchOptions::new().with_prefix().with_start_revision(start)),
        )
        .await
        .map_err(|e| store.err(e))?;
    view.set_feed_error(None);
    while let Some(resp) = stream.message().await.map_err(|e| store.err(e))? {
        if resp.canceled() {
            if resp.compact_revision() > 0 {
                // Our revision was compacted away: relist (as a diff).
                let (rev, kvs) = store.list(keys::PREFIX).await?;
                view.load(&epoch, rev, kvs);
            }
            info!(reason = resp.cancel_reason(), "etcd watch canceled");
            return Ok(());
        }
        let mut revision = 0;
        let mut changes = Vec::with_capacity(resp.events().len());
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            revision = revision.max(kv.mod_revision());
            match ev.event_type() {
                EventType::Put => changes.push((
                    key,
                    Some((Bytes::copy_from_slice(kv.value()), kv.mod_revision())),
                )),
                EventType::Delete => changes.push((key, None)),
            }
        }
        if !changes.is_empty() {
            let stamps = view.apply(revision, changes);
            if !stamps.is_empty() {
                let now = clustermesh_proto::stamp::now_micros();
                for (source, at) in stamps {
                    metrics.propagation(&source, at, now);
                }
            }
        }
    }
    Ok(())
}
