/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Capture decisions on a workload's host-side veth, one function a direction. */
#ifndef ZTR_CLASSIFY_H
#define ZTR_CLASSIFY_H

#include "parse.h"
#include "maps.h"

#define ZTR_DNS_PORT 53
#define ZTR_IPPROTO_ICMPV6 58

static __always_inline int ztr_dns_capture(const struct ztr_config *cfg)
{
	return cfg && (cfg->flags & ZTR_CFG_CAPTURE_DNS);
}

/*
 * Whether the workload behind `ifindex` excludes the connection whose
 * workload-side port is wport and whose peer is peer:pport. Only looked at
 * when some workload has exclusions, so others pay one flag test.
 */
static __always_inline int ztr_excluded(const struct ztr_config *cfg, __u32 ifindex, __be16 wport,
					const struct ztr_addr *peer, __be16 pport, __u8 family)
{
	struct ztr_excl_port_key pk = { .ifindex = ifindex };
	struct ztr_excl_cidr_key ck = { .ifindex = ifindex, .family = family };
	__u32 *kind;

	if (!cfg || !(cfg->flags & ZTR_CFG_EXCLUSIONS))
		return 0;
	pk.port = bpf_ntohs(pport);
	kind = bpf_map_lookup_elem(&ztr_excl_ports, &pk);
	if (kind && (*kind & ZTR_EXCL_OUTBOUND))
		return 1;
	pk.port = bpf_ntohs(wport);
	kind = bpf_map_lookup_elem(&ztr_excl_ports, &pk);
	if (kind && (*kind & ZTR_EXCL_INBOUND))
		return 1;
	if (family == 4) {
		ck.prefixlen = 64 + 32;
		ck.addr.a[0] = peer->a[3];
	} else {
		ck.prefixlen = 64 + 128;
		ck.addr = *peer;
	}
	return bpf_map_lookup_elem(&ztr_excl_cidrs, &ck) != 0;
}

/* The kind (enum ztr_node_conn_kind) of @p's connection, or 0. */
static __always_inline __u32 ztr_node_conn(const struct ztr_pkt *p, int from_workload)
{
	struct ztr_ct_key k = {};
	struct ztr_node_conn *nc;

	ztr_conn_key(&k, p, from_workload);
	nc = bpf_map_lookup_elem(&ztr_node_conns, &k);
	return nc ? nc->kind : 0;
}

static __always_inline void ztr_node_conn_put(const struct ztr_pkt *p, int from_workload, __u32 kind,
					      __u32 ifindex)
{
	struct ztr_ct_key k = {};
	struct ztr_node_conn nc = { .kind = kind, .ifindex = ifindex };

	ztr_conn_key(&k, p, from_workload);
	bpf_map_update_elem(&ztr_node_conns, &k, &nc, BPF_ANY);
}

/* A TCP SYN without ACK: someone opens a connection. */
static __always_inline int ztr_is_syn(const struct ztr_pkt *p)
{
	return p->proto == IPPROTO_TCP && p->frag != ZTR_FRAG_LATER &&
	       (p->tcp_flags & (ZTR_TCP_SYN | ZTR_TCP_ACK)) == ZTR_TCP_SYN;
}

/*
 * Whether a packet leaving the workload behind @ifindex carries one of that
 * workload's addresses. IPv6 neighbour discovery speaks from link-local and
 * unspecified addresses; only ICMPv6 may. A workload can opt out. The last
 * address found good is cached per CPU until the CLI bumps ep_gen.
 */
