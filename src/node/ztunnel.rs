// SPDX-License-Identifier: Apache-2.0
//! `ztunnel set | clear | show`: where the node proxy is, its programs, its
//! netns' policy routing and sysctls, and the node's host IPs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};

use std::os::fd::AsRawFd;

use libbpf_rs::libbpf_sys as sys;

use crate::ctx::{Ctx, Outcome};
use crate::dataplane::attach::{self, Mode};
use crate::dataplane::bpf;
use crate::dataplane::hooks::{Target, ZTUNNEL_HOST_HOOKS, ZTUNNEL_POD_HOOKS};
use crate::dataplane::journal::Undo;
use crate::dataplane::netlink::{Link, Netlink};
use crate::dataplane::netns::{sysctl_get, NetNs};
use crate::dataplane::skel::types::{
    ztr_addr, ztr_config, ztr_config_flags, ztr_defaults as D, ztr_iface,
};
use crate::dataplane::state::{self, EndpointKind, Role, State, Txn};
use crate::error::usage;

pub const LOOKUP_LINK: &str = "ztunnel-lookup";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Ports {
    pub outbound: u16,
    pub inbound: u16,
    pub hbone: u16,
    pub dns: u16,
}

impl Ports {
    /// The ports a config steers to.
    pub fn of(cfg: &ztr_config) -> Ports {
        Ports {
            outbound: cfg.port_outbound,
            inbound: cfg.port_inbound,
            hbone: cfg.port_hbone,
            dns: cfg.port_dns,
        }
    }
}

impl Ports {
    /// ztunnel's ports, from the header the programs share.
    pub const DEFAULT: Ports = Ports {
        outbound: D::ZTR_PORT_OUTBOUND.0 as u16,
        inbound: D::ZTR_PORT_INBOUND.0 as u16,
        hbone: D::ZTR_PORT_HBONE.0 as u16,
        dns: D::ZTR_PORT_DNS.0 as u16,
    };
    /// Connection table entries unless told otherwise.
    pub const CONNTRACK_DEFAULT: u32 =
        crate::dataplane::skel::types::ztr_limits::ZTR_CONNS_DEFAULT.0;
}

