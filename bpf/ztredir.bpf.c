// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * ztredir's entry points. Each one parses, asks a classifier for a reason,
 * and hands that reason to ztr_verdict(), which counts it, traces it and
 * returns the verdict; the logic lives in lib/.
 *
 * A program that does not act on a packet returns TC_ACT_UNSPEC, which
 * lets the next program on the device run (TCX_NEXT, or the next classic
 * filter).
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "ztredir.h"
#include "lib/parse.h"
#include "lib/maps.h"
#include "lib/classify.h"
#include "lib/steer.h"
#include "lib/observe.h"
#include "lib/inpod.h"

#define AF_INET 2
#define AF_INET6 10

/* A context field as a plain value: the barrier stops the compiler from
 * re-reading it later through a spilled, offset context pointer, which
 * the verifier refuses. */
#define ztr_ctx_u32(field)                                                                        \
	({                                                                                         \
		__u32 __v = (field);                                                               \
		asm volatile("" : "+r"(__v));                                                      \
		__v;                                                                               \
	})

static __always_inline int ztr_enabled(const struct ztr_config *cfg)
{
	return cfg && (cfg->flags & ZTR_CFG_ENABLED);
}

/* The first packet of a connection: a TCP SYN, or any UDP datagram (its
 * first fragment when fragmented). */
static __always_inline __u8 ztr_opens(const struct ztr_pkt *p, __u8 dir)
{
	if (p->frag == ZTR_FRAG_LATER || p->frag == ZTR_FRAG_UNKNOWN)
		return 0;
	if (p->proto == IPPROTO_UDP || (p->tcp_flags & (ZTR_TCP_SYN | ZTR_TCP_ACK)) == ZTR_TCP_SYN)
		return dir;
	return 0;
}

/* A parse failure: what is not IP passes, an IP packet that cannot be
 * classified is dropped on every hook. */
static __always_inline int ztr_parse_verdict(struct __sk_buff *skb, const struct ztr_config *cfg, __u8 hook,
					     const struct ztr_pkt *p, int err)
{
	if (err == ZTR_PARSE_NOT_IP)
		return ztr_verdict(skb, cfg, hook, p, ZTR_R_NOT_IP, TC_ACT_UNSPEC);
	return ztr_verdict(skb, cfg, hook, p, -err, TC_ACT_SHOT);
}

/* Workload veth, tc ingress: packets leaving the workload. */
SEC("tc")
int ztr_workload_out(struct __sk_buff *skb)
{
	/* Read once: the compiler must not keep a pointer into the context. */
	const __u32 ifindex = ztr_ctx_u32(skb->ifindex);
	const __u8 hook = ZTR_HOOK_WORKLOAD_OUT;
	struct ztr_config *cfg = ztr_get_config();
	struct ztr_pkt p = {};
	void *table;
	__u32 reason;
	int err;

	err = ztr_parse(skb, &p);
	if (err < 0)
		return ztr_parse_verdict(skb, cfg, hook, &p, err);
	reason = ztr_classify_outbound(cfg, ifindex, &p);
	if (ztr_is_drop(reason))
		return ztr_verdict(skb, cfg, hook, &p, reason, TC_ACT_SHOT);
	if (!ztr_is_capture(reason))
		return ztr_verdict(skb, cfg, hook, &p, reason, TC_ACT_UNSPEC);
	/* Fail closed: captured traffic never goes around the proxy. */
	if (!cfg || !ztr_enabled(cfg))
		return ztr_verdict(skb, cfg, hook, &p, ZTR_R_DROP_NO_ZTUNNEL, TC_ACT_SHOT);
	table = ztr_conn_table();
	if (table)
		ztr_ct_account(table, skb, &p, 1, ifindex, reason, ztr_opens(&p, ZTR_DIR_OUTBOUND),
			       reason == ZTR_R_CAPTURE_DNS ? cfg->port_dns : cfg->port_outbound);
	/* The peer redirect keeps pkt_type from this veth (PACKET_HOST), so
	 * ztunnel's eth0 takes the frame without a MAC rewrite. */
	return ztr_verdict_to(skb, cfg, hook, &p, reason, bpf_redirect_peer(cfg->host_ifindex, 0),
			      cfg->host_ifindex);
}

