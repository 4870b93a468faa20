//! `#[repr(C)]` mirrors of the key/value structs in `bpf/cm_types.h`.
//!
//! Every struct has explicit padding fields (so no byte is uninitialised and
//! `aya::Pod` is sound) and its size/offsets are asserted at compile time here
//! and with `_Static_assert` in C. Fields documented "network order" hold the
//! big-endian value exactly as it is in packets; [`be32`]/[`be16`] convert.

use std::net::Ipv4Addr;

/// An IPv4 address as the datapath stores it (network byte order in memory).
pub fn be32(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// Inverse of [`be32`].
pub fn ip_from_be32(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

/// A port as the datapath stores it (network byte order in memory).
pub fn be16(port: u16) -> u16 {
    port.to_be()
}

/// Inverse of [`be16`].
pub fn port_from_be16(raw: u16) -> u16 {
    u16::from_be(raw)
}

/// Identities 1..=255 are reserved and never travel in a VNI.
pub const RESERVED_IDENTITY_MAX: u32 = 255;
/// Only 24 identity bits fit in a VXLAN/Geneve VNI.
pub const IDENTITY_MAX: u32 = (1 << 24) - 1;
/// Reserved identity `world`: peers outside the mesh (egress policy to non-mesh destinations).
pub const IDENTITY_WORLD: u32 = 2;

/// `cm_ipcache` key (`struct cm_ipcache_key`): LPM prefix length + IPv4 (network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpcacheKey {
    pub prefixlen: u32,
    pub addr: u32,
}

/// `cm_ipcache` value flag: a pod on this node (`ifindex` set).
pub const IPCACHE_F_LOCAL: u8 = 0x01;
/// `cm_ipcache` value flag: behind a peer gateway (`tunnel_endpoint` set).
pub const IPCACHE_F_REMOTE: u8 = 0x02;
/// `cm_ipcache` flag: this cluster, another node (never touched by `from_pod`;
/// a gateway relays a peer's packet to `tunnel_endpoint` when it is set).
pub const IPCACHE_F_CLUSTER: u8 = 0x04;

/// `cm_ipcache` value (`struct cm_ipcache_value`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpcacheValue {
    pub identity: u32,
    /// Peer gateway, network order; 0 = local.
    pub tunnel_endpoint: u32,
    /// Host-side veth of a local pod; 0 if remote.
    pub ifindex: u32,
    pub flags: u8,
    pub pad: [u8; 3],
}

/// `cm_endpoints` value (`struct cm_endpoint_value`), keyed by host-side veth ifindex.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointValue {
    pub pod_mac: [u8; 6],
    pub host_mac: [u8; 6],
    pub identity: u32,
}

/// Policy direction values (`CM_DIR_*`).
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// `cm_policy_lpm` local kinds (`CM_LOCAL_*`).
pub const LOCAL_IDENTITY: u8 = 0;
pub const LOCAL_ENDPOINT: u8 = 1;
/// `cm_policy_lpm` peer kinds (`CM_PEER_*`): 1..=33 is an ipBlock prefix of length kind - 1.
pub const PEER_IDENTITY: u8 = 0;
pub const PEER_CIDR_BASE: u8 = 1;
pub const PEER_ENDPOINT: u8 = 34;
/// `cm_policy_lpm` prefix lengths (`CM_POLICY_PREFIX_*`).
pub const POLICY_PREFIX_ANY_PROTO: u32 = 88;
pub const POLICY_PREFIX_ANY_PORT: u32 = 96;
pub const POLICY_PREFIX_FULL: u32 = 112;

/// The data part of a `cm_policy_lpm` key (`struct cm_policy_key` after `prefixlen`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKeyData {
    /// Identity, or a local pod's IPv4 in network order.
    pub local: u32,
    /// Identity (0 = any), or an IPv4 (pod or prefix address) in network order.
    pub peer: u32,
    pub local_kind: u8,
    pub peer_kind: u8,
    pub direction: u8,
    /// IP protocol; 0 = any (prefix [`POLICY_PREFIX_ANY_PROTO`]).
    pub proto: u8,
    /// Network order, masked by the prefix.
    pub dport: u16,
    pub pad: u16,
}

