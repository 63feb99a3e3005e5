/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Everything the BPF programs and the ztredir CLI share: map key and value
 * layouts and constants. Constants live in enums so that they reach BTF and
 * the generated Rust skeleton; the CLI never keeps a hand-copied twin.
 */
#ifndef ZTREDIR_H
#define ZTREDIR_H

#include <linux/types.h>

enum ztr_limits {
	ZTR_MAX_ENDPOINTS = 65536,	/* workload, ztunnel and host addresses */
	ZTR_MAX_IFACES = 16384,		/* attached interfaces */
	ZTR_IFNAMSIZ = 16,
	ZTR_PATH_MAX = 128,
	ZTR_CONNS_DEFAULT = 65536,	/* connection table entries */
	ZTR_CT_CACHE_SLOTS = 16,	/* struct ztr_ct_pending per CPU (a power of two) */
	ZTR_CT_FLUSH_EVERY = 64,	/* packets pending at most, per slot */
	ZTR_STATS_MAX = 65536,		/* (interface, hook, reason) counters */
	ZTR_EVENTS_BYTES = 1 << 20,	/* trace ring buffer */
	ZTR_MAX_EXCL_PORTS = 65536,	/* (interface, port) exclusions */
	ZTR_MAX_EXCL_CIDRS = 16384,	/* (interface, CIDR) exclusions */
	ZTR_INLINE_ADDRS = 8,		/* host / ztunnel addresses kept in the config */
	ZTR_STAT_SLOTS = 256,		/* interfaces with array-backed counters */
	ZTR_MAX_FRAGS = 8192,		/* fragmented datagrams in flight */
	ZTR_MAX_NODE_CONNS = 16384,	/* connections the node opened into workloads */
	ZTR_MAX_EXTHDRS = 32,		/* IPv6 extension headers walked; more is dropped */
	ZTR_MAX_PODS = 4096,		/* in-pod workloads (ids 1 .. ZTR_MAX_PODS - 1) */
	ZTR_ID_SHORT = 64,		/* in-pod uid and Kubernetes namespace */
	ZTR_ID_LONG = 192,		/* in-pod workload and service account names */
	ZTR_MAX_DNS_NAT = 16384,	/* in-pod DNS queries in flight */
};

/* ztunnel's ports unless told otherwise: the one place they are written. */
enum ztr_defaults {
	ZTR_PORT_OUTBOUND = 15001,
	ZTR_PORT_INBOUND = 15006,	/* plaintext */
	ZTR_PORT_HBONE = 15008,
	ZTR_PORT_DNS = 15053,
};

/* The ztunnel netns routes packets carrying this mark to table 100, whose
 * only route is "local default": captured packets are delivered locally. */
enum ztr_mark {
	ZTR_MARK_LOCAL = 0x400,
	ZTR_MARK_MASK = 0xfff,
	ZTR_ROUTE_TABLE = 100,
	/* In-pod: the proxy's sockets carry this mark (ztunnel's, in the
	 * workload netns); their packets are never captured. */
	ZTR_MARK_PROXY = 0x539,
	ZTR_LOOPBACK_IFINDEX = 1,	/* lo, in every netns */
};

/* What an address in the endpoints map is. */
enum ztr_endpoint_kind {
	ZTR_EP_WORKLOAD = 1,
	ZTR_EP_ZTUNNEL = 2,
	ZTR_EP_HOST = 3,
	/* An in-pod workload's address; ztr_endpoint.ifindex is its pod id
	 * (the ztr_pods key). */
	ZTR_EP_POD = 4,
};

enum ztr_config_flags {
	ZTR_CFG_ENABLED = 1 << 0,	/* a ztunnel is configured */
	ZTR_CFG_CAPTURE_DNS = 1 << 1,	/* UDP and TCP port 53 go to the DNS port */
	ZTR_CFG_TRACE = 1 << 2,		/* someone runs "ztredir trace" */
	ZTR_CFG_EXCLUSIONS = 1 << 3,	/* some workload has exclusions */
	ZTR_CFG_MORE_ADDRS = 1 << 4,	/* host or ztunnel addresses beyond the inline lists */
	/* The proxy listens inside each workload's netns (ztunnel's shared
	 * mode); the in-pod programs steer there. */
	ZTR_CFG_INPOD = 1 << 5,
};

