/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Packet parsing: an skb's IPv4/IPv6 and TCP/UDP headers into a flat tuple. */
#ifndef ZTR_PARSE_H
#define ZTR_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "ztredir.h"

#define ZTR_TCP_FIN 0x01
#define ZTR_TCP_SYN 0x02
#define ZTR_TCP_RST 0x04
#define ZTR_TCP_ACK 0x10

/* How many IPv6 extension headers we walk before giving up. */
#define ZTR_MAX_EXTHDRS 4

struct ztr_pkt {
	struct ztr_addr saddr;
	struct ztr_addr daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;		/* IPPROTO_* of the transport header */
	__u8 family;		/* 4 or 6 */
	__u8 tcp_flags;		/* ZTR_TCP_* (TCP only) */
	__u8 later_fragment;	/* no transport header in this packet */
};

static __always_inline void ztr_addr_from_v4(struct ztr_addr *a, __be32 v4)
{
	a->a[0] = 0;
	a->a[1] = 0;
	a->a[2] = bpf_htonl(0x0000ffff);
	a->a[3] = v4;
}

static __always_inline void ztr_addr_from_v6(struct ztr_addr *a, const __u32 *v6)
{
	a->a[0] = v6[0];
	a->a[1] = v6[1];
	a->a[2] = v6[2];
	a->a[3] = v6[3];
}

static __always_inline int ztr_is_ext_hdr(__u8 nh)
{
	return nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING ||
	       nh == IPPROTO_DSTOPTS || nh == IPPROTO_FRAGMENT;
}

/*
 * Fills @p from the packet. Returns 0 when @p holds an IPv4/IPv6 packet,
 * or a negative enum ztr_reason (NOT_IP, MALFORMED). Ports are read only
 * for TCP and UDP and only from the first fragment: a later fragment keeps
 * ports 0 and sets later_fragment, so callers decide on addresses alone
 * (they capture rather than let a TCP fragment slip past the proxy).
 */
static __always_inline int ztr_parse(struct __sk_buff *skb, struct ztr_pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u32 off = sizeof(*eth);
	__u8 nh;

	if ((void *)(eth + 1) > data_end)
		return -ZTR_R_MALFORMED;

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + off;

		if ((void *)(ip + 1) > data_end || ip->ihl < 5)
			return -ZTR_R_MALFORMED;
		p->family = 4;
		ztr_addr_from_v4(&p->saddr, ip->saddr);
		ztr_addr_from_v4(&p->daddr, ip->daddr);
		nh = ip->protocol;
		/* Offset bits set: not the first fragment, no L4 header. */
		if (ip->frag_off & bpf_htons(0x1fff)) {
			p->proto = nh;
			p->later_fragment = 1;
			return 0;
		}
		off += ip->ihl * 4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + off;

		if ((void *)(ip6 + 1) > data_end)
			return -ZTR_R_MALFORMED;
		p->family = 6;
		ztr_addr_from_v6(&p->saddr, ip6->saddr.in6_u.u6_addr32);
		ztr_addr_from_v6(&p->daddr, ip6->daddr.in6_u.u6_addr32);
		nh = ip6->nexthdr;
		off += sizeof(*ip6);
#pragma unroll
		for (int i = 0; i < ZTR_MAX_EXTHDRS; i++) {
			__u8 *h = data + off;

			if (!ztr_is_ext_hdr(nh))
				break;
			if ((void *)(h + 8) > data_end)
				return -ZTR_R_MALFORMED;
			if (nh == IPPROTO_FRAGMENT) {
				/* Fragment offset is the top 13 bits of bytes 2-3. */
				__u16 frag = ((__u16)h[2] << 8 | h[3]) & 0xfff8;

				nh = h[0];
				off += 8;
				if (frag) {
					p->proto = nh;
					p->later_fragment = 1;
					return 0;
				}
				continue;
			}
			nh = h[0];
			off += ((__u32)h[1] + 1) * 8;
		}
		if (ztr_is_ext_hdr(nh))
			return -ZTR_R_MALFORMED;
	} else {
		return -ZTR_R_NOT_IP;
	}

	p->proto = nh;
	if (nh == IPPROTO_TCP) {
		struct tcphdr *tcp = data + off;

		if ((void *)(tcp + 1) > data_end)
			return -ZTR_R_MALFORMED;
		p->sport = tcp->source;
		p->dport = tcp->dest;
		p->tcp_flags = ((__u8 *)tcp)[13];
	} else if (nh == IPPROTO_UDP) {
		struct udphdr *udp = data + off;

		if ((void *)(udp + 1) > data_end)
			return -ZTR_R_MALFORMED;
		p->sport = udp->source;
		p->dport = udp->dest;
	}
	return 0;
}

#endif /* ZTR_PARSE_H */