/* Workload veth, tc egress: packets the node sends into the workload. */
SEC("tc")
int ztr_workload_in(struct __sk_buff *skb)
{
	/* Read once: the compiler must not keep a pointer into the context. */
	const __u32 ifindex = ztr_ctx_u32(skb->ifindex);
	/* 0 for what the node's own stack sent; else the device it came in by. */
	const __u32 ingress = ztr_ctx_u32(skb->ingress_ifindex);
	const __u8 hook = ZTR_HOOK_WORKLOAD_IN;
	struct ztr_config *cfg = ztr_get_config();
	struct ztr_pkt p = {};
	void *table;
	__u32 reason;
	int err;

	err = ztr_parse(skb, &p);
	if (err < 0)
		return ztr_parse_verdict(skb, cfg, hook, &p, err);
	reason = ztr_classify_inbound(cfg, ifindex, ingress, &p);
	if (ztr_is_drop(reason))
		return ztr_verdict(skb, cfg, hook, &p, reason, TC_ACT_SHOT);
	if (!ztr_is_capture(reason))
		return ztr_verdict(skb, cfg, hook, &p, reason, TC_ACT_UNSPEC);
	if (!cfg || !ztr_enabled(cfg))
		return ztr_verdict(skb, cfg, hook, &p, ZTR_R_DROP_NO_ZTUNNEL, TC_ACT_SHOT);
	ztr_note_hairpin(cfg, ifindex, ingress, &p);
	table = ztr_conn_table();
	if (table)
		ztr_ct_account(table, skb, &p, 0, ifindex, reason, ztr_opens(&p, ZTR_DIR_INBOUND),
			       p.dport == bpf_htons(cfg->port_hbone) ? cfg->port_hbone : cfg->port_inbound);
	/* A peer redirect is not allowed from egress. A plain redirect goes
	 * out of ztunnel's host veth and eth_type_trans runs again on the far
	 * side, so the frame must carry ztunnel's MAC or it is dropped as not
	 * for this host. pod_mac and host_mac are adjacent: dst, then src. */
	{
		void *data = (void *)(long)skb->data;
		void *data_end = (void *)(long)skb->data_end;

		if (data + 12 > data_end)
			return ztr_verdict(skb, cfg, hook, &p, ZTR_R_MALFORMED, TC_ACT_SHOT);
		__builtin_memcpy(data, cfg->pod_mac, 12);
	}
	return ztr_verdict_to(skb, cfg, hook, &p, reason, bpf_redirect(cfg->host_ifindex, 0),
			      cfg->host_ifindex);
}

/* ztunnel's host veth, tc ingress: packets ztunnel sends. Those addressed to
 * a workload go straight into it, past the workload's inbound capture. */
SEC("tc")
int ztr_ztunnel_host(struct __sk_buff *skb)
{
	const __u8 hook = ZTR_HOOK_ZTUNNEL_HOST;
	struct ztr_config *cfg = ztr_get_config();
	struct ztr_pkt p = {};
	struct ztr_endpoint *ep;
	void *table;
	int err;

	err = ztr_parse(skb, &p);
	if (err < 0)
		return ztr_parse_verdict(skb, cfg, hook, &p, err);
	ep = ztr_endpoint(&p.daddr);
	table = ztr_conn_table();
	if (ep && ep->kind == ZTR_EP_WORKLOAD) {
		if (ztr_is_hairpin_reply(&p))
			return ztr_verdict(skb, cfg, hook, &p, ZTR_R_ZTUNNEL_HAIRPIN, TC_ACT_UNSPEC);
		if (table)
			ztr_ct_account(table, skb, &p, 0, ep->ifindex, ZTR_R_ZTUNNEL_TO_WORKLOAD, 0, 0);
		return ztr_verdict_to(skb, cfg, hook, &p, ZTR_R_ZTUNNEL_TO_WORKLOAD,
				      bpf_redirect_peer(ep->ifindex, 0), ep->ifindex);
	}
	/* ztunnel answering an inbound client in a workload's name. */
	if (table && ztr_endpoint_kind(&p.saddr) == ZTR_EP_WORKLOAD)
		ztr_ct_account(table, skb, &p, 1, 0, ZTR_R_ZTUNNEL_TO_OTHER, 0, 0);
	return ztr_verdict(skb, cfg, hook, &p, ZTR_R_ZTUNNEL_TO_OTHER, TC_ACT_UNSPEC);
}

