//! Cost of one pod change in the exporter, in a cluster of P pods (default
//! 50,000), side by side in one run:
//!
//! - `before`: what the exporter did until the records were maintained per
//!   change: full Pod objects in the inventory, every record converted from
//!   them again (the converters over the k8s objects), the whole wanted
//!   key → bytes map built and diffed against everything written;
//! - `scratch`: the same from-scratch work over the slim inventory
//!   (`Inventory::compute` + full diff): what a term's first reconcile does;
//! - `after`: `Records::apply` of the change + the diff of its dirty keys.
//!
//! And the memory the inventory holds per pod: full objects (before) vs the
//! per-object derived records (after), and the maintained records beside
//! it, counted by a counting global allocator.
//!
//! Run: `cargo bench -p clustermesh-apiserver --bench export_change`
//! (`PODS=N` to change the size). Figures are in docs/benchmarks.md.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clustermesh_apiserver::export::diff::{self, Wanted};
use clustermesh_apiserver::source::convert::{NamespaceInfo, pods};
use clustermesh_apiserver::source::{
    Desired, Inventory, K8sObject, PendingEndpoint, Records, labels_digest,
};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);
static ALLOCATED: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as i64, Ordering::Relaxed);
        ALLOCATED.fetch_add(l.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as i64, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as i64 - l.size() as i64, Ordering::Relaxed);
        ALLOCATED.fetch_add(new as u64, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CLUSTER: &str = "c1";
const NAMESPACES: usize = 50;
const APPS: usize = 100;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A pod as a kubelet reports it (spec and status filled like a real one;
/// managedFields are dropped by the sources, so none here).
fn pod(i: usize, app_label: &str) -> core::Pod {
    let ns = format!("ns-{}", i % NAMESPACES);
    let app = format!("app-{}", i % APPS);
    let v = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("{app}-7d9f8b6c5-{i:05}"), "namespace": ns,
            "uid": format!("0b6f7c1e-9a5d-4c7e-8f1a-{i:012}"), "resourceVersion": "123456",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"app": app_label, "pod-template-hash": "7d9f8b6c5", "tier": "backend"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": format!("{app}-7d9f8b6c5"), "uid": "7e1c", "controller": true,
                "blockOwnerDeletion": true}]
        },
        "spec": {
            "nodeName": format!("node-{}", i % 500), "serviceAccountName": "default",
            "restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler",
            "terminationGracePeriodSeconds": 30,
            "containers": [{
                "name": "main", "image": format!("registry.example.com/{app}:1.2.3"),
                "imagePullPolicy": "IfNotPresent",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                          {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
                "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "PORT", "value": "8080"}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                              "limits": {"cpu": "500m", "memory": "256Mi"}},
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080},
                                   "periodSeconds": 10},
                "volumeMounts": [{"name": "kube-api-access", "readOnly": true,
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File"
            }],
            "volumes": [{"name": "kube-api-access", "projected": {"sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}],
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                             "effect": "NoExecute", "tolerationSeconds": 300}]
        },
        "status": {
            "phase": "Running", "hostIP": format!("192.168.{}.{}", i % 500 / 250, i % 250),
            "podIP": format!("10.{}.{}.{}", i / 65536 + 1, i / 256 % 256, i % 256),
            "podIPs": [{"ip": format!("10.{}.{}.{}", i / 65536 + 1, i / 256 % 256, i % 256)}],
            "qosClass": "Burstable", "startTime": "2026-01-01T00:00:00Z",
            "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "containerStatuses": [{"name": "main", "ready": true, "restartCount": 0, "started": true,
                "image": format!("registry.example.com/{app}:1.2.3"),
                "imageID": "registry.example.com/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "containerID": "containerd://0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]
        }
    });
    serde_json::from_value(v).expect("bench pod")
}

fn namespace(n: usize) -> core::Namespace {
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": format!("ns-{n}"), "labels": {"team": format!("t{}", n % 5)}}}))
    .expect("bench namespace")
}

fn service(n: usize) -> (core::Service, EndpointSlice) {
    let ns = format!("ns-{}", n % NAMESPACES);
    let svc = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{n}"), "namespace": ns,
                     "annotations": {"clustermesh.io/global": "true"}},
        "spec": {"clusterIP": format!("10.96.{}.{}", n / 256, n % 256),
                 "ports": [{"name": "http", "port": 80}]}}))
    .expect("bench service");
    let eps: Vec<_> = (0..20)
        .map(|j| {
            json!({"addresses": [format!("10.200.{}.{}", n % 256, j)],
                        "conditions": {"ready": true}, "nodeName": "node-1"})
        })
        .collect();
    let slice = serde_json::from_value(json!({"apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": format!("svc-{n}-abcde"), "namespace": ns,
                     "labels": {"kubernetes.io/service-name": format!("svc-{n}")}},
        "addressType": "IPv4", "endpoints": eps, "ports": [{"name": "http", "port": 8080}]}))
    .expect("bench slice");
    (svc, slice)
}

