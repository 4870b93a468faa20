//! The Kubernetes manifests of one test cluster, matching the topology: the
//! gateway node (gateway label, underlay IP as InternalIP, pod CIDR), its
//! pods (status.podIP/hostIP, nodeName), the global `shop/backend` service
//! and (optionally) the global NetworkPolicy admitting only app=frontend to
//! app=backend on TCP 8080. Files are written atomically, so the manifests
//! source never reads half a file; each part has its own file so a test can
//! edit one.

use std::path::Path;

use clustermesh_integration::manifests::{self, write};

use super::topology::Gateway;

pub const BACKEND_PORT: u16 = 8080;

/// The global service of one cluster.
pub struct ServiceSpec<'a> {
    pub cluster_ip: &'a str,
    /// `none`, `local` or `remote`.
    pub affinity: &'a str,
    /// (backend IP, ready).
    pub backends: Vec<(String, bool)>,
}

pub fn service_yaml(s: &ServiceSpec<'_>) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: backend\n  namespace: shop\n  annotations:\n    clustermesh.io/global: \"true\"\n    clustermesh.io/affinity: {}\nspec:\n  clusterIP: {ip}\n  clusterIPs: [{ip}]\n  ports:\n  - name: http\n    port: 80\n    protocol: TCP\n    targetPort: {BACKEND_PORT}\n",
        s.affinity,
        ip = s.cluster_ip
    );
    y.push_str(&format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: backend-1\n  namespace: shop\n  labels:\n    kubernetes.io/service-name: backend\naddressType: IPv4\nports:\n- name: http\n  port: {BACKEND_PORT}\n  protocol: TCP\n"
    ));
    if s.backends.is_empty() {
        y.push_str("endpoints: []\n");
    } else {
        y.push_str("endpoints:\n");
    }
    for (ip, ready) in &s.backends {
        y.push_str(&format!(
            "- addresses: [\"{ip}\"]\n  conditions:\n    ready: {ready}\n    serving: {ready}\n"
        ));
    }
    y
}

pub const POLICY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: backend-allow-frontend
  namespace: shop
  annotations:
    clustermesh.io/global: \"true\"
spec:
  podSelector:
    matchLabels:
      app: backend
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: frontend
    ports:
    - protocol: TCP
      port: 8080
";

/// The pods file for `gw`, leaving out the pods named in `except`.
pub fn pods_yaml(gw: &Gateway, except: &[&str]) -> String {
    let ul = gw.underlay_ip.to_string();
    let docs: Vec<String> = gw
        .pods
        .iter()
        .filter(|p| !except.contains(&p.name.as_str()))
        .map(|p| {
            manifests::pod(
                "shop",
                &p.name,
                &[("app", &p.app)],
                &p.ip.to_string(),
                &gw.node,
                &ul,
                BACKEND_PORT,
            )
        })
        .collect();
    if docs.is_empty() {
        return String::new();
    }
    manifests::docs(&docs)
}

/// Writes every file of the cluster behind `gw` into `dir`.
pub fn write_cluster(dir: &Path, gw: &Gateway, svc: &ServiceSpec<'_>, policy: bool) {
    write(
        dir,
        "00-namespaces.yaml",
        &manifests::namespace("shop", &[]),
    )
    .expect("write");
    let node = manifests::node(&gw.node, &gw.underlay_ip.to_string(), &gw.pod_cidr, true);
    write(dir, "10-nodes.yaml", &node).expect("write");
    write(dir, "20-pods.yaml", &pods_yaml(gw, &[])).expect("write");
    write(dir, "30-services.yaml", &service_yaml(svc)).expect("write");
    if policy {
        write(dir, "40-policies.yaml", POLICY).expect("write");
    }
}
