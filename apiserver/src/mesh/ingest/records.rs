//! The per-kind rules of [`super::RULES`] that need only the record itself
//! and this cluster's [`Context`].

use clustermesh_proto::v1::{Endpoint, Identity, Kind, Node, Policy, Service, ServiceBackend};
use prost::Message;

use super::net::{Cidr, is_dns_label, is_dns_subdomain, parse_ip};
use super::{Context, PeerRef, Reason, RejectError};

/// Identity label naming a workload's cluster.
pub const CLUSTER_LABEL: &str = "clustermesh.io/cluster";
/// Cilium's spelling of the same label.
const CILIUM_CLUSTER_LABEL: &str = "io.cilium.k8s.policy.cluster";

struct Ck<'a> {
    kind: &'static str,
    key: &'a str,
}

impl Ck<'_> {
    fn fail(&self, reason: Reason, detail: impl Into<String>) -> RejectError {
        RejectError::Rule {
            reason,
            kind: self.kind,
            key: self.key.to_owned(),
            detail: detail.into(),
        }
    }
    fn key_is(&self, want: &str) -> Result<(), RejectError> {
        if self.key != want {
            return Err(self.fail(
                Reason::KeyMismatch,
                format!("the key must be {want:?}, the record's own"),
            ));
        }
        Ok(())
    }
    fn label(&self, what: &str, v: &str) -> Result<(), RejectError> {
        if !is_dns_label(v) {
            return Err(self.fail(
                Reason::BadName,
                format!("{what} {v:?} is not a DNS-1123 label"),
            ));
        }
        Ok(())
    }
    fn subdomain(&self, what: &str, v: &str) -> Result<(), RejectError> {
        if !is_dns_subdomain(v) {
            return Err(self.fail(
                Reason::BadName,
                format!("{what} {v:?} is not a DNS-1123 subdomain"),
            ));
        }
        Ok(())
    }
    fn address(&self, what: &str, v: &str) -> Result<std::net::IpAddr, RejectError> {
        parse_ip(v).ok_or_else(|| {
            self.fail(
                Reason::BadAddress,
                format!("{what} {v:?} is not an IP address"),
            )
        })
    }
    /// A pod IP of the peer: an address outside this cluster's and other peers' ranges.
    fn pod_ip(&self, ctx: &Context, what: &str, v: &str) -> Result<(), RejectError> {
        let ip = self.address(what, v)?;
        if let Some((reason, detail)) = ctx.ip_clash(&ip) {
            return Err(self.fail(reason, format!("{what} {detail}")));
        }
        Ok(())
    }
    fn identity(&self, p: &PeerRef, id: u32) -> Result<(), RejectError> {
        if id <= clustermesh_proto::identity::reserved::MAX {
            return Err(self.fail(
                Reason::ReservedIdentity,
                format!(
                    "identity {id} is reserved (1..=255) or invalid (0): never accepted from a peer"
                ),
            ));
        }
        if !p.mode.owned_by(id, p.id) {
            return Err(RejectError::IdentityOutOfRange {
                kind: self.kind,
                key: self.key.to_owned(),
                id,
                peer: p.name.clone(),
                peer_id: p.id,
            });
        }
        Ok(())
    }
}