/// The exporter's conversion before records were kept per object: every
/// pod converted from the full object again (endpoints and identities; the
/// other kinds are converted the same way in both, so they are left out).
fn before_compute(
    pods: &BTreeMap<(String, String), core::Pod>,
    ns: &BTreeMap<String, NamespaceInfo>,
) -> Desired {
    let mut d = Desired::default();
    let unseen = NamespaceInfo::unseen();
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    for ((n, name), p) in pods {
        let info = ns.get(n).unwrap_or(&unseen);
        let eps = pods::pod_endpoints(p, info, CLUSTER);
        if eps.is_empty() {
            continue;
        }
        let labels = pods::pod_identity_labels(p, info, CLUSTER);
        let digest = labels_digest(&labels);
        for ep in eps {
            if owner.contains_key(&ep.ip) {
                continue;
            }
            owner.insert(ep.ip.clone(), format!("{n}/{name}"));
            d.endpoints.insert(
                ep.ip.clone(),
                PendingEndpoint {
                    endpoint: ep,
                    labels_digest: digest.clone(),
                },
            );
        }
        d.identities
            .entry(digest)
            .or_insert_with(|| (labels, info.exported));
    }
    d
}

fn index_of(d: &Desired) -> BTreeMap<String, u32> {
    d.identities
        .keys()
        .enumerate()
        .map(|(i, k)| (k.clone(), 256 + i as u32))
        .collect()
}

fn stats(mut v: Vec<Duration>) -> String {
    v.sort();
    let median = v[v.len() / 2];
    let mean = v.iter().sum::<Duration>() / v.len() as u32;
    format!(
        "median {median:>10.3?}  mean {mean:>10.3?}  (n={})",
        v.len()
    )
}

