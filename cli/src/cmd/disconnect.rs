//! `clustermesh disconnect PEER`: removes the peer on this side (its
//! mirrored records are withdrawn at once) and, when admin credentials for
//! the peer are given, removes this cluster on the peer's side too.

use clustermesh_proto::v1::DisconnectPeerRequest;

use super::{Admin, Conn, rpc_error};

/// The outcome on one side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SideResult {
    /// The registration was removed (and the mirrored records withdrawn).
    Removed,
    /// There was no such registration.
    NotRegistered,
    /// Not attempted: no credentials for that side.
    Skipped,
}

async fn remove(side: &mut Admin, name: &str) -> anyhow::Result<SideResult> {
    let existed = side
        .admin
        .disconnect_peer(DisconnectPeerRequest {
            name: name.to_owned(),
        })
        .await
        .map_err(|s| {
            rpc_error(
                &format!("{}: DisconnectPeer({name})", side.info.name),
                &side.conn.server,
                s,
            )
        })?
        .into_inner()
        .existed;
    Ok(if existed {
        SideResult::Removed
    } else {
        SideResult::NotRegistered
    })
}

fn describe(side: &str, peer: &str, r: &SideResult) -> String {
    match r {
        SideResult::Removed => {
            format!("{side}: removed peer {peer}; its records there are withdrawn")
        }
        SideResult::NotRegistered => format!("{side}: {peer} was not registered as a peer"),
        SideResult::Skipped => format!("{side}: not done"),
    }
}

pub async fn run(ours: &Conn, peer_name: &str, peer: Option<&Conn>) -> anyhow::Result<()> {
    clustermesh_proto::validate::cluster_name(peer_name)
        .map_err(|e| anyhow::anyhow!("{peer_name:?} is not a cluster name: {e}"))?;
    let mut a = Admin::open(ours, "this cluster").await?;
    if a.info.name == peer_name {
        anyhow::bail!(
            "{peer_name} is this cluster ({}); name the peer to disconnect from",
            ours.server
        );
    }
    // When the peer is reachable, check it is the one named before touching anything.
    let mut b = match peer {
        Some(p) => {
            let b = Admin::open(p, "the peer").await?;
            if b.info.name != peer_name {
                anyhow::bail!(
                    "the peer at {} is cluster {}, not {peer_name}: nothing was changed (check --peer-server / --peer-context)",
                    p.server,
                    b.info.name
                );
            }
            Some(b)
        }
        None => None,
    };
    let here = remove(&mut a, peer_name).await?;
    println!("{}", describe(&a.info.name, peer_name, &here));
    let ours_name = a.info.name.clone();
    match b.as_mut() {
        Some(b) => match remove(b, &ours_name).await {
            Ok(r) => println!("{}", describe(peer_name, &ours_name, &r)),
            Err(e) => {
                println!("{peer_name}: FAILED");
                return Err(e.context(format!(
                    "{ours_name} no longer syncs from {peer_name}, but {peer_name} still has {ours_name} as a peer: rerun `clustermesh --server <{peer_name}'s server> disconnect {ours_name}` when it is reachable"
                )));
            }
        },
        None => println!(
            "{}\n  (no --peer-server/--peer-tls-dir or --peer-context given: {peer_name} still lists {ours_name} as a peer;\n   run `clustermesh disconnect {ours_name}` against {peer_name} to finish)",
            describe(peer_name, &ours_name, &SideResult::Skipped)
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions() {
        assert!(describe("a", "b", &SideResult::Removed).contains("withdrawn"));
        assert!(describe("a", "b", &SideResult::NotRegistered).contains("not registered"));
        assert_eq!(describe("b", "a", &SideResult::Skipped), "b: not done");
    }
}
