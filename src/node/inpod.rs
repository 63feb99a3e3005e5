// SPDX-License-Identifier: Apache-2.0
//! In-pod workloads: `attach --netns` and `detach --netns`. The proxy
//! (ztunnel in shared mode) listens inside each workload's netns; ztredir
//! puts its in-pod programs there (the workload's interface, lo, the netns'
//! sk_lookup), the policy route that delivers redirected packets locally,
//! and the workload's identity, which `ztredir zds` hands to ztunnel.

use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};

use anyhow::{Context, Result};

use crate::ctx::{Ctx, Outcome};
use crate::dataplane::attach::{self, Mode};
use crate::dataplane::bpf::{self, Prog};
use crate::dataplane::hooks::{Target, POD_HOOKS, POD_LO_HOOKS as LO_HOOKS};
use crate::dataplane::journal::Undo;
use crate::dataplane::netlink::{Link, Netlink};
use crate::dataplane::netns::{sysctl_get, NetNs};
use crate::dataplane::skel::types::{ztr_limits as L, ztr_pod};
use crate::dataplane::state::{self, Endpoint, EndpointKind, Role, State, Txn};
use crate::error::usage;
use crate::node::ztunnel::{mode_from_raw, mode_raw};

const LO: &str = "lo";
const LO_IFINDEX: u32 = 1;

/// What `attach --netns` was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    pub netns: String,
    /// The interface inside the netns; None: the default route's.
    pub iface: Option<String>,
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    /// None: NAMESPACE/NAME.
    pub uid: Option<String>,
    /// None: the interface's global addresses.
    pub ips: Vec<IpAddr>,
    /// Attach mode; None: the invocation's (--attach-mode), else what the
    /// workload has.
    pub mode: Option<Mode>,
}

impl PodSpec {
    pub fn uid(&self) -> String {
        self.uid
            .clone()
            .unwrap_or_else(|| format!("{}/{}", self.namespace, self.name))
    }
}

/// An in-pod workload as the pinned state holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Pod {
    pub id: u32,
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    pub netns: String,
    pub netns_inode: u64,
    pub iface: String,
    pub ifindex: u32,
    pub mode: &'static str,
    pub ips: Vec<IpAddr>,
}

impl Pod {
    pub fn workload(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn attach_mode(&self) -> Mode {
        if self.mode == Mode::Tc.name() {
            Mode::Tc
        } else {
            Mode::Tcx
        }
    }
}

/// Every in-pod workload, by pod id.
pub fn pods(st: &State) -> Result<Vec<Pod>> {
    let eps = st.endpoints()?;
    Ok(st
        .pods()?
        .into_iter()
        .map(|(id, p)| Pod {
            id,
            uid: state::from_cstr(&p.uid),
            namespace: state::from_cstr(&p.k8s_namespace),
            name: state::from_cstr(&p.name),
            service_account: state::from_cstr(&p.service_account),
            netns: state::from_cstr(&p.netns),
            netns_inode: p.netns_inode,
            iface: state::from_cstr(&p.iface),
            ifindex: p.ifindex,
            mode: mode_from_raw(p.mode).name(),
            ips: eps
                .iter()
                .filter(|e| e.kind == EndpointKind::Pod && e.ifindex == id)
                .map(|e| e.ip)
                .collect(),
        })
        .collect())
}

/// A Kubernetes name: lower-case letters, digits, '-' and '.', starting and
/// ending with a letter or digit, at most `max` bytes.
fn check_name(what: &str, v: &str, max: usize) -> Result<()> {
    let ok = !v.is_empty()
        && v.len() <= max
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && v.as_bytes()[0].is_ascii_alphanumeric()
        && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric();
    if ok {
        return Ok(());
    }
    Err(usage(format!(
        "{what} {v:?} is not a valid name (lower-case letters, digits, '-' and '.', at most {max} characters)"
    )))
}

/// Splits and checks `NAMESPACE/NAME`.
pub fn parse_workload(v: &str) -> Result<(String, String)> {
    let Some((ns, name)) = v.split_once('/') else {
        return Err(usage(format!("workload {v:?} is not NAMESPACE/NAME")));
    };
    check_name("workload namespace", ns, L::ZTR_ID_SHORT.0 as usize - 1)?;
    check_name("workload name", name, L::ZTR_ID_LONG.0 as usize - 1)?;
    Ok((ns.to_string(), name.to_string()))
}

/// Checks a service account name.
pub fn check_service_account(v: &str) -> Result<()> {
    check_name("service account", v, L::ZTR_ID_LONG.0 as usize - 1)
}

/// Checks a uid for ZDS: letters, digits and -._/: only.
pub fn check_uid(uid: &str) -> Result<()> {
    let ok = !uid.is_empty()
        && uid.len() < L::ZTR_ID_SHORT.0 as usize
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._/:".contains(&b));
    if !ok {
        return Err(usage(format!(
            "uid {uid:?} is not valid (letters, digits and -._/: only, at most {} characters)",
            L::ZTR_ID_SHORT.0 - 1
        )));
    }
    Ok(())
}

fn check_identity(spec: &PodSpec) -> Result<()> {
    check_name(
        "workload namespace",
        &spec.namespace,
        L::ZTR_ID_SHORT.0 as usize - 1,
    )?;
    check_name("workload name", &spec.name, L::ZTR_ID_LONG.0 as usize - 1)?;
    check_service_account(&spec.service_account)?;
    check_uid(&spec.uid())
}

/// Everything an attach found out before changing anything.
pub struct Plan {
    pub ns: NetNs,
    pub nl: Netlink,
    pub link: Link,
    pub ips: Vec<IpAddr>,
    pub cookie: u64,
}

/// The node's own netns, to refuse it as a workload's.
fn own_netns_inode() -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata("/proc/thread-self/ns/net")
        .context("stat own netns")?
        .ino())
}

