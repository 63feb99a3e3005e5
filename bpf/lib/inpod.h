/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * In-pod redirection: the proxy listens inside each workload's netns (ztunnel's
 * shared mode), and these helpers serve the programs attached there.
 *
 * - Outbound: the workload's TCP leaving its interface (egress) is marked and
 *   redirected into lo's ingress; the mark's policy route ("local default")
 *   delivers it locally, and sk_lookup hands a new connection to the proxy's
 *   outbound listener.
 * - Inbound: a SYN that arrived on the interface goes to the inbound (or
 *   HBONE) listener by sk_lookup.
 * - The proxy's leg into the app runs over lo from the client's address: lo's
 *   egress records its SYN, and sk_lookup leaves recorded connections alone.
 *   The app's replies (to the client's address) leave by the interface and
 *   are redirected back to lo like outbound traffic, reaching the proxy's
 *   socket.
 * - DNS: queries to port 53 get 127.0.0.1 / ::1 and the DNS port as
 *   destination (the proxy's DNS listener is not transparent); the answers
 *   get the resolver's address and port back on lo's egress.
 *
 * A packet's pod is found by its address and must live in the packet's netns
 * (netns cookie), so one workload can never act for another.
 */
#ifndef ZTR_INPOD_H
#define ZTR_INPOD_H

#include <linux/in.h>
#include <linux/pkt_cls.h>
#include "parse.h"
#include "maps.h"
#include "steer.h"

#define ZTR_BPF_F_INGRESS 1	/* BPF_F_INGRESS */

/*
 * The kernel's own types, only the fields read here: CO-RE finds them in
 * the running kernel's BTF (the ___ztr suffix is not part of the match).
 * bpf_get_netns_cookie(skb) answers from skb->sk, and falls back to the
 * initial netns for packets without a socket (everything received, and
 * the kernel's own replies); the device's netns is what a packet is in.
 */
struct net___ztr {
	__u64 net_cookie;
} __attribute__((preserve_access_index));

struct possible_net___ztr {
	struct net___ztr *net;
} __attribute__((preserve_access_index));

struct net_device___ztr {
	struct possible_net___ztr nd_net;
} __attribute__((preserve_access_index));

struct sk_buff___ztr {
	struct net_device___ztr *dev;
} __attribute__((preserve_access_index));

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

/* The netns cookie of the device @skb is on. */
static __always_inline __u64 ztr_netns_cookie(struct __sk_buff *ctx)
{
	struct sk_buff___ztr *skb = bpf_cast_to_kern_ctx(ctx);

	return skb->dev->nd_net.net->net_cookie;
}

static __always_inline int ztr_inpod(const struct ztr_config *cfg)
{
	const __u32 want = ZTR_CFG_ENABLED | ZTR_CFG_INPOD;

	return cfg && (cfg->flags & want) == want;
}

static __always_inline int ztr_is_proxy_mark(__u32 mark)
{
	return (mark & ZTR_MARK_MASK) == ZTR_MARK_PROXY;
}

/* 127.0.0.0/8 (IPv4-mapped) or ::1. */
static __always_inline int ztr_is_loopback(const struct ztr_addr *a)
{
	if (a->a[0] | a->a[1])
		return 0;
	if (a->a[2] == bpf_htonl(0xffff))
		return (bpf_ntohl(a->a[3]) >> 24) == 127;
	return a->a[2] == 0 && a->a[3] == bpf_htonl(1);
}

/*
 * The pod id of @a when it is an in-pod workload's address and that
 * workload lives in @skb's netns, else 0. The last answer is cached per CPU
 * until the CLI bumps ep_gen.
 */
static __always_inline __u32 ztr_pod_here(struct __sk_buff *skb, const struct ztr_config *cfg,
					  const struct ztr_addr *a)
{
	__u32 zero = 0, gen = cfg->ep_gen, id;
	__u64 cookie = ztr_netns_cookie(skb);
	struct ztr_pod_cache *c = bpf_map_lookup_elem(&ztr_pod_cache, &zero);
	struct ztr_endpoint *ep;
	struct ztr_pod *pod;

	if (c && c->pod && c->netns_cookie == cookie && c->gen == gen && ztr_addr_eq(&c->addr, a))
		return c->pod;
	ep = ztr_endpoint(a);
	if (!ep || ep->kind != ZTR_EP_POD)
		return 0;
	id = ep->ifindex;
	pod = bpf_map_lookup_elem(&ztr_pods, &id);
	if (!pod || pod->netns_cookie != cookie)
		return 0;
	if (c) {
		c->netns_cookie = cookie;
		c->gen = gen;
		c->pod = id;
		c->addr = *a;
	}
	return id;
}

/* The pod's listener for @slot (enum ztr_slot), filled when empty. */
static __always_inline int ztr_pod_listener(struct __sk_buff *skb, const struct ztr_config *cfg,
					    const struct ztr_pkt *p, __u32 pod, int slot)
{
	struct ztr_addr lo4 = {}, lo6 = {};

	ztr_addr_from_v4(&lo4, bpf_htonl(0x7f000001));
	lo6.a[3] = bpf_htonl(1);
	if (pod >= ZTR_MAX_PODS)
		return -ZTR_R_DROP_NO_LISTENER;
	return ztr_fill_listener(skb, &ztr_pod_listeners, pod * ZTR_SLOT_MAX + slot, p, &lo4, &lo6,
				 ztr_slot_port(cfg, slot), 0);
}

/* Whether a packet leaving the workload may carry a source that is not
 * its own: IPv6 neighbour discovery speaks from link-local and ::. */
static __always_inline int ztr_pod_source_exempt(const struct ztr_pkt *p)
{
	return p->family == 6 && p->proto == ZTR_IPPROTO_ICMPV6 &&
	       ((bpf_ntohl(p->saddr.a[0]) & 0xffc00000) == 0xfe800000 ||
		!(p->saddr.a[0] | p->saddr.a[1] | p->saddr.a[2] | p->saddr.a[3]));
}

/*
 * A packet leaving an in-pod workload by its interface, not the proxy's.
 * Returns CAPTURE_OUTBOUND or CAPTURE_DNS when it must go to the proxy, a
 * DROP_* reason, or another reason when it is left alone.
 */
static __always_inline __u32 ztr_classify_pod_out(const struct ztr_config *cfg, __u32 pod,
						  const struct ztr_pkt *p)
{
	int dns = p->dport == bpf_htons(ZTR_DNS_PORT);

	if (!pod && !ztr_pod_source_exempt(p))
		return ZTR_R_DROP_SPOOFED;
	if (p->frag == ZTR_FRAG_UNKNOWN)
		return ztr_unknown_fragment_capturable(cfg, p, 1) ? ZTR_R_DROP_FRAGMENT : ZTR_R_PASS_PROTO;
	if (p->proto != IPPROTO_TCP && !(p->proto == IPPROTO_UDP && dns))
		return ZTR_R_PASS_PROTO;
	/* Answers on the node's own connections into the workload (probes). */
	if (p->proto == IPPROTO_TCP && !ztr_is_syn(p) &&
	    ztr_special_kind(cfg, &p->daddr) == ZTR_EP_HOST && ztr_node_conn(p, 1) == ZTR_NC_FROM_NODE)
		return ZTR_R_BYPASS_HOST;
	if (dns && ztr_dns_capture(cfg))
		return ZTR_R_CAPTURE_DNS;
	if (p->proto == IPPROTO_UDP)
		return ZTR_R_BYPASS_DNS;
	return ZTR_R_CAPTURE_OUTBOUND;
}

/*
 * A TCP packet arriving by an in-pod workload's interface, to the
 * workload's address. A SYN from a node host IP is a probe: recorded, so
 * that sk_lookup and the replies leave it alone. Returns BYPASS_HOST,
 * CAPTURE_INBOUND (a SYN the proxy takes) or STEER_LOCAL (a later packet;
 * the kernel finds its socket).
 */
static __always_inline __u32 ztr_classify_pod_in(const struct ztr_config *cfg, const struct ztr_pkt *p,
						 __u32 pod)
{
	if (ztr_special_kind(cfg, &p->saddr) == ZTR_EP_HOST) {
		if (ztr_is_syn(p)) {
			ztr_node_conn_put(p, 0, ZTR_NC_FROM_NODE, pod);
			return ZTR_R_BYPASS_HOST;
		}
		if (ztr_node_conn(p, 0) == ZTR_NC_FROM_NODE)
			return ZTR_R_BYPASS_HOST;
	}
	return ztr_is_syn(p) ? ZTR_R_CAPTURE_INBOUND : ZTR_R_STEER_LOCAL;
}

/*
 * Rewrites @p's source (@src) or destination address and port, fixing the
 * IPv4 header checksum and the transport checksum (whose pseudo header
 * covers the addresses). A later fragment has no transport header (its
 * l4_off is not set): only its address changes, the first fragment's
 * checksum covers the whole datagram. Returns 0 or a negative error.
 */
static __always_inline int ztr_rewrite(struct __sk_buff *skb, const struct ztr_pkt *p, int src,
				       const struct ztr_addr *addr, __be16 port)
{
	__u32 l3 = p->l3_off, l4 = p->l4_off;
	__u32 csum = l4 + (p->proto == IPPROTO_TCP ? 16 : 6);
	__u64 zero0 = p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	const struct ztr_addr *old = src ? &p->saddr : &p->daddr;
	__be16 old_port = src ? p->sport : p->dport;
	int has_l4 = p->frag != ZTR_FRAG_LATER;
	int err = 0;

	if (p->family == 4) {
		__be32 from = old->a[3], to = addr->a[3];
		__u32 at = l3 + (src ? 12 : 16);

		if (has_l4)
			err = bpf_l4_csum_replace(skb, csum, from, to, BPF_F_PSEUDO_HDR | zero0 | 4);
		err = err ?: bpf_l3_csum_replace(skb, l3 + 10, from, to, 4);
		err = err ?: bpf_skb_store_bytes(skb, at, &to, 4, 0);
	} else {
		__u32 at = l3 + (src ? 8 : 24);

		if (has_l4) {
			__s64 diff = bpf_csum_diff((__be32 *)old->a, 16, (__be32 *)addr->a, 16, 0);

			if (diff < 0)
				return (int)diff;
			err = bpf_l4_csum_replace(skb, csum, 0, diff, BPF_F_PSEUDO_HDR | zero0);
		}
		err = err ?: bpf_skb_store_bytes(skb, at, addr->a, 16, 0);
	}
	if (err || !has_l4)
		return err;
	err = bpf_l4_csum_replace(skb, csum, old_port, port, zero0 | 2);
	return err ?: bpf_skb_store_bytes(skb, l4 + (src ? 0 : 2), &port, 2, 0);
}

/* A query to a resolver: remembered, then addressed to the proxy's DNS
 * listener on loopback. */
static __always_inline int ztr_dns_to_proxy(struct __sk_buff *skb, const struct ztr_config *cfg,
					    const struct ztr_pkt *p)
{
	struct ztr_dns_key k = { .pod = p->saddr, .port = p->sport, .proto = p->proto };
	struct ztr_dns_orig o = { .resolver = p->daddr, .port = p->dport };
	struct ztr_addr lo = {};

	if (p->family == 4)
		ztr_addr_from_v4(&lo, bpf_htonl(0x7f000001));
	else
		lo.a[3] = bpf_htonl(1);
	if (p->proto == IPPROTO_UDP || ztr_is_syn(p))
		bpf_map_update_elem(&ztr_dns_nat, &k, &o, BPF_ANY);
	return ztr_rewrite(skb, p, 0, &lo, bpf_htons(cfg->port_dns));
}

/* The proxy's DNS answer on lo: given the resolver's address and port. 1
 * when it was one, 0 when not, negative on a failed rewrite. */
static __always_inline int ztr_dns_from_proxy(struct __sk_buff *skb, const struct ztr_config *cfg,
					      const struct ztr_pkt *p)
{
	struct ztr_dns_key k = { .pod = p->daddr, .port = p->dport, .proto = p->proto };
	struct ztr_dns_orig *o;
	int err;

	if (p->sport != bpf_htons(cfg->port_dns) || !ztr_is_loopback(&p->saddr))
		return 0;
	o = bpf_map_lookup_elem(&ztr_dns_nat, &k);
	if (!o)
		return 0;
	err = ztr_rewrite(skb, p, 1, &o->resolver, o->port);
	return err ? err : 1;
}

/* Into lo's ingress, which takes a frame addressed to its own (all-zero)
 * MAC as for this host. */
static __always_inline long ztr_redirect_lo(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	if (data + 6 > data_end)
		return TC_ACT_SHOT;
	__builtin_memset(data, 0, 6);
	return bpf_redirect(ZTR_LOOPBACK_IFINDEX, ZTR_BPF_F_INGRESS);
}

#endif /* ZTR_INPOD_H */
