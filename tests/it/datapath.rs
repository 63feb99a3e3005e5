// SPDX-License-Identifier: Apache-2.0
//! Datapath verdict tests: each program runs on crafted frames with
//! BPF_PROG_TEST_RUN, and the verdict, the redirect target and the reason
//! (from the trace event the program emits) are checked. Every parser edge
//! a hostile workload or uplink host can produce is a case here: IPv4
//! options, IPv6 extension-header chains, each kind of fragment, truncated
//! headers, VLAN tags, spoofed sources, GSO-sized packets.
//!
//! The programs are loaded unpinned in a network namespace of the test
//! thread's own, with veths standing in for the node's devices. The in-pod
//! programs' cases (`datapath_inpod_*`) take that netns for the workload's
//! own, and also check the packet each program leaves (BPF_PROG_TEST_RUN's
//! data_out) and its mark (ctx_out).

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::rc::Rc;
use std::time::Duration;

use libbpf_rs::libbpf_sys as sys;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType, ProgramImpl, RingBufferBuilder};

use ztredir::dataplane::bpf::{bytes_of, from_bytes};
use ztredir::dataplane::skel::types::{
    __sk_buff, ztr_config, ztr_config_flags as F, ztr_ct_entry, ztr_ct_key, ztr_ct_pending,
    ztr_dns_key, ztr_dns_orig, ztr_endpoint, ztr_endpoint_kind as K, ztr_event, ztr_hook_id as H,
    ztr_iface_flag, ztr_node_conn, ztr_node_conn_kind as NC, ztr_pod, ztr_reason as R, ztr_slot,
    ztr_stat_key, ztr_stat_slot,
};
use ztredir::dataplane::skel::{ZtredirSkel, ZtredirSkelBuilder};
use ztredir::dataplane::state::{from_addr, to_addr};
use ztredir::report::observe::reason_name;

use crate::frame::{Frag, Frame, ACK, EXT_AH, EXT_DSTOPTS, EXT_HOPOPTS, EXT_ROUTING, FIN, SYN};
use crate::frame::{PROTO_ICMP, PROTO_ICMPV6, PROTO_UDP};
use crate::testbed::ifindex;

const UNSPEC: i32 = -1;
const OK: i32 = 0;
const SHOT: i32 = 2;
const REDIRECT: i32 = 7;

const WL: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);
const WL6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 0x10);
const WL2: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 11);
const WL2_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 0x11);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const REMOTE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 2);
const HOST: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const HOST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 1);
const ZT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
const ZT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 2);

fn v4(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}
fn v6(a: Ipv6Addr) -> IpAddr {
    IpAddr::V6(a)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hook {
    WorkloadOut,
    WorkloadIn,
    ZtunnelHost,
    ZtunnelPod,
    PodOut,
    PodIn,
    PodLo,
}

impl Hook {
    /// The hook id the program writes into its trace events.
    fn id(self) -> u32 {
        match self {
            Hook::WorkloadOut => H::ZTR_HOOK_WORKLOAD_OUT.0,
            Hook::WorkloadIn => H::ZTR_HOOK_WORKLOAD_IN.0,
            Hook::ZtunnelHost => H::ZTR_HOOK_ZTUNNEL_HOST.0,
            Hook::ZtunnelPod => H::ZTR_HOOK_ZTUNNEL_POD.0,
            Hook::PodOut => H::ZTR_HOOK_POD_OUT.0,
            Hook::PodIn => H::ZTR_HOOK_POD_IN.0,
            Hook::PodLo => H::ZTR_HOOK_POD_LO.0,
        }
    }
}

/// The skb context of a run besides the packet.
#[derive(Debug, Clone, Copy, Default)]
struct SkbIn {
    /// The device the packet is on.
    dev: u32,
    /// The device it arrived by (0: sent by the node itself).
    ingress: u32,
    gso: u32,
    mark: u32,
}

/// Everything one run left: return code, trace events, the packet as the
/// program left it (data_out) and the mark (ctx_out).
#[derive(Debug)]
struct Run {
    hook: Hook,
    ret: i32,
    events: Vec<ztr_event>,
    data: Vec<u8>,
    mark: u32,
}

impl Run {
    /// The run's one decision, from its trace event.
    #[track_caller]
    fn verdict(&self) -> Verdict {
        let hook = self.hook;
        assert_eq!(self.events.len(), 1, "{hook:?}: one trace event per run");
        let e = self.events[0];
        assert_eq!(e.verdict, self.ret, "{hook:?}: event verdict");
        assert_eq!(e.hook as u32, hook.id(), "{hook:?}: event's hook");
        Verdict {
            ret: self.ret,
            reason: reason_name(e.reason as u32),
            target: e.target,
            mark: self.mark,
        }
    }
}

/// What one run produced.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Verdict {
    ret: i32,
    reason: String,
    /// Redirect target's ifindex, 0 for none.
    target: u32,
    mark: u32,
}

/// The programs, loaded with a config that knows a workload (on `wl`), a
/// second workload (on `wl2`), ztunnel (host veth `zth`, eth0 `ztp`) and
/// the node's host IPs; tracing on, so every run leaves one event.
struct Dp {
    skel: ZtredirSkel<'static>,
    events: Rc<RefCell<Vec<ztr_event>>>,
    ring: libbpf_rs::RingBuffer<'static>,
    wl: u32,
    wl2: u32,
    zth: u32,
    ztp: u32,
    uplink: u32,
    _listeners: Vec<TcpListener>,
    _dns: Option<UdpSocket>,
}

impl Dp {
    /// Must run on a thread of its own: it moves that thread to a new
    /// network namespace, which goes away with the thread.
    fn new(conntrack: bool, capture_dns: bool) -> Dp {
        let mut dp = Dp::load(conntrack);
        let mut flags = F::ZTR_CFG_ENABLED.0 | F::ZTR_CFG_TRACE.0;
        if capture_dns {
            flags |= F::ZTR_CFG_CAPTURE_DNS.0;
        }
        let mut cfg = ztr_config {
            flags,
            host_ifindex: dp.zth,
            pod_ifindex: dp.ztp,
            port_outbound: 15001,
            port_inbound: 15006,
            port_hbone: 15008,
            port_dns: 15053,
            lookup4: to_addr(&v4(Ipv4Addr::LOCALHOST)),
            lookup6: to_addr(&v6(Ipv6Addr::LOCALHOST)),
            n_host: 2,
            n_ztunnel: 2,
            ..Default::default()
        };
        cfg.host_ips[0] = to_addr(&v4(HOST));
        cfg.host_ips[1] = to_addr(&v6(HOST6));
        cfg.ztunnel_ips[0] = to_addr(&v4(ZT));
        cfg.ztunnel_ips[1] = to_addr(&v6(ZT6));
        cfg.pod_mac = [0x02, 0, 0, 0, 0, 0x0a];
        cfg.host_mac = [0x02, 0, 0, 0, 0, 0x0b];
        dp.edit_config(|c| *c = cfg);
        let (wl, wl2) = (dp.wl, dp.wl2);
        dp.put_endpoint(v4(WL), K::ZTR_EP_WORKLOAD.0, wl);
        dp.put_endpoint(v6(WL6), K::ZTR_EP_WORKLOAD.0, wl);
        dp.put_endpoint(v4(WL2), K::ZTR_EP_WORKLOAD.0, wl2);
        dp.put_endpoint(v6(WL2_6), K::ZTR_EP_WORKLOAD.0, wl2);
        dp.put_endpoint(v4(ZT), K::ZTR_EP_ZTUNNEL.0, 0);
        dp.put_endpoint(v6(ZT6), K::ZTR_EP_ZTUNNEL.0, 0);
        dp.put_endpoint(v4(HOST), K::ZTR_EP_HOST.0, 0);
        dp.put_endpoint(v6(HOST6), K::ZTR_EP_HOST.0, 0);
        // ztunnel's listeners, for the SYNs steered in its netns.
        for port in [15001, 15006, 15008, 15053] {
            dp._listeners
                .push(TcpListener::bind(("0.0.0.0", port)).expect("listen v4"));
            dp._listeners
                .push(TcpListener::bind(("::1", port)).expect("listen v6"));
        }
        dp._dns = Some(UdpSocket::bind(("0.0.0.0", 15053)).expect("DNS socket"));
        dp
    }

    /// The programs in a network namespace of the calling thread's own, with
    /// an all-zero config, no endpoints and no listeners; the connection
    /// table installed when asked for.
    fn load(conntrack: bool) -> Dp {
        crate::testbed::private_netns_with_veths(&[
            ("wl0", "wl1"),
            ("wl2", "wl3"),
            ("zth0", "ztp0"),
            ("up0", "up1"),
        ]);
        libbpf_rs::set_print(None);
        let storage = Box::leak(Box::new(MaybeUninit::uninit()));
        let skel = ZtredirSkelBuilder::default()
            .open(storage)
            .expect("open BPF object")
            .load()
            .expect("load BPF programs");
        let (wl, wl2, zth, ztp, uplink) = (
            ifindex("wl0"),
            ifindex("wl2"),
            ifindex("zth0"),
            ifindex("ztp0"),
            ifindex("up0"),
        );
        if conntrack {
            let opts = sys::bpf_map_create_opts {
                sz: std::mem::size_of::<sys::bpf_map_create_opts>() as _,
                ..Default::default()
            };
            let table = MapHandle::create(
                MapType::LruHash,
                Some("ztr_dp_ct"),
                std::mem::size_of::<ztr_ct_key>() as u32,
                std::mem::size_of::<ztr_ct_entry>() as u32,
                4096,
                &opts,
            )
            .expect("connection table");
            skel.maps
                .ztr_conns
                .update(
                    &0u32.to_ne_bytes(),
                    &(table.as_fd().as_raw_fd() as u32).to_ne_bytes(),
                    MapFlags::ANY,
                )
                .expect("install connection table");
        }
        let events = Rc::new(RefCell::new(Vec::new()));
        let sink = events.clone();
        let mut rb = RingBufferBuilder::new();
        rb.add(&skel.maps.ztr_events, move |data: &[u8]| {
            sink.borrow_mut().push(from_bytes::<ztr_event>(data));
            0
        })
        .expect("ring buffer");
        let ring = rb.build().expect("ring buffer");
        Dp {
            skel,
            events,
            ring,
            wl,
            wl2,
            zth,
            ztp,
            uplink,
            _listeners: Vec::new(),
            _dns: None,
        }
    }

    fn put_endpoint(&self, ip: IpAddr, kind: u32, ifindex: u32) {
        let ep = ztr_endpoint { kind, ifindex };
        self.skel
            .maps
            .ztr_endpoints
            .update(bytes_of(&to_addr(&ip)), bytes_of(&ep), MapFlags::ANY)
            .expect("endpoint");
    }

    /// Changes the config the programs read.
    fn edit_config(&self, f: impl FnOnce(&mut ztr_config)) {
        let key = 0u32.to_ne_bytes();
        let mut cfg: ztr_config = from_bytes(
            &self
                .skel
                .maps
                .ztr_config
                .lookup(&key, MapFlags::ANY)
                .expect("config")
                .expect("config entry"),
        );
        f(&mut cfg);
        self.skel
            .maps
            .ztr_config
            .update(&key, bytes_of(&cfg), MapFlags::ANY)
            .expect("config");
    }

