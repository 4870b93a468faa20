//! What the agent keeps of one identity record ([`IdentityInfo`]): its
//! number, its cluster and its labels as one sorted slice. A decoded record
//! keeps its labels in a `BTreeMap`, whose first node has room for eleven
//! pairs: ~540 bytes for the usual three labels, 13.6 MB at 25,000 remote
//! identities (docs/benchmarks.md, the agent's heap profile).

use clustermesh_proto::v1::Identity;

/// One identity as the agent keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityInfo {
    pub id: u32,
    pub cluster: String,
    /// (key, value), sorted by key (the record's map order).
    labels: Box<[(Box<str>, Box<str>)]>,
}

impl IdentityInfo {
    /// The labels, sorted by key.
    pub fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.labels.iter().map(|(k, v)| (&**k, &**v))
    }
}

impl From<Identity> for IdentityInfo {
    fn from(i: Identity) -> Self {
        IdentityInfo {
            id: i.id,
            cluster: i.cluster,
            labels: i
                .labels
                .into_iter()
                .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_number_cluster_and_sorted_labels() {
        let i = IdentityInfo::from(Identity {
            id: 0x02_0100,
            cluster: "c2".into(),
            labels: [("k8s:app", "web"), ("clustermesh.io/cluster", "c2")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            exported: true,
        });
        assert_eq!((i.id, i.cluster.as_str()), (0x02_0100, "c2"));
        assert_eq!(
            i.labels().collect::<Vec<_>>(),
            [("clustermesh.io/cluster", "c2"), ("k8s:app", "web")]
        );
    }
}
