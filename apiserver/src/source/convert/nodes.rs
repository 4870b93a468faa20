//! Kubernetes Nodes → node records.

use clustermesh_proto::v1::Node;
use k8s_openapi::api::core::v1 as core;

use super::{GATEWAY_LABEL, is_true};

/// The node record: InternalIP/ExternalIP addresses (in the order the node
/// lists them), pod CIDRs from `spec.podCIDRs` (or `spec.podCIDR`), the
/// gateway flag from the `clustermesh.io/gateway: "true"` label, all labels.
/// Nodes are always exported.
pub fn node_record(node: &core::Node, cluster: &str) -> Node {
    let mut internal_ips = Vec::new();
    let mut external_ips = Vec::new();
    for a in node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
    {
        let list = match a.type_.as_str() {
            "InternalIP" => &mut internal_ips,
            "ExternalIP" => &mut external_ips,
            _ => continue,
        };
        if !a.address.is_empty() && !list.contains(&a.address) {
            list.push(a.address.clone());
        }
    }
    let spec = node.spec.as_ref();
    let mut pod_cidrs: Vec<String> = spec
        .and_then(|s| s.pod_cidrs.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| !c.is_empty())
        .collect();
    if pod_cidrs.is_empty()
        && let Some(c) = spec
            .and_then(|s| s.pod_cidr.as_ref())
            .filter(|c| !c.is_empty())
    {
        pod_cidrs.push(c.clone());
    }
    pod_cidrs.dedup();
    let labels = node.metadata.labels.clone().unwrap_or_default();
    Node {
        name: node.metadata.name.clone().unwrap_or_default(),
        internal_ips,
        external_ips,
        pod_cidrs,
        gateway: labels.get(GATEWAY_LABEL).is_some_and(|v| is_true(v)),
        gateway_live: None,
        labels,
        cluster: cluster.to_string(),
        exported: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn addr(t: &str, a: &str) -> NodeAddress {
        NodeAddress {
            type_: t.into(),
            address: a.into(),
        }
    }

    #[test]
    fn node_addresses_cidrs_gateway_labels() {
        let n = core::Node {
            metadata: ObjectMeta {
                name: Some("gw".into()),
                labels: Some([(GATEWAY_LABEL.to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: Some("10.1.0.0/24".into()),
                pod_cidrs: Some(vec!["10.1.0.0/24".into(), "10.1.1.0/24".into()]),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(vec![
                    addr("Hostname", "gw"),
                    addr("InternalIP", "192.168.1.10"),
                    addr("ExternalIP", "203.0.113.1"),
                ]),
                ..Default::default()
            }),
        };
        let r = node_record(&n, "c1");
        assert_eq!(r.name, "gw");
        assert_eq!(r.internal_ips, vec!["192.168.1.10"]);
        assert_eq!(r.external_ips, vec!["203.0.113.1"]);
        assert_eq!(r.pod_cidrs, vec!["10.1.0.0/24", "10.1.1.0/24"]);
        assert!(r.gateway && r.exported);
        assert_eq!(r.cluster, "c1");
        assert_eq!(
            r.labels.get(GATEWAY_LABEL).map(String::as_str),
            Some("true")
        );
    }

    #[test]
    fn pod_cidr_fallback_and_non_gateway() {
        let n = core::Node {
            metadata: ObjectMeta {
                name: Some("w".into()),
                labels: Some([(GATEWAY_LABEL.to_string(), "no".to_string())].into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: Some("10.1.1.0/24".into()),
                ..Default::default()
            }),
            status: None,
        };
        let r = node_record(&n, "c1");
        assert_eq!(r.pod_cidrs, vec!["10.1.1.0/24"]);
        assert!(!r.gateway);
        assert!(r.internal_ips.is_empty());
    }
}
