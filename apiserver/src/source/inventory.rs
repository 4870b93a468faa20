//! The current Kubernetes objects of one cluster, as delivered by a source,
//! and their conversion into the records the store should hold.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::SourceUpdate;
use super::convert::{
    Desired, NamespaceInfo, PendingEndpoint, labels_digest, nodes, ns_key, pods, policies, services,
};
use super::objects::{K8sObject, ObjectKind, ObjectRef};

type Key = (String, String);

/// Current objects of each kind, keyed by (namespace, name); namespace is
/// empty for cluster-scoped kinds.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    namespaces: BTreeMap<Key, core::Namespace>,
    nodes: BTreeMap<Key, core::Node>,
    pods: BTreeMap<Key, core::Pod>,
    services: BTreeMap<Key, core::Service>,
    endpoint_slices: BTreeMap<Key, EndpointSlice>,
    network_policies: BTreeMap<Key, NetworkPolicy>,
}

fn put<T: PartialEq>(map: &mut BTreeMap<Key, T>, key: Key, obj: T) -> bool {
    match map.get(&key) {
        Some(old) if *old == obj => false,
        _ => {
            map.insert(key, obj);
            true
        }
    }
}

impl Inventory {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces an object. A namespaced object without a namespace
    /// lands in `default`; `managedFields` are dropped (never read, large).
    /// Returns whether the inventory changed.
    pub fn apply(&mut self, mut obj: K8sObject) -> bool {
        let kind = obj.kind();
        let meta = obj.metadata_mut();
        meta.managed_fields = None;
        if kind.is_namespaced() {
            if meta.namespace.as_deref().is_none_or(str::is_empty) {
                meta.namespace = Some("default".to_string());
            }
        } else {
            meta.namespace = None;
        }
        let r = obj.object_ref();
        let key = (r.namespace, r.name);
        match obj {
            K8sObject::Namespace(o) => put(&mut self.namespaces, key, o),
            K8sObject::Node(o) => put(&mut self.nodes, key, o),
            K8sObject::Pod(o) => put(&mut self.pods, key, o),
            K8sObject::Service(o) => put(&mut self.services, key, o),
            K8sObject::EndpointSlice(o) => put(&mut self.endpoint_slices, key, o),
            K8sObject::NetworkPolicy(o) => put(&mut self.network_policies, key, o),
        }
    }

    /// Removes an object; returns whether it was there.
    pub fn delete(&mut self, r: &ObjectRef) -> bool {
        let key = (r.namespace.clone(), r.name.clone());
        match r.kind {
            ObjectKind::Namespace => self.namespaces.remove(&key).is_some(),
            ObjectKind::Node => self.nodes.remove(&key).is_some(),
            ObjectKind::Pod => self.pods.remove(&key).is_some(),
            ObjectKind::Service => self.services.remove(&key).is_some(),
            ObjectKind::EndpointSlice => self.endpoint_slices.remove(&key).is_some(),
            ObjectKind::NetworkPolicy => self.network_policies.remove(&key).is_some(),
        }
    }

    /// Applies an `Apply` or `Delete` update (others are not about objects
    /// and are ignored); returns whether the inventory changed.
    pub fn handle(&mut self, update: SourceUpdate) -> bool {
        match update {
            SourceUpdate::Apply(obj) => self.apply(obj),
            SourceUpdate::Delete(r) => self.delete(&r),
            SourceUpdate::Synced(_) | SourceUpdate::Errors(_) => false,
        }
    }

    /// The stored object, if any.
    pub fn get(&self, r: &ObjectRef) -> Option<K8sObject> {
        let key = (r.namespace.clone(), r.name.clone());
        match r.kind {
            ObjectKind::Namespace => self.namespaces.get(&key).cloned().map(K8sObject::from),
            ObjectKind::Node => self.nodes.get(&key).cloned().map(K8sObject::from),
            ObjectKind::Pod => self.pods.get(&key).cloned().map(K8sObject::from),
            ObjectKind::Service => self.services.get(&key).cloned().map(K8sObject::from),
            ObjectKind::EndpointSlice => {
                self.endpoint_slices.get(&key).cloned().map(K8sObject::from)
            }
            ObjectKind::NetworkPolicy => self
                .network_policies
                .get(&key)
                .cloned()
                .map(K8sObject::from),
        }
    }

    pub fn contains(&self, r: &ObjectRef) -> bool {
        self.get(r).is_some()
    }

