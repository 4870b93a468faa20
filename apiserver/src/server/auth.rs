//! Roles from client certificates (DESIGN §5):
//! `admin` everything; `remote` of cluster X: Watch scope exported and
//! GetCluster; `agent`: Watch merged/exported, Lookup, Status, GetCluster.
//! `admin` and `agent` certificates must belong to this cluster; any
//! certificate must be issued by the CA of the cluster it claims: our own CA
//! for our cluster, the CA registered for peer X (`peers/X`) for a `remote`
//! certificate of X. A `remote` certificate of a cluster that is not a
//! registered peer is refused.

use clustermesh_certs::{CertIdentity, Role, ca_common_name, cert_identity, issued_by};
use tonic::{Request, Status};

/// The authenticated caller of one RPC.
#[derive(Debug, Clone)]
pub struct Caller {
    pub cluster: String,
    pub role: Role,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} of cluster {}", self.role.as_str(), self.cluster)
    }
}

/// Reads and checks the caller's certificate identity. `peer_ca` gives the
/// CA PEM registered for a peer cluster (None: not a registered peer).
pub fn caller<T>(
    req: &Request<T>,
    local: &str,
    own_ca_pem: &str,
    peer_ca: impl FnOnce(&str) -> Option<String>,
) -> Result<Caller, Status> {
    let certs = req.peer_certs().ok_or_else(|| {
        Status::unauthenticated(
            "no client certificate: clustermesh-apiserver requires mTLS with a certificate from `clustermesh certs init`",
        )
    })?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("empty client certificate chain"))?;
    let id: CertIdentity = cert_identity(leaf.as_ref()).map_err(|e| {
        Status::unauthenticated(format!(
            "client certificate carries no clustermesh identity: {e}"
        ))
    })?;
    let expected_issuer = ca_common_name(&id.cluster);
    if id.issuer_cn != expected_issuer {
        return Err(Status::unauthenticated(format!(
            "client certificate claims cluster {:?} but was issued by {:?}, not by {:?}",
            id.cluster, id.issuer_cn, expected_issuer
        )));
    }
    if matches!(id.role, Role::Admin | Role::Agent | Role::Server) && id.cluster != local {
        return Err(Status::permission_denied(format!(
            "a {} certificate of cluster {:?} has no rights on cluster {:?}; only `remote` certificates of peer clusters are accepted here",
            id.role.as_str(),
            id.cluster,
            local
        )));
    }
    // A name is not proof: a peer's CA could call itself after us. Our roles
    // must verify against our own CA.
    if id.cluster == local && !issued_by(leaf.as_ref(), own_ca_pem).unwrap_or(false) {
        return Err(Status::unauthenticated(format!(
            "client certificate claims cluster {local:?} but is not signed by this cluster's CA"
        )));
    }
    // A peer's CA is trusted at the TLS layer, but only for its own `remote`
    // role: the certificate must verify against the CA registered for the
    // cluster it names (a CA's name proves nothing).
    if id.cluster != local {
        let Some(ca) = peer_ca(&id.cluster) else {
            return Err(Status::permission_denied(format!(
                "cluster {:?} is not a registered peer of cluster {local:?}: connect the clusters first (Admin ConnectPeer / `clustermesh connect`)",
                id.cluster
            )));
        };
        if !issued_by(leaf.as_ref(), &ca).unwrap_or(false) {
            return Err(Status::unauthenticated(format!(
                "remote certificate of cluster {:?} is not signed by the CA registered for peer {:?}: connect the clusters again with the peer's current ca.crt",
                id.cluster, id.cluster
            )));
        }
    }
    Ok(Caller {
        cluster: id.cluster,
        role: id.role,
    })
}

/// Fails with PERMISSION_DENIED unless the caller's role is one of `allowed`.
pub fn require(caller: &Caller, allowed: &[Role], what: &str) -> Result<(), Status> {
    if allowed.contains(&caller.role) {
        return Ok(());
    }
    let names: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
    Err(Status::permission_denied(format!(
        "{caller} may not {what}: that needs role {}",
        names.join(" or ")
    )))
}