impl Default for Ports {
    fn default() -> Ports {
        Ports::DEFAULT
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Shared (in-pod) mode: ztunnel listens in each workload's netns;
    /// iface, netns and pod_iface are then empty.
    pub in_pod: bool,
    pub iface: String,
    pub netns: String,
    pub pod_iface: Option<String>,
    pub host_ips: Vec<IpAddr>,
    pub capture_dns: bool,
    pub ports: Ports,
    /// Connection table entries; None turns tracking off.
    pub conntrack: Option<u32>,
    /// Attach mode; None: the invocation's (--attach-mode).
    pub mode: Option<Mode>,
}

/// Everything `set` found out before changing anything.
pub struct Plan {
    pub host: Link,
    pub pod: Link,
    pub ns: NetNs,
    pub zl: Netlink,
    pub ips: Vec<IpAddr>,
}

pub fn validate(ctx: &Ctx, st: Option<&State>, spec: &Spec) -> Result<Plan> {
    let (host, ns, zl, pod) = find_links(ctx, spec)?;
    if !ctx.force {
        check_foreign(ctx, spec, &host, &pod, &ns)?;
    }
    let ips = zl.addresses(pod.index)?;
    if ips.is_empty() {
        return Err(usage(format!(
            "interface {} in netns {} has no IP address",
            pod.name, spec.netns
        )));
    }
    check_ports(&spec.ports)?;
    for ip in &spec.host_ips {
        if ips.contains(ip) {
            return Err(usage(format!("host IP {ip} is one of ztunnel's addresses")));
        }
    }
    if let Some(st) = st {
        check_against_state(st, spec, &host, &ips)?;
    }
    Ok(Plan {
        host,
        pod,
        ns,
        zl,
        ips,
    })
}

/// ztunnel's host veth, its netns, and its end of the veth there.
fn find_links(ctx: &Ctx, spec: &Spec) -> Result<(Link, NetNs, Netlink, Link)> {
    let host = ctx
        .nl
        .link_by_name(&spec.iface)?
        .ok_or_else(|| usage(format!("interface {} not found", spec.iface)))?;
    if !host.is_veth || host.peer_index.is_none() || host.peer_netnsid.is_none() {
        return Err(usage(format!(
            "interface {} is not a veth with a peer in another netns",
            spec.iface
        )));
    }
    let ns = NetNs::open(&spec.netns)?;
    let zl = Netlink::in_netns(&ns)?;
    let pod = match &spec.pod_iface {
        Some(name) => zl.link_by_name(name)?.ok_or_else(|| {
            usage(format!(
                "interface {name} not found in netns {}",
                spec.netns
            ))
        })?,
        None => zl
            .link_by_index(host.peer_index.unwrap_or_default())?
            .filter(|l| l.peer_index == Some(host.index))
            .ok_or_else(|| {
                usage(format!(
                    "the peer of {} is not in netns {}",
                    spec.iface, spec.netns
                ))
            })?,
    };
    if pod.peer_index != Some(host.index) {
        return Err(usage(format!(
            "interface {} in netns {} is not the peer of {}",
            pod.name, spec.netns, spec.iface
        )));
    }
    Ok((host, ns, zl, pod))
}

/// Another ztredir instance's programs on ztunnel's hooks.
fn check_foreign(ctx: &Ctx, spec: &Spec, host: &Link, pod: &Link, ns: &NetNs) -> Result<()> {
    let host_t = host_target(&host.name, host.index);
    if let Some(f) = host_t.foreign(&ctx.pins) {
        return Err(f.error(&host.name));
    }
    let pod_t = pod_target(&pod.name, pod.index, &spec.netns);
    if let Some(f) = ns.run(|| Ok(pod_t.foreign(&ctx.pins)))? {
        return Err(f.error(&format!("{} in netns {}", pod.name, spec.netns)));
    }
    let own = crate::dataplane::bpf::own_ids(&ctx.pins);
    let lookup = attach::attached_progs(ns.file.as_raw_fd(), sys::BPF_SK_LOOKUP);
    if let Some(f) = crate::dataplane::hooks::foreign_among(&ctx.pins, &own, "sk_lookup", lookup) {
        return Err(f.error(&format!("netns {}", spec.netns)));
    }
    Ok(())
}

/// What `set --in-pod` checks before any change: an in-pod ztunnel names
/// no interface or netns, only its ports.
pub fn validate_in_pod(spec: &Spec) -> Result<()> {
    check_ports(&spec.ports)
}

fn check_ports(p: &Ports) -> Result<()> {
    let ports = [p.outbound, p.inbound, p.hbone, p.dns];
    if ports.contains(&0) {
        return Err(usage("ports must not be 0"));
    }
    for (i, a) in ports.iter().enumerate() {
        if ports[i + 1..].contains(a) {
            return Err(usage(format!("port {a} is given twice")));
        }
    }
    Ok(())
}

/// ztunnel's and the host's addresses, and its veth, must not be a
/// workload's.
fn check_against_state(st: &State, spec: &Spec, host: &Link, ips: &[IpAddr]) -> Result<()> {
    for ip in ips.iter().chain(&spec.host_ips) {
        if let Some(ep) = st
            .endpoint(ip)?
            .filter(|e| e.kind == EndpointKind::Workload)
        {
            return Err(usage(format!(
                "IP {ip} is already a workload address (ifindex {})",
                ep.ifindex
            )));
        }
    }
    if st
        .iface(state::node_key(host.index))?
        .is_some_and(|i| i.role == Role::Workload.raw())
    {
        return Err(usage(format!(
            "interface {} is attached as a workload",
            spec.iface
        )));
    }
    Ok(())
}

impl Plan {
    /// Where this ztunnel is: host ifindex, pod ifindex, netns inode.
    pub fn place(&self) -> (u32, u32, u64) {
        (self.host.index, self.pod.index, self.ns.inode)
    }
}

/// The spec that `set` was last given, read back from the pinned state.
pub fn current_spec(st: &State, cfg: &ztr_config) -> Result<Spec> {
    let host_ips = st
        .endpoints()?
        .into_iter()
        .filter(|e| e.kind == EndpointKind::Host)
        .map(|e| e.ip)
        .collect();
    let mode = st
        .iface(state::node_key(cfg.host_ifindex))?
        .map(|e| mode_from_raw(e.mode));
    let in_pod = cfg.flags & ztr_config_flags::ZTR_CFG_INPOD.0 != 0;
    Ok(Spec {
        in_pod,
        iface: state::from_cstr(&cfg.host_iface),
        netns: state::from_cstr(&cfg.netns),
        pod_iface: Some(state::from_cstr(&cfg.pod_iface)).filter(|_| !in_pod),
        host_ips,
        capture_dns: cfg.flags & ztr_config_flags::ZTR_CFG_CAPTURE_DNS.0 != 0,
        ports: Ports::of(cfg),
        conntrack: crate::report::observe::conn_table_size(st)?,
        mode,
    })
}

/// What `set` with `want` would change in the configured ztunnel, one
/// item per setting ("capture-dns false -> true").
pub fn diff(cfg: &ztr_config, have: &Spec, place: (u32, u32, u64), want: &Spec) -> Vec<String> {
    let mut out = Vec::new();
    if have.in_pod != want.in_pod {
        let name = |s: &Spec| if s.in_pod { "in-pod" } else { "node-level" };
        out.push(format!("mode {} -> {}", name(have), name(want)));
    } else if !want.in_pod && (cfg.host_ifindex, cfg.pod_ifindex, cfg.netns_inode) != place {
        out.push(format!(
            "moves from {} in netns {} to {} in netns {}",
            have.iface, have.netns, want.iface, want.netns
        ));
    }
    let sorted = |v: &[IpAddr]| {
        let mut v = v.to_vec();
        v.sort();
        v.dedup();
        v
    };
    let (a, b) = (sorted(&have.host_ips), sorted(&want.host_ips));
    if a != b {
        let list = |v: &[IpAddr]| {
            v.iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        out.push(format!("host-ips [{}] -> [{}]", list(&a), list(&b)));
    }
    if have.capture_dns != want.capture_dns {
        out.push(format!(
            "capture-dns {} -> {}",
            have.capture_dns, want.capture_dns
        ));
    }
    if have.ports != want.ports {
        out.push(format!("ports {:?} -> {:?}", have.ports, want.ports));
    }
    if have.conntrack != want.conntrack {
        let n = |c: Option<u32>| c.map_or("off".to_string(), |n| n.to_string());
        out.push(format!(
            "conntrack-size {} -> {}",
            n(have.conntrack),
            n(want.conntrack)
        ));
    }
    if let (Some(h), Some(w)) = (have.mode, want.mode) {
        if h != w {
            out.push(format!("attach mode {} -> {}", h.name(), w.name()));
        }
    }
    out
}

fn host_target<'a>(name: &'a str, ifindex: u32) -> Target<'a> {
    Target {
        name,
        ifindex,
        hooks: ZTUNNEL_HOST_HOOKS,
        link_prefix: crate::dataplane::hooks::link_prefix(Role::ZtunnelHost, ifindex),
        netns: None,
    }
}