    /// Number of stored objects of one kind.
    pub fn count(&self, kind: ObjectKind) -> usize {
        match kind {
            ObjectKind::Namespace => self.namespaces.len(),
            ObjectKind::Node => self.nodes.len(),
            ObjectKind::Pod => self.pods.len(),
            ObjectKind::Service => self.services.len(),
            ObjectKind::EndpointSlice => self.endpoint_slices.len(),
            ObjectKind::NetworkPolicy => self.network_policies.len(),
        }
    }

    /// Total number of stored objects.
    pub fn len(&self) -> usize {
        ObjectKind::ALL.into_iter().map(|k| self.count(k)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What an object's namespace contributes (unseen namespaces are
    /// exported and unlabelled until they arrive).
    pub fn namespace_info(&self, namespace: &str) -> NamespaceInfo {
        self.namespaces
            .get(&(String::new(), namespace.to_string()))
            .map(NamespaceInfo::from_namespace)
            .unwrap_or_else(NamespaceInfo::unseen)
    }

    /// Every record these objects turn into, for cluster `cluster`.
    pub fn compute(&self, cluster: &str) -> Desired {
        let mut d = Desired::default();
        let ns_infos: BTreeMap<&str, NamespaceInfo> = self
            .namespaces
            .iter()
            .map(|((_, name), ns)| (name.as_str(), NamespaceInfo::from_namespace(ns)))
            .collect();
        let unseen = NamespaceInfo::unseen();
        let info = |ns: &str| ns_infos.get(ns).unwrap_or(&unseen);

        for n in self.nodes.values() {
            let rec = nodes::node_record(n, cluster);
            d.nodes.insert(rec.name.clone(), rec);
        }

        self.compute_pods(cluster, &info, &mut d);

        let mut slices_by_service: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
        for ((ns, _), s) in &self.endpoint_slices {
            if let Some(svc) = s
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(services::SERVICE_NAME_LABEL))
            {
                slices_by_service
                    .entry((ns.as_str(), svc.as_str()))
                    .or_default()
                    .push(s);
            }
        }
        for ((ns, name), svc) in &self.services {
            let slices = slices_by_service
                .get(&(ns.as_str(), name.as_str()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let rec = services::service_record(svc, slices, info(ns), cluster, &mut d.warnings);
            d.services.insert(ns_key(ns, name), rec);
        }

        for ((ns, name), np) in &self.network_policies {
            d.policies.insert(
                ns_key(ns, name),
                policies::policy_record(np, info(ns), cluster),
            );
        }
        d.warnings.sort();
        d
    }

    fn compute_pods<'a>(
        &'a self,
        cluster: &str,
        info: &dyn Fn(&str) -> &'a NamespaceInfo,
        d: &mut Desired,
    ) {
        // Which pod holds which IP; a pod being deleted yields its IP to a
        // live one, otherwise the first pod (namespace/name order) keeps it.
        let mut owner: BTreeMap<String, (bool, String)> = BTreeMap::new();
        for ((ns, name), pod) in &self.pods {
            let ns_info = info(ns);
            let eps = pods::pod_endpoints(pod, ns_info, cluster);
            if eps.is_empty() {
                continue;
            }
            let labels = pods::pod_identity_labels(pod, ns_info, cluster);
            let digest = labels_digest(&labels);
            let terminating = pod.metadata.deletion_timestamp.is_some();
            let mut used = false;
            for ep in eps {
                let me = ns_key(ns, name);
                if let Some((other_terminating, other)) = owner.get(&ep.ip) {
                    if terminating || !*other_terminating {
                        d.warnings.push(format!(
                            "Pod {me}: IP {} already used by pod {other}; ignored",
                            ep.ip
                        ));
                        continue;
                    }
                    d.warnings
                        .push(format!("Pod {other}: IP {} taken over by pod {me}", ep.ip));
                }
                owner.insert(ep.ip.clone(), (terminating, me));
                used = true;
                d.endpoints.insert(
                    ep.ip.clone(),
                    PendingEndpoint {
                        endpoint: ep,
                        labels_digest: digest.clone(),
                    },
                );
            }
            if used {
                let entry = d
                    .identities
                    .entry(digest)
                    .or_insert_with(|| (labels, false));
                entry.1 |= ns_info.exported;
            }
        }
        // An identity whose only pods lost their IPs to others is dropped.
        let live: std::collections::BTreeSet<&String> =
            d.endpoints.values().map(|p| &p.labels_digest).collect();
        d.identities.retain(|k, _| live.contains(k));
    }
}
