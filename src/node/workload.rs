// SPDX-License-Identifier: Apache-2.0
//! `attach`, `detach` and `workload add | del | list`: workload interfaces
//! and the addresses that belong to them.

use std::net::IpAddr;

use anyhow::Result;

use crate::ctx::{Ctx, Outcome};
use crate::dataplane::attach::Mode;
use crate::dataplane::bpf;
use crate::dataplane::hooks::{Target, WORKLOAD_HOOKS};
use crate::dataplane::netlink::Link;
use crate::dataplane::skel::types::ztr_iface;
use crate::dataplane::state::{self, Endpoint, EndpointKind, Role, State, Txn};
use crate::error::usage;
use crate::node::exclude::{self, Exclusions};
use crate::node::ztunnel::{mode_from_raw, mode_raw};

pub fn target(name: &str, ifindex: u32) -> Target<'_> {
    Target {
        name,
        ifindex,
        hooks: WORKLOAD_HOOKS,
        link_prefix: crate::dataplane::hooks::link_prefix(Role::Workload, ifindex),
        netns: None,
    }
}

fn find_link(ctx: &Ctx, name: &str) -> Result<Link> {
    ctx.nl
        .link_by_name(name)?
        .ok_or_else(|| usage(format!("interface {name} not found")))
}

/// Checks that `ips` may belong to interface `ifindex`.
fn check_ips(st: Option<&State>, ips: &[IpAddr], ifindex: u32, name: &str) -> Result<()> {
    let Some(st) = st else { return Ok(()) };
    for ip in ips {
        match st.endpoint(ip)? {
            Some(ep) if ep.kind != EndpointKind::Workload => {
                let what = if ep.kind == EndpointKind::Ztunnel {
                    "ztunnel"
                } else {
                    "a node host IP"
                };
                return Err(usage(format!("IP {ip} is {what}, not a workload address")));
            }
            Some(ep) if ep.ifindex != ifindex => {
                let owner = st
                    .iface(state::node_key(ep.ifindex))?
                    .map(|i| state::from_cstr(&i.name))
                    .unwrap_or_else(|| format!("ifindex {}", ep.ifindex));
                return Err(usage(format!(
                    "IP {ip} already belongs to {owner}, not {name}"
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Finds the interface and the IPs an attach would register, checking them
/// against the state when given.
pub fn resolve(
    ctx: &Ctx,
    st: Option<&State>,
    name: &str,
    ips: &[IpAddr],
) -> Result<(Link, Vec<IpAddr>)> {
    let link = find_link(ctx, name)?;
    if !ctx.force {
        if let Some(f) = target(&link.name, link.index).foreign(&ctx.pins) {
            return Err(f.error(name));
        }
    }
    if let Some(st) = st {
        if st.in_pod()? {
            return Err(usage(format!(
                "interface {name}: this node's ztunnel is set in-pod; attach in-pod workloads with --netns (or `ztunnel set` node-level first)"
            )));
        }
        if st.ztunnel()?.is_some_and(|c| c.host_ifindex == link.index) {
            return Err(usage(format!("interface {name} is ztunnel's interface")));
        }
    }
    let ips = if ips.is_empty() {
        ctx.nl.host_routes_via(link.index)?
    } else {
        ips.to_vec()
    };
    if ips.is_empty() {
        return Err(usage(format!(
            "no IPs for {name}: none given with --ip and no host routes through it"
        )));
    }
    let ips = ips
        .into_iter()
        .map(|ip| state::workload_ip(ip).map_err(|e| usage(format!("{name}: {e}"))))
        .collect::<Result<Vec<_>>>()?;
    check_ips(st, &ips, link.index, name)?;
    Ok((link, ips))
}

/// Attaches the capture programs to a workload's host-side veth and
/// registers its IPs (given, or found from the node's routes). Exclusions,
/// when given, replace the interface's; None keeps them.
pub fn attach(
    ctx: &Ctx,
    name: &str,
    ips: &[IpAddr],
    exclude: Option<&Exclusions>,
) -> Result<Outcome> {
    resolve(ctx, None, name, ips)?;
    ctx.change(|tx| {
        let (link, ips) = resolve(ctx, Some(tx), name, ips)?;
        let want = Attach {
            ips: &ips,
            exclude,
            known: None,
            mode: None,
        };
        attach_locked(tx, &link, &want)
    })
}

/// What `apply` wants of one workload interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub iface: String,
    pub ips: Vec<IpAddr>,
    pub exclude: Exclusions,
    /// None: keep the mode it has, or pick one.
    pub mode: Option<Mode>,
}

/// Converges one workload interface to `want`, under the caller's lock:
/// attached, with exactly these IPs and exclusions. `have` is what the
/// caller knows the interface has (saves reading every map again); None
/// reads it.
pub fn converge(tx: &Txn, want: &Desired, have: Option<&Desired>) -> Result<Outcome> {
    let (link, ips) = resolve(tx.ctx, Some(tx), &want.iface, &want.ips)?;
    let read;
    let have = match have {
        Some(h) => Some(h),
        None => {
            read = current_all(tx)?
                .into_iter()
                .find(|(_, d)| d.iface == want.iface)
                .map(|(_, d)| d);
            read.as_ref()
        }
    };
    let known = Known {
        ips: have.map_or(&[][..], |h| &h.ips[..]),
        exclude: have.map(|h| h.exclude.clone()).unwrap_or_default(),
    };
    let attach = Attach {
        ips: &ips,
        exclude: Some(&want.exclude),
        known: Some(&known),
        mode: want.mode,
    };
    attach_locked(tx, &link, &attach)
}

/// What an interface had before a change, as far as the caller knows.
struct Known<'a> {
    ips: &'a [IpAddr],
    exclude: Exclusions,
}

/// Every attached workload interface: ifindex, and its IPs, exclusions
/// and mode, read in one pass over each map.
pub fn current_all(st: &State) -> Result<Vec<(u32, Desired)>> {
    let eps = st.endpoints()?;
    let mut excl = exclude::read_all(st)?;
    let mut out = Vec::new();
    for (key, entry) in st.ifaces()? {
        if entry.role != Role::Workload.raw() {
            continue;
        }
        let ifindex = key as u32;
        out.push((
            ifindex,
            Desired {
                iface: state::from_cstr(&entry.name),
                ips: eps
                    .iter()
                    .filter(|e| e.kind == EndpointKind::Workload && e.ifindex == ifindex)
                    .map(|e| e.ip)
                    .collect(),
                exclude: excl.remove(&ifindex).unwrap_or_default(),
                mode: Some(mode_from_raw(entry.mode)),
            },
        ));
    }
    Ok(out)
}

/// What one attach wants of an interface.
struct Attach<'a> {
    ips: &'a [IpAddr],
    /// Exclusions to set; None keeps the interface's.
    exclude: Option<&'a Exclusions>,
    /// What the caller knows the interface had.
    known: Option<&'a Known<'a>>,
    mode: Option<Mode>,
}

fn attach_locked(tx: &Txn, link: &Link, want: &Attach) -> Result<Outcome> {
    let key = state::node_key(link.index);
    let prev = tx.iface(key)?;
    // A workload keeps the mode it was attached with, unless one is forced.
    let t = target(&link.name, link.index);
    let mode = want
        .mode
        .or(tx.ctx.mode)
        .or(prev.map(|p| mode_from_raw(p.mode)))
        .unwrap_or_else(|| t.resolve_mode(None));
    // Exclusions before the programs, so that a new attachment never
    // captures what it should leave alone. A new interface's entries are
    // read from the maps, not assumed empty.
    let have = match (want.known, prev) {
        (Some(k), Some(_)) => k.exclude.clone(),
        _ => exclude::read(tx, link.index)?,
    };
    let mut changed = match want.exclude {
        Some(ex) => exclude::write_from(tx, link.index, &have, ex)?,
        None => false,
    };
    // The new mode's programs go on before the old mode's come off (TCX and
    // classic tc coexist on a device), so capture never has a gap.
    changed |= t.attach(tx, mode)?;
    if let Some(p) = prev.filter(|p| mode_from_raw(p.mode) != mode) {
        t.detach(tx, mode_from_raw(p.mode), true)?;
    }
    changed |= put_entry(tx, link, prev, mode)?;
    changed |= put_ips(tx, link, want.ips, want.known)?;
    let all: Vec<String> = want.ips.iter().map(|i| i.to_string()).collect();
    Ok(if changed {
        Outcome::changed(format!(
            "attached {} (ifindex {}, {}): workload {}",
            link.name,
            link.index,
            mode.name(),
            all.join(", ")
        ))
    } else {
        Outcome::unchanged(format!("{} already attached, no change", link.name))
    })
}

/// The interface's entry in the state. Returns whether it changed.
fn put_entry(tx: &Txn, link: &Link, prev: Option<ztr_iface>, mode: Mode) -> Result<bool> {
    let peer_mac = tx
        .ctx
        .nl
        .peer_of(link)
        .ok()
        .flatten()
        .map(|p| p.mac)
        .unwrap_or_default();
    let entry = ztr_iface {
        role: Role::Workload.raw(),
        mode: mode_raw(mode),
        peer_ifindex: link.peer_index.unwrap_or(0),
        tc_prio: crate::dataplane::attach::TC_PRIO,
        tc_handle: crate::dataplane::attach::TC_HANDLE,
        mac: link.mac,
        peer_mac,
        name: state::to_cstr(&link.name),
    };
    if prev.map(|p| bpf::bytes_of(&p).to_vec()) == Some(bpf::bytes_of(&entry).to_vec()) {
        return Ok(false);
    }
    tx.put_iface(state::node_key(link.index), &entry)?;
    Ok(true)
}

/// Registers `ips` for the interface; with `known`, exactly these (the
/// ones it had and no longer wants go). Returns whether anything changed.
fn put_ips(tx: &Txn, link: &Link, ips: &[IpAddr], known: Option<&Known>) -> Result<bool> {
    let mut changed = false;
    for ip in ips {
        if known.is_some_and(|k| k.ips.contains(ip)) || tx.endpoint(ip)?.is_some() {
            continue;
        }
        tx.put_endpoint(&Endpoint {
            ip: *ip,
            kind: EndpointKind::Workload,
            ifindex: link.index,
        })?;
        changed = true;
    }
    let Some(k) = known else { return Ok(changed) };
    for ip in k.ips.iter().filter(|ip| !ips.contains(ip)) {
        // Unless another workload has taken it meanwhile.
        if tx.endpoint(ip)?.is_some_and(|e| e.ifindex == link.index) {
            tx.del_endpoint(ip)?;
            changed = true;
        }
    }
    Ok(changed)
}

pub fn detach(ctx: &Ctx, name: &str) -> Result<Outcome> {
    let not_attached = || {
        find_link(ctx, name)?;
        Ok(Outcome::unchanged(format!(
            "{name} is not attached, nothing to do"
        )))
    };
    if !ctx.pins.exists() {
        return not_attached();
    }
    ctx.change(|tx| match tx.workload_iface_by_name(name)? {
        Some((key, entry)) => detach_entry(tx, key, &entry),
        None => not_attached(),
    })
}

pub fn detach_all(ctx: &Ctx) -> Result<Outcome> {
    if !ctx.pins.exists() {
        return Ok(Outcome::unchanged("nothing attached"));
    }
    ctx.change(detach_all_locked)
}

/// `detach --all` in the caller's change.
pub fn detach_all_locked(tx: &Txn) -> Result<Outcome> {
    let mut out = Outcome::default();
    let mut released = Vec::new();
    for (key, entry) in tx
        .ifaces()?
        .into_iter()
        .filter(|(_, i)| i.role == Role::Workload.raw())
    {
        let o = detach_one(tx, key, &entry)?;
        released.push(key as u32);
        out.changed |= o.changed;
        out.messages.extend(o.messages);
    }
    crate::report::observe::release_stat_slots(tx, &released, WORKLOAD_HOOK_IDS)?;
    let pods = crate::node::inpod::detach_all_locked(tx)?;
    out.changed |= !pods.is_empty();
    out.messages.extend(pods);
    if out.messages.is_empty() {
        out.messages.push("nothing attached".into());
    }
    Ok(out)
}

const WORKLOAD_HOOK_IDS: &[u32] = &[
    crate::dataplane::skel::types::ztr_hook_id::ZTR_HOOK_WORKLOAD_OUT.0,
    crate::dataplane::skel::types::ztr_hook_id::ZTR_HOOK_WORKLOAD_IN.0,
];

/// Detaches one workload interface and frees its counter slots.
pub fn detach_entry(tx: &Txn, key: u64, entry: &ztr_iface) -> Result<Outcome> {
    let out = detach_one(tx, key, entry)?;
    crate::report::observe::release_stat_slots(tx, &[key as u32], WORKLOAD_HOOK_IDS)?;
    Ok(out)
}

fn detach_one(tx: &Txn, key: u64, entry: &ztr_iface) -> Result<Outcome> {
    let name = state::from_cstr(&entry.name);
    let ifindex = key as u32;
    let present = tx
        .ctx
        .nl
        .link_by_index(ifindex)?
        .is_some_and(|l| l.name == name);
    let mode: Mode = mode_from_raw(entry.mode);
    target(&name, ifindex).detach(tx, mode, present)?;
    for ep in tx
        .endpoints()?
        .into_iter()
        .filter(|e| e.kind == EndpointKind::Workload && e.ifindex == ifindex)
    {
        tx.del_endpoint(&ep.ip)?;
    }
    exclude::write(tx, ifindex, &Exclusions::default())?;
    tx.del_iface(key)?;
    Ok(Outcome::changed(format!(
        "detached {name} (ifindex {ifindex})"
    )))
}

/// Adds an address to an attached workload interface.
pub fn add_ip(ctx: &Ctx, ip: IpAddr, name: &str) -> Result<Outcome> {
    let ip = state::workload_ip(ip).map_err(usage)?;
    let link = find_link(ctx, name)?;
    let not_attached = || usage(format!("interface {name} is not attached"));
    if !ctx.pins.exists() {
        return Err(not_attached());
    }
    ctx.change(|tx| {
        let attached = tx.iface(state::node_key(link.index))?;
        if attached.is_none_or(|i| i.role != Role::Workload.raw()) {
            return Err(not_attached());
        }
        check_ips(Some(tx), &[ip], link.index, name)?;
        if tx.endpoint(&ip)?.is_some() {
            return Ok(Outcome::unchanged(format!(
                "{ip} already on {name}, no change"
            )));
        }
        tx.put_endpoint(&Endpoint {
            ip,
            kind: EndpointKind::Workload,
            ifindex: link.index,
        })?;
        Ok(Outcome::changed(format!("added {ip} to {name}")))
    })
}

pub fn del_ip(ctx: &Ctx, ip: IpAddr) -> Result<Outcome> {
    let nothing = || {
        Ok(Outcome::unchanged(format!(
            "{ip} is not a workload address, nothing to do"
        )))
    };
    if !ctx.pins.exists() {
        return nothing();
    }
    ctx.change(|tx| match tx.endpoint(&ip)? {
        Some(ep) if ep.kind == EndpointKind::Workload => {
            tx.del_endpoint(&ip)?;
            Ok(Outcome::changed(format!("removed {ip}")))
        }
        Some(_) => Err(usage(format!("IP {ip} is not a workload address"))),
        None => nothing(),
    })
}
