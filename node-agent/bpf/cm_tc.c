// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * clustermesh datapath: the TC programs.
 *
 *   from_pod    ingress of each local pod's host-side veth (= packets leaving the pod)
 *   from_tunnel ingress of the collect-metadata VXLAN/Geneve device
 *   from_underlay ingress of the underlay device in native-routing mode
 *
 * See docs/datapath.md for the packet walk.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "cm_maps.h"
#include "cm_policy.h"

#define CM_TUNNEL_TTL 64

static __always_inline int cm_drop(__u32 reason, struct __sk_buff *skb)
{
	cm_count(reason, skb->len);
	return TC_ACT_SHOT;
}

static __always_inline struct cm_ipcache_value *cm_ipcache_lookup(__u32 addr)
{
	struct cm_ipcache_key k = { .prefixlen = 32, .addr = addr };

	return bpf_map_lookup_elem(&cm_ipcache, &k);
}

/* Rewrites the MACs for the pod behind `ifindex` and hands the frame to it. */
static __always_inline int cm_deliver_local(struct __sk_buff *skb, __u32 ifindex,
					    const struct cm_config_value *cfg)
{
	struct cm_endpoint_value *ep = bpf_map_lookup_elem(&cm_endpoints, &ifindex);

	if (!ep)
		return cm_drop(CM_REASON_DROP_NO_ENDPOINT, skb);
	if (bpf_skb_store_bytes(skb, 0, ep->pod_mac, CM_ETH_ALEN, 0) < 0 ||
	    bpf_skb_store_bytes(skb, CM_ETH_ALEN, ep->host_mac, CM_ETH_ALEN, 0) < 0)
		return cm_drop(CM_REASON_DROP_MALFORMED, skb);
	cm_count(CM_REASON_FORWARDED, skb->len);
	if (cfg && (cfg->flags & CM_CFG_F_REDIRECT_PEER))
		return bpf_redirect_peer(ifindex, 0);
	return bpf_redirect(ifindex, 0);
}

static __always_inline int cm_valid_wire_identity(__u32 id)
{
	return id > CM_RESERVED_IDENTITY_MAX && id <= CM_IDENTITY_MAX;
}

SEC("classifier")
int from_pod(struct __sk_buff *skb)
{
	struct cm_flow f;
	int rc = cm_parse(skb, &f);

	if (rc == CM_PARSE_NOT_IPV4) {
		/* ARP, IPv6 ND, ...: the host answers (proxy ARP / neighbour entries). */
		cm_count(CM_REASON_TO_STACK, skb->len);
		return TC_ACT_OK;
	}
	if (rc != CM_PARSE_OK)
		return cm_drop(CM_REASON_DROP_MALFORMED, skb);

	struct cm_ipcache_value *src = cm_ipcache_lookup(f.saddr);

	if (!src)
		return cm_drop(CM_REASON_DROP_UNKNOWN_SOURCE, skb);
	/* A pod may only send from its own address(es). */
	if (!(src->flags & CM_IPCACHE_F_LOCAL) || src->ifindex != skb->ifindex)
		return cm_drop(CM_REASON_DROP_SOURCE_SPOOF, skb);
	__u32 src_id = src->identity;

	struct cm_ipcache_value *dst = cm_ipcache_lookup(f.daddr);
	int reply = cm_ct_is_reply(&f);

	if (reply)
		cm_count(CM_REASON_CT_REPLY, skb->len);

	if (!dst) {
		/* Not a mesh address: the node's own routing takes it. */
		if (!reply && !cm_policy_allows(src_id, CM_IDENTITY_WORLD, &f, CM_DIR_EGRESS, skb->len))
			return cm_drop(CM_REASON_DROP_POLICY_DENY, skb);
		cm_count(CM_REASON_TO_STACK, skb->len);
		return TC_ACT_OK;
	}
	/* This cluster's other nodes and services: the CNI's business, passed
	 * unchanged (no policy here either: this cluster's policy engine has it). */
	if (dst->flags & CM_IPCACHE_F_CLUSTER) {
		cm_count(CM_REASON_TO_STACK, skb->len);
		return TC_ACT_OK;
	}
	__u32 dst_id = dst->identity;
	__u32 dst_flags = dst->flags;
	__u32 dst_ifindex = dst->ifindex;
	__u32 endpoint = dst->tunnel_endpoint;

	if (!reply && !cm_policy_allows(src_id, dst_id, &f, CM_DIR_EGRESS, skb->len))
		return cm_drop(CM_REASON_DROP_POLICY_DENY, skb);

	struct cm_config_value *cfg = cm_config_get();

	if ((dst_flags & CM_IPCACHE_F_LOCAL) && dst_ifindex) {
		/* Pod to pod on this node: the destination's ingress policy too. */
		if (!reply && !cm_policy_allows(dst_id, src_id, &f, CM_DIR_INGRESS, skb->len))
			return cm_drop(CM_REASON_DROP_POLICY_DENY, skb);
		if (!reply)
			cm_ct_track(&f, CM_CT_F_EGRESS);
		return cm_deliver_local(skb, dst_ifindex, cfg);
	}

	if (cfg && (cfg->flags & CM_CFG_F_NATIVE)) {
		/* Native routing: no encapsulation; the node's route for the
		 * remote pod CIDR takes the packet to the peer gateway, which
		 * reads the source identity from its own ipcache. */
		if (!reply)
			cm_ct_track(&f, CM_CT_F_EGRESS);
		cm_count(CM_REASON_FORWARDED, skb->len);
		return TC_ACT_OK;
	}
	if (!endpoint || !cfg || !cfg->tunnel_ifindex)
		return cm_drop(CM_REASON_DROP_NO_ROUTE, skb);
	if (!cm_valid_wire_identity(src_id))
		return cm_drop(CM_REASON_DROP_INVALID_IDENTITY, skb);
	if (!reply)
		cm_ct_track(&f, CM_CT_F_EGRESS);

	struct bpf_tunnel_key key = {};

	key.tunnel_id = src_id; /* VNI = source security identity */
	key.remote_ipv4 = bpf_ntohl(endpoint);
	key.tunnel_ttl = CM_TUNNEL_TTL;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return cm_drop(CM_REASON_DROP_TUNNEL_KEY, skb);
	cm_count(CM_REASON_FORWARDED, skb->len);
	return bpf_redirect(cfg->tunnel_ifindex, 0);
}

