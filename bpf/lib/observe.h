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

/* The pending slot a connection uses on every CPU. */
static __always_inline __u32 ztr_ct_slot(const struct ztr_ct_key *k)
{
	__u32 h = k->workload.a[3] ^ k->peer.a[3] ^ ((__u32)k->workload_port << 16) ^ k->peer_port;

	h ^= h >> 16;
	h ^= h >> 8;
	return h & (ZTR_CT_CACHE_SLOTS - 1);
}

static __always_inline int ztr_ct_key_eq(const struct ztr_ct_key *a, const struct ztr_ct_key *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;
	__u64 d = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*a) / 8); i++)
		d |= x[i] ^ y[i];
	return d == 0;
}

/* Adds what @c holds to its connection's entry and empties it; a slot
 * whose entry is gone (evicted, flushed) is given up with its counts, so
 * that the next packet takes the slow path and may create it again. */
static __always_inline void ztr_ct_flush(void *table, struct ztr_ct_pending *c)
{
	struct ztr_ct_entry *e;

	if (!c->valid || !c->count)
		return;
	e = bpf_map_lookup_elem(table, &c->key);
	if (e) {
		if (c->last_ns > e->last_ns)
			e->last_ns = c->last_ns;
		e->last_reason = c->last_reason;
		if (c->packets_from) {
			__sync_fetch_and_add(&e->packets_from, c->packets_from);
			__sync_fetch_and_add(&e->bytes_from, c->bytes_from);
		}
		if (c->packets_to) {
			__sync_fetch_and_add(&e->packets_to, c->packets_to);
			__sync_fetch_and_add(&e->bytes_to, c->bytes_to);
		}
	} else {
		c->valid = 0;
	}
	c->packets_from = 0;
	c->bytes_from = 0;
	c->packets_to = 0;
	c->bytes_to = 0;
	c->count = 0;
}

/*
 * Accounts a packet to its connection. @from_workload tells which end of
 * @p is the workload. An entry is created only when @create_dir is set (a
 * captured connection's first packet); other packets only update. A
 * connection with an entry counts its ordinary packets in this CPU's
 * pending slot (struct ztr_ct_pending) and reaches the table once per
 * ZTR_CT_FLUSH_EVERY of them.
 */
static __always_inline void ztr_ct_account(void *table, struct __sk_buff *skb, const struct ztr_pkt *p,
					   int from_workload, __u32 ifindex, __u32 reason, __u8 create_dir,
					   __u16 proxy_port)
{
	struct ztr_ct_key k __attribute__((aligned(8))) = {};
	struct ztr_ct_pending *c;
	struct ztr_ct_entry *e;
	__u32 slot;
	__u64 now;

	ztr_conn_key(&k, p, from_workload);
	slot = ztr_ct_slot(&k);
	c = bpf_map_lookup_elem(&ztr_ct_cache, &slot);
	if (c && c->valid && !(p->tcp_flags & (ZTR_TCP_FIN | ZTR_TCP_SYN | ZTR_TCP_RST)) &&
	    ztr_ct_key_eq(&c->key, &k)) {
		/* The fast path: this CPU's copy, plain adds. The coarse clock
		 * moves once per tick, so it is read once per tick. */
		__u64 j = bpf_jiffies64();

		if (from_workload) {
			c->packets_from += 1;
			c->bytes_from += skb->len;
		} else {
			c->packets_to += 1;
			c->bytes_to += skb->len;
		}
		c->last_reason = reason;
		if (j != c->last_jiffies) {
			c->last_jiffies = j;
			c->last_ns = bpf_ktime_get_coarse_ns();
		}
		if (++c->count >= ZTR_CT_FLUSH_EVERY)
			ztr_ct_flush(table, c);
		return;
	}
	if (c) {
		ztr_ct_flush(table, c);
		c->valid = 0;
	}
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
	/* Until FIN or RST, its next packets on this CPU take the fast path. */
	if (c && !(e->tcp_flags & (ZTR_TCP_FIN | ZTR_TCP_RST))) {
		c->key = k;
		c->valid = 1;
		c->last_jiffies = 0;
	}
}

#endif /* ZTR_OBSERVE_H */
