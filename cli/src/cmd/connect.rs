//! `clustermesh connect`: registers two clusters as each other's peers.
//!
//! Needs admin access to both. Validates both sides (distinct names and
//! IDs, same mesh size), then registers the peer on this side and this
//! cluster on the peer side; if the second registration fails the first is
//! undone. Only CA certificates cross: each side learns the other's
//! `ca.crt`, to verify its server and trust its `remote` certificate. No
//! private key leaves its directory. `clustermesh demo` uses this same code.
//!
//! [`Pairing`] holds what both registrations share: the per-peer quota
//! (`--quota`, zero fields meaning the apiserver's `--peer-quota`) and
//! `--import-policies`. Both sides get the same: each limits what it takes
//! from the other by that quota, and each applies the other's global
//! policies only when `import_policies` is set (docs/policy.md).

use clustermesh_proto::v1::{
    ClusterInfo, ConnectPeerRequest, DisconnectPeerRequest, ListPeersRequest, PeerConfig, PeerQuota,
};
use thiserror::Error;

use super::{Admin, Conn, rpc_error};

/// Why two clusters cannot form a mesh.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PairError {
    #[error(
        "both servers are cluster {0:?}: --server and --peer-server must point at two different clusters"
    )]
    SameName(String),
    #[error(
        "clusters {a} and {b} both have cluster ID {id}: every cluster of a mesh needs its own ID (restart one apiserver with another --cluster-id, on an empty store)"
    )]
    SameId { a: String, b: String, id: u32 },
    #[error(
        "cluster {a} allows {a_max} connected clusters but {b} allows {b_max}: every cluster of a mesh must use the same --max-connected-clusters"
    )]
    MaxClusters {
        a: String,
        a_max: u32,
        b: String,
        b_max: u32,
    },
}

/// Checks that `a` and `b` can be peers.
pub fn validate_pair(a: &ClusterInfo, b: &ClusterInfo) -> Result<(), PairError> {
    if a.name == b.name {
        return Err(PairError::SameName(a.name.clone()));
    }
    if a.id == b.id {
        return Err(PairError::SameId {
            a: a.name.clone(),
            b: b.name.clone(),
            id: a.id,
        });
    }
    if a.max_connected_clusters != b.max_connected_clusters {
        return Err(PairError::MaxClusters {
            a: a.name.clone(),
            a_max: a.max_connected_clusters,
            b: b.name.clone(),
            b_max: b.max_connected_clusters,
        });
    }
    Ok(())
}

/// What both registrations of a pair share.
#[derive(Debug, Clone, Default)]
pub struct Pairing {
    /// Zero fields: the apiserver's `--peer-quota` default.
    pub quota: PeerQuota,
    pub import_policies: bool,
}

/// The registration of `info` (reachable at `address`, CA `ca_pem`) as a peer.
pub fn peer_config(
    info: &ClusterInfo,
    address: &str,
    ca_pem: String,
    pairing: &Pairing,
) -> PeerConfig {
    PeerConfig {
        name: info.name.clone(),
        addresses: vec![address.to_owned()],
        ca_pem,
        enabled: true,
        cluster_id: info.id,
        quota: (pairing.quota != PeerQuota::default()).then_some(pairing.quota),
        import_policies: pairing.import_policies,
    }
}

/// What `connect` did.
#[derive(Debug, Clone)]
pub struct Connected {
    pub ours: ClusterInfo,
    pub peer: ClusterInfo,
    /// The address our cluster dials to reach the peer.
    pub peer_address: String,
    /// The address the peer dials to reach us.
    pub our_address: String,
    /// Whether each side already had the other registered (now updated).
    pub replaced: (bool, bool),
}

impl Connected {
    pub fn to_text(&self) -> String {
        let verb = |replaced: bool| if replaced { "updated" } else { "registered" };
        format!(
            "{o}: {v1} peer {p} (ID {pid}): dials {pa}, trusts {p}'s CA for its server and `remote` role\n\
             {p}: {v2} peer {o} (ID {oid}): dials {oa}, trusts {o}'s CA for its server and `remote` role\n\
             Only the two CA certificates were exchanged; no private key left its directory.\n\
             Follow the sync with `clustermesh status --wait` on either side.\n",
            o = self.ours.name,
            p = self.peer.name,
            pid = self.peer.id,
            oid = self.ours.id,
            pa = self.peer_address,
            oa = self.our_address,
            v1 = verb(self.replaced.0),
            v2 = verb(self.replaced.1),
        )
    }
}

async fn existing(side: &mut Admin, name: &str) -> anyhow::Result<Option<PeerConfig>> {
    let peers = side
        .admin
        .list_peers(ListPeersRequest {})
        .await
        .map_err(|s| rpc_error("ListPeers", &side.conn.server, s))?
        .into_inner()
        .peers;
    Ok(peers.into_iter().find(|p| p.name == name))
}

