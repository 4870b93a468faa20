//! Store key names. Every key lives under `clustermesh/v1/`:
//!
//! ```text
//! meta/cluster                    ClusterInfo
//! meta/epoch                      random id, written once per store
//! leader                          election key (held with a lease)
//! peers/<peer>                    PeerConfig
//! peer-status/<peer>              PeerStatus, written by the leader's mesh syncer
//! state/<kind>/<cluster>/<key>    this cluster's records
//! cache/<kind>/<peer>/<key>       records mirrored from peers
//! synced/<cluster>/<kind>         SyncedMarker
//! identities/by-labels/<digest>   allocation index -> identity
//! identities/by-id/<id>           allocation claim -> digest
//! heartbeat                       Heartbeat, rewritten by the leader
//! agents/<node>                   AgentReport, renewed by each node agent
//! ```

use crate::v1::Kind;

pub const PREFIX: &str = "clustermesh/v1/";

pub fn meta_cluster() -> String {
    format!("{PREFIX}meta/cluster")
}
pub fn meta_epoch() -> String {
    format!("{PREFIX}meta/epoch")
}
pub fn leader() -> String {
    format!("{PREFIX}leader")
}
pub fn heartbeat() -> String {
    format!("{PREFIX}heartbeat")
}
pub fn peers_prefix() -> String {
    format!("{PREFIX}peers/")
}
pub fn peer(name: &str) -> String {
    format!("{PREFIX}peers/{name}")
}
/// `peer-status/`: the mesh syncer's view of every peer (never sent on Watch).
pub fn peer_status_prefix() -> String {
    format!("{PREFIX}peer-status/")
}
/// `peer-status/<peer>`: PeerStatus of one peer, so every replica's Status shows it.
pub fn peer_status(name: &str) -> String {
    format!("{PREFIX}peer-status/{name}")
}
/// `agents/`: the reports of this cluster's node agents (never sent on Watch).
pub fn agents_prefix() -> String {
    format!("{PREFIX}agents/")
}
/// `agents/<node>`: the last AgentReport of one node's agent; a gateway's
/// renewals of it are its liveness lease.
pub fn agent(node: &str) -> String {
    format!("{PREFIX}agents/{node}")
}
/// `state/<kind>/<cluster>/<key>`: a record of this cluster.
pub fn state(kind: Kind, cluster: &str, key: &str) -> String {
    format!("{PREFIX}state/{}/{cluster}/{key}", kind.segment())
}
/// `state/<kind>/<cluster>/`: every record of one kind of this cluster.
pub fn state_prefix(kind: Kind, cluster: &str) -> String {
    format!("{PREFIX}state/{}/{cluster}/", kind.segment())
}
/// `cache/<kind>/<peer>/<key>`: a record mirrored from a peer.
pub fn cache(kind: Kind, peer: &str, key: &str) -> String {
    format!("{PREFIX}cache/{}/{peer}/{key}", kind.segment())
}
/// `cache/<kind>/<peer>/`: everything of one kind mirrored from a peer.
pub fn cache_prefix(kind: Kind, peer: &str) -> String {
    format!("{PREFIX}cache/{}/{peer}/", kind.segment())
}
/// `synced/<cluster>/<kind>`.
pub fn synced(cluster: &str, kind: Kind) -> String {
    format!("{PREFIX}synced/{cluster}/{}", kind.segment())
}
/// `synced/<cluster>/`: every sync marker of one cluster.
pub fn synced_prefix(cluster: &str) -> String {
    format!("{PREFIX}synced/{cluster}/")
}
pub fn identity_index(digest: &str) -> String {
    format!("{PREFIX}identities/by-labels/{digest}")
}
pub fn identity_index_prefix() -> String {
    format!("{PREFIX}identities/by-labels/")
}
pub fn identity_claim_prefix() -> String {
    format!("{PREFIX}identities/by-id/")
}
/// `identities/by-id/<id>`: claims a number for one label-set digest, so no
/// number is ever given to two label sets.
pub fn identity_claim(id: u32) -> String {
    format!("{PREFIX}identities/by-id/{id}")
}

/// Where a record lives: this cluster's own state, or a peer's mirrored cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    State,
    Cache,
}