static __always_inline int ztr_source_ok(const struct ztr_config *cfg, __u32 ifindex,
					 const struct ztr_pkt *p)
{
	__u32 zero = 0, gen = cfg ? cfg->ep_gen : 0, *flags;
	struct ztr_src_cache *c = bpf_map_lookup_elem(&ztr_src_cache, &zero);
	struct ztr_endpoint *ep;

	if (c && c->ifindex == ifindex && c->gen == gen && ztr_addr_eq(&c->addr, &p->saddr))
		return 1;
	ep = ztr_endpoint(&p->saddr);
	if (ep && ep->kind == ZTR_EP_WORKLOAD && ep->ifindex == ifindex) {
		if (c) {
			c->ifindex = ifindex;
			c->gen = gen;
			c->addr = p->saddr;
		}
		return 1;
	}
	if (p->family == 6 && p->proto == ZTR_IPPROTO_ICMPV6 &&
	    ((bpf_ntohl(p->saddr.a[0]) & 0xffc00000) == 0xfe800000 ||
	     !(p->saddr.a[0] | p->saddr.a[1] | p->saddr.a[2] | p->saddr.a[3])))
		return 1;
	flags = bpf_map_lookup_elem(&ztr_iface_flags, &ifindex);
	return flags && (*flags & ZTR_IF_NO_SOURCE_CHECK);
}

/*
 * A later fragment whose first was not seen has no ports: it is dropped
 * where a fragment of its protocol could be captured, since its first may
 * have been (TCP; UDP when DNS is captured; and IPv6 fragments whose
 * protocol is hidden behind more extension headers).
 */
static __always_inline int ztr_unknown_fragment_capturable(const struct ztr_config *cfg,
							   const struct ztr_pkt *p, int outbound)
{
	if (p->proto == IPPROTO_TCP || ztr_is_ext_hdr(p->proto))
		return 1;
	return outbound && p->proto == IPPROTO_UDP && ztr_dns_capture(cfg);
}

/*
 * A packet leaving the workload (its veth's tc ingress). Returns a
 * CAPTURE_* reason when the packet must go to ztunnel, a DROP_* reason when
 * it must be dropped, another reason when it is left alone.
 *
 * A connection to a node host IP is captured like any other (a NodePort
 * may lead anywhere); only the replies of connections the node itself
 * opened into the workload bypass. A SYN is always a new connection, so a
 * stale record never lets one past.
 */
static __always_inline __u32 ztr_classify_outbound(const struct ztr_config *cfg, __u32 ifindex,
						   const struct ztr_pkt *p)
{
	int dns;

	if (!ztr_source_ok(cfg, ifindex, p))
		return ZTR_R_DROP_SPOOFED;
	if (p->frag == ZTR_FRAG_UNKNOWN)
		return ztr_unknown_fragment_capturable(cfg, p, 1) ? ZTR_R_DROP_FRAGMENT : ZTR_R_PASS_PROTO;
	dns = p->dport == bpf_htons(ZTR_DNS_PORT);
	if (p->proto != IPPROTO_TCP && !(p->proto == IPPROTO_UDP && dns))
		return ZTR_R_PASS_PROTO;
	if (p->proto == IPPROTO_TCP && !ztr_is_syn(p)) {
		__u32 kind = ztr_special_kind(cfg, &p->daddr);

		if (kind == ZTR_EP_HOST && ztr_node_conn(p, 1) == ZTR_NC_FROM_NODE)
			return ZTR_R_BYPASS_HOST;
		/* Replies to ztunnel's own connection that the node's NAT
		 * brought here: back the same way, for the reverse NAT. */
		if (kind == ZTR_EP_ZTUNNEL && ztr_node_conn(p, 1) == ZTR_NC_HAIRPIN)
			return ZTR_R_ZTUNNEL_HAIRPIN;
	}
	if (ztr_excluded(cfg, ifindex, p->sport, &p->daddr, p->dport, p->family))
		return ZTR_R_BYPASS_EXCLUDED;
	if (dns && ztr_dns_capture(cfg))
		return ZTR_R_CAPTURE_DNS;
	if (p->proto == IPPROTO_UDP)
		return ZTR_R_BYPASS_DNS;
	return ZTR_R_CAPTURE_OUTBOUND;
}