/*
 * ztunnel's eth0, tc ingress, in the ztunnel netns: captured packets are
 * marked for local delivery (policy routing sends the mark to a "local
 * default" table). The kernel then finds an existing connection's socket by
 * itself, and the sk_lookup program below picks the listener for a new one.
 * A SYN that matches a TIME_WAIT socket is left to the kernel, which
 * recycles the TIME_WAIT socket and asks sk_lookup for the listener, as it
 * does for TPROXY; assigning such a SYN here would collide with it.
 */
SEC("tc")
int ztr_ztunnel_pod(struct __sk_buff *skb)
{
	const __u8 hook = ZTR_HOOK_ZTUNNEL_POD;
	struct ztr_config *cfg = ztr_get_config();
	struct ztr_pkt p = {};
	__u32 reason;
	int err, slot;

	err = ztr_parse(skb, &p);
	if (err < 0)
		return ztr_parse_verdict(skb, cfg, hook, &p, err);
	if (ztr_special_kind(cfg, &p.daddr) == ZTR_EP_ZTUNNEL)
		return ztr_verdict(skb, cfg, hook, &p, ZTR_R_ZTUNNEL_LOCAL, TC_ACT_UNSPEC);
	if (!cfg || !ztr_enabled(cfg))
		return ztr_verdict(skb, cfg, hook, &p, ZTR_R_PASS_PROTO, TC_ACT_UNSPEC);
	/* Captured fragments' firsts passed a workload hook, which recorded
	 * them; one without is not to be delivered. */
	if (p.frag == ZTR_FRAG_UNKNOWN && ztr_unknown_fragment_capturable(cfg, &p, 1))
		return ztr_verdict(skb, cfg, hook, &p, ZTR_R_DROP_FRAGMENT, TC_ACT_SHOT);
	if (p.proto == IPPROTO_UDP) {
		if (p.frag == ZTR_FRAG_UNKNOWN || p.dport != bpf_htons(ZTR_DNS_PORT) ||
		    !(cfg->flags & ZTR_CFG_CAPTURE_DNS))
			return ztr_verdict(skb, cfg, hook, &p, ZTR_R_PASS_PROTO, TC_ACT_UNSPEC);
	} else if (p.proto != IPPROTO_TCP) {
		return ztr_verdict(skb, cfg, hook, &p, ZTR_R_PASS_PROTO, TC_ACT_UNSPEC);
	}

	/* A new flow: make sure ztunnel listens for it, else drop. */
	reason = ZTR_R_STEER_LOCAL;
	if (ztr_opens(&p, 1)) {
		slot = ztr_slot_for(cfg, &p.saddr, p.family, p.proto, bpf_ntohs(p.dport));
		if (slot >= 0) {
			err = ztr_ensure_listener(skb, cfg, &p, slot);
			if (err < 0)
				return ztr_verdict(skb, cfg, hook, &p, -err, TC_ACT_SHOT);
		}
		if (p.proto == IPPROTO_TCP && ztr_syn_meets_time_wait(skb, &p))
			reason = ZTR_R_TIME_WAIT_REUSE;
	}
	skb->mark = (skb->mark & ~ZTR_MARK_MASK) | ZTR_MARK_LOCAL;
	return ztr_verdict(skb, cfg, hook, &p, reason, TC_ACT_OK);
}

