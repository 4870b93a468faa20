//! The current Kubernetes objects of one cluster, as delivered by a source,
//! kept as what the conversion reads of each (not the objects), and their
//! conversion into the records the store should hold.
//!
//! Per object the inventory keeps a derived record ([`PodFacts`],
//! [`ServiceFacts`], [`SliceFacts`], [`NamespaceInfo`], and for nodes and
//! policies the record itself without the cluster): the part of the output
//! that depends on that object alone. What depends on other objects (a
//! namespace's labels and export flag, a service's slices, which pod owns a
//! contested IP) and the cluster name is added by [`Inventory::compute`]
//! (from scratch) or by [`Records`](super::Records) (maintained per change).
//! The choice is written down in docs/sources.md.

use std::collections::{BTreeMap, BTreeSet};

use clustermesh_proto::v1::{Node, Policy};

use super::SourceUpdate;
use super::convert::{
    Desired, NamespaceInfo, PendingEndpoint, PodFacts, ServiceFacts, SliceFacts, labels_digest,
    nodes, ns_key, policies, services,
};
use super::objects::{K8sObject, ObjectKind, ObjectRef};

pub(crate) type Key = (String, String);

/// Current objects of each kind, keyed by (namespace, name); namespace is
/// empty for cluster-scoped kinds.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub(crate) namespaces: BTreeMap<Key, NamespaceInfo>,
    /// The node record with `cluster` empty.
    pub(crate) nodes: BTreeMap<Key, Node>,
    pub(crate) pods: BTreeMap<Key, PodFacts>,
    pub(crate) services: BTreeMap<Key, ServiceFacts>,
    pub(crate) endpoint_slices: BTreeMap<Key, SliceFacts>,
    /// The policy record with `cluster` empty and `exported` = `global`.
    pub(crate) network_policies: BTreeMap<Key, Policy>,
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

/// The reference an object is stored under: a namespaced object without a
/// namespace lands in `default`.
pub fn stored_ref(obj: &K8sObject) -> ObjectRef {
    let mut r = obj.object_ref();
    if r.kind.is_namespaced() && r.namespace.is_empty() {
        r.namespace = "default".to_string();
    }
    r
}

/// A node record for `cluster` from the stored one.
pub(crate) fn node_for(stored: &Node, cluster: &str) -> Node {
    Node {
        cluster: cluster.to_string(),
        ..stored.clone()
    }
}

/// A policy record for `cluster` and its namespace from the stored one.
pub(crate) fn policy_for(stored: &Policy, ns: &NamespaceInfo, cluster: &str) -> Policy {
    Policy {
        cluster: cluster.to_string(),
        exported: stored.global && ns.exported,
        ..stored.clone()
    }
}

impl Inventory {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces an object (see [`stored_ref`] for its key). Returns
    /// whether anything the conversion reads changed.
    pub fn apply(&mut self, obj: K8sObject) -> bool {
        let r = stored_ref(&obj);
        let key = (r.namespace, r.name);
        match obj {
            K8sObject::Namespace(o) => {
                put(&mut self.namespaces, key, NamespaceInfo::from_namespace(&o))
            }
            K8sObject::Node(o) => put(&mut self.nodes, key, nodes::node_record(&o, "")),
            K8sObject::Pod(o) => put(&mut self.pods, key, PodFacts::from_pod(&o)),
            K8sObject::Service(mut o) => {
                o.metadata.namespace = Some(key.0.clone());
                put(&mut self.services, key, ServiceFacts::from_service(&o))
            }
            K8sObject::EndpointSlice(o) => {
                put(&mut self.endpoint_slices, key, SliceFacts::from_slice(&o))
            }
            K8sObject::NetworkPolicy(mut o) => {
                o.metadata.namespace = Some(key.0.clone());
                let rec = policies::policy_record(&o, &NamespaceInfo::unseen(), "");
                put(&mut self.network_policies, key, rec)
            }
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

    /// Whether an object is stored.
    pub fn contains(&self, r: &ObjectRef) -> bool {
        let key = (r.namespace.clone(), r.name.clone());
        match r.kind {
            ObjectKind::Namespace => self.namespaces.contains_key(&key),
            ObjectKind::Node => self.nodes.contains_key(&key),
            ObjectKind::Pod => self.pods.contains_key(&key),
            ObjectKind::Service => self.services.contains_key(&key),
            ObjectKind::EndpointSlice => self.endpoint_slices.contains_key(&key),
            ObjectKind::NetworkPolicy => self.network_policies.contains_key(&key),
        }
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
            .cloned()
            .unwrap_or_else(NamespaceInfo::unseen)
    }

    /// Every record these objects turn into, for cluster `cluster`, computed
    /// from scratch. The exporter keeps them up to date per change instead
    /// ([`Records`](super::Records)); this is the reference it is checked
    /// against, and what one-shot callers (tests, the fuzzer) use.
    pub fn compute(&self, cluster: &str) -> Desired {
        let mut d = Desired::default();
        let ns_infos: BTreeMap<&str, &NamespaceInfo> = self
            .namespaces
            .iter()
            .map(|((_, name), ns)| (name.as_str(), ns))
            .collect();
        let unseen = NamespaceInfo::unseen();
        let info = |ns: &str| ns_infos.get(ns).copied().unwrap_or(&unseen);

        for n in self.nodes.values() {
            let rec = node_for(n, cluster);
            d.nodes.insert(rec.name.clone(), rec);
        }

        self.compute_pods(cluster, &info, &mut d);

        let mut slices_by_service: BTreeMap<(&str, &str), Vec<&[_]>> = BTreeMap::new();
        for ((ns, _), s) in &self.endpoint_slices {
            if let Some(svc) = &s.service {
                slices_by_service
                    .entry((ns.as_str(), svc.as_str()))
                    .or_default()
                    .push(s.backends.as_slice());
            }
        }
        for ((ns, name), svc) in &self.services {
            let slices = slices_by_service
                .get(&(ns.as_str(), name.as_str()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            if let Some(w) = &svc.warning {
                d.warnings.push(w.clone());
            }
            let backends = services::merge_backends(slices.iter().copied());
            let rec = svc.record(backends, info(ns), cluster);
            d.services.insert(ns_key(ns, name), rec);
        }

        for ((ns, name), np) in &self.network_policies {
            d.policies
                .insert(ns_key(ns, name), policy_for(np, info(ns), cluster));
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
            if pod.ips.is_empty() {
                continue;
            }
            let ns_info = info(ns);
            let labels = pod.identity_labels(ns, ns_info, cluster);
            let digest = labels_digest(&labels);
            let terminating = pod.terminating;
            let mut used = false;
            for ip in &pod.ips {
                let me = ns_key(ns, name);
                if let Some((other_terminating, other)) = owner.get(ip) {
                    if terminating || !*other_terminating {
                        d.warnings.push(format!(
                            "Pod {me}: IP {ip} already used by pod {other}; ignored"
                        ));
                        continue;
                    }
                    d.warnings
                        .push(format!("Pod {other}: IP {ip} taken over by pod {me}"));
                }
                owner.insert(ip.clone(), (terminating, me));
                used = true;
                d.endpoints.insert(
                    ip.clone(),
                    PendingEndpoint {
                        endpoint: pod.endpoint(ip, ns, name, ns_info, cluster),
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
        let live: BTreeSet<&String> = d.endpoints.values().map(|p| &p.labels_digest).collect();
        d.identities.retain(|k, _| live.contains(k));
    }
}