/// `cm_policy_lpm` key (`struct cm_policy_key`): LPM prefix length + [`PolicyKeyData`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    pub prefixlen: u32,
    pub data: PolicyKeyData,
}

/// `cm_policy_cidr` value (`struct cm_policy_cidr_value`): the matched prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyCidrValue {
    /// Network order.
    pub addr: u32,
    pub prefixlen: u32,
}

/// Policy actions (`CM_POLICY_*`).
pub const POLICY_ALLOW: u8 = 1;
pub const POLICY_DENY: u8 = 2;

/// `cm_policy` value (`struct cm_policy_value`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyValue {
    pub action: u8,
    pub pad: [u8; 7],
    pub packets: u64,
    pub bytes: u64,
}

/// `cm_policy_enforced` key (`struct cm_enforced_key`); the value is a `u8` (1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnforcedKey {
    pub identity: u32,
    pub direction: u8,
    pub pad: [u8; 3],
}

/// `cm_ct` key (`struct cm_ct_key`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub pad: [u8; 3],
}

/// `cm_ct` value (`struct cm_ct_value`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CtValue {
    pub last_seen: u64,
    pub flags: u8,
    pub pad: [u8; 7],
}

/// `cm_lb_frontends` key (`struct cm_lb_frontend_key`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrontendKey {
    pub ip: u32,
    pub port: u16,
    pub proto: u8,
    pub pad: u8,
}

/// `cm_lb_frontends` value (`struct cm_lb_frontend_value`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrontendValue {
    pub service_id: u32,
    /// Backends live in slots `0..count`.
    pub count: u16,
    pub affinity: u8,
    pub pad: u8,
}

/// `cm_lb_backends` key (`struct cm_lb_backend_key`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendKey {
    pub service_id: u32,
    pub slot: u32,
}

/// `cm_lb_backends` value (`struct cm_lb_backend_value`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendValue {
    pub ip: u32,
    pub port: u16,
    pub flags: u8,
    pub pad: u8,
}

/// `cm_lb_revnat` key (`struct cm_lb_revnat_key`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RevNatKey {
    pub cookie: u64,
    pub ip: u32,
    pub port: u16,
    pub pad: u16,
}

/// `cm_lb_revnat` value (`struct cm_lb_revnat_value`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RevNatValue {
    pub ip: u32,
    pub port: u16,
    pub pad: u16,
}

/// `cm_metrics` value (`struct cm_metric_value`), one per CPU and reason.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MetricValue {
    pub packets: u64,
    pub bytes: u64,
}

/// `cm_config` flag: deliver to local pods with `bpf_redirect_peer`.
pub const CFG_F_REDIRECT_PEER: u32 = 0x01;
/// `cm_config` flag: from_tunnel requires VNI == ipcache identity of the inner source.
pub const CFG_F_STRICT_SOURCE: u32 = 0x02;
/// `cm_config` flag: native routing (remote destinations go to the node's routes).
pub const CFG_F_NATIVE: u32 = 0x04;
/// `cm_config` flag: this node is a gateway (`from_tunnel` relays).
pub const CFG_F_GATEWAY: u32 = 0x08;

/// `cm_tunnel_sources` kinds (`CM_TSRC_*`).
pub const TSRC_LOCAL_NODE: u8 = 1;
pub const TSRC_LOCAL_GATEWAY: u8 = 2;
pub const TSRC_PEER_GATEWAY: u8 = 3;

/// `cm_tunnel_sources` value (`struct cm_tunnel_source_value`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TunnelSourceValue {
    pub cluster_id: u32,
    pub kind: u8,
    pub pad: [u8; 3],
}

/// `cm_config` value (`struct cm_config_value`), the single entry at index 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfigValue {
    pub host_identity: u32,
    pub tunnel_ifindex: u32,
    pub flags: u32,
    pub cluster_id: u16,
    pub cluster_shift: u8,
    pub pad: u8,
}

