//! No synced marker is ever written for a kind whose source has not synced
//! or has failed (DESIGN §12, the lesson of cilium#47793): the exporter of a
//! real apiserver library (real etcd, leader lease, store feed) fed by
//! - the kubernetes source's mapper, driven with watcher events (there is no
//!   kube-apiserver here): one kind's list never completes and its watch
//!   fails;
//! - the manifests source on a directory that cannot be read (a file where
//!   the directory should be; root reads any mode, so permissions would not
//!   do).
//!
//! "Nothing written" is checked after a barrier the exporter must have
//! passed: an update sent after the ones under test, seen handled (the
//! exporter handles updates in order and finishes a reconcile before it
//! takes the next ones). Then the source completes and the markers appear.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clustermesh_apiserver::export::Exporter;
use clustermesh_apiserver::leader;
use clustermesh_apiserver::metrics::Metrics;
use clustermesh_apiserver::server::Runtime;
use clustermesh_apiserver::source::kubernetes::KubeEventMapper;
use clustermesh_apiserver::source::manifests::ManifestsSource;
use clustermesh_apiserver::source::{Source, SourceError, SourceUpdate};
use clustermesh_apiserver::store::{EtcdOptions, Store};
use clustermesh_apiserver::view::{View, ViewConfig, feed};
use clustermesh_integration::eventually;
use clustermesh_localmesh::etcd::EtcdCluster;
use clustermesh_proto::v1::{ClusterInfo, Kind, SyncedMarker};
use clustermesh_proto::{RECORD_KINDS, keys};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::watcher::Event;
use prost::Message;
use tokio::sync::{mpsc, watch};

const T: Duration = Duration::from_secs(20);

struct Exporting {
    _etcd: EtcdCluster,
    store: Store,
    runtime: Arc<Runtime>,
    tx: mpsc::Sender<SourceUpdate>,
    _stop: watch::Sender<bool>,
}

impl Exporting {
    async fn start() -> Exporting {
        let etcd = EtcdCluster::start(1).await.expect("etcd");
        let store = Store::connect(&EtcdOptions {
            endpoints: etcd.endpoints(),
            ..Default::default()
        })
        .await
        .expect("store");
        let info = ClusterInfo {
            name: "alpha".into(),
            id: 1,
            max_connected_clusters: 255,
            capabilities: vec![],
        };
        let view = View::new("alpha", ViewConfig::default());
        let runtime = Arc::new(Runtime::default());
        let metrics = Metrics::new(view.clone(), runtime.clone(), Instant::now());
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(feed::run(
            store.clone(),
            view.clone(),
            info.clone(),
            metrics,
            stop_rx.clone(),
        ));
        let token = leader::token("r1");
        let (lead_tx, lead_rx) = watch::channel(false);
        tokio::spawn(leader::run(
            store.clone(),
            token.clone(),
            Duration::from_secs(5),
            lead_tx,
            stop_rx.clone(),
        ));
        let (tx, rx) = mpsc::channel(1024);
        let (_live_tx, live_rx) = tokio::sync::watch::channel(std::collections::BTreeSet::new());
        let exporter = Exporter::new(
            store.clone(),
            view.clone(),
            info,
            Duration::from_secs(60),
            runtime.clone(),
            // No node agents here: no gateway is live.
            live_rx,
        );
        let mut leading = lead_rx.clone();
        tokio::spawn(exporter.run(rx, lead_rx, token, stop_rx));
        tokio::time::timeout(T, leading.wait_for(|l| *l))
            .await
            .expect("leader within T")
            .expect("leader");
        eventually("view loaded", T, || async { view.ready().then_some(()) })
            .await
            .expect("view");
        Exporting {
            _etcd: etcd,
            store,
            runtime,
            tx,
            _stop: stop,
        }
    }

    async fn send(&self, updates: Vec<SourceUpdate>) {
        for u in updates {
            self.tx.send(u).await.expect("exporter runs");
        }
    }