/* Per workload interface, in ztr_iface_flags; a bit mask. */
enum ztr_iface_flag {
	ZTR_IF_NO_SOURCE_CHECK = 1 << 0,	/* may send from addresses not its own */
};

/* Connections the workload programs decide by state rather than by the
 * packet alone (struct ztr_node_conn). */
enum ztr_node_conn_kind {
	/* The node's own stack (a kubelet probe) opened it into the workload:
	 * both directions bypass the proxy. */
	ZTR_NC_FROM_NODE = 1,
	/* ztunnel's connection reached the workload through the node's NAT
	 * (a NodePort hairpin): the packets that answer it, ztunnel's or the
	 * workload's, must go back the same way, not straight to the peer. */
	ZTR_NC_HAIRPIN = 2,
	/* In-pod: a connection opened to the workload from inside its own
	 * netns (the proxy's leg into the app over lo, or the app talking to
	 * itself): delivered as addressed, never steered. */
	ZTR_NC_LOCAL = 3,
};

/* What an (interface, port) exclusion applies to; a bit mask. */
enum ztr_excl_port_kind {
	ZTR_EXCL_OUTBOUND = 1 << 0,	/* the peer's port: outbound destination */
	ZTR_EXCL_INBOUND = 1 << 1,	/* the workload's port: inbound destination */
};

/* Which program saw a packet. */
enum ztr_hook_id {
	ZTR_HOOK_WORKLOAD_OUT = 1,
	ZTR_HOOK_WORKLOAD_IN = 2,
	ZTR_HOOK_ZTUNNEL_HOST = 3,
	ZTR_HOOK_ZTUNNEL_POD = 4,
	ZTR_HOOK_SK_LOOKUP = 5,
	ZTR_HOOK_POD_OUT = 6,		/* in-pod: the workload's interface, egress */
	ZTR_HOOK_POD_IN = 7,		/* in-pod: the workload's interface, ingress */
	ZTR_HOOK_POD_LO = 8,		/* in-pod: lo egress in the workload netns */
	ZTR_HOOK_POD_LOOKUP = 9,	/* in-pod: the workload netns' sk_lookup */
	ZTR_HOOK_HOST_GUARD = 10,	/* in-pod: netfilter PRE_ROUTING, node netns */
};

enum ztr_direction {
	ZTR_DIR_OUTBOUND = 1,		/* the workload opened it */
	ZTR_DIR_INBOUND = 2,		/* opened towards the workload */
};

/* Where a captured connection is steered, and the listener slot that
 * holds ztunnel's socket for it. IPv6 slots follow the IPv4 ones. */
enum ztr_slot {
	ZTR_SLOT_OUTBOUND = 0,
	ZTR_SLOT_INBOUND = 1,
	ZTR_SLOT_HBONE = 2,
	ZTR_SLOT_DNS_TCP = 3,
	ZTR_SLOT_DNS_UDP = 4,
	ZTR_SLOTS_PER_FAMILY = 5,
	ZTR_SLOT_MAX = 10,
};

enum ztr_role {
	ZTR_ROLE_WORKLOAD = 1,		/* a workload's host-side veth */
	ZTR_ROLE_ZTUNNEL_HOST = 2,	/* ztunnel's host-side veth */
	ZTR_ROLE_ZTUNNEL_POD = 3,	/* ztunnel's eth0 inside its netns */
	ZTR_ROLE_POD = 4,		/* in-pod: a workload's interface in its netns */
};

enum ztr_attach_mode {
	ZTR_MODE_TCX = 1,
	ZTR_MODE_TC = 2,
};

/*
 * Why a program did what it did. Each packet path returns one of these; the
 * counters are indexed by it, and the CLI prints its name. Keep the order:
 * the CLI's name table follows it.
 */
