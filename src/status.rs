// SPDX-License-Identifier: Apache-2.0
//! `status`, `ztunnel show` and `workload list`: rows read from the pinned
//! state and the live system, with warnings for what looks wrong.

use std::net::IpAddr;

use anyhow::Result;
use serde::Serialize;

use crate::ctx::Ctx;
use crate::iface::{HookState, Target, ZTUNNEL_HOST_HOOKS, ZTUNNEL_POD_HOOKS};
use crate::netlink::Netlink;
use crate::netns::sysctl_get;
use crate::skel::types::{ztr_config, ztr_config_flags};
use crate::state::{self, EndpointKind, Role, State};
use crate::workload;
use crate::ztunnel::{self, mode_from_raw, Ports};

#[derive(Debug, Serialize)]
pub struct ZtunnelRow {
    pub host_iface: String,
    pub host_ifindex: u32,
    pub netns: String,
    pub pod_iface: String,
    pub pod_ifindex: u32,
    pub pod_mac: String,
    pub ips: Vec<IpAddr>,
    pub host_ips: Vec<IpAddr>,
    pub capture_dns: bool,
    pub ports: Ports,
    /// Connection table entries, or None when tracking is off.
    pub conntrack_size: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct IfaceRow {
    pub name: String,
    pub ifindex: u32,
    pub role: Role,
    pub netns: String,
    pub mode: &'static str,
    pub present: bool,
    pub hooks: Vec<HookState>,
    /// A workload's exclusions, when it has any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exclude: Option<crate::exclude::Exclusions>,
}

#[derive(Debug, Serialize)]
pub struct WorkloadRow {
    pub ip: IpAddr,
    pub iface: String,
    pub ifindex: u32,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub pin_dir: String,
    pub ztunnel: Option<ZtunnelRow>,
    pub interfaces: Vec<IfaceRow>,
    pub workloads: Vec<WorkloadRow>,
    /// Packets by reason, over every interface (see `stats`).
    pub counters: Vec<CounterRow>,
    /// Whether the programs write decisions to the ring buffer, and for whom.
    pub trace: crate::observe::TraceState,
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct CounterRow {
    pub reason: String,
    pub packets: u64,
}

pub fn ztunnel_row(st: &State, cfg: &ztr_config) -> Result<ZtunnelRow> {
    let eps = st.endpoints()?;
    let of = |k: EndpointKind| {
        eps.iter()
            .filter(|e| e.kind == k)
            .map(|e| e.ip)
            .collect::<Vec<_>>()
    };
    Ok(ZtunnelRow {
        host_iface: state::from_cstr(&cfg.host_iface),
        host_ifindex: cfg.host_ifindex,
        netns: state::from_cstr(&cfg.netns),
        pod_iface: state::from_cstr(&cfg.pod_iface),
        pod_ifindex: cfg.pod_ifindex,
        pod_mac: state::fmt_mac(&cfg.pod_mac),
        ips: of(EndpointKind::Ztunnel),
        host_ips: of(EndpointKind::Host),
        capture_dns: cfg.flags & ztr_config_flags::ZTR_CFG_CAPTURE_DNS.0 != 0,
        ports: Ports::of(cfg),
        conntrack_size: crate::observe::conn_table_size(st)?,
    })
}

pub fn workloads(st: &State) -> Result<Vec<WorkloadRow>> {
    let ifaces = st.ifaces()?;
    let name_of = |ifindex: u32| {
        ifaces
            .iter()
            .find(|(k, _)| *k == state::node_key(ifindex))
            .map(|(_, i)| state::from_cstr(&i.name))
            .unwrap_or_default()
    };
    let mut rows: Vec<WorkloadRow> = st
        .endpoints()?
        .into_iter()
        .filter(|e| e.kind == EndpointKind::Workload)
        .map(|e| WorkloadRow {
            ip: e.ip,
            iface: name_of(e.ifindex),
            ifindex: e.ifindex,
        })
        .collect();
    rows.sort_by(|a, b| (&a.iface, a.ip).cmp(&(&b.iface, b.ip)));
    Ok(rows)
}

pub fn collect(ctx: &Ctx) -> Result<Status> {
    let mut s = Status {
        pin_dir: ctx.pins.root.display().to_string(),
        ztunnel: None,
        interfaces: vec![],
        workloads: vec![],
        counters: vec![],
        trace: Default::default(),
        warnings: vec![],
    };
    if let Some(why) = ctx.pins.unsafe_reason() {
        s.warnings.push(format!(
            "{why}: others can unpin the links, which detaches capture (see `ztredir doctor`)"
        ));
    }
    let Some(st) = ctx.read()? else {
        return Ok(s);
    };
    s.trace = crate::observe::trace_state(&ctx.pins, &st)?;
    if s.trace.stale() {
        s.warnings.push(format!(
            "{}; run `{}`",
            s.trace.stale_message(),
            crate::observe::TRACE_FIX
        ));
    }
    let cfg = st.ztunnel()?;
    let zt_ns = cfg.as_ref().and_then(ztunnel::open_netns);
    if let Some(cfg) = &cfg {
        s.ztunnel = Some(ztunnel_row(&st, cfg)?);
        ztunnel_warnings(ctx, cfg, zt_ns.as_ref(), &mut s.warnings);
    }

    let mut excl = crate::exclude::read_all(&st)?;
    for (key, entry) in st.ifaces()? {
        let role = Role::from_raw(entry.role).unwrap_or(Role::Workload);
        let name = state::from_cstr(&entry.name);
        let ifindex = key as u32;
        let mode = mode_from_raw(entry.mode);
        let (hooks, netns) = match role {
            Role::Workload => (workload::target(&name, ifindex).hooks, "node".to_string()),
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
            link_prefix: crate::iface::link_prefix(role, ifindex),
            netns: (role == Role::ZtunnelPod).then_some(netns.as_str()),
        };
        let (present, hook_states) = if role == Role::ZtunnelPod {
            match &zt_ns {
                Some(ns) => ns.run(|| {
                    let present = Netlink::new()?
                        .link_by_index(ifindex)?
                        .is_some_and(|l| l.name == name);
                    Ok((present, t.hook_states(&ctx.pins, mode)))
                })?,
                None => (false, t.hook_states(&ctx.pins, mode)),
            }
        } else {
            let present = ctx
                .nl
                .link_by_index(ifindex)?
                .is_some_and(|l| l.name == name);
            (present, t.hook_states(&ctx.pins, mode))
        };
        if !present {
            s.warnings.push(format!(
                "interface {name} (ifindex {ifindex}) is gone: run `ztredir detach {name}`"
            ));
        } else {
            for h in hook_states.iter().filter(|h| h.prog_id.is_none()) {
                s.warnings.push(format!(
                    "{name}: {} program {} is not attached",
                    h.hook.name(),
                    h.program
                ));
            }
        }
        s.interfaces.push(IfaceRow {
            name,
            ifindex,
            role,
            netns,
            mode: mode.name(),
            present,
            hooks: hook_states,
            exclude: if role == Role::Workload {
                excl.remove(&ifindex).filter(|e| !e.is_empty())
            } else {
                None
            },
        });
    }
    s.workloads = workloads(&st)?;
    let totals = crate::observe::totals(&crate::observe::stats(&st, None)?);
    let count = |name: &str| {
        totals
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, c)| *c)
    };
    let (no_listener, no_ztunnel) = (count("drop-no-listener"), count("drop-no-ztunnel"));
    if no_listener > 0 {
        s.warnings.push(format!(
            "{no_listener} packets dropped because ztunnel was not listening on their port (drop-no-listener): is ztunnel running?"
        ));
    }
    if no_ztunnel > 0 {
        s.warnings.push(format!("{no_ztunnel} captured packets dropped while no ztunnel was configured (drop-no-ztunnel)"));
    }
    s.counters = totals
        .into_iter()
        .map(|(reason, packets)| CounterRow { reason, packets })
        .collect();
    let n = s
        .interfaces
        .iter()
        .filter(|i| i.role == Role::Workload)
        .count();
    if cfg.is_none() && n > 0 {
        s.warnings.push(format!(
            "no ztunnel configured: traffic captured on {n} interface(s) is being dropped"
        ));
    }
    Ok(s)
}

