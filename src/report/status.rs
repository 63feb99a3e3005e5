// SPDX-License-Identifier: Apache-2.0
//! `status`, `ztunnel show` and `workload list`: rows read from the pinned
//! state and the live system, with the health model's problems as warnings.

use std::net::IpAddr;

use anyhow::Result;
use serde::Serialize;

use crate::ctx::Ctx;
use crate::dataplane::hooks::HookState;
use crate::dataplane::skel::types::{ztr_config, ztr_config_flags};
use crate::dataplane::state::{self, EndpointKind, Role, State};
use crate::node::ztunnel::{mode_from_raw, Ports};

#[derive(Debug, Serialize)]
pub struct ZtunnelRow {
    /// "node-level" (a ztunnel netns the node redirects into) or "in-pod"
    /// (ztunnel listens in each workload's netns).
    pub mode: &'static str,
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
    pub exclude: Option<crate::node::exclude::Exclusions>,
}

#[derive(Debug, Serialize)]
pub struct WorkloadRow {
    pub ip: IpAddr,
    pub iface: String,
    pub ifindex: u32,
}

#[derive(Debug, Serialize)]
pub struct PodRow {
    #[serde(flatten)]
    pub pod: crate::node::inpod::Pod,
    /// The netns is still there (same inode).
    pub present: bool,
    /// Every in-pod program is attached (tc hooks, lo, sk_lookup).
    pub attached: bool,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub pin_dir: String,
    pub version: VersionRow,
    pub ztunnel: Option<ZtunnelRow>,
    pub interfaces: Vec<IfaceRow>,
    pub workloads: Vec<WorkloadRow>,
    /// In-pod workloads (`attach --netns`).
    pub pods: Vec<PodRow>,
    /// Packets by reason, over every interface (see `stats`).
    pub counters: Vec<CounterRow>,
    /// Whether the programs write decisions to the ring buffer, and for whom.
    pub trace: crate::report::observe::TraceState,
    pub warnings: Vec<String>,
}

/// The version that made the pinned state (None: nothing pinned) and this
/// binary's: they differ between installing a new ztredir and `upgrade`.
#[derive(Debug, Serialize)]
pub struct VersionRow {
    pub pinned: Option<String>,
    pub binary: &'static str,
    pub current: bool,
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
        mode: if cfg.flags & ztr_config_flags::ZTR_CFG_INPOD.0 != 0 {
            "in-pod"
        } else {
            "node-level"
        },
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
        conntrack_size: crate::report::observe::conn_table_size(st)?,
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
        version: VersionRow {
            pinned: None,
            binary: crate::dataplane::schema::VERSION,
            current: true,
        },
        ztunnel: None,
        interfaces: vec![],
        workloads: vec![],
        pods: vec![],
        counters: vec![],
        trace: Default::default(),
        warnings: vec![],
    };
    let st = ctx.read()?;
    let health = crate::report::health::inspect(ctx, st.as_deref())?;
    s.warnings = health
        .findings
        .0
        .iter()
        .filter(|f| f.is_problem())
        .map(|f| f.warning())
        .collect();
    let Some(st) = st else {
        return Ok(s);
    };
    s.version.pinned = Some(st.schema.version.clone());
    s.version.current = st.schema.current;
    s.trace = crate::report::observe::trace_state(&ctx.pins, &st)?;
    if let Some(cfg) = st.ztunnel()? {
        s.ztunnel = Some(ztunnel_row(&st, &cfg)?);
    }
    let mut excl = crate::node::exclude::read_all(&st)?;
    s.interfaces = health
        .ifaces
        .into_iter()
        .map(|i| IfaceRow {
            exclude: match i.role {
                Role::Workload => excl.remove(&i.ifindex).filter(|e| !e.is_empty()),
                _ => None,
            },
            name: i.name,
            ifindex: i.ifindex,
            role: i.role,
            netns: i.netns,
            mode: mode_from_raw(i.entry.mode).name(),
            present: i.present,
            hooks: i.hooks,
        })
        .collect();
    s.workloads = workloads(&st)?;
    s.pods = crate::node::inpod::pods(&st)?
        .into_iter()
        .map(|pod| PodRow {
            present: crate::node::inpod::netns_present(&pod),
            attached: crate::node::inpod::attached(&ctx.pins, &pod),
            pod,
        })
        .collect();
    let totals = crate::report::observe::totals(&crate::report::observe::stats(&st, None)?);
    s.counters = totals
        .into_iter()
        .map(|(reason, packets)| CounterRow { reason, packets })
        .collect();
    Ok(s)
}
