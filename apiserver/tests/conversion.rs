//! Conversion rules (docs/sources.md), each checked through both sources:
//! hand-built watcher events through the kube mapper, and files through the
//! running manifests source. Source-specific behaviour (re-lists, file
//! edits, broken files) is in `fixtures/sources.rs`; the examples/ check is
//! in `fixtures/examples.rs`.

#[path = "fixtures/harness.rs"]
mod harness;

#[path = "fixtures/sources.rs"]
mod sources;

#[path = "fixtures/examples.rs"]
mod examples;

use clustermesh_apiserver::source::labels_digest;
use clustermesh_proto::v1::Affinity;
use harness::{CLUSTER, both, labels, pod, service};

#[tokio::test]
async fn identity_labels() {
    let yaml = format!(
        "apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {{team: a, kubernetes.io/metadata.name: shop}}
---
{}{}",
        pod(
            "shop",
            "web-1",
            "{app: web, pod-template-hash: h1, controller-revision-hash: r, pod-template-generation: '2', \
             statefulset.kubernetes.io/pod-name: web-1, job-name: j, controller-uid: u, \
             batch.kubernetes.io/job-name: j, clustermesh.io/cluster: evil}",
            "10.0.0.1",
            ""
        ),
        pod(
            "shop",
            "web-2",
            "{app: web, pod-template-hash: h2}",
            "10.0.0.2",
            ""
        ),
    );
    let d = both(&yaml).await;
    let want = labels(&[
        ("app", "web"),
        ("clustermesh.io/cluster", CLUSTER),
        (
            "io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name",
            "shop",
        ),
        ("io.cilium.k8s.namespace.labels.team", "a"),
        ("io.kubernetes.pod.namespace", "shop"),
    ]);
    let digest = labels_digest(&want);
    assert_eq!(d.identities.len(), 1, "{:#?}", d.identities);
    assert_eq!(d.identities.get(&digest), Some(&(want, true)));
    for ip in ["10.0.0.1", "10.0.0.2"] {
        assert_eq!(d.endpoints[ip].labels_digest, digest);
    }
}

#[tokio::test]
async fn endpoints() {
    let yaml = [
        pod(
            "shop",
            "dual",
            "{app: a}",
            "10.0.0.1",
            "  podIPs: [{ip: 10.0.0.1}, {ip: 'fd00::1'}]\n",
        ),
        pod("shop", "pending", "{app: a}", "10.0.0.2", "").replace("Running", "Pending"),
        pod("shop", "done", "{app: a}", "10.0.0.3", "").replace("Running", "Succeeded"),
        pod("shop", "failed", "{app: a}", "10.0.0.4", "").replace("Running", "Failed"),
        pod("shop", "host", "{app: a}", "192.168.0.1", "")
            .replace("  nodeName: n1", "  nodeName: n1\n  hostNetwork: true"),
        pod("shop", "noip", "{app: a}", "", "").replace("  podIP: \n", ""),
    ]
    .concat();
    let d = both(&yaml).await;
    let keys: Vec<&str> = d.endpoints.keys().map(String::as_str).collect();
    assert_eq!(keys, vec!["10.0.0.1", "10.0.0.2", "fd00::1"]);
    let e = &d.endpoints["fd00::1"].endpoint;
    assert_eq!(
        (e.ip.as_str(), e.pod.as_str(), e.namespace.as_str()),
        ("fd00::1", "dual", "shop")
    );
    assert_eq!(
        (e.node_ip.as_str(), e.node_name.as_str()),
        ("192.168.0.1", "n1")
    );
    assert_eq!(
        (e.cluster.as_str(), e.exported, e.identity),
        (CLUSTER, true, 0)
    );
    let ports: Vec<_> = e
        .named_ports
        .iter()
        .map(|p| (p.name.as_str(), p.port, p.protocol.as_str()))
        .collect();
    assert_eq!(ports, vec![("dns", 53, "UDP"), ("http", 8080, "TCP")]);
}