    fn no_source_check(&self, ifindex: u32) {
        self.skel
            .maps
            .ztr_iface_flags
            .update(
                &ifindex.to_ne_bytes(),
                &ztr_iface_flag::ZTR_IF_NO_SOURCE_CHECK.0.to_ne_bytes(),
                MapFlags::ANY,
            )
            .expect("iface flags");
    }

    /// Runs `hook` once on `frame` as seen on device `dev`, arrived by
    /// device `ingress` (0: sent by the node itself).
    fn run_on(&self, hook: Hook, frame: &Frame, dev: u32, ingress: u32) -> Verdict {
        self.run_raw(hook, &frame.build(), dev, ingress, 0)
    }

    fn run_raw(&self, hook: Hook, data: &[u8], dev: u32, ingress: u32, gso: u32) -> Verdict {
        let skb = SkbIn {
            dev,
            ingress,
            gso,
            ..Default::default()
        };
        self.test_run(hook, data, skb).verdict()
    }

    /// Runs `hook` once on `data` with the context `skb`.
    fn test_run(&self, hook: Hook, data: &[u8], skb: SkbIn) -> Run {
        let progs = &self.skel.progs;
        let prog: &ProgramImpl<'_> = match hook {
            Hook::WorkloadOut => &progs.ztr_workload_out,
            Hook::WorkloadIn => &progs.ztr_workload_in,
            Hook::ZtunnelHost => &progs.ztr_ztunnel_host,
            Hook::ZtunnelPod => &progs.ztr_ztunnel_pod,
            Hook::PodOut => &progs.ztr_pod_out,
            Hook::PodIn => &progs.ztr_pod_in,
            Hook::PodLo => &progs.ztr_pod_lo,
        };
        // Bytes, not a struct: padding must be zero too, or the kernel
        // refuses the context.
        let mut ctx = vec![0u8; std::mem::size_of::<__sk_buff>()];
        let mut set = |at: usize, v: u32| ctx[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        set(std::mem::offset_of!(__sk_buff, ifindex), skb.dev);
        set(
            std::mem::offset_of!(__sk_buff, ingress_ifindex),
            skb.ingress,
        );
        set(std::mem::offset_of!(__sk_buff, mark), skb.mark);
        if skb.gso > 0 {
            set(std::mem::offset_of!(__sk_buff, gso_size), skb.gso);
            set(std::mem::offset_of!(__sk_buff, gso_segs), 2);
        }
        let mut out = vec![0u8; data.len() + 256];
        let mut opts = sys::bpf_test_run_opts {
            sz: std::mem::size_of::<sys::bpf_test_run_opts>() as _,
            repeat: 1,
            data_in: data.as_ptr().cast(),
            data_size_in: data.len() as _,
            data_out: out.as_mut_ptr().cast(),
            data_size_out: out.len() as _,
            ctx_in: ctx.as_ptr().cast(),
            ctx_size_in: ctx.len() as _,
            ctx_out: ctx.as_mut_ptr().cast(),
            ctx_size_out: ctx.len() as _,
            ..Default::default()
        };
        self.events.borrow_mut().clear();
        let rc = unsafe { sys::bpf_prog_test_run_opts(prog.as_fd().as_raw_fd(), &mut opts) };
        assert_eq!(
            rc,
            0,
            "test run of {hook:?} on {} bytes ({skb:?}): {}",
            data.len(),
            std::io::Error::last_os_error()
        );
        self.ring
            .poll(Duration::from_millis(0))
            .expect("poll ring buffer");
        out.truncate(opts.data_size_out as usize);
        let at = std::mem::offset_of!(__sk_buff, mark);
        Run {
            hook,
            ret: opts.retval as i32,
            events: self.events.borrow().clone(),
            data: out,
            mark: u32::from_ne_bytes(ctx[at..at + 4].try_into().unwrap()),
        }
    }

    /// A workload's packet on its own veth's ingress.
    fn out(&self, frame: &Frame) -> Verdict {
        self.run_on(Hook::WorkloadOut, frame, self.wl, self.wl)
    }
    /// A packet for the workload, forwarded from the uplink.
    fn uplink_in(&self, frame: &Frame) -> Verdict {
        self.run_on(Hook::WorkloadIn, frame, self.wl, self.uplink)
    }
}