/// The netns cookie the programs see for packets in `ns`.
fn netns_cookie(ns: &NetNs) -> Result<u64> {
    ns.run(|| {
        let s = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Datagram,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )
        .context("socket for the netns cookie")?;
        let mut v: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SO_NETNS_COOKIE (71): the cookie bpf_get_netns_cookie returns.
        let rc = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                71,
                &mut v as *mut u64 as *mut libc::c_void,
                &mut len,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("read the netns cookie");
        }
        Ok(v)
    })
}

pub fn validate(ctx: &Ctx, st: Option<&State>, spec: &PodSpec) -> Result<Plan> {
    check_identity(spec)?;
    let ns = NetNs::open(&spec.netns)?;
    if ns.inode == own_netns_inode()? {
        return Err(usage(format!(
            "netns {} is the node's own netns, not a workload's",
            spec.netns
        )));
    }
    let nl = Netlink::in_netns(&ns)?;
    let link = match &spec.iface {
        Some(name) => nl.link_by_name(name)?.ok_or_else(|| {
            usage(format!(
                "interface {name} not found in netns {}",
                spec.netns
            ))
        })?,
        None => {
            let oif = nl.default_route_oif()?.ok_or_else(|| {
                usage(format!(
                    "netns {} has no default route: name the workload's interface",
                    spec.netns
                ))
            })?;
            nl.link_by_index(oif)?
                .ok_or_else(|| usage(format!("default route interface {oif} vanished")))?
        }
    };
    if link.index == LO_IFINDEX {
        return Err(usage(format!(
            "interface {} in netns {} is the loopback, not the workload's",
            link.name, spec.netns
        )));
    }
    if !ctx.force {
        let t = pod_target(0, &link, &spec.netns);
        if let Some(f) = ns.run(|| Ok(t.foreign(&ctx.pins)))? {
            return Err(f.error(&format!("{} in netns {}", link.name, spec.netns)));
        }
    }
    let ips = if spec.ips.is_empty() {
        nl.addresses(link.index)?
            .into_iter()
            .filter(|ip| state::workload_ip(*ip).is_ok())
            .filter(|ip| !matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80))
            .collect()
    } else {
        spec.ips.clone()
    };
    if ips.is_empty() {
        return Err(usage(format!(
            "interface {} in netns {} has no address; give --ip",
            link.name, spec.netns
        )));
    }
    if let Some(st) = st {
        check_against_state(st, spec, &ns, &ips)?;
    }
    let cookie = netns_cookie(&ns)?;
    Ok(Plan {
        ns,
        nl,
        link,
        ips,
        cookie,
    })
}

