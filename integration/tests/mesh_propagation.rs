//! The end-to-end propagation figure and attested sync (DESIGN §12), with
//! real apiservers, etcd and mTLS, `/metrics` parsed by Python's
//! `prometheus_client`:
//! - a pod (endpoint) added in beta moves alpha's
//!   `propagation_delay_seconds{source_cluster="beta"}`, while beta's
//!   markers, attested by a real apiserver, match what alpha mirrored;
//! - a synthetic peer whose markers do not attest what it sent is reported
//!   out of sync (status `sync_mismatch`, metric `sync_mismatch`), not
//!   ready, and no marker of it is written; a peer that sends markers
//!   without a digest (an older version) is accepted as before.

use crate::mesh_support::*;
use crate::metrics_support::*;
use clustermesh_integration::eventually;
use clustermesh_integration::mock_peers::{Churn, Markers, MockPeers, Shape};
use clustermesh_proto::v1::{Kind, RecordHeader};
use clustermesh_proto::{RECORD_KINDS, keys, stamp};

const HIST: &str = "propagation_delay_seconds";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_added_in_beta_moves_alphas_propagation_histogram_for_beta() {
    let alpha = start("alpha", 1, "60s").await;
    let beta = start("beta", 2, "60s").await;
    let id = ident_no(2, 0);
    let mut seed = vec![
        put(
            Kind::Node,
            "beta",
            "gw",
            node("beta", "gw", "192.168.2.1", true),
        ),
        put(
            Kind::Identity,
            "beta",
            &id.to_string(),
            identity("beta", id, "web"),
        ),
        put(
            Kind::Endpoint,
            "beta",
            "10.2.0.5",
            endpoint("beta", "10.2.0.5", id),
        ),
    ];
    seed.extend(markers("beta"));
    let beta_store = store(&beta).await;
    beta_store.apply(&seed).await.expect("seed beta");
    connect(&alpha, &beta).await;

    // Beta's markers carry the count and digest a real apiserver computes;
    // alpha's mirror agrees: synced, ready, no mismatch.
    let st = wait_status(&alpha, "beta", "beta synced on alpha", T, |p| {
        p.connected && crate::mesh_support::all_synced(p)
    })
    .await;
    assert!(st.sync_mismatch.is_empty(), "{:?}", st.sync_mismatch);
    let m = scrape(&alpha).await;
    assert_eq!(readiness(&m, "beta"), Some(1.0));
    for k in RECORD_KINDS {
        assert_eq!(
            value(
                &m,
                "sync_mismatch",
                "sync_mismatch",
                &[("source_cluster", "beta"), ("kind", k.segment())]
            ),
            Some(0.0),
            "{k:?}"
        );
    }
    // The snapshot's records carry no stamp: they are not changes.
    let before = histogram_count(&m, HIST, &[("source_cluster", "beta")]);

    // A pod is added in beta.
    let added_at = stamp::now_micros();
    beta_store
        .apply(&[put(
            Kind::Endpoint,
            "beta",
            "10.2.0.6",
            endpoint("beta", "10.2.0.6", id),
        )])
        .await
        .expect("add pod in beta");
    let m = eventually(
        "alpha's propagation histogram for beta moves",
        T,
        || async {
            let m = scrape(&alpha).await;
            (histogram_count(&m, HIST, &[("source_cluster", "beta")]) > before).then_some(m)
        },
    )
    .await
    .expect("histogram moved");
    assert_eq!(
        histogram_count(&m, HIST, &[("source_cluster", "beta")]),
        before + 1.0
    );
    let sum = value(
        &m,
        HIST,
        &format!("{HIST}_sum"),
        &[("source_cluster", "beta")],
    )
    .expect("sum");
    let served_at = stamp::now_micros();
    let bound = (served_at - added_at) as f64 / 1e6;
    assert!(
        sum > 0.0 && sum <= bound,
        "the delay observed ({sum} s) lies within the write and the scrape ({bound} s)"
    );
    assert_eq!(
        value(
            &m,
            "propagation_clock_skew",
            "propagation_clock_skew_total",
            &[("source_cluster", "beta")]
        ),
        None,
        "one machine, one clock: no skew"
    );

    // Alpha's cache holds beta's bytes plus the origin stamp (field 13),
    // taken when beta observed the change.
    let alpha_store = store(&alpha).await;
    let kv = alpha_store
        .get(&keys::cache(Kind::Endpoint, "beta", "10.2.0.6"))
        .await
        .expect("get")
        .expect("mirrored");
    let (bare, at) = stamp::split(&kv.value);
    assert_eq!(bare, endpoint("beta", "10.2.0.6", id));
    let at = at.expect("stamped");
    assert!(
        at >= added_at && at <= served_at,
        "{added_at} <= {at} <= {served_at}"
    );
    assert_eq!(
        RecordHeader::peek(&kv.value)
            .expect("header")
            .origin_unix_micros,
        Some(at)
    );
    // Records of the snapshot carry none.
    let kv = alpha_store
        .get(&keys::cache(Kind::Endpoint, "beta", "10.2.0.5"))
        .await
        .expect("get")
        .expect("mirrored");
    assert_eq!(stamp::split(&kv.value).1, None);
    // The marker still attests beta's content after the change.
    let st = peer_status(&alpha, "beta").await.expect("beta");
    assert!(st.sync_mismatch.is_empty(), "{:?}", st.sync_mismatch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marker_that_does_not_attest_the_mirror_keeps_the_peer_out_of_sync() {
    let local = start("alpha", 1, "60s").await;
    let shape = Shape {
        nodes: 2,
        endpoints: 4,
        identities: 2,
    };
    let mocks = MockPeers::start(10, 3, shape, Churn::default(), &ca_pem(&local))
        .await
        .expect("mock peers");
    let [legacy, honest, lying] = &mocks.peers[..] else {
        panic!("three mock peers");
    };
    honest.set_markers(Markers::Honest);
    lying.set_markers(Markers::Lying { extra: 1 });
    for p in &mocks.peers {
        register(&local, p.peer_config())
            .await
            .unwrap_or_else(|e| panic!("registering {}: {e}", p.name));
    }

    // An older peer (markers without digest) and an honest one: synced, ready.
    for p in [legacy, honest] {
        let st = wait_status(&local, &p.name, "synced", T, |s| {
            s.connected && crate::mesh_support::all_synced(s)
        })
        .await;
        assert!(
            st.sync_mismatch.is_empty(),
            "{}: {:?}",
            p.name,
            st.sync_mismatch
        );
    }

    // The lying peer claims one record more of every kind than it sent.
    let st = wait_status(&local, &lying.name, "mismatch reported", T, |s| {
        s.connected && s.sync_mismatch.len() == crate::mesh_support::imported_kinds(s)
    })
    .await;
    for m in &st.sync_mismatch {
        assert_eq!(m.marker_records, m.mirrored_records + 1, "{m:?}");
        assert_ne!(m.marker_digest, m.mirrored_digest, "{m:?}");
    }
    assert!(st.synced.is_empty(), "no kind is synced: {:?}", st.synced);
    // Its records are mirrored (the datapath may use them), its markers not.
    let s = store(&local).await;
    let cached = cached(&s, &lying.name).await;
    let records = (shape.nodes + shape.endpoints + shape.identities) as usize;
    assert_eq!(cached.len(), records, "records only, no marker: {cached:?}");
    assert!(
        cached
            .iter()
            .all(|k| !k.starts_with(&keys::synced_prefix(&lying.name)))
    );

    let m = scrape(&local).await;
    assert_eq!(
        readiness(&m, &lying.name),
        Some(0.0),
        "out of sync is not ready"
    );
    assert_eq!(readiness(&m, &legacy.name), Some(1.0));
    assert_eq!(readiness(&m, &honest.name), Some(1.0));
    // Every kind it is mirrored for (not policies: not imported by default).
    for k in RECORD_KINDS.iter().filter(|k| **k != Kind::Policy) {
        let mismatch = |peer: &str| {
            value(
                &m,
                "sync_mismatch",
                "sync_mismatch",
                &[("source_cluster", peer), ("kind", k.segment())],
            )
        };
        assert_eq!(mismatch(&lying.name), Some(1.0), "{k:?}");
        assert_eq!(mismatch(&honest.name), Some(0.0), "{k:?}");
        assert_eq!(mismatch(&legacy.name), Some(0.0), "{k:?}");
    }
    // The Status RPC's /status JSON says the same (what `clustermesh status` shows).
    let st = peer_status(&local, &lying.name).await.expect("lying peer");
    assert!(!st.sync_mismatch.is_empty());
}