/// Runs `f` on a thread of its own (the harness moves it to a new netns).
fn with_dp(conntrack: bool, capture_dns: bool, f: impl FnOnce(&Dp) + Send + 'static) {
    std::thread::spawn(move || {
        let dp = Dp::new(conntrack, capture_dns);
        f(&dp);
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

#[track_caller]
fn expect(v: Verdict, ret: i32, reason: &str, target: u32, what: &str) {
    assert_eq!(
        (v.ret, v.reason.as_str(), v.target),
        (ret, reason, target),
        "{what}: got {v:?}"
    );
}

/// Outbound TCP from the workload, IPv4 and IPv6.
fn out_syn(family: u8, dport: u16) -> Frame {
    match family {
        4 => Frame::tcp(v4(WL), v4(REMOTE), 40000, dport, SYN),
        _ => Frame::tcp(v6(WL6), v6(REMOTE6), 40000, dport, SYN),
    }
}

#[test]
fn datapath_plain_paths_each_hook() {
    with_dp(true, false, |dp| {
        for fam in [4, 6] {
            let f = out_syn(fam, 8080);
            expect(
                dp.out(&f),
                REDIRECT,
                "capture-outbound",
                dp.zth,
                "outbound SYN",
            );
            let ack = Frame {
                tcp_flags: ACK,
                ..f.clone()
            }
            .payload(1400);
            expect(
                dp.out(&ack),
                REDIRECT,
                "capture-outbound",
                dp.zth,
                "outbound data",
            );
        }
        let inb = Frame::tcp(v4(REMOTE), v4(WL), 40001, 8080, SYN);
        expect(
            dp.uplink_in(&inb),
            REDIRECT,
            "capture-inbound",
            dp.zth,
            "inbound SYN",
        );
        let inb6 = Frame::tcp(v6(REMOTE6), v6(WL6), 40001, 15008, SYN);
        expect(
            dp.uplink_in(&inb6),
            REDIRECT,
            "capture-inbound",
            dp.zth,
            "inbound HBONE",
        );
        // ztunnel -> workload goes straight into the workload's veth.
        let zt = Frame::tcp(v4(REMOTE), v4(WL), 8080, 40000, SYN | ACK);
        let v = dp.run_on(Hook::ZtunnelHost, &zt, dp.zth, dp.zth);
        expect(v, REDIRECT, "ztunnel-to-workload", dp.wl, "ztunnel reply");
        let zt_other = Frame::tcp(v4(WL), v4(REMOTE), 40000, 8080, SYN);
        let v = dp.run_on(Hook::ZtunnelHost, &zt_other, dp.zth, dp.zth);
        expect(v, UNSPEC, "ztunnel-to-other", 0, "ztunnel upstream");
        // In ztunnel's netns: captured packets get the local-delivery mark.
        let v = dp.run_on(Hook::ZtunnelPod, &out_syn(4, 8080), dp.ztp, dp.ztp);
        expect(v.clone(), OK, "steer-local", 0, "steer SYN");
        assert_eq!(v.mark & 0xfff, 0x400, "local-delivery mark");
        let to_zt = Frame::tcp(v4(REMOTE), v4(ZT), 40000, 15008, SYN);
        let v = dp.run_on(Hook::ZtunnelPod, &to_zt, dp.ztp, dp.ztp);
        expect(v, UNSPEC, "to-ztunnel", 0, "ztunnel's own traffic");
        // Untouched: UDP that is not DNS, ICMP, ARP.
        let udp = Frame::udp(v4(WL), v4(REMOTE), 40000, 5353);
        expect(dp.out(&udp), UNSPEC, "pass-protocol", 0, "UDP");
        let icmp = Frame::tcp(v4(WL), v4(REMOTE), 0, 0, 0).proto(PROTO_ICMP);
        expect(dp.out(&icmp), UNSPEC, "pass-protocol", 0, "ICMP");
        let arp = crate::frame::arp_frame();
        let v = dp.run_raw(Hook::WorkloadOut, &arp, dp.wl, dp.wl, 0);
        expect(v, UNSPEC, "not-ip", 0, "ARP");
        // DNS capture is off: UDP/53 goes direct.
        let dns = Frame::udp(v4(WL), v4(REMOTE), 40000, 53);
        expect(dp.out(&dns), UNSPEC, "bypass-dns", 0, "DNS, capture off");
    });
}

#[test]
fn datapath_malformed_is_dropped_on_every_hook() {
    with_dp(false, false, |dp| {
        let syn = out_syn(4, 8080).build();
        let syn6 = out_syn(6, 8080).build();
        let hooks = [
            (Hook::WorkloadOut, dp.wl, dp.wl),
            (Hook::WorkloadIn, dp.wl, dp.uplink),
            (Hook::ZtunnelHost, dp.zth, dp.zth),
            (Hook::ZtunnelPod, dp.ztp, dp.ztp),
        ];
        // Truncated inside the TCP header (the kernel's test run itself
        // refuses frames cut inside the IP header).
        for (hook, dev, ingress) in hooks {
            for (what, data) in [
                ("TCP header cut", &syn[..14 + 20 + 10]),
                ("IPv6 TCP header cut", &syn6[..14 + 40 + 12]),
            ] {
                let v = dp.run_raw(hook, data, dev, ingress, 0);
                expect(v, SHOT, "drop-malformed", 0, &format!("{hook:?}: {what}"));
            }
        }
        // IPv4: a header length below 5 words, a total length below it.
        let mut bad_ihl = syn.clone();
        bad_ihl[14] = 0x44;
        let v = dp.run_raw(Hook::WorkloadOut, &bad_ihl, dp.wl, dp.wl, 0);
        expect(v, SHOT, "drop-malformed", 0, "IHL 4");
        let mut bad_len = syn.clone();
        bad_len[16..18].copy_from_slice(&30u16.to_be_bytes());
        let v = dp.run_raw(Hook::WorkloadOut, &bad_len, dp.wl, dp.wl, 0);
        expect(
            v,
            SHOT,
            "drop-malformed",
            0,
            "total length inside the TCP header",
        );
        // A TCP data offset below 5 words.
        let doff = out_syn(4, 8080).tcp_doff(4);
        expect(
            dp.out(&doff),
            SHOT,
            "drop-malformed",
            0,
            "TCP data offset 4",
        );
        // IP inside VLAN tags, one or two.
        for tags in [1, 2] {
            let f = out_syn(4, 8080).vlan(tags);
            expect(
                dp.out(&f),
                SHOT,
                "drop-malformed",
                0,
                &format!("{tags} VLAN tags"),
            );
            let f = Frame::tcp(v4(REMOTE), v4(WL), 1, 8080, SYN).vlan(tags);
            let v = dp.uplink_in(&f);
            expect(
                v,
                SHOT,
                "drop-malformed",
                0,
                &format!("inbound, {tags} VLAN tags"),
            );
        }
        // Malformed packets drop even with no ztunnel configured.
        dp.edit_config(|cfg| cfg.flags &= !F::ZTR_CFG_ENABLED.0);
        let chain = out_syn(6, 8080).ext(&[EXT_DSTOPTS; 40]);
        expect(
            dp.out(&chain),
            SHOT,
            "drop-malformed",
            0,
            "no ztunnel: long chain",
        );
        expect(
            dp.out(&out_syn(4, 8080)),
            SHOT,
            "drop-no-ztunnel",
            0,
            "no ztunnel: SYN",
        );
    });
}

#[test]
fn datapath_ipv4_options_and_ipv6_extension_chains() {
    with_dp(false, false, |dp| {
        for words in [1, 5, 10] {
            let f = out_syn(4, 8080).ip_options(words);
            let what = format!("IPv4 with {words} option words");
            expect(dp.out(&f), REDIRECT, "capture-outbound", dp.zth, &what);
            let f = Frame::tcp(v4(REMOTE), v4(WL), 1, 8080, SYN).ip_options(words);
            expect(dp.uplink_in(&f), REDIRECT, "capture-inbound", dp.zth, &what);
        }
        // Chains of 1..=32 headers of every kind are walked to the TCP header.
        let kinds = [EXT_HOPOPTS, EXT_DSTOPTS, EXT_ROUTING, EXT_AH];
        for n in 1..=32usize {
            let chain: Vec<u8> = (0..n).map(|i| kinds[i % kinds.len()]).collect();
            let f = out_syn(6, 8080).ext(&chain);
            let what = format!("{n} extension headers");
            expect(dp.out(&f), REDIRECT, "capture-outbound", dp.zth, &what);
            let f = Frame::tcp(v6(REMOTE6), v6(WL6), 1, 8080, SYN).ext(&chain);
            expect(dp.uplink_in(&f), REDIRECT, "capture-inbound", dp.zth, &what);
            let v = dp.run_on(
                Hook::ZtunnelPod,
                &out_syn(6, 8080).ext(&chain),
                dp.ztp,
                dp.ztp,
            );
            expect(v, OK, "steer-local", 0, &format!("ztunnel netns, {what}"));
        }
        // Past the limit: dropped on every capture hook, never passed.
        for n in [33usize, 40] {
            let chain = vec![EXT_DSTOPTS; n];
            let what = format!("{n} extension headers");
            expect(
                dp.out(&out_syn(6, 8080).ext(&chain)),
                SHOT,
                "drop-malformed",
                0,
                &what,
            );
            let f = Frame::tcp(v6(REMOTE6), v6(WL6), 1, 8080, SYN).ext(&chain);
            expect(dp.uplink_in(&f), SHOT, "drop-malformed", 0, &what);
        }
        // An extension header running past the packet's end.
        let cut = out_syn(6, 8080)
            .ext(&[EXT_DSTOPTS; 5])
            .truncate(14 + 40 + 36);
        expect(dp.out(&cut), SHOT, "drop-malformed", 0, "chain cut short");
        // A UDP datagram behind a chain is still just UDP.
        let udp = Frame::udp(v6(WL6), v6(REMOTE6), 1, 5353).ext(&[EXT_HOPOPTS; 5]);
        expect(
            dp.out(&udp),
            UNSPEC,
            "pass-protocol",
            0,
            "UDP behind 5 headers",
        );
    });
}

#[test]
fn datapath_fragments_follow_their_first() {
    with_dp(true, false, |dp| {
        // An exclusion: outbound port 5432 goes direct. Its fragments too.
        let key = ztredir::dataplane::skel::types::ztr_excl_port_key {
            ifindex: dp.wl,
            port: 5432,
            ..Default::default()
        };
        dp.skel
            .maps
            .ztr_excl_ports
            .update(bytes_of(&key), &1u32.to_ne_bytes(), MapFlags::ANY)
            .expect("exclusion");
        dp.edit_config(|cfg| cfg.flags |= F::ZTR_CFG_EXCLUSIONS.0);

        for fam in [4u8, 6] {
            for (id, port, reason, ret, target) in [
                (7u32, 8080u16, "capture-outbound", REDIRECT, dp.zth),
                (8, 5432, "bypass-excluded", UNSPEC, 0),
            ] {
                let what = format!("IPv{fam} to port {port}");
                let first = out_syn(fam, port).payload(64).frag(Frag::First { id });
                expect(
                    dp.out(&first),
                    ret,
                    reason,
                    target,
                    &format!("{what}: first"),
                );
                for (offset, more) in [(9u16, true), (18, false)] {
                    let later =
                        out_syn(fam, port)
                            .payload(64)
                            .frag(Frag::Later { id, offset, more });
                    let w = format!("{what}: fragment at {offset}");
                    expect(dp.out(&later), ret, reason, target, &w);
                }
            }
            // Without its first: dropped, whatever it claims.
            let orphan = out_syn(fam, 5432).frag(Frag::Later {
                id: 99,
                offset: 9,
                more: false,
            });
            let what = format!("IPv{fam} orphan fragment");
            expect(dp.out(&orphan), SHOT, "drop-fragment", 0, &what);
            let orphan_in = Frame::tcp(v4(REMOTE), v4(WL), 1, 8080, 0).frag(Frag::Later {
                id: 98,
                offset: 9,
                more: false,
            });
            if fam == 4 {
                expect(
                    dp.uplink_in(&orphan_in),
                    SHOT,
                    "drop-fragment",
                    0,
                    "inbound orphan",
                );
            }
            let v = dp.run_on(Hook::ZtunnelPod, &orphan, dp.ztp, dp.ztp);
            expect(
                v,
                SHOT,
                "drop-fragment",
                0,
                &format!("ztunnel netns: {what}"),
            );
            // A tiny first fragment: the TCP header does not fit in it.
            let tiny = out_syn(fam, 8080).frag(Frag::First { id: 100 });
            let data = tiny.build();
            let ip_hdr = if fam == 4 { 20 } else { 48 };
            let mut cut = data[..14 + ip_hdr + 8].to_vec();
            if fam == 4 {
                cut[16..18].copy_from_slice(&28u16.to_be_bytes());
                cut[24..26].copy_from_slice(&[0, 0]);
                let sum = ip_checksum(&cut[14..34]);
                cut[24..26].copy_from_slice(&sum.to_be_bytes());
            } else {
                cut[18..20].copy_from_slice(&16u16.to_be_bytes());
            }
            let v = dp.run_raw(Hook::WorkloadOut, &cut, dp.wl, dp.wl, 0);
            expect(
                v,
                SHOT,
                "drop-malformed",
                0,
                &format!("IPv{fam} tiny first fragment"),
            );
            // UDP fragments: not captured, and their orphans pass too.
            let udp_first = Frame::udp(v4(WL), v4(REMOTE), 1, 5353)
                .payload(64)
                .frag(Frag::First { id: 200 });
            expect(
                dp.out(&udp_first),
                UNSPEC,
                "pass-protocol",
                0,
                "UDP first fragment",
            );
            let udp_orphan = Frame::udp(v4(WL), v4(REMOTE), 1, 5353).frag(Frag::Later {
                id: 201,
                offset: 9,
                more: false,
            });
            expect(
                dp.out(&udp_orphan),
                UNSPEC,
                "pass-protocol",
                0,
                "UDP orphan fragment",
            );
        }
        // RFC 1858: a TCP fragment at offset 8 bytes overlaps the header.
        let overlap = out_syn(4, 8080).frag(Frag::Later {
            id: 7,
            offset: 1,
            more: false,
        });
        expect(
            dp.out(&overlap),
            SHOT,
            "drop-malformed",
            0,
            "overlapping TCP fragment",
        );
        // An IPv6 atomic fragment (offset 0, no more) is a whole packet.
        let atomic = out_syn(6, 8080).ext(&[crate::frame::EXT_FRAGMENT]);
        expect(
            dp.out(&atomic),
            REDIRECT,
            "capture-outbound",
            dp.zth,
            "atomic fragment",
        );
    });
}

fn ip_checksum(h: &[u8]) -> u16 {
    let sum = h
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    !(((sum & 0xffff) + (sum >> 16)) as u16)
}

#[test]
fn datapath_dns_fragments_and_udp() {
    with_dp(false, true, |dp| {
        let q = Frame::udp(v4(WL), v4(REMOTE), 40000, 53);
        expect(dp.out(&q), REDIRECT, "capture-dns", dp.zth, "DNS query");
        let first = q.clone().payload(64).frag(Frag::First { id: 5 });
        expect(
            dp.out(&first),
            REDIRECT,
            "capture-dns",
            dp.zth,
            "DNS first fragment",
        );
        let later = q.clone().frag(Frag::Later {
            id: 5,
            offset: 9,
            more: false,
        });
        expect(
            dp.out(&later),
            REDIRECT,
            "capture-dns",
            dp.zth,
            "DNS later fragment",
        );
        // With DNS captured, a UDP orphan may belong to a query: dropped.
        let orphan = q.frag(Frag::Later {
            id: 6,
            offset: 9,
            more: false,
        });
        expect(
            dp.out(&orphan),
            SHOT,
            "drop-fragment",
            0,
            "UDP orphan, DNS captured",
        );
        let v = dp.run_on(
            Hook::ZtunnelPod,
            &Frame::udp(v4(WL), v4(REMOTE), 40000, 53),
            dp.ztp,
            dp.ztp,
        );
        expect(v, OK, "steer-local", 0, "DNS in ztunnel's netns");
    });
}

#[test]
fn datapath_source_validation() {
    with_dp(false, false, |dp| {
        // Another workload's address, a host IP, a made-up one: dropped.
        for src in [
            v4(WL2),
            v6(WL2_6),
            v4(HOST),
            v4(Ipv4Addr::new(10, 1, 2, 3)),
            v6(ZT6),
        ] {
            let dst = if src.is_ipv4() {
                v4(REMOTE)
            } else {
                v6(REMOTE6)
            };
            for f in [
                Frame::tcp(src, dst, 1, 80, SYN),
                Frame::udp(src, dst, 1, 5353),
            ] {
                let v = dp.out(&f);
                expect(
                    v,
                    SHOT,
                    "drop-spoofed",
                    0,
                    &format!("from {src}, proto {}", f.proto),
                );
            }
        }
        // The workload's own addresses on the other workload's veth.
        let f = Frame::tcp(v4(WL), v4(REMOTE), 1, 80, SYN);
        let v = dp.run_on(Hook::WorkloadOut, &f, dp.wl2, dp.wl2);
        expect(v, SHOT, "drop-spoofed", 0, "WL's address on WL2's veth");
        // Neighbour discovery from link-local and unspecified sources.
        let ll = v6("fe80::1234".parse().unwrap());
        for src in [ll, v6(Ipv6Addr::UNSPECIFIED)] {
            let nd = Frame::tcp(src, v6("ff02::1".parse().unwrap()), 0, 0, 0).proto(PROTO_ICMPV6);
            expect(
                dp.out(&nd),
                UNSPEC,
                "pass-protocol",
                0,
                &format!("ICMPv6 from {src}"),
            );
        }
        // But not TCP from link-local.
        let f = Frame::tcp(ll, v6(REMOTE6), 1, 80, SYN);
        expect(dp.out(&f), SHOT, "drop-spoofed", 0, "TCP from link-local");
        // A source found good is cached per CPU until the CLI says the
        // workload addresses changed (ep_gen): then the removed one drops.
        let own = Frame::tcp(v4(WL), v4(REMOTE), 1, 80, SYN);
        expect(
            dp.out(&own),
            REDIRECT,
            "capture-outbound",
            dp.zth,
            "own address",
        );
        dp.skel
            .maps
            .ztr_endpoints
            .delete(bytes_of(&to_addr(&v4(WL))))
            .expect("remove endpoint");
        expect(
            dp.out(&own),
            REDIRECT,
            "capture-outbound",
            dp.zth,
            "cached, same generation",
        );
        dp.edit_config(|cfg| cfg.ep_gen += 1);
        expect(
            dp.out(&own),
            SHOT,
            "drop-spoofed",
            0,
            "removed address, new generation",
        );
        // A workload that opts out is captured under the address it used.
        dp.no_source_check(dp.wl);
        let f = Frame::tcp(v4(WL2), v4(REMOTE), 1, 80, SYN);
        expect(
            dp.out(&f),
            REDIRECT,
            "capture-outbound",
            dp.zth,
            "opted out",
        );
    });
}

#[test]
fn datapath_bypass_rests_on_where_packets_come_from() {
    for conntrack in [true, false] {
        with_dp(conntrack, false, move |dp| {
            let ct = if conntrack { "table on" } else { "table off" };
            let (wl_in, out) = (Hook::WorkloadIn, Hook::WorkloadOut);
            let (node, up, zth, wl) = (0, dp.uplink, dp.zth, dp.wl);
            let capture_in = (REDIRECT, "capture-inbound", dp.zth);
            let capture_out = (REDIRECT, "capture-outbound", dp.zth);
            let probe = (UNSPEC, "bypass-host-ip", 0);
            for (h, w, z) in [(v4(HOST), v4(WL), v4(ZT)), (v6(HOST6), v6(WL6), v6(ZT6))] {
                // (what, hook, frame, arrived by, expected); in order: the
                // probe's packets depend on its SYN having been seen.
                let cases = [
                    (
                        "host IP from the uplink",
                        wl_in,
                        Frame::tcp(h, w, 33000, 8080, SYN),
                        up,
                        capture_in,
                    ),
                    (
                        "ztunnel from the uplink",
                        wl_in,
                        Frame::tcp(z, w, 33001, 8080, SYN),
                        up,
                        capture_in,
                    ),
                    (
                        "ztunnel from its veth",
                        wl_in,
                        Frame::tcp(z, w, 33001, 8080, SYN),
                        zth,
                        (UNSPEC, "bypass-from-ztunnel", 0),
                    ),
                    (
                        "probe SYN",
                        wl_in,
                        Frame::tcp(h, w, 34000, 8080, SYN),
                        node,
                        probe,
                    ),
                    (
                        "probe SYN-ACK",
                        out,
                        Frame::tcp(w, h, 8080, 34000, SYN | ACK),
                        wl,
                        probe,
                    ),
                    (
                        "probe ACK",
                        wl_in,
                        Frame::tcp(h, w, 34000, 8080, ACK),
                        node,
                        probe,
                    ),
                    (
                        "probe FIN",
                        out,
                        Frame::tcp(w, h, 8080, 34000, FIN | ACK),
                        wl,
                        probe,
                    ),
                    // The node's stack answering a captured connection.
                    (
                        "node's reply",
                        wl_in,
                        Frame::tcp(h, w, 80, 35000, SYN | ACK),
                        node,
                        capture_in,
                    ),
                    // The workload opening a connection to a host IP (a
                    // NodePort), even on a tuple a probe used before.
                    (
                        "NodePort",
                        out,
                        Frame::tcp(w, h, 36000, 30080, SYN),
                        wl,
                        capture_out,
                    ),
                    (
                        "probe tuple",
                        out,
                        Frame::tcp(w, h, 8080, 34000, SYN),
                        wl,
                        capture_out,
                    ),
                    (
                        "ACK to host",
                        out,
                        Frame::tcp(w, h, 36001, 30080, ACK),
                        wl,
                        capture_out,
                    ),
                ];
                for (what, hook, frame, ingress, (ret, reason, target)) in cases {
                    let v = dp.run_on(hook, &frame, dp.wl, ingress);
                    expect(v, ret, reason, target, &format!("{ct}, {h}: {what}"));
                }
            }
        });
    }
}

#[test]
fn datapath_hairpin_replies_go_back_through_the_node() {
    with_dp(true, false, |dp| {
        for (a, b) in [(v4(WL), v4(WL2)), (v6(WL6), v6(WL2_6))] {
            // ztunnel's leg (as WL) reaches WL2 through the node's NAT.
            let syn = Frame::tcp(a, b, 41000, 80, SYN);
            let v = dp.run_on(Hook::WorkloadIn, &syn, dp.wl2, dp.zth);
            expect(v, REDIRECT, "capture-inbound", dp.zth, "hairpin SYN");
            // ztunnel's answer (as WL2) is left to the node, for its NAT.
            let synack = Frame::tcp(b, a, 80, 41000, SYN | ACK);
            let v = dp.run_on(Hook::ZtunnelHost, &synack, dp.zth, dp.zth);
            expect(v, UNSPEC, "ztunnel-via-node", 0, "hairpin SYN-ACK");
            // Other ztunnel -> workload traffic still goes straight in.
            let other = Frame::tcp(b, a, 80, 41001, SYN | ACK);
            let v = dp.run_on(Hook::ZtunnelHost, &other, dp.zth, dp.zth);
            expect(v, REDIRECT, "ztunnel-to-workload", dp.wl, "unrelated reply");
        }
    });
}

#[test]
fn datapath_gso_sized_packets() {
    with_dp(true, false, |dp| {
        // A GRO/GSO packet past 64 KiB (BIG TCP) has IP length 0.
        for fam in [4u8, 6] {
            let mut data = Frame {
                tcp_flags: ACK,
                ..out_syn(fam, 8080)
            }
            .payload(1400)
            .build();
            if fam == 4 {
                data[16..18].copy_from_slice(&[0, 0]);
            } else {
                data[18..20].copy_from_slice(&[0, 0]);
            }
            let v = dp.run_raw(Hook::WorkloadOut, &data, dp.wl, dp.wl, 1400);
            expect(
                v,
                REDIRECT,
                "capture-outbound",
                dp.zth,
                &format!("IPv{fam} BIG TCP"),
            );
        }
        // Large linear packets, both ways.
        let big = Frame {
            tcp_flags: ACK,
            ..out_syn(4, 8080)
        }
        .payload(3000);
        expect(
            dp.out(&big),
            REDIRECT,
            "capture-outbound",
            dp.zth,
            "3000-byte segment",
        );
        let _ = dp.wl2;
    });
}

/// The reason names the datapath tests rely on exist.
#[test]
fn datapath_reason_names() {
    for (r, name) in [
        (
            ztredir::dataplane::skel::types::ztr_reason::ZTR_R_MALFORMED,
            "drop-malformed",
        ),
        (
            ztredir::dataplane::skel::types::ztr_reason::ZTR_R_DROP_FRAGMENT,
            "drop-fragment",
        ),
        (
            ztredir::dataplane::skel::types::ztr_reason::ZTR_R_DROP_SPOOFED,
            "drop-spoofed",
        ),
    ] {
        assert_eq!(reason_name(r.0), name);
    }
    let _ = PROTO_UDP;
}

// In-pod mode: the programs inside a workload's netns (ztunnel's shared
// mode). The test thread's netns stands for the workload's: its netns
// cookie is the one a run sees (BPF_PROG_TEST_RUN puts the packet on a
// device of the caller's netns), and wl0 stands for the workload's eth0.

/// The in-pod workload of the test netns (WL, WL6).
const POD: u32 = 7;
/// An in-pod workload of another netns (WL2, WL2_6).
const POD2: u32 = 9;
/// A node-level workload's address.
const NODE_WL: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 12);
const RESOLVER: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const RESOLVER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0xa);
const LO: u32 = 1;
const PROXY_MARK: u32 = 0x539;
const LOCAL_MARK: u32 = 0x400;
/// The proxy's ports in the workload netns (outbound, inbound, HBONE).
const PROXY_PORTS: [u16; 3] = [15001, 15006, 15008];

/// The netns cookie of the calling thread's netns (SO_NETNS_COOKIE).
fn own_netns_cookie() -> u64 {
    let s = UdpSocket::bind(("127.0.0.1", 0)).expect("socket");
    let mut v = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            71,
            (&mut v as *mut u64).cast(),
            &mut len,
        )
    };
    assert_eq!(
        rc,
        0,
        "SO_NETNS_COOKIE: {}",
        std::io::Error::last_os_error()
    );
    v
}

