//! Service backends as their own records (docs/mesh.md "Service backends"):
//! one backend change of a big global service leaves the exporter as one
//! small record, crosses a real Watch as one small event, and arrives
//! whole at the peer's LookupService; a service record that still carries
//! its backends inline (written by an older version) keeps working.

use std::fmt::Write as _;
use std::time::Duration;

use clustermesh_certs::Role;
use clustermesh_integration::apiserver::Cluster;
use clustermesh_integration::manifests as m;
use clustermesh_integration::watcher::Watcher;
use clustermesh_proto::v1::{
    BatchType, EventType, Kind, LookupServiceRequest, LookupServiceResponse, Scope, ServiceBackend,
    cluster_mesh_client::ClusterMeshClient,
};
use clustermesh_proto::{RECORD_KINDS, backends};
use prost::Message;

use crate::mesh_support::{
    T, all_synced, connect, flags, markers, put, service, start, store, wait_status,
};

const BACKENDS: usize = 5_000;

fn ip(i: usize) -> String {
    format!("10.1.{}.{}", i / 250, i % 250 + 1)
}

/// A global service `shop/big` with `BACKENDS` backends in one EndpointSlice;
/// backend `not_ready` (if any) is not ready.
fn big_service(not_ready: Option<usize>) -> String {
    let mut s = m::service("shop", "big", "10.96.0.20", 80, 8080, true, &[]);
    s = s.replace("endpoints: []\n", "endpoints:\n");
    for i in 0..BACKENDS {
        let ready = Some(i) != not_ready;
        let _ = write!(
            s,
            "- addresses: [\"{}\"]\n  nodeName: gw\n  conditions:\n    ready: {ready}\n    serving: true\n",
            ip(i)
        );
    }
    s
}