/*
 * Who may send which identities through the tunnel (DESIGN §10): the outer
 * source must be a node of this cluster or a peer's gateway (cm_tunnel_sources);
 * a node of this cluster sends only this cluster's identities, a peer's
 * gateway only its own cluster's, and a gateway of this cluster also the
 * peers' identities it relays. Returns the sender kind, or 0 after dropping.
 */
static __always_inline int cm_check_tunnel_source(struct __sk_buff *skb, __u32 outer_be,
						  __u32 src_id, const struct cm_config_value *cfg,
						  int *rc)
{
	struct cm_tunnel_source_value *ts = bpf_map_lookup_elem(&cm_tunnel_sources, &outer_be);

	if (!ts) {
		*rc = cm_drop(CM_REASON_DROP_TUNNEL_SOURCE, skb);
		return 0;
	}
	__u32 id_cluster = src_id >> (cfg->cluster_shift & 31);
	__u32 local = cfg->cluster_id;
	__u8 kind = ts->kind;

	if (kind == CM_TSRC_LOCAL_NODE && id_cluster == local && local)
		return kind;
	if (kind == CM_TSRC_LOCAL_GATEWAY && local)
		return kind;
	if (kind == CM_TSRC_PEER_GATEWAY && id_cluster == ts->cluster_id && id_cluster != local)
		return kind;
	*rc = cm_drop(kind == CM_TSRC_LOCAL_NODE || kind == CM_TSRC_LOCAL_GATEWAY ||
			      kind == CM_TSRC_PEER_GATEWAY
		      ? CM_REASON_DROP_IDENTITY_SPOOF
		      : CM_REASON_DROP_TUNNEL_SOURCE,
		      skb);
	return 0;
}

/* A gateway sends a tunnelled packet on, same VNI, to `endpoint` (network order). */
static __always_inline int cm_relay(struct __sk_buff *skb, __u32 src_id, __u32 endpoint,
				    const struct cm_config_value *cfg)
{
	struct bpf_tunnel_key key = {};

	if (!endpoint || !cfg->tunnel_ifindex)
		return cm_drop(CM_REASON_DROP_NO_ROUTE, skb);
	key.tunnel_id = src_id;
	key.remote_ipv4 = bpf_ntohl(endpoint);
	key.tunnel_ttl = CM_TUNNEL_TTL;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return cm_drop(CM_REASON_DROP_TUNNEL_KEY, skb);
	cm_count(CM_REASON_RELAYED, skb->len);
	return bpf_redirect(cfg->tunnel_ifindex, 0);
}

