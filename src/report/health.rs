// SPDX-License-Identifier: Apache-2.0
//! One health model: what is right and wrong with the node, computed once
//! from the pinned state and the live system. `status` shows what is not
//! right as warnings; `doctor` shows every finding as a check, with its
//! fix. A new check is added here and both show it.

use anyhow::Result;
use serde::Serialize;

use crate::ctx::Ctx;
use crate::dataplane::hooks::{
    HookState, Target, WORKLOAD_HOOKS, ZTUNNEL_HOST_HOOKS, ZTUNNEL_POD_HOOKS,
};
use crate::dataplane::netlink::Netlink;
use crate::dataplane::netns::{sysctl_get, NetNs};
use crate::dataplane::skel::types::{ztr_config, ztr_config_flags, ztr_iface};
use crate::dataplane::state::{self, Role, State};
use crate::node::ztunnel::{self, mode_from_raw};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Pass,
    Warn,
    Fail,
    Skip,
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Level::Pass => "pass",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
            Level::Skip => "skip",
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub name: String,
    pub result: Level,
    pub detail: String,
    /// What to do about a failure or warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    /// The line `status` shows for it.
    pub fn warning(&self) -> String {
        match &self.fix {
            Some(fix) => format!("{}: {}; fix: {fix}", self.name, self.detail),
            None => format!("{}: {}", self.name, self.detail),
        }
    }

    pub fn is_problem(&self) -> bool {
        matches!(self.result, Level::Warn | Level::Fail)
    }
}

/// Findings, in the order they were found.
#[derive(Debug, Default)]
pub struct Findings(pub Vec<Finding>);

impl Findings {
    pub fn add(&mut self, name: impl Into<String>, result: Level, detail: impl Into<String>) {
        self.0.push(Finding {
            name: name.into(),
            result,
            detail: detail.into(),
            fix: None,
        });
    }
    pub fn fix(
        &mut self,
        name: impl Into<String>,
        result: Level,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.0.push(Finding {
            name: name.into(),
            result,
            detail: detail.into(),
            fix: Some(fix.into()),
        });
    }
    pub fn fail(
        &mut self,
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.fix(name, Level::Fail, detail, fix);
    }
    pub fn check(
        &mut self,
        name: impl Into<String>,
        ok: bool,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) {
        if ok {
            self.add(name, Level::Pass, detail);
        } else {
            self.fail(name, detail, fix);
        }
    }
}

/// An interface of the pinned state, as the system has it now.
#[derive(Debug, Clone)]
pub struct IfaceHealth {
    pub ifindex: u32,
    pub entry: ztr_iface,
    pub role: Role,
    pub name: String,
    /// Where it lives: "node", or ztunnel's netns.
    pub netns: String,
    /// Still there under its name (false also when its netns is gone).
    pub present: bool,
    pub hooks: Vec<HookState>,
}

/// The node's health: its interfaces and every finding about it.
#[derive(Debug, Default)]
pub struct Health {
    pub ifaces: Vec<IfaceHealth>,
    pub findings: Findings,
}

/// Everything checked about the pinned state (None: nothing pinned) and
/// the system around it. Kernel features are `doctor`'s alone.
pub fn inspect(ctx: &Ctx, st: Option<&State>) -> Result<Health> {
    let mut h = Health::default();
    pin_dir(ctx, &mut h.findings);
    let Some(st) = st else {
        h.findings.add(
            "ztunnel",
            Level::Skip,
            "nothing configured in this pin directory",
        );
        return Ok(h);
    };
    version(ctx, &mut h.findings)?;
    trace(ctx, st, &mut h.findings)?;
    let cfg = st.ztunnel()?;
    let zt_ns = cfg.as_ref().and_then(ztunnel::open_netns);
    h.ifaces = ifaces(ctx, st, cfg.as_ref(), zt_ns.as_ref())?;
    let in_pod = cfg
        .as_ref()
        .is_some_and(|c| c.flags & ztr_config_flags::ZTR_CFG_INPOD.0 != 0);
    let pods = crate::node::inpod::pods(st)?;
    match &cfg {
        Some(cfg) if in_pod => {
            h.findings
                .add("ztunnel", Level::Pass, "in-pod: listens in each workload's netns");
            for pod in &pods {
                pod_checks(ctx, cfg, pod, &mut h.findings)?;
            }
        }
        Some(cfg) => ztunnel_checks(ctx, cfg, zt_ns.as_ref(), &mut h.findings)?,
        None if !pods.is_empty() => h.findings.fail(
            "ztunnel",
            format!(
                "not configured, and {} in-pod workload(s) attached: their captured traffic is dropped",
                pods.len()
            ),
            "ztredir ztunnel set --in-pod",
        ),
        None => {
            let n = h.ifaces.iter().filter(|i| i.role == Role::Workload).count();
            if n > 0 {
                h.findings.fail(
                    "ztunnel",
                    format!("not configured, and {n} workload interface(s) attached: their captured traffic is dropped"),
                    "ztredir ztunnel set --iface HOST_VETH --netns NETNS",
                );
            } else {
                h.findings.add("ztunnel", Level::Skip, "not configured");
            }
        }
    }
    attachments(&h.ifaces, &mut h.findings);
    drops(st, &mut h.findings)?;
    Ok(h)
}

