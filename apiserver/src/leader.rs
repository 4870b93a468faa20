//! Leader election through an etcd lease: exactly one replica holds the
//! `leader` key (attached to its lease) and writes; all replicas serve.
//!
//! A replica that dies stops renewing; etcd deletes the key when the lease
//! expires (after `ttl`), the followers' watch sees the delete and one of
//! them wins the next campaign. Writes of the leader are fenced: every write
//! transaction compares the `leader` key with this replica's token (see
//! `Store::apply_fenced`), so a replica that lost the lease cannot write even
//! before it notices.

use std::time::Duration;

use clustermesh_proto::keys;
use etcd_client::{Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, WatchOptions};
use rand::Rng;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::store::{Store, StoreError};

/// This replica's identity in the election: "<replica>/<nonce>".
pub fn token(replica: &str) -> String {
    format!("{replica}/{:08x}", rand::rng().random::<u32>())
}

/// The replica name inside a token.
pub fn replica_of(token: &str) -> &str {
    token.rsplit_once('/').map(|(r, _)| r).unwrap_or(token)
}

/// Campaigns and holds leadership until `stop` flips; publishes whether this
/// replica leads.
pub async fn run(
    store: Store,
    token: String,
    ttl: Duration,
    leading: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let ttl_secs = ttl.as_secs().max(1) as i64;
    loop {
        let r = tokio::select! {
            r = term(&store, &token, ttl_secs, &leading) => r,
            _ = stop.changed() => break,
        };
        leading.send_replace(false);
        if let Err(e) = r {
            warn!(error = %e, "leader election: retrying");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => break,
            }
        }
    }
    leading.send_replace(false);
}

/// The token and lease of the `leader` key, from a failed campaign's get.
fn holder(resp: &etcd_client::TxnResponse) -> Option<(String, i64)> {
    resp.op_responses().into_iter().find_map(|op| match op {
        etcd_client::TxnOpResponse::Get(g) => g
            .kvs()
            .first()
            .map(|kv| (String::from_utf8_lossy(kv.value()).into_owned(), kv.lease())),
        _ => None,
    })
}

/// One campaign: wait until the key is free, take it, hold it while the
/// lease is renewed. Returns when leadership is lost (or on an error).
async fn term(
    store: &Store,
    token: &str,
    ttl: i64,
    leading: &watch::Sender<bool>,
) -> Result<(), StoreError> {
    let mut c = store.client();
    let key = keys::leader();
    let lease = c
        .lease_grant(ttl, None)
        .await
        .map_err(|e| store.err(e))?
        .id();
    loop {
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                token,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let resp = c.txn(txn).await.map_err(|e| store.err(e))?;
        if resp.succeeded() {
            break;
        }
        if let Some((held_by, held_lease)) = holder(&resp)
            && held_by != token
            && replica_of(&held_by) == replica_of(token)
        {
            // An earlier run of this replica (it was killed or crashed and
            // restarted): nobody renews that lease, but it would hold the
            // key until it expires. Revoke it and campaign at once. Replica
            // names are unique (a pod's name); two processes run with the
            // same name would take the key from each other, each refused
            // every write once it lost it (writes are fenced on the token).
            info!(token, earlier = %held_by, "the leader key is held by an earlier run of this replica; revoking its lease");
            match c.lease_revoke(held_lease).await {
                Ok(_) => continue,
                // Expired meanwhile: the key is gone, campaign again.
                Err(e) if e.to_string().contains("lease not found") => continue,
                Err(e) => return Err(store.err(e)),
            }
        }
        // Someone leads: wait for the key to go away (lease expiry or resign).
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let mut w = c
            .watch(
                key.as_str(),
                Some(WatchOptions::new().with_start_revision(rev + 1)),
            )
            .await
            .map_err(|e| store.err(e))?;
        // Keep our own lease alive while we wait, so it is valid when we win.
        let (mut keeper, mut acks) = c.lease_keep_alive(lease).await.map_err(|e| store.err(e))?;
        let mut tick = tokio::time::interval(Duration::from_millis((ttl * 1000 / 3) as u64));
        'wait: loop {
            tokio::select! {
                msg = w.message() => {
                    let Some(resp) = msg.map_err(|e| store.err(e))? else { break 'wait };
                    if resp.events().iter().any(|e| e.event_type() == EventType::Delete) || resp.canceled() {
                        break 'wait;
                    }
                }
                _ = tick.tick() => {
                    keeper.keep_alive().await.map_err(|e| store.err(e))?;
                    let _ = acks.message().await.map_err(|e| store.err(e))?;
                }
            }
        }
    }
    info!(token, "became leader");
    leading.send_replace(true);
    let (mut keeper, mut acks) = c.lease_keep_alive(lease).await.map_err(|e| store.err(e))?;
    let period = Duration::from_millis((ttl * 1000 / 3) as u64);
    let deadline_after = Duration::from_millis((ttl * 1000 * 2 / 3) as u64);
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(period).await;
        let renewed = tokio::time::timeout(period, async {
            keeper.keep_alive().await?;
            acks.message().await
        })
        .await;
        match renewed {
            Ok(Ok(Some(r))) if r.ttl() > 0 => last_ok = tokio::time::Instant::now(),
            Ok(Ok(Some(_))) => {
                warn!("leader lease expired; stepping down");
                return Ok(());
            }
            Ok(Err(e)) => warn!(error = %e, "leader lease renewal failed"),
            Ok(Ok(None)) | Err(_) => warn!("leader lease renewal got no answer"),
        }
        // Step down before the lease can have expired on the server.
        if last_ok.elapsed() >= deadline_after {
            warn!("could not renew the leader lease in time; stepping down");
            let _ = c.lease_revoke(lease).await;
            return Ok(());
        }
    }
}