#[tokio::test]
async fn nodes() {
    let yaml = "apiVersion: v1
kind: Node
metadata:
  name: gw
  labels: {clustermesh.io/gateway: 'true', zone: a}
spec:
  podCIDR: 10.1.0.0/24
  podCIDRs: [10.1.0.0/24, 'fd00:1::/64']
status:
  addresses:
  - {type: Hostname, address: gw}
  - {type: InternalIP, address: 192.168.1.10}
  - {type: ExternalIP, address: 203.0.113.10}
---
apiVersion: v1
kind: Node
metadata:
  name: worker
spec:
  podCIDR: 10.1.1.0/24
status:
  addresses:
  - {type: InternalIP, address: 192.168.1.11}
";
    let d = both(yaml).await;
    let gw = &d.nodes["gw"];
    assert!(gw.gateway && gw.exported);
    assert_eq!(gw.cluster, CLUSTER);
    assert_eq!(gw.internal_ips, vec!["192.168.1.10"]);
    assert_eq!(gw.external_ips, vec!["203.0.113.10"]);
    assert_eq!(gw.pod_cidrs, vec!["10.1.0.0/24", "fd00:1::/64"]);
    assert_eq!(gw.labels.get("zone").map(String::as_str), Some("a"));
    let w = &d.nodes["worker"];
    assert!(!w.gateway && w.exported);
    assert_eq!(w.pod_cidrs, vec!["10.1.1.0/24"]);
}

#[tokio::test]
async fn services() {
    let slices = "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: a-1
  namespace: shop
  labels: {kubernetes.io/service-name: a}
addressType: IPv4
ports:
- {name: http, port: 8080}
- {name: dns, port: 53, protocol: UDP}
endpoints:
- {addresses: [10.0.0.3], conditions: {ready: true}, zone: z1, nodeName: n1}
- {addresses: [10.0.0.1]}
- {addresses: [10.0.0.2], conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.0.0.4], conditions: {ready: false, serving: false}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: a-2
  namespace: shop
  labels: {kubernetes.io/service-name: a}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.0.0.10], conditions: {ready: true}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: a-elsewhere
  namespace: other
  labels: {kubernetes.io/service-name: a}