fn pod_target<'a>(name: &'a str, ifindex: u32, netns: &'a str) -> Target<'a> {
    Target {
        name,
        ifindex,
        hooks: ZTUNNEL_POD_HOOKS,
        link_prefix: crate::dataplane::hooks::link_prefix(Role::ZtunnelPod, ifindex),
        netns: Some(netns),
    }
}

fn lookup_addr(ips: &[IpAddr], v6: bool) -> IpAddr {
    ips.iter()
        .copied()
        .find(|ip| ip.is_ipv6() == v6)
        .unwrap_or(if v6 {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        })
}

pub fn set(ctx: &Ctx, spec: &Spec) -> Result<Outcome> {
    // Bad input must change nothing, not even create the pin directory.
    if spec.in_pod {
        check_ports(&spec.ports)?;
    } else {
        validate(ctx, None, spec)?;
    }
    ctx.change(|tx| set_locked(tx, spec))
}

/// `set` in the caller's change. A failure part-way is undone with the
/// rest of the change.
pub fn set_locked(tx: &Txn, spec: &Spec) -> Result<Outcome> {
    if spec.in_pod {
        return set_in_pod(tx, spec);
    }
    if let Some((_, p)) = tx.pods()?.first() {
        return Err(usage(format!(
            "in-pod workloads are attached (netns {}): detach them before setting a node-level ztunnel",
            state::from_cstr(&p.netns)
        )));
    }
    let plan = validate(tx.ctx, Some(tx), spec)?;
    let mut out = Outcome::default();
    let old = tx.ztunnel()?;
    let same_place = old.is_some_and(|o| {
        o.host_ifindex == plan.host.index
            && o.pod_ifindex == plan.pod.index
            && o.netns_inode == plan.ns.inode
    });
    if let (Some(_), false) = (old, same_place) {
        let cleared = clear_locked(tx)?;
        out.messages.extend(cleared.messages);
        out.changed = true;
    }
    let prev = if same_place { old } else { None };
    let modes = attach_programs(tx, &plan, spec, prev, &mut out)?;
    let saved = netns_settings(tx, &plan, prev, &mut out)?;
    let saved_rp = node_settings(tx, &plan, &mut out)?;
    let saved = Saved {
        rp_filter: prev.map_or(saved_rp, |p| p.saved_rp_filter),
        ..saved
    };
    out.changed |= write_state(tx, spec, &plan, prev, saved, modes)?;

    let ips: Vec<String> = plan.ips.iter().map(|i| i.to_string()).collect();
    out.messages.push(if out.changed {
        format!(
            "ztunnel set: {} <-> {} in netns {} ({}), {}",
            plan.host.name,
            plan.pod.name,
            spec.netns,
            ips.join(", "),
            modes.0.name()
        )
    } else {
        format!(
            "ztunnel already set on {} in netns {}, no change",
            plan.host.name, spec.netns
        )
    });
    Ok(out)
}