static __always_inline int ztr_is_own_address(const struct ztr_config *cfg, const struct ztr_addr *a)
{
	/* 127.0.0.0/8 (IPv4-mapped), ::1 and fe80::/10 are the netns' own. */
	if (a->a[0] == 0 && a->a[1] == 0 && a->a[2] == bpf_htonl(0xffff) &&
	    (bpf_ntohl(a->a[3]) >> 24) == 127)
		return 1;
	if (a->a[0] == 0 && a->a[1] == 0 && a->a[2] == 0 && a->a[3] == bpf_htonl(1))
		return 1;
	if ((bpf_ntohl(a->a[0]) & 0xffc00000) == 0xfe800000)
		return 1;
	return ztr_special_kind(cfg, a) == ZTR_EP_ZTUNNEL;
}

/* A socket lookup's connection as a packet: remote side as source, ports
 * and protocol filled in. Non-zero for a family ztredir does not handle. */
static __always_inline int ztr_lookup_pkt(struct bpf_sk_lookup *ctx, struct ztr_pkt *p)
{
	if (ctx->family == AF_INET) {
		ztr_addr_from_v4(&p->daddr, ctx->local_ip4);
		ztr_addr_from_v4(&p->saddr, ctx->remote_ip4);
		p->family = 4;
	} else if (ctx->family == AF_INET6) {
		ztr_addr_from_v6(&p->daddr, ctx->local_ip6);
		ztr_addr_from_v6(&p->saddr, ctx->remote_ip6);
		p->family = 6;
	} else {
		return -1;
	}
	p->proto = ctx->protocol;
	p->sport = ctx->remote_port;
	p->dport = bpf_htons(ctx->local_port);
	return 0;
}

static __always_inline int ztr_lookup_verdict_on(struct bpf_sk_lookup *ctx, const struct ztr_config *cfg,
						 __u8 hook, const struct ztr_pkt *p, __u32 reason, int verdict)
{
	ztr_count(ctx->ingress_ifindex, hook, reason, 0);
	if (cfg && (cfg->flags & ZTR_CFG_TRACE))
		ztr_trace(ctx->ingress_ifindex, hook, reason, verdict, 0, p, 0);
	return verdict;
}

static __always_inline int ztr_lookup_verdict(struct bpf_sk_lookup *ctx, const struct ztr_config *cfg,
					      const struct ztr_pkt *p, __u32 reason, int verdict)
{
	return ztr_lookup_verdict_on(ctx, cfg, ZTR_HOOK_SK_LOOKUP, p, reason, verdict);
}

/*
 * The ztunnel netns' socket lookup, for connections with no socket yet:
 * one addressed to something other than ztunnel was captured, and goes to
 * the ztunnel listener its direction calls for.
 */
SEC("sk_lookup")
int ztr_ztunnel_lookup(struct bpf_sk_lookup *ctx)
{
	struct ztr_config *cfg;
	struct ztr_pkt p = {};
	struct bpf_sock *sk;
	__u32 key = 0, *probing;
	int slot;

	/* The tc program's TIME_WAIT probe: not a real connection. */
	probing = bpf_map_lookup_elem(&ztr_probe, &key);
	if (probing && *probing)
		return SK_PASS;
	if (ztr_lookup_pkt(ctx, &p))
		return SK_PASS;
	cfg = ztr_get_config();
	if (!cfg || !ztr_enabled(cfg))
		return SK_PASS;
	if (ztr_is_own_address(cfg, &p.daddr))
		return SK_PASS;
	slot = ztr_slot_for(cfg, &p.saddr, p.family, p.proto, ctx->local_port);
	if (slot < 0)
		return SK_PASS;
	key = slot;
	sk = bpf_map_lookup_elem(&ztr_listeners, &key);
	if (!sk)
		return ztr_lookup_verdict(ctx, cfg, &p, ZTR_R_DROP_NO_LISTENER, SK_DROP);
	if (bpf_sk_assign(ctx, sk, 0)) {
		bpf_sk_release(sk);
		return ztr_lookup_verdict(ctx, cfg, &p, ZTR_R_DROP_NO_LISTENER, SK_DROP);
	}
	bpf_sk_release(sk);
	return ztr_lookup_verdict(ctx, cfg, &p, ZTR_R_ASSIGN_LISTENER, SK_PASS);
}

