//! Records maintained per change equal a from-scratch `Inventory::compute`
//! after any sequence of applies and deletes, and every key whose record
//! changed is reported dirty.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::*;
use crate::source::Desired;

const CLUSTER: &str = "c1";

fn pick<'a>(rng: &mut StdRng, from: &[&'a str]) -> &'a str {
    from[rng.random_range(0..from.len())]
}

fn object(v: Value) -> K8sObject {
    let kind = v["kind"].as_str().unwrap_or_default().to_string();
    let parsed = match kind.as_str() {
        "Namespace" => serde_json::from_value(v).map(K8sObject::Namespace),
        "Node" => serde_json::from_value(v).map(K8sObject::Node),
        "Pod" => serde_json::from_value(v).map(K8sObject::Pod),
        "Service" => serde_json::from_value(v).map(K8sObject::Service),
        "EndpointSlice" => serde_json::from_value(v).map(K8sObject::EndpointSlice),
        _ => serde_json::from_value(v).map(K8sObject::NetworkPolicy),
    };
    parsed.expect("test object deserializes")
}

const NAMESPACES: &[&str] = &["a", "b", "c", "default"];
const PODS: &[&str] = &["p0", "p1", "p2", "p3", "p4", "p5"];
const SERVICES: &[&str] = &["s0", "s1", "s2"];
const SLICES: &[&str] = &["e0", "e1", "e2", "e3"];
const NODES: &[&str] = &["n0", "n1", "n2"];
const POLICIES: &[&str] = &["np0", "np1"];

pub(crate) fn random_object(rng: &mut StdRng) -> K8sObject {
    let ns = pick(rng, NAMESPACES);
    let flag = |rng: &mut StdRng| pick(rng, &["true", "false", "TRUE"]);
    match rng.random_range(0..6) {
        0 => {
            let mut ann = json!({});
            if rng.random_bool(0.3) {
                ann["clustermesh.io/global"] = json!(flag(rng));
            }
            object(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"team": pick(rng, &["x", "y"])},
                             "annotations": ann}}))
        }
        1 => {
            let name = pick(rng, NODES);
            object(json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {"clustermesh.io/gateway": flag(rng)}},
                "spec": {"podCIDR": pick(rng, &["10.9.0.0/24", "10.9.1.0/24"])},
                "status": {"addresses": [{"type": "InternalIP",
                                          "address": pick(rng, &["192.168.0.1", "192.168.0.2"])}]}}))
        }
        2 | 3 => {
            let name = pick(rng, PODS);
            let ip = pick(rng, &["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]);
            let mut ips = vec![json!({"ip": ip})];
            if rng.random_bool(0.3) {
                ips.push(json!({"ip": pick(rng, &["fd00::1", "fd00::2"])}));
            }
            let mut meta = json!({"name": name, "namespace": ns,
                "labels": {"app": pick(rng, &["web", "db"]),
                           "pod-template-hash": pick(rng, &["h1", "h2"])}});
            if rng.random_bool(0.25) {
                meta["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
            }
            let phase = pick(rng, &["Running", "Running", "Running", "Succeeded"]);
            object(json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                "spec": {"nodeName": pick(rng, NODES), "hostNetwork": rng.random_bool(0.1),
                         "containers": [{"name": "c", "ports": [
                             {"name": pick(rng, &["http", "web"]), "containerPort": 8080}]}]},
                "status": {"phase": phase, "podIP": ip, "podIPs": ips,
                           "hostIP": "192.168.0.1"}}))
        }
        4 => {
            if rng.random_bool(0.5) {
                let name = pick(rng, SERVICES);
                object(json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": name, "namespace": ns, "annotations": {
                        "clustermesh.io/global": flag(rng),
                        "clustermesh.io/affinity": pick(rng, &["local", "none", "nearest"])}},
                    "spec": {"clusterIP": pick(rng, &["10.96.0.1", "None"]),
                             "ports": [{"name": "http", "port": 80}]}}))
            } else {
                let name = pick(rng, SLICES);
                let mut labels = json!({});
                if rng.random_bool(0.8) {
                    labels["kubernetes.io/service-name"] = json!(pick(rng, SERVICES));
                }
                let eps: Vec<Value> = (0..rng.random_range(0..3))
                    .map(|_| {
                        json!({"addresses": [pick(rng, &["10.1.0.1", "10.1.0.2", "10.1.0.3"])],
                               "conditions": {"ready": rng.random_bool(0.6),
                                              "serving": rng.random_bool(0.6)}})
                    })
                    .collect();
                object(
                    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": name, "namespace": ns, "labels": labels},
                    "addressType": "IPv4", "endpoints": eps,
                    "ports": [{"name": "http", "port": pick(rng, &["8080", "9090"])
                        .parse::<i32>().unwrap_or(0)}]}),
                )
            }
        }
        _ => {
            let name = pick(rng, POLICIES);
            object(
                json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": name, "namespace": ns,
                             "annotations": {"clustermesh.io/global": flag(rng)}},
                "spec": {"podSelector": {"matchLabels": {"app": pick(rng, &["web", "db"])}}}}),
            )
        }
    }
}

