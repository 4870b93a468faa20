//! Kubernetes objects → clustermesh records: pure functions, shared by every
//! source (the `kubernetes` watchers and the `manifests:` directory feed the
//! same [`Inventory`](super::Inventory), which keeps per object the derived
//! part these produce: `PodFacts`, `ServiceFacts`, `SliceFacts`,
//! `NamespaceInfo`, the node and policy records).
//!
//! The rules are documented in docs/sources.md.

use std::collections::BTreeMap;

use clustermesh_proto::v1::{Endpoint, Node, Policy, Service};
use k8s_openapi::api::core::v1::Namespace;
use sha2::{Digest, Sha256};

pub mod nodes;
pub mod pods;
pub mod policies;
pub mod services;

pub use pods::PodFacts;
pub use services::{ServiceFacts, SliceFacts};

/// A set of labels, in key order.
pub type LabelSet = BTreeMap<String, String>;

/// Identity label naming the cluster a workload runs in (authoritative).
pub const CLUSTER_LABEL: &str = "clustermesh.io/cluster";
/// Identity label naming the pod's namespace (authoritative).
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// Prefix under which a namespace's labels join its pods' identity labels.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";
/// Annotation on services, policies and namespaces.
pub const GLOBAL_ANNOTATION: &str = "clustermesh.io/global";
/// Node label marking a gateway node.
pub const GATEWAY_LABEL: &str = "clustermesh.io/gateway";

/// Everything a cluster's Kubernetes objects turn into.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    /// Key: node name.
    pub nodes: BTreeMap<String, Node>,
    /// Key: pod IP (one record per IP of a dual-stack pod).
    pub endpoints: BTreeMap<String, PendingEndpoint>,
    /// Key: "namespace/name".
    pub services: BTreeMap<String, Service>,
    /// Key: "namespace/name".
    pub policies: BTreeMap<String, Policy>,
    /// Key: [`labels_digest`] of the label set; value: (labels, exported).
    pub identities: BTreeMap<String, (LabelSet, bool)>,
    /// Problems found while converting (invalid annotation values, IP
    /// conflicts), sorted. The conversion stays pure: callers log these.
    pub warnings: Vec<String>,
}

/// An endpoint whose identity is not allocated yet.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingEndpoint {
    /// The record, with `identity = 0` (filled in by the allocator).
    pub endpoint: Endpoint,
    /// Key into [`Desired::identities`].
    pub labels_digest: String,
}

/// Hex SHA-256 over `key=value\n` lines in key order.
pub fn labels_digest(labels: &LabelSet) -> String {
    let mut h = Sha256::new();
    for (k, v) in labels {
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

/// What the conversion needs to know about a namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub labels: LabelSet,
    /// False when the namespace is annotated `clustermesh.io/global: "false"`.
    pub exported: bool,
}

impl NamespaceInfo {
    /// A namespace the inventory has not seen (yet): exported, no labels.
    pub fn unseen() -> Self {
        NamespaceInfo {
            labels: LabelSet::new(),
            exported: true,
        }
    }

    pub fn from_namespace(ns: &Namespace) -> Self {
        let exported = !ns
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(GLOBAL_ANNOTATION))
            .is_some_and(|v| is_false(v));
        NamespaceInfo {
            labels: ns.metadata.labels.clone().unwrap_or_default(),
            exported,
        }
    }
}

/// `"true"`, case-insensitive, surrounding blanks ignored.
pub(crate) fn is_true(v: &str) -> bool {
    v.trim().eq_ignore_ascii_case("true")
}

/// `"false"`, case-insensitive, surrounding blanks ignored.
pub(crate) fn is_false(v: &str) -> bool {
    v.trim().eq_ignore_ascii_case("false")
}

/// A protocol field, defaulting to TCP as Kubernetes does.
pub(crate) fn protocol_or_tcp(p: Option<&String>) -> String {
    match p {
        Some(p) if !p.is_empty() => p.clone(),
        _ => "TCP".to_string(),
    }
}

/// A Kubernetes port number as the proto's u32 (0 when out of range).
pub(crate) fn port_u32(p: i32) -> u32 {
    u32::try_from(p).unwrap_or(0)
}

/// "namespace/name".
pub(crate) fn ns_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn digest_is_sha256_of_sorted_lines() {
        let mut l = LabelSet::new();
        l.insert("b".into(), "2".into());
        l.insert("a".into(), "1".into());
        let expected = hex::encode(Sha256::digest(b"a=1\nb=2\n"));
        assert_eq!(labels_digest(&l), expected);
        assert_eq!(
            labels_digest(&LabelSet::new()),
            hex::encode(Sha256::digest(b""))
        );
    }

    #[test]
    fn namespace_export_follows_the_global_annotation() {
        let mut ns = Namespace {
            metadata: ObjectMeta {
                name: Some("private".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(NamespaceInfo::from_namespace(&ns).exported);
        ns.metadata.annotations =
            Some([(GLOBAL_ANNOTATION.to_string(), "False".to_string())].into());
        assert!(!NamespaceInfo::from_namespace(&ns).exported);
        ns.metadata.annotations =
            Some([(GLOBAL_ANNOTATION.to_string(), "true".to_string())].into());
        assert!(NamespaceInfo::from_namespace(&ns).exported);
        assert!(NamespaceInfo::unseen().exported);
    }
}
