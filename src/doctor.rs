// SPDX-License-Identifier: Apache-2.0
//! `doctor`: checks that the kernel has what the programs need and that the
//! node is set up so that redirection works, each with a fix on failure.

use std::fmt;
use std::mem::MaybeUninit;
use std::path::Path;

use anyhow::Result;
use libbpf_rs::libbpf_sys as sys;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use serde::Serialize;

use crate::ctx::Ctx;
use crate::iface::{Target, ZTUNNEL_HOST_HOOKS, ZTUNNEL_POD_HOOKS};
use crate::netlink::Netlink;
use crate::netns::{sysctl_get, NetNs};
use crate::skel::types::{ztr_config, ztr_config_flags};
use crate::state::{self, Role, State};
use crate::ztunnel::{self, mode_from_raw};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Warn,
    Fail,
    Skip,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Pass => "pass",
            Outcome::Warn => "warn",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "skip",
        })
    }
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub result: Outcome,
    pub detail: String,
    /// What to do about a failure or warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl Report {
    fn add(&mut self, name: impl Into<String>, result: Outcome, detail: impl Into<String>) {
        self.checks.push(Check {
            name: name.into(),
            result,
            detail: detail.into(),
            fix: None,
        });
    }
    fn fail(&mut self, name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) {
        self.fix(name, Outcome::Fail, detail, fix);
    }
    fn fix(
        &mut self,
        name: impl Into<String>,
        result: Outcome,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.checks.push(Check {
            name: name.into(),
            result,
            detail: detail.into(),
            fix: Some(fix.into()),
        });
    }
    fn pass_or_fail(
        &mut self,
        name: impl Into<String>,
        ok: bool,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) {
        if ok {
            self.add(name, Outcome::Pass, detail);
        } else {
            self.fail(name, detail, fix);
        }
    }
}

pub fn run(ctx: &Ctx) -> Result<Report> {
    let mut r = Report::default();
    kernel(ctx, &mut r);
    node(ctx, &mut r)?;
    for c in &r.checks {
        match c.result {
            Outcome::Pass | Outcome::Warn => r.passed += 1,
            Outcome::Fail => r.failed += 1,
            Outcome::Skip => r.skipped += 1,
        }
    }
    Ok(r)
}

fn kernel(ctx: &Ctx, r: &mut Report) {
    let btf = Path::new("/sys/kernel/btf/vmlinux");
    r.pass_or_fail(
        "kernel BTF",
        btf.exists(),
        if btf.exists() {
            "/sys/kernel/btf/vmlinux present"
        } else {
            "/sys/kernel/btf/vmlinux missing"
        },
        "use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
    );

    let probe = |t: sys::bpf_prog_type, f: sys::bpf_func_id| unsafe {
        sys::libbpf_probe_bpf_helper(t, f, std::ptr::null()) == 1
    };
    let sk_lookup = unsafe {
        sys::libbpf_probe_bpf_prog_type(sys::BPF_PROG_TYPE_SK_LOOKUP, std::ptr::null()) == 1
    };
    let assign = sk_lookup && probe(sys::BPF_PROG_TYPE_SK_LOOKUP, sys::BPF_FUNC_sk_assign);
    let peer = probe(sys::BPF_PROG_TYPE_SCHED_CLS, sys::BPF_FUNC_redirect_peer);
    r.pass_or_fail(
        "kernel socket assignment",
        assign && peer,
        format!("sk_lookup programs {sk_lookup}, bpf_sk_assign {assign}, bpf_redirect_peer {peer}"),
        "use Linux 5.10 or later",
    );

    if crate::attach::tcx_supported(1) {
        r.add("kernel TCX", Outcome::Pass, "TCX links available");
    } else {
        r.fix(
            "kernel TCX",
            Outcome::Warn,
            "no TCX: classic tc (clsact + cls_bpf) is used",
            "Linux 6.6 or later has TCX; classic tc works meanwhile",
        );
    }

    let verifier = {
        let mut storage = MaybeUninit::uninit();
        crate::skel::ZtredirSkelBuilder::default()
            .open(&mut storage)
            .and_then(|o| o.load())
            .map(drop)
    };
    match verifier {
        Ok(()) => r.add(
            "programs load",
            Outcome::Pass,
            "all programs pass the verifier",
        ),
        Err(e) => r.fail(
            "programs load",
            format!("{e}"),
            "run with -v to see the verifier log",
        ),
    }

    let root = &ctx.pins.root;
    let (dir, on_bpffs) = ctx.pins.bpffs_base();
    if on_bpffs {
        r.add(
            "bpffs",
            Outcome::Pass,
            format!("{} is on bpffs", dir.display()),
        );
    } else if root.starts_with("/sys/fs/bpf") {
        r.add(
            "bpffs",
            Outcome::Pass,
            "/sys/fs/bpf not mounted yet: ztredir mounts it on the first change",
        );
    } else {
        r.fail(
            "bpffs",
            format!("{} is not on a bpf filesystem", dir.display()),
            format!("mount -t bpf bpf {}", dir.display()),
        );
    }

    match ctx.pins.unsafe_reason() {
        None => r.add(
            "pin dir permissions",
            Outcome::Pass,
            format!(
                "{} and the directories above it can be changed by root only",
                root.display()
            ),
        ),
        Some(why) => r.fail(
            "pin dir permissions",
            format!("{why}: others can unpin the links, which detaches capture"),
            format!(
                "find out who made it, then `chown root:root DIR && chmod 0700 DIR` for the directory named (ztredir creates {} and its subdirectories 0700)",
                root.display()
            ),
        ),
    }
}