enum ztr_reason {
	ZTR_R_NOT_IP = 0,		/* ARP, ND-less L2, anything not IPv4/IPv6 */
	ZTR_R_MALFORMED,		/* an IP packet that cannot be classified: dropped */
	ZTR_R_PASS_PROTO,		/* not TCP (nor captured DNS): untouched */
	ZTR_R_CAPTURE_OUTBOUND,		/* workload -> ztunnel */
	ZTR_R_CAPTURE_INBOUND,		/* -> workload, handed to ztunnel */
	ZTR_R_CAPTURE_DNS,		/* workload DNS -> ztunnel's DNS port */
	ZTR_R_BYPASS_HOST,		/* to or from a node host IP */
	ZTR_R_BYPASS_DNS,		/* UDP/53 while DNS capture is off */
	ZTR_R_BYPASS_ZTUNNEL,		/* inbound packet that ztunnel sent */
	ZTR_R_ZTUNNEL_TO_WORKLOAD,	/* ztunnel -> workload, delivered directly */
	ZTR_R_ZTUNNEL_TO_OTHER,		/* ztunnel -> elsewhere, routed normally */
	ZTR_R_STEER_LOCAL,		/* ztunnel netns: captured, delivered locally */
	ZTR_R_ZTUNNEL_LOCAL,		/* ztunnel netns: addressed to ztunnel itself */
	ZTR_R_ASSIGN_LISTENER,		/* sk_lookup picked a ztunnel listener */
	ZTR_R_DROP_NO_ZTUNNEL,		/* captured, but no ztunnel is configured */
	ZTR_R_DROP_NO_LISTENER,		/* captured, but ztunnel does not listen */
	ZTR_R_BYPASS_EXCLUDED,		/* the workload excludes this port or peer */
	ZTR_R_TIME_WAIT_REUSE,		/* captured SYN that recycles a ztunnel TIME_WAIT socket */
	ZTR_R_DROP_FRAGMENT,		/* later fragment of a datagram whose first was not seen */
	ZTR_R_DROP_SPOOFED,		/* left a workload with an address that is not its own */
	ZTR_R_ZTUNNEL_HAIRPIN,		/* ztunnel's connection through the node's NAT: routed */
	ZTR_R_PROXY_OWN,		/* in-pod: the proxy's own packet (its mark): untouched */
	ZTR_R_LOCAL_LEG,		/* in-pod: opened to the workload from its own netns: not steered */
	ZTR_R_DNS_REPLY,		/* in-pod: the proxy's DNS answer, given the resolver's address */
	ZTR_R_MAX,
};

/* An IP address; IPv4 is stored IPv4-mapped (::ffff:a.b.c.d). */
struct ztr_addr {
	__u32 a[4];
};

struct ztr_endpoint {
	__u32 kind;		/* enum ztr_endpoint_kind */
	__u32 ifindex;		/* workload: its host-side veth (node netns) */
};

struct ztr_config {
	__u32 flags;		/* enum ztr_config_flags */
	__u32 host_ifindex;	/* ztunnel's host-side veth, node netns */
	__u8 pod_mac[6];	/* ztunnel's eth0 */
	__u8 host_mac[6];	/* ztunnel's host-side veth */
	__u16 port_outbound;
	__u16 port_inbound;
	__u16 port_hbone;
	__u16 port_dns;
	/* Destination used to find ztunnel's wildcard listeners: one of its
	 * own addresses, or loopback when it has none of that family. */
	struct ztr_addr lookup4;
	struct ztr_addr lookup6;
	/* Bookkeeping for the CLI; the programs do not read these. */
	__u32 pod_ifindex;	/* ztunnel's eth0, in its netns */
	/* Sysctl values found before ztredir changed them, restored by
	 * "ztunnel clear"; -1 when not saved. */
	__s8 saved_forwarding4;
	__s8 saved_forwarding6;
	__s8 saved_rp_filter;
	__u8 had_policy_routing;	/* the rules were there before: clear keeps them */
	__u64 netns_inode;
	__u32 conns_size;	/* connection table entries asked for */
	/* Bumped by the CLI whenever an address stops being a workload's or
	 * moves to another: the programs' caches of checked sources go stale. */
	__u32 ep_gen;
	char host_iface[ZTR_IFNAMSIZ];
	char pod_iface[ZTR_IFNAMSIZ];
	char netns[ZTR_PATH_MAX];
	/* The node's host IPs and ztunnel's addresses, also in the endpoints
	 * map: the per-packet bypass tests compare against these few instead
	 * of hashing. More than ZTR_INLINE_ADDRS sets ZTR_CFG_MORE_ADDRS. */
	__u32 n_host;
	__u32 n_ztunnel;
	struct ztr_addr host_ips[ZTR_INLINE_ADDRS];
	struct ztr_addr ztunnel_ips[ZTR_INLINE_ADDRS];
};

