//! What the agent keeps of one identity record ([`IdentityInfo`]): its
//! number, its cluster and its labels as one sorted slice. A decoded record
//! keeps its labels in a `BTreeMap`, whose first node has room for eleven
//! pairs: ~540 bytes for the usual three labels, 13.6 MB at 25,000 remote
//! identities (docs/benchmarks.md, the agent's heap profile). A slice of
//! boxed pairs, the next step, was still seven allocations for three
//! labels; they are now one.

use clustermesh_proto::v1::Identity;
use smol_str::SmolStr;

/// One identity as the agent keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityInfo {
    pub id: u32,
    /// Inline (no allocation) for a name of up to 23 bytes.
    pub cluster: SmolStr,
    /// Every (key, value), sorted by key (the record's map order), in one
    /// allocation: each string as its length (4 bytes, little-endian) and
    /// its bytes. A length, not a separator, so no label text can split
    /// a label.
    labels: Box<[u8]>,
}

/// The string at the start of `buf` ([`IdentityInfo::labels`]'s encoding)
/// and what follows it; `None` at the end.
fn next_str(buf: &[u8]) -> Option<(&str, &[u8])> {
    let (len, rest) = buf.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    let (text, rest) = rest.split_at_checked(len)?;
    // Written from a `&str` (`From<Identity>`), so always UTF-8.
    Some((std::str::from_utf8(text).unwrap_or_default(), rest))
}

fn push_str(buf: &mut Vec<u8>, s: &str) {
    // A record is bounded by the message limit, far below 4 GiB.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&s.as_bytes()[..len as usize]);
}

impl IdentityInfo {
    /// The labels, sorted by key.
    pub fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut rest: &[u8] = &self.labels;
        std::iter::from_fn(move || {
            let (k, after) = next_str(rest)?;
            let (v, after) = next_str(after)?;
            rest = after;
            Some((k, v))
        })
    }
}

impl From<Identity> for IdentityInfo {
    fn from(i: Identity) -> Self {
        let size: usize = i.labels.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
        let mut labels = Vec::with_capacity(size);
        for (k, v) in &i.labels {
            push_str(&mut labels, k);
            push_str(&mut labels, v);
        }
        IdentityInfo {
            id: i.id,
            cluster: SmolStr::from(i.cluster),
            labels: labels.into_boxed_slice(),
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
            labels: [
                ("k8s:app", "web"),
                ("clustermesh.io/cluster", "c2"),
                ("a\0b", ""),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            exported: true,
        });
        assert_eq!((i.id, i.cluster.as_str()), (0x02_0100, "c2"));
        assert_eq!(
            i.labels().collect::<Vec<_>>(),
            [
                ("a\0b", ""),
                ("clustermesh.io/cluster", "c2"),
                ("k8s:app", "web")
            ],
            "a NUL or an empty value is kept as it is"
        );
    }
}
