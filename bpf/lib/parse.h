/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Packet parsing: an skb's IPv4/IPv6 and TCP/UDP headers into a flat tuple.
 *
 * Policy: what cannot be parsed is MALFORMED, and every capture hook drops
 * it. A parser that gives up must never turn into a way around the proxy.
 */
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
#include "maps.h"

#define ZTR_TCP_FIN 0x01
#define ZTR_TCP_SYN 0x02
#define ZTR_TCP_RST 0x04
#define ZTR_TCP_ACK 0x10

#define ZTR_ETH_P_8021Q 0x8100
#define ZTR_ETH_P_8021AD 0x88a8
#define ZTR_IPPROTO_AH 51
#define ZTR_IP_MF 0x2000
#define ZTR_IP_OFFSET 0x1fff

/* ztr_parse's answer for a frame that is not IP (ZTR_R_NOT_IP is 0, so
 * its negation could not say it). */
#define ZTR_PARSE_NOT_IP (-(int)ZTR_R_MAX - 1)

/* Where a packet stands among the fragments of its datagram. */
enum ztr_frag_state {
	ZTR_FRAG_NONE = 0,	/* not fragmented */
	ZTR_FRAG_FIRST,		/* offset 0, more to come: ports recorded */
	ZTR_FRAG_LATER,		/* offset > 0: ports taken from the first */
	ZTR_FRAG_UNKNOWN,	/* offset > 0, first never seen: no ports, maybe no protocol */
};

struct ztr_pkt {
	struct ztr_addr saddr;
	struct ztr_addr daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;		/* IPPROTO_* of the transport header */
	__u8 family;		/* 4 or 6 */
	__u8 tcp_flags;		/* ZTR_TCP_* (TCP only, not on later fragments) */
	__u8 frag;		/* enum ztr_frag_state */
	__u16 l3_off;		/* where the IP header starts */
	__u16 l4_off;		/* where the transport header starts */
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

/* @p's connection as the connection table keys it: workload side first. */
static __always_inline void ztr_conn_key(struct ztr_ct_key *k, const struct ztr_pkt *p, int from_workload)
{
	k->proto = p->proto;
	if (from_workload) {
		k->workload = p->saddr;
		k->workload_port = p->sport;
		k->peer = p->daddr;
		k->peer_port = p->dport;
	} else {
		k->workload = p->daddr;
		k->workload_port = p->dport;
		k->peer = p->saddr;
		k->peer_port = p->sport;
	}
}

/* The IPv6 extension headers the kernel walks before the transport. */
static __always_inline int ztr_is_ext_hdr(__u8 nh)
{
	return nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_DSTOPTS ||
	       nh == IPPROTO_FRAGMENT || nh == ZTR_IPPROTO_AH;
}

/* Bytes of transport header that must be in the packet for its decision. */
static __always_inline __u32 ztr_l4_min(__u8 proto)
{
	if (proto == IPPROTO_TCP)
		return sizeof(struct tcphdr);
	if (proto == IPPROTO_UDP)
		return sizeof(struct udphdr);
	return 0;
}

static __always_inline void ztr_frag_key_of(struct ztr_frag_key *k, const struct ztr_pkt *p, __u32 id,
					    __u8 nexthdr)
{
	k->saddr = p->saddr;
	k->daddr = p->daddr;
	k->id = id;
	k->nexthdr = nexthdr;
	k->family = p->family;
}

/*
 * A later fragment: takes protocol and ports from its datagram's first
 * fragment, so that every fragment is classified alike. Returns 0 (frag is
 * LATER or UNKNOWN).
 */
static __always_inline int ztr_later_fragment(struct ztr_pkt *p, __u32 id, __u8 nexthdr)
{
	struct ztr_frag_key k = {};
	struct ztr_frag *f;

	ztr_frag_key_of(&k, p, id, nexthdr);
	f = bpf_map_lookup_elem(&ztr_frags, &k);
	p->proto = nexthdr;
	if (!f) {
		p->frag = ZTR_FRAG_UNKNOWN;
		return 0;
	}
	p->frag = ZTR_FRAG_LATER;
	p->proto = f->proto;
	p->sport = f->sport;
	p->dport = f->dport;
	return 0;
}

/* Takes ports and flags from a transport header @h that holds at least
 * ztr_l4_min(p->proto) bytes. */
static __always_inline int ztr_read_l4(struct ztr_pkt *p, const __u8 *h)
{
	p->sport = *(__be16 *)&h[0];
	p->dport = *(__be16 *)&h[2];
	if (p->proto == IPPROTO_TCP) {
		/* A data offset below 5 words is no TCP header. */
		if ((h[12] >> 4) < 5)
			return -ZTR_R_MALFORMED;
		p->tcp_flags = h[13];
	}
	return 0;
}

/*
 * Reads the transport header at @off (the IP packet ends at @end) into @p.
 * @off must be a known constant or bounded by the caller: the header is
 * read in place from the linear data, or copied out when it is not there
 * (non-linear skbs). Returns 0, or -ZTR_R_MALFORMED when the header is not
 * all there: a tiny first fragment or a truncated packet.
 */
static __always_inline int ztr_parse_l4(struct __sk_buff *skb, struct ztr_pkt *p, __u32 off, __u32 end)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u32 need = ztr_l4_min(p->proto);
	__u8 buf[sizeof(struct tcphdr)];
	__u8 *h = data + (off & 0x7f);

