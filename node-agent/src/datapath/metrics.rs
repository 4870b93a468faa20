//! The per-reason counters of `cm_metrics` (`enum cm_reason` in `bpf/cm_types.h`).

use std::fmt;

/// Why a packet (or a socket call, for the LB reasons) ended where it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum Reason {
    /// Redirected into the tunnel or to a local pod.
    Forwarded = 0,
    /// Handed to the kernel stack (non-IPv4 such as ARP, or a non-mesh destination).
    ToStack = 1,
    /// Denied by policy (or by default deny of a selected identity).
    DropPolicyDeny = 2,
    /// Remote destination without tunnel endpoint, or no tunnel device configured.
    DropNoRoute = 3,
    /// VNI 0, a reserved identity (1..=255), wider than 24 bits, or (strict mode) spoofed.
    DropInvalidIdentity = 4,
    /// From the tunnel to an address that is not a local pod.
    DropUnknownDest = 5,
    /// A pod sent from an address the ipcache does not know.
    DropUnknownSource = 6,
    /// A pod sent from an address owned by another veth.
    DropSourceSpoof = 7,
    /// Truncated or invalid IPv4/L4 header (or non-IPv4 from the tunnel).
    DropMalformed = 8,
    /// `bpf_skb_{get,set}_tunnel_key` failed.
    DropTunnelKey = 9,
    /// Local destination without a `cm_endpoints` entry (no MACs to deliver with).
    DropNoEndpoint = 10,
    /// A connect/sendmsg to a frontend was rewritten to a backend.
    LbTranslated = 11,
    /// A connect/sendmsg to a frontend with no backend was refused (EPERM).
    LbNoBackend = 12,
    /// Passed as the reply of a tracked flow (a subset of `Forwarded`/`ToStack`).
    CtReply = 13,
    /// A gateway sent a tunnelled packet on: a node's towards a peer's
    /// gateway, or a peer's towards the destination's node.
    Relayed = 14,
    /// From the tunnel, outer source neither a node of this cluster nor a peer's gateway.
    DropTunnelSource = 15,
    /// The VNI's cluster may not come from that sender (a peer's gateway
    /// sending another cluster's identity, a node sending a foreign one).
    DropIdentitySpoof = 16,
    /// Tunnelled here for a destination not on this node, and no relay applies
    /// (not a gateway, or not across the cluster edge).
    DropNoRelay = 17,
}

impl Reason {
    /// Every reason, in index order.
    pub const ALL: [Reason; 18] = [
        Reason::Forwarded,
        Reason::ToStack,
        Reason::DropPolicyDeny,
        Reason::DropNoRoute,
        Reason::DropInvalidIdentity,
        Reason::DropUnknownDest,
        Reason::DropUnknownSource,
        Reason::DropSourceSpoof,
        Reason::DropMalformed,
        Reason::DropTunnelKey,
        Reason::DropNoEndpoint,
        Reason::LbTranslated,
        Reason::LbNoBackend,
        Reason::CtReply,
        Reason::Relayed,
        Reason::DropTunnelSource,
        Reason::DropIdentitySpoof,
        Reason::DropNoRelay,
    ];

    /// Number of slots in `cm_metrics` (`CM_REASON_MAX`).
    pub const SLOTS: u32 = 24;

    /// Index in `cm_metrics`.
    pub fn index(self) -> u32 {
        self as u32
    }

    /// Stable snake_case name, for metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Forwarded => "forwarded",
            Reason::ToStack => "to_stack",
            Reason::DropPolicyDeny => "drop_policy_deny",
            Reason::DropNoRoute => "drop_no_route",
            Reason::DropInvalidIdentity => "drop_invalid_identity",
            Reason::DropUnknownDest => "drop_unknown_dest",
            Reason::DropUnknownSource => "drop_unknown_source",
            Reason::DropSourceSpoof => "drop_source_spoof",
            Reason::DropMalformed => "drop_malformed",
            Reason::DropTunnelKey => "drop_tunnel_key",
            Reason::DropNoEndpoint => "drop_no_endpoint",
            Reason::LbTranslated => "lb_translated",
            Reason::LbNoBackend => "lb_no_backend",
            Reason::CtReply => "ct_reply",
            Reason::Relayed => "relayed",
            Reason::DropTunnelSource => "drop_tunnel_source",
            Reason::DropIdentitySpoof => "drop_identity_spoof",
            Reason::DropNoRelay => "drop_no_relay",
        }
    }

    /// True for the drop reasons.
    pub fn is_drop(self) -> bool {
        self.name().starts_with("drop_")
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Packets and bytes for one reason, summed over all CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// A snapshot of all counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    counters: [Counter; Reason::SLOTS as usize],
}

impl Metrics {
    pub(crate) fn set(&mut self, index: u32, c: Counter) {
        if let Some(slot) = self.counters.get_mut(index as usize) {
            *slot = c;
        }
    }

    /// The counter of one reason.
    pub fn get(&self, reason: Reason) -> Counter {
        self.counters[reason.index() as usize]
    }

    /// Shorthand for `get(reason).packets`.
    pub fn packets(&self, reason: Reason) -> u64 {
        self.get(reason).packets
    }

    /// All reasons with their counters, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (Reason, Counter)> + '_ {
        Reason::ALL.iter().map(|r| (*r, self.get(*r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_are_dense_and_fit() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index() as usize, i);
            assert!(r.index() < Reason::SLOTS);
        }
        assert!(Reason::DropPolicyDeny.is_drop());
        assert!(!Reason::Forwarded.is_drop());
    }

    #[test]
    fn metrics_get_set() {
        let mut m = Metrics::default();
        m.set(
            Reason::DropPolicyDeny.index(),
            Counter {
                packets: 3,
                bytes: 252,
            },
        );
        m.set(
            99,
            Counter {
                packets: 1,
                bytes: 1,
            },
        ); // out of range: ignored
        assert_eq!(m.packets(Reason::DropPolicyDeny), 3);
        assert_eq!(m.iter().filter(|(_, c)| c.packets > 0).count(), 1);
    }
}
