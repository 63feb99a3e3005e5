// SPDX-License-Identifier: Apache-2.0
//! Datapath verdict tests: each program runs on crafted frames with
//! BPF_PROG_TEST_RUN, and the verdict, the redirect target and the reason
//! (from the trace event the program emits) are checked. Every parser edge
//! a hostile workload or uplink host can produce is a case here: IPv4
//! options, IPv6 extension-header chains, each kind of fragment, truncated
//! headers, VLAN tags, spoofed sources, GSO-sized packets.
//!
//! The programs are loaded unpinned in a network namespace of the test
//! thread's own, with veths standing in for the node's devices.

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
    __sk_buff, ztr_config, ztr_config_flags as F, ztr_ct_entry, ztr_ct_key, ztr_endpoint,
    ztr_endpoint_kind as K, ztr_event, ztr_iface_flag,
};
use ztredir::dataplane::skel::{ZtredirSkel, ZtredirSkelBuilder};
use ztredir::dataplane::state::to_addr;
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
    _dns: UdpSocket,
}

impl Dp {
    /// Must run on a thread of its own: it moves that thread to a new
    /// network namespace, which goes away with the thread.
    fn new(conntrack: bool, capture_dns: bool) -> Dp {
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
        let mut flags = F::ZTR_CFG_ENABLED.0 | F::ZTR_CFG_TRACE.0;
        if capture_dns {
            flags |= F::ZTR_CFG_CAPTURE_DNS.0;
        }
        let mut cfg = ztr_config {
            flags,
            host_ifindex: zth,
            pod_ifindex: ztp,
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
        skel.maps
            .ztr_config
            .update(&0u32.to_ne_bytes(), bytes_of(&cfg), MapFlags::ANY)
            .expect("config");
        let put = |ip: IpAddr, kind: u32, ifindex: u32| {
            let ep = ztr_endpoint { kind, ifindex };
            skel.maps
                .ztr_endpoints
                .update(bytes_of(&to_addr(&ip)), bytes_of(&ep), MapFlags::ANY)
                .expect("endpoint");
        };
        put(v4(WL), K::ZTR_EP_WORKLOAD.0, wl);
        put(v6(WL6), K::ZTR_EP_WORKLOAD.0, wl);
        put(v4(WL2), K::ZTR_EP_WORKLOAD.0, wl2);
        put(v6(WL2_6), K::ZTR_EP_WORKLOAD.0, wl2);
        put(v4(ZT), K::ZTR_EP_ZTUNNEL.0, 0);
        put(v6(ZT6), K::ZTR_EP_ZTUNNEL.0, 0);
        put(v4(HOST), K::ZTR_EP_HOST.0, 0);
        put(v6(HOST6), K::ZTR_EP_HOST.0, 0);
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
        // ztunnel's listeners, for the SYNs steered in its netns.
        let mut listeners = Vec::new();
        for port in [15001, 15006, 15008, 15053] {
            listeners.push(TcpListener::bind(("0.0.0.0", port)).expect("listen v4"));
            listeners.push(TcpListener::bind(("::1", port)).expect("listen v6"));
        }
        let dns = UdpSocket::bind(("0.0.0.0", 15053)).expect("DNS socket");
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
            _listeners: listeners,
            _dns: dns,
        }
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
        let progs = &self.skel.progs;
        let prog: &ProgramImpl<'_> = match hook {
            Hook::WorkloadOut => &progs.ztr_workload_out,
            Hook::WorkloadIn => &progs.ztr_workload_in,
            Hook::ZtunnelHost => &progs.ztr_ztunnel_host,
            Hook::ZtunnelPod => &progs.ztr_ztunnel_pod,
        };
        // Bytes, not a struct: padding must be zero too, or the kernel
        // refuses the context.
        let mut ctx = vec![0u8; std::mem::size_of::<__sk_buff>()];
        let mut set = |at: usize, v: u32| ctx[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        set(std::mem::offset_of!(__sk_buff, ifindex), dev);
        set(std::mem::offset_of!(__sk_buff, ingress_ifindex), ingress);
        if gso > 0 {
            set(std::mem::offset_of!(__sk_buff, gso_size), gso);
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
            "test run of {hook:?} on {} bytes (dev {dev}, ingress {ingress}): {}",
            data.len(),
            std::io::Error::last_os_error()
        );
        self.ring
            .poll(Duration::from_millis(0))
            .expect("poll ring buffer");
        let events = self.events.borrow();
        assert_eq!(events.len(), 1, "{hook:?}: one trace event per run");
        let e = events[0];
        assert_eq!(e.verdict, opts.retval as i32, "{hook:?}: event verdict");
        Verdict {
            ret: opts.retval as i32,
            reason: reason_name(e.reason as u32),
            target: e.target,
            mark: {
                let at = std::mem::offset_of!(__sk_buff, mark);
                u32::from_ne_bytes(ctx[at..at + 4].try_into().unwrap())
            },
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
