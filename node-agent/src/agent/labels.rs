//! Identity labels and Kubernetes label selectors.
//!
//! An identity's labels (docs/sources.md) are the pod's labels plus three
//! kinds the source sets authoritatively:
//! `io.kubernetes.pod.namespace=<ns>`, each namespace label as
//! `io.cilium.k8s.namespace.labels.<key>=<value>`, and
//! `clustermesh.io/cluster=<cluster>`. A `k8s:` source prefix (Cilium's
//! notation, used in DESIGN §2) is accepted and ignored.
//!
//! Selectors see the cluster label as an ordinary label, so a selector
//! without `clustermesh.io/cluster` matches pods of every cluster (namespace
//! sameness) and one with it only the named clusters.

use std::collections::BTreeMap;

use clustermesh_proto::v1::{Identity, LabelSelector};

use super::identity_info::IdentityInfo;

pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";
pub const CLUSTER_LABEL: &str = "clustermesh.io/cluster";
/// Set by Kubernetes on every namespace; implied when the source omits it.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// An identity split into what selectors look at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityLabels {
    pub id: u32,
    pub cluster: String,
    pub namespace: String,
    /// Pod labels plus `clustermesh.io/cluster` (what pod selectors match).
    pub pod: BTreeMap<String, String>,
    /// Namespace labels plus `kubernetes.io/metadata.name` and
    /// `clustermesh.io/cluster` (what namespace selectors match).
    pub namespace_labels: BTreeMap<String, String>,
}

impl IdentityLabels {
    /// Splits an identity record's labels. The cluster comes from the
    /// `clustermesh.io/cluster` label, or the record's own cluster.
    pub fn from_record(rec: &Identity) -> Self {
        let labels = rec.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        Self::from_labels(rec.id, &rec.cluster, labels)
    }

    /// [`IdentityLabels::from_record`] of the agent's copy of a record.
    pub fn from_info(info: &IdentityInfo) -> Self {
        Self::from_labels(info.id, &info.cluster, info.labels())
    }

    fn from_labels<'a>(
        id: u32,
        cluster: &str,
        labels: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        let mut out = IdentityLabels {
            id,
            cluster: cluster.to_owned(),
            ..Default::default()
        };
        for (k, v) in labels {
            let k = k.strip_prefix("k8s:").unwrap_or(k);
            if k == NAMESPACE_LABEL {
                out.namespace = v.to_owned();
            } else if let Some(nk) = k.strip_prefix(NAMESPACE_LABELS_PREFIX) {
                out.namespace_labels.insert(nk.to_string(), v.to_owned());
            } else if k == CLUSTER_LABEL {
                out.cluster = v.to_owned();
            } else {
                out.pod.insert(k.to_string(), v.to_owned());
            }
        }
        out.pod.insert(CLUSTER_LABEL.into(), out.cluster.clone());
        out.namespace_labels
            .entry(NAMESPACE_NAME_LABEL.into())
            .or_insert_with(|| out.namespace.clone());
        out.namespace_labels
            .insert(CLUSTER_LABEL.into(), out.cluster.clone());
        out
    }
}

/// Whether `sel` matches `labels` (Kubernetes semantics: every matchLabels
/// pair and every expression must hold; an empty selector matches all).
/// An unknown operator matches nothing (fail closed).
pub fn matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    for (k, v) in &sel.match_labels {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for req in &sel.match_expressions {
        let have = labels.get(&req.key);
        let ok = match req.operator.as_str() {
            "In" => have.is_some_and(|h| req.values.contains(h)),
            "NotIn" => have.is_none_or(|h| !req.values.contains(h)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use clustermesh_proto::v1::LabelSelectorRequirement;

    fn ident() -> Identity {
        Identity {
            id: 65792,
            cluster: "c1".into(),
            labels: [
                ("app", "backend"),
                ("k8s:io.kubernetes.pod.namespace", "shop"),
                ("io.cilium.k8s.namespace.labels.team", "blue"),
                ("clustermesh.io/cluster", "c1"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            exported: true,
        }
    }

    #[test]
    fn splits_identity_labels() {
        let l = IdentityLabels::from_record(&ident());
        assert_eq!(l.namespace, "shop");
        assert_eq!(l.cluster, "c1");
        assert_eq!(l.pod.get("app").map(String::as_str), Some("backend"));
        assert_eq!(l.pod.get(CLUSTER_LABEL).map(String::as_str), Some("c1"));
        assert_eq!(
            l.namespace_labels.get("team").map(String::as_str),
            Some("blue")
        );
        assert_eq!(
            l.namespace_labels
                .get(NAMESPACE_NAME_LABEL)
                .map(String::as_str),
            Some("shop")
        );
        assert!(!l.pod.contains_key(NAMESPACE_LABEL));
    }

    #[test]
    fn selector_operators() {
        let l = IdentityLabels::from_record(&ident()).pod;
        let req = |op: &str, key: &str, vals: &[&str]| LabelSelector {
            match_labels: Default::default(),
            match_expressions: vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: vals.iter().map(|s| s.to_string()).collect(),
            }],
        };
        assert!(matches(&LabelSelector::default(), &l));
        assert!(matches(&req("In", "app", &["x", "backend"]), &l));
        assert!(!matches(&req("In", "app", &["x"]), &l));
        assert!(matches(&req("NotIn", "app", &["x"]), &l));
        assert!(matches(&req("NotIn", "tier", &["x"]), &l));
        assert!(matches(&req("Exists", "app", &[]), &l));
        assert!(!matches(&req("DoesNotExist", "app", &[]), &l));
        assert!(!matches(&req("Bogus", "app", &[]), &l));
        assert!(matches(&req("In", CLUSTER_LABEL, &["c1", "c3"]), &l));
        let ml = LabelSelector {
            match_labels: [("app".to_string(), "frontend".to_string())].into(),
            match_expressions: vec![],
        };
        assert!(!matches(&ml, &l));
    }
}