/// The node's mode, the addresses and the uid must not clash with what is
/// there.
fn check_against_state(st: &State, spec: &PodSpec, ns: &NetNs, ips: &[IpAddr]) -> Result<()> {
    if st.ztunnel()?.is_some() && !st.in_pod()? {
        return Err(usage(format!(
            "netns {}: this node's ztunnel is set in node-level mode (ztunnel set --iface); in-pod attach needs `ztunnel set --in-pod`",
            spec.netns
        )));
    }
    if let Some((_, i)) = st
        .ifaces()?
        .into_iter()
        .find(|(_, i)| i.role == Role::Workload.raw())
    {
        return Err(usage(format!(
            "netns {}: workload interface {} is attached in node-level mode; detach it first",
            spec.netns,
            state::from_cstr(&i.name)
        )));
    }
    let pods = pods(st)?;
    let me = pods
        .iter()
        .find(|p| p.netns_inode == ns.inode)
        .map(|p| p.id);
    let uid = spec.uid();
    if let Some(other) = pods.iter().find(|p| p.uid == uid && Some(p.id) != me) {
        return Err(usage(format!(
            "uid {uid:?} already belongs to the workload in netns {}",
            other.netns
        )));
    }
    for ip in ips {
        match st.endpoint(ip)? {
            Some(ep) if ep.kind == EndpointKind::Pod && Some(ep.ifindex) == me => {}
            Some(ep) if ep.kind == EndpointKind::Pod => {
                let owner = pods
                    .iter()
                    .find(|p| p.id == ep.ifindex)
                    .map_or_else(|| format!("pod {}", ep.ifindex), |p| p.workload());
                return Err(usage(format!(
                    "IP {ip} already belongs to workload {owner}"
                )));
            }
            Some(ep) => {
                let what = match ep.kind {
                    EndpointKind::Host => "a node host IP",
                    EndpointKind::Ztunnel => "ztunnel's",
                    _ => "a node-level workload's",
                };
                return Err(usage(format!("IP {ip} is {what}, not this workload's")));
            }
            None => {}
        }
    }
    Ok(())
}

fn pod_target<'a>(id: u32, link: &'a Link, netns: &'a str) -> Target<'a> {
    Target {
        name: &link.name,
        ifindex: link.index,
        hooks: POD_HOOKS,
        link_prefix: format!("pod{id}-if{}", link.index),
        netns: Some(netns),
    }
}

fn lo_target(id: u32, netns: &str) -> Target<'_> {
    Target {
        name: LO,
        ifindex: LO_IFINDEX,
        hooks: LO_HOOKS,
        link_prefix: format!("pod{id}-lo"),
        netns: Some(netns),
    }
}

fn lookup_link(id: u32) -> String {
    format!("pod{id}-lookup")
}

/// In-pod attach: validated before the change (bad input changes nothing,
/// not even the pin directory), again inside it against the state.
pub fn attach(ctx: &Ctx, spec: &PodSpec) -> Result<Outcome> {
    validate(ctx, None, spec)?;
    ctx.change(|tx| attach_locked(tx, spec))
}

