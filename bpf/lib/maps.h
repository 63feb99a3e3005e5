/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Every map the programs use. The CLI pins each one under <pin-dir>/maps/
 * by its name, so every invocation and every program load shares them.
 */
#ifndef ZTR_MAPS_H
#define ZTR_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "ztredir.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ztr_config);
} ztr_config SEC(".maps");

/* Address -> what it is (workload, ztunnel, node host IP). One lookup
 * answers every bypass question a hook has about one address. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, ZTR_MAX_ENDPOINTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ztr_addr);
	__type(value, struct ztr_endpoint);
} ztr_endpoints SEC(".maps");

/* ifindex (node netns; ztunnel's eth0 under its own) -> what ztredir
 * attached there. Written and read by the CLI only. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, ZTR_MAX_IFACES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct ztr_iface);
} ztr_ifaces SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, ZTR_STATS_MAX);
	__type(key, struct ztr_stat_key);
	__type(value, struct ztr_stat);
} ztr_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ZTR_STAT_SLOTS * 2);
	__type(key, __u32);
	__type(value, struct ztr_stat_slot);
} ztr_stat_slots SEC(".maps");

/*
 * The connection table, held in slot 0 of an array of maps: the CLI puts a
 * table of the size asked for there (or none, which turns tracking off)
 * without reloading the programs. The inner definition is only a template.
 */
struct ztr_conns_table {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, ZTR_CONNS_DEFAULT);
	__type(key, struct ztr_ct_key);
	__type(value, struct ztr_ct_entry);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct ztr_conns_table);
} ztr_conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, ZTR_EVENTS_BYTES);
} ztr_events SEC(".maps");

/* ztunnel's listening sockets by enum ztr_slot, found and filled in by the
 * ztunnel-netns tc program, read by the sk_lookup program. A socket leaves
 * the map by itself when ztunnel closes it. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, ZTR_SLOT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} ztr_listeners SEC(".maps");

/* Exclusions (see struct ztr_excl_port_key): value is enum
 * ztr_excl_port_kind bits for ports, unused for CIDRs. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, ZTR_MAX_EXCL_PORTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ztr_excl_port_key);
	__type(value, __u32);
} ztr_excl_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, ZTR_MAX_EXCL_CIDRS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ztr_excl_cidr_key);
	__type(value, __u32);
} ztr_excl_cidrs SEC(".maps");

/* First fragments' ports, for their later fragments (struct ztr_frag_key). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, ZTR_MAX_FRAGS);
	__type(key, struct ztr_frag_key);
	__type(value, struct ztr_frag);
} ztr_frags SEC(".maps");

/* Connections decided by state (enum ztr_node_conn_kind). Always on, also
 * when the connection table is off: without it a probe's replies would be
 * captured. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, ZTR_MAX_NODE_CONNS);
	__type(key, struct ztr_ct_key);
	__type(value, struct ztr_node_conn);
} ztr_node_conns SEC(".maps");

/* Workload interface -> enum ztr_iface_flag bits; only interfaces with a
 * flag set have an entry. Read only off the fast path. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, ZTR_MAX_IFACES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, __u32);
} ztr_iface_flags SEC(".maps");

/* Slot 0: non-zero once some ZTR_NC_HAIRPIN connection was recorded, so
 * that ztunnel's packets pay for the lookup only on nodes that have seen
 * one. Written by the programs only. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} ztr_hairpin_seen SEC(".maps");

/* struct ztr_src_cache, one per CPU. Not pinned: a cache of this load's. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ztr_src_cache);
} ztr_src_cache SEC(".maps");

/* struct ztr_ct_pending slots, per CPU, by a hash of the connection.
 * Not pinned: `ztredir conns` finds it through the programs. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ZTR_CT_CACHE_SLOTS);
	__type(key, __u32);
	__type(value, struct ztr_ct_pending);
} ztr_ct_cache SEC(".maps");

/* Set (on this CPU) while the tc program probes the socket table for a
 * TIME_WAIT socket: the sk_lookup program that the probe's listener lookup
 * runs then stays out of it. Not pinned: scratch space for one call. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} ztr_probe SEC(".maps");

/* In-pod workloads by pod id (struct ztr_pod). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, ZTR_MAX_PODS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct ztr_pod);
} ztr_pods SEC(".maps");

/* The proxy's listeners in each in-pod workload's netns, at pod id *
 * ZTR_SLOT_MAX + enum ztr_slot; filled by the tc programs in that netns,
 * read by its sk_lookup program. A socket leaves by itself when closed. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, ZTR_MAX_PODS * ZTR_SLOT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} ztr_pod_listeners SEC(".maps");

/* In-pod DNS queries redirected to the proxy's DNS listener. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, ZTR_MAX_DNS_NAT);
	__type(key, struct ztr_dns_key);
	__type(value, struct ztr_dns_orig);
} ztr_dns_nat SEC(".maps");

/* struct ztr_pod_cache, one per CPU. Not pinned: a cache of this load's. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ztr_pod_cache);
} ztr_pod_cache SEC(".maps");

static __always_inline struct ztr_config *ztr_get_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&ztr_config, &zero);
}

static __always_inline struct ztr_endpoint *ztr_endpoint(const struct ztr_addr *a)
{
	return bpf_map_lookup_elem(&ztr_endpoints, a);
}

static __always_inline __u32 ztr_endpoint_kind(const struct ztr_addr *a)
{
	struct ztr_endpoint *ep = ztr_endpoint(a);

	return ep ? ep->kind : 0;
}

static __always_inline int ztr_addr_eq(const struct ztr_addr *a, const struct ztr_addr *b)
{
	return ((a->a[0] ^ b->a[0]) | (a->a[1] ^ b->a[1]) | (a->a[2] ^ b->a[2]) |
		(a->a[3] ^ b->a[3])) == 0;
}

static __always_inline int ztr_addr_in(const struct ztr_addr *list, __u32 n, const struct ztr_addr *a)
{
	for (int i = 0; i < ZTR_INLINE_ADDRS; i++) {
		if (i >= n)
			return 0;
		if (ztr_addr_eq(&list[i], a))
			return 1;
	}
	return 0;
}

/*
 * ZTR_EP_HOST or ZTR_EP_ZTUNNEL when @a is a node host IP or one of
 * ztunnel's addresses, else 0. Compares against the config's short lists;
 * hashes only on nodes with more addresses than fit there.
 */
static __always_inline __u32 ztr_special_kind(const struct ztr_config *cfg, const struct ztr_addr *a)
{
	__u32 kind;

	if (!cfg)
		return 0;
	if (ztr_addr_in(cfg->host_ips, cfg->n_host, a))
		return ZTR_EP_HOST;
	if (ztr_addr_in(cfg->ztunnel_ips, cfg->n_ztunnel, a))
		return ZTR_EP_ZTUNNEL;
	if (!(cfg->flags & ZTR_CFG_MORE_ADDRS))
		return 0;
	kind = ztr_endpoint_kind(a);
	return kind == ZTR_EP_HOST || kind == ZTR_EP_ZTUNNEL ? kind : 0;
}

#endif /* ZTR_MAPS_H */
