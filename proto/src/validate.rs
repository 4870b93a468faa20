//! Validation of cluster names, cluster IDs and the mesh size.

use thiserror::Error;

/// The longest cluster name accepted (a DNS label, capped like Cilium's).
pub const MAX_CLUSTER_NAME_LEN: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValidationError {
    #[error("cluster name is empty")]
    EmptyName,
    #[error("cluster name {name:?} is longer than {MAX_CLUSTER_NAME_LEN} characters")]
    NameTooLong { name: String },
    #[error(
        "cluster name {name:?} is not a DNS label (lowercase letters, digits and '-', starting and ending with a letter or digit)"
    )]
    NameNotDnsLabel { name: String },
    #[error("cluster name \"default\" is reserved; give each cluster a unique name")]
    NameReserved,
    #[error("cluster ID {id} is out of range: must be 1..={max} with max-connected-clusters={max}")]
    IdOutOfRange { id: u32, max: u32 },
    #[error("max-connected-clusters must be 255 or 511, got {0}")]
    BadMaxClusters(u32),
}

/// Checks a cluster name: a DNS label of at most 32 characters, not `default`.
pub fn cluster_name(name: &str) -> Result<(), ValidationError> {
    if name.is_empty() {
        return Err(ValidationError::EmptyName);
    }
    if name.len() > MAX_CLUSTER_NAME_LEN {
        return Err(ValidationError::NameTooLong {
            name: name.to_owned(),
        });
    }
    let bytes = name.as_bytes();
    let inner_ok = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    let ends_ok =
        bytes[0].is_ascii_alphanumeric() && bytes[bytes.len() - 1].is_ascii_alphanumeric();
    if !inner_ok || !ends_ok {
        return Err(ValidationError::NameNotDnsLabel {
            name: name.to_owned(),
        });
    }
    if name == "default" {
        return Err(ValidationError::NameReserved);
    }
    Ok(())
}

/// Checks a cluster ID against the mesh size (255 or 511 clusters).
pub fn cluster_id(id: u32, max_connected_clusters: u32) -> Result<(), ValidationError> {
    max_clusters(max_connected_clusters)?;
    if id == 0 || id > max_connected_clusters {
        return Err(ValidationError::IdOutOfRange {
            id,
            max: max_connected_clusters,
        });
    }
    Ok(())
}

/// Checks the mesh size setting.
pub fn max_clusters(max_connected_clusters: u32) -> Result<(), ValidationError> {
    match max_connected_clusters {
        255 | 511 => Ok(()),
        other => Err(ValidationError::BadMaxClusters(other)),
    }
}

/// Checks a whole ClusterInfo.
pub fn cluster_info(info: &crate::v1::ClusterInfo) -> Result<(), ValidationError> {
    cluster_name(&info.name)?;
    cluster_id(info.id, info.max_connected_clusters)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names() {
        for ok in ["a", "cluster1", "eu-west-1", "a-b-c", &"x".repeat(32)] {
            assert_eq!(cluster_name(ok), Ok(()), "{ok}");
        }
        assert_eq!(cluster_name(""), Err(ValidationError::EmptyName));
        assert_eq!(cluster_name("default"), Err(ValidationError::NameReserved));
        assert!(matches!(
            cluster_name(&"x".repeat(33)),
            Err(ValidationError::NameTooLong { .. })
        ));
        for bad in ["-a", "a-", "A", "a_b", "a.b", "a b", "é"] {
            assert!(
                matches!(
                    cluster_name(bad),
                    Err(ValidationError::NameNotDnsLabel { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn ids() {
        assert!(cluster_id(1, 255).is_ok());
        assert!(cluster_id(255, 255).is_ok());
        assert!(cluster_id(256, 255).is_err());
        assert!(cluster_id(511, 511).is_ok());
        assert!(cluster_id(512, 511).is_err());
        assert!(cluster_id(0, 255).is_err());
        assert_eq!(
            cluster_id(3, 300),
            Err(ValidationError::BadMaxClusters(300))
        );
    }

    proptest! {
        #[test]
        fn accepted_names_are_dns_labels(name in "[a-z0-9-]{0,40}") {
            let ok = cluster_name(&name).is_ok();
            let expect = !name.is_empty() && name.len() <= 32 && !name.starts_with('-')
                && !name.ends_with('-') && name != "default";
            prop_assert_eq!(ok, expect);
        }

        #[test]
        fn any_string_never_panics(name in ".*") {
            let _ = cluster_name(&name);
        }
    }
}
