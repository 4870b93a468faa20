//! The datapath's desired state in domain terms, and its translation into the
//! raw map entries of [`super::types`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use super::error::{DatapathError, Result};
use super::policy_key::PolicyRule;
use super::rules::{Direction, Frontend, Service, Verdict};
use super::types::{
    self, BackendKey, BackendValue, ConfigValue, EndpointValue, EnforcedKey, FrontendKey,
    FrontendValue, IpcacheKey, IpcacheValue, PolicyCidrValue, PolicyKey, TunnelSourceValue, be16,
    be32, ip_from_be32,
};

/// Map contents in raw form (policy as key -> action; counters and CT excluded).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawState {
    pub ipcache: BTreeMap<IpcacheKey, IpcacheValue>,
    pub endpoints: BTreeMap<u32, EndpointValue>,
    pub policy: BTreeMap<PolicyKey, u8>,
    pub policy_cidr: BTreeMap<IpcacheKey, PolicyCidrValue>,
    pub enforced: BTreeSet<EnforcedKey>,
    pub frontends: BTreeMap<FrontendKey, FrontendValue>,
    pub backends: BTreeMap<BackendKey, BackendValue>,
    /// Outer IPv4 source (network order) -> who it is.
    pub tunnel_sources: BTreeMap<u32, TunnelSourceValue>,
}

/// An IPv4 prefix with the host bits cleared (LPM key of the ipcache).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Prefix {
    addr: Ipv4Addr,
    len: u8,
}

impl Ipv4Prefix {
    /// `addr/len`; host bits are cleared. Fails if `len > 32`.
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Self> {
        if len > 32 {
            return Err(DatapathError::invalid(
                "prefix length",
                format!("{addr}/{len}"),
            ));
        }
        let mask = if len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(len))
        };
        Ok(Ipv4Prefix {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            len,
        })
    }

    /// A single address (`/32`).
    pub fn host(addr: Ipv4Addr) -> Self {
        Ipv4Prefix { addr, len: 32 }
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn len(&self) -> u8 {
        self.len
    }

    /// True for `0.0.0.0/0`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn key(&self) -> IpcacheKey {
        IpcacheKey {
            prefixlen: u32::from(self.len),
            addr: be32(self.addr),
        }
    }

    pub(crate) fn from_key(k: IpcacheKey) -> Result<Self> {
        let len = u8::try_from(k.prefixlen)
            .map_err(|_| DatapathError::invalid("prefix length", k.prefixlen.to_string()))?;
        Ipv4Prefix::new(ip_from_be32(k.addr), len)
    }
}

impl fmt::Display for Ipv4Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Ipv4Prefix {
    type Err = DatapathError;
    /// `a.b.c.d/len` or a bare address (`/32`).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || DatapathError::invalid("IPv4 prefix", s);
        match s.split_once('/') {
            Some((a, l)) => {
                Ipv4Prefix::new(a.parse().map_err(|_| bad())?, l.parse().map_err(|_| bad())?)
            }
            None => Ok(Ipv4Prefix::host(s.parse().map_err(|_| bad())?)),
        }
    }
}

/// Where an ipcache prefix lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Location {
    /// A pod on this node behind the host-side veth `ifindex`.
    Local { ifindex: u32 },
    /// Another cluster's: tunnelled to `tunnel_endpoint` (this cluster's
    /// gateway from an ordinary node, the peer's gateway from a gateway).
    Remote { tunnel_endpoint: Ipv4Addr },
    /// This cluster, another node (or the service CIDR: `node` None). Never
    /// touched by `from_pod`; a gateway relays a peer's packet to `node`.
    Cluster { node: Option<Ipv4Addr> },
}

/// Who may send through the tunnel from one outer source address (DESIGN §10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TunnelSender {
    /// A node of this cluster: only this cluster's identities.
    LocalNode,
    /// A gateway of this cluster: also the peers' identities it relays.
    LocalGateway,
    /// A gateway of cluster `cluster_id`: only that cluster's identities.
    PeerGateway { cluster_id: u32 },
}

