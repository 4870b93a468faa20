//! The `kubernetes` source: one kube-rs watcher per kind, mapped to
//! [`SourceUpdate`]s by [`KubeEventMapper`] (pure, so tests drive it with
//! hand-built `watcher::Event`s).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::marker::PhantomData;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{K8sObject, ObjectKind, ObjectRef, Source, SourceError, SourceUpdate};

/// A Kubernetes type the source watches.
pub trait WatchedKind:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    const KIND: ObjectKind;
    fn into_object(self) -> K8sObject;
}

macro_rules! watched {
    ($t:ty, $kind:ident) => {
        impl WatchedKind for $t {
            const KIND: ObjectKind = ObjectKind::$kind;
            fn into_object(self) -> K8sObject {
                K8sObject::$kind(self)
            }
        }
    };
}
watched!(core::Namespace, Namespace);
watched!(core::Node, Node);
watched!(core::Pod, Pod);
watched!(core::Service, Service);
watched!(EndpointSlice, EndpointSlice);
watched!(NetworkPolicy, NetworkPolicy);

/// Turns one kind's watcher events into updates. Tracks which objects the
/// consumer holds so that a re-list (`Init` .. `InitDone`) that no longer
/// shows an object deletes it.
#[derive(Debug)]
pub struct KubeEventMapper<K> {
    /// Objects the consumer has been told about (and not told deleted).
    known: BTreeSet<ObjectRef>,
    /// Objects seen since the last `Init`, while a (re-)list is running.
    relisted: Option<BTreeSet<ObjectRef>>,
    _kind: PhantomData<fn(K)>,
}

impl<K: WatchedKind> Default for KubeEventMapper<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: WatchedKind> KubeEventMapper<K> {
    pub fn new() -> Self {
        KubeEventMapper {
            known: BTreeSet::new(),
            relisted: None,
            _kind: PhantomData,
        }
    }

    fn object(k: K) -> K8sObject {
        let mut obj = k.into_object();
        obj.metadata_mut().managed_fields = None;
        obj
    }

    fn applied(&mut self, k: K) -> Vec<SourceUpdate> {
        let obj = Self::object(k);
        let r = obj.object_ref();
        if let Some(seen) = self.relisted.as_mut() {
            seen.insert(r.clone());
        }
        self.known.insert(r);
        vec![SourceUpdate::Apply(obj)]
    }

    /// The updates one watcher event stands for:
    /// `Apply`/`InitApply` → `Apply`; `Delete` → `Delete`; `Init` starts a
    /// (re-)list; `InitDone` → `Delete` for each object the list did not show
    /// again, then `Synced(kind)`.
    pub fn map(&mut self, ev: watcher::Event<K>) -> Vec<SourceUpdate> {
        match ev {
            watcher::Event::Apply(k) | watcher::Event::InitApply(k) => self.applied(k),
            watcher::Event::Delete(k) => {
                let r = Self::object(k).object_ref();
                self.known.remove(&r);
                if let Some(seen) = self.relisted.as_mut() {
                    seen.remove(&r);
                }
                vec![SourceUpdate::Delete(r)]
            }
            watcher::Event::Init => {
                self.relisted = Some(BTreeSet::new());
                Vec::new()
            }
            watcher::Event::InitDone => {
                let seen = self.relisted.take().unwrap_or_else(|| self.known.clone());
                let gone = std::mem::replace(&mut self.known, seen);
                let mut out: Vec<SourceUpdate> = gone
                    .into_iter()
                    .filter(|r| !self.known.contains(r))
                    .map(SourceUpdate::Delete)
                    .collect();
                out.push(SourceUpdate::Synced(K::KIND));
                out
            }
        }
    }

    /// Number of objects the consumer currently holds for this kind.
    pub fn known(&self) -> usize {
        self.known.len()
    }
}

type KindItem = (ObjectKind, Result<Vec<SourceUpdate>, String>);

fn watch_kind<K: WatchedKind>(client: Client) -> BoxStream<'static, KindItem> {
    let api: Api<K> = Api::all(client);
    let mut mapper = KubeEventMapper::<K>::new();
    watcher(api, watcher::Config::default())
        .default_backoff()
        .map(move |r| {
            (
                K::KIND,
                r.map(|ev| mapper.map(ev)).map_err(|e| e.to_string()),
            )
        })
        .boxed()
}

/// Watches the Kubernetes API (in-cluster config or `KUBECONFIG`).
#[derive(Debug, Default)]
pub struct KubernetesSource {}