	p->l4_off = off;
	if (!need)
		return 0;
	if (off + need > end)
		return -ZTR_R_MALFORMED;
	if (off > 0x7f || (void *)(h + sizeof(buf)) > data_end) {
		if (bpf_skb_load_bytes(skb, off, buf, need))
			return -ZTR_R_MALFORMED;
		h = buf;
	}
	return ztr_read_l4(p, h);
}

/*
 * The same after an extension-header walk: always copied out, so that the
 * offset stays out of pointer arithmetic and the verifier can prune the
 * walk's states instead of following every offset it could reach.
 */
static __always_inline int ztr_parse_l4_copy(struct __sk_buff *skb, struct ztr_pkt *p, __u32 off, __u32 end)
{
	__u32 need = ztr_l4_min(p->proto);
	__u8 buf[sizeof(struct tcphdr)];

	p->l4_off = off;
	if (!need)
		return 0;
	if (off + need > end || bpf_skb_load_bytes(skb, off, buf, need))
		return -ZTR_R_MALFORMED;
	return ztr_read_l4(p, buf);
}

/* Records a first fragment's protocol and ports for the rest. */
static __always_inline void ztr_first_fragment(const struct ztr_pkt *p, __u32 id, __u8 nexthdr)
{
	struct ztr_frag_key k = {};
	struct ztr_frag f = { .sport = p->sport, .dport = p->dport, .proto = p->proto };

	ztr_frag_key_of(&k, p, id, nexthdr);
	bpf_map_update_elem(&ztr_frags, &k, &f, BPF_ANY);
}

static __always_inline int ztr_parse_v4(struct __sk_buff *skb, struct ztr_pkt *p, __u32 off)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + off;
	__u32 hlen, tot, end, frag_off, err;

	if ((void *)(ip + 1) > data_end || ip->ihl < 5 || ip->version != 4)
		return -ZTR_R_MALFORMED;
	p->family = 4;
	p->l3_off = off;
	ztr_addr_from_v4(&p->saddr, ip->saddr);
	ztr_addr_from_v4(&p->daddr, ip->daddr);
	hlen = ip->ihl * 4;
	tot = bpf_ntohs(ip->tot_len);
	/* GSO packets past 64 KiB (BIG TCP) carry a total length of 0. */
	if (tot == 0 && skb->gso_size)
		tot = skb->len - off;
	if (tot < hlen)
		return -ZTR_R_MALFORMED;
	end = off + tot;
	frag_off = bpf_ntohs(ip->frag_off);
	p->proto = ip->protocol;
	if (frag_off & ZTR_IP_OFFSET) {
		/* RFC 1858: a later fragment that overlaps the TCP header can
		 * rewrite what the first fragment was judged by. */
		if (ip->protocol == IPPROTO_TCP && (frag_off & ZTR_IP_OFFSET) * 8 < sizeof(struct tcphdr))
			return -ZTR_R_MALFORMED;
		return ztr_later_fragment(p, bpf_ntohs(ip->id), ip->protocol);
	}
	err = ztr_parse_l4(skb, p, off + hlen, end);
	if (err)
		return err;
	if ((frag_off & ZTR_IP_MF) && ztr_l4_min(p->proto)) {
		p->frag = ZTR_FRAG_FIRST;
		ztr_first_fragment(p, bpf_ntohs(ip->id), ip->protocol);
	}
	return 0;
}

