// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * ztredir's entry points. Each one parses, asks a classifier for a reason,
 * counts that reason and turns it into a verdict; the logic lives in lib/.
 *
 * A program that does not act on a packet returns TC_ACT_UNSPEC, which
 * lets the next program on the device run (TCX_NEXT, or the next classic
 * filter).
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/socket.h>
#include <bpf/bpf_helpers.h>

#include "ztredir.h"
#include "lib/parse.h"
#include "lib/maps.h"
#include "lib/classify.h"
#include "lib/steer.h"

#define AF_INET 2
#define AF_INET6 10

static __always_inline int ztr_verdict(__u32 reason, int verdict)
{
	ztr_count(reason);
	return verdict;
}

/* Workload veth, tc ingress: packets leaving the workload. */
SEC("tc")
int ztr_workload_out(struct __sk_buff *skb)
{
	struct ztr_pkt p = {};
	struct ztr_config *cfg;
	__u32 reason;
	int err;

	err = ztr_parse(skb, &p);
	if (err < 0)
		return ztr_verdict(-err, TC_ACT_UNSPEC);
	cfg = ztr_get_config();
	reason = ztr_classify_outbound(cfg, &p);
	if (!ztr_is_capture(reason))
		return ztr_verdict(reason, TC_ACT_UNSPEC);
	/* Fail closed: captured traffic never goes around the proxy. */
	if (!cfg || !(cfg->flags & ZTR_CFG_ENABLED))
		return ztr_verdict(ZTR_R_DROP_NO_ZTUNNEL, TC_ACT_SHOT);
	/* The peer redirect keeps pkt_type from this veth (PACKET_HOST), so
	 * ztunnel's eth0 takes the frame without a MAC rewrite. */
	return ztr_verdict(reason, bpf_redirect_peer(cfg->host_ifindex, 0));
}

/* Workload veth, tc egress: packets the node sends into the workload. */
SEC("tc")
int ztr_workload_in(struct __sk_buff *skb)
{
	struct ztr_pkt p = {};
	struct ztr_config *cfg;
	__u32 reason;
	int err;

	err = ztr_parse(skb, &p);
	if (err < 0)
		return ztr_verdict(-err, TC_ACT_UNSPEC);
	reason = ztr_classify_inbound(&p);
	if (!ztr_is_capture(reason))
		return ztr_verdict(reason, TC_ACT_UNSPEC);
	cfg = ztr_get_config();
	if (!cfg || !(cfg->flags & ZTR_CFG_ENABLED))
		return ztr_verdict(ZTR_R_DROP_NO_ZTUNNEL, TC_ACT_SHOT);
	/* A peer redirect is not allowed from egress. A plain redirect goes
	 * out of ztunnel's host veth and eth_type_trans runs again on the far
	 * side, so the frame must carry ztunnel's MAC or it is dropped as not
	 * for this host. pod_mac and host_mac are adjacent: dst, then src. */
	if (bpf_skb_store_bytes(skb, 0, cfg->pod_mac, 12, 0))
		return ztr_verdict(ZTR_R_MALFORMED, TC_ACT_SHOT);
	return ztr_verdict(reason, bpf_redirect(cfg->host_ifindex, 0));
}

/* ztunnel's host veth, tc ingress: packets ztunnel sends. Those addressed to
 * a workload go straight into it, past the workload's inbound capture. */
