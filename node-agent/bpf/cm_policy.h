/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * clustermesh datapath: packet parsing, connection tracking and policy.
 */
#ifndef CM_POLICY_H
#define CM_POLICY_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "cm_maps.h"

#define CM_IDENTITY_WORLD 2u /* reserved: anything outside the mesh */

#define CM_CT_LIFETIME_TCP_NS (6ull * 3600 * 1000000000ull)
#define CM_CT_LIFETIME_OTHER_NS (60ull * 1000000000ull)
#define CM_CT_REFRESH_NS (1000000000ull)

#define CM_ICMP_ECHOREPLY 0
#define CM_ICMP_ECHO 8

/* An IPv4 flow as seen in one packet. Addresses and ports in network order. */
struct cm_flow {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;  /* TCP/UDP port; ICMP echo id; else 0 */
	__u16 dport;  /* TCP/UDP port; ICMP echo id; else 0 */
	__u16 pdport; /* the port policy matches on: dport, 0 for ICMP */
	__u8 proto;
	__u8 pad;
};

#define CM_PARSE_NOT_IPV4 0
#define CM_PARSE_OK 1
#define CM_PARSE_MALFORMED -1

/* Parses eth + IPv4 (+ the L4 ports) with bpf_skb_load_bytes, so it does not
 * depend on how much of the packet is in the linear area. */
static __always_inline int cm_parse(struct __sk_buff *skb, struct cm_flow *f)
{
	struct ethhdr eth;
	struct iphdr ip;

	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
		return CM_PARSE_MALFORMED;
	if (eth.h_proto != bpf_htons(ETH_P_IP))
		return CM_PARSE_NOT_IPV4;
	if (bpf_skb_load_bytes(skb, sizeof(eth), &ip, sizeof(ip)) < 0)
		return CM_PARSE_MALFORMED;
	if (ip.version != 4 || ip.ihl < 5)
		return CM_PARSE_MALFORMED;

	f->saddr = ip.saddr;
	f->daddr = ip.daddr;
	f->proto = ip.protocol;
	f->sport = 0;
	f->dport = 0;
	f->pdport = 0;
	f->pad = 0;

	/* Non-first fragments carry no L4 header: they match port-0 entries only. */
	if (ip.frag_off & bpf_htons(0x1fff))
		return CM_PARSE_OK;

	__u32 l4 = sizeof(eth) + ip.ihl * 4;

	if (ip.protocol == IPPROTO_TCP || ip.protocol == IPPROTO_UDP) {
		__u16 ports[2];

		if (bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)) < 0)
			return CM_PARSE_MALFORMED;
		f->sport = ports[0];
		f->dport = ports[1];
		f->pdport = ports[1];
	} else if (ip.protocol == IPPROTO_ICMP) {
		__u8 hdr[8];

		if (bpf_skb_load_bytes(skb, l4, hdr, sizeof(hdr)) < 0)
			return CM_PARSE_MALFORMED;
		if (hdr[0] == CM_ICMP_ECHO || hdr[0] == CM_ICMP_ECHOREPLY) {
			__u16 id = (__u16)hdr[4] | ((__u16)hdr[5] << 8);

			f->sport = id;
			f->dport = id;
		}
	}
	return CM_PARSE_OK;
}

static __always_inline __u64 cm_ct_lifetime(__u8 proto)
{
	return proto == IPPROTO_TCP ? CM_CT_LIFETIME_TCP_NS : CM_CT_LIFETIME_OTHER_NS;
}

/* True when the packet answers a flow that the other side opened and that
 * policy allowed (its reverse tuple is tracked and not expired). */
static __always_inline int cm_ct_is_reply(const struct cm_flow *f)
{
	struct cm_ct_key k = {
		.saddr = f->daddr,
		.daddr = f->saddr,
		.sport = f->dport,
		.dport = f->sport,
		.proto = f->proto,
	};
	struct cm_ct_value *v = bpf_map_lookup_elem(&cm_ct, &k);

	if (!v)
		return 0;
	__u64 now = bpf_ktime_get_ns();

	if (now - v->last_seen > cm_ct_lifetime(f->proto))
		return 0;
	if (now - v->last_seen > CM_CT_REFRESH_NS)
		v->last_seen = now;
	return 1;
}