/* One attached interface. The programs do not read it yet: it is where the
 * CLI keeps what it attached, so every later invocation sees the same. */
struct ztr_iface {
	__u32 role;		/* enum ztr_role */
	__u32 mode;		/* enum ztr_attach_mode */
	__u32 peer_ifindex;
	__u32 tc_prio;		/* classic tc: our filter's priority and handle */
	__u32 tc_handle;
	__u8 mac[6];
	__u8 peer_mac[6];
	char name[ZTR_IFNAMSIZ];
};

/*
 * Exclusions, per workload interface. A connection is excluded, in both
 * directions, when the peer's port is an excluded outbound port, the
 * workload's port is an excluded inbound port, or the peer's address is in
 * an excluded CIDR; the test depends on the packet's tuple alone, so a
 * reply is always treated like the packet it answers.
 */
struct ztr_excl_port_key {
	__u32 ifindex;		/* the workload's host veth */
	__u16 port;		/* host byte order */
	__u16 _pad;
};

struct ztr_excl_cidr_key {
	__u32 prefixlen;	/* 64 (ifindex and family) + bits of addr */
	__u32 ifindex;
	__u32 family;		/* 4 or 6: an IPv6 prefix never covers IPv4 */
	struct ztr_addr addr;	/* IPv4: the 4 bytes first, then zeros */
};

/* A captured connection, workload side first, so that both directions of
 * the connection find the same entry. */
struct ztr_ct_key {
	struct ztr_addr workload;
	struct ztr_addr peer;
	__be16 workload_port;
	__be16 peer_port;
	__u8 proto;
	__u8 _pad[3];
};

struct ztr_ct_entry {
	__u64 first_ns;		/* CLOCK_MONOTONIC */
	__u64 last_ns;
	__u64 packets_from;	/* sent by the workload */
	__u64 bytes_from;
	__u64 packets_to;	/* sent to the workload */
	__u64 bytes_to;
	__u32 ifindex;		/* the workload's host veth */
	__u32 last_reason;	/* enum ztr_reason */
	__u16 proxy_port;	/* the ztunnel listener it was steered to */
	__u8 direction;		/* enum ztr_direction */
	__u8 tcp_flags;		/* FIN, SYN, RST seen, either way */
	__u32 _pad;
};

/* Per-CPU packet and byte counts by interface, program and reason. The
 * ifindex is in the netns of the program (ztunnel's for ZTUNNEL_POD and
 * SK_LOOKUP). */
struct ztr_stat_key {
	__u32 ifindex;
	__u16 hook;		/* enum ztr_hook_id */
	__u16 reason;		/* enum ztr_reason */
};

struct ztr_stat {
	__u64 packets;
	__u64 bytes;
};

/*
 * The counters' fast path: a per-CPU array of ZTR_STAT_SLOTS * 2 slots,
 * slot (ifindex % ZTR_STAT_SLOTS) * 2 + (1 for the hooks that share an
 * interface with a per-packet hook of the other half, 0 for the others):
 * 1 for WORKLOAD_IN (the workload's veth, with WORKLOAD_OUT), SK_LOOKUP
 * (ztunnel's eth0, with ZTUNNEL_POD), POD_IN and POD_LOOKUP (an in-pod
 * workload's interface, with POD_OUT). The first (ifindex, hook) to use a
 * slot on a CPU owns it there; another that maps to the same slot counts
 * in the ztr_stats hash instead. The CLI adds both up.
 */
struct ztr_stat_slot {
	__u32 ifindex;
	__u16 hook;		/* 0: the slot is free */
	__u16 _pad;
	struct ztr_stat r[ZTR_R_MAX];
};