/// A parsed store key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKey<'a> {
    MetaCluster,
    MetaEpoch,
    Leader,
    Heartbeat,
    Peer(&'a str),
    PeerStatus(&'a str),
    Record {
        origin: Origin,
        kind: Kind,
        cluster: &'a str,
        key: &'a str,
    },
    Synced {
        cluster: &'a str,
        kind: Kind,
    },
    IdentityIndex(&'a str),
    IdentityClaim(&'a str),
    /// Under the prefix but not a key this version knows.
    Unknown,
}

/// Parses a full store key (with or without the `clustermesh/v1/` prefix).
pub fn parse(full: &str) -> StoreKey<'_> {
    let k = full.strip_prefix(PREFIX).unwrap_or(full);
    match k {
        "meta/cluster" => return StoreKey::MetaCluster,
        "meta/epoch" => return StoreKey::MetaEpoch,
        "leader" => return StoreKey::Leader,
        "heartbeat" => return StoreKey::Heartbeat,
        _ => {}
    }
    if let Some(name) = k.strip_prefix("peers/") {
        return if name.is_empty() {
            StoreKey::Unknown
        } else {
            StoreKey::Peer(name)
        };
    }
    if let Some(name) = k.strip_prefix("peer-status/") {
        return if name.is_empty() {
            StoreKey::Unknown
        } else {
            StoreKey::PeerStatus(name)
        };
    }
    if let Some(d) = k.strip_prefix("identities/by-labels/") {
        return StoreKey::IdentityIndex(d);
    }
    if let Some(id) = k.strip_prefix("identities/by-id/") {
        return StoreKey::IdentityClaim(id);
    }
    if let Some(rest) = k.strip_prefix("synced/") {
        let mut it = rest.splitn(2, '/');
        return match (it.next(), it.next().and_then(Kind::from_segment)) {
            (Some(cluster), Some(kind)) if !cluster.is_empty() => {
                StoreKey::Synced { cluster, kind }
            }
            _ => StoreKey::Unknown,
        };
    }
    let (origin, rest) = if let Some(r) = k.strip_prefix("state/") {
        (Origin::State, r)
    } else if let Some(r) = k.strip_prefix("cache/") {
        (Origin::Cache, r)
    } else {
        return StoreKey::Unknown;
    };
    let mut it = rest.splitn(3, '/');
    match (it.next().and_then(Kind::from_segment), it.next(), it.next()) {
        (Some(kind), Some(cluster), Some(key)) if !cluster.is_empty() && !key.is_empty() => {
            StoreKey::Record {
                origin,
                kind,
                cluster,
                key,
            }
        }
        _ => StoreKey::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RECORD_KINDS;
    use proptest::prelude::*;

    #[test]
    fn fixed_keys() {
        assert_eq!(parse(&meta_cluster()), StoreKey::MetaCluster);
        assert_eq!(parse(&meta_epoch()), StoreKey::MetaEpoch);
        assert_eq!(parse(&leader()), StoreKey::Leader);
        assert_eq!(parse(&heartbeat()), StoreKey::Heartbeat);
        assert_eq!(parse(&peer("b")), StoreKey::Peer("b"));
        assert_eq!(parse(&peer_status("b")), StoreKey::PeerStatus("b"));
        assert_eq!(parse(&peer_status_prefix()), StoreKey::Unknown);
        assert_eq!(
            parse(&identity_index("ab12")),
            StoreKey::IdentityIndex("ab12")
        );
        assert_eq!(parse("clustermesh/v1/state/nodes/a/"), StoreKey::Unknown);
        assert_eq!(parse("clustermesh/v1/state/bogus/a/x"), StoreKey::Unknown);
        assert_eq!(parse("clustermesh/v1/synced/a/bogus"), StoreKey::Unknown);
    }

    proptest! {
        #[test]
        fn record_keys_round_trip(k in 0usize..RECORD_KINDS.len(), cluster in "[a-z0-9]{1,8}", key in "[a-z0-9./:-]{1,20}") {
            let kind = RECORD_KINDS[k];
            let s = state(kind, &cluster, &key);
            prop_assert!(s.starts_with(&state_prefix(kind, &cluster)));
            prop_assert_eq!(parse(&s), StoreKey::Record { origin: Origin::State, kind, cluster: &cluster, key: &key });
            let c = cache(kind, &cluster, &key);
            prop_assert_eq!(parse(&c), StoreKey::Record { origin: Origin::Cache, kind, cluster: &cluster, key: &key });
            let m = synced(&cluster, kind);
            prop_assert_eq!(parse(&m), StoreKey::Synced { cluster: &cluster, kind });
        }
    }
}