SEC("tc")
int ztr_ztunnel_host(struct __sk_buff *skb)
{
	struct ztr_pkt p = {};
	struct ztr_endpoint *ep;
	int err;

	err = ztr_parse(skb, &p);
	if (err < 0)
		return ztr_verdict(-err, TC_ACT_UNSPEC);
	ep = ztr_endpoint(&p.daddr);
	if (!ep || ep->kind != ZTR_EP_WORKLOAD)
		return ztr_verdict(ZTR_R_ZTUNNEL_TO_OTHER, TC_ACT_UNSPEC);
	return ztr_verdict(ZTR_R_ZTUNNEL_TO_WORKLOAD, bpf_redirect_peer(ep->ifindex, 0));
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
	struct ztr_pkt p = {};
	struct ztr_config *cfg;
	int err, slot;

	err = ztr_parse(skb, &p);
	if (err < 0)
		return ztr_verdict(-err, TC_ACT_UNSPEC);
	if (ztr_endpoint_kind(&p.daddr) == ZTR_EP_ZTUNNEL)
		return ztr_verdict(ZTR_R_ZTUNNEL_LOCAL, TC_ACT_UNSPEC);
	cfg = ztr_get_config();
	if (!cfg || !(cfg->flags & ZTR_CFG_ENABLED))
		return ztr_verdict(ZTR_R_PASS_PROTO, TC_ACT_UNSPEC);
	if (p.proto == IPPROTO_UDP) {
		if (p.later_fragment || p.dport != bpf_htons(ZTR_DNS_PORT) ||
		    !(cfg->flags & ZTR_CFG_CAPTURE_DNS))
			return ztr_verdict(ZTR_R_PASS_PROTO, TC_ACT_UNSPEC);
	} else if (p.proto != IPPROTO_TCP) {
		return ztr_verdict(ZTR_R_PASS_PROTO, TC_ACT_UNSPEC);
	}

	/* A new flow: make sure ztunnel listens for it, else drop. */
	if (p.proto == IPPROTO_UDP ||
	    (p.tcp_flags & (ZTR_TCP_SYN | ZTR_TCP_ACK)) == ZTR_TCP_SYN) {
		slot = ztr_slot_for(cfg, &p.saddr, p.family, p.proto, bpf_ntohs(p.dport));
		if (slot >= 0) {
			err = ztr_ensure_listener(skb, cfg, &p, slot);
			if (err < 0)
				return ztr_verdict(-err, TC_ACT_SHOT);
		}
	}
	skb->mark = (skb->mark & ~ZTR_MARK_MASK) | ZTR_MARK_LOCAL;
	return ztr_verdict(ZTR_R_STEER_LOCAL, TC_ACT_OK);
}

static __always_inline int ztr_is_own_address(const struct ztr_addr *a)
{
	/* 127.0.0.0/8 (IPv4-mapped), ::1 and fe80::/10 are the netns' own. */
	if (a->a[0] == 0 && a->a[1] == 0 && a->a[2] == bpf_htonl(0xffff) &&
	    (bpf_ntohl(a->a[3]) >> 24) == 127)
		return 1;
	if (a->a[0] == 0 && a->a[1] == 0 && a->a[2] == 0 && a->a[3] == bpf_htonl(1))
		return 1;
	if ((bpf_ntohl(a->a[0]) & 0xffc00000) == 0xfe800000)
		return 1;
	return ztr_endpoint_kind(a) == ZTR_EP_ZTUNNEL;
}

/*
 * The ztunnel netns' socket lookup, for connections with no socket yet:
 * one addressed to something other than ztunnel was captured, and goes to
 * the ztunnel listener its direction calls for.
 */
SEC("sk_lookup")
int ztr_ztunnel_lookup(struct bpf_sk_lookup *ctx)
{
	struct ztr_addr local, remote;
	struct ztr_config *cfg;
	struct bpf_sock *sk;
	__u32 key;
	int slot;
	__u8 family;

	if (ctx->family == AF_INET) {
		ztr_addr_from_v4(&local, ctx->local_ip4);
		ztr_addr_from_v4(&remote, ctx->remote_ip4);
		family = 4;
	} else if (ctx->family == AF_INET6) {
		ztr_addr_from_v6(&local, ctx->local_ip6);
		ztr_addr_from_v6(&remote, ctx->remote_ip6);
		family = 6;
	} else {
		return SK_PASS;
	}
	if (ztr_is_own_address(&local))
		return SK_PASS;
	cfg = ztr_get_config();
	if (!cfg || !(cfg->flags & ZTR_CFG_ENABLED))
		return SK_PASS;
	slot = ztr_slot_for(cfg, &remote, family, ctx->protocol, ctx->local_port);
	if (slot < 0)
		return SK_PASS;
	key = slot;
	sk = bpf_map_lookup_elem(&ztr_listeners, &key);
	if (!sk) {
		ztr_count(ZTR_R_DROP_NO_LISTENER);
		return SK_DROP;
	}
	if (bpf_sk_assign(ctx, sk, 0)) {
		bpf_sk_release(sk);
		ztr_count(ZTR_R_DROP_NO_LISTENER);
		return SK_DROP;
	}
	bpf_sk_release(sk);
	ztr_count(ZTR_R_ASSIGN_LISTENER);
	return SK_PASS;
}

/* Puts the enums that no map type mentions into BTF, so that the generated
 * Rust skeleton carries them too. */
struct ztr_btf_anchor {
	enum ztr_limits limits;
	enum ztr_mark mark;
	enum ztr_endpoint_kind kind;
	enum ztr_config_flags flags;
	enum ztr_slot slot;
	enum ztr_role role;
	enum ztr_attach_mode mode;
	enum ztr_reason reason;
};
const volatile struct ztr_btf_anchor ztr_btf_anchor;

char LICENSE[] SEC("license") = "Dual BSD/GPL";