/// The programs configured in-pod (`ztunnel set --in-pod`): WL and WL6
/// are pod POD of the test netns, WL2 and WL2_6 pod POD2 of another netns;
/// node host IPs as in node-level mode. No proxy listener until listen().
struct PodDp {
    dp: Dp,
    cookie: u64,
    /// The workload's interface.
    eth: u32,
    listeners: RefCell<Vec<TcpListener>>,
}

impl PodDp {
    fn new(conntrack: bool, capture_dns: bool) -> PodDp {
        let dp = Dp::load(conntrack);
        let cookie = own_netns_cookie();
        let mut flags = F::ZTR_CFG_ENABLED.0 | F::ZTR_CFG_INPOD.0 | F::ZTR_CFG_TRACE.0;
        if capture_dns {
            flags |= F::ZTR_CFG_CAPTURE_DNS.0;
        }
        dp.edit_config(|cfg| {
            *cfg = ztr_config {
                flags,
                port_outbound: 15001,
                port_inbound: 15006,
                port_hbone: 15008,
                port_dns: 15053,
                n_host: 2,
                ..Default::default()
            };
            cfg.host_ips[0] = to_addr(&v4(HOST));
            cfg.host_ips[1] = to_addr(&v6(HOST6));
        });
        let pod = K::ZTR_EP_POD.0;
        dp.put_endpoint(v4(WL), pod, POD);
        dp.put_endpoint(v6(WL6), pod, POD);
        dp.put_endpoint(v4(WL2), pod, POD2);
        dp.put_endpoint(v6(WL2_6), pod, POD2);
        dp.put_endpoint(v4(NODE_WL), K::ZTR_EP_WORKLOAD.0, dp.wl2);
        dp.put_endpoint(v4(HOST), K::ZTR_EP_HOST.0, 0);
        dp.put_endpoint(v6(HOST6), K::ZTR_EP_HOST.0, 0);
        let eth = dp.wl;
        let pd = PodDp {
            dp,
            cookie,
            eth,
            listeners: RefCell::new(Vec::new()),
        };
        pd.put_pod(POD, cookie);
        pd.put_pod(POD2, cookie + 1);
        pd
    }

    fn put_pod(&self, id: u32, netns_cookie: u64) {
        let p = ztr_pod {
            netns_cookie,
            ifindex: self.eth,
            ..Default::default()
        };
        self.dp
            .skel
            .maps
            .ztr_pods
            .update(&id.to_ne_bytes(), bytes_of(&p), MapFlags::ANY)
            .expect("pod");
    }

