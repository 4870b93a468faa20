//! A peer sending a record bigger than one store write may hold: the record
//! is refused and counted in the peer's status, and the rest of the peer's
//! records (before and after it) keep flowing.
//!
//! Where it is refused: the syncer's record check (`mesh/validate.rs`,
//! 256 KiB per record) refuses it before any write, and counts it in
//! `PeerStatus.rejected_records`; the store's own bound (a put over
//! `store::MAX_RECORD_BYTES`, about 1 MiB, is refused and the rest of the
//! batch written) is the backstop for every other writer, shown here on the
//! peer's side.

use crate::mesh_support::*;
use clustermesh_apiserver::store::{ETCD_MAX_REQUEST_BYTES, MAX_RECORD_BYTES};
use clustermesh_integration::etcd::EtcdClients as _;
use clustermesh_proto::keys;
use clustermesh_proto::v1::Kind;

fn has(w: &clustermesh_integration::watcher::Watcher, kind: Kind, key: &str) -> bool {
    w.mirror
        .records
        .contains_key(&(kind, "alpha".to_string(), key.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_over_the_write_limit_is_refused_counted_and_the_rest_flows() {
    let a = start("alpha", 1, "30s").await;
    let b = start("beta", 2, "30s").await;
    let (sa, sb) = (store(&a).await, store(&b).await);
    let id_a = ident_no(1, 0);
    let mut ops = alpha_web(id_a);
    ops.extend(markers("alpha"));
    sa.apply(&ops).await.unwrap();

    // A global service with 34,000 backends: bigger than one store write,
    // still under etcd's own request limit, so it can exist in alpha's store
    // when something other than our store layer wrote it.
    let ips: Vec<String> = (0..34_000)
        .map(|i| format!("10.1.{}.{}", i / 250, i % 250 + 1))
        .collect();
    let ip_refs: Vec<&str> = ips.iter().map(String::as_str).collect();
    let huge = service("alpha", "shop", "huge", &ip_refs);
    let huge_key = keys::state(Kind::Service, "alpha", "shop/huge");
    println!("oversized record: {} bytes", huge.len());
    assert!(huge.len() > MAX_RECORD_BYTES);
    assert!(huge.len() + huge_key.len() < ETCD_MAX_REQUEST_BYTES - 64 * 1024);
    // Our store refuses it (and says why) ...
    let applied = sa
        .apply(&[put(Kind::Service, "alpha", "shop/huge", huge.clone())])
        .await
        .unwrap();
    assert_eq!(applied.refused.len(), 1);
    println!("alpha's store: {}", applied.refused[0]);
    // ... so it is put straight into alpha's etcd.
    let mut raw = a.etcd.client().await.unwrap();
    raw.put(huge_key, huge.to_vec(), None).await.unwrap();

    let mut wb = merged_watcher(&b).await;
    connect(&a, &b).await;
    wb.until(T, "alpha's other records on beta", |m| {
        [
            (Kind::Node, "gw"),
            (Kind::Endpoint, "10.1.0.5"),
            (Kind::Service, "shop/web"),
        ]
        .iter()
        .all(|(k, key)| {
            m.records
                .contains_key(&(*k, "alpha".into(), key.to_string()))
        }) && m.synced.contains(&("alpha".into(), Kind::Service))
    })
    .await
    .unwrap();
    let st = wait_status(&b, "alpha", "the oversized record counted", T, |s| {
        s.rejected_records >= 1
    })
    .await;
    println!(
        "beta's status of alpha: rejected {}, last error: {}",
        st.rejected_records, st.last_error
    );
    assert_eq!(st.rejected_records, 1);
    assert!(st.last_error.contains("shop/huge"), "{}", st.last_error);
    assert!(st.last_error.contains("limit"), "{}", st.last_error);
    assert!(!has(&wb, Kind::Service, "shop/huge"));
    assert!(
        sb.get(&keys::cache(Kind::Service, "alpha", "shop/huge"))
            .await
            .unwrap()
            .is_none(),
        "never written"
    );

    // The rest keeps flowing: a later record arrives, the session never broke.
    sa.apply(&[put(
        Kind::Endpoint,
        "alpha",
        "10.1.0.6",
        endpoint("alpha", "10.1.0.6", id_a),
    )])
    .await
    .unwrap();
    wb.until(T, "a record written after the refusal", |m| {
        m.records
            .contains_key(&(Kind::Endpoint, "alpha".into(), "10.1.0.6".into()))
    })
    .await
    .unwrap();
    let st = peer_status(&b, "alpha").await.expect("status");
    assert!(st.connected);
    assert_eq!(st.failures, 0, "no write failed, no session was cut");
    assert_eq!(st.rejected_records, 1, "refused once, not retried");
}
