//! The 24-bit security identity: the cluster ID in the top bits, the
//! cluster-local number below (Cilium-compatible, so it fits a VXLAN/Geneve VNI).
//!
//! | mode (max clusters) | cluster bits | local bits | local numbers |
//! |---------------------|--------------|------------|---------------|
//! | 255                 | 16–23        | 0–15       | 256..=65535   |
//! | 511                 | 15–23        | 0–14       | 256..=32767   |
//!
//! Identities 1..=255 are reserved and cluster-independent.

use thiserror::Error;

/// Identities are 24 bits wide: they travel in the VNI.
pub const IDENTITY_BITS: u32 = 24;
/// The largest value an identity can take.
pub const MAX_IDENTITY: u32 = (1 << IDENTITY_BITS) - 1;
/// The first cluster-local number handed out by allocation.
pub const MIN_LOCAL: u32 = 256;

/// Reserved, cluster-independent identities.
pub mod reserved {
    pub const HOST: u32 = 1;
    pub const WORLD: u32 = 2;
    pub const UNMANAGED: u32 = 3;
    pub const HEALTH: u32 = 4;
    pub const INIT: u32 = 5;
    pub const REMOTE_NODE: u32 = 6;
    pub const KUBE_APISERVER: u32 = 7;
    /// The highest reserved identity.
    pub const MAX: u32 = 255;
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdentityError {
    #[error("max-connected-clusters must be 255 or 511, got {0}")]
    BadMode(u32),
    #[error("cluster ID {cluster_id} is outside 1..={max}")]
    ClusterOutOfRange { cluster_id: u32, max: u32 },
    #[error("cluster-local identity number {local} is outside {MIN_LOCAL}..={max}")]
    LocalOutOfRange { local: u32, max: u32 },
    #[error("identity {0} is wider than 24 bits")]
    TooWide(u32),
    #[error("identity 0 is not valid")]
    Zero,
    #[error("identity {id} has cluster ID 0 but is not a reserved identity (1..=255)")]
    NoCluster { id: u32 },
}

/// The mesh size mode: how many bits the cluster ID takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClusterMode {
    /// Up to 255 clusters; cluster ID in bits 16–23.
    Max255,
    /// Up to 511 clusters; cluster ID in bits 15–23.
    Max511,
}

/// What an identity is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityKind {
    /// 1..=255, the same in every cluster.
    Reserved(u32),
    /// Allocated by the cluster `cluster_id`.
    Cluster { cluster_id: u32, local: u32 },
}

impl ClusterMode {
    /// The mode for a `max-connected-clusters` setting.
    pub fn from_max_clusters(max: u32) -> Result<Self, IdentityError> {
        match max {
            255 => Ok(Self::Max255),
            511 => Ok(Self::Max511),
            other => Err(IdentityError::BadMode(other)),
        }
    }

    pub fn max_clusters(self) -> u32 {
        match self {
            Self::Max255 => 255,
            Self::Max511 => 511,
        }
    }

    /// Bit position of the cluster ID.
    pub fn cluster_shift(self) -> u32 {
        match self {
            Self::Max255 => 16,
            Self::Max511 => 15,
        }
    }

    /// The largest cluster-local number.
    pub fn max_local(self) -> u32 {
        (1 << self.cluster_shift()) - 1
    }

    /// Builds an identity from a cluster ID and a cluster-local number.
    pub fn compose(self, cluster_id: u32, local: u32) -> Result<u32, IdentityError> {
        self.check_cluster(cluster_id)?;
        if !(MIN_LOCAL..=self.max_local()).contains(&local) {
            return Err(IdentityError::LocalOutOfRange {
                local,
                max: self.max_local(),
            });
        }
        Ok((cluster_id << self.cluster_shift()) | local)
    }

    /// Splits and classifies an identity; rejects values no cluster could own.
    pub fn classify(self, id: u32) -> Result<IdentityKind, IdentityError> {
        if id == 0 {
            return Err(IdentityError::Zero);
        }
        if id > MAX_IDENTITY {
            return Err(IdentityError::TooWide(id));
        }
        if id <= reserved::MAX {
            return Ok(IdentityKind::Reserved(id));
        }
        let cluster_id = id >> self.cluster_shift();
        let local = id & self.max_local();
        if cluster_id == 0 {
            return Err(IdentityError::NoCluster { id });
        }
        if local < MIN_LOCAL {
            return Err(IdentityError::LocalOutOfRange {
                local,
                max: self.max_local(),
            });
        }
        Ok(IdentityKind::Cluster { cluster_id, local })
    }

