// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * clustermesh datapath: socket-level load balancing of global services.
 *
 *   cm_connect4  cgroup/connect4  TCP (and connected UDP) connect() to a frontend
 *   cm_sendmsg4  cgroup/sendmsg4  unconnected UDP sendto() a frontend
 *   cm_recvmsg4  cgroup/recvmsg4  rewrites the reply source back to the frontend
 *
 * Affinity is decided in user space: cm_lb_backends holds, for each service,
 * only the preferred backend set (slots 0..count-1), so this side picks a
 * random slot and never has to know where a backend lives.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#include "cm_maps.h"

#define CM_SOCK_ALLOW 1
#define CM_SOCK_REJECT 0

/* Picks a backend for the frontend in ctx; returns 1 if translated, 0 if the
 * address is no frontend, -1 if the frontend has no backend. */
static __always_inline int cm_lb_translate(struct bpf_sock_addr *ctx, __u8 proto)
{
	struct cm_lb_frontend_key fk = {
		.ip = ctx->user_ip4,
		.port = (__u16)ctx->user_port,
		.proto = proto,
	};
	struct cm_lb_frontend_value *fe = bpf_map_lookup_elem(&cm_lb_frontends, &fk);

	if (!fe)
		return 0;
	__u32 count = fe->count;

	if (!count) {
		cm_count(CM_REASON_LB_NO_BACKEND, 0);
		return -1;
	}
	struct cm_lb_backend_key bk = {
		.service_id = fe->service_id,
		.slot = bpf_get_prandom_u32() % count,
	};
	struct cm_lb_backend_value *be = bpf_map_lookup_elem(&cm_lb_backends, &bk);

	if (!be) {
		cm_count(CM_REASON_LB_NO_BACKEND, 0);
		return -1;
	}
	__u32 be_ip = be->ip;
	__u16 be_port = be->port;

	if (proto == IPPROTO_UDP) {
		struct cm_lb_revnat_key rk = {
			.cookie = bpf_get_socket_cookie(ctx),
			.ip = be_ip,
			.port = be_port,
		};
		struct cm_lb_revnat_value rv = { .ip = fk.ip, .port = fk.port };

		bpf_map_update_elem(&cm_lb_revnat, &rk, &rv, BPF_ANY);
	}
	ctx->user_ip4 = be_ip;
	ctx->user_port = be_port;
	cm_count(CM_REASON_LB_TRANSLATED, 0);
	return 1;
}

SEC("cgroup/connect4")
int cm_connect4(struct bpf_sock_addr *ctx)
{
	__u32 proto = ctx->protocol;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return CM_SOCK_ALLOW;
	return cm_lb_translate(ctx, (__u8)proto) < 0 ? CM_SOCK_REJECT : CM_SOCK_ALLOW;
}

SEC("cgroup/sendmsg4")
int cm_sendmsg4(struct bpf_sock_addr *ctx)
{
	return cm_lb_translate(ctx, IPPROTO_UDP) < 0 ? CM_SOCK_REJECT : CM_SOCK_ALLOW;
}

SEC("cgroup/recvmsg4")
int cm_recvmsg4(struct bpf_sock_addr *ctx)
{
	struct cm_lb_revnat_key rk = {
		.cookie = bpf_get_socket_cookie(ctx),
		.ip = ctx->user_ip4,
		.port = (__u16)ctx->user_port,
	};
	struct cm_lb_revnat_value *rv = bpf_map_lookup_elem(&cm_lb_revnat, &rk);

	if (rv) {
		ctx->user_ip4 = rv->ip;
		ctx->user_port = rv->port;
	}
	return CM_SOCK_ALLOW;
}

/* Kernel-loaded code is dual licensed so it may use GPL-only helpers. */
char _license[] SEC("license") = "Dual BSD/GPL";