/// `set --in-pod`: ztunnel listens in every workload's netns, where each
/// in-pod attach puts its own programs; the node has only the config, the
/// host IPs and the connection table.
fn set_in_pod(tx: &Txn, spec: &Spec) -> Result<Outcome> {
    check_ports(&spec.ports)?;
    let old = tx.ztunnel()?;
    let mut out = Outcome::default();
    if old.is_some_and(|c| c.flags & ztr_config_flags::ZTR_CFG_INPOD.0 == 0) {
        out.messages.extend(clear_locked(tx)?.messages);
        out.changed = true;
    }
    if let Some((_, i)) = tx
        .ifaces()?
        .into_iter()
        .find(|(_, i)| i.role == Role::Workload.raw())
    {
        return Err(usage(format!(
            "workload interface {} is attached in node-level mode: detach it before `ztunnel set --in-pod`",
            state::from_cstr(&i.name)
        )));
    }
    for ip in &spec.host_ips {
        if let Some(ep) = tx.endpoint(ip)?.filter(|e| e.kind.is_workload()) {
            return Err(usage(format!(
                "host IP {ip} is already a workload address (pod {})",
                ep.ifindex
            )));
        }
    }
    out.changed |= tx.replace_endpoints(EndpointKind::Ztunnel, &[])?;
    out.changed |= tx.replace_endpoints(EndpointKind::Host, &spec.host_ips)?;
    out.changed |= crate::report::observe::set_conn_table(tx, spec.conntrack)?;
    let mut flags = ztr_config_flags::ZTR_CFG_ENABLED.0 | ztr_config_flags::ZTR_CFG_INPOD.0;
    if spec.capture_dns {
        flags |= ztr_config_flags::ZTR_CFG_CAPTURE_DNS.0;
    }
    let (n_host, host_ips, more) = inline_addrs(&spec.host_ips);
    if more {
        flags |= ztr_config_flags::ZTR_CFG_MORE_ADDRS.0;
    }
    let cfg = ztr_config {
        flags,
        n_host,
        host_ips,
        port_outbound: spec.ports.outbound,
        port_inbound: spec.ports.inbound,
        port_hbone: spec.ports.hbone,
        port_dns: spec.ports.dns,
        conns_size: spec.conntrack.unwrap_or(0),
        ..Default::default()
    };
    out.changed |= attach_host_guard(tx)?;
    if tx.put_ztunnel_config(&cfg)? {
        // New ports: the pods' listener slots must be looked up again.
        for (id, _) in tx.pods()? {
            tx.clear_pod_listeners(id)?;
        }
        out.changed = true;
    }
    out.messages.push(if out.changed {
        "ztunnel set: in-pod (shared mode), listeners in each workload's netns".to_string()
    } else {
        "ztunnel already set in-pod, no change".to_string()
    });
    Ok(out)
}