// SAFETY: all of these are `#[repr(C)]`, made only of integers and integer
// arrays, with every padding byte spelled out as a field: any bit pattern is
// valid and none is uninitialised.
unsafe impl aya::Pod for IpcacheKey {}
unsafe impl aya::Pod for IpcacheValue {}
unsafe impl aya::Pod for EndpointValue {}
unsafe impl aya::Pod for PolicyKey {}
unsafe impl aya::Pod for PolicyKeyData {}
unsafe impl aya::Pod for PolicyCidrValue {}
unsafe impl aya::Pod for PolicyValue {}
unsafe impl aya::Pod for EnforcedKey {}
unsafe impl aya::Pod for CtKey {}
unsafe impl aya::Pod for CtValue {}
unsafe impl aya::Pod for FrontendKey {}
unsafe impl aya::Pod for FrontendValue {}
unsafe impl aya::Pod for BackendKey {}
unsafe impl aya::Pod for BackendValue {}
unsafe impl aya::Pod for RevNatKey {}
unsafe impl aya::Pod for RevNatValue {}
unsafe impl aya::Pod for MetricValue {}
unsafe impl aya::Pod for ConfigValue {}
// SAFETY: as above.
unsafe impl aya::Pod for TunnelSourceValue {}

/// The same layout contract as the `_Static_assert`s in `bpf/cm_types.h`.
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<IpcacheKey>() == 8);
    assert!(size_of::<IpcacheValue>() == 16);
    assert!(offset_of!(IpcacheValue, ifindex) == 8);
    assert!(offset_of!(IpcacheValue, flags) == 12);
    assert!(size_of::<EndpointValue>() == 16);
    assert!(offset_of!(EndpointValue, identity) == 12);
    assert!(size_of::<PolicyKey>() == 20);
    assert!(size_of::<PolicyKeyData>() == 16);
    assert!(offset_of!(PolicyKeyData, local_kind) == 8);
    assert!(offset_of!(PolicyKeyData, proto) == 11);
    assert!(offset_of!(PolicyKeyData, dport) == 12);
    assert!(size_of::<PolicyCidrValue>() == 8);
    assert!(size_of::<PolicyValue>() == 24);
    assert!(offset_of!(PolicyValue, packets) == 8);
    assert!(size_of::<EnforcedKey>() == 8);
    assert!(size_of::<CtKey>() == 16);
    assert!(offset_of!(CtKey, proto) == 12);
    assert!(size_of::<CtValue>() == 16);
    assert!(size_of::<FrontendKey>() == 8);
    assert!(size_of::<FrontendValue>() == 8);
    assert!(offset_of!(FrontendValue, count) == 4);
    assert!(size_of::<BackendKey>() == 8);
    assert!(size_of::<BackendValue>() == 8);
    assert!(size_of::<RevNatKey>() == 16);
    assert!(size_of::<RevNatValue>() == 8);
    assert!(size_of::<MetricValue>() == 16);
    assert!(size_of::<ConfigValue>() == 16);
    assert!(offset_of!(ConfigValue, cluster_id) == 12);
    assert!(size_of::<TunnelSourceValue>() == 8);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_order_helpers_round_trip() {
        let ip = Ipv4Addr::new(10, 2, 0, 2);
        assert_eq!(be32(ip).to_ne_bytes(), [10, 2, 0, 2]);
        assert_eq!(ip_from_be32(be32(ip)), ip);
        assert_eq!(be16(8080).to_ne_bytes(), [0x1f, 0x90]);
        assert_eq!(port_from_be16(be16(8080)), 8080);
    }

    #[test]
    fn lpm_key_matches_aya_key_layout() {
        // aya's lpm_trie::Key<u32> is `#[repr(C, packed)] { prefix_len: u32, data: u32 }`.
        assert_eq!(
            std::mem::size_of::<aya::maps::lpm_trie::Key<u32>>(),
            std::mem::size_of::<IpcacheKey>()
        );
    }
}