/* The listener slot base of @p's family. */
static __always_inline int ztr_family_base(const struct ztr_pkt *p)
{
	return p->family == 6 ? ZTR_SLOTS_PER_FAMILY : 0;
}

/*
 * In-pod: the workload's interface, tc egress, in the workload's netns.
 * The workload's TCP goes to the proxy's outbound listener by way of lo;
 * DNS to its DNS listener; the proxy's own packets leave untouched.
 */
SEC("tc")
int ztr_pod_out(struct __sk_buff *skb)
{
	const __u32 ifindex = ztr_ctx_u32(skb->ifindex);
	const __u32 mark = ztr_ctx_u32(skb->mark);
	const __u8 hook = ZTR_HOOK_POD_OUT;
	struct ztr_config *cfg = ztr_get_config();
	struct ztr_pkt p = {};
	__u32 pod, reason;
	void *table;
	int err;

	err = ztr_parse(skb, &p);
	if (err < 0)
		return ztr_parse_verdict(skb, cfg, hook, &p, err);
	if (ztr_is_proxy_mark(mark)) {
		/* The proxy answering an inbound client in the workload's name:
		 * the connection's packets from the workload. */
		table = ztr_conn_table();
		if (table)
			ztr_ct_account(table, skb, &p, 1, ifindex, ZTR_R_PROXY_OWN, 0, 0);
		return ztr_verdict(skb, cfg, hook, &p, ZTR_R_PROXY_OWN, TC_ACT_UNSPEC);
	}
	if (!ztr_inpod(cfg))
		return ztr_verdict(skb, cfg, hook, &p, ZTR_R_DROP_NO_ZTUNNEL, TC_ACT_SHOT);
	pod = ztr_pod_here(skb, cfg, &p.saddr);
	reason = ztr_classify_pod_out(cfg, pod, &p);
	if (ztr_is_drop(reason))
		return ztr_verdict(skb, cfg, hook, &p, reason, TC_ACT_SHOT);
	if (!ztr_is_capture(reason))
		return ztr_verdict(skb, cfg, hook, &p, reason, TC_ACT_UNSPEC);
	table = ztr_conn_table();
	if (reason == ZTR_R_CAPTURE_DNS) {
		if (table)
			ztr_ct_account(table, skb, &p, 1, ifindex, reason, ztr_opens(&p, ZTR_DIR_OUTBOUND),
				       cfg->port_dns);
		if (ztr_dns_to_proxy(skb, cfg, &p))
			return ztr_verdict(skb, cfg, hook, &p, ZTR_R_MALFORMED, TC_ACT_SHOT);
		return ztr_verdict_to(skb, cfg, hook, &p, reason, ztr_redirect_lo(skb),
				      ZTR_LOOPBACK_IFINDEX);
	}
	/* Fail closed: a new connection the proxy does not listen for dies here. */
	if (ztr_is_syn(&p)) {
		err = ztr_pod_listener(skb, cfg, &p, pod, ztr_family_base(&p) + ZTR_SLOT_OUTBOUND);
		if (err < 0)
			return ztr_verdict(skb, cfg, hook, &p, -err, TC_ACT_SHOT);
	}
	if (table)
		ztr_ct_account(table, skb, &p, 1, ifindex, reason, ztr_opens(&p, ZTR_DIR_OUTBOUND),
			       cfg->port_outbound);
	skb->mark = (mark & ~ZTR_MARK_MASK) | ZTR_MARK_LOCAL;
	return ztr_verdict_to(skb, cfg, hook, &p, reason, ztr_redirect_lo(skb), ZTR_LOOPBACK_IFINDEX);
}