pub(crate) fn random_ref(rng: &mut StdRng) -> ObjectRef {
    let ns = pick(rng, NAMESPACES);
    let (kind, names) = match rng.random_range(0..6) {
        0 => (ObjectKind::Namespace, NAMESPACES),
        1 => (ObjectKind::Node, NODES),
        2 => (ObjectKind::Pod, PODS),
        3 => (ObjectKind::Service, SERVICES),
        4 => (ObjectKind::EndpointSlice, SLICES),
        _ => (ObjectKind::NetworkPolicy, POLICIES),
    };
    ObjectRef::new(kind, ns, pick(rng, names))
}

/// Keys whose record differs between two snapshots.
fn changed_keys(a: &Desired, b: &Desired) -> Dirty {
    fn diff<V: PartialEq>(
        a: &BTreeMap<String, V>,
        b: &BTreeMap<String, V>,
        out: &mut BTreeSet<String>,
    ) {
        for k in a.keys().chain(b.keys()) {
            if a.get(k) != b.get(k) {
                out.insert(k.clone());
            }
        }
    }
    let mut d = Dirty::default();
    diff(&a.nodes, &b.nodes, &mut d.nodes);
    diff(&a.endpoints, &b.endpoints, &mut d.endpoints);
    // A service's record is written without its backends; each backend is
    // its own record.
    let split = |x: &Desired| {
        let mut svcs = BTreeMap::new();
        let mut backends = BTreeMap::new();
        for (k, s) in &x.services {
            svcs.insert(k.clone(), clustermesh_proto::backends::without_backends(s));
            for b in &s.backends {
                backends.insert(
                    clustermesh_proto::backends::key(&s.namespace, &s.name, &b.ip),
                    clustermesh_proto::backends::record(s, b),
                );
            }
        }
        (svcs, backends)
    };
    let ((sa, ba), (sb, bb)) = (split(a), split(b));
    diff(&sa, &sb, &mut d.services);
    diff(&ba, &bb, &mut d.backends);
    diff(&a.policies, &b.policies, &mut d.policies);
    diff(&a.identities, &b.identities, &mut d.identities);
    d
}

#[test]
fn maintained_records_equal_a_full_compute_after_any_changes() {
    for seed in 0..300u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut rec = Records::new(CLUSTER);
        let mut before = rec.snapshot();
        for step in 0..150 {
            let what = if rng.random_bool(0.7) {
                let obj = random_object(&mut rng);
                let what = format!("apply {}", obj.object_ref());
                rec.apply(obj);
                what
            } else {
                let r = random_ref(&mut rng);
                let what = format!("delete {r}");
                rec.delete(&r);
                what
            };
            let now = rec.snapshot();
            let full = rec.inventory().compute(CLUSTER);
            assert_eq!(now, full, "seed {seed} step {step}: {what}");
            let dirty = rec.take_dirty();
            let changed = changed_keys(&before, &now);
            let missed = |want: &BTreeSet<String>, got: &BTreeSet<String>| {
                want.difference(got).cloned().collect::<Vec<_>>()
            };
            assert!(
                missed(&changed.nodes, &dirty.nodes).is_empty()
                    && missed(&changed.endpoints, &dirty.endpoints).is_empty()
                    && missed(&changed.services, &dirty.services).is_empty()
                    && missed(&changed.backends, &dirty.backends).is_empty()
                    && missed(&changed.policies, &dirty.policies).is_empty()
                    && missed(&changed.identities, &dirty.identities).is_empty(),
                "seed {seed} step {step}: {what}: changed {changed:?}, dirty {dirty:?}"
            );
            before = now;
        }
    }
}