/// Whether the pinned state is this binary's: after a new ztredir is
/// installed the node keeps running the old programs until `upgrade`.
fn version(ctx: &Ctx, f: &mut Findings) -> Result<()> {
    use crate::dataplane::schema::VERSION;
    let Some(p) = crate::dataplane::schema::inspect(&ctx.pins)? else {
        return Ok(());
    };
    f.check(
        "pinned version",
        p.current,
        match p.current {
            true => format!("the pinned state is ztredir {VERSION}'s, as this binary"),
            false => format!(
                "the pinned state was made by ztredir {}, this binary is {VERSION}: the node runs the old programs and changes are refused",
                p.version
            ),
        },
        "ztredir upgrade",
    );
    Ok(())
}

fn pin_dir(ctx: &Ctx, f: &mut Findings) {
    let root = &ctx.pins.root;
    match ctx.pins.unsafe_reason() {
        None => f.add(
            "pin dir permissions",
            Level::Pass,
            format!(
                "{} and the directories above it can be changed by root only",
                root.display()
            ),
        ),
        Some(why) => f.fail(
            "pin dir permissions",
            format!("{why}: others can unpin the links, which detaches capture"),
            format!(
                "find out who made it, then `chown root:root DIR && chmod 0700 DIR` for the directory named (ztredir creates {} and its subdirectories 0700)",
                root.display()
            ),
        ),
    }
}

fn trace(ctx: &Ctx, st: &State, f: &mut Findings) -> Result<()> {
    let trace = crate::report::observe::trace_state(&ctx.pins, st)?;
    if trace.stale() {
        f.fail(
            "trace flag",
            trace.stale_message(),
            crate::report::observe::TRACE_FIX,
        );
    } else if trace.on {
        let pids: Vec<String> = trace.pids.iter().map(|p| p.to_string()).collect();
        f.add(
            "trace flag",
            Level::Pass,
            format!("on: traced by pid {}", pids.join(", ")),
        );
    } else {
        f.add("trace flag", Level::Pass, "off");
    }
    Ok(())
}

/// Every interface in the pinned state, looked up in the system.
fn ifaces(
    ctx: &Ctx,
    st: &State,
    cfg: Option<&ztr_config>,
    zt_ns: Option<&NetNs>,
) -> Result<Vec<IfaceHealth>> {
    let mut out = Vec::new();
    for (key, entry) in st.ifaces()? {
        let role = Role::from_raw(entry.role).unwrap_or(Role::Workload);
        let name = state::from_cstr(&entry.name);
        let ifindex = key as u32;
        let mode = mode_from_raw(entry.mode);
        let (hooks, netns) = match role {
            Role::Workload => (WORKLOAD_HOOKS, "node".to_string()),
            Role::ZtunnelHost => (ZTUNNEL_HOST_HOOKS, "node".to_string()),
            Role::ZtunnelPod => (
                ZTUNNEL_POD_HOOKS,
                cfg.map(|c| state::from_cstr(&c.netns)).unwrap_or_default(),
            ),
        };
        let t = Target {
            name: &name,
            ifindex,
            hooks,
            link_prefix: crate::dataplane::hooks::link_prefix(role, ifindex),
            netns: (role == Role::ZtunnelPod).then_some(netns.as_str()),
        };
        let look = |nl: &Netlink| -> Result<(bool, Vec<HookState>)> {
            let present = nl.link_by_index(ifindex)?.is_some_and(|l| l.name == name);
            Ok((present, t.hook_states(&ctx.pins, mode)))
        };
        let (present, hooks) = match (role, zt_ns) {
            (Role::ZtunnelPod, Some(ns)) => ns.run(|| look(&Netlink::new()?))?,
            (Role::ZtunnelPod, None) => (false, t.hook_states(&ctx.pins, mode)),
            _ => look(&ctx.nl)?,
        };
        out.push(IfaceHealth {
            ifindex,
            entry,
            role,
            name,
            netns,
            present,
            hooks,
        });
    }
    Ok(out)
}