/*
 * In-pod: the workload's interface, tc ingress. What arrives from the wire:
 * probes from the node recorded; a new connection only if the proxy
 * listens for it. sk_lookup does the steering.
 */
SEC("tc")
int ztr_pod_in(struct __sk_buff *skb)
{
	const __u32 ifindex = ztr_ctx_u32(skb->ifindex);
	const __u8 hook = ZTR_HOOK_POD_IN;
	struct ztr_config *cfg = ztr_get_config();
	struct ztr_pkt p = {};
	__u32 pod, reason;
	void *table;
	int err, slot;

	err = ztr_parse(skb, &p);
	if (err < 0)
		return ztr_parse_verdict(skb, cfg, hook, &p, err);
	if (p.frag == ZTR_FRAG_UNKNOWN) {
		if (ztr_unknown_fragment_capturable(cfg, &p, 0))
			return ztr_verdict(skb, cfg, hook, &p, ZTR_R_DROP_FRAGMENT, TC_ACT_SHOT);
		return ztr_verdict(skb, cfg, hook, &p, ZTR_R_PASS_PROTO, TC_ACT_UNSPEC);
	}
	if (p.proto != IPPROTO_TCP)
		return ztr_verdict(skb, cfg, hook, &p, ZTR_R_PASS_PROTO, TC_ACT_UNSPEC);
	if (!ztr_inpod(cfg))
		return ztr_verdict(skb, cfg, hook, &p, ZTR_R_DROP_NO_ZTUNNEL, TC_ACT_SHOT);
	pod = ztr_pod_here(skb, cfg, &p.daddr);
	if (!pod)
		return ztr_verdict(skb, cfg, hook, &p, ZTR_R_PASS_PROTO, TC_ACT_UNSPEC);
	reason = ztr_classify_pod_in(cfg, &p, pod);
	if (reason == ZTR_R_CAPTURE_INBOUND) {
		slot = ztr_family_base(&p) +
		       (p.dport == bpf_htons(cfg->port_hbone) ? ZTR_SLOT_HBONE : ZTR_SLOT_INBOUND);
		err = ztr_pod_listener(skb, cfg, &p, pod, slot);
		if (err < 0)
			return ztr_verdict(skb, cfg, hook, &p, -err, TC_ACT_SHOT);
	}
	table = ztr_conn_table();
	if (table && reason != ZTR_R_BYPASS_HOST)
		ztr_ct_account(table, skb, &p, 0, ifindex, ZTR_R_CAPTURE_INBOUND,
			       ztr_opens(&p, ZTR_DIR_INBOUND),
			       p.dport == bpf_htons(cfg->port_hbone) ? cfg->port_hbone : cfg->port_inbound);
	return ztr_verdict(skb, cfg, hook, &p, reason, TC_ACT_UNSPEC);
}

/*
 * In-pod: lo, tc egress, in the workload's netns. Records connections
 * opened to the workload from inside its netns (the proxy's leg into the
 * app) and gives the proxy's DNS answers the resolver's address.
 */
SEC("tc")
int ztr_pod_lo(struct __sk_buff *skb)
{
	const __u8 hook = ZTR_HOOK_POD_LO;
	struct ztr_config *cfg = ztr_get_config();
	struct ztr_pkt p = {};
	__u32 pod;
	int err;

	err = ztr_parse(skb, &p);
	if (err < 0 || !ztr_inpod(cfg))
		return TC_ACT_UNSPEC;
	if (ztr_dns_capture(cfg) && (p.proto == IPPROTO_UDP || p.proto == IPPROTO_TCP)) {
		err = ztr_dns_from_proxy(skb, cfg, &p);
		if (err < 0)
			return ztr_verdict(skb, cfg, hook, &p, ZTR_R_MALFORMED, TC_ACT_SHOT);
		if (err)
			return ztr_verdict(skb, cfg, hook, &p, ZTR_R_DNS_REPLY, TC_ACT_UNSPEC);
	}
	if (!ztr_is_syn(&p)) {
		/* The proxy answering the workload on an outbound connection:
		 * the connection's packets to the workload. */
		void *table = ztr_conn_table();

		if (table && ztr_is_proxy_mark(ztr_ctx_u32(skb->mark)))
			ztr_ct_account(table, skb, &p, 0, 0, ZTR_R_PROXY_OWN, 0, 0);
		return TC_ACT_UNSPEC;
	}
	pod = ztr_pod_here(skb, cfg, &p.daddr);
	if (!pod)
		return TC_ACT_UNSPEC;
	ztr_node_conn_put(&p, 0, ZTR_NC_LOCAL, pod);
	return ztr_verdict(skb, cfg, hook, &p, ZTR_R_LOCAL_LEG, TC_ACT_UNSPEC);
}