fn node(ctx: &Ctx, r: &mut Report) -> Result<()> {
    if !ctx.pins.bpffs_base().1 {
        // The bpffs check above says what is wrong.
        r.add("ztunnel", Outcome::Skip, "no pinned state to check");
        return Ok(());
    }
    let Some(st) = ctx.read()? else {
        r.add(
            "ztunnel",
            Outcome::Skip,
            "nothing configured in this pin directory",
        );
        return Ok(());
    };
    let trace = crate::observe::trace_state(&ctx.pins, &st)?;
    if trace.stale() {
        r.fail(
            "trace flag",
            trace.stale_message(),
            crate::observe::TRACE_FIX,
        );
    } else if trace.on {
        let pids: Vec<String> = trace.pids.iter().map(|p| p.to_string()).collect();
        r.add(
            "trace flag",
            Outcome::Pass,
            format!("on: traced by pid {}", pids.join(", ")),
        );
    } else {
        r.add("trace flag", Outcome::Pass, "off");
    }
    let cfg = st.ztunnel()?;
    match &cfg {
        Some(cfg) => ztunnel_checks(ctx, &st, cfg, r)?,
        None => {
            let n = st
                .ifaces()?
                .iter()
                .filter(|(_, i)| i.role == Role::Workload.raw())
                .count();
            if n > 0 {
                r.fail(
                    "ztunnel",
                    format!("not configured, and {n} workload interface(s) attached: their captured traffic is dropped"),
                    "ztredir ztunnel set --iface HOST_VETH --netns NETNS",
                );
            } else {
                r.add("ztunnel", Outcome::Skip, "not configured");
            }
        }
    }
    attachments(ctx, &st, cfg.as_ref(), r)
}