/// Attaches the host-IP guard (netfilter PRE_ROUTING) where missing.
fn attach_host_guard(tx: &Txn) -> Result<bool> {
    let mut changed = false;
    for (name, pf) in crate::dataplane::hooks::HOST_GUARD_LINKS {
        let pin = tx.pins.link(name);
        if crate::dataplane::attach::link_state(&pin).is_some_and(|s| s.attached) {
            continue;
        }
        crate::dataplane::attach::detach_link(&pin)?;
        tx.record(Undo::Unpin { path: pin.clone() })?;
        let fd = bpf::prog_fd(tx.pins, bpf::Prog::HostGuard)?;
        use std::os::fd::AsFd;
        crate::dataplane::attach::attach_netfilter(fd.as_fd(), pf, &pin)
            .with_context(|| format!("attach the host-IP guard ({name})"))?;
        changed = true;
    }
    Ok(changed)
}

/// The sysctl values found before ztredir changed them, for `clear`.
#[derive(Debug, Clone, Copy)]
struct Saved {
    forwarding4: i8,
    forwarding6: i8,
    rp_filter: i8,
    had_policy_routing: u8,
}

/// Attaches the programs: ztunnel's host veth (node), its eth0 (its
/// netns), sk_lookup. Each keeps the mode it has unless one is asked for.
/// Returns the host's and the pod's modes.
fn attach_programs(
    tx: &Txn,
    plan: &Plan,
    spec: &Spec,
    prev: Option<ztr_config>,
    out: &mut Outcome,
) -> Result<(Mode, Mode)> {
    let want_mode = spec.mode.or(tx.ctx.mode);
    let old_mode = |key: u64| -> Result<Option<Mode>> {
        Ok(tx
            .iface(key)?
            .filter(|_| prev.is_some())
            .map(|e| mode_from_raw(e.mode)))
    };
    let host_t = host_target(&plan.host.name, plan.host.index);
    let host_old = old_mode(state::node_key(plan.host.index))?;
    let host_mode = want_mode
        .or(host_old)
        .unwrap_or_else(|| host_t.resolve_mode(None));
    // The new mode's programs go on before the old mode's come off (TCX
    // and classic tc coexist), so capture never has a gap.
    out.changed |= host_t.attach(tx, host_mode)?;
    if let Some(m) = host_old.filter(|m| *m != host_mode) {
        host_t.detach(tx, m, true)?;
    }
    let pod_t = pod_target(&plan.pod.name, plan.pod.index, &spec.netns);
    let pod_old = old_mode(state::ztunnel_pod_key(plan.pod.index))?;
    let pod_mode = match want_mode.or(pod_old) {
        Some(m) => m,
        None => plan.ns.run(|| Ok(pod_t.resolve_mode(None)))?,
    };
    out.changed |= plan.ns.run(|| pod_t.attach(tx, pod_mode))?;
    if let Some(m) = pod_old.filter(|m| *m != pod_mode) {
        plan.ns.run(|| pod_t.detach(tx, m, true))?;
    }
    let lookup_pin = tx.pins.link(LOOKUP_LINK);
    if !crate::dataplane::attach::link_state(&lookup_pin).is_some_and(|s| s.attached) {
        crate::dataplane::attach::detach_link(&lookup_pin)?;
        tx.record(Undo::Unpin {
            path: lookup_pin.clone(),
        })?;
        let fd = bpf::prog_fd(tx.pins, bpf::Prog::ZtunnelLookup)?;
        use std::os::fd::AsFd;
        crate::dataplane::attach::attach_sk_lookup(fd.as_fd(), plan.ns.file.as_fd(), &lookup_pin)
            .with_context(|| format!("attach sk_lookup to netns {}", spec.netns))?;
        out.changed = true;
    }
    Ok((host_mode, pod_mode))
}

