//! Domain types of policy entries and load-balanced services.

use std::net::Ipv4Addr;

use super::types::{self, FrontendKey, be16, be32, port_from_be16};

/// IP protocol numbers used in policy and LB keys.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Policy direction, seen from the identity the rule is attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub(crate) fn raw(self) -> u8 {
        match self {
            Direction::Ingress => types::DIR_INGRESS,
            Direction::Egress => types::DIR_EGRESS,
        }
    }

    pub(crate) fn from_raw(d: u8) -> Option<Self> {
        match d {
            types::DIR_INGRESS => Some(Direction::Ingress),
            types::DIR_EGRESS => Some(Direction::Egress),
            _ => None,
        }
    }
}

/// What a matching policy entry does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Allow,
    Deny,
}

impl Verdict {
    pub(crate) fn raw(self) -> u8 {
        match self {
            Verdict::Allow => types::POLICY_ALLOW,
            Verdict::Deny => types::POLICY_DENY,
        }
    }

    pub(crate) fn from_raw(a: u8) -> Option<Self> {
        match a {
            types::POLICY_ALLOW => Some(Verdict::Allow),
            types::POLICY_DENY => Some(Verdict::Deny),
            _ => None,
        }
    }
}

/// A service frontend (what clients connect to).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
}

impl Frontend {
    pub(crate) fn key(&self) -> FrontendKey {
        FrontendKey {
            ip: be32(self.ip),
            port: be16(self.port),
            proto: self.proto,
            pad: 0,
        }
    }

    /// Reads a raw `cm_lb_frontends` key back.
    pub fn from_key(k: &FrontendKey) -> Self {
        Frontend {
            ip: types::ip_from_be32(k.ip),
            port: port_from_be16(k.port),
            proto: k.proto,
        }
    }
}

/// Which backends the desired-state layer put in the slots (informational for BPF).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Affinity {
    #[default]
    None,
    Local,
    Remote,
}

impl Affinity {
    pub(crate) fn raw(self) -> u8 {
        match self {
            Affinity::None => 0,
            Affinity::Local => 1,
            Affinity::Remote => 2,
        }
    }
}

/// A backend address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub ip: Ipv4Addr,
    pub port: u16,
}

/// A load-balanced service: the backends to pick from (affinity already applied).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Service {
    /// Unique per frontend; keys the backend slots.
    pub service_id: u32,
    pub affinity: Affinity,
    pub backends: Vec<Backend>,
}