fn ztunnel_warnings(
    ctx: &Ctx,
    cfg: &ztr_config,
    ns: Option<&crate::netns::NetNs>,
    w: &mut Vec<String>,
) {
    let netns = state::from_cstr(&cfg.netns);
    let host = state::from_cstr(&cfg.host_iface);
    let Some(ns) = ns else {
        w.push(format!(
            "ztunnel netns {netns} is gone: captured traffic is being dropped"
        ));
        return;
    };
    match ns.run(|| {
        Ok((
            Netlink::new()?.policy_routing()?,
            sysctl_get("net/ipv4/ip_forward")?,
        ))
    }) {
        Ok((pr, fwd)) => {
            if !pr.complete() {
                w.push(format!(
                    "policy routing in netns {netns} is incomplete (rules v4/v6 {:?}, local routes v4/v6 {:?}): run `ztredir ztunnel set` again",
                    pr.rule, pr.route
                ));
            }
            if fwd != "0" {
                w.push(format!(
                    "IPv4 forwarding is on in netns {netns}: captured traffic may bypass ztunnel"
                ));
            }
        }
        Err(e) => w.push(format!("cannot inspect netns {netns}: {e:#}")),
    }
    let all = sysctl_get("net/ipv4/conf/all/rp_filter")
        .ok()
        .and_then(|v| v.parse::<u8>().ok())
        .unwrap_or(0);
    let dev = sysctl_get(&format!("net/ipv4/conf/{host}/rp_filter"))
        .ok()
        .and_then(|v| v.parse::<u8>().ok());
    if let Some(dev) = dev {
        let effective = all.max(dev);
        let has_v4 = ctx
            .nl
            .addresses(cfg.host_ifindex)
            .map(|a| a.iter().any(|i| i.is_ipv4()))
            .unwrap_or(false);
        if effective == 1 || (!has_v4 && effective != 0) {
            w.push(format!(
                "rp_filter on {host} is effectively {effective} (all={all}, {host}={dev}){}: packets ztunnel sends for workloads may be dropped",
                if has_v4 { "" } else { " and it has no IPv4 address" }
            ));
        }
    }
}
