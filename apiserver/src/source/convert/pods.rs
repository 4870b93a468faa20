//! Pods (+ their namespace) → identity labels and endpoint records.

use clustermesh_proto::v1::{Endpoint, NamedPort};
use k8s_openapi::api::core::v1::Pod;

use super::{
    CLUSTER_LABEL, LabelSet, NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX, NamespaceInfo, port_u32,
    protocol_or_tcp,
};

/// Pod labels set by controllers per replica/revision: they carry no
/// security meaning and would split one workload into many identities.
pub const NON_SECURITY_LABELS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "job-name",
    "controller-uid",
];

/// Label key prefixes dropped for the same reason.
pub const NON_SECURITY_PREFIXES: &[&str] = &["batch.kubernetes.io/"];

/// Whether a pod label key takes part in the pod's identity. Keys the
/// conversion sets itself (namespace, namespace labels, cluster) are not
/// taken from the pod, so a pod cannot claim another namespace or cluster.
pub fn is_identity_label(key: &str) -> bool {
    !NON_SECURITY_LABELS.contains(&key)
        && !NON_SECURITY_PREFIXES.iter().any(|p| key.starts_with(p))
        && key != NAMESPACE_LABEL
        && key != CLUSTER_LABEL
        && !key.starts_with(NAMESPACE_LABELS_PREFIX)
}

/// The identity labels of a pod: its security-relevant labels,
/// `io.kubernetes.pod.namespace=<ns>`, each namespace label as
/// `io.cilium.k8s.namespace.labels.<key>=<value>`, and
/// `clustermesh.io/cluster=<cluster>`.
pub fn pod_identity_labels(pod: &Pod, ns: &NamespaceInfo, cluster: &str) -> LabelSet {
    let facts = PodFacts {
        labels: security_labels(pod).into_iter().collect(),
        ..PodFacts::default()
    };
    facts.identity_labels(
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        ns,
        cluster,
    )
}

/// The pod's own labels that take part in its identity.
fn security_labels(pod: &Pod) -> LabelSet {
    pod.metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| is_identity_label(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The IPs a pod is an endpoint for: none unless it has `status.podIP`, is
/// not `hostNetwork` and has not finished (phase Succeeded/Failed); else
/// every IP of `status.podIPs` (or just `podIP`), without duplicates.
pub fn endpoint_ips(pod: &Pod) -> Vec<String> {
    if pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
    {
        return Vec::new();
    }
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return Vec::new();
    }
    let Some(primary) = status.pod_ip.as_ref().filter(|ip| !ip.is_empty()) else {
        return Vec::new();
    };
    let mut ips = vec![primary.clone()];
    for ip in status.pod_ips.iter().flatten() {
        if !ip.ip.is_empty() && !ips.contains(&ip.ip) {
            ips.push(ip.ip.clone());
        }
    }
    ips
}

/// Named container ports (name, containerPort, protocol defaulting to TCP),
/// sorted and without duplicates.
pub fn named_ports(pod: &Pod) -> Vec<NamedPort> {
    let mut ports: Vec<NamedPort> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let name = p.name.as_ref().filter(|n| !n.is_empty())?;
            Some(NamedPort {
                name: name.clone(),
                port: port_u32(p.container_port),
                protocol: protocol_or_tcp(p.protocol.as_ref()),
            })
        })
        .collect();
    ports.sort_by(|a, b| (&a.name, a.port, &a.protocol).cmp(&(&b.name, b.port, &b.protocol)));
    ports.dedup();
    ports
}

/// One endpoint record per IP of the pod (identity left 0).
pub fn pod_endpoints(pod: &Pod, ns: &NamespaceInfo, cluster: &str) -> Vec<Endpoint> {
    let facts = PodFacts::from_pod(pod);
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    facts
        .ips
        .iter()
        .map(|ip| facts.endpoint(ip, namespace, name, ns, cluster))
        .collect()
}

/// What the conversion reads of one Pod, kept per pod by the inventory
/// instead of the object (its namespace and name are the inventory's key).
/// A pod that is not an endpoint (no IP, host network, finished) keeps only
/// `ips` empty: it yields no record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodFacts {
    /// The labels that take part in the identity ([`is_identity_label`]), in
    /// key order (a list: a small map costs a whole B-tree node).
    pub labels: Vec<(String, String)>,
    /// [`endpoint_ips`]: empty when the pod is no endpoint.
    pub ips: Vec<String>,
    /// `status.hostIP`.
    pub node_ip: String,
    /// `spec.nodeName`.
    pub node_name: String,
    /// [`named_ports`].
    pub named_ports: Vec<NamedPort>,
    /// `metadata.deletionTimestamp` is set (it yields its IPs to a live pod).
    pub terminating: bool,
}

impl PodFacts {
    pub fn from_pod(pod: &Pod) -> PodFacts {
        let ips = endpoint_ips(pod);
        if ips.is_empty() {
            return PodFacts::default();
        }
        PodFacts {
            labels: security_labels(pod).into_iter().collect(),
            ips,
            node_ip: pod
                .status
                .as_ref()
                .and_then(|s| s.host_ip.clone())
                .unwrap_or_default(),
            node_name: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            named_ports: named_ports(pod),
            terminating: pod.metadata.deletion_timestamp.is_some(),
        }
    }

