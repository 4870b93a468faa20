//! The records of one cluster kept up to date per change: a change to one
//! object recomputes only the records it touches, and the keys whose record
//! changed are collected ([`Dirty`]) for the exporter to diff.
//!
//! What a change touches:
//! - a pod → the endpoints of its old and new IPs (and the use count of their
//!   identities: an identity lives while an endpoint uses it);
//! - a namespace → the endpoints of its pods, its services and policies (its
//!   labels feed identities, its annotation the export flags);
//! - a service or one of its EndpointSlices → that service's record (dirty
//!   only when something but its backends changed) and the backend records
//!   (`<namespace>/<service>/<ip>`) whose backend changed;
//! - a node → that node's record; a policy → that policy's record.
//!
//! [`Records::snapshot`] equals [`Inventory::compute`] of the same inventory
//! after any sequence of changes (tested in `records/tests.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use super::SourceUpdate;
use super::convert::{Desired, NamespaceInfo, PendingEndpoint, labels_digest, ns_key, services};
use super::inventory::{Inventory, Key, node_for, policy_for, stored_ref};
use super::objects::{K8sObject, ObjectKind, ObjectRef};

#[cfg(test)]
pub(crate) mod tests;

/// Keys whose record changed (added, replaced or removed), per kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Node names.
    pub nodes: BTreeSet<String>,
    /// Pod IPs.
    pub endpoints: BTreeSet<String>,
    /// "namespace/name": the service record (without backends) changed.
    pub services: BTreeSet<String>,
    /// "namespace/service/ip": one backend record changed.
    pub backends: BTreeSet<String>,
    /// "namespace/name".
    pub policies: BTreeSet<String>,
    /// Label set digests.
    pub identities: BTreeSet<String>,
}