pub fn attach_locked(tx: &Txn, spec: &PodSpec) -> Result<Outcome> {
    let plan = validate(tx.ctx, Some(tx), spec)?;
    let existing = tx
        .pods()?
        .into_iter()
        .find(|(_, p)| p.netns_inode == plan.ns.inode);
    let id = match existing {
        Some((id, _)) => id,
        None => free_id(tx)?,
    };
    let old = existing.map(|(_, p)| p);
    let netns = plan.ns.path.to_string_lossy().into_owned();
    let mut changed = false;

    // An interface that changed (renamed, or another one named) loses its
    // programs first.
    if let Some(o) = old.filter(|o| o.ifindex != plan.link.index) {
        let gone = Link {
            index: o.ifindex,
            name: state::from_cstr(&o.iface),
            ..Default::default()
        };
        let present = plan.nl.link_by_index(o.ifindex)?.is_some();
        plan.ns
            .run(|| pod_target(id, &gone, &netns).detach(tx, mode_from_raw(o.mode), present))?;
        changed = true;
    }
    let mode = match spec.mode.or(tx.ctx.mode) {
        Some(m) => m,
        None => match old {
            Some(o) => mode_from_raw(o.mode),
            None => plan
                .ns
                .run(|| Ok(pod_target(id, &plan.link, &netns).resolve_mode(None)))?,
        },
    };
    let old_mode = old.map(|o| mode_from_raw(o.mode));
    for t in [pod_target(id, &plan.link, &netns), lo_target(id, &netns)] {
        changed |= plan.ns.run(|| t.attach(tx, mode))?;
        if let Some(m) = old_mode.filter(|m| *m != mode) {
            plan.ns.run(|| t.detach(tx, m, true))?;
        }
    }
    changed |= attach_lookup(tx, id, &plan.ns)?;
    let saved = netns_settings(tx, &plan, old.as_ref(), &mut changed)?;

    // Addresses: exactly the planned ones are this pod's.
    for ep in tx.endpoints()? {
        if ep.kind == EndpointKind::Pod && ep.ifindex == id && !plan.ips.contains(&ep.ip) {
            tx.del_endpoint(&ep.ip)?;
            changed = true;
        }
    }
    for ip in &plan.ips {
        let want = Endpoint {
            ip: *ip,
            kind: EndpointKind::Pod,
            ifindex: id,
        };
        if tx.endpoint(ip)? != Some(want) {
            tx.put_endpoint(&want)?;
            changed = true;
        }
    }
    let entry = ztr_pod {
        netns_cookie: plan.cookie,
        netns_inode: plan.ns.inode,
        ifindex: plan.link.index,
        mode: mode_raw(mode),
        saved_accept_local: saved.0,
        saved_route_localnet: saved.1,
        had_policy_routing: saved.2,
        iface: state::to_cstr(&plan.link.name),
        netns: state::to_cstr(&netns),
        uid: state::to_cstr(&spec.uid()),
        k8s_namespace: state::to_cstr(&spec.namespace),
        name: state::to_cstr(&spec.name),
        service_account: state::to_cstr(&spec.service_account),
        ..Default::default()
    };
    if old.map(|o| bpf::bytes_of(&o).to_vec()) != Some(bpf::bytes_of(&entry).to_vec()) {
        tx.put_pod(id, &entry)?;
        changed = true;
    }
    crate::failpoint::hit("inpod-attach")?;
    let ips: Vec<String> = plan.ips.iter().map(|i| i.to_string()).collect();
    Ok(if changed {
        Outcome::changed(format!(
            "attached in-pod {}/{} (sa {}) on {} in netns {} ({}), {}",
            spec.namespace,
            spec.name,
            spec.service_account,
            plan.link.name,
            spec.netns,
            ips.join(", "),
            mode.name()
        ))
    } else {
        Outcome::unchanged(format!(
            "in-pod {}/{} already attached in netns {}, no change",
            spec.namespace, spec.name, spec.netns
        ))
    })
}

/// The lowest pod id not in use.
fn free_id(st: &State) -> Result<u32> {
    let used: std::collections::BTreeSet<u32> = st.pods()?.into_iter().map(|(k, _)| k).collect();
    (1..L::ZTR_MAX_PODS.0)
        .find(|i| !used.contains(i))
        .ok_or_else(|| {
            usage(format!(
                "no room for another in-pod workload (at most {})",
                L::ZTR_MAX_PODS.0 - 1
            ))
        })
}

/// The netns' sk_lookup link, pinned; attached once.
fn attach_lookup(tx: &Txn, id: u32, ns: &NetNs) -> Result<bool> {
    let pin = tx.pins.link(&lookup_link(id));
    if attach::link_state(&pin).is_some_and(|s| s.attached) {
        return Ok(false);
    }
    attach::detach_link(&pin)?;
    tx.record(Undo::Unpin { path: pin.clone() })?;
    let fd = bpf::prog_fd(tx.pins, Prog::PodLookup)?;
    attach::attach_sk_lookup(fd.as_fd(), ns.file.as_fd(), &pin)
        .with_context(|| format!("attach sk_lookup to netns {}", ns.path.display()))?;
    Ok(true)
}