static __always_inline int ztr_parse_v6(struct __sk_buff *skb, struct ztr_pkt *p, __u32 off)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ipv6hdr *ip6 = data + off;
	__u32 end, frag_id = 0, plen;
	__u8 nh, frag_nh = 0, first = 0;
	int err;

	if ((void *)(ip6 + 1) > data_end || ip6->version != 6)
		return -ZTR_R_MALFORMED;
	p->family = 6;
	p->l3_off = off;
	ztr_addr_from_v6(&p->saddr, ip6->saddr.in6_u.u6_addr32);
	ztr_addr_from_v6(&p->daddr, ip6->daddr.in6_u.u6_addr32);
	nh = ip6->nexthdr;
	plen = bpf_ntohs(ip6->payload_len);
	/* A payload length of 0: a jumbogram, or GSO past 64 KiB (BIG TCP). */
	end = plen ? off + sizeof(*ip6) + plen : skb->len;
	off += sizeof(*ip6);
	if (!ztr_is_ext_hdr(nh)) {
		p->proto = nh;
		return ztr_parse_l4(skb, p, off, end);
	}
	/* Bounded, not unrolled: any chain up to the limit is walked, a longer
	 * one is dropped as MALFORMED below. */
#pragma clang loop unroll(disable)
	for (int i = 0; i < ZTR_MAX_EXTHDRS; i++) {
		__u8 h[8];

		if (!ztr_is_ext_hdr(nh))
			break;
		if (off + 8 > end || bpf_skb_load_bytes(skb, off, h, sizeof(h)))
			return -ZTR_R_MALFORMED;
		if (nh == IPPROTO_FRAGMENT) {
			/* Offset: the top 13 bits of bytes 2-3; M: bit 0 of byte 3. */
			__u16 fo = ((__u16)h[2] << 8 | h[3]) & 0xfff8;

			if (frag_nh || first)
				return -ZTR_R_MALFORMED;	/* two fragment headers */
			frag_id = (__u32)h[4] << 24 | (__u32)h[5] << 16 | (__u32)h[6] << 8 | h[7];
			if (fo)
				return ztr_later_fragment(p, frag_id, h[0]);
			/* Offset 0 without M is an atomic fragment: a whole packet. */
			if (h[3] & 1) {
				first = 1;
				frag_nh = h[0];
			}
			nh = h[0];
			off += 8;
			continue;
		}
		if (nh == ZTR_IPPROTO_AH)
			off += ((__u32)h[1] + 2) * 4;
		else
			off += ((__u32)h[1] + 1) * 8;
		nh = h[0];
	}
	if (ztr_is_ext_hdr(nh))
		return -ZTR_R_MALFORMED;
	p->proto = nh;
	err = ztr_parse_l4_copy(skb, p, off, end);
	if (err)
		return err;
	if (first && ztr_l4_min(p->proto)) {
		p->frag = ZTR_FRAG_FIRST;
		ztr_first_fragment(p, frag_id, frag_nh);
	}
	return 0;
}

/*
 * Fills @p from the packet. Returns 0 when @p holds an IPv4/IPv6 packet,
 * ZTR_PARSE_NOT_IP for what is not IP, or -ZTR_R_MALFORMED for
 * an IP packet that cannot be classified (truncated headers, a chain of
 * extension headers past the limit, a tiny first fragment, an overlapping
 * TCP fragment, IP inside VLAN tags). Later fragments get the ports of
 * their first fragment (frag LATER), or none when it was not seen (frag
 * UNKNOWN; proto may then be an extension header's number).
 */
static __always_inline int ztr_parse(struct __sk_buff *skb, struct ztr_pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__be16 proto;

	if ((void *)(eth + 1) > data_end)
		return -ZTR_R_MALFORMED;
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_IP))
		return ztr_parse_v4(skb, p, sizeof(*eth));
	if (proto == bpf_htons(ETH_P_IPV6))
		return ztr_parse_v6(skb, p, sizeof(*eth));
	if (proto == bpf_htons(ZTR_ETH_P_8021Q) || proto == bpf_htons(ZTR_ETH_P_8021AD)) {
		/* A tagged frame reaches no socket here; IP inside one is
		 * nothing ztredir may let past the proxy. One or two tags. */
		__be16 *inner = data + sizeof(*eth) + 2;

		if ((void *)(inner + 1) > data_end)
			return -ZTR_R_MALFORMED;
		if (*inner == bpf_htons(ZTR_ETH_P_8021Q)) {
			inner += 2;
			if ((void *)(inner + 1) > data_end)
				return -ZTR_R_MALFORMED;
		}
		if (*inner == bpf_htons(ETH_P_IP) || *inner == bpf_htons(ETH_P_IPV6))
			return -ZTR_R_MALFORMED;
	}
	return ZTR_PARSE_NOT_IP;
}

#endif /* ZTR_PARSE_H */