impl TunnelSender {
    pub(crate) fn value(&self) -> TunnelSourceValue {
        let (kind, cluster_id) = match *self {
            TunnelSender::LocalNode => (types::TSRC_LOCAL_NODE, 0),
            TunnelSender::LocalGateway => (types::TSRC_LOCAL_GATEWAY, 0),
            TunnelSender::PeerGateway { cluster_id } => (types::TSRC_PEER_GATEWAY, cluster_id),
        };
        TunnelSourceValue {
            cluster_id,
            kind,
            pad: [0; 3],
        }
    }

    pub fn from_value(v: &TunnelSourceValue) -> Option<Self> {
        match v.kind {
            types::TSRC_LOCAL_NODE => Some(TunnelSender::LocalNode),
            types::TSRC_LOCAL_GATEWAY => Some(TunnelSender::LocalGateway),
            types::TSRC_PEER_GATEWAY => Some(TunnelSender::PeerGateway {
                cluster_id: v.cluster_id,
            }),
            _ => None,
        }
    }
}

/// One ipcache entry: the identity of a prefix and where it lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpcacheEntry {
    pub identity: u32,
    pub location: Location,
}

impl IpcacheEntry {
    pub(crate) fn value(&self) -> IpcacheValue {
        match self.location {
            Location::Local { ifindex } => IpcacheValue {
                identity: self.identity,
                tunnel_endpoint: 0,
                ifindex,
                flags: types::IPCACHE_F_LOCAL,
                pad: [0; 3],
            },
            Location::Remote { tunnel_endpoint } => IpcacheValue {
                identity: self.identity,
                tunnel_endpoint: be32(tunnel_endpoint),
                ifindex: 0,
                flags: types::IPCACHE_F_REMOTE,
                pad: [0; 3],
            },
            Location::Cluster { node } => IpcacheValue {
                identity: self.identity,
                tunnel_endpoint: node.map(be32).unwrap_or(0),
                ifindex: 0,
                flags: types::IPCACHE_F_CLUSTER,
                pad: [0; 3],
            },
        }
    }

    /// Reads a raw value back; `None` if it is neither local nor remote.
    pub fn from_value(v: &IpcacheValue) -> Option<Self> {
        let location = if v.flags & types::IPCACHE_F_LOCAL != 0 && v.ifindex != 0 {
            Location::Local { ifindex: v.ifindex }
        } else if v.flags & types::IPCACHE_F_CLUSTER != 0 {
            Location::Cluster {
                node: (v.tunnel_endpoint != 0).then(|| ip_from_be32(v.tunnel_endpoint)),
            }
        } else if v.tunnel_endpoint != 0 {
            Location::Remote {
                tunnel_endpoint: ip_from_be32(v.tunnel_endpoint),
            }
        } else {
            return None;
        };
        Some(IpcacheEntry {
            identity: v.identity,
            location,
        })
    }
}

/// A local pod's veth pair, keyed by the host-side ifindex in [`DesiredState::endpoints`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// MAC of the pod's interface (destination MAC when delivering to it).
    pub pod_mac: [u8; 6],
    /// MAC of the host-side veth (source MAC when delivering).
    pub host_mac: [u8; 6],
    pub identity: u32,
}

impl Endpoint {
    pub(crate) fn value(&self) -> EndpointValue {
        EndpointValue {
            pod_mac: self.pod_mac,
            host_mac: self.host_mac,
            identity: self.identity,
        }
    }
}

/// The single `cm_config` entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathConfig {
    /// Informational; reserved identity 1 by convention.
    pub host_identity: u32,
    /// ifindex of the collect-metadata tunnel device (0 = none: remote traffic is dropped).
    pub tunnel_ifindex: u32,
    /// Deliver to local pods with `bpf_redirect_peer` instead of `bpf_redirect`.
    pub redirect_peer: bool,
    /// from_tunnel: require the VNI to equal the ipcache identity of the inner source.
    pub strict_source: bool,
    /// Native routing: from_pod hands remote destinations to the node's
    /// routes instead of the tunnel; `from_underlay` receives.
    pub native: bool,
    /// This node is a gateway: `from_tunnel` relays across the cluster edge.
    pub gateway: bool,
    /// This cluster's ID (0 = unknown: `from_tunnel` drops every packet).
    pub cluster_id: u16,
    /// `identity >> cluster_shift` is the identity's cluster ID (16; 15 in
    /// 511-cluster meshes).
    pub cluster_shift: u8,
}

