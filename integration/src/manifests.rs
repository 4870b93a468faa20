//! Small Kubernetes manifests for tests, written atomically (temp file +
//! rename) so the manifests source never reads a half-written file.

use std::path::Path;

/// Writes `content` to `dir/name` atomically.
pub fn write(dir: &Path, name: &str, content: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

pub fn namespace(name: &str, annotations: &[(&str, &str)]) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/metadata.name: {name}\n{}",
        block("  annotations", annotations)
    )
}

pub fn node(name: &str, ip: &str, pod_cidr: &str, gateway: bool) -> String {
    let gw = if gateway {
        "\n    clustermesh.io/gateway: \"true\""
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/hostname: {name}{gw}\nspec:\n  podCIDR: {pod_cidr}\n  podCIDRs: [{pod_cidr}]\nstatus:\n  addresses:\n  - type: InternalIP\n    address: {ip}\n"
    )
}

/// A Node like [`node`] with an ExternalIP as well (a gateway peers reach there).
pub fn node_with_external(
    name: &str,
    ip: &str,
    external_ip: &str,
    pod_cidr: &str,
    gateway: bool,
) -> String {
    format!(
        "{}  - type: ExternalIP\n    address: {external_ip}\n",
        node(name, ip, pod_cidr, gateway)
    )
}

/// A running pod with a named port `http` on `port`.
pub fn pod(
    ns: &str,
    name: &str,
    labels: &[(&str, &str)],
    ip: &str,
    node: &str,
    host_ip: &str,
    port: u16,
) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n{}spec:\n  nodeName: {node}\n  containers:\n  - name: main\n    image: example\n    ports:\n    - name: http\n      containerPort: {port}\nstatus:\n  phase: Running\n  hostIP: {host_ip}\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n",
        block("  labels", labels)
    )
}

/// A ClusterIP service (annotated global when `global`) selecting backends
/// through an EndpointSlice with the given ready addresses.
pub fn service(
    ns: &str,
    name: &str,
    cluster_ip: &str,
    port: u16,
    target: u16,
    global: bool,
    backends: &[&str],
) -> String {
    let ann: &[(&str, &str)] = if global {
        &[("clustermesh.io/global", "\"true\"")]
    } else {
        &[]
    };
    let mut s = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\n{}spec:\n  clusterIP: {cluster_ip}\n  clusterIPs: [{cluster_ip}]\n  ports:\n  - name: http\n    port: {port}\n    protocol: TCP\n    targetPort: {target}\n",
        block("  annotations", ann)
    );
    s.push_str(&format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: {ns}\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n- name: http\n  port: {target}\n  protocol: TCP\n"
    ));
    if backends.is_empty() {
        s.push_str("endpoints: []\n");
    } else {
        s.push_str("endpoints:\n");
    }
    for b in backends {
        s.push_str(&format!(
            "- addresses: [\"{b}\"]\n  conditions:\n    ready: true\n"
        ));
    }
    s
}

fn block(title: &str, kv: &[(&str, &str)]) -> String {
    if kv.is_empty() {
        return String::new();
    }
    let mut s = format!("{title}:\n");
    for (k, v) in kv {
        s.push_str(&format!("    {k}: {v}\n"));
    }
    s
}

/// Joins documents into one multi-document file.
pub fn docs(parts: &[String]) -> String {
    parts.join("---\n")
}
