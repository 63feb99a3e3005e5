/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Capture decisions on a workload's host-side veth, one function a direction. */
#ifndef ZTR_CLASSIFY_H
#define ZTR_CLASSIFY_H

#include "parse.h"
#include "maps.h"

#define ZTR_DNS_PORT 53

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

/*
 * A packet leaving the workload (its veth's tc ingress). Returns a
 * CAPTURE_* reason when the packet must go to ztunnel, another reason when
 * it is left alone.
 */
static __always_inline __u32 ztr_classify_outbound(const struct ztr_config *cfg, __u32 ifindex,
						   const struct ztr_pkt *p)
{
	int dns = p->dport == bpf_htons(ZTR_DNS_PORT) && !p->later_fragment;

	if (p->proto != IPPROTO_TCP && !(p->proto == IPPROTO_UDP && dns))
		return ZTR_R_PASS_PROTO;
	if (ztr_special_kind(cfg, &p->daddr) == ZTR_EP_HOST)
		return ZTR_R_BYPASS_HOST;
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
 * is captured; what ztunnel or a node host IP sends goes straight in
 * (ztunnel's own traffic normally arrives by the direct path and never gets
 * here; kubelet probes come from a host IP).
 */
static __always_inline __u32 ztr_classify_inbound(const struct ztr_config *cfg, __u32 ifindex,
						  const struct ztr_pkt *p)
{
	__u32 kind;

	if (p->proto != IPPROTO_TCP)
		return ZTR_R_PASS_PROTO;
	kind = ztr_special_kind(cfg, &p->saddr);
	if (kind == ZTR_EP_HOST)
		return ZTR_R_BYPASS_HOST;
	if (kind == ZTR_EP_ZTUNNEL)
		return ZTR_R_BYPASS_ZTUNNEL;
	if (ztr_excluded(cfg, ifindex, p->dport, &p->saddr, p->sport, p->family))
		return ZTR_R_BYPASS_EXCLUDED;
	return ZTR_R_CAPTURE_INBOUND;
}

static __always_inline int ztr_is_capture(__u32 reason)
{
	return reason == ZTR_R_CAPTURE_OUTBOUND || reason == ZTR_R_CAPTURE_INBOUND ||
	       reason == ZTR_R_CAPTURE_DNS;
}

#endif /* ZTR_CLASSIFY_H */