/// ztunnel's netns: policy routing, forwarding off (fail closed). Returns
/// what it found there.
fn netns_settings(
    tx: &Txn,
    plan: &Plan,
    prev: Option<ztr_config>,
    out: &mut Outcome,
) -> Result<Saved> {
    let ns_path = plan.ns.path.to_string_lossy().into_owned();
    let before = plan.zl.policy_routing()?;
    if !before.complete() {
        if before == Default::default() {
            tx.record(Undo::PolicyRoutingRemove {
                netns: ns_path.clone(),
            })?;
        }
        plan.zl
            .ensure_policy_routing()
            .with_context(|| format!("policy routing in netns {ns_path}"))?;
        out.changed = true;
    }
    let (fwd4, fwd6) = plan.ns.run(|| {
        Ok((
            read_i8("net/ipv4/ip_forward"),
            read_i8("net/ipv6/conf/all/forwarding"),
        ))
    })?;
    tx.sysctl(Some(&plan.ns), "net/ipv4/ip_forward", "0")?;
    tx.sysctl(Some(&plan.ns), "net/ipv6/conf/all/forwarding", "0")?;
    out.changed |= prev.is_none() && (fwd4 != 0 || fwd6 != 0);
    Ok(match prev {
        // Whether the rules were all there before ztredir: then clear keeps them.
        Some(p) => Saved {
            forwarding4: p.saved_forwarding4,
            forwarding6: p.saved_forwarding6,
            rp_filter: p.saved_rp_filter,
            had_policy_routing: p.had_policy_routing,
        },
        None => Saved {
            forwarding4: fwd4,
            forwarding6: fwd6,
            rp_filter: -1,
            had_policy_routing: before.complete() as u8,
        },
    })
}

/// The node: ztunnel sends with workload source addresses, so reverse-path
/// filtering must be loose on its veth. With no IPv4 address on the veth
/// the kernel drops even in loose mode, so then it must be off. Returns
/// the value found.
fn node_settings(tx: &Txn, plan: &Plan, out: &mut Outcome) -> Result<i8> {
    let rp_key = format!("net/ipv4/conf/{}/rp_filter", plan.host.name);
    let saved_rp = read_i8(&rp_key);
    let has_v4 = tx
        .ctx
        .nl
        .addresses(plan.host.index)?
        .iter()
        .any(|a| a.is_ipv4());
    let want_rp = if has_v4 { 2 } else { 0 };
    if saved_rp != want_rp {
        tx.sysctl(None, &rp_key, &want_rp.to_string())?;
        out.changed = true;
    }
    Ok(saved_rp)
}

/// Endpoints, the connection table, the config and the interface entries.
/// Returns whether anything changed.
fn write_state(
    tx: &Txn,
    spec: &Spec,
    plan: &Plan,
    prev: Option<ztr_config>,
    saved: Saved,
    (host_mode, pod_mode): (Mode, Mode),
) -> Result<bool> {
    let mut changed = tx.replace_endpoints(EndpointKind::Ztunnel, &plan.ips)?;
    changed |= tx.replace_endpoints(EndpointKind::Host, &spec.host_ips)?;
    changed |= crate::report::observe::set_conn_table(tx, spec.conntrack)?;
    let cfg = config_of(spec, plan, saved);
    let comparable = |c: &ztr_config| {
        let mut c = *c;
        c.flags &= !(ztr_config_flags::ZTR_CFG_TRACE.0 | ztr_config_flags::ZTR_CFG_EXCLUSIONS.0);
        c.ep_gen = 0;
        bpf::bytes_of(&c).to_vec()
    };
    crate::failpoint::hit("ztunnel-set-config")?;
    if prev.as_ref().map(comparable) != Some(comparable(&cfg)) {
        // A changed port or DNS setting must not keep steering to the old
        // listeners.
        tx.clear_listeners()?;
        tx.put_ztunnel_config(&cfg)?;
        changed = true;
    }
    tx.put_iface(
        state::node_key(plan.host.index),
        &iface_entry(Role::ZtunnelHost, host_mode, &plan.host),
    )?;
    tx.put_iface(
        state::ztunnel_pod_key(plan.pod.index),
        &iface_entry(Role::ZtunnelPod, pod_mode, &plan.pod),
    )?;
    Ok(changed)
}