fn ztunnel_checks(ctx: &Ctx, st: &State, cfg: &ztr_config, r: &mut Report) -> Result<()> {
    let host = state::from_cstr(&cfg.host_iface);
    let netns = state::from_cstr(&cfg.netns);
    let again = "ztredir ztunnel set ... (again) or apply the node file";

    // rp_filter on ztunnel's host veth: ztunnel sends with pod addresses.
    let read = |k: &str| sysctl_get(k).ok().and_then(|v| v.parse::<u8>().ok());
    let all = read("net/ipv4/conf/all/rp_filter").unwrap_or(0);
    match read(&format!("net/ipv4/conf/{host}/rp_filter")) {
        Some(dev) => {
            let eff = all.max(dev);
            let has_v4 = ctx
                .nl
                .addresses(cfg.host_ifindex)
                .map(|a| a.iter().any(|i| i.is_ipv4()))
                .unwrap_or(false);
            let ok = eff == 0 || (eff == 2 && has_v4);
            let want = if has_v4 { 2 } else { 0 };
            let mut fix = format!("sysctl -w net.ipv4.conf.{host}.rp_filter={want}");
            if all > want {
                fix += &format!(" net.ipv4.conf.all.rp_filter={want}");
            }
            r.pass_or_fail(
                format!("rp_filter on {host}"),
                ok,
                format!(
                    "effective {eff} (all={all}, {host}={dev}){}",
                    if has_v4 { "" } else { ", no IPv4 address" }
                ),
                fix,
            );
        }
        None => r.fail(
            format!("rp_filter on {host}"),
            format!("{host} is gone"),
            again,
        ),
    }

    let Some(ns) = ztunnel::open_netns(cfg) else {
        r.fail(
            "ztunnel netns",
            format!("{netns} is gone or was replaced"),
            again,
        );
        return Ok(());
    };
    r.add("ztunnel netns", Outcome::Pass, netns.clone());
    let enter = format!("nsenter --net={netns}");
    let (pr, fwd4, fwd6, listeners) = ns.run(|| {
        Ok((
            Netlink::new()?.policy_routing()?,
            sysctl_get("net/ipv4/ip_forward").unwrap_or_default(),
            sysctl_get("net/ipv6/conf/all/forwarding").unwrap_or_default(),
            Listeners::read(),
        ))
    })?;
    r.pass_or_fail(
        format!("policy routing in {netns}"),
        pr.complete(),
        format!(
            "fwmark 0x400/0xfff rule v4 {} v6 {}, local default route in table 100 v4 {} v6 {}",
            pr.rule[0], pr.rule[1], pr.route[0], pr.route[1]
        ),
        format!("{again}; by hand: {enter} ip rule add fwmark 0x400/0xfff lookup 100; {enter} ip route add local 0.0.0.0/0 dev lo table 100 (and -6 with ::/0)"),
    );
    r.pass_or_fail(
        format!("forwarding off in {netns}"),
        fwd4 == "0" && fwd6 == "0",
        format!("ipv4 ip_forward={fwd4}, ipv6 forwarding={fwd6} (on lets captured traffic bypass ztunnel)"),
        format!("{enter} sysctl -w net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0"),
    );
    let mut ports = vec![
        ("outbound", cfg.port_outbound, false),
        ("inbound plaintext", cfg.port_inbound, false),
        ("inbound HBONE", cfg.port_hbone, false),
    ];
    if cfg.flags & ztr_config_flags::ZTR_CFG_CAPTURE_DNS.0 != 0 {
        ports.push(("DNS (TCP)", cfg.port_dns, false));
        ports.push(("DNS (UDP)", cfg.port_dns, true));
    }
    for (what, port, udp) in ports {
        let proto = if udp { "udp" } else { "tcp" };
        let name = format!("ztunnel listens on {proto}/{port} ({what})");
        match listeners.find(port, udp) {
            Some(Bound::Wildcard) => r.add(name, Outcome::Pass, "bound to the wildcard address"),
            Some(Bound::Specific(a)) => r.fail(
                name,
                format!("bound to {a} only"),
                "bind ztunnel's listener to the wildcard address (0.0.0.0 or [::]) with IP_TRANSPARENT",
            ),
            None => r.fail(
                name,
                format!("nothing listens on {proto} port {port} in {netns}"),
                "start ztunnel (or point --*-port at the ports it listens on); until then captured connections are dropped",
            ),
        }
    }
    let lookup = crate::attach::link_state(&ctx.pins.link(ztunnel::LOOKUP_LINK));
    r.pass_or_fail(
        "sk_lookup program on ztunnel netns",
        lookup.is_some_and(|l| l.attached),
        match lookup {
            Some(l) if l.attached => format!("link {} attached", l.link_id),
            _ => "not attached".into(),
        },
        again,
    );
    let _ = st;
    Ok(())
}