impl KubernetesSource {
    pub fn new() -> Self {
        KubernetesSource {}
    }
}

fn errors_of(errors: &BTreeMap<String, String>) -> SourceUpdate {
    SourceUpdate::Errors(
        errors
            .iter()
            .map(|(file, message)| SourceError {
                file: file.clone(),
                line: 0,
                message: message.clone(),
            })
            .collect(),
    )
}

async fn connect(tx: &mpsc::Sender<SourceUpdate>) -> Option<Client> {
    let mut backoff = clustermesh_proto::backoff::Backoff::new(
        Duration::from_millis(500),
        Duration::from_secs(30),
    );
    loop {
        match Client::try_default().await {
            Ok(c) => return Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "kubernetes source: no client yet; retrying");
                let errs = [("kubernetes".to_string(), format!("connecting: {e}"))].into();
                if tx.send(errors_of(&errs)).await.is_err() {
                    return None;
                }
                tokio::time::sleep(backoff.delay()).await;
            }
        }
    }
}

async fn run(tx: mpsc::Sender<SourceUpdate>) {
    let Some(client) = connect(&tx).await else {
        return;
    };
    let mut streams = futures::stream::select_all([
        watch_kind::<core::Namespace>(client.clone()),
        watch_kind::<core::Node>(client.clone()),
        watch_kind::<core::Pod>(client.clone()),
        watch_kind::<core::Service>(client.clone()),
        watch_kind::<EndpointSlice>(client.clone()),
        watch_kind::<NetworkPolicy>(client),
    ]);
    // Problems per resource; cleared by the next good event of that kind.
    let mut errors: BTreeMap<String, String> = BTreeMap::new();
    if tx.send(errors_of(&errors)).await.is_err() {
        return;
    }
    while let Some((kind, item)) = streams.next().await {
        let file = format!("kubernetes/{}", kind.resource());
        match item {
            Ok(updates) => {
                if errors.remove(&file).is_some() && tx.send(errors_of(&errors)).await.is_err() {
                    return;
                }
                for u in updates {
                    if tx.send(u).await.is_err() {
                        return;
                    }
                }
            }
            Err(msg) => {
                tracing::warn!(resource = kind.resource(), error = %msg, "kubernetes watch failed; retrying with backoff");
                if errors.get(&file) != Some(&msg) {
                    errors.insert(file, msg);
                    if tx.send(errors_of(&errors)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

impl Source for KubernetesSource {
    fn run(self: Box<Self>, tx: mpsc::Sender<SourceUpdate>) -> JoinHandle<()> {
        tokio::spawn(run(tx))
    }

    fn name(&self) -> String {
        "kubernetes".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};

    fn ns(name: &str) -> core::Namespace {
        core::Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                managed_fields: Some(vec![ManagedFieldsEntry::default()]),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn r(name: &str) -> ObjectRef {
        ObjectRef::new(ObjectKind::Namespace, "", name)
    }

    #[test]
    fn relist_deletes_only_objects_not_seen_again() {
        let mut m = KubeEventMapper::<core::Namespace>::new();
        assert!(m.map(watcher::Event::Init).is_empty());
        for n in ["a", "b", "c"] {
            let ups = m.map(watcher::Event::InitApply(ns(n)));
            let [SourceUpdate::Apply(obj)] = ups.as_slice() else {
                panic!("{ups:?}");
            };
            assert_eq!(obj.metadata().managed_fields, None, "managedFields dropped");
        }
        assert_eq!(
            m.map(watcher::Event::InitDone),
            vec![SourceUpdate::Synced(ObjectKind::Namespace)]
        );
        assert_eq!(
            m.map(watcher::Event::Delete(ns("c"))),
            vec![SourceUpdate::Delete(r("c"))]
        );
        // the watch restarts; during the list, "d" appears and "a" is deleted
        m.map(watcher::Event::Init);
        m.map(watcher::Event::InitApply(ns("d")));
        m.map(watcher::Event::Delete(ns("a")));
        // a second restart before the first list finished starts over
        m.map(watcher::Event::Init);
        m.map(watcher::Event::InitApply(ns("d")));
        assert_eq!(
            m.map(watcher::Event::InitDone),
            vec![
                SourceUpdate::Delete(r("b")),
                SourceUpdate::Synced(ObjectKind::Namespace)
            ]
        );
        assert_eq!(m.known(), 1);
        // InitDone without Init deletes nothing
        assert_eq!(
            m.map(watcher::Event::InitDone),
            vec![SourceUpdate::Synced(ObjectKind::Namespace)]
        );
    }
}