addressType: IPv4
endpoints:
- {addresses: [10.9.9.9]}
---
";
    let yaml = [
        service("shop", "a", "{clustermesh.io/global: 'True', clustermesh.io/affinity: local}", "10.96.0.1")
            .replace("  clusterIP: 10.96.0.1", "  clusterIP: 10.96.0.1\n  clusterIPs: [10.96.0.1, 'fd00:96::1']"),
        service(
            "shop",
            "b",
            "{clustermesh.io/global: 'true', clustermesh.io/shared: 'false', clustermesh.io/affinity: nearest}",
            "10.96.0.2",
        ),
        service(
            "shop",
            "cilium",
            "{service.cilium.io/global: 'true', service.cilium.io/shared: 'false', service.cilium.io/affinity: remote}",
            "10.96.0.3",
        ),
        service(
            "shop",
            "both",
            "{service.cilium.io/global: 'true', clustermesh.io/global: 'false', \
             service.cilium.io/affinity: remote, clustermesh.io/affinity: local}",
            "10.96.0.4",
        ),
        service("shop", "local", "{}", "10.96.0.5"),
        service("shop", "headless", "{clustermesh.io/global: 'true'}", "None"),
        slices.to_string(),
    ]
    .concat();
    let d = both(&yaml).await;

    let a = &d.services["shop/a"];
    assert!(a.global && a.shared && a.exported);
    assert_eq!(a.affinity, Affinity::Local as i32);
    assert_eq!(a.cluster, CLUSTER);
    assert_eq!(a.frontend_ips, vec!["10.96.0.1", "fd00:96::1"]);
    let ports: Vec<_> = a
        .ports
        .iter()
        .map(|p| (p.name.as_str(), p.port, p.protocol.as_str()))
        .collect();
    assert_eq!(ports, vec![("http", 80, "TCP"), ("dns", 53, "UDP")]);
    // ready or serving only (unset counts as true), sorted by IP, this namespace only
    let bs: Vec<_> = a
        .backends
        .iter()
        .map(|b| (b.ip.as_str(), b.ready, b.serving))
        .collect();
    assert_eq!(
        bs,
        vec![
            ("10.0.0.1", true, true),
            ("10.0.0.2", false, true),
            ("10.0.0.3", true, true),
            ("10.0.0.10", true, true)
        ]
    );
    let b3 = &a.backends[2];
    assert_eq!(
        (b3.zone.as_str(), b3.node_name.as_str(), b3.cluster.as_str()),
        ("z1", "n1", "")
    );
    let bp: Vec<_> = b3
        .ports
        .iter()
        .map(|p| (p.name.as_str(), p.port, p.protocol.as_str()))
        .collect();
    assert_eq!(bp, vec![("http", 8080, "TCP"), ("dns", 53, "UDP")]);

    let b = &d.services["shop/b"];
    assert!(b.global && !b.shared && b.exported);
    assert_eq!(b.affinity, Affinity::None as i32);
    assert!(
        d.warnings
            .iter()
            .any(|w| w.contains("shop/b") && w.contains("nearest")),
        "{:?}",
        d.warnings
    );

    let c = &d.services["shop/cilium"];
    assert!(
        c.global && !c.shared && c.exported,
        "Cilium annotations are accepted"
    );
    assert_eq!(c.affinity, Affinity::Remote as i32);

    let both_ = &d.services["shop/both"];
    assert!(
        !both_.global && !both_.exported,
        "clustermesh.io wins over service.cilium.io"
    );
    assert_eq!(both_.affinity, Affinity::Local as i32);

    let l = &d.services["shop/local"];
    assert!(
        !l.global && !l.shared && !l.exported,
        "non-global services are not exported"
    );
    assert_eq!(l.frontend_ips, vec!["10.96.0.5"]);

    let h = &d.services["shop/headless"];
    assert!(
        h.frontend_ips.is_empty(),
        "headless services have no frontends"
    );
    assert!(h.exported);
}