impl DatapathConfig {
    pub(crate) fn value(&self) -> ConfigValue {
        let mut flags = 0;
        if self.redirect_peer {
            flags |= types::CFG_F_REDIRECT_PEER;
        }
        if self.strict_source {
            flags |= types::CFG_F_STRICT_SOURCE;
        }
        if self.native {
            flags |= types::CFG_F_NATIVE;
        }
        if self.gateway {
            flags |= types::CFG_F_GATEWAY;
        }
        ConfigValue {
            host_identity: self.host_identity,
            tunnel_ifindex: self.tunnel_ifindex,
            flags,
            cluster_id: self.cluster_id,
            cluster_shift: self.cluster_shift,
            pad: 0,
        }
    }

    pub(crate) fn from_value(v: &ConfigValue) -> Self {
        DatapathConfig {
            host_identity: v.host_identity,
            tunnel_ifindex: v.tunnel_ifindex,
            redirect_peer: v.flags & types::CFG_F_REDIRECT_PEER != 0,
            strict_source: v.flags & types::CFG_F_STRICT_SOURCE != 0,
            native: v.flags & types::CFG_F_NATIVE != 0,
            gateway: v.flags & types::CFG_F_GATEWAY != 0,
            cluster_id: v.cluster_id,
            cluster_shift: v.cluster_shift,
        }
    }
}

/// Raw ipcache entries, validating the identities BPF relies on.
pub fn ipcache_raw<'a>(
    entries: impl IntoIterator<Item = (&'a Ipv4Prefix, &'a IpcacheEntry)>,
) -> Result<BTreeMap<IpcacheKey, IpcacheValue>> {
    let mut out = BTreeMap::new();
    for (prefix, entry) in entries {
        if entry.identity == 0 || entry.identity > types::IDENTITY_MAX {
            return Err(DatapathError::invalid(
                "identity",
                format!("{} for {prefix}", entry.identity),
            ));
        }
        out.insert(prefix.key(), entry.value());
    }
    Ok(out)
}

/// Everything the agent wants in the maps (except config, counters and CT).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub ipcache: BTreeMap<Ipv4Prefix, IpcacheEntry>,
    /// Host-side veth ifindex -> the pod's MACs.
    pub endpoints: BTreeMap<u32, Endpoint>,
    pub policy: BTreeMap<PolicyRule, Verdict>,
    /// The ipBlock prefixes (cidrs and excepts) policy entries refer to: a
    /// `world` peer address takes the longest of them that contains it.
    pub policy_cidrs: BTreeSet<Ipv4Prefix>,
    /// Identities selected by a policy in a direction: default deny there.
    pub enforced: BTreeSet<(u32, Direction)>,
    pub services: BTreeMap<Frontend, Service>,
    /// Outer source addresses the tunnel accepts, and what each may send.
    pub tunnel_sources: BTreeMap<Ipv4Addr, TunnelSender>,
}

impl DesiredState {
    /// Translates into raw map entries, validating what BPF relies on.
    pub fn to_raw(&self) -> Result<RawState> {
        let mut raw = self.to_raw_without_ipcache()?;
        raw.ipcache = ipcache_raw(&self.ipcache)?;
        Ok(raw)
    }

