//! A peer's global policies reach this cluster only after
//! `connect --import-policies` (DESIGN §10, docs/policy.md): without it they
//! are neither mirrored nor in the merged Watch (the agents never see them),
//! status shows `import_policies=false`, and the rest of the peer's records
//! flow as usual; registering the peer again with the flag brings them in;
//! registering it without the flag once more takes them out again.

use crate::mesh_support::*;
use clustermesh_proto::v1::{Kind, NetworkPolicySpec, Policy};
use prost::Message;

fn global_policy() -> bytes::Bytes {
    Policy {
        namespace: "shop".into(),
        name: "allow-web".into(),
        spec: Some(NetworkPolicySpec {
            policy_types: vec!["Ingress".into()],
            ..Default::default()
        }),
        global: true,
        cluster: "alpha".into(),
        exported: true,
    }
    .encode_to_vec()
    .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_policies_arrive_only_when_imported() {
    let a = start("alpha", 1, "30s").await;
    let b = start("beta", 2, "30s").await;
    let sa = store(&a).await;
    let id_a = ident_no(1, 0);
    let mut ops = alpha_web(id_a);
    ops.push(put(
        Kind::Policy,
        "alpha",
        "shop/allow-web",
        global_policy(),
    ));
    ops.extend(markers("alpha"));
    sa.apply(&ops).await.expect("alpha's records");

    let pol = (
        Kind::Policy,
        "alpha".to_string(),
        "shop/allow-web".to_string(),
    );
    let ep = (Kind::Endpoint, "alpha".to_string(), "10.1.0.5".to_string());
    let mut w = merged_watcher(&b).await;
    // Alpha trusts beta (its Watch), beta mirrors alpha.
    register(&a, peer_config(&b)).await.expect("register beta");
    let mut plain = peer_config(&a);
    plain.import_policies = false;
    register(&b, plain.clone()).await.expect("register alpha");
    w.until(T, "alpha's endpoint and its markers", |m| {
        m.records.contains_key(&ep) && m.synced.contains(&("alpha".into(), Kind::Service))
    })
    .await
    .expect("sync without policies");
    assert!(
        !w.mirror.records.contains_key(&pol),
        "not imported: no policy"
    );
    assert!(!w.mirror.synced.contains(&("alpha".into(), Kind::Policy)));
    let s = wait_status(
        &b,
        "alpha",
        "alpha connected, policies not imported",
        T,
        |s| s.connected && !s.import_policies,
    )
    .await;
    assert!(
        s.counts.iter().all(|c| c.kind != Kind::Policy as i32),
        "{s:?}"
    );

    // connect --import-policies: the registration changes, the policy arrives.
    let mut cfg = peer_config(&a);
    cfg.import_policies = true;
    register(&b, cfg)
        .await
        .expect("register alpha importing policies");
    w.until(T, "alpha's policy, imported", |m| {
        m.records.contains_key(&pol) && m.synced.contains(&("alpha".into(), Kind::Policy))
    })
    .await
    .expect("imported");
    wait_status(&b, "alpha", "status shows import_policies", T, |s| {
        s.import_policies
    })
    .await;

    // Registered again without it: the mirrored policy goes, the rest stays.
    register(&b, plain).await.expect("register alpha again");
    w.until(T, "alpha's policy withdrawn", |m| {
        !m.records.contains_key(&pol) && !m.synced.contains(&("alpha".into(), Kind::Policy))
    })
    .await
    .expect("no longer imported");
    assert!(w.mirror.records.contains_key(&ep));
}