SEC("classifier")
int from_tunnel(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return cm_drop(CM_REASON_DROP_TUNNEL_KEY, skb);
	__u32 src_id = key.tunnel_id;

	/* 0, the reserved identities (host, world, ...) and anything wider than
	 * 24 bits never come through the tunnel: a spoof or a misconfiguration. */
	if (!cm_valid_wire_identity(src_id))
		return cm_drop(CM_REASON_DROP_INVALID_IDENTITY, skb);

	struct cm_config_value *cfg = cm_config_get();

	if (!cfg)
		return cm_drop(CM_REASON_DROP_NO_ROUTE, skb);
	int rc = TC_ACT_SHOT;
	int sender = cm_check_tunnel_source(skb, bpf_htonl(key.remote_ipv4), src_id, cfg, &rc);

	if (!sender)
		return rc;

	struct cm_flow f;

	rc = cm_parse(skb, &f);
	if (rc != CM_PARSE_OK)
		return cm_drop(CM_REASON_DROP_MALFORMED, skb);

	if (cfg->flags & CM_CFG_F_STRICT_SOURCE) {
		struct cm_ipcache_value *src = cm_ipcache_lookup(f.saddr);

		if (!src || src->identity != src_id)
			return cm_drop(CM_REASON_DROP_INVALID_IDENTITY, skb);
	}

	struct cm_ipcache_value *dst = cm_ipcache_lookup(f.daddr);

	if (!dst)
		return cm_drop(CM_REASON_DROP_UNKNOWN_DEST, skb);
	__u32 dst_flags = dst->flags;
	__u32 dst_id = dst->identity;
	__u32 dst_ifindex = dst->ifindex;
	__u32 endpoint = dst->tunnel_endpoint;

	if (!(dst_flags & CM_IPCACHE_F_LOCAL) || !dst_ifindex) {
		/* Not on this node: only a gateway sends it on, and only across
		 * the cluster edge (a node's packet to a peer's gateway, a peer's
		 * packet to the destination's node), so nothing can loop. */
		if (!(cfg->flags & CM_CFG_F_GATEWAY))
			return cm_drop(CM_REASON_DROP_UNKNOWN_DEST, skb);
		if ((dst_flags & CM_IPCACHE_F_REMOTE) && sender != CM_TSRC_PEER_GATEWAY)
			return cm_relay(skb, src_id, endpoint, cfg);
		if ((dst_flags & CM_IPCACHE_F_CLUSTER) && sender == CM_TSRC_PEER_GATEWAY) {
			/* This node's own CIDR or the service range: no pod here by that address. */
			if (!endpoint)
				return cm_drop(CM_REASON_DROP_UNKNOWN_DEST, skb);
			return cm_relay(skb, src_id, endpoint, cfg);
		}
		return cm_drop(CM_REASON_DROP_NO_RELAY, skb);
	}

	if (cm_ct_is_reply(&f)) {
		cm_count(CM_REASON_CT_REPLY, skb->len);
	} else {
		if (!cm_policy_allows(dst_id, src_id, &f, CM_DIR_INGRESS, skb->len))
			return cm_drop(CM_REASON_DROP_POLICY_DENY, skb);
		cm_ct_track(&f, CM_CT_F_INGRESS);
	}
	return cm_deliver_local(skb, dst_ifindex, cfg);
}

/*
 * Native-routing mode: packets from peer gateways arrive unencapsulated on the
 * underlay. Those addressed to a local pod get their source identity from the
 * ipcache (a remote endpoint's identity, `world` for anything else), ingress
 * policy and connection tracking, and are delivered like from_tunnel does.
 * Everything else on the underlay is the node's own traffic and passes.
 */
SEC("classifier")
int from_underlay(struct __sk_buff *skb)
{
	struct cm_flow f;
	int rc = cm_parse(skb, &f);

	if (rc == CM_PARSE_NOT_IPV4)
		return TC_ACT_OK;
	if (rc != CM_PARSE_OK)
		return cm_drop(CM_REASON_DROP_MALFORMED, skb);

	struct cm_ipcache_value *dst = cm_ipcache_lookup(f.daddr);

	if (!dst || !(dst->flags & CM_IPCACHE_F_LOCAL) || !dst->ifindex)
		return TC_ACT_OK;
	__u32 dst_id = dst->identity;
	__u32 dst_ifindex = dst->ifindex;

	struct cm_ipcache_value *src = cm_ipcache_lookup(f.saddr);
	__u32 src_id = CM_IDENTITY_WORLD;

	if (src) {
		/* A local pod's address cannot come in from the underlay. */
		if (src->flags & CM_IPCACHE_F_LOCAL)
			return cm_drop(CM_REASON_DROP_SOURCE_SPOOF, skb);
		src_id = src->identity;
	}

	if (cm_ct_is_reply(&f)) {
		cm_count(CM_REASON_CT_REPLY, skb->len);
	} else {
		if (!cm_policy_allows(dst_id, src_id, &f, CM_DIR_INGRESS, skb->len))
			return cm_drop(CM_REASON_DROP_POLICY_DENY, skb);
		cm_ct_track(&f, CM_CT_F_INGRESS);
	}
	return cm_deliver_local(skb, dst_ifindex, cm_config_get());
}

/* Kernel-loaded code is dual licensed so it may use GPL-only helpers. */
char _license[] SEC("license") = "Dual BSD/GPL";
