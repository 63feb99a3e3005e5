/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * What the programs record about their decisions: per-reason counters, the
 * connection table, and trace events. Each packet path ends in one call to
 * ztr_verdict() with the reason it reached.
 */
#ifndef ZTR_OBSERVE_H
#define ZTR_OBSERVE_H

#include "parse.h"
#include "maps.h"

/* Which of an interface's two counter slots @hook uses: the second for the
 * hooks that share an interface with a per-packet hook of the first (see
 * struct ztr_stat_slot). */
static __always_inline __u32 ztr_stat_half(__u8 hook)
{
	return hook == ZTR_HOOK_WORKLOAD_IN || hook == ZTR_HOOK_SK_LOOKUP || hook == ZTR_HOOK_POD_IN ||
	       hook == ZTR_HOOK_POD_LOOKUP;
}

static __always_inline void ztr_count(__u32 ifindex, __u8 hook, __u32 reason, __u32 len)
{
	struct ztr_stat_key k = { .ifindex = ifindex, .hook = hook, .reason = reason };
	__u32 idx = ((ifindex & (ZTR_STAT_SLOTS - 1)) << 1) | ztr_stat_half(hook);
	struct ztr_stat_slot *slot = bpf_map_lookup_elem(&ztr_stat_slots, &idx);
	struct ztr_stat *s;

	/* Fast path: this CPU's array slot, when this interface owns it. */
	if (slot && reason < ZTR_R_MAX) {
		if (slot->hook == 0) {
			slot->ifindex = ifindex;
			slot->hook = hook;
		}
		if (slot->ifindex == ifindex && slot->hook == hook) {
			slot->r[reason].packets += 1;
			slot->r[reason].bytes += len;
			return;
		}
	}
	s = bpf_map_lookup_elem(&ztr_stats, &k);

	if (!s) {
		struct ztr_stat init = {};

		bpf_map_update_elem(&ztr_stats, &k, &init, BPF_NOEXIST);
		s = bpf_map_lookup_elem(&ztr_stats, &k);
		if (!s)
			return;
	}
	/* Per-CPU values: plain adds are safe. */
	s->packets += 1;
	s->bytes += len;
}

/* Sends one decision to the trace ring buffer; the caller checked that
 * someone is tracing. */
static __always_inline void ztr_trace(__u32 ifindex, __u8 hook, __u32 reason, int verdict, __u32 len,
				      const struct ztr_pkt *p, __u32 target)
{
	struct ztr_event *e = bpf_ringbuf_reserve(&ztr_events, sizeof(*e), 0);

	if (!e)
		return;
	e->ts_ns = bpf_ktime_get_ns();
	e->saddr = p->saddr;
	e->daddr = p->daddr;
	e->sport = p->sport;
	e->dport = p->dport;
	e->ifindex = ifindex;
	e->len = len;
	e->verdict = verdict;
	e->reason = reason;
	e->hook = hook;
	e->proto = p->proto;
	e->tcp_flags = p->tcp_flags;
	__builtin_memset(e->_pad, 0, sizeof(e->_pad));
	e->target = target;
	bpf_ringbuf_submit(e, 0);
}

/* Counts a packet path's reason, traces it if asked (with the redirect
 * target, 0 for none), and returns @verdict. */
static __always_inline int ztr_verdict_to(struct __sk_buff *skb, const struct ztr_config *cfg, __u8 hook,
					  const struct ztr_pkt *p, __u32 reason, int verdict, __u32 target)
{
	ztr_count(skb->ifindex, hook, reason, skb->len);
	if (cfg && (cfg->flags & ZTR_CFG_TRACE))
		ztr_trace(skb->ifindex, hook, reason, verdict, skb->len, p, target);
	return verdict;
}

static __always_inline int ztr_verdict(struct __sk_buff *skb, const struct ztr_config *cfg, __u8 hook,
				       const struct ztr_pkt *p, __u32 reason, int verdict)
{
	return ztr_verdict_to(skb, cfg, hook, p, reason, verdict, 0);
}

/* The connection table, or NULL when tracking is off. */
static __always_inline void *ztr_conn_table(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&ztr_conns, &zero);
}

/*
 * Accounts a packet to its connection. @from_workload tells which end of
 * @p is the workload. An entry is created only when @create_dir is set (a
 * captured connection's first packet); other packets only update.
 */
static __always_inline void ztr_ct_account(void *table, struct __sk_buff *skb, const struct ztr_pkt *p,
					   int from_workload, __u32 ifindex, __u32 reason, __u8 create_dir,
					   __u16 proxy_port)
{
	struct ztr_ct_key k = {};
	struct ztr_ct_entry *e;
	__u64 now;

	ztr_conn_key(&k, p, from_workload);
	e = bpf_map_lookup_elem(table, &k);
	if (!e) {
		if (!create_dir)
			return;
		now = bpf_ktime_get_ns();
		struct ztr_ct_entry n = {
			.first_ns = now,
			.last_ns = now,
			.ifindex = ifindex,
			.direction = create_dir,
			.proxy_port = proxy_port,
		};

		bpf_map_update_elem(table, &k, &n, BPF_NOEXIST);
		e = bpf_map_lookup_elem(table, &k);
		if (!e)
			return;
	} else {
		/* Later packets: the coarse clock (one tick's resolution) costs
		 * a fraction of the precise one; last_ns never goes back. */
		now = bpf_ktime_get_coarse_ns();
		if (now > e->last_ns)
			e->last_ns = now;
	}
	e->last_reason = reason;
	e->tcp_flags |= p->tcp_flags & (ZTR_TCP_FIN | ZTR_TCP_SYN | ZTR_TCP_RST);
	/* The table is shared by all CPUs; both directions of one flow can be
	 * on different CPUs at once. */
	if (from_workload) {
		__sync_fetch_and_add(&e->packets_from, 1);
		__sync_fetch_and_add(&e->bytes_from, skb->len);
	} else {
		__sync_fetch_and_add(&e->packets_to, 1);
		__sync_fetch_and_add(&e->bytes_to, skb->len);
	}
}

#endif /* ZTR_OBSERVE_H */