    /// [`DesiredState::to_raw`] of everything but the ipcache (which the
    /// reconciler writes by the entries that changed).
    pub fn to_raw_without_ipcache(&self) -> Result<RawState> {
        let mut raw = RawState::default();
        for (ifindex, ep) in &self.endpoints {
            raw.endpoints.insert(*ifindex, ep.value());
        }
        for (addr, sender) in &self.tunnel_sources {
            raw.tunnel_sources.insert(be32(*addr), sender.value());
        }
        for (rule, verdict) in &self.policy {
            raw.policy.insert(rule.key(), verdict.raw());
        }
        for p in &self.policy_cidrs {
            raw.policy_cidr.insert(
                p.key(),
                PolicyCidrValue {
                    addr: be32(p.addr()),
                    prefixlen: u32::from(p.len()),
                },
            );
        }
        for (identity, dir) in &self.enforced {
            raw.enforced.insert(EnforcedKey {
                identity: *identity,
                direction: dir.raw(),
                pad: [0; 3],
            });
        }
        let mut ids = BTreeSet::new();
        for (fe, svc) in &self.services {
            if !ids.insert(svc.service_id) {
                return Err(DatapathError::invalid(
                    "service",
                    format!("service_id {} used twice", svc.service_id),
                ));
            }
            let count = u16::try_from(svc.backends.len()).map_err(|_| {
                DatapathError::invalid(
                    "service",
                    format!("{} backends for {fe:?}", svc.backends.len()),
                )
            })?;
            raw.frontends.insert(
                fe.key(),
                FrontendValue {
                    service_id: svc.service_id,
                    count,
                    affinity: svc.affinity.raw(),
                    pad: 0,
                },
            );
            for (slot, b) in (0u32..).zip(&svc.backends) {
                raw.backends.insert(
                    BackendKey {
                        service_id: svc.service_id,
                        slot,
                    },
                    BackendValue {
                        ip: be32(b.ip),
                        port: be16(b.port),
                        flags: 0,
                        pad: 0,
                    },
                );
            }
        }
        Ok(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::rules::{Affinity, Backend, PROTO_TCP};

    #[test]
    fn prefix_parsing_masks_host_bits() {
        let p: Ipv4Prefix = "10.1.2.3/16".parse().unwrap();
        assert_eq!(p.to_string(), "10.1.0.0/16");
        assert_eq!("10.2.0.2".parse::<Ipv4Prefix>().unwrap().len(), 32);
        assert!("10.0.0.0/33".parse::<Ipv4Prefix>().is_err());
        assert_eq!(Ipv4Prefix::from_key(p.key()).unwrap(), p);
    }

    #[test]
    fn ipcache_entry_round_trips() {
        for e in [
            IpcacheEntry {
                identity: 65792,
                location: Location::Local { ifindex: 7 },
            },
            IpcacheEntry {
                identity: 131328,
                location: Location::Remote {
                    tunnel_endpoint: Ipv4Addr::new(172, 31, 255, 2),
                },
            },
        ] {
            assert_eq!(IpcacheEntry::from_value(&e.value()), Some(e));
        }
    }

    #[test]
    fn services_become_frontend_and_slots() {
        let mut d = DesiredState::default();
        let fe = Frontend {
            ip: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            proto: PROTO_TCP,
        };
        let b = |last| Backend {
            ip: Ipv4Addr::new(10, 2, 0, last),
            port: 8080,
        };
        d.services.insert(
            fe,
            Service {
                service_id: 7,
                affinity: Affinity::Local,
                backends: vec![b(2), b(3)],
            },
        );
        let raw = d.to_raw().unwrap();
        assert_eq!(raw.frontends[&fe.key()].count, 2);
        assert_eq!(raw.backends.len(), 2);
        assert!(raw.backends.contains_key(&BackendKey {
            service_id: 7,
            slot: 1
        }));

        let fe2 = Frontend { port: 81, ..fe };
        d.services.insert(
            fe2,
            Service {
                service_id: 7,
                affinity: Affinity::None,
                backends: vec![],
            },
        );
        assert!(d.to_raw().is_err(), "duplicate service ids are rejected");
    }

    #[test]
    fn identities_are_validated() {
        let mut d = DesiredState::default();
        d.ipcache.insert(
            Ipv4Prefix::host(Ipv4Addr::new(10, 1, 0, 2)),
            IpcacheEntry {
                identity: 1 << 24,
                location: Location::Local { ifindex: 3 },
            },
        );
        assert!(d.to_raw().is_err());
    }
}