/* Records an allowed flow so that its replies pass policy in both programs. */
static __always_inline void cm_ct_track(const struct cm_flow *f, __u8 flags)
{
	struct cm_ct_key k = {
		.saddr = f->saddr,
		.daddr = f->daddr,
		.sport = f->sport,
		.dport = f->dport,
		.proto = f->proto,
	};
	__u64 now = bpf_ktime_get_ns();
	struct cm_ct_value *v = bpf_map_lookup_elem(&cm_ct, &k);

	if (v) {
		/* Write only when something changes: the entry is read by the
		 * other direction's program on another CPU for every packet. */
		if (now - v->last_seen > CM_CT_REFRESH_NS)
			v->last_seen = now;
		if ((v->flags & flags) != flags)
			v->flags |= flags;
		return;
	}
	struct cm_ct_value nv = { .last_seen = now, .flags = flags };

	bpf_map_update_elem(&cm_ct, &k, &nv, BPF_ANY);
}

/* Looks up the longest entry of cm_policy_lpm matching one (local, peer)
 * pair for this flow; returns its action (0 if none) and counts. */
static __always_inline __u8 cm_policy_try(__u32 local, __u8 local_kind, __u32 peer,
					  __u8 peer_kind, const struct cm_flow *f, __u8 dir,
					  __u64 bytes)
{
	struct cm_policy_key k = {
		.prefixlen = CM_POLICY_PREFIX_FULL,
		.local = local,
		.peer = peer,
		.local_kind = local_kind,
		.peer_kind = peer_kind,
		.direction = dir,
		.proto = f->proto,
		.dport = f->pdport,
	};
	struct cm_policy_value *v = bpf_map_lookup_elem(&cm_policy_lpm, &k);

	if (!v)
		return 0;
	__sync_fetch_and_add(&v->packets, 1);
	__sync_fetch_and_add(&v->bytes, bytes);
	return v->action;
}

/* Every peer form for one local form, most specific first: the peer pod
 * itself (named ports of egress rules), its identity, its ipBlock prefix
 * (only for `world`), any peer. */
static __always_inline __u8 cm_policy_local(__u32 local, __u8 local_kind, __u32 peer,
					    __u32 peer_addr,
					    const struct cm_policy_cidr_value *cidr,
					    const struct cm_flow *f, __u8 dir, __u64 bytes)
{
	__u8 a = cm_policy_try(local, local_kind, peer_addr, CM_PEER_ENDPOINT, f, dir, bytes);

	if (a)
		return a;
	a = cm_policy_try(local, local_kind, peer, CM_PEER_IDENTITY, f, dir, bytes);
	if (a)
		return a;
	if (cidr && cidr->prefixlen <= 32) {
		a = cm_policy_try(local, local_kind, cidr->addr,
				  (__u8)(CM_PEER_CIDR_BASE + cidr->prefixlen), f, dir, bytes);
		if (a)
			return a;
	}
	return cm_policy_try(local, local_kind, 0, CM_PEER_IDENTITY, f, dir, bytes);
}

/*
 * Policy verdict for traffic of `local` (the identity the rules attach to)
 * with `peer` in direction `dir`. An identity not present in
 * cm_policy_enforced for the direction is not selected by any policy: allow.
 * Otherwise the first entry found decides, local pod before local identity,
 * and for each the peer forms of cm_policy_local; within one (local, peer)
 * pair the longest prefix (the most specific protocol/port) wins. No entry
 * means deny (Kubernetes NetworkPolicy default deny).
 *
 * The local pod is the destination for ingress and the source for egress;
 * the peer address is the other end.
 */
static __always_inline int cm_policy_allows(__u32 local, __u32 peer, const struct cm_flow *f,
					    __u8 dir, __u64 bytes)
{
	struct cm_enforced_key ek = { .identity = local, .direction = dir };

	if (!bpf_map_lookup_elem(&cm_policy_enforced, &ek))
		return 1;

	__u32 local_addr = dir == CM_DIR_INGRESS ? f->daddr : f->saddr;
	__u32 peer_addr = dir == CM_DIR_INGRESS ? f->saddr : f->daddr;
	struct cm_policy_cidr_value *cidr = 0;

	if (peer == CM_IDENTITY_WORLD) {
		struct cm_ipcache_key ck = { .prefixlen = 32, .addr = peer_addr };

		cidr = bpf_map_lookup_elem(&cm_policy_cidr, &ck);
	}
	__u8 a = cm_policy_local(local_addr, CM_LOCAL_ENDPOINT, peer, peer_addr, cidr, f, dir,
				 bytes);

	if (!a)
		a = cm_policy_local(local, CM_LOCAL_IDENTITY, peer, peer_addr, cidr, f, dir, bytes);
	return a == CM_POLICY_ALLOW;
}

#endif /* CM_POLICY_H */