/// Policy routing (marked packets are delivered locally) and lo's
/// sysctls: IPv4 takes packets with the netns' own source on lo only with
/// accept_local, and 127.0.0.1 as a rewritten destination only with
/// route_localnet. Returns the values found (kept from `old`).
fn netns_settings(
    tx: &Txn,
    plan: &Plan,
    old: Option<&ztr_pod>,
    changed: &mut bool,
) -> Result<(i8, i8, u8)> {
    let ns_path = plan.ns.path.to_string_lossy().into_owned();
    let before = plan.nl.policy_routing()?;
    if !before.complete() {
        if before == Default::default() {
            tx.record(Undo::PolicyRoutingRemove {
                netns: ns_path.clone(),
            })?;
        }
        plan.nl
            .ensure_policy_routing()
            .with_context(|| format!("policy routing in netns {ns_path}"))?;
        *changed = true;
    }
    let read = |key: &'static str| -> Result<i8> {
        plan.ns.run(|| {
            Ok(sysctl_get(key)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(-1))
        })
    };
    let accept_local = read("net/ipv4/conf/lo/accept_local")?;
    let route_localnet = read("net/ipv4/conf/lo/route_localnet")?;
    for key in [
        "net/ipv4/conf/lo/accept_local",
        "net/ipv4/conf/lo/route_localnet",
    ] {
        tx.sysctl(Some(&plan.ns), key, "1")?;
    }
    *changed |= old.is_none() && (accept_local != 1 || route_localnet != 1);
    Ok(match old {
        Some(o) => (
            o.saved_accept_local,
            o.saved_route_localnet,
            o.had_policy_routing,
        ),
        None => (accept_local, route_localnet, before.complete() as u8),
    })
}

/// `detach --netns`.
pub fn detach(ctx: &Ctx, netns: &str) -> Result<Outcome> {
    if !ctx.pins.exists() {
        return Ok(Outcome::unchanged(format!(
            "netns {netns} is not attached, nothing to do"
        )));
    }
    ctx.change(|tx| {
        let Some(id) = find(tx, netns)? else {
            return Ok(Outcome::unchanged(format!(
                "netns {netns} is not attached, nothing to do"
            )));
        };
        detach_locked(tx, id)
    })
}

/// The pod attached in `netns` (opened, matched by inode; when it cannot
/// be opened, matched by the path it was attached by).
pub fn find(st: &State, netns: &str) -> Result<Option<u32>> {
    let ns = NetNs::open(netns).ok();
    Ok(st.pods()?.into_iter().find_map(|(id, p)| {
        let hit = match &ns {
            Some(ns) => p.netns_inode == ns.inode,
            None => {
                let path = state::from_cstr(&p.netns);
                path == netns || path == format!("/run/netns/{netns}")
            }
        };
        hit.then_some(id)
    }))
}

pub fn detach_locked(tx: &Txn, id: u32) -> Result<Outcome> {
    let Some((_, p)) = tx.pods()?.into_iter().find(|(k, _)| *k == id) else {
        return Ok(Outcome::unchanged(format!("pod {id} is not attached")));
    };
    let netns = state::from_cstr(&p.netns);
    let name = format!(
        "{}/{}",
        state::from_cstr(&p.k8s_namespace),
        state::from_cstr(&p.name)
    );
    let mode = mode_from_raw(p.mode);
    let link = Link {
        index: p.ifindex,
        name: state::from_cstr(&p.iface),
        ..Default::default()
    };
    // Addresses first: with them gone the programs pass nothing as this
    // workload's while the rest comes off.
    for ep in tx.endpoints()? {
        if ep.kind == EndpointKind::Pod && ep.ifindex == id {
            tx.del_endpoint(&ep.ip)?;
        }
    }
    attach::detach_link(&tx.pins.link(&lookup_link(id)))?;
    let ns = NetNs::open(&netns)
        .ok()
        .filter(|ns| ns.inode == p.netns_inode);
    match &ns {
        Some(ns) => {
            let present = Netlink::in_netns(ns)?.link_by_index(p.ifindex)?.is_some();
            ns.run(|| pod_target(id, &link, &netns).detach(tx, mode, present))?;
            ns.run(|| lo_target(id, &netns).detach(tx, mode, true))?;
            restore_netns(tx, ns, &p)?;
        }
        None => {
            pod_target(id, &link, &netns).detach(tx, mode, false)?;
            lo_target(id, &netns).detach(tx, mode, false)?;
        }
    }
    tx.del_pod(id)?;
    tx.clear_pod_listeners(id)?;
    Ok(Outcome::changed(format!(
        "detached in-pod {name} from netns {netns}"
    )))
}