/// The config `set` writes (flags others own are kept by the writer).
fn config_of(spec: &Spec, plan: &Plan, saved: Saved) -> ztr_config {
    let mut flags = ztr_config_flags::ZTR_CFG_ENABLED.0;
    if spec.capture_dns {
        flags |= ztr_config_flags::ZTR_CFG_CAPTURE_DNS.0;
    }
    let (n_host, host_ips, more_host) = inline_addrs(&spec.host_ips);
    let (n_ztunnel, ztunnel_ips, more_zt) = inline_addrs(&plan.ips);
    if more_host || more_zt {
        flags |= ztr_config_flags::ZTR_CFG_MORE_ADDRS.0;
    }
    ztr_config {
        flags,
        n_host,
        host_ips,
        n_ztunnel,
        ztunnel_ips,
        host_ifindex: plan.host.index,
        pod_mac: plan.pod.mac,
        host_mac: plan.host.mac,
        port_outbound: spec.ports.outbound,
        port_inbound: spec.ports.inbound,
        port_hbone: spec.ports.hbone,
        port_dns: spec.ports.dns,
        lookup4: state::to_addr(&lookup_addr(&plan.ips, false)),
        lookup6: state::to_addr(&lookup_addr(&plan.ips, true)),
        pod_ifindex: plan.pod.index,
        saved_forwarding4: saved.forwarding4,
        saved_forwarding6: saved.forwarding6,
        saved_rp_filter: saved.rp_filter,
        had_policy_routing: saved.had_policy_routing,
        netns_inode: plan.ns.inode,
        conns_size: spec.conntrack.unwrap_or(0),
        host_iface: state::to_cstr(&plan.host.name),
        pod_iface: state::to_cstr(&plan.pod.name),
        netns: state::to_cstr(&plan.ns.path.to_string_lossy()),
        ..Default::default()
    }
}

/// The first addresses for the config's inline list, their count, and
/// whether more remain (those only the endpoints map holds).
fn inline_addrs(ips: &[IpAddr]) -> (u32, [ztr_addr; 8], bool) {
    let mut out = [ztr_addr::default(); 8];
    let mut uniq: Vec<IpAddr> = Vec::new();
    for ip in ips {
        if !uniq.contains(ip) {
            uniq.push(*ip);
        }
    }
    for (slot, ip) in out.iter_mut().zip(&uniq) {
        *slot = state::to_addr(ip);
    }
    let n = uniq.len().min(out.len());
    (n as u32, out, uniq.len() > out.len())
}

fn iface_entry(role: Role, mode: Mode, link: &Link) -> ztr_iface {
    ztr_iface {
        role: role.raw(),
        mode: mode_raw(mode),
        peer_ifindex: link.peer_index.unwrap_or(0),
        tc_prio: crate::dataplane::attach::TC_PRIO,
        tc_handle: crate::dataplane::attach::TC_HANDLE,
        mac: link.mac,
        name: state::to_cstr(&link.name),
        ..Default::default()
    }
}

pub fn mode_raw(m: Mode) -> u32 {
    use crate::dataplane::skel::types::ztr_attach_mode as M;
    match m {
        Mode::Tcx => M::ZTR_MODE_TCX.0,
        Mode::Tc => M::ZTR_MODE_TC.0,
    }
}

pub fn mode_from_raw(r: u32) -> Mode {
    if r == mode_raw(Mode::Tc) {
        Mode::Tc
    } else {
        Mode::Tcx
    }
}

fn read_i8(key: &str) -> i8 {
    sysctl_get(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1)
}

pub fn clear(ctx: &Ctx) -> Result<Outcome> {
    if !ctx.pins.exists() {
        return Ok(Outcome::unchanged("no ztunnel configured, nothing to do"));
    }
    ctx.change(clear_locked)
}

/// Opens ztunnel's netns if it is still the one the config names.
pub fn open_netns(cfg: &ztr_config) -> Option<NetNs> {
    NetNs::open(&state::from_cstr(&cfg.netns))
        .ok()
        .filter(|ns| ns.inode == cfg.netns_inode)
}