/*
 * In-pod: the workload netns' socket lookup, for TCP connections with no
 * socket yet. What our egress program redirected arrives by lo: outbound,
 * for the source's pod. What arrived by the interface is inbound, for the
 * destination's pod, unless it was recorded as local or a probe.
 */
SEC("sk_lookup")
int ztr_pod_lookup(struct bpf_sk_lookup *ctx)
{
	struct ztr_config *cfg;
	struct ztr_pkt p = {};
	struct ztr_endpoint *ep;
	struct bpf_sock *sk;
	__u32 key, nc;
	int slot;

	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	if (ztr_lookup_pkt(ctx, &p))
		return SK_PASS;
	cfg = ztr_get_config();
	if (!ztr_inpod(cfg) || ztr_is_loopback(&p.daddr))
		return SK_PASS;
	nc = ztr_node_conn(&p, 0);
	if (nc == ZTR_NC_LOCAL)
		return ztr_lookup_verdict_on(ctx, cfg, ZTR_HOOK_POD_LOOKUP, &p, ZTR_R_LOCAL_LEG, SK_PASS);
	if (nc == ZTR_NC_FROM_NODE)
		return ztr_lookup_verdict_on(ctx, cfg, ZTR_HOOK_POD_LOOKUP, &p, ZTR_R_BYPASS_HOST, SK_PASS);
	if (ctx->ingress_ifindex == ZTR_LOOPBACK_IFINDEX) {
		ep = ztr_endpoint(&p.saddr);
		slot = ZTR_SLOT_OUTBOUND;
	} else {
		ep = ztr_endpoint(&p.daddr);
		slot = ctx->local_port == cfg->port_hbone ? ZTR_SLOT_HBONE : ZTR_SLOT_INBOUND;
	}
	if (!ep || ep->kind != ZTR_EP_POD || ep->ifindex >= ZTR_MAX_PODS)
		return SK_PASS;
	key = ep->ifindex * ZTR_SLOT_MAX + ztr_family_base(&p) + slot;
	sk = bpf_map_lookup_elem(&ztr_pod_listeners, &key);
	if (!sk)
		return ztr_lookup_verdict_on(ctx, cfg, ZTR_HOOK_POD_LOOKUP, &p, ZTR_R_DROP_NO_LISTENER, SK_DROP);
	if (bpf_sk_assign(ctx, sk, 0)) {
		bpf_sk_release(sk);
		return ztr_lookup_verdict_on(ctx, cfg, ZTR_HOOK_POD_LOOKUP, &p, ZTR_R_DROP_NO_LISTENER, SK_DROP);
	}
	bpf_sk_release(sk);
	return ztr_lookup_verdict_on(ctx, cfg, ZTR_HOOK_POD_LOOKUP, &p, ZTR_R_ASSIGN_LISTENER, SK_PASS);
}

/*
 * In-pod: a netfilter hook (PRE_ROUTING, the node's netns) that keeps the
 * host-IP bypass unforgeable. Inside a workload's netns a kubelet probe
 * and a packet forged with the node's address look alike; the node's own
 * packets never pass PRE_ROUTING except by lo, so any other device
 * bringing a host IP as source is a forgery. IPv4's martian check already
 * drops these; IPv6 forwards them, hence this hook (for both).
 */