    fn source_errors(&self) -> Vec<String> {
        self.runtime
            .source_errors
            .lock()
            .map(|e| {
                e.iter()
                    .map(|e| format!("{}: {}", e.file, e.message))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until the exporter has handled everything sent before.
    async fn barrier(&self, tag: &str) {
        let e = SourceError {
            file: tag.into(),
            line: 0,
            message: "barrier".into(),
        };
        self.send(vec![SourceUpdate::Errors(vec![e])]).await;
        let want = format!("{tag}: barrier");
        eventually(&format!("barrier {tag}"), T, || async {
            (self.source_errors() == [want.clone()]).then_some(())
        })
        .await
        .expect("barrier");
    }

    async fn keys(&self, prefix: &str) -> Vec<String> {
        let (_, kvs) = self.store.list(prefix).await.expect("list");
        kvs.into_iter().map(|kv| kv.key).collect()
    }

    async fn markers(&self) -> Vec<String> {
        self.keys(&keys::synced_prefix("alpha")).await
    }

    async fn wait_markers(&self) -> Vec<SyncedMarker> {
        eventually("every kind's marker", T, || async {
            let (_, kvs) = self.store.list(&keys::synced_prefix("alpha")).await.ok()?;
            (kvs.len() == RECORD_KINDS.len()).then(|| {
                kvs.iter()
                    .filter_map(|kv| SyncedMarker::decode(kv.value.clone()).ok())
                    .collect()
            })
        })
        .await
        .expect("markers")
    }
}

fn yaml<K: serde::de::DeserializeOwned>(text: &str) -> K {
    serde_yaml::from_str(text).expect("test YAML")
}

/// A kind listed completely: Init, the objects, InitDone.
fn listed<K: clustermesh_apiserver::source::kubernetes::WatchedKind>(
    objs: Vec<K>,
) -> Vec<SourceUpdate> {
    let mut m = KubeEventMapper::<K>::new();
    let mut out = m.map(Event::Init);
    for o in objs {
        out.extend(m.map(Event::InitApply(o)));
    }
    out.extend(m.map(Event::InitDone));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_source_no_marker_until_every_kind_listed() {
    let x = Exporting::start().await;
    let ns: core::Namespace = yaml("metadata: {name: shop}");
    let node: core::Node = yaml(
        "metadata: {name: n1}\nspec: {podCIDR: 10.1.0.0/24}\nstatus: {addresses: [{type: InternalIP, address: 192.168.1.1}]}",
    );
    let pod: core::Pod = yaml(
        "metadata: {name: web-1, namespace: shop, labels: {app: web}}\nspec: {nodeName: n1, containers: [{name: c, image: i}]}\nstatus: {phase: Running, podIP: 10.1.0.5, podIPs: [{ip: 10.1.0.5}]}",
    );
    let mut updates = listed(vec![ns]);
    updates.extend(listed(vec![node]));
    updates.extend(listed::<core::Service>(vec![]));
    updates.extend(listed::<EndpointSlice>(vec![]));
    updates.extend(listed::<NetworkPolicy>(vec![]));
    // Pods: the list starts, delivers one pod, and the watch fails before
    // it completes (what the source's run loop reports for a failed watch).
    let mut pods = KubeEventMapper::<core::Pod>::new();
    updates.extend(pods.map(Event::Init));
    updates.extend(pods.map(Event::InitApply(pod)));
    assert!(
        !updates.contains(&SourceUpdate::Synced(
            clustermesh_apiserver::source::ObjectKind::Pod
        )),
        "the mapper says nothing of pods synced before InitDone"
    );
    updates.push(SourceUpdate::Errors(vec![SourceError {
        file: "kubernetes/pods".into(),
        line: 0,
        message: "watch failed: connection refused".into(),
    }]));
    x.send(updates).await;
    x.barrier("after-failed-pods").await;
    assert_eq!(
        x.markers().await,
        Vec::<String>::new(),
        "no marker while pods are not synced"
    );
    assert_eq!(
        x.keys(&format!("{}state/", keys::PREFIX)).await,
        Vec::<String>::new(),
        "nothing exported from a half-listed source"
    );

    // The watch recovers and the list completes: markers for every kind.
    x.send(pods.map(Event::InitDone)).await;
    let markers = x.wait_markers().await;
    let endpoints = markers
        .iter()
        .find(|m| m.kind == Kind::Endpoint as i32)
        .expect("endpoint marker");
    assert_eq!(endpoints.records, 1, "written after the pod: {markers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_dir_that_cannot_be_read_writes_no_marker() {
    let x = Exporting::start().await;
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("manifests");
    std::fs::write(&dir, "a file, not a directory").expect("file");
    let src = ManifestsSource::new(&dir).with_interval(Duration::from_millis(50));
    let _task = Box::new(src).run(x.tx.clone());
    // The source reports that it cannot list the directory...
    eventually("the listing error is reported", T, || async {
        x.source_errors()
            .iter()
            .any(|e| e.contains("listing"))
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}", x.source_errors()));
    // ...and after the exporter handled that, nothing was written.
    x.barrier("after-listing-error").await;
    assert_eq!(x.markers().await, Vec::<String>::new());
    assert_eq!(
        x.keys(&format!("{}state/", keys::PREFIX)).await,
        Vec::<String>::new()
    );

    // The directory becomes readable: the source syncs, markers follow.
    std::fs::remove_file(&dir).expect("rm");
    std::fs::create_dir(&dir).expect("mkdir");
    clustermesh_integration::manifests::write(
        &dir,
        "ns.yaml",
        &clustermesh_integration::manifests::namespace("shop", &[]),
    )
    .expect("manifest");
    let markers = x.wait_markers().await;
    assert_eq!(markers.len(), RECORD_KINDS.len());
}