/// Every interface still there, with every hook attached.
fn attachments(ifaces: &[IfaceHealth], f: &mut Findings) {
    for i in ifaces {
        let name = &i.name;
        let check = format!(
            "{} {name} attached ({})",
            i.role.name(),
            mode_from_raw(i.entry.mode).name()
        );
        let fix = match i.role {
            Role::Workload => {
                format!("ztredir attach {name} (or ztredir detach {name} if it is gone)")
            }
            _ => "ztredir ztunnel set ... again".into(),
        };
        if !i.present {
            f.fail(
                check,
                format!("interface {name} (ifindex {}) is gone", i.ifindex),
                fix,
            );
            continue;
        }
        let missing: Vec<String> = i
            .hooks
            .iter()
            .filter(|h| h.prog_id.is_none())
            .map(|h| format!("{} {}", h.hook.name(), h.program))
            .collect();
        f.check(
            check,
            missing.is_empty(),
            if missing.is_empty() {
                format!("{} hook(s) run ztredir's programs", i.hooks.len())
            } else {
                format!("not attached: {}", missing.join(", "))
            },
            fix,
        );
    }
}

/// Drops the counters say happened: each names its cause.
fn drops(st: &State, f: &mut Findings) -> Result<()> {
    let totals = crate::report::observe::totals(&crate::report::observe::stats(st, None)?);
    let count = |name: &str| {
        totals
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, c)| *c)
    };
    for (reason, why, fix) in [
        (
            "drop-no-listener",
            "packets dropped because ztunnel was not listening on their port",
            "is ztunnel running? (see the listener checks)",
        ),
        (
            "drop-no-ztunnel",
            "captured packets dropped while no ztunnel was configured",
            "ztredir ztunnel set ...",
        ),
    ] {
        let n = count(reason);
        if n > 0 {
            f.fix(
                format!("drops ({reason})"),
                Level::Warn,
                format!("{n} {why} ({reason})"),
                fix,
            );
        }
    }
    Ok(())
}

fn ztunnel_checks(ctx: &Ctx, cfg: &ztr_config, ns: Option<&NetNs>, f: &mut Findings) -> Result<()> {
    rp_filter(ctx, cfg, f);
    let netns = state::from_cstr(&cfg.netns);
    let again = "ztredir ztunnel set ... (again) or apply the node file";
    let Some(ns) = ns else {
        f.fail(
            "ztunnel netns",
            format!("{netns} is gone or was replaced: captured traffic is being dropped"),
            again,
        );
        return Ok(());
    };
    f.add("ztunnel netns", Level::Pass, netns.clone());
    let enter = format!("nsenter --net={netns}");
    let (pr, fwd4, fwd6, listeners) = ns.run(|| {
        Ok((
            Netlink::new()?.policy_routing()?,
            sysctl_get("net/ipv4/ip_forward").unwrap_or_default(),
            sysctl_get("net/ipv6/conf/all/forwarding").unwrap_or_default(),
            Listeners::read(),
        ))
    })?;
    f.check(
        format!("policy routing in {netns}"),
        pr.complete(),
        format!(
            "fwmark 0x400/0xfff rule v4 {} v6 {}, local default route in table 100 v4 {} v6 {}",
            pr.rule[0], pr.rule[1], pr.route[0], pr.route[1]
        ),
        format!("{again}; by hand: {enter} ip rule add fwmark 0x400/0xfff lookup 100; {enter} ip route add local 0.0.0.0/0 dev lo table 100 (and -6 with ::/0)"),
    );
    f.check(
        format!("forwarding off in {netns}"),
        fwd4 == "0" && fwd6 == "0",
        format!("ipv4 ip_forward={fwd4}, ipv6 forwarding={fwd6} (on lets captured traffic bypass ztunnel)"),
        format!("{enter} sysctl -w net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0"),
    );
    listener_checks(cfg, &netns, &listeners, f);
    let lookup = crate::dataplane::attach::link_state(&ctx.pins.link(ztunnel::LOOKUP_LINK));
    f.check(
        "sk_lookup program on ztunnel netns",
        lookup.is_some_and(|l| l.attached),
        match lookup {
            Some(l) if l.attached => format!("link {} attached", l.link_id),
            _ => "not attached".into(),
        },
        again,
    );
    Ok(())
}