/// Policy routing and lo's sysctls as attach found them.
fn restore_netns(tx: &Txn, ns: &NetNs, p: &ztr_pod) -> Result<()> {
    tx.restore_netns(
        ns,
        p.had_policy_routing != 0,
        &[
            ("net/ipv4/conf/lo/accept_local", p.saved_accept_local),
            ("net/ipv4/conf/lo/route_localnet", p.saved_route_localnet),
        ],
    )
}

/// Detaches every in-pod workload (`detach --all`, `uninstall`).
pub fn detach_all_locked(tx: &Txn) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (id, _) in tx.pods()? {
        out.extend(detach_locked(tx, id)?.messages);
    }
    Ok(out)
}

/// Whether `pod`'s netns is still the one it was attached in.
pub fn netns_present(pod: &Pod) -> bool {
    NetNs::open(&pod.netns).is_ok_and(|ns| ns.inode == pod.netns_inode)
}

/// Whether every in-pod program of `pod` is attached.
pub fn attached(pins: &crate::dataplane::pins::PinDir, pod: &Pod) -> bool {
    if !attach::link_state(&pins.link(&lookup_link(pod.id))).is_some_and(|s| s.attached) {
        return false;
    }
    let Ok(ns) = NetNs::open(&pod.netns) else {
        return false;
    };
    let mode = pod.attach_mode();
    let link = Link {
        index: pod.ifindex,
        name: pod.iface.clone(),
        ..Default::default()
    };
    ns.run(|| {
        let t = [
            pod_target(pod.id, &link, &pod.netns),
            lo_target(pod.id, &pod.netns),
        ];
        Ok(t.iter().all(|t| {
            t.hooks
                .iter()
                .all(|&(hook, prog)| t.attached(pins, mode, hook, prog).is_some())
        }))
    })
    .unwrap_or(false)
}

/// `ztredir zds`: serves the pinned in-pod workloads to ztunnel until
/// SIGTERM or SIGINT. Each poll reads the pinned state under the shared
/// lock; after each add ztunnel acks, that workload's listener slots are
/// cleared so that the next connection finds the listener ztunnel has now.
pub fn serve_zds(ctx: &Ctx, socket: &std::path::Path) -> Result<()> {
    let source = || -> Result<Vec<crate::zds::Workload>> {
        let Some(st) = ctx.read()? else {
            return Ok(Vec::new());
        };
        Ok(pods(&st)?
            .into_iter()
            .map(|p| crate::zds::Workload {
                uid: p.uid,
                name: p.name,
                namespace: p.namespace,
                service_account: p.service_account,
                netns: p.netns.into(),
                netns_inode: p.netns_inode,
            })
            .collect())
    };
    let added = |w: &crate::zds::Workload| {
        let cleared = ctx.read().and_then(|st| {
            let Some(st) = st else { return Ok(()) };
            match pods(&st)?.into_iter().find(|p| p.uid == w.uid) {
                Some(p) => state::clear_pod_listeners(&st, p.id),
                None => Ok(()),
            }
        });
        if let Err(e) = cleared {
            eprintln!("zds: clear the listener slots of uid={}: {e:#}", w.uid);
        }
    };
    crate::zds::run(socket, &source, &added)
}
