//! Per-peer quotas (DESIGN §10, docs/mesh.md "Per-peer quotas") against a
//! real apiserver and mock peers over the real mTLS Watch: a peer over its
//! endpoint quota is refused beyond it (never more than the quota in the
//! store or the merged Watch), shown over quota in Status and counted as
//! `quota_exceeded` in status and metrics; updates of the endpoints it holds
//! keep arriving; when it deletes some, a fresh snapshot fills the room; and
//! another peer's records and churn keep flowing all along.

use std::collections::BTreeSet;

use crate::mesh_support::*;
use clustermesh_integration::eventually;
use clustermesh_integration::http::http_get;
use clustermesh_integration::mock_peers::{Churn, MockPeers, Shape};
use clustermesh_integration::watcher::Watcher;
use clustermesh_proto::v1::{Endpoint, Kind, PeerQuota};
use prost::Message;

/// The endpoint keys of `cluster` in the merged Watch.
fn endpoints(w: &Watcher, cluster: &str) -> BTreeSet<String> {
    w.mirror
        .records
        .keys()
        .filter(|(k, c, _)| *k == Kind::Endpoint && c == cluster)
        .map(|(_, _, key)| key.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_over_its_quota_is_refused_beyond_it_shown_and_others_flow() {
    let local = start("local", 1, "0s").await;
    let ca = ca_pem(&local);
    let shape = Shape {
        nodes: 2,
        endpoints: 20,
        identities: 2,
    };
    // The greedy peer changes only when the test says so; the other churns.
    let greedy = MockPeers::start(10, 1, shape, Churn::default(), &ca)
        .await
        .expect("greedy mock peer");
    let churn = Churn {
        endpoints: 20.0,
        ..Churn::default()
    };
    let other = MockPeers::start(20, 1, shape, churn, &ca)
        .await
        .expect("other mock peer");
    let (g, o) = (&greedy.peers[0], &other.peers[0]);
    let mut w = merged_watcher(&local).await;
    let mut cfg = g.peer_config();
    cfg.quota = Some(PeerQuota {
        endpoints: 15,
        ..Default::default()
    });
    local.register_peer(cfg).await.expect("register greedy");
    local
        .register_peer(o.peer_config())
        .await
        .expect("register other");

    // 15 of the greedy peer's 20 endpoints, all of the other's.
    w.until(T, "15 greedy endpoints and all 20 of the other", |m| {
        let n = |c: &str| {
            m.records
                .keys()
                .filter(|(k, cl, _)| *k == Kind::Endpoint && cl == c)
                .count()
        };
        n(&g.name) == 15 && n(&o.name) == 20 && m.synced.contains(&(g.name.clone(), Kind::Endpoint))
    })
    .await
    .expect("initial sync");
    let st = wait_status(&local, &g.name, "greedy shown over quota", T, |s| {
        s.over_quota.get("endpoints").copied().unwrap_or(0) >= 5
    })
    .await;
    assert!(
        st.rejected_by_reason.get("quota_exceeded").copied() >= Some(5),
        "{st:?}"
    );
    assert_eq!(st.quota.as_ref().map(|q| q.endpoints), Some(15), "{st:?}");
    assert_eq!(
        st.quota.as_ref().map(|q| q.nodes),
        Some(clustermesh_proto::quota::DEFAULT.nodes),
        "unset fields take the apiserver's default: {st:?}"
    );
    assert!(st.held_bytes > 0 && st.connected, "{st:?}");
    assert!(st.last_error.contains("quota_exceeded"), "{st:?}");
    let os = peer_status(&local, &o.name).await.expect("other's status");
    assert!(
        os.over_quota.is_empty() && os.rejected_records == 0,
        "{os:?}"
    );

    // The refusals are in the metrics under their reason.
    let want = format!(
        "clustermesh_apiserver_rejected_records_total{{source_cluster=\"{}\",reason=\"quota_exceeded\"}}",
        g.name
    );
    let line = eventually("quota refusals in /metrics", T, || async {
        let (code, body) = http_get(&local.api().health, "/metrics").await.ok()?;
        (code == 200).then_some(())?;
        body.lines()
            .find(|l| l.starts_with(&want))
            .map(|l| l.to_owned())
    })
    .await
    .expect("metric");
    let n: f64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a value");
    assert!(n >= 5.0, "{line}");

    // An update of a held endpoint arrives; a brand-new endpoint is refused.
    let held = endpoints(&w, &g.name);
    let refused: Vec<u32> = (0..20)
        .filter(|e| !held.contains(&g.endpoint(*e, false).ip))
        .collect();
    assert_eq!(refused.len(), 5);
    let first = (0..20u32)
        .find(|e| held.contains(&g.endpoint(*e, false).ip))
        .expect("a held endpoint");
    let updated = g.endpoint(first, true);
    g.set_endpoint(&updated.ip, Some(&updated));
    let fresh = g.endpoint(20, false);
    g.set_endpoint(&fresh.ip, Some(&fresh));
    w.until(T, "the update of a held endpoint", |m| {
        m.records
            .get(&(Kind::Endpoint, g.name.clone(), updated.ip.clone()))
            .is_some_and(|v| {
                Endpoint::decode(v.as_ref()).is_ok_and(|e| e.identity == updated.identity)
            })
    })
    .await
    .expect("update passes");
    let before = st.rejected_by_reason["quota_exceeded"];
    wait_status(&local, &g.name, "the new endpoint refused", T, |s| {
        s.rejected_by_reason
            .get("quota_exceeded")
            .copied()
            .unwrap_or(0)
            > before
    })
    .await;
    assert_eq!(endpoints(&w, &g.name).len(), 15);
    assert!(!endpoints(&w, &g.name).contains(&fresh.ip));

    // The other peer was never held up: its churn keeps arriving.
    let flipped = o.identity(1);
    w.until(T, "the other peer's churn", |m| {
        m.records.iter().any(|((k, c, _), v)| {
            *k == Kind::Endpoint
                && c == &o.name
                && Endpoint::decode(v.as_ref()).is_ok_and(|e| e.identity == flipped)
        })
    })
    .await
    .expect("other peer's churn");

    // The greedy peer deletes three held endpoints: room, a fresh snapshot,
    // and three of the refused ones take their place (still over quota:
    // 21 - 3 = 18 offered).
    let gone: Vec<String> = held.iter().take(3).cloned().collect();
    for ip in &gone {
        g.set_endpoint(ip, None);
    }
    w.until(T, "the room refilled from the refused endpoints", |m| {
        let have: BTreeSet<&String> = m
            .records
            .keys()
            .filter(|(k, c, _)| *k == Kind::Endpoint && c == &g.name)
            .map(|(_, _, key)| key)
            .collect();
        have.len() == 15 && gone.iter().all(|ip| !have.contains(ip))
    })
    .await
    .expect("refill");
    let s = wait_status(&local, &g.name, "still over quota, 3 refused", T, |s| {
        s.over_quota.get("endpoints") == Some(&3)
    })
    .await;
    assert!(s.connected, "{s:?}");
    assert_eq!(endpoints(&w, &o.name).len(), 20);
}