/// Checks one upserted record of `kind` under `key`.
pub fn check(
    p: &PeerRef,
    ctx: &Context,
    kind: Kind,
    key: &str,
    value: &[u8],
) -> Result<(), RejectError> {
    let ck = Ck {
        kind: kind.segment(),
        key,
    };
    let undecodable = |e: prost::DecodeError| RejectError::Undecodable {
        kind: ck.kind,
        key: key.to_owned(),
        reason: e.to_string(),
    };
    let foreign = |got: &str| {
        (got != p.name).then(|| RejectError::ForeignRecord {
            kind: ck.kind,
            key: key.to_owned(),
            peer: p.name.clone(),
            got: got.to_owned(),
        })
    };
    match kind {
        Kind::Node => {
            let n = Node::decode(value).map_err(undecodable)?;
            foreign(&n.cluster).map_or(Ok(()), Err)?;
            ck.subdomain("node name", &n.name)?;
            ck.key_is(&n.name)?;
            for a in n.internal_ips.iter().chain(&n.external_ips) {
                ck.address("node address", a)?;
            }
            for c in &n.pod_cidrs {
                let cidr = Cidr::parse(c).ok_or_else(|| {
                    ck.fail(
                        Reason::BadCidr,
                        format!("pod CIDR {c:?} is not address/prefix with the host bits zero"),
                    )
                })?;
                if cidr.is_default_route() {
                    return Err(ck.fail(
                        Reason::DefaultRoute,
                        format!("pod CIDR {cidr} is a default route"),
                    ));
                }
                if cidr.too_wide() {
                    return Err(ck.fail(
                        Reason::CidrTooWide,
                        format!(
                            "pod CIDR {cidr} is wider than /{} (the widest accepted)",
                            if cidr.is_v4() {
                                super::net::MIN_PREFIX_V4
                            } else {
                                super::net::MIN_PREFIX_V6
                            }
                        ),
                    ));
                }
                if let Some((reason, detail)) = ctx.cidr_clash(&cidr) {
                    return Err(ck.fail(reason, detail));
                }
            }
        }
        Kind::Endpoint => {
            let e = Endpoint::decode(value).map_err(undecodable)?;
            foreign(&e.cluster).map_or(Ok(()), Err)?;
            ck.identity(p, e.identity)?;
            ck.address("endpoint IP", &e.ip)?;
            ck.key_is(&e.ip)?;
            ck.pod_ip(ctx, "endpoint IP", &e.ip)?;
            ck.label("namespace", &e.namespace)?;
            if !e.pod.is_empty() {
                ck.subdomain("pod name", &e.pod)?;
            }
            if !e.node_name.is_empty() {
                ck.subdomain("node name", &e.node_name)?;
            }
            if !e.node_ip.is_empty() {
                ck.address("node IP", &e.node_ip)?;
            }
        }
        Kind::Identity => {
            let i = Identity::decode(value).map_err(undecodable)?;
            foreign(&i.cluster).map_or(Ok(()), Err)?;
            ck.identity(p, i.id)?;
            ck.key_is(&i.id.to_string())?;
            for (k, v) in &i.labels {
                let bare = k.rsplit_once(':').map_or(k.as_str(), |(_, b)| b);
                if (bare == CLUSTER_LABEL || bare == CILIUM_CLUSTER_LABEL) && *v != i.cluster {
                    return Err(ck.fail(
                        Reason::ForeignClusterLabel,
                        format!(
                            "label {k}={v} names another cluster than the record's ({:?})",
                            i.cluster
                        ),
                    ));
                }
            }
        }
        Kind::Service => {
            let s = Service::decode(value).map_err(undecodable)?;
            foreign(&s.cluster).map_or(Ok(()), Err)?;
            ck.label("namespace", &s.namespace)?;
            ck.label("service name", &s.name)?;
            ck.key_is(&format!("{}/{}", s.namespace, s.name))?;
            for f in &s.frontend_ips {
                ck.address("frontend IP", f)?;
            }
            for b in &s.backends {
                ck.pod_ip(ctx, "backend IP", &b.ip)?;
            }
        }
        Kind::ServiceBackend => {
            let sb = ServiceBackend::decode(value).map_err(undecodable)?;
            foreign(&sb.cluster).map_or(Ok(()), Err)?;
            ck.label("namespace", &sb.namespace)?;
            ck.label("service name", &sb.service)?;
            let ip = sb.backend.as_ref().map_or("", |b| b.ip.as_str());
            ck.address("backend IP", ip)?;
            ck.key_is(&clustermesh_proto::backends::key(
                &sb.namespace,
                &sb.service,
                ip,
            ))?;
            ck.pod_ip(ctx, "backend IP", ip)?;
            if let Some(n) = sb.backend.as_ref().map(|b| b.node_name.as_str())
                && !n.is_empty()
            {
                ck.subdomain("node name", n)?;
            }
        }
        Kind::Policy => {
            let pol = Policy::decode(value).map_err(undecodable)?;
            foreign(&pol.cluster).map_or(Ok(()), Err)?;
            ck.label("namespace", &pol.namespace)?;
            ck.subdomain("policy name", &pol.name)?;
            ck.key_is(&format!("{}/{}", pol.namespace, pol.name))?;
        }
        Kind::Unspecified => return Err(RejectError::UnknownKind(kind as i32, 0)),
    }
    Ok(())
}

/// The IPs of a record that must lie inside the peer's announced pod CIDRs
/// (endpoint IP, a service's inline backend IPs, a backend record's IP);
/// None for other kinds.
pub fn covered_ips(kind: Kind, value: &[u8]) -> Option<Vec<std::net::IpAddr>> {
    match kind {
        Kind::Endpoint => Some(
            Endpoint::decode(value)
                .ok()
                .and_then(|e| parse_ip(&e.ip))
                .into_iter()
                .collect(),
        ),
        Kind::Service => Some(
            Service::decode(value)
                .map(|s| s.backends.iter().filter_map(|b| parse_ip(&b.ip)).collect())
                .unwrap_or_default(),
        ),
        Kind::ServiceBackend => Some(
            ServiceBackend::decode(value)
                .ok()
                .and_then(|s| parse_ip(&s.backend?.ip))
                .into_iter()
                .collect(),
        ),
        _ => None,
    }
}
