/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * clustermesh datapath: the key/value layouts shared by the BPF programs and
 * the Rust loader (node-agent/src/datapath/types.rs mirrors every struct here;
 * both sides assert sizes and offsets, so a drift fails the build/tests).
 *
 * Byte order: fields named *_be / documented "network order" hold big-endian
 * values exactly as they appear in packets; everything else is host order.
 */
#ifndef CM_TYPES_H
#define CM_TYPES_H

#include <linux/types.h>

#define CM_ETH_ALEN 6

/* ---- security identities (DESIGN §2) ---- */
#define CM_IDENTITY_MAX ((1u << 24) - 1) /* 24 bits travel in the VNI */
#define CM_RESERVED_IDENTITY_MAX 255u    /* 1..=255: reserved, never on the wire */

/* ---- cm_ipcache: LPM_TRIE ---- */
struct cm_ipcache_key {
	__u32 prefixlen; /* bpf_lpm_trie_key header: 0..=32 */
	__u32 addr;      /* IPv4, network order */
};

#define CM_IPCACHE_F_LOCAL 0x01  /* a pod on this node: ifindex is set */
#define CM_IPCACHE_F_REMOTE 0x02 /* another cluster's: tunnel_endpoint = the gateway to send to */
#define CM_IPCACHE_F_CLUSTER 0x04 /* this cluster, another node (or the service CIDR):
				   * never touched by from_pod; a gateway relays a peer's
				   * packet to tunnel_endpoint (that node's InternalIP), 0 = not relayed */

struct cm_ipcache_value {
	__u32 identity;        /* security identity of the prefix */
	__u32 tunnel_endpoint; /* peer gateway IPv4, network order; 0 = local */
	__u32 ifindex;         /* host-side veth of a local pod; 0 if remote */
	__u8 flags;            /* CM_IPCACHE_F_* */
	__u8 pad[3];
};

/* ---- cm_endpoints: HASH ifindex -> MACs of a local pod's veth pair ---- */
struct cm_endpoint_value {
	__u8 pod_mac[CM_ETH_ALEN];  /* MAC of the pod's eth0 (dst MAC on delivery) */
	__u8 host_mac[CM_ETH_ALEN]; /* MAC of the host-side veth (src MAC on delivery) */
	__u32 identity;             /* the pod's identity (informational) */
};

/* ---- cm_policy_lpm: LPM_TRIE ----
 * One key holds every dimension of a rule; the LPM prefix covers the fields
 * in order, so the prefix length says what the entry leaves open:
 *   CM_POLICY_PREFIX_ANY_PROTO (88 bits: up to direction)  any protocol/port
 *   CM_POLICY_PREFIX_ANY_PORT  (96 bits: up to proto)      one protocol, any port
 *   CM_POLICY_PREFIX_ANY_PORT + n                          the ports sharing the
 *                                                          first n bits of dport
 * so a port range becomes at most 30 entries (prefix/mask decomposition).
 * The local side is an identity or one local pod (named ports of ingress
 * rules resolve per pod); the peer side is an identity (0 = any), one mesh
 * pod (named ports of egress rules) or an ipBlock prefix (see cm_policy_cidr).
 */
#define CM_DIR_INGRESS 0
#define CM_DIR_EGRESS 1

#define CM_LOCAL_IDENTITY 0 /* local = security identity */
#define CM_LOCAL_ENDPOINT 1 /* local = IPv4 of one local pod, network order */

#define CM_PEER_IDENTITY 0 /* peer = security identity, 0 = any peer */
/* 1..=33: peer = an ipBlock prefix of length (kind - 1), network order */
#define CM_PEER_CIDR_BASE 1
#define CM_PEER_ENDPOINT 34 /* peer = IPv4 of one mesh pod, network order */

#define CM_POLICY_PREFIX_ANY_PROTO 88
#define CM_POLICY_PREFIX_ANY_PORT 96
#define CM_POLICY_PREFIX_FULL 112

struct cm_policy_key {
	__u32 prefixlen; /* bpf_lpm_trie_key header */
	__u32 local;     /* identity or local pod IPv4 (CM_LOCAL_*) */
	__u32 peer;      /* identity, pod IPv4 or prefix address (CM_PEER_*) */
	__u8 local_kind; /* CM_LOCAL_* */
	__u8 peer_kind;  /* CM_PEER_* */
	__u8 direction;  /* CM_DIR_* */
	__u8 proto;      /* IPPROTO_*; 0 with prefix ANY_PROTO */
	__u16 dport;     /* network order; masked by the prefix */
	__u16 pad;       /* outside every prefix; 0 */
};

/* ---- cm_policy_cidr: LPM_TRIE address -> the longest ipBlock prefix
 * (cidr or except) of any policy that contains it. Looked up only for peers
 * of identity `world` (addresses the ipcache does not place in the mesh). */
struct cm_policy_cidr_value {
	__u32 addr;      /* the prefix, network order */
	__u32 prefixlen; /* 0..=32 */
};

#define CM_POLICY_ALLOW 1
#define CM_POLICY_DENY 2

struct cm_policy_value {
	__u8 action; /* CM_POLICY_* */
	__u8 pad[7];
	__u64 packets; /* packets that matched this entry */
	__u64 bytes;
};

/* ---- cm_policy_enforced: HASH (identity, direction) -> 1 ---- */
struct cm_enforced_key {
	__u32 identity;
	__u8 direction; /* CM_DIR_* */
	__u8 pad[3];
};

/* ---- cm_ct: LRU_HASH ---- */
struct cm_ct_key {
	__u32 saddr; /* network order */
	__u32 daddr; /* network order */
	__u16 sport; /* network order; ICMP echo: the echo id */
	__u16 dport; /* network order; ICMP echo: the echo id */
	__u8 proto;
	__u8 pad[3];
};

#define CM_CT_F_EGRESS 0x01  /* created by from_pod (a pod opened it) */
#define CM_CT_F_INGRESS 0x02 /* created by from_tunnel (a remote peer opened it) */

struct cm_ct_value {
	__u64 last_seen; /* bpf_ktime_get_ns() */
	__u8 flags;      /* CM_CT_F_* */
	__u8 pad[7];
};

/* ---- cm_lb_frontends / cm_lb_backends: HASH ---- */
struct cm_lb_frontend_key {
	__u32 ip;   /* network order */
	__u16 port; /* network order */
	__u8 proto; /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 pad;
};

#define CM_AFFINITY_NONE 0
#define CM_AFFINITY_LOCAL 1
#define CM_AFFINITY_REMOTE 2

struct cm_lb_frontend_value {
	__u32 service_id;
	__u16 count;   /* backends in slots 0..count-1 */
	__u8 affinity; /* CM_AFFINITY_* (selection already applied in user space) */
	__u8 pad;
};

struct cm_lb_backend_key {
	__u32 service_id;
	__u32 slot;
};

struct cm_lb_backend_value {
	__u32 ip;   /* network order */
	__u16 port; /* network order */
	__u8 flags;
	__u8 pad;
};

/* ---- cm_lb_revnat: LRU_HASH (socket cookie, backend) -> frontend, for UDP recvmsg ---- */
struct cm_lb_revnat_key {
	__u64 cookie; /* bpf_get_socket_cookie() */
	__u32 ip;     /* backend, network order */
	__u16 port;   /* backend, network order */
	__u16 pad;
};

struct cm_lb_revnat_value {
	__u32 ip;   /* frontend, network order */
	__u16 port; /* frontend, network order */
	__u16 pad;
};

/* ---- cm_metrics: PERCPU_ARRAY indexed by reason ---- */
enum cm_reason {
	CM_REASON_FORWARDED = 0,       /* redirected into the tunnel or to a local pod */
	CM_REASON_TO_STACK = 1,        /* handed to the kernel stack (non-IPv4, non-mesh dst) */
	CM_REASON_DROP_POLICY_DENY = 2,
	CM_REASON_DROP_NO_ROUTE = 3,   /* remote dst without tunnel endpoint/device */
	CM_REASON_DROP_INVALID_IDENTITY = 4, /* VNI 0, reserved or > 24 bits */
	CM_REASON_DROP_UNKNOWN_DEST = 5,     /* from the tunnel to a non-local address */
	CM_REASON_DROP_UNKNOWN_SOURCE = 6,   /* pod source IP not in the ipcache */
	CM_REASON_DROP_SOURCE_SPOOF = 7,     /* pod source IP owned by another veth */
	CM_REASON_DROP_MALFORMED = 8,        /* truncated IPv4/L4 header */
	CM_REASON_DROP_TUNNEL_KEY = 9,       /* bpf_skb_{get,set}_tunnel_key failed */
	CM_REASON_DROP_NO_ENDPOINT = 10,     /* local dst without cm_endpoints entry */
	CM_REASON_LB_TRANSLATED = 11,        /* connect/sendmsg rewritten to a backend */
	CM_REASON_LB_NO_BACKEND = 12,        /* frontend with no backend: connect refused */
	CM_REASON_CT_REPLY = 13,             /* passed as a reply of a tracked flow */
	CM_REASON_RELAYED = 14,              /* a gateway sent a tunnelled packet on (node <-> peer gateway) */
	CM_REASON_DROP_TUNNEL_SOURCE = 15,   /* outer source is no node of this cluster and no peer gateway */
	CM_REASON_DROP_IDENTITY_SPOOF = 16,  /* the VNI's cluster may not come from that sender */
	CM_REASON_DROP_NO_RELAY = 17,        /* tunnelled to a node that is not the destination's and no relay applies */
	CM_REASON_MAX = 24,
};

struct cm_metric_value {
	__u64 packets;
	__u64 bytes;
};

/* ---- cm_config: ARRAY, one entry ---- */
#define CM_CFG_F_REDIRECT_PEER 0x01 /* deliver with bpf_redirect_peer instead of bpf_redirect */
#define CM_CFG_F_STRICT_SOURCE 0x02 /* from_tunnel: VNI must equal the ipcache identity of the source */
#define CM_CFG_F_NATIVE 0x04        /* native routing: remote destinations go to the node's routes */
#define CM_CFG_F_GATEWAY 0x08       /* this node is a gateway: from_tunnel relays */

struct cm_config_value {
	__u32 host_identity;  /* informational (reserved identity 1 by default) */
	__u32 tunnel_ifindex; /* collect-metadata VXLAN/Geneve device; 0 = not configured */
	__u32 flags;          /* CM_CFG_F_* */
	__u16 cluster_id;     /* this cluster's ID (0 = unknown: tunnel source checks drop all) */
	__u8 cluster_shift;   /* identity >> cluster_shift = its cluster ID (16, or 15 for 511 clusters) */
	__u8 pad;
};

/* ---- cm_tunnel_sources: HASH, outer IPv4 source -> who may send what ---- */
#define CM_TSRC_LOCAL_NODE 1    /* a node of this cluster: only this cluster's identities */
#define CM_TSRC_LOCAL_GATEWAY 2 /* a gateway of this cluster: its own, or relayed peers' identities */
#define CM_TSRC_PEER_GATEWAY 3  /* a gateway of cluster `cluster_id`: only that cluster's identities */

struct cm_tunnel_source_value {
	__u32 cluster_id;
	__u8 kind; /* CM_TSRC_* */
	__u8 pad[3];
};

/* Layout contract, mirrored by const asserts in types.rs. */
_Static_assert(sizeof(struct cm_ipcache_key) == 8, "cm_ipcache_key");
_Static_assert(sizeof(struct cm_ipcache_value) == 16, "cm_ipcache_value");
_Static_assert(__builtin_offsetof(struct cm_ipcache_value, ifindex) == 8, "ipcache ifindex");
_Static_assert(__builtin_offsetof(struct cm_ipcache_value, flags) == 12, "ipcache flags");
_Static_assert(sizeof(struct cm_endpoint_value) == 16, "cm_endpoint_value");
_Static_assert(__builtin_offsetof(struct cm_endpoint_value, identity) == 12, "endpoint identity");
_Static_assert(sizeof(struct cm_policy_key) == 20, "cm_policy_key");
_Static_assert(__builtin_offsetof(struct cm_policy_key, local_kind) == 12, "policy local_kind");
_Static_assert(__builtin_offsetof(struct cm_policy_key, proto) == 15, "policy proto");
_Static_assert(__builtin_offsetof(struct cm_policy_key, dport) == 16, "policy dport");
_Static_assert(sizeof(struct cm_policy_cidr_value) == 8, "cm_policy_cidr_value");
_Static_assert(sizeof(struct cm_policy_value) == 24, "cm_policy_value");
_Static_assert(__builtin_offsetof(struct cm_policy_value, packets) == 8, "policy packets");
_Static_assert(sizeof(struct cm_enforced_key) == 8, "cm_enforced_key");
_Static_assert(sizeof(struct cm_ct_key) == 16, "cm_ct_key");
_Static_assert(__builtin_offsetof(struct cm_ct_key, proto) == 12, "ct proto");
_Static_assert(sizeof(struct cm_ct_value) == 16, "cm_ct_value");
_Static_assert(sizeof(struct cm_lb_frontend_key) == 8, "cm_lb_frontend_key");
_Static_assert(sizeof(struct cm_lb_frontend_value) == 8, "cm_lb_frontend_value");
_Static_assert(__builtin_offsetof(struct cm_lb_frontend_value, count) == 4, "frontend count");
_Static_assert(sizeof(struct cm_lb_backend_key) == 8, "cm_lb_backend_key");
_Static_assert(sizeof(struct cm_lb_backend_value) == 8, "cm_lb_backend_value");
_Static_assert(sizeof(struct cm_lb_revnat_key) == 16, "cm_lb_revnat_key");
_Static_assert(sizeof(struct cm_lb_revnat_value) == 8, "cm_lb_revnat_value");
_Static_assert(sizeof(struct cm_metric_value) == 16, "cm_metric_value");
_Static_assert(sizeof(struct cm_config_value) == 16, "cm_config_value");
_Static_assert(__builtin_offsetof(struct cm_config_value, cluster_id) == 12, "config cluster_id");
_Static_assert(sizeof(struct cm_tunnel_source_value) == 8, "cm_tunnel_source_value");

#endif /* CM_TYPES_H */