fn main() {
    let n_pods = env_usize("PODS", 50_000);
    let n_services = 500;
    let changes_before = env_usize("CHANGES_BEFORE", 10);
    let changes_after = env_usize("CHANGES_AFTER", 2_000);
    println!(
        "export_change: {n_pods} pods, {NAMESPACES} namespaces, {APPS} apps, {n_services} services × 20 backends"
    );

    let objects: Vec<core::Pod> = (0..n_pods)
        .map(|i| pod(i, &format!("app-{}", i % APPS)))
        .collect();
    let namespaces: Vec<core::Namespace> = (0..NAMESPACES).map(namespace).collect();
    let svcs: Vec<(core::Service, EndpointSlice)> = (0..n_services).map(service).collect();

    // Memory: full objects as the inventory used to hold them.
    let base = LIVE.load(Ordering::Relaxed);
    let mut full: BTreeMap<(String, String), core::Pod> = BTreeMap::new();
    for p in &objects {
        let key = (
            p.metadata.namespace.clone().unwrap_or_default(),
            p.metadata.name.clone().unwrap_or_default(),
        );
        full.insert(key, p.clone());
    }
    let full_bytes = LIVE.load(Ordering::Relaxed) - base;

    // Memory: the slim inventory.
    let base = LIVE.load(Ordering::Relaxed);
    let mut inv = Inventory::new();
    for p in &objects {
        inv.apply(K8sObject::Pod(p.clone()));
    }
    let slim_bytes = LIVE.load(Ordering::Relaxed) - base;
    drop(inv);

    // Memory: the maintained records (inventory, records, indexes).
    let base = LIVE.load(Ordering::Relaxed);
    let mut records = Records::new(CLUSTER);
    for n in &namespaces {
        records.apply(K8sObject::Namespace(n.clone()));
    }
    for (s, e) in &svcs {
        records.apply(K8sObject::Service(s.clone()));
        records.apply(K8sObject::EndpointSlice(e.clone()));
    }
    let with_services = LIVE.load(Ordering::Relaxed);
    for p in &objects {
        records.apply(K8sObject::Pod(p.clone()));
    }
    let records_bytes = LIVE.load(Ordering::Relaxed) - with_services;
    let _ = base;
    let _ = records.take_dirty();

    let per = |b: i64| b as f64 / n_pods as f64;
    println!(
        "memory per pod: before (full Pod objects) {:>7.0} B",
        per(full_bytes)
    );
    println!(
        "memory per pod: after  (slim inventory)   {:>7.0} B",
        per(slim_bytes)
    );
    println!(
        "memory per pod: after  (Records: slim inventory + maintained records + indexes) {:>7.0} B",
        per(records_bytes)
    );

    // What is written: the state after the initial reconcile.
    let ns_infos: BTreeMap<String, NamespaceInfo> = namespaces
        .iter()
        .map(|n| {
            (
                n.metadata.name.clone().unwrap_or_default(),
                NamespaceInfo::from_namespace(n),
            )
        })
        .collect();
    let live = BTreeSet::new();
    let index = index_of(records.desired());
    let written: BTreeMap<String, Bytes> = diff::want_all(&Wanted {
        desired: records.desired(),
        index: &index,
        live: &live,
        cluster: CLUSTER,
    });
    println!("records written: {}", written.len());

    // The change: one pod's label flips between two existing apps' values.
    let victim = n_pods / 2;
    let label = |k: usize| format!("app-{}", (victim + k) % APPS);

    // before: full objects, convert all, diff all.
    let mut t_before = Vec::new();
    let mut a_before = 0u64;
    for k in 0..changes_before {
        let p = pod(victim, &label(k % 2 + 1));
        let key = (
            p.metadata.namespace.clone().unwrap_or_default(),
            p.metadata.name.clone().unwrap_or_default(),
        );
        let a0 = ALLOCATED.load(Ordering::Relaxed);
        let t0 = Instant::now();
        full.insert(key, p);
        let d = before_compute(&full, &ns_infos);
        let want = diff::want_all(&Wanted {
            desired: &d,
            index: &index,
            live: &live,
            cluster: CLUSTER,
        });
        let mut refused = BTreeMap::new();
        let ops = diff::diff_all(&want, &written, &mut refused, &BTreeSet::new());
        std::hint::black_box(&ops);
        t_before.push(t0.elapsed());
        a_before += ALLOCATED.load(Ordering::Relaxed) - a0;
        drop((d, want, ops));
    }

    // scratch: the slim inventory, compute all, diff all.
    let mut t_scratch = Vec::new();
    let mut a_scratch = 0u64;
    let mut inv = records.inventory().clone();
    for k in 0..changes_before {
        let p = pod(victim, &label(k % 2 + 1));
        let a0 = ALLOCATED.load(Ordering::Relaxed);
        let t0 = Instant::now();
        inv.apply(K8sObject::Pod(p));
        let d = inv.compute(CLUSTER);
        let want = diff::want_all(&Wanted {
            desired: &d,
            index: &index,
            live: &live,
            cluster: CLUSTER,
        });
        let mut refused = BTreeMap::new();
        let ops = diff::diff_all(&want, &written, &mut refused, &BTreeSet::new());
        std::hint::black_box(&ops);
        t_scratch.push(t0.elapsed());
        a_scratch += ALLOCATED.load(Ordering::Relaxed) - a0;
        drop((d, want, ops));
    }
    drop(inv);

    // after: apply to the maintained records, diff the dirty keys.
    let mut t_after = Vec::new();
    let mut a_after = 0u64;
    let mut ops_after = 0usize;
    for k in 0..changes_after {
        let p = pod(victim, &label(k % 2 + 1));
        let a0 = ALLOCATED.load(Ordering::Relaxed);
        let t0 = Instant::now();
        records.apply(K8sObject::Pod(p));
        let dirty = records.take_dirty();
        let want = diff::want_keys(
            &Wanted {
                desired: records.desired(),
                index: &index,
                live: &live,
                cluster: CLUSTER,
            },
            &dirty,
        );
        let mut refused = BTreeMap::new();
        let ops = diff::diff_keys(want, &written, &mut refused);
        ops_after += ops.len();
        std::hint::black_box(&ops);
        t_after.push(t0.elapsed());
        a_after += ALLOCATED.load(Ordering::Relaxed) - a0;
    }

    println!(
        "one pod change, before  (full objects, convert all + diff all): {}  alloc {:>12} B/change",
        stats(t_before),
        a_before / changes_before as u64
    );
    println!(
        "one pod change, scratch (slim inventory, compute all + diff all): {}  alloc {:>12} B/change",
        stats(t_scratch),
        a_scratch / changes_before as u64
    );
    println!(
        "one pod change, after   (maintained records, dirty keys):     {}  alloc {:>12} B/change",
        stats(t_after),
        a_after / changes_after as u64
    );
    println!(
        "writes per change after: {:.1}",
        ops_after as f64 / changes_after as f64
    );
}