impl Dirty {
    pub fn merge(&mut self, other: Dirty) {
        self.nodes.extend(other.nodes);
        self.endpoints.extend(other.endpoints);
        self.services.extend(other.services);
        self.backends.extend(other.backends);
        self.policies.extend(other.policies);
        self.identities.extend(other.identities);
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
            + self.endpoints.len()
            + self.services.len()
            + self.backends.len()
            + self.policies.len()
            + self.identities.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An inventory and the records it turns into, maintained per change.
#[derive(Debug)]
pub struct Records {
    cluster: String,
    inv: Inventory,
    /// The records; `warnings` stays empty (see [`Records::warnings`]).
    desired: Desired,
    /// Pods claiming an IP, for IPs claimed by two or more; an IP with one
    /// claimant has it as the owner of its endpoint record.
    contested: HashMap<String, BTreeSet<Key>>,
    /// IP conflict warnings, per contested IP.
    ip_warnings: HashMap<String, Vec<String>>,
    /// Invalid annotation warnings, per service key.
    service_warnings: BTreeMap<String, String>,
    /// Endpoint records using each identity (digest).
    identity_uses: HashMap<String, usize>,
    /// (namespace, service name) → names of its EndpointSlices.
    slices_by_service: HashMap<Key, BTreeSet<String>>,
    dirty: Dirty,
}

impl Records {
    pub fn new(cluster: &str) -> Records {
        Records {
            cluster: cluster.to_string(),
            inv: Inventory::new(),
            desired: Desired::default(),
            contested: HashMap::new(),
            ip_warnings: HashMap::new(),
            service_warnings: BTreeMap::new(),
            identity_uses: HashMap::new(),
            slices_by_service: HashMap::new(),
            dirty: Dirty::default(),
        }
    }

    pub fn inventory(&self) -> &Inventory {
        &self.inv
    }

    /// The current records (with `warnings` empty: see [`Records::warnings`]).
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// The keys changed since the last call.
    pub fn take_dirty(&mut self) -> Dirty {
        std::mem::take(&mut self.dirty)
    }

    /// Every current conversion warning, sorted.
    pub fn warnings(&self) -> Vec<String> {
        let mut w: Vec<String> = self
            .ip_warnings
            .values()
            .flatten()
            .chain(self.service_warnings.values())
            .cloned()
            .collect();
        w.sort();
        w
    }

    /// The warnings about these keys (IP conflicts, service annotations).
    pub fn warnings_of<'a>(&'a self, dirty: &'a Dirty) -> impl Iterator<Item = &'a String> {
        let ips = dirty
            .endpoints
            .iter()
            .filter_map(|ip| self.ip_warnings.get(ip))
            .flatten();
        let svcs = dirty
            .services
            .iter()
            .filter_map(|k| self.service_warnings.get(k));
        ips.chain(svcs)
    }

    /// The records with their warnings, as [`Inventory::compute`] gives them.
    pub fn snapshot(&self) -> Desired {
        Desired {
            warnings: self.warnings(),
            ..self.desired.clone()
        }
    }

    /// Applies an `Apply` or `Delete` update (others are ignored); returns
    /// whether anything the conversion reads changed.
    pub fn handle(&mut self, update: SourceUpdate) -> bool {
        match update {
            SourceUpdate::Apply(obj) => self.apply(obj),
            SourceUpdate::Delete(r) => self.delete(&r),
            SourceUpdate::Synced(_) | SourceUpdate::Errors(_) => false,
        }
    }

    pub fn apply(&mut self, obj: K8sObject) -> bool {
        let r = stored_ref(&obj);
        let before = self.before(&r);
        if !self.inv.apply(obj) {
            return false;
        }
        self.changed(&r, before);
        true
    }

    pub fn delete(&mut self, r: &ObjectRef) -> bool {
        let before = self.before(r);
        if !self.inv.delete(r) {
            return false;
        }
        self.changed(r, before);
        true
    }

    /// What the object's old version linked to: a pod's IPs, a slice's service.
    fn before(&self, r: &ObjectRef) -> Vec<String> {
        let key = (r.namespace.clone(), r.name.clone());
        match r.kind {
            ObjectKind::Pod => self
                .inv
                .pods
                .get(&key)
                .map(|p| p.ips.clone())
                .unwrap_or_default(),
            ObjectKind::EndpointSlice => self
                .inv
                .endpoint_slices
                .get(&key)
                .and_then(|s| s.service.clone())
                .into_iter()
                .collect(),
            _ => Vec::new(),
        }
    }

    fn changed(&mut self, r: &ObjectRef, before: Vec<String>) {
        let key = (r.namespace.clone(), r.name.clone());
        match r.kind {
            ObjectKind::Namespace => self.namespace_changed(&r.name),
            ObjectKind::Node => self.refresh_node(&r.name),
            ObjectKind::Pod => self.pod_changed(&key, before),
            ObjectKind::Service => self.refresh_service(&r.namespace, &r.name),
            ObjectKind::EndpointSlice => self.slice_changed(&key, before),
            ObjectKind::NetworkPolicy => self.refresh_policy(&r.namespace, &r.name),
        }
    }

    fn ns_info(&self, namespace: &str) -> NamespaceInfo {
        self.inv.namespace_info(namespace)
    }

    fn namespace_changed(&mut self, namespace: &str) {
        let start = Bound::Included((namespace.to_string(), String::new()));
        let in_ns = |k: &&Key| k.0 == namespace;
        let ips: BTreeSet<String> = self
            .inv
            .pods
            .range((start.clone(), Bound::Unbounded))
            .take_while(|(k, _)| in_ns(k))
            .flat_map(|(_, p)| p.ips.iter().cloned())
            .collect();
        for ip in ips {
            let claimants = self.claimants(&ip);
            self.refresh_ip(&ip, &claimants);
        }
        let services: Vec<String> = self
            .inv
            .services
            .range((start.clone(), Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(in_ns)
            .map(|k| k.1.clone())
            .collect();
        for name in services {
            self.refresh_service(namespace, &name);
        }
        let policies: Vec<String> = self
            .inv
            .network_policies
            .range((start, Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(in_ns)
            .map(|k| k.1.clone())
            .collect();
        for name in policies {
            self.refresh_policy(namespace, &name);
        }
    }

    fn refresh_node(&mut self, name: &str) {
        let want = self
            .inv
            .nodes
            .get(&(String::new(), name.to_string()))
            .map(|n| node_for(n, &self.cluster));
        if self.desired.nodes.get(name) != want.as_ref() {
            match want {
                Some(n) => self.desired.nodes.insert(name.to_string(), n),
                None => self.desired.nodes.remove(name),
            };
            self.dirty.nodes.insert(name.to_string());
        }
    }

    fn refresh_policy(&mut self, namespace: &str, name: &str) {
        let key = ns_key(namespace, name);
        let ns = self.ns_info(namespace);
        let want = self
            .inv
            .network_policies
            .get(&(namespace.to_string(), name.to_string()))
            .map(|p| policy_for(p, &ns, &self.cluster));
        if self.desired.policies.get(&key) != want.as_ref() {
            match want {
                Some(p) => self.desired.policies.insert(key.clone(), p),
                None => self.desired.policies.remove(&key),
            };
            self.dirty.policies.insert(key);
        }
    }

    fn slice_changed(&mut self, key: &Key, before: Vec<String>) {
        let (namespace, slice) = key;
        for svc in &before {
            let k = (namespace.clone(), svc.clone());
            if let Some(set) = self.slices_by_service.get_mut(&k) {
                set.remove(slice);
                if set.is_empty() {
                    self.slices_by_service.remove(&k);
                }
            }
        }
        let now = self
            .inv
            .endpoint_slices
            .get(key)
            .and_then(|s| s.service.clone());
        if let Some(svc) = &now {
            self.slices_by_service
                .entry((namespace.clone(), svc.clone()))
                .or_default()
                .insert(slice.clone());
        }
        let touched: BTreeSet<String> = before.into_iter().chain(now).collect();
        for svc in touched {
            self.refresh_service(namespace, &svc);
        }
    }

    fn refresh_service(&mut self, namespace: &str, name: &str) {
        let key = ns_key(namespace, name);
        let k = (namespace.to_string(), name.to_string());
        let (want, warning) = match self.inv.services.get(&k) {
            None => (None, None),
            Some(svc) => {
                let slices = self.slices_by_service.get(&k).into_iter().flatten();
                let backends = services::merge_backends(slices.filter_map(|s| {
                    self.inv
                        .endpoint_slices
                        .get(&(namespace.to_string(), s.clone()))
                        .map(|f| f.backends.as_slice())
                }));
                let ns = self.ns_info(namespace);
                (
                    Some(svc.record(backends, &ns, &self.cluster)),
                    svc.warning.clone(),
                )
            }
        };
        match warning {
            Some(w) => self.service_warnings.insert(key.clone(), w),
            None => self.service_warnings.remove(&key),
        };
        let old = self.desired.services.get(&key);
        if old == want.as_ref() {
            return;
        }
        let none = Vec::new();
        let old_backends = old.map_or(&none, |s| &s.backends);
        let new_backends = want.as_ref().map_or(&none, |s| &s.backends);
        // A backend record carries its service's cluster and export flag.
        let header_changed = old.map(|s| (s.exported, &s.cluster))
            != want.as_ref().map(|s| (s.exported, &s.cluster));
        for ip in changed_backends(old_backends, new_backends, header_changed) {
            self.dirty
                .backends
                .insert(clustermesh_proto::backends::key(namespace, name, &ip));
        }
        if !services::same_but_backends(old, want.as_ref()) {
            self.dirty.services.insert(key.clone());
        }
        match want {
            Some(s) => self.desired.services.insert(key, s),
            None => self.desired.services.remove(&key),
        };
    }
}

/// The IPs whose backend differs between `old` and `new` (both sorted by
/// IP, as [`services::merge_backends`] gives them); every IP of either when
/// `all`.
fn changed_backends(
    old: &[clustermesh_proto::v1::Backend],
    new: &[clustermesh_proto::v1::Backend],
    all: bool,
) -> BTreeSet<String> {
    let by_ip = |l: &[clustermesh_proto::v1::Backend]| -> HashMap<String, usize> {
        l.iter()
            .enumerate()
            .map(|(i, b)| (b.ip.clone(), i))
            .collect()
    };
    let (o, n) = (by_ip(old), by_ip(new));
    let mut out = BTreeSet::new();
    for (ip, i) in &o {
        if all || n.get(ip).is_none_or(|j| new[*j] != old[*i]) {
            out.insert(ip.clone());
        }
    }
    for ip in n.keys() {
        if all || !o.contains_key(ip) {
            out.insert(ip.clone());
        }
    }
    out
}

impl Records {
    /// The pods claiming `ip`, in (namespace, name) order.
    fn claimants(&self, ip: &str) -> BTreeSet<Key> {
        if let Some(set) = self.contested.get(ip) {
            return set.clone();
        }
        self.desired
            .endpoints
            .get(ip)
            .map(|pe| (pe.endpoint.namespace.clone(), pe.endpoint.pod.clone()))
            .into_iter()
            .collect()
    }

    fn pod_changed(&mut self, key: &Key, before: Vec<String>) {
        let now = self
            .inv
            .pods
            .get(key)
            .map(|p| p.ips.clone())
            .unwrap_or_default();
        let ips: BTreeSet<String> = before.iter().chain(&now).cloned().collect();
        for ip in ips {
            let mut claimants = self.claimants(&ip);
            if now.contains(&ip) {
                claimants.insert(key.clone());
            } else {
                claimants.remove(key);
            }
            if claimants.len() > 1 {
                self.contested.insert(ip.clone(), claimants.clone());
            } else {
                self.contested.remove(&ip);
            }
            self.refresh_ip(&ip, &claimants);
        }
    }

    /// Recomputes the endpoint of `ip` from its claimants: a pod being
    /// deleted yields the IP to a live one, otherwise the first pod keeps it
    /// (the same walk as [`Inventory::compute`], for one IP).
    fn refresh_ip(&mut self, ip: &str, claimants: &BTreeSet<Key>) {
        let mut owner: Option<(&Key, bool)> = None;
        let mut warnings = Vec::new();
        for k in claimants {
            let Some(pod) = self.inv.pods.get(k) else {
                continue;
            };
            let me = ns_key(&k.0, &k.1);
            if let Some((other, other_terminating)) = owner {
                let other = ns_key(&other.0, &other.1);
                if pod.terminating || !other_terminating {
                    warnings.push(format!(
                        "Pod {me}: IP {ip} already used by pod {other}; ignored"
                    ));
                    continue;
                }
                warnings.push(format!("Pod {other}: IP {ip} taken over by pod {me}"));
            }
            owner = Some((k, pod.terminating));
        }
        if warnings.is_empty() {
            self.ip_warnings.remove(ip);
        } else {
            self.ip_warnings.insert(ip.to_string(), warnings);
        }
        let want = owner.and_then(|(k, _)| {
            let pod = self.inv.pods.get(k)?;
            let ns = self.ns_info(&k.0);
            let labels = pod.identity_labels(&k.0, &ns, &self.cluster);
            let pe = PendingEndpoint {
                endpoint: pod.endpoint(ip, &k.0, &k.1, &ns, &self.cluster),
                labels_digest: labels_digest(&labels),
            };
            Some((pe, labels, ns.exported))
        });
        let old = self.desired.endpoints.get(ip);
        if old == want.as_ref().map(|w| &w.0) {
            return;
        }
        let old_digest = old.map(|pe| pe.labels_digest.clone());
        match want {
            Some((pe, labels, exported)) => {
                self.use_identity(&pe.labels_digest, labels, exported);
                self.desired.endpoints.insert(ip.to_string(), pe);
            }
            None => {
                self.desired.endpoints.remove(ip);
            }
        }
        if let Some(d) = old_digest {
            self.unuse_identity(&d);
        }
        self.dirty.endpoints.insert(ip.to_string());
    }

    fn use_identity(&mut self, digest: &str, labels: super::LabelSet, exported: bool) {
        *self.identity_uses.entry(digest.to_string()).or_default() += 1;
        match self.desired.identities.get_mut(digest) {
            Some(e) if e.1 == exported => {}
            Some(e) => {
                e.1 = exported;
                self.dirty.identities.insert(digest.to_string());
            }
            None => {
                self.desired
                    .identities
                    .insert(digest.to_string(), (labels, exported));
                self.dirty.identities.insert(digest.to_string());
            }
        }
    }

    fn unuse_identity(&mut self, digest: &str) {
        let Some(n) = self.identity_uses.get_mut(digest) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            self.identity_uses.remove(digest);
            self.desired.identities.remove(digest);
            self.dirty.identities.insert(digest.to_string());
        }
    }
}