    /// See [`pod_identity_labels`].
    pub fn identity_labels(&self, namespace: &str, ns: &NamespaceInfo, cluster: &str) -> LabelSet {
        let mut labels: LabelSet = self.labels.iter().cloned().collect();
        labels.insert(NAMESPACE_LABEL.to_string(), namespace.to_string());
        for (k, v) in &ns.labels {
            labels.insert(format!("{NAMESPACE_LABELS_PREFIX}{k}"), v.clone());
        }
        labels.insert(CLUSTER_LABEL.to_string(), cluster.to_string());
        labels
    }

    /// The endpoint record of one of its IPs (identity left 0).
    pub fn endpoint(
        &self,
        ip: &str,
        namespace: &str,
        name: &str,
        ns: &NamespaceInfo,
        cluster: &str,
    ) -> Endpoint {
        Endpoint {
            ip: ip.to_string(),
            identity: 0,
            node_ip: self.node_ip.clone(),
            node_name: self.node_name.clone(),
            namespace: namespace.to_string(),
            pod: name.to_string(),
            named_ports: self.named_ports.clone(),
            cluster: cluster.to_string(),
            exported: ns.exported,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodIP, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(labels: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("shop".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![
                        ContainerPort {
                            name: Some("http".into()),
                            container_port: 8080,
                            ..Default::default()
                        },
                        ContainerPort {
                            container_port: 9090,
                            ..Default::default()
                        },
                        ContainerPort {
                            name: Some("dns".into()),
                            container_port: 53,
                            protocol: Some("UDP".into()),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some("10.0.0.1".into()),
                host_ip: Some("192.168.0.1".into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn identity_labels_drop_non_security_and_add_namespace_and_cluster() {
        let p = pod(&[
            ("app", "web"),
            ("pod-template-hash", "abc"),
            ("controller-revision-hash", "x"),
            ("pod-template-generation", "1"),
            ("statefulset.kubernetes.io/pod-name", "web-0"),
            ("job-name", "j"),
            ("controller-uid", "u"),
            ("batch.kubernetes.io/job-name", "j"),
            ("clustermesh.io/cluster", "spoofed"),
            ("io.kubernetes.pod.namespace", "kube-system"),
            ("io.cilium.k8s.namespace.labels.team", "spoofed"),
        ]);
        let ns = NamespaceInfo {
            labels: [("team".to_string(), "a".to_string())].into(),
            exported: true,
        };
        let l = pod_identity_labels(&p, &ns, "c1");
        let expected: LabelSet = [
            ("app", "web"),
            ("clustermesh.io/cluster", "c1"),
            ("io.cilium.k8s.namespace.labels.team", "a"),
            ("io.kubernetes.pod.namespace", "shop"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(l, expected);
    }

    #[test]
    fn endpoint_fields_and_named_ports() {
        let eps = pod_endpoints(&pod(&[]), &NamespaceInfo::unseen(), "c1");
        assert_eq!(eps.len(), 1);
        let e = &eps[0];
        assert_eq!(e.ip, "10.0.0.1");
        assert_eq!(e.node_ip, "192.168.0.1");
        assert_eq!(e.node_name, "n1");
        assert_eq!((e.namespace.as_str(), e.pod.as_str()), ("shop", "p"));
        assert_eq!(
            (e.cluster.as_str(), e.exported, e.identity),
            ("c1", true, 0)
        );
        let ports: Vec<_> = e
            .named_ports
            .iter()
            .map(|p| (p.name.as_str(), p.port, p.protocol.as_str()))
            .collect();
        assert_eq!(ports, vec![("dns", 53, "UDP"), ("http", 8080, "TCP")]);
    }

    #[test]
    fn dual_stack_pods_get_one_endpoint_per_ip() {
        let mut p = pod(&[]);
        if let Some(s) = p.status.as_mut() {
            s.pod_ips = Some(vec![
                PodIP {
                    ip: "10.0.0.1".into(),
                },
                PodIP {
                    ip: "fd00::1".into(),
                },
            ]);
        }
        let ips: Vec<_> = pod_endpoints(&p, &NamespaceInfo::unseen(), "c")
            .into_iter()
            .map(|e| e.ip)
            .collect();
        assert_eq!(ips, vec!["10.0.0.1", "fd00::1"]);
    }

    #[test]
    fn ineligible_pods_have_no_endpoints() {
        for phase in ["Succeeded", "Failed"] {
            let mut p = pod(&[]);
            if let Some(s) = p.status.as_mut() {
                s.phase = Some(phase.into());
            }
            assert!(endpoint_ips(&p).is_empty(), "{phase}");
        }
        let mut p = pod(&[]);
        if let Some(s) = p.spec.as_mut() {
            s.host_network = Some(true);
        }
        assert!(endpoint_ips(&p).is_empty());
        let mut p = pod(&[]);
        if let Some(s) = p.status.as_mut() {
            s.pod_ip = None;
        }
        assert!(endpoint_ips(&p).is_empty());
        let mut p = pod(&[]);
        if let Some(s) = p.status.as_mut() {
            s.phase = Some("Pending".into());
        }
        assert_eq!(endpoint_ips(&p), vec!["10.0.0.1"]);
    }
}