pub fn clear_locked(tx: &Txn) -> Result<Outcome> {
    let Some(cfg) = tx.ztunnel()? else {
        return Ok(Outcome::unchanged("no ztunnel configured, nothing to do"));
    };
    if cfg.flags & ztr_config_flags::ZTR_CFG_INPOD.0 != 0 {
        // In-pod workloads stay attached and drop what they capture.
        tx.put_ztunnel_config(&ztr_config::default())?;
        for (name, _) in crate::dataplane::hooks::HOST_GUARD_LINKS {
            crate::dataplane::attach::detach_link(&tx.pins.link(name))?;
        }
        crate::report::observe::set_conn_table(tx, None)?;
        tx.replace_endpoints(EndpointKind::Host, &[])?;
        return Ok(Outcome::changed("ztunnel cleared (in-pod)"));
    }
    let host_name = state::from_cstr(&cfg.host_iface);
    let netns = state::from_cstr(&cfg.netns);
    // Stop capturing first: with the config gone the workload hooks drop,
    // which is the fail-closed state we want while tearing down.
    tx.put_ztunnel_config(&ztr_config::default())?;
    tx.clear_listeners()?;
    crate::report::observe::set_conn_table(tx, None)?;
    clear_node(tx, &cfg)?;
    crate::dataplane::attach::detach_link(&tx.pins.link(LOOKUP_LINK))
        .and_then(|()| clear_netns(tx, &cfg))
        .with_context(|| format!("clean up ztunnel netns {netns}"))?;
    tx.replace_endpoints(EndpointKind::Ztunnel, &[])?;
    tx.replace_endpoints(EndpointKind::Host, &[])?;
    tx.del_iface(state::node_key(cfg.host_ifindex))?;
    tx.del_iface(state::ztunnel_pod_key(cfg.pod_ifindex))?;
    Ok(Outcome::changed(format!(
        "ztunnel cleared from {host_name} and netns {netns}"
    )))
}

/// ztunnel's host veth: its program off, rp_filter as it was.
fn clear_node(tx: &Txn, cfg: &ztr_config) -> Result<()> {
    let host_name = state::from_cstr(&cfg.host_iface);
    let host_entry = tx.iface(state::node_key(cfg.host_ifindex))?;
    let host_present = tx
        .ctx
        .nl
        .link_by_index(cfg.host_ifindex)?
        .is_some_and(|l| l.name == host_name);
    let host_t = host_target(&host_name, cfg.host_ifindex);
    host_t.detach(
        tx,
        host_entry.map_or(Mode::Tcx, |e| mode_from_raw(e.mode)),
        host_present,
    )?;
    if host_present && cfg.saved_rp_filter >= 0 {
        let key = format!("net/ipv4/conf/{host_name}/rp_filter");
        tx.sysctl(None, &key, &cfg.saved_rp_filter.to_string())?;
    }
    Ok(())
}

/// ztunnel's netns: its program off, and policy routing and forwarding as
/// ztredir found them.
fn clear_netns(tx: &Txn, cfg: &ztr_config) -> Result<()> {
    let netns = state::from_cstr(&cfg.netns);
    let pod_name = state::from_cstr(&cfg.pod_iface);
    let pod_t = pod_target(&pod_name, cfg.pod_ifindex, &netns);
    let pod_entry = tx.iface(state::ztunnel_pod_key(cfg.pod_ifindex))?;
    let pod_mode = pod_entry.map_or(Mode::Tcx, |e| mode_from_raw(e.mode));
    let Some(ns) = open_netns(cfg) else {
        return pod_t.detach(tx, pod_mode, false);
    };
    ns.run(|| {
        let present = Netlink::new()?.link_by_index(cfg.pod_ifindex)?.is_some();
        pod_t.detach(tx, pod_mode, present)
    })?;
    tx.restore_netns(
        &ns,
        cfg.had_policy_routing != 0,
        &[
            ("net/ipv4/ip_forward", cfg.saved_forwarding4),
            ("net/ipv6/conf/all/forwarding", cfg.saved_forwarding6),
        ],
    )
}