#[tokio::test]
async fn policies() {
    let yaml = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: global
  namespace: shop
  annotations: {clustermesh.io/global: 'true'}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: frontend}}
    - namespaceSelector: {}
      podSelector: {matchExpressions: [{key: tier, operator: In, values: [web]}]}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    ports:
    - {protocol: TCP, port: 8080}
    - {port: http}
    - {protocol: UDP, port: 5000, endPort: 5010}
  egress:
  - to: [{namespaceSelector: {matchLabels: {team: a}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: local
  namespace: shop
spec:
  podSelector: {}
  policyTypes: [Egress]
";
    let d = both(yaml).await;
    let g = &d.policies["shop/global"];
    assert!(g.exported);
    assert_eq!(
        (g.namespace.as_str(), g.name.as_str(), g.cluster.as_str()),
        ("shop", "global", CLUSTER)
    );
    let spec = g.spec.as_ref().expect("spec");
    assert_eq!(
        spec.policy_types,
        vec!["Ingress", "Egress"],
        "defaulted: egress rules present"
    );
    assert_eq!(
        spec.pod_selector.as_ref().map(|s| s.match_labels.clone()),
        Some(labels(&[("app", "backend")]))
    );
    let peers = &spec.ingress[0].peers;
    assert_eq!(peers.len(), 3);
    assert!(peers[0].namespace_selector.is_none(), "unset stays unset");
    assert_eq!(
        peers[1].namespace_selector,
        Some(Default::default()),
        "empty stays empty"
    );
    let expr = &peers[1]
        .pod_selector
        .as_ref()
        .expect("pod selector")
        .match_expressions[0];
    assert_eq!(
        (
            expr.key.as_str(),
            expr.operator.as_str(),
            expr.values.clone()
        ),
        ("tier", "In", vec!["web".to_string()])
    );
    let ip = peers[2].ip_block.as_ref().expect("ipBlock");
    assert_eq!(
        (ip.cidr.as_str(), ip.except.clone()),
        ("10.0.0.0/8", vec!["10.1.0.0/16".to_string()])
    );
    let ports: Vec<_> = spec.ingress[0]
        .ports
        .iter()
        .map(|p| {
            (
                p.protocol.as_str(),
                p.port,
                p.named_port.as_deref(),
                p.end_port,
            )
        })
        .collect();
    assert_eq!(
        ports,
        vec![
            ("TCP", Some(8080), None, None),
            ("TCP", None, Some("http"), None),
            ("UDP", Some(5000), None, Some(5010))
        ]
    );
    assert_eq!(spec.egress.len(), 1);

    let l = &d.policies["shop/local"];
    assert!(
        !l.exported,
        "policies without the global annotation are recorded, not exported"
    );
    let spec = l.spec.as_ref().expect("spec");
    assert_eq!(
        spec.policy_types,
        vec!["Egress"],
        "explicit policyTypes kept"
    );
    assert_eq!(spec.pod_selector, Some(Default::default()));
}

#[tokio::test]
async fn namespace_marked_not_global_exports_nothing() {
    let yaml = format!(
        "apiVersion: v1
kind: Namespace
metadata:
  name: private
  annotations: {{clustermesh.io/global: 'false'}}
---
{}{}apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: p
  namespace: private
  annotations: {{clustermesh.io/global: 'true'}}
spec:
  podSelector: {{}}
---
apiVersion: v1
kind: Node
metadata: {{name: n1}}
",
        pod("private", "db", "{app: db}", "10.0.0.7", ""),
        service(
            "private",
            "db",
            "{clustermesh.io/global: 'true'}",
            "10.96.0.7"
        ),
    );
    let d = both(&yaml).await;
    assert!(!d.endpoints["10.0.0.7"].endpoint.exported);
    assert!(d.identities.values().all(|(_, exported)| !exported));
    assert_eq!(d.identities.len(), 1);
    let s = &d.services["private/db"];
    assert!(s.global && !s.exported);
    assert!(!d.policies["private/p"].exported);
    assert!(d.nodes["n1"].exported, "nodes are not namespaced");
}

#[tokio::test]
async fn unseen_namespace_is_exported_until_it_arrives() {
    let objs = [
        pod("late", "p", "{app: x}", "10.0.0.8", ""),
        service("late", "s", "{clustermesh.io/global: 'true'}", "10.96.0.8"),
    ]
    .concat();
    let ns = "apiVersion: v1
kind: Namespace
metadata:
  name: late
  labels: {team: z}
  annotations: {clustermesh.io/global: 'false'}
";
    let before = both(&objs).await;
    assert!(before.endpoints["10.0.0.8"].endpoint.exported);
    assert!(before.services["late/s"].exported);
    let (labels_before, exported) = before.identities.values().next().expect("identity");
    assert!(*exported);
    assert!(!labels_before.contains_key("io.cilium.k8s.namespace.labels.team"));

    // kube path: the namespace arrives later
    let mut sim = harness::KubeSim::listed(&objs);
    sim.apply_yaml(ns);
    let after = sim.compute();
    // manifests path: the namespace file appears later
    let mut run = harness::ManifestsRun::start(&[("objs.yaml", &objs)]).await;
    run.write("ns.yaml", ns);
    run.wait_for("namespace", |r| {
        r.inv
            .count(clustermesh_apiserver::source::ObjectKind::Namespace)
            == 1
    })
    .await;
    assert_eq!(after, run.compute());

    assert!(!after.endpoints["10.0.0.8"].endpoint.exported);
    assert!(!after.services["late/s"].exported);
    let (labels_after, exported) = after.identities.values().next().expect("identity");
    assert!(!*exported);
    assert_eq!(
        labels_after
            .get("io.cilium.k8s.namespace.labels.team")
            .map(String::as_str),
        Some("z")
    );
    assert_ne!(
        before.endpoints["10.0.0.8"].labels_digest,
        after.endpoints["10.0.0.8"].labels_digest
    );
}