async fn register(side: &mut Admin, peer: PeerConfig) -> anyhow::Result<()> {
    let name = peer.name.clone();
    side.admin
        .connect_peer(ConnectPeerRequest { peer: Some(peer) })
        .await
        .map_err(|s| {
            rpc_error(
                &format!("{}: ConnectPeer({name})", side.info.name),
                &side.conn.server,
                s,
            )
        })?;
    Ok(())
}

/// Connects `ours` and `peer` both ways. `advertise` is the address the
/// peer should dial to reach us (default: `ours.server`).
pub async fn connect(
    ours: &Conn,
    peer: &Conn,
    advertise: Option<&str>,
    pairing: &Pairing,
) -> anyhow::Result<Connected> {
    let mut a = Admin::open(ours, "this cluster").await?;
    let mut b = Admin::open(peer, "the peer").await?;
    validate_pair(&a.info, &b.info)?;
    let a_ca = ours.ca_pem()?;
    let b_ca = peer.ca_pem()?;
    let our_address = advertise.unwrap_or(&ours.server).to_owned();
    let peer_address = peer.server.clone();

    let before_a = existing(&mut a, &b.info.name).await?;
    let before_b = existing(&mut b, &a.info.name).await?;
    register(&mut a, peer_config(&b.info, &peer_address, b_ca, pairing)).await?;
    if let Err(e) = register(&mut b, peer_config(&a.info, &our_address, a_ca, pairing)).await {
        let undo = match before_a.clone() {
            Some(previous) => register(&mut a, previous).await.map(|_| "restored"),
            None => a
                .admin
                .disconnect_peer(DisconnectPeerRequest {
                    name: b.info.name.clone(),
                })
                .await
                .map(|_| "removed")
                .map_err(|s| rpc_error("DisconnectPeer", &a.conn.server, s)),
        };
        return Err(match undo {
            Ok(how) => e.context(format!(
                "connecting {} to {} failed on {}'s side; {}'s registration of {} was {how}, so nothing changed",
                a.info.name, b.info.name, b.info.name, a.info.name, b.info.name
            )),
            Err(u) => e.context(format!(
                "connecting failed on {}'s side, and undoing {}'s registration of {} failed too ({u:#}): run `clustermesh disconnect {}` against {}",
                b.info.name, a.info.name, b.info.name, b.info.name, a.conn.server
            )),
        });
    }
    Ok(Connected {
        ours: a.info,
        peer: b.info,
        peer_address,
        our_address,
        replaced: (before_a.is_some(), before_b.is_some()),
    })
}

pub async fn run(
    ours: &Conn,
    peer: &Conn,
    advertise: Option<&str>,
    pairing: &Pairing,
) -> anyhow::Result<()> {
    let done = connect(ours, peer, advertise, pairing).await?;
    print!("{}", done.to_text());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, id: u32, max: u32) -> ClusterInfo {
        ClusterInfo {
            name: name.into(),
            id,
            max_connected_clusters: max,
            capabilities: vec![],
        }
    }

    #[test]
    fn validation() {
        assert_eq!(
            validate_pair(&info("a", 1, 255), &info("b", 2, 255)),
            Ok(())
        );
        let e = validate_pair(&info("a", 1, 255), &info("a", 2, 255)).unwrap_err();
        assert!(e.to_string().contains("two different clusters"), "{e}");
        let e = validate_pair(&info("a", 3, 255), &info("b", 3, 255)).unwrap_err();
        assert!(e.to_string().contains("both have cluster ID 3"), "{e}");
        let e = validate_pair(&info("a", 1, 255), &info("b", 2, 511)).unwrap_err();
        assert!(e.to_string().contains("--max-connected-clusters"), "{e}");
    }

    #[test]
    fn peer_config_carries_only_the_ca() {
        let p = peer_config(
            &info("b", 2, 255),
            "10.0.0.2:7443",
            "CA".into(),
            &Pairing::default(),
        );
        assert_eq!(p.quota, None, "no --quota: the apiserver's defaults");
        assert!(!p.import_policies);
        let q = peer_config(
            &info("b", 2, 255),
            "x:1",
            "CA".into(),
            &Pairing {
                quota: PeerQuota {
                    endpoints: 7,
                    ..Default::default()
                },
                import_policies: true,
            },
        );
        assert_eq!(q.quota.map(|q| q.endpoints), Some(7));
        assert!(q.import_policies);
        assert_eq!(p.name, "b");
        assert_eq!(p.cluster_id, 2);
        assert_eq!(p.addresses, ["10.0.0.2:7443"]);
        assert_eq!(p.ca_pem, "CA");
        assert!(p.enabled);
    }
}