    /// The proxy listens on `ports`, wildcard and dual-stack, as ztunnel
    /// does in the workload's netns.
    fn listen(&self, ports: &[u16]) {
        for &port in ports {
            let l = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)).expect("listen");
            self.listeners.borrow_mut().push(l);
        }
    }

    /// The proxy closes its listeners (they leave the slot map by themselves).
    fn unlisten(&self) {
        self.listeners.borrow_mut().clear();
    }

    /// Whether pod `pod`'s listener slot `slot` (enum ztr_slot) holds a socket.
    fn slot_filled(&self, pod: u32, slot: u32) -> bool {
        let key = pod * ztr_slot::ZTR_SLOT_MAX.0 + slot;
        self.dp
            .skel
            .maps
            .ztr_pod_listeners
            .lookup(&key.to_ne_bytes(), MapFlags::ANY)
            .expect("listener slot")
            .is_some()
    }

    fn run(&self, hook: Hook, data: &[u8], mark: u32) -> Run {
        let (dev, ingress) = match hook {
            Hook::PodOut => (self.eth, 0),
            Hook::PodIn => (self.eth, self.eth),
            _ => (LO, 0),
        };
        let skb = SkbIn {
            dev,
            ingress,
            mark,
            ..Default::default()
        };
        self.dp.test_run(hook, data, skb)
    }

    /// The workload's packet leaving by its interface (egress).
    fn out(&self, f: &Frame) -> Verdict {
        self.run(Hook::PodOut, &f.build(), 0).verdict()
    }

    /// A packet arriving by the workload's interface (ingress).
    fn inb(&self, f: &Frame) -> Verdict {
        self.run(Hook::PodIn, &f.build(), 0).verdict()
    }

    /// A node_conns record of the connection between `workload` and `peer`.
    fn node_conn(&self, workload: (IpAddr, u16), peer: (IpAddr, u16)) -> Option<ztr_node_conn> {
        self.dp
            .skel
            .maps
            .ztr_node_conns
            .lookup(bytes_of(&ct_key(workload, peer)), MapFlags::ANY)
            .expect("node conns")
            .map(|v| from_bytes(&v))
    }
}