/*
 * A packet the node sends into the workload (its veth's tc egress). Only TCP
 * is captured. Bypasses rest on where the packet comes from, never on a
 * source address alone, which anyone on the uplink can write:
 * - the node's own stack (no ingress device) with a host IP as source: a
 *   kubelet probe; its SYN records the connection for the replies;
 * - ztunnel's host veth with ztunnel's address as source.
 * @ingress_ifindex is the device the packet entered the node by (0: made
 * by the node itself).
 */
static __always_inline __u32 ztr_classify_inbound(const struct ztr_config *cfg, __u32 ifindex,
						  __u32 ingress_ifindex, const struct ztr_pkt *p)
{
	__u32 kind;

	if (p->frag == ZTR_FRAG_UNKNOWN)
		return ztr_unknown_fragment_capturable(cfg, p, 0) ? ZTR_R_DROP_FRAGMENT : ZTR_R_PASS_PROTO;
	if (p->proto != IPPROTO_TCP)
		return ZTR_R_PASS_PROTO;
	kind = ztr_special_kind(cfg, &p->saddr);
	if (kind == ZTR_EP_HOST && ingress_ifindex == 0) {
		if (ztr_is_syn(p)) {
			ztr_node_conn_put(p, 0, ZTR_NC_FROM_NODE, ifindex);
			return ZTR_R_BYPASS_HOST;
		}
		if (ztr_node_conn(p, 0) == ZTR_NC_FROM_NODE)
			return ZTR_R_BYPASS_HOST;
	}
	if (kind == ZTR_EP_ZTUNNEL && cfg && ingress_ifindex == cfg->host_ifindex) {
		/* ztunnel's connections to known workloads go straight in; one
		 * that came through the node was turned here by its NAT. */
		if (ztr_is_syn(p))
			ztr_node_conn_put(p, 0, ZTR_NC_HAIRPIN, ifindex);
		return ZTR_R_BYPASS_ZTUNNEL;
	}
	if (ztr_excluded(cfg, ifindex, p->dport, &p->saddr, p->sport, p->family))
		return ZTR_R_BYPASS_EXCLUDED;
	return ZTR_R_CAPTURE_INBOUND;
}

/*
 * A captured inbound SYN that ztunnel sent in a workload's name and the
 * node's NAT turned towards another workload here (a NodePort hairpin):
 * ztunnel's answers must then go back through that NAT. Recorded so that
 * ztr_ztunnel_host leaves them to the node.
 */
static __always_inline void ztr_note_hairpin(const struct ztr_config *cfg, __u32 ifindex,
					     __u32 ingress_ifindex, const struct ztr_pkt *p)
{
	__u32 zero = 0, *seen;

	if (!cfg || ingress_ifindex != cfg->host_ifindex || !ztr_is_syn(p) ||
	    ztr_endpoint_kind(&p->saddr) != ZTR_EP_WORKLOAD)
		return;
	ztr_node_conn_put(p, 0, ZTR_NC_HAIRPIN, ifindex);
	seen = bpf_map_lookup_elem(&ztr_hairpin_seen, &zero);
	if (seen && !*seen)
		*seen = 1;
}

/* Whether ztunnel's packet to a workload answers a hairpin connection. */
static __always_inline int ztr_is_hairpin_reply(const struct ztr_pkt *p)
{
	__u32 zero = 0, *seen = bpf_map_lookup_elem(&ztr_hairpin_seen, &zero);

	/* ztunnel answers in the name of the workload the SYN reached: its
	 * source is that workload's side of the recorded connection. */
	return seen && *seen && ztr_node_conn(p, 1) == ZTR_NC_HAIRPIN;
}

static __always_inline int ztr_is_capture(__u32 reason)
{
	return reason == ZTR_R_CAPTURE_OUTBOUND || reason == ZTR_R_CAPTURE_INBOUND ||
	       reason == ZTR_R_CAPTURE_DNS;
}

static __always_inline int ztr_is_drop(__u32 reason)
{
	return reason == ZTR_R_DROP_SPOOFED || reason == ZTR_R_DROP_FRAGMENT ||
	       reason == ZTR_R_MALFORMED;
}

#endif /* ZTR_CLASSIFY_H */