/// Every interface in the pinned state: still there, every hook attached.
fn attachments(ctx: &Ctx, st: &State, cfg: Option<&ztr_config>, r: &mut Report) -> Result<()> {
    let zt_ns: Option<NetNs> = cfg.and_then(ztunnel::open_netns);
    for (key, entry) in st.ifaces()? {
        let name = state::from_cstr(&entry.name);
        let ifindex = key as u32;
        let role = Role::from_raw(entry.role).unwrap_or(Role::Workload);
        let mode = mode_from_raw(entry.mode);
        let hooks = match role {
            Role::Workload => crate::iface::WORKLOAD_HOOKS,
            Role::ZtunnelHost => ZTUNNEL_HOST_HOOKS,
            Role::ZtunnelPod => ZTUNNEL_POD_HOOKS,
        };
        let t = Target {
            name: &name,
            ifindex,
            hooks,
            link_prefix: crate::iface::link_prefix(role, ifindex),
            netns: None,
        };
        let look = |nl: &Netlink| -> Result<(bool, Vec<crate::iface::HookState>)> {
            let present = nl.link_by_index(ifindex)?.is_some_and(|l| l.name == name);
            Ok((present, t.hook_states(&ctx.pins, mode)))
        };
        let (present, states) = if role == Role::ZtunnelPod {
            match &zt_ns {
                Some(ns) => ns.run(|| look(&Netlink::new()?))?,
                None => continue,
            }
        } else {
            look(&ctx.nl)?
        };
        let check = format!("{} {name} attached ({})", role.name(), mode.name());
        let fix = match role {
            Role::Workload => {
                format!("ztredir attach {name} (or ztredir detach {name} if it is gone)")
            }
            _ => "ztredir ztunnel set ... again".into(),
        };
        if !present {
            r.fail(
                check,
                format!("interface {name} (ifindex {ifindex}) is gone"),
                fix,
            );
            continue;
        }
        let missing: Vec<String> = states
            .iter()
            .filter(|h| h.prog_id.is_none())
            .map(|h| format!("{} {}", h.hook.name(), h.program))
            .collect();
        r.pass_or_fail(
            check,
            missing.is_empty(),
            if missing.is_empty() {
                format!("{} hook(s) run ztredir's programs", states.len())
            } else {
                format!("not attached: {}", missing.join(", "))
            },
            fix,
        );
    }
    Ok(())
}

enum Bound {
    Wildcard,
    Specific(String),
}

/// Listening sockets of the calling thread's netns, from /proc.
struct Listeners {
    tcp: Vec<(u16, bool, String)>,
    udp: Vec<(u16, bool, String)>,
}

impl Listeners {
    fn read() -> Listeners {
        // thread-self: the netns this thread entered, not the process's.
        let parse = |files: &[&str], want_state: &str| {
            let mut out = Vec::new();
            for f in files {
                let text = std::fs::read_to_string(format!("/proc/thread-self/net/{f}"))
                    .unwrap_or_default();
                for line in text.lines().skip(1) {
                    let cols: Vec<&str> = line.split_whitespace().collect();
                    if cols.len() < 4 || cols[3] != want_state {
                        continue;
                    }
                    let Some((addr, port)) = cols[1].split_once(':') else {
                        continue;
                    };
                    let Ok(port) = u16::from_str_radix(port, 16) else {
                        continue;
                    };
                    let wildcard = addr.chars().all(|c| c == '0');
                    out.push((port, wildcard, addr.to_string()));
                }
            }
            out
        };
        Listeners {
            // 0A is TCP_LISTEN; 07 is TCP_CLOSE, an unconnected UDP socket.
            tcp: parse(&["tcp", "tcp6"], "0A"),
            udp: parse(&["udp", "udp6"], "07"),
        }
    }

    fn find(&self, port: u16, udp: bool) -> Option<Bound> {
        let list = if udp { &self.udp } else { &self.tcp };
        let mut found = None;
        for (p, wildcard, addr) in list {
            if *p != port {
                continue;
            }
            if *wildcard {
                return Some(Bound::Wildcard);
            }
            found = Some(Bound::Specific(addr.clone()));
        }
        found
    }
}