    /// Whether a record from cluster `cluster_id` may carry identity `id`:
    /// a reserved identity, or one inside that cluster's range.
    pub fn owned_by(self, id: u32, cluster_id: u32) -> bool {
        match self.classify(id) {
            Ok(IdentityKind::Reserved(_)) => true,
            Ok(IdentityKind::Cluster { cluster_id: c, .. }) => c == cluster_id,
            Err(_) => false,
        }
    }

    /// The inclusive range of identities cluster `cluster_id` allocates from.
    pub fn cluster_range(self, cluster_id: u32) -> Result<(u32, u32), IdentityError> {
        Ok((
            self.compose(cluster_id, MIN_LOCAL)?,
            self.compose(cluster_id, self.max_local())?,
        ))
    }

    fn check_cluster(self, cluster_id: u32) -> Result<(), IdentityError> {
        if cluster_id == 0 || cluster_id > self.max_clusters() {
            return Err(IdentityError::ClusterOutOfRange {
                cluster_id,
                max: self.max_clusters(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_values() {
        // Cilium: cluster 1, local 256 → 0x010100 with 255 clusters.
        assert_eq!(ClusterMode::Max255.compose(1, 256), Ok(0x01_0100));
        assert_eq!(ClusterMode::Max255.compose(255, 65535), Ok(0xFF_FFFF));
        assert_eq!(ClusterMode::Max511.compose(511, 32767), Ok(0xFF_FFFF));
        assert_eq!(ClusterMode::Max511.compose(1, 256), Ok(0x00_8100));
        assert_eq!(
            ClusterMode::Max255.classify(2),
            Ok(IdentityKind::Reserved(2))
        );
        assert_eq!(ClusterMode::Max255.classify(0), Err(IdentityError::Zero));
        assert_eq!(
            ClusterMode::Max255.classify(1 << 24),
            Err(IdentityError::TooWide(1 << 24))
        );
        assert_eq!(
            ClusterMode::Max255.classify(300),
            Err(IdentityError::NoCluster { id: 300 })
        );
        assert!(
            ClusterMode::Max255.classify(0x01_0005).is_err(),
            "local below 256"
        );
    }

    #[test]
    fn rejects_out_of_range() {
        for mode in [ClusterMode::Max255, ClusterMode::Max511] {
            let max = mode.max_clusters();
            assert!(mode.compose(0, 300).is_err());
            assert!(mode.compose(max + 1, 300).is_err());
            assert!(mode.compose(1, 255).is_err());
            assert!(mode.compose(1, mode.max_local() + 1).is_err());
        }
        assert_eq!(
            ClusterMode::from_max_clusters(100),
            Err(IdentityError::BadMode(100))
        );
    }

    #[test]
    fn ranges_do_not_overlap() {
        let mode = ClusterMode::Max511;
        let (_, hi1) = mode.cluster_range(1).unwrap();
        let (lo2, _) = mode.cluster_range(2).unwrap();
        assert!(hi1 < lo2);
        assert!(mode.owned_by(lo2, 2) && !mode.owned_by(lo2, 1));
        assert!(mode.owned_by(reserved::WORLD, 7));
    }

    fn modes() -> impl Strategy<Value = ClusterMode> {
        prop_oneof![Just(ClusterMode::Max255), Just(ClusterMode::Max511)]
    }

    proptest! {
        #[test]
        fn round_trip(mode in modes(), c in 1u32..=511, l in 256u32..=65535) {
            let in_range = c <= mode.max_clusters() && l <= mode.max_local();
            match mode.compose(c, l) {
                Ok(id) => {
                    prop_assert!(in_range);
                    prop_assert!(id <= MAX_IDENTITY);
                    prop_assert_eq!(mode.classify(id), Ok(IdentityKind::Cluster { cluster_id: c, local: l }));
                    prop_assert!(mode.owned_by(id, c));
                    prop_assert!(!mode.owned_by(id, c % mode.max_clusters() + 1));
                }
                Err(_) => prop_assert!(!in_range),
            }
        }

        #[test]
        fn classify_is_total(mode in modes(), id in any::<u32>()) {
            if let Ok(IdentityKind::Cluster { cluster_id, local }) = mode.classify(id) {
                prop_assert_eq!(mode.compose(cluster_id, local), Ok(id));
            }
        }
    }
}