/* One decision, sent to "ztredir trace" through the ring buffer. */
struct ztr_event {
	__u64 ts_ns;		/* CLOCK_MONOTONIC */
	struct ztr_addr saddr;
	struct ztr_addr daddr;
	__be16 sport;
	__be16 dport;
	__u32 ifindex;
	__u32 len;
	__s32 verdict;		/* TC_ACT_* or SK_PASS/SK_DROP */
	__u16 reason;
	__u8 hook;
	__u8 proto;
	__u8 tcp_flags;
	__u8 _pad[3];
	__u32 target;		/* redirect target's ifindex, 0 when none */
};

/* A fragmented datagram, so that its later fragments (which carry no ports)
 * take the same path as its first. Keyed by what every fragment carries. */
struct ztr_frag_key {
	struct ztr_addr saddr;
	struct ztr_addr daddr;
	__u32 id;		/* IPv4: 16 bits */
	__u8 nexthdr;		/* IPv4 protocol, or the IPv6 fragment header's */
	__u8 family;
	__u8 _pad[2];
};

struct ztr_frag {
	__be16 sport;
	__be16 dport;
	__u8 proto;		/* the transport protocol found in the first */
	__u8 _pad[3];
};

/* The last source address a workload's packet was found to own, per CPU:
 * the common case (one flow after another from the same workload) skips
 * the endpoints lookup. Valid while the config's ep_gen is unchanged. */
struct ztr_src_cache {
	__u32 ifindex;
	__u32 gen;
	struct ztr_addr addr;
};

/*
 * What a CPU has counted for one connection and not yet added to its
 * table entry: the connection table's fast path. The ordinary packets of a
 * connection whose entry exists add here, with plain adds on this CPU's
 * copy; every ZTR_CT_FLUSH_EVERY packets, on a packet with SYN, FIN or RST,
 * and when another connection takes the slot, the counts go to the entry.
 * `ztredir conns` adds what is pending to what it reads from the table.
 */
struct ztr_ct_pending {
	struct ztr_ct_key key;
	__u64 packets_from;
	__u64 bytes_from;
	__u64 packets_to;
	__u64 bytes_to;
	__u64 last_jiffies;	/* of the last packet counted here */
	__u64 last_ns;		/* coarse CLOCK_MONOTONIC of that tick */
	__u32 last_reason;	/* enum ztr_reason */
	__u16 count;		/* packets pending */
	__u8 valid;		/* key is a connection with an entry */
	__u8 _pad;
};

/* A connection decided by state; keyed like the connection table (struct
 * ztr_ct_key, workload side first). */
struct ztr_node_conn {
	__u32 kind;		/* enum ztr_node_conn_kind */
	__u32 ifindex;		/* the workload's host veth */
};

/*
 * An in-pod workload: its netns, interface and identity. The programs read
 * the netns cookie (a packet's netns must be the one its address belongs
 * to) and the flags; the rest is the CLI's and the ZDS server's.
 */
struct ztr_pod {
	__u64 netns_cookie;
	__u64 netns_inode;
	__u32 ifindex;		/* the workload's interface, in its netns */
	__u32 mode;		/* enum ztr_attach_mode */
	__u32 flags;		/* enum ztr_iface_flag */
	/* Sysctl values found before ztredir changed them, restored by
	 * detach; -1 when not saved. */
	__s8 saved_accept_local;
	__s8 saved_route_localnet;
	__u8 had_policy_routing;
	__u8 _pad;
	char iface[ZTR_IFNAMSIZ];
	char netns[ZTR_PATH_MAX];
	char uid[ZTR_ID_SHORT];
	char k8s_namespace[ZTR_ID_SHORT];
	char name[ZTR_ID_LONG];
	char service_account[ZTR_ID_LONG];
};

/* An in-pod DNS query redirected to the proxy's DNS listener: the
 * workload's side, and the resolver it asked, for the reply's source. */
struct ztr_dns_key {
	struct ztr_addr pod;
	__be16 port;
	__u8 proto;
	__u8 _pad;
};

struct ztr_dns_orig {
	struct ztr_addr resolver;
	__be16 port;
	__u16 _pad;
};

/* The last address found to be the packet's netns' own workload's, per CPU. */
struct ztr_pod_cache {
	__u64 netns_cookie;
	__u32 gen;
	__u32 pod;
	struct ztr_addr addr;
};

#endif /* ZTREDIR_H */