#[test]
fn a_pod_change_touches_only_its_endpoint() {
    let mut rec = Records::new(CLUSTER);
    for i in 0..100 {
        rec.apply(object(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("p{i}"), "namespace": "a", "labels": {"app": "web"}},
            "status": {"phase": "Running", "podIP": format!("10.0.1.{i}")}})));
    }
    assert_eq!(rec.desired().identities.len(), 1);
    let first = rec.take_dirty();
    assert_eq!((first.endpoints.len(), first.identities.len()), (100, 1));
    // A new label: a new identity for this one pod, the old one still used.
    rec.apply(object(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p7", "namespace": "a", "labels": {"app": "db"}},
        "status": {"phase": "Running", "podIP": "10.0.1.7"}})));
    let d = rec.take_dirty();
    assert_eq!(
        d.endpoints.into_iter().collect::<Vec<_>>(),
        vec!["10.0.1.7"]
    );
    assert_eq!(d.identities.len(), 1);
    assert_eq!(rec.desired().identities.len(), 2);
    // The same object again: nothing.
    rec.apply(object(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p7", "namespace": "a", "labels": {"app": "db"},
                     "resourceVersion": "2"},
        "status": {"phase": "Running", "podIP": "10.0.1.7"}})));
    assert!(rec.take_dirty().is_empty());
    // Its deletion drops the endpoint and the identity only it used.
    rec.delete(&ObjectRef::new(ObjectKind::Pod, "a", "p7"));
    let d = rec.take_dirty();
    assert_eq!((d.endpoints.len(), d.identities.len()), (1, 1));
    assert_eq!(rec.desired().identities.len(), 1);
    assert_eq!(rec.desired().endpoints.len(), 99);
}

#[test]
fn one_backend_change_touches_only_its_backend_record() {
    let mut rec = Records::new(CLUSTER);
    rec.apply(object(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "big", "namespace": "a",
                     "annotations": {"clustermesh.io/global": "true"}},
        "spec": {"clusterIP": "10.96.0.9", "ports": [{"name": "http", "port": 80}]}})));
    let slice = |ready_last: bool| {
        let eps: Vec<Value> = (0..1000)
            .map(|i| {
                json!({"addresses": [format!("10.1.{}.{}", i / 250, i % 250)],
                       "conditions": {"ready": i != 999 || ready_last}})
            })
            .collect();
        object(
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "big-1", "namespace": "a",
                         "labels": {"kubernetes.io/service-name": "big"}},
            "addressType": "IPv4", "endpoints": eps,
            "ports": [{"name": "http", "port": 8080}]}),
        )
    };
    rec.apply(slice(true));
    let first = rec.take_dirty();
    assert_eq!((first.services.len(), first.backends.len()), (1, 1000));
    rec.apply(slice(false));
    let d = rec.take_dirty();
    assert!(
        d.services.is_empty(),
        "the service record is unchanged: {d:?}"
    );
    assert_eq!(
        d.backends.into_iter().collect::<Vec<_>>(),
        vec!["a/big/10.1.3.249"]
    );
    // A change of the service itself: its record, and every backend only
    // when what a backend record carries (the export flag) changes.
    rec.apply(object(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "big", "namespace": "a",
                     "annotations": {"clustermesh.io/global": "true"}},
        "spec": {"clusterIP": "10.96.0.9", "ports": [{"name": "http", "port": 81}]}})));
    let d = rec.take_dirty();
    assert_eq!((d.services.len(), d.backends.len()), (1, 0));
    rec.apply(object(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "big", "namespace": "a"},
        "spec": {"clusterIP": "10.96.0.9", "ports": [{"name": "http", "port": 81}]}})));
    let d = rec.take_dirty();
    assert_eq!((d.services.len(), d.backends.len()), (1, 1000));
}