struct nf_hook_state___ztr {
	struct net_device___ztr *in;
} __attribute__((preserve_access_index));

struct bpf_nf_ctx___ztr {
	const struct nf_hook_state___ztr *state;
	struct sk_buff___ztr *skb;
} __attribute__((preserve_access_index));

struct net_device___ztr2 {
	int ifindex;
} __attribute__((preserve_access_index));

extern int bpf_dynptr_from_skb(struct __sk_buff *skb, __u64 flags, struct bpf_dynptr *ptr) __ksym;
extern void *bpf_dynptr_slice(const struct bpf_dynptr *ptr, __u32 offset, void *buffer,
			      __u32 buffer__szk) __ksym;

#define ZTR_NF_DROP 0
#define ZTR_NF_ACCEPT 1

SEC("netfilter")
int ztr_host_guard(struct bpf_nf_ctx___ztr *ctx)
{
	const struct nf_hook_state___ztr *state = ctx->state;
	struct ztr_config *cfg = ztr_get_config();
	struct net_device___ztr2 *in;
	struct bpf_dynptr ptr;
	struct ztr_addr src = {};
	__u8 buf[40], *h;
	__u8 version;

	if (!ztr_inpod(cfg) || !cfg->n_host)
		return ZTR_NF_ACCEPT;
	in = (struct net_device___ztr2 *)state->in;
	if (!in || in->ifindex == ZTR_LOOPBACK_IFINDEX)
		return ZTR_NF_ACCEPT;
	if (bpf_dynptr_from_skb((struct __sk_buff *)ctx->skb, 0, &ptr))
		return ZTR_NF_ACCEPT;
	h = bpf_dynptr_slice(&ptr, 0, buf, 20);
	if (!h)
		return ZTR_NF_ACCEPT;	/* shorter than any IP header: not one */
	version = h[0] >> 4;
	if (version == 4) {
		ztr_addr_from_v4(&src, *(__be32 *)&h[12]);
	} else if (version == 6) {
		h = bpf_dynptr_slice(&ptr, 0, buf, 40);
		if (!h)
			return ZTR_NF_ACCEPT;
		__builtin_memcpy(src.a, &h[8], 16);
	} else {
		return ZTR_NF_ACCEPT;
	}
	if (ztr_special_kind(cfg, &src) != ZTR_EP_HOST)
		return ZTR_NF_ACCEPT;
	ztr_count(in->ifindex, ZTR_HOOK_HOST_GUARD, ZTR_R_DROP_SPOOFED, 0);
	return ZTR_NF_DROP;
}

/* Puts the enums that no map type mentions into BTF, so that the generated
 * Rust skeleton carries them too. */
struct ztr_btf_anchor {
	enum ztr_limits limits;
	enum ztr_defaults defaults;
	enum ztr_mark mark;
	enum ztr_endpoint_kind kind;
	enum ztr_config_flags flags;
	enum ztr_excl_port_kind excl;
	struct ztr_excl_port_key excl_port;
	struct ztr_excl_cidr_key excl_cidr;
	enum ztr_slot slot;
	enum ztr_role role;
	enum ztr_attach_mode mode;
	enum ztr_reason reason;
	enum ztr_hook_id hook;
	enum ztr_direction direction;
	enum ztr_iface_flag iface_flag;
	enum ztr_node_conn_kind node_conn_kind;
	/* Only pointed to by the connection table's template: without a
	 * full use, BTF would carry just a forward declaration. */
	struct ztr_ct_key ct_key;
	struct ztr_ct_entry ct_entry;
	struct ztr_event event;
	struct ztr_stat_slot stat_slot;
	struct ztr_src_cache src_cache;
	struct ztr_pod pod;
	struct ztr_dns_key dns_key;
	struct ztr_dns_orig dns_orig;
	struct ztr_pod_cache pod_cache;
};
const volatile struct ztr_btf_anchor ztr_btf_anchor;

char LICENSE[] SEC("license") = "Dual BSD/GPL";
