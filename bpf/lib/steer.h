/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Inside the ztunnel netns: which of ztunnel's listeners a captured
 * connection belongs to, and keeping the listener map filled.
 *
 * Direction is decided here from addresses alone, never from skb->cb or
 * skb->mark: cb does not survive GRO on ztunnel's eth0 and mark is scrubbed
 * when the packet changes netns. A captured packet is addressed to something
 * that is not ztunnel; if its source is a known workload the workload
 * started it (outbound), otherwise it is coming in to a workload (inbound).
 */
#ifndef ZTR_STEER_H
#define ZTR_STEER_H

#include <linux/in.h>
#include "parse.h"
#include "maps.h"

#define ZTR_TCP_LISTEN 10	/* BPF_TCP_LISTEN */

/* Returns the listener slot (enum ztr_slot) for a connection, or -1 when
 * it is not one ztredir captures. Ports are in host byte order. */
static __always_inline int ztr_slot_for(const struct ztr_config *cfg, const struct ztr_addr *remote,
					__u8 family, __u8 proto, __u16 local_port)
{
	int base = family == 6 ? ZTR_SLOTS_PER_FAMILY : 0;
	int outbound = ztr_endpoint_kind(remote) == ZTR_EP_WORKLOAD;

	if (outbound && local_port == 53 && (cfg->flags & ZTR_CFG_CAPTURE_DNS))
		return base + (proto == IPPROTO_UDP ? ZTR_SLOT_DNS_UDP : ZTR_SLOT_DNS_TCP);
	if (proto != IPPROTO_TCP)
		return -1;
	if (outbound)
		return base + ZTR_SLOT_OUTBOUND;
	if (local_port == cfg->port_hbone)
		return base + ZTR_SLOT_HBONE;
	return base + ZTR_SLOT_INBOUND;
}

static __always_inline __u16 ztr_slot_port(const struct ztr_config *cfg, int slot)
{
	switch (slot % ZTR_SLOTS_PER_FAMILY) {
	case ZTR_SLOT_OUTBOUND:
		return cfg->port_outbound;
	case ZTR_SLOT_INBOUND:
		return cfg->port_inbound;
	case ZTR_SLOT_HBONE:
		return cfg->port_hbone;
	default:
		return cfg->port_dns;
	}
}

/*
 * Finds the proxy's wildcard listener on @port with an ordinary socket
 * lookup aimed at @dst4 or @dst6 (by @p's family), and returns it (a
 * reference the caller releases) or NULL. Ports are in host byte order.
 * The lookup's source port is 0, which no connection has: with the
 * packet's own, a stale connection of the same tuple (a TIME_WAIT socket
 * towards that address, say) would answer instead of the listener.
 */
static __always_inline struct bpf_sock *ztr_find_listener_at(struct __sk_buff *skb, const struct ztr_pkt *p,
							     const struct ztr_addr *dst4,
							     const struct ztr_addr *dst6, __u16 port, int udp)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	__u32 len;

	if (p->family == 4) {
		t.ipv4.saddr = p->saddr.a[3];
		t.ipv4.daddr = dst4->a[3];
		t.ipv4.dport = bpf_htons(port);
		len = sizeof(t.ipv4);
	} else {
		__builtin_memcpy(t.ipv6.saddr, p->saddr.a, 16);
		__builtin_memcpy(t.ipv6.daddr, dst6->a, 16);
		t.ipv6.dport = bpf_htons(port);
		len = sizeof(t.ipv6);
	}
	if (udp)
		return bpf_sk_lookup_udp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
	sk = bpf_skc_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
	if (sk && sk->state != ZTR_TCP_LISTEN) {
		bpf_sk_release(sk);
		return NULL;
	}
	return sk;
}

/*
 * Makes sure @map holds a listening socket at @key, looking it up as
 * ztr_find_listener_at() does when it does not. Returns 0, or
 * -ZTR_R_DROP_NO_LISTENER when the proxy has no such listener.
 */
static __always_inline int ztr_fill_listener(struct __sk_buff *skb, void *map, __u32 key,
					     const struct ztr_pkt *p, const struct ztr_addr *dst4,
					     const struct ztr_addr *dst6, __u16 port, int udp)
{
	struct bpf_sock *sk = bpf_map_lookup_elem(map, &key);
	long err;

	if (sk) {
		bpf_sk_release(sk);
		return 0;
	}
	sk = ztr_find_listener_at(skb, p, dst4, dst6, port, udp);
	if (!sk)
		return -ZTR_R_DROP_NO_LISTENER;
	err = bpf_map_update_elem(map, &key, sk, BPF_ANY);
	bpf_sk_release(sk);
	return err ? -ZTR_R_DROP_NO_LISTENER : 0;
}

/* ztunnel's listener for @slot, in the ztunnel netns, found through one of
 * ztunnel's own addresses. */
static __always_inline int ztr_ensure_listener(struct __sk_buff *skb, const struct ztr_config *cfg,
					       const struct ztr_pkt *p, int slot)
{
	return ztr_fill_listener(skb, &ztr_listeners, slot, p, &cfg->lookup4, &cfg->lookup6,
				 ztr_slot_port(cfg, slot), p->proto == IPPROTO_UDP);
}

#define ZTR_TCP_TIME_WAIT 6	/* BPF_TCP_TIME_WAIT */

/*
 * Whether a SYN's tuple matches one of ztunnel's TIME_WAIT sockets: the
 * client reused a port while ztunnel still holds the old connection. The
 * kernel recycles such a socket by itself (the packet is only marked for
 * local delivery, as any other); this is only for the counters. Costs one
 * socket lookup per SYN.
 */
static __always_inline int ztr_syn_meets_time_wait(struct __sk_buff *skb, const struct ztr_pkt *p)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	__u32 zero = 0, *probing;
	__u32 len;
	int tw;

	if (p->family == 4) {
		t.ipv4.saddr = p->saddr.a[3];
		t.ipv4.daddr = p->daddr.a[3];
		t.ipv4.sport = p->sport;
		t.ipv4.dport = p->dport;
		len = sizeof(t.ipv4);
	} else {
		__builtin_memcpy(t.ipv6.saddr, p->saddr.a, 16);
		__builtin_memcpy(t.ipv6.daddr, p->daddr.a, 16);
		t.ipv6.sport = p->sport;
		t.ipv6.dport = p->dport;
		len = sizeof(t.ipv6);
	}
	probing = bpf_map_lookup_elem(&ztr_probe, &zero);
	if (!probing)
		return 0;
	*probing = 1;
	sk = bpf_skc_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
	*probing = 0;
	if (!sk)
		return 0;
	tw = sk->state == ZTR_TCP_TIME_WAIT;
	bpf_sk_release(sk);
	return tw;
}

#endif /* ZTR_STEER_H */