/// Runs `f` with the in-pod programs, on a thread of its own.
fn with_pod(conntrack: bool, capture_dns: bool, f: impl FnOnce(&PodDp) + Send + 'static) {
    std::thread::spawn(move || {
        let pd = PodDp::new(conntrack, capture_dns);
        f(&pd);
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

/// The addresses of one family: (this pod's, another netns' pod's, unknown,
/// remote peer, node host IP, resolver).
fn pod_addrs(fam: u8) -> [IpAddr; 6] {
    if fam == 4 {
        [
            v4(WL),
            v4(WL2),
            v4(Ipv4Addr::new(10, 1, 2, 3)),
            v4(REMOTE),
            v4(HOST),
            v4(RESOLVER),
        ]
    } else {
        [
            v6(WL6),
            v6(WL2_6),
            v6("fd00::1:2:3".parse().unwrap()),
            v6(REMOTE6),
            v6(HOST6),
            v6(RESOLVER6),
        ]
    }
}

fn loopback(fam: u8) -> IpAddr {
    if fam == 4 {
        v4(Ipv4Addr::LOCALHOST)
    } else {
        v6(Ipv6Addr::LOCALHOST)
    }
}

// Packet fields, for frames without VLAN tags or IPv6 extension headers.

fn is_v4(d: &[u8]) -> bool {
    d[12..14] == [0x08, 0x00]
}

/// Where the transport header starts, and where the IP packet ends.
fn l4_span(d: &[u8]) -> (usize, usize) {
    if is_v4(d) {
        let ihl = (d[14] & 0x0f) as usize * 4;
        (14 + ihl, 14 + u16::from_be_bytes([d[16], d[17]]) as usize)
    } else {
        (54, 54 + u16::from_be_bytes([d[18], d[19]]) as usize)
    }
}

fn proto_of(d: &[u8]) -> u8 {
    if is_v4(d) {
        d[23]
    } else {
        d[20]
    }
}

fn addr_at(d: &[u8], src: bool) -> IpAddr {
    if is_v4(d) {
        let at = if src { 26 } else { 30 };
        v4(<[u8; 4]>::try_from(&d[at..at + 4]).unwrap().into())
    } else {
        let at = if src { 22 } else { 38 };
        v6(<[u8; 16]>::try_from(&d[at..at + 16]).unwrap().into())
    }
}

/// (source, destination) address and port.
fn tuple_of(d: &[u8]) -> ((IpAddr, u16), (IpAddr, u16)) {
    let (l4, _) = l4_span(d);
    let port = |at: usize| u16::from_be_bytes([d[at], d[at + 1]]);
    (
        (addr_at(d, true), port(l4)),
        (addr_at(d, false), port(l4 + 2)),
    )
}

/// Where the TCP or UDP checksum is.
fn l4_csum_at(d: &[u8]) -> usize {
    l4_span(d).0 + if proto_of(d) == 6 { 16 } else { 6 }
}

/// The ones'-complement sum of the pseudo header and the transport segment
/// (checksum field included), folded.
fn l4_sum(d: &[u8]) -> u16 {
    let (l4, end) = l4_span(d);
    let mut pseudo = Vec::new();
    if is_v4(d) {
        pseudo.extend_from_slice(&d[26..34]);
        pseudo.extend_from_slice(&[0, proto_of(d)]);
        pseudo.extend_from_slice(&((end - l4) as u16).to_be_bytes());
    } else {
        pseudo.extend_from_slice(&d[22..54]);
        pseudo.extend_from_slice(&((end - l4) as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, proto_of(d)]);
    }
    pseudo.extend_from_slice(&d[l4..end]);
    if pseudo.len() % 2 == 1 {
        pseudo.push(0);
    }
    !ip_checksum(&pseudo)
}

/// `d` with the transport checksum it should carry.
fn with_l4_checksum(mut d: Vec<u8>) -> Vec<u8> {
    let at = l4_csum_at(&d);
    d[at..at + 2].copy_from_slice(&[0, 0]);
    let mut sum = !l4_sum(&d);
    if sum == 0 && proto_of(&d) == 17 {
        sum = 0xffff; // 0 means "no checksum" in UDP
    }
    d[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    d
}

fn l4_checksum_ok(d: &[u8]) -> bool {
    l4_sum(d) == 0xffff
}

fn ipv4_header_ok(d: &[u8]) -> bool {
    let ihl = (d[14] & 0x0f) as usize * 4;
    ip_checksum(&d[14..14 + ihl]) == 0
}

/// What a program that redirects to lo leaves of `d`: the same frame with
/// the destination MAC zeroed.
fn to_lo(d: &[u8]) -> Vec<u8> {
    let mut v = d.to_vec();
    v[..6].fill(0);
    v
}

/// Slot `s` of the family `fam` (IPv6 slots follow the IPv4 ones).
fn slot_of(s: ztr_slot, fam: u8) -> u32 {
    s.0 + if fam == 6 {
        ztr_slot::ZTR_SLOTS_PER_FAMILY.0
    } else {
        0
    }
}

#[test]
fn datapath_inpod_proxy_mark_and_source_check() {
    with_pod(false, false, |pd| {
        for fam in [4u8, 6] {
            let [own, other, unknown, remote, host, resolver] = pod_addrs(fam);
            // The proxy's packets (its mark in the low 12 bits) leave as
            // they are, whatever they carry.
            for src in [own, other, unknown] {
                for mark in [PROXY_MARK, 0xabc_0539] {
                    let f = Frame::tcp(src, remote, 41000, 8080, SYN).build();
                    let r = pd.run(Hook::PodOut, &f, mark);
                    let what = format!("IPv{fam}, mark {mark:#x}, from {src}");
                    assert_eq!(r.data, f, "{what}: untouched");
                    assert_eq!(r.mark, mark, "{what}: mark kept");
                    expect(r.verdict(), UNSPEC, "proxy-own", 0, &what);
                }
            }
            // Other marks are not the proxy's.
            let ack = Frame::tcp(own, remote, 41000, 8080, ACK).build();
            for mark in [0x538, 0x53a, 0x5390] {
                let r = pd.run(Hook::PodOut, &ack, mark);
                let what = format!("IPv{fam}, mark {mark:#x}");
                expect(r.verdict(), REDIRECT, "capture-outbound", LO, &what);
            }
            // Sources that are not this netns' workload's: another netns'
            // workload, an unknown address, a node host IP, a node-level
            // workload.
            let mut spoofed = vec![other, unknown, host];
            if fam == 4 {
                spoofed.push(v4(NODE_WL));
            }
            let icmp = if fam == 4 { PROTO_ICMP } else { PROTO_ICMPV6 };
            for src in spoofed {
                for f in [
                    Frame::tcp(src, remote, 1, 80, SYN),
                    Frame::tcp(src, remote, 1, 80, ACK),
                    Frame::udp(src, remote, 1, 5353),
                    Frame::udp(src, resolver, 1, 53),
                    Frame::tcp(src, remote, 0, 0, 0).proto(icmp),
                ] {
                    let what = format!("from {src}, proto {}, flags {}", f.proto, f.tcp_flags);
                    expect(pd.out(&f), SHOT, "drop-spoofed", 0, &what);
                }
            }
        }
        // Neighbour discovery speaks from link-local and ::; only ICMPv6 may.
        let all_nodes = v6("ff02::1".parse().unwrap());
        for src in [v6("fe80::1234".parse().unwrap()), v6(Ipv6Addr::UNSPECIFIED)] {
            let nd = Frame::tcp(src, all_nodes, 0, 0, 0).proto(PROTO_ICMPV6);
            let what = format!("ICMPv6 from {src}");
            expect(pd.out(&nd), UNSPEC, "pass-protocol", 0, &what);
            for f in [
                Frame::tcp(src, v6(REMOTE6), 1, 80, ACK),
                Frame::udp(src, v6(REMOTE6), 1, 5353),
            ] {
                let what = format!("proto {} from {src}", f.proto);
                expect(pd.out(&f), SHOT, "drop-spoofed", 0, &what);
            }
        }
        let own_icmp = Frame::tcp(v6(WL6), all_nodes, 0, 0, 0).proto(PROTO_ICMPV6);
        expect(pd.out(&own_icmp), UNSPEC, "pass-protocol", 0, "own ICMPv6");
        // It is the netns that makes WL2 another's: with its pod moved
        // into this netns, WL2 is captured like WL.
        let wl2 = Frame::tcp(v4(WL2), v4(REMOTE), 1, 80, ACK);
        pd.put_pod(POD2, pd.cookie);
        let what = "WL2, its pod in this netns";
        expect(pd.out(&wl2), REDIRECT, "capture-outbound", LO, what);
        // The answer is cached per CPU until the CLI says the workload
        // addresses changed (ep_gen); then the pod that is gone drops.
        pd.dp
            .skel
            .maps
            .ztr_pods
            .delete(&POD2.to_ne_bytes())
            .expect("remove pod");
        let what = "pod removed, same generation";
        expect(pd.out(&wl2), REDIRECT, "capture-outbound", LO, what);
        pd.dp.edit_config(|cfg| cfg.ep_gen += 1);
        let what = "pod removed, new generation";
        expect(pd.out(&wl2), SHOT, "drop-spoofed", 0, what);
        // In-pod mode off: nothing goes around the proxy, but the proxy's
        // own packets still leave.
        pd.dp.edit_config(|cfg| cfg.flags &= !F::ZTR_CFG_INPOD.0);
        let ack = Frame::tcp(v4(WL), v4(REMOTE), 1, 80, ACK);
        expect(pd.out(&ack), SHOT, "drop-no-ztunnel", 0, "in-pod off: out");
        let r = pd.run(Hook::PodOut, &ack.build(), PROXY_MARK);
        expect(r.verdict(), UNSPEC, "proxy-own", 0, "in-pod off: proxy's");
        let inb = Frame::tcp(v4(REMOTE), v4(WL), 80, 1, ACK);
        expect(pd.inb(&inb), SHOT, "drop-no-ztunnel", 0, "in-pod off: in");
    });
}

#[test]
fn datapath_inpod_capture_goes_to_lo() {
    with_pod(true, false, |pd| {
        pd.listen(&PROXY_PORTS);
        for fam in [4u8, 6] {
            let [own, _, _, remote, host, resolver] = pod_addrs(fam);
            let outbound = slot_of(ztr_slot::ZTR_SLOT_OUTBOUND, fam);
            assert!(!pd.slot_filled(POD, outbound), "IPv{fam}: slot empty");
            // (what, frame, mark before, mark after): the local-delivery
            // mark replaces the low 12 bits, the others are kept.
            for (what, f, mark_in, mark_out) in [
                (
                    "SYN",
                    Frame::tcp(own, remote, 40000, 8080, SYN),
                    0,
                    LOCAL_MARK,
                ),
                (
                    "data",
                    Frame::tcp(own, remote, 40000, 8080, ACK).payload(1400),
                    0x7_00ab,
                    0x7_0400,
                ),
                (
                    "FIN",
                    Frame::tcp(own, remote, 40000, 8080, FIN | ACK),
                    0x1_0000,
                    0x1_0400,
                ),
                (
                    "SYN to a host IP (a NodePort)",
                    Frame::tcp(own, host, 40001, 30080, SYN),
                    0,
                    LOCAL_MARK,
                ),
                (
                    "TCP/53, DNS capture off",
                    Frame::tcp(own, resolver, 40002, 53, SYN),
                    0,
                    LOCAL_MARK,
                ),
            ] {
                let what = format!("IPv{fam} {what}");
                let data = f.build();
                let r = pd.run(Hook::PodOut, &data, mark_in);
                assert_eq!(r.mark, mark_out, "{what}: mark");
                assert_eq!(r.data, to_lo(&data), "{what}: only the MAC zeroed");
                expect(r.verdict(), REDIRECT, "capture-outbound", LO, &what);
            }
            assert!(
                pd.slot_filled(POD, outbound),
                "IPv{fam}: SYN filled the slot"
            );
            let inbound = slot_of(ztr_slot::ZTR_SLOT_INBOUND, fam);
            assert!(!pd.slot_filled(POD, inbound), "IPv{fam}: inbound slot");
            assert!(
                !pd.slot_filled(POD2, outbound),
                "IPv{fam}: other pod's slot"
            );
            // Left alone, unmarked: UDP but DNS, ICMP.
            let icmp = if fam == 4 { PROTO_ICMP } else { PROTO_ICMPV6 };
            for (what, f, reason) in [
                ("UDP", Frame::udp(own, remote, 40000, 5353), "pass-protocol"),
                (
                    "UDP/53, DNS capture off",
                    Frame::udp(own, resolver, 40000, 53),
                    "bypass-dns",
                ),
                (
                    "ICMP",
                    Frame::tcp(own, remote, 0, 0, 0).proto(icmp),
                    "pass-protocol",
                ),
            ] {
                let what = format!("IPv{fam} {what}");
                let data = f.build();
                let r = pd.run(Hook::PodOut, &data, 0);
                assert_eq!((r.mark, &r.data), (0, &data), "{what}: untouched");
                expect(r.verdict(), UNSPEC, reason, 0, &what);
            }
        }
    });
}

#[test]
fn datapath_inpod_fails_closed_without_listeners() {
    with_pod(false, false, |pd| {
        // No proxy listener: new connections die both ways; established
        // ones are not the listener's business.
        let closed = |when: &str| {
            for fam in [4u8, 6] {
                let [own, _, _, remote, _, _] = pod_addrs(fam);
                let w = |what: &str| format!("{when}, IPv{fam}: {what}");
                let syn = Frame::tcp(own, remote, 40000, 8080, SYN);
                expect(pd.out(&syn), SHOT, "drop-no-listener", 0, &w("out SYN"));
                for port in [8080, 15008] {
                    let syn = Frame::tcp(remote, own, 40000, port, SYN);
                    let what = w(&format!("in SYN to {port}"));
                    expect(pd.inb(&syn), SHOT, "drop-no-listener", 0, &what);
                }
                let ack = Frame::tcp(own, remote, 40000, 8080, ACK);
                expect(
                    pd.out(&ack),
                    REDIRECT,
                    "capture-outbound",
                    LO,
                    &w("out ACK"),
                );
                let ack = Frame::tcp(remote, own, 40000, 8080, ACK);
                expect(pd.inb(&ack), UNSPEC, "steer-local", 0, &w("in ACK"));
                for s in [
                    ztr_slot::ZTR_SLOT_OUTBOUND,
                    ztr_slot::ZTR_SLOT_INBOUND,
                    ztr_slot::ZTR_SLOT_HBONE,
                ] {
                    let slot = slot_of(s, fam);
                    assert!(!pd.slot_filled(POD, slot), "{}", w(&format!("slot {slot}")));
                }
            }
        };
        closed("before the proxy listens");
        // Only the inbound listener: the other slots still fail closed.
        pd.listen(&[15006]);
        for fam in [4u8, 6] {
            let [own, _, _, remote, _, _] = pod_addrs(fam);
            let w = |what: &str| format!("inbound listener only, IPv{fam}: {what}");
            let syn = Frame::tcp(remote, own, 40000, 8080, SYN);
            expect(pd.inb(&syn), UNSPEC, "capture-inbound", 0, &w("in SYN"));
            let syn = Frame::tcp(remote, own, 40000, 15008, SYN);
            expect(pd.inb(&syn), SHOT, "drop-no-listener", 0, &w("HBONE SYN"));
            let syn = Frame::tcp(own, remote, 40000, 8080, SYN);
            expect(pd.out(&syn), SHOT, "drop-no-listener", 0, &w("out SYN"));
            assert!(pd.slot_filled(POD, slot_of(ztr_slot::ZTR_SLOT_INBOUND, fam)));
        }
        pd.listen(&[15001, 15008]);
        for fam in [4u8, 6] {
            let [own, _, _, remote, _, _] = pod_addrs(fam);
            let w = |what: &str| format!("all listeners, IPv{fam}: {what}");
            let syn = Frame::tcp(remote, own, 40000, 15008, SYN);
            expect(pd.inb(&syn), UNSPEC, "capture-inbound", 0, &w("HBONE SYN"));
            let syn = Frame::tcp(own, remote, 40000, 8080, SYN);
            expect(
                pd.out(&syn),
                REDIRECT,
                "capture-outbound",
                LO,
                &w("out SYN"),
            );
            for s in [ztr_slot::ZTR_SLOT_OUTBOUND, ztr_slot::ZTR_SLOT_HBONE] {
                assert!(pd.slot_filled(POD, slot_of(s, fam)), "{}", w("slot"));
            }
        }
        // Closed listeners leave the slots by themselves.
        pd.unlisten();
        closed("after the proxy closed its listeners");
    });
}

impl PodDp {
    /// The resolver a redirected DNS query asked, by the querier's side.
    fn dns_nat(&self, pod: IpAddr, port: u16, proto: u8) -> Option<ztr_dns_orig> {
        let k = ztr_dns_key {
            pod: to_addr(&pod),
            port: port.to_be(),
            proto,
            ..Default::default()
        };
        self.dp
            .skel
            .maps
            .ztr_dns_nat
            .lookup(bytes_of(&k), MapFlags::ANY)
            .expect("DNS NAT")
            .map(|v| from_bytes(&v))
    }

    /// Runs pod_lo on `data`, which it must leave alone without a trace.
    #[track_caller]
    fn lo_untouched(&self, data: &[u8], what: &str) {
        let r = self.run(Hook::PodLo, data, 0);
        assert_eq!(r.ret, UNSPEC, "{what}: verdict");
        assert!(r.events.is_empty(), "{what}: no decision: {:?}", r.events);
        assert_eq!(r.data, data, "{what}: untouched");
    }
}

#[test]
fn datapath_inpod_dns_rewritten_both_ways() {
    with_pod(true, true, |pd| {
        for fam in [4u8, 6] {
            let [own, _, _, _, _, resolver] = pod_addrs(fam);
            let lo = loopback(fam);
            // (what, query, the proxy's answer to it): odd lengths too,
            // for the checksums' padding.
            for (what, query, answer) in [
                (
                    "UDP",
                    Frame::udp(own, resolver, 40053, 53).payload(33),
                    Frame::udp(lo, own, 15053, 40053).payload(61),
                ),
                (
                    "TCP SYN",
                    Frame::tcp(own, resolver, 40054, 53, SYN),
                    Frame::tcp(lo, own, 15053, 40054, SYN | ACK),
                ),
                (
                    "TCP data",
                    Frame::tcp(own, resolver, 40054, 53, ACK).payload(40),
                    Frame::tcp(lo, own, 15053, 40054, ACK).payload(91),
                ),
            ] {
                let what = format!("IPv{fam} {what}");
                let sport = query.sport;
                let q = with_l4_checksum(query.build());
                assert!(l4_checksum_ok(&q), "{what}: the test's own checksum");
                let r = pd.run(Hook::PodOut, &q, 0);
                let d = &r.data;
                let to_proxy = ((own, sport), (lo, 15053));
                assert_eq!(tuple_of(d), to_proxy, "{what}: query's new destination");
                assert!(
                    !is_v4(d) || ipv4_header_ok(d),
                    "{what}: query's IPv4 checksum"
                );
                assert!(l4_checksum_ok(d), "{what}: query's transport checksum");
                let want = Frame {
                    dst: lo,
                    dport: 15053,
                    ..query.clone()
                };
                let want = to_lo(&with_l4_checksum(want.build()));
                assert_eq!(*d, want, "{what}: the query, readdressed, to lo");
                assert_eq!(r.mark, 0, "{what}: no mark, the destination is local");
                expect(r.verdict(), REDIRECT, "capture-dns", LO, &what);
                let orig = pd.dns_nat(own, sport, query.proto).expect("NAT record");
                assert_eq!(
                    (from_addr(&orig.resolver), u16::from_be(orig.port)),
                    (resolver, 53),
                    "{what}: NAT record"
                );
                // The proxy's answer gets the resolver's address and port.
                let a = with_l4_checksum(answer.build());
                let r = pd.run(Hook::PodLo, &a, 0);
                let d = &r.data;
                let from_resolver = ((resolver, 53), (own, sport));
                assert_eq!(tuple_of(d), from_resolver, "{what}: answer's new source");
                assert!(
                    !is_v4(d) || ipv4_header_ok(d),
                    "{what}: answer's IPv4 checksum"
                );
                assert!(l4_checksum_ok(d), "{what}: answer's transport checksum");
                let want = Frame {
                    src: resolver,
                    sport: 53,
                    ..answer.clone()
                };
                assert_eq!(*d, with_l4_checksum(want.build()), "{what}: the answer");
                expect(r.verdict(), UNSPEC, "dns-reply", 0, &what);
            }
            // Answers that answer no query of the workload's.
            for (what, f) in [
                (
                    "to a port that asked nothing",
                    Frame::udp(lo, own, 15053, 40999),
                ),
                ("from another port", Frame::udp(lo, own, 15054, 40053)),
                ("not from loopback", Frame::udp(resolver, own, 15053, 40053)),
                (
                    "TCP for a UDP query",
                    Frame::tcp(lo, own, 15053, 40053, ACK),
                ),
            ] {
                let what = format!("IPv{fam} answer {what}");
                pd.lo_untouched(&with_l4_checksum(f.build()), &what);
            }
        }
        // IPv4 UDP without a checksum (0) gets none made up.
        let q = Frame::udp(v4(WL), v4(RESOLVER), 40055, 53).payload(20);
        let r = pd.run(Hook::PodOut, &q.build(), 0);
        let want = Frame {
            dst: v4(Ipv4Addr::LOCALHOST),
            dport: 15053,
            ..q
        };
        assert_eq!(r.data, to_lo(&want.build()), "query without checksum");
        assert!(
            ipv4_header_ok(&r.data),
            "query without checksum: IPv4 checksum"
        );
        expect(
            r.verdict(),
            REDIRECT,
            "capture-dns",
            LO,
            "query without checksum",
        );
        let a = Frame::udp(v4(Ipv4Addr::LOCALHOST), v4(WL), 15053, 40055).payload(20);
        let r = pd.run(Hook::PodLo, &a.build(), 0);
        let want = Frame {
            src: v4(RESOLVER),
            sport: 53,
            ..a.clone()
        };
        assert_eq!(r.data, want.build(), "answer without checksum");
        expect(
            r.verdict(),
            UNSPEC,
            "dns-reply",
            0,
            "answer without checksum",
        );
        // DNS capture off: queries go to the resolver, and answers, even to
        // a query recorded before, are not touched.
        pd.dp
            .edit_config(|cfg| cfg.flags &= !F::ZTR_CFG_CAPTURE_DNS.0);
        let q = with_l4_checksum(Frame::udp(v4(WL), v4(RESOLVER), 40053, 53).build());
        let r = pd.run(Hook::PodOut, &q, 0);
        assert_eq!(r.data, q, "capture off: query untouched");
        expect(r.verdict(), UNSPEC, "bypass-dns", 0, "capture off: query");
        pd.lo_untouched(&a.build(), "capture off: answer");
    });
}

#[test]
fn datapath_inpod_inbound_probes_and_later_packets() {
    for conntrack in [true, false] {
        with_pod(conntrack, false, move |pd| {
            pd.listen(&PROXY_PORTS);
            for fam in [4u8, 6] {
                let [own, other, _, remote, host, _] = pod_addrs(fam);
                let ct = if conntrack { "on" } else { "off" };
                let w = |what: &str| format!("table {ct}, IPv{fam}: {what}");
                // A probe: the SYN from a node host IP is recorded, and the
                // connection's packets bypass the proxy both ways.
                let probe = (UNSPEC, "bypass-host-ip", 0);
                let syn = Frame::tcp(host, own, 34000, 8080, SYN);
                let r = pd.run(Hook::PodIn, &syn.build(), 0);
                assert_eq!(r.data, syn.build(), "{}", w("probe SYN untouched"));
                let (ret, reason, target) = probe;
                expect(r.verdict(), ret, reason, target, &w("probe SYN"));
                let nc = pd.node_conn((own, 8080), (host, 34000));
                let nc = nc.unwrap_or_else(|| panic!("{}", w("probe recorded")));
                assert_eq!(
                    (nc.kind, nc.ifindex),
                    (NC::ZTR_NC_FROM_NODE.0, POD),
                    "{}",
                    w("probe record")
                );
                for (what, hook, f, (ret, reason, target)) in [
                    (
                        "probe SYN-ACK",
                        Hook::PodOut,
                        Frame::tcp(own, host, 8080, 34000, SYN | ACK),
                        probe,
                    ),
                    (
                        "probe ACK",
                        Hook::PodIn,
                        Frame::tcp(host, own, 34000, 8080, ACK),
                        probe,
                    ),
                    (
                        "probe FIN",
                        Hook::PodOut,
                        Frame::tcp(own, host, 8080, 34000, FIN | ACK),
                        probe,
                    ),
                    // Other tuples with a host IP are no probe's.
                    (
                        "reply to a host IP, no probe SYN seen",
                        Hook::PodOut,
                        Frame::tcp(own, host, 8080, 34001, ACK),
                        (REDIRECT, "capture-outbound", LO),
                    ),
                    (
                        "ACK from a host IP, no probe SYN seen",
                        Hook::PodIn,
                        Frame::tcp(host, own, 34001, 8080, ACK),
                        (UNSPEC, "steer-local", 0),
                    ),
                    // A peer's connection: its SYN is the proxy's (sk_lookup
                    // steers it), its later packets find their socket.
                    (
                        "peer's SYN",
                        Hook::PodIn,
                        Frame::tcp(remote, own, 35000, 8080, SYN),
                        (UNSPEC, "capture-inbound", 0),
                    ),
                    (
                        "peer's data",
                        Hook::PodIn,
                        Frame::tcp(remote, own, 35000, 8080, ACK).payload(100),
                        (UNSPEC, "steer-local", 0),
                    ),
                    (
                        "peer's HBONE SYN",
                        Hook::PodIn,
                        Frame::tcp(remote, own, 35001, 15008, SYN),
                        (UNSPEC, "capture-inbound", 0),
                    ),
                    // Not this netns' workload's, or not TCP: passed.
                    (
                        "SYN to another netns' workload",
                        Hook::PodIn,
                        Frame::tcp(remote, other, 35002, 8080, SYN),
                        (UNSPEC, "pass-protocol", 0),
                    ),
                    (
                        "UDP",
                        Hook::PodIn,
                        Frame::udp(remote, own, 35003, 8080),
                        (UNSPEC, "pass-protocol", 0),
                    ),
                ] {
                    let data = f.build();
                    let r = pd.run(hook, &data, 0);
                    if ret == UNSPEC {
                        assert_eq!(r.data, data, "{}", w(&format!("{what}: untouched")));
                    }
                    expect(r.verdict(), ret, reason, target, &w(what));
                }
                assert!(
                    pd.node_conn((own, 8080), (remote, 35000)).is_none(),
                    "{}",
                    w("a peer's SYN is no probe")
                );
                for s in [ztr_slot::ZTR_SLOT_INBOUND, ztr_slot::ZTR_SLOT_HBONE] {
                    let slot = slot_of(s, fam);
                    assert!(pd.slot_filled(POD, slot), "{}", w(&format!("slot {slot}")));
                }
            }
        });
    }
}

#[test]
fn datapath_inpod_lo_records_the_local_leg() {
    with_pod(false, true, |pd| {
        for fam in [4u8, 6] {
            let [own, other, _, remote, _, _] = pod_addrs(fam);
            let lo = loopback(fam);
            // The proxy's leg into the app, from the client's address.
            let syn = Frame::tcp(remote, own, 42000, 8080, SYN).build();
            let r = pd.run(Hook::PodLo, &syn, 0);
            assert_eq!(r.data, syn, "IPv{fam}: leg's SYN untouched");
            expect(
                r.verdict(),
                UNSPEC,
                "local-leg",
                0,
                &format!("IPv{fam} leg"),
            );
            let nc = pd
                .node_conn((own, 8080), (remote, 42000))
                .expect("leg recorded");
            assert_eq!(
                (nc.kind, nc.ifindex),
                (NC::ZTR_NC_LOCAL.0, POD),
                "IPv{fam} leg"
            );
            // Its later packets, and what is not opened to the workload,
            // leave no trace.
            for (what, f) in [
                ("leg's ACK", Frame::tcp(remote, own, 42000, 8080, ACK)),
                (
                    "app's SYN-ACK",
                    Frame::tcp(own, remote, 8080, 42000, SYN | ACK),
                ),
                (
                    "SYN to another netns' workload",
                    Frame::tcp(remote, other, 42001, 8080, SYN),
                ),
                ("loopback SYN", Frame::tcp(lo, lo, 42002, 8080, SYN)),
                ("UDP", Frame::udp(remote, own, 42003, 8080)),
            ] {
                pd.lo_untouched(&f.build(), &format!("IPv{fam} {what}"));
            }
            assert!(
                pd.node_conn((other, 8080), (remote, 42001)).is_none(),
                "IPv{fam}: another netns' workload"
            );
            // What lo carries is the kernel's: a malformed frame is not
            // pod_lo's to judge.
            let cut = Frame::tcp(remote, own, 42004, 8080, SYN).build();
            let cut = &cut[..if fam == 4 { 14 + 20 + 10 } else { 14 + 40 + 12 }];
            pd.lo_untouched(cut, &format!("IPv{fam} TCP header cut"));
        }
    });
}

#[test]
fn datapath_inpod_malformed_is_dropped() {
    with_pod(false, true, |pd| {
        pd.listen(&PROXY_PORTS);
        for (hook, src, dst, src6, dst6) in [
            (Hook::PodOut, WL, REMOTE, WL6, REMOTE6),
            (Hook::PodIn, REMOTE, WL, REMOTE6, WL6),
        ] {
            let syn = Frame::tcp(v4(src), v4(dst), 40000, 8080, SYN);
            let syn6 = Frame::tcp(v6(src6), v6(dst6), 40000, 8080, SYN);
            let (data, data6) = (syn.build(), syn6.build());
            let mut bad_ihl = data.clone();
            bad_ihl[14] = 0x44;
            let mut bad_len = data.clone();
            bad_len[16..18].copy_from_slice(&30u16.to_be_bytes());
            let udp = Frame::udp(v4(src), v4(dst), 40000, 53).build();
            let mut cases = vec![
                ("TCP header cut", data[..14 + 20 + 10].to_vec()),
                ("IPv6 TCP header cut", data6[..14 + 40 + 12].to_vec()),
                ("UDP header cut", udp[..14 + 20 + 6].to_vec()),
                ("IHL 4", bad_ihl),
                ("total length inside the TCP header", bad_len),
                ("TCP data offset 4", syn.clone().tcp_doff(4).build()),
                ("IPv6 TCP data offset 4", syn6.clone().tcp_doff(4).build()),
                ("1 VLAN tag", syn.clone().vlan(1).build()),
                ("2 VLAN tags", syn6.clone().vlan(2).build()),
                (
                    "33 extension headers",
                    syn6.clone().ext(&[EXT_DSTOPTS; 33]).build(),
                ),
                (
                    "overlapping TCP fragment",
                    syn.clone()
                        .frag(Frag::Later {
                            id: 3,
                            offset: 1,
                            more: false,
                        })
                        .build(),
                ),
            ];
            for (what, data) in cases.drain(..) {
                let r = pd.run(hook, &data, 0);
                expect(
                    r.verdict(),
                    SHOT,
                    "drop-malformed",
                    0,
                    &format!("{hook:?}: {what}"),
                );
            }
            // The proxy's mark lets nothing malformed out.
            let r = pd.run(hook, &data[..14 + 20 + 10], PROXY_MARK);
            let what = format!("{hook:?}: cut, proxy's mark");
            expect(r.verdict(), SHOT, "drop-malformed", 0, &what);
            // Not IP: not these programs' business.
            let r = pd.run(hook, &crate::frame::arp_frame(), 0);
            expect(r.verdict(), UNSPEC, "not-ip", 0, &format!("{hook:?}: ARP"));
            // Later fragments whose first was not seen carry no ports: they
            // drop where their first could have been captured.
            for (what, f) in [
                ("TCP", syn.clone()),
                ("IPv6 TCP", syn6.clone()),
                ("UDP", Frame::udp(v4(src), v4(dst), 40000, 53)),
            ] {
                let orphan = f.frag(Frag::Later {
                    id: 77,
                    offset: 9,
                    more: false,
                });
                let (ret, reason) = match (hook, what) {
                    (Hook::PodIn, "UDP") => (UNSPEC, "pass-protocol"),
                    _ => (SHOT, "drop-fragment"),
                };
                let what = format!("{hook:?}: {what} orphan fragment");
                expect(
                    pd.run(hook, &orphan.build(), 0).verdict(),
                    ret,
                    reason,
                    0,
                    &what,
                );
            }
        }
    });
}

#[test]
fn datapath_inpod_dns_fragments_readdressed_alike() {
    with_pod(false, true, |pd| {
        for fam in [4u8, 6] {
            let [own, _, _, _, _, resolver] = pod_addrs(fam);
            let lo = loopback(fam);
            // A query in two fragments: both get the proxy's address (the
            // kernel reassembles by it), the port only where it is.
            let q = Frame::udp(own, resolver, 40056, 53).payload(64);
            let id = 300 + fam as u32;
            let first = q.clone().frag(Frag::First { id });
            let later = q.clone().frag(Frag::Later {
                id,
                offset: 9,
                more: false,
            });
            for (what, f, dport) in [("first", &first, 15053), ("later", &later, 53)] {
                let what = format!("IPv{fam} query, {what} fragment");
                let r = pd.run(Hook::PodOut, &f.build(), 0);
                let want = Frame {
                    dst: lo,
                    dport,
                    ..f.clone()
                };
                assert_eq!(r.data, to_lo(&want.build()), "{what}");
                assert!(
                    !is_v4(&r.data) || ipv4_header_ok(&r.data),
                    "{what}: IPv4 checksum"
                );
                expect(r.verdict(), REDIRECT, "capture-dns", LO, &what);
            }
            // The answer, in two fragments, gets the resolver's address.
            let a = Frame::udp(lo, own, 15053, 40056).payload(64);
            let first = a.clone().frag(Frag::First { id });
            let later = a.clone().frag(Frag::Later {
                id,
                offset: 9,
                more: false,
            });
            for (what, f, sport) in [("first", &first, 53), ("later", &later, 15053)] {
                let what = format!("IPv{fam} answer, {what} fragment");
                let r = pd.run(Hook::PodLo, &f.build(), 0);
                let want = Frame {
                    src: resolver,
                    sport,
                    ..f.clone()
                };
                assert_eq!(r.data, want.build(), "{what}");
                expect(r.verdict(), UNSPEC, "dns-reply", 0, &what);
            }
        }
    });
}

#[test]
fn datapath_inpod_counters_keep_the_fast_path() {
    with_pod(false, false, |pd| {
        // One CPU for every run: the counter slots are per CPU.
        let cpu = unsafe { libc::sched_getcpu() };
        assert!(cpu >= 0, "sched_getcpu");
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu as usize).expect("CPU set");
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("pin thread");
        // Both ways of the workload's interface, each packet once: both
        // programs count in an array slot of their own, none in the hash.
        let out = Frame::tcp(v4(WL), v4(REMOTE), 40000, 8080, ACK);
        expect(pd.out(&out), REDIRECT, "capture-outbound", LO, "out");
        let inb = Frame::tcp(v4(REMOTE), v4(WL), 8080, 40000, ACK);
        expect(pd.inb(&inb), UNSPEC, "steer-local", 0, "in");
        let maps = &pd.dp.skel.maps;
        let hashed: Vec<ztr_stat_key> = maps.ztr_stats.keys().map(|k| from_bytes(&k)).collect();
        assert!(hashed.is_empty(), "counted in the hash: {hashed:?}");
        let mut found = Vec::new();
        for idx in 0..maps.ztr_stat_slots.max_entries() {
            let per_cpu = maps
                .ztr_stat_slots
                .lookup_percpu(&idx.to_ne_bytes(), MapFlags::ANY)
                .expect("counter slots")
                .expect("counter slot");
            for v in per_cpu {
                let s: ztr_stat_slot = from_bytes(&v);
                if s.hook != 0 {
                    let n: Vec<(usize, u64)> = (s.r.iter().enumerate())
                        .filter(|(_, r)| r.packets > 0)
                        .map(|(i, r)| (i, r.packets))
                        .collect();
                    found.push((s.ifindex, s.hook as u32, n));
                }
            }
        }
        found.sort();
        let (capture, steer) = (
            R::ZTR_R_CAPTURE_OUTBOUND.0 as usize,
            R::ZTR_R_STEER_LOCAL.0 as usize,
        );
        assert_eq!(
            found,
            vec![
                (pd.eth, H::ZTR_HOOK_POD_OUT.0, vec![(capture, 1)]),
                (pd.eth, H::ZTR_HOOK_POD_IN.0, vec![(steer, 1)]),
            ],
            "array slots"
        );
    });
}

impl Dp {
    /// The installed connection table.
    fn conn_table(&self) -> MapHandle {
        let id = self
            .skel
            .maps
            .ztr_conns
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .expect("read table slot")
            .map(|v| u32::from_ne_bytes(v[..4].try_into().unwrap()))
            .expect("a connection table");
        MapHandle::from_map_id(id).expect("open connection table")
    }

    /// The connection table's entry for a connection, workload side first.
    fn conn_entry(&self, workload: (IpAddr, u16), peer: (IpAddr, u16)) -> Option<ztr_ct_entry> {
        self.conn_table()
            .lookup(bytes_of(&ct_key(workload, peer)), MapFlags::ANY)
            .expect("read connection")
            .map(|v| from_bytes(&v))
    }

    fn delete_conn(&self, workload: (IpAddr, u16), peer: (IpAddr, u16)) {
        self.conn_table()
            .delete(bytes_of(&ct_key(workload, peer)))
            .expect("delete connection");
    }

    /// (packets, bytes) from the workload that the CPUs hold for a
    /// connection and have not added to its entry.
    fn pending_from(&self, workload: (IpAddr, u16), peer: (IpAddr, u16)) -> (u64, u64) {
        let key = ct_key(workload, peer);
        let mut sum = (0, 0);
        for slot in 0..16u32 {
            let cpus = self
                .skel
                .maps
                .ztr_ct_cache
                .lookup_percpu(&slot.to_ne_bytes(), MapFlags::ANY)
                .expect("read pending slot")
                .expect("slot exists");
            for v in cpus {
                let c: ztr_ct_pending = from_bytes(&v[..std::mem::size_of::<ztr_ct_pending>()]);
                if c.valid != 0 && bytes_of(&c.key) == bytes_of(&key) {
                    sum.0 += c.packets_from;
                    sum.1 += c.bytes_from;
                }
            }
        }
        sum
    }
}

/// A TCP connection's key, workload side first (the connection table's and
/// node_conns').
fn ct_key(workload: (IpAddr, u16), peer: (IpAddr, u16)) -> ztr_ct_key {
    ztr_ct_key {
        workload: to_addr(&workload.0),
        peer: to_addr(&peer.0),
        workload_port: workload.1.to_be(),
        peer_port: peer.1.to_be(),
        proto: 6,
        ..Default::default()
    }
}

/// The connection table's fast path: an established connection's ordinary
/// packets count in this CPU's pending slot and reach the entry every 64
/// packets, on FIN, SYN or RST, and when another connection takes the slot;
/// entry plus pending is exact at every step. A pending count never goes to
/// a new connection that reuses a deleted entry's tuple.
#[test]
fn datapath_conn_table_fast_path_counts_every_packet() {
    with_dp(true, false, |dp| {
        // One CPU: the pending slot is per CPU.
        let mut one = nix::sched::CpuSet::new();
        one.set(0).expect("cpu set");
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &one).expect("pin to CPU 0");
        let (w, peer) = ((v4(WL), 40000), (v4(REMOTE), 8080));
        let seg = |flags: u8| Frame::tcp(w.0, peer.0, w.1, peer.1, flags).payload(100);
        let len = seg(ACK).build().len() as u64;
        let counted = |what: &str| {
            let e = dp
                .conn_entry(w, peer)
                .unwrap_or_else(|| panic!("{what}: no entry"));
            let p = dp.pending_from(w, peer);
            (
                e.packets_from,
                e.packets_from + p.0,
                e.bytes_from + p.1,
                e.tcp_flags,
            )
        };
        expect(
            dp.out(&seg(SYN)),
            REDIRECT,
            "capture-outbound",
            dp.zth,
            "SYN",
        );
        let syn_len = seg(SYN).build().len() as u64;
        for _ in 0..10 {
            expect(
                dp.out(&seg(ACK)),
                REDIRECT,
                "capture-outbound",
                dp.zth,
                "ACK",
            );
        }
        let (entry, total, bytes, _) = counted("10 ACKs");
        assert_eq!(
            (entry, total),
            (1, 11),
            "10 ACKs pending, the SYN in the entry"
        );
        assert_eq!(bytes, syn_len + 10 * len, "bytes after 10 ACKs");
        for _ in 0..60 {
            dp.out(&seg(ACK));
        }
        let (entry, total, bytes, _) = counted("70 ACKs");
        assert_eq!((entry, total), (65, 71), "64 flushed, 6 pending");
        assert_eq!(bytes, syn_len + 70 * len, "bytes after 70 ACKs");
        // Another connection in between, whatever slot it takes.
        let other = ((v4(WL), 40001), (v4(REMOTE), 8080));
        let oseg = |flags: u8| Frame::tcp(other.0 .0, other.1 .0, other.0 .1, other.1 .1, flags);
        dp.out(&oseg(SYN));
        for _ in 0..5 {
            dp.out(&oseg(ACK));
            dp.out(&seg(ACK));
        }
        let (_, total, _, _) = counted("interleaved");
        assert_eq!(total, 76, "every packet of both connections counted once");
        let o = dp.conn_entry(other.0, other.1).expect("other entry");
        assert_eq!(
            o.packets_from + dp.pending_from(other.0, other.1).0,
            6,
            "the other one"
        );
        // FIN: everything into the entry, and the entry's own path after.
        dp.out(&seg(ACK | FIN));
        let (entry, total, bytes, flags) = counted("FIN");
        assert_eq!((entry, total), (77, 77), "FIN flushes");
        assert_eq!(bytes, syn_len + 76 * len, "bytes after FIN");
        assert!(flags & FIN != 0, "FIN recorded: {flags:#x}");
        dp.out(&seg(ACK));
        let (entry, total, _, _) = counted("after FIN");
        assert_eq!(
            (entry, total),
            (78, 78),
            "a closing connection is not pending"
        );
        // Pending counts of a deleted entry never reach a new connection
        // on the same tuple.
        let (w2, p2) = ((v4(WL), 40002), (v4(REMOTE), 8080));
        let s2 = |flags: u8| Frame::tcp(w2.0, p2.0, w2.1, p2.1, flags);
        dp.out(&s2(SYN));
        for _ in 0..5 {
            dp.out(&s2(ACK));
        }
        assert_eq!(dp.pending_from(w2, p2).0, 5, "pending before the delete");
        dp.delete_conn(w2, p2);
        dp.out(&s2(SYN));
        let e = dp.conn_entry(w2, p2).expect("new entry");
        assert_eq!(
            (e.packets_from, dp.pending_from(w2, p2).0),
            (1, 0),
            "the new connection has its SYN only"
        );
    });
}
