/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * clustermesh datapath: the BTF map definitions. Every object includes this
 * one header, so each map has one definition; all maps are pinned by name
 * under the loader's pin directory (/sys/fs/bpf/clustermesh/<node>/), which
 * makes a reloaded agent adopt them instead of starting empty.
 *
 * Sizes are mirrored in node-agent/src/datapath/types.rs (MapSpec table),
 * which refuses to adopt a pinned map whose type or key/value size differs.
 */
#ifndef CM_MAPS_H
#define CM_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "cm_types.h"

#define CM_IPCACHE_MAX 524288
#define CM_ENDPOINTS_MAX 4096
#define CM_POLICY_MAX 65536
#define CM_POLICY_CIDR_MAX 16384
#define CM_ENFORCED_MAX 16384
#define CM_CT_MAX 65536
#define CM_LB_FRONTENDS_MAX 16384
#define CM_LB_BACKENDS_MAX 65536
#define CM_LB_REVNAT_MAX 65536
#define CM_TUNNEL_SOURCES_MAX 16384

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, CM_IPCACHE_MAX);
	__type(key, struct cm_ipcache_key);
	__type(value, struct cm_ipcache_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CM_ENDPOINTS_MAX);
	__type(key, __u32);
	__type(value, struct cm_endpoint_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, CM_POLICY_MAX);
	__type(key, struct cm_policy_key);
	__type(value, struct cm_policy_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_policy_lpm SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, CM_POLICY_CIDR_MAX);
	__type(key, struct cm_ipcache_key);
	__type(value, struct cm_policy_cidr_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_policy_cidr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CM_ENFORCED_MAX);
	__type(key, struct cm_enforced_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_policy_enforced SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CM_CT_MAX);
	__type(key, struct cm_ct_key);
	__type(value, struct cm_ct_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CM_LB_FRONTENDS_MAX);
	__type(key, struct cm_lb_frontend_key);
	__type(value, struct cm_lb_frontend_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_lb_frontends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CM_LB_BACKENDS_MAX);
	__type(key, struct cm_lb_backend_key);
	__type(value, struct cm_lb_backend_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_lb_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CM_LB_REVNAT_MAX);
	__type(key, struct cm_lb_revnat_key);
	__type(value, struct cm_lb_revnat_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_lb_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CM_TUNNEL_SOURCES_MAX);
	__type(key, __u32); /* outer IPv4 source, network order */
	__type(value, struct cm_tunnel_source_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_tunnel_sources SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CM_REASON_MAX);
	__type(key, __u32);
	__type(value, struct cm_metric_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_metrics SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cm_config_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_config SEC(".maps");

static __always_inline void cm_count(__u32 reason, __u64 bytes)
{
	struct cm_metric_value *m = bpf_map_lookup_elem(&cm_metrics, &reason);

	if (m) {
		/* per-CPU slot: no atomics needed */
		m->packets += 1;
		m->bytes += bytes;
	}
}

static __always_inline struct cm_config_value *cm_config_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&cm_config, &zero);
}

#endif /* CM_MAPS_H */