async fn lookup(c: &Cluster) -> LookupServiceResponse {
    let ch = c.api().channel(Role::Agent).await.expect("agent channel");
    ClusterMeshClient::new(ch)
        .lookup_service(LookupServiceRequest {
            namespace: "shop".into(),
            name: "big".into(),
        })
        .await
        .expect("lookup")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_backend_change_of_a_big_service_is_one_small_event() {
    let dir = tempfile::tempdir().unwrap();
    m::write(
        dir.path(),
        "ns.yaml",
        &m::docs(&[m::namespace("shop", &[])]),
    )
    .unwrap();
    m::write(
        dir.path(),
        "nodes.yaml",
        &m::node("gw", "192.168.1.10", "10.1.0.0/16", true),
    )
    .unwrap();
    m::write(dir.path(), "big.yaml", &big_service(None)).unwrap();
    let mut args = flags("30s");
    args.extend([
        "--source".into(),
        format!("manifests:{}", dir.path().display()),
    ]);
    let a = Cluster::start("alpha", 1, 1, &args).await.expect("alpha");
    let b = start("beta", 2, "30s").await;

    // What a peer sees: alpha's exported records.
    let ch = a.api().channel(Role::Remote).await.expect("remote channel");
    let mut w = Watcher::open(ch, Scope::Exported, &[], None)
        .await
        .expect("watch");
    w.until(T, "alpha's service and every backend record, synced", |m| {
        let n = m
            .records
            .keys()
            .filter(|(k, _, _)| *k == Kind::ServiceBackend)
            .count();
        n == BACKENDS
            && RECORD_KINDS
                .iter()
                .all(|k| m.synced.contains(&("alpha".to_string(), *k)))
    })
    .await
    .unwrap();
    let svc = w
        .mirror
        .records
        .get(&(Kind::Service, "alpha".into(), "shop/big".into()))
        .expect("service record");
    let svc = clustermesh_proto::v1::Service::decode(svc.as_ref()).unwrap();
    assert!(
        svc.backends.is_empty(),
        "the service record carries no backends"
    );

    connect(&a, &b).await;
    wait_status(&b, "alpha", "alpha synced on beta", T, all_synced).await;
    // The status counts what the syncer wrote; the view serves it a moment later.
    let deadline = tokio::time::Instant::now() + T;
    let all_ready = loop {
        let l = lookup(&b).await;
        let n = l.clusters.first().map_or(0, |c| c.backends.len());
        if n == BACKENDS || tokio::time::Instant::now() > deadline {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(all_ready.clusters.len(), 1);
    assert_eq!(all_ready.clusters[0].backends.len(), BACKENDS);
    assert!(all_ready.clusters[0].backends.iter().all(|b| b.ready));

    // One backend's readiness changes: one event, one small record.
    m::write(dir.path(), "big.yaml", &big_service(Some(17))).unwrap();
    let batch = loop {
        let b = w.next(T).await.unwrap().expect("stream open");
        if b.r#type == BatchType::Events as i32 && !b.events.is_empty() {
            break b;
        }
    };
    assert_eq!(batch.events.len(), 1, "{batch:?}");
    let e = &batch.events[0];
    assert_eq!(
        (e.r#type, e.kind, e.key.as_str()),
        (
            EventType::Upsert as i32,
            Kind::ServiceBackend as i32,
            backends::key("shop", "big", &ip(17)).as_str()
        )
    );
    let rec = ServiceBackend::decode(e.value.as_ref()).unwrap();
    assert!(!rec.backend.expect("backend").ready);
    let wire = batch.encoded_len();
    println!(
        "one backend change: {wire} B WatchBatch ({} B record); the whole service with inline backends would be {} B",
        e.value.len(),
        backends::assemble(
            &svc,
            &all_ready.clusters[0]
                .backends
                .iter()
                .map(|b| clustermesh_proto::v1::Backend {
                    cluster: String::new(),
                    ..b.clone()
                })
                .collect::<Vec<_>>()
        )
        .encoded_len()
    );
    assert!(wire <= 200, "{wire} B on the wire for one backend change");

    // Beta's lookup is whole again, with that backend not ready.
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let l = lookup(&b).await;
        let ready = l.clusters[0].backends.iter().filter(|b| b.ready).count();
        if ready == BACKENDS - 1 {
            assert_eq!(l.clusters[0].backends.len(), BACKENDS);
            let b17 = l.clusters[0]
                .backends
                .iter()
                .find(|x| x.ip == ip(17))
                .expect("backend 17 still listed");
            assert!(!b17.ready && b17.serving);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "beta's lookup never showed backend 17 not ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A service record with inline backends (as an older version writes it)
/// next to one whose backends are records: LookupService and ListServices
/// show both whole, across a real peer link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_style_service_with_inline_backends_still_works() {
    let a = start("alpha", 1, "30s").await;
    let b = start("beta", 2, "30s").await;
    let (sa, sb) = (store(&a).await, store(&b).await);
    let gw = |cluster: &str, cidr: &str| {
        clustermesh_proto::v1::Node {
            name: "gw".into(),
            internal_ips: vec!["192.168.1.1".into()],
            pod_cidrs: vec![cidr.into()],
            gateway: true,
            cluster: cluster.into(),
            exported: true,
            ..Default::default()
        }
        .encode_to_vec()
        .into()
    };
    // alpha: the old way, backends inline.
    let mut ops = vec![
        put(Kind::Node, "alpha", "gw", gw("alpha", "10.1.0.0/24")),
        put(
            Kind::Service,
            "alpha",
            "shop/web",
            service("alpha", "shop", "web", &["10.1.0.5", "10.1.0.6"]),
        ),
    ];
    ops.extend(markers("alpha"));
    sa.apply(&ops).await.unwrap();
    // beta: the record without backends, one record per backend.
    let whole = clustermesh_proto::v1::Service::decode(
        service("beta", "shop", "web", &["10.2.0.7"]).as_ref(),
    )
    .unwrap();
    let mut ops = vec![
        put(Kind::Node, "beta", "gw", gw("beta", "10.2.0.0/24")),
        put(
            Kind::Service,
            "beta",
            "shop/web",
            backends::without_backends(&whole).encode_to_vec().into(),
        ),
    ];
    for be in &whole.backends {
        ops.push(put(
            Kind::ServiceBackend,
            "beta",
            &backends::key("shop", "web", &be.ip),
            backends::record(&whole, be).encode_to_vec().into(),
        ));
    }
    ops.extend(markers("beta"));
    sb.apply(&ops).await.unwrap();
    connect(&a, &b).await;
    wait_status(&a, "beta", "beta synced on alpha", T, all_synced).await;
    wait_status(&b, "alpha", "alpha synced on beta", T, all_synced).await;

    for c in [&a, &b] {
        let ch = c.api().channel(Role::Agent).await.expect("agent channel");
        let mut client = ClusterMeshClient::new(ch);
        let deadline = tokio::time::Instant::now() + T;
        let groups = loop {
            let l = client
                .lookup_service(LookupServiceRequest {
                    namespace: "shop".into(),
                    name: "web".into(),
                })
                .await
                .expect("lookup")
                .into_inner();
            let g: Vec<(String, Vec<String>)> = l
                .clusters
                .iter()
                .map(|c| {
                    (
                        c.cluster.clone(),
                        c.backends.iter().map(|b| b.ip.clone()).collect(),
                    )
                })
                .collect();
            if g.len() == 2 || tokio::time::Instant::now() > deadline {
                break g;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            groups,
            [
                (
                    "alpha".to_string(),
                    vec!["10.1.0.5".to_string(), "10.1.0.6".to_string()]
                ),
                ("beta".to_string(), vec!["10.2.0.7".to_string()]),
            ],
            "on {}",
            c.name
        );
        let list = client
            .list_services(clustermesh_proto::v1::ListServicesRequest { global_only: true })
            .await
            .expect("list")
            .into_inner();
        let web = list.services.iter().find(|s| s.name == "web").expect("web");
        assert_eq!((web.backends, web.ready_backends), (3, 3), "on {}", c.name);
    }
}