/// One in-pod workload: its netns, programs, policy routing, lo's sysctls
/// and the proxy's listeners there.
fn pod_checks(
    ctx: &Ctx,
    cfg: &ztr_config,
    pod: &crate::node::inpod::Pod,
    f: &mut Findings,
) -> Result<()> {
    let who = format!("in-pod {}", pod.workload());
    let again = format!(
        "ztredir attach --netns {} --workload {} --service-account {}",
        pod.netns,
        pod.workload(),
        pod.service_account
    );
    if !crate::node::inpod::netns_present(pod) {
        f.fail(
            format!("{who}: netns"),
            format!("{} is gone or was replaced", pod.netns),
            format!("ztredir detach --netns {}", pod.netns),
        );
        return Ok(());
    }
    f.check(
        format!("{who}: programs"),
        crate::node::inpod::attached(&ctx.pins, pod),
        format!("{} and lo in netns {}, sk_lookup", pod.iface, pod.netns),
        again.clone(),
    );
    let ns = NetNs::open(&pod.netns)?;
    let (pr, accept_local, localnet, listeners) = ns.run(|| {
        Ok((
            Netlink::new()?.policy_routing()?,
            sysctl_get("net/ipv4/conf/lo/accept_local").unwrap_or_default(),
            sysctl_get("net/ipv4/conf/lo/route_localnet").unwrap_or_default(),
            Listeners::read(),
        ))
    })?;
    f.check(
        format!("{who}: policy routing"),
        pr.complete(),
        format!(
            "fwmark 0x400/0xfff rule v4 {} v6 {}, local default route in table 100 v4 {} v6 {}",
            pr.rule[0], pr.rule[1], pr.route[0], pr.route[1]
        ),
        again.clone(),
    );
    f.check(
        format!("{who}: lo sysctls"),
        accept_local == "1" && localnet == "1",
        format!("accept_local={accept_local} route_localnet={localnet}"),
        again,
    );
    for (what, port) in [
        ("outbound", cfg.port_outbound),
        ("inbound plaintext", cfg.port_inbound),
        ("inbound HBONE", cfg.port_hbone),
    ] {
        let name = format!("{who}: ztunnel listens on tcp/{port} ({what})");
        match listeners.find(port, false) {
            Some(Bound::Wildcard) => f.add(name, Level::Pass, "bound to the wildcard address"),
            Some(Bound::Specific(a)) => f.fail(
                name,
                format!("bound to {a} only"),
                "ztunnel must bind [::] with IP_TRANSPARENT in the workload's netns",
            ),
            None => f.fail(
                name,
                format!("nothing listens on tcp port {port} in {}", pod.netns),
                "is ztunnel running in shared mode, connected to `ztredir zds`? Until it listens, captured connections are dropped",
            ),
        }
    }
    Ok(())
}

/// rp_filter on ztunnel's host veth: ztunnel sends with pod addresses.
fn rp_filter(ctx: &Ctx, cfg: &ztr_config, f: &mut Findings) {
    let host = state::from_cstr(&cfg.host_iface);
    let read = |k: &str| sysctl_get(k).ok().and_then(|v| v.parse::<u8>().ok());
    let all = read("net/ipv4/conf/all/rp_filter").unwrap_or(0);
    let Some(dev) = read(&format!("net/ipv4/conf/{host}/rp_filter")) else {
        f.fail(
            format!("rp_filter on {host}"),
            format!("{host} is gone"),
            "ztredir ztunnel set ... (again) or apply the node file",
        );
        return;
    };
    let eff = all.max(dev);
    let has_v4 = ctx
        .nl
        .addresses(cfg.host_ifindex)
        .map(|a| a.iter().any(|i| i.is_ipv4()))
        .unwrap_or(false);
    let want = if has_v4 { 2 } else { 0 };
    let mut fix = format!("sysctl -w net.ipv4.conf.{host}.rp_filter={want}");
    if all > want {
        fix += &format!(" net.ipv4.conf.all.rp_filter={want}");
    }
    f.check(
        format!("rp_filter on {host}"),
        eff == 0 || (eff == 2 && has_v4),
        format!(
            "effective {eff} (all={all}, {host}={dev}){}",
            if has_v4 { "" } else { ", no IPv4 address" }
        ),
        fix,
    );
}

fn listener_checks(cfg: &ztr_config, netns: &str, listeners: &Listeners, f: &mut Findings) {
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
            Some(Bound::Wildcard) => f.add(name, Level::Pass, "bound to the wildcard address"),
            Some(Bound::Specific(a)) => f.fail(
                name,
                format!("bound to {a} only"),
                "bind ztunnel's listener to the wildcard address (0.0.0.0 or [::]) with IP_TRANSPARENT",
            ),
            None => f.fail(
                name,
                format!("nothing listens on {proto} port {port} in {netns}"),
                "start ztunnel (or point --*-port at the ports it listens on); until then captured connections are dropped",
            ),
        }
    }
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
