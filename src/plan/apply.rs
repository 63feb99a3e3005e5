// SPDX-License-Identifier: Apache-2.0
//! `apply -f FILE` and `export`: converge the node to a node file, and
//! print the node as one.
//!
//! apply validates everything it can before the first change (the file,
//! then every interface, netns and address against the system), reads what
//! the node has, plans the changes as data (`plan`, pure), and then makes
//! them one at a time in one change of the pinned state: every step is
//! journaled, so when one fails (or the process dies) the ones before it
//! are undone and the node ends either as it was or as the file says.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use anyhow::{anyhow, Context, Result};
use serde::Serialize;

use crate::ctx::{Ctx, Outcome};
use crate::dataplane::attach::{AttachMode, Mode};
use crate::dataplane::skel::types::ztr_config;
use crate::dataplane::state::{EndpointKind, State, Txn};
use crate::error::usage;
use crate::node::nodefile::{self, ConntrackSize, IfName, NodeFile, UniqueIp, WorkloadIp};
use crate::node::workload::{self, Desired};
use crate::node::ztunnel::{self, Ports, Spec};

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub dry_run: bool,
    pub prune: bool,
}

/// What apply did (or, with --dry-run, would do).
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub changed: bool,
    pub dry_run: bool,
    /// One line per change: "+" adds, "-" removes, "~" modifies.
    pub changes: Vec<String>,
}

/// Reads and parses a node file ("-" is stdin); errors name the place.
pub fn read_file(path: &str) -> Result<NodeFile> {
    let shown = if path == "-" { "<stdin>" } else { path };
    let bytes = if path == "-" {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
            .context("read node file from stdin")?;
        b
    } else {
        std::fs::read(path).map_err(|e| usage(format!("cannot read node file {path}: {e}")))?
    };
    // Bytes first, text second: binary input is bad input, from a file
    // or from stdin alike.
    let text = String::from_utf8(bytes).map_err(|e| {
        usage(format!(
            "{shown}: not a text file (invalid UTF-8 at byte {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    nodefile::parse(&text).map_err(|e| usage(format!("{shown}:{e}")))
}

/// The file's ztunnel and workloads as operations want them. A mode given
/// on the command line wins over the file's.
pub fn desired(file: &NodeFile, cli_mode: Option<Mode>) -> (Option<Spec>, Vec<Desired>) {
    let top = cli_mode.or(file.attach_mode.and_then(AttachMode::forced));
    let zt = file.ztunnel.as_ref().map(|z| Spec {
        in_pod: false,
        iface: z.iface.0.clone(),
        netns: z.netns.clone(),
        pod_iface: z.pod_iface.as_ref().map(|p| p.0.clone()),
        host_ips: z.host_ips.iter().map(|i| i.0).collect(),
        capture_dns: z.capture_dns,
        ports: Ports {
            outbound: z.ports.outbound.0,
            inbound: z.ports.inbound_plaintext.0,
            hbone: z.ports.inbound_hbone.0,
            dns: z.ports.dns.0,
        },
        conntrack: Some(z.conntrack_size.0).filter(|n| *n > 0),
        mode: top,
    });
    let wls = file
        .workloads
        .iter()
        .map(|w| Desired {
            iface: w.iface.0.clone(),
            ips: w.ips.iter().map(|i| i.0).collect(),
            exclude: w.exclude.clone(),
            mode: cli_mode
                .or(w.attach_mode.and_then(AttachMode::forced))
                .or(top),
        })
        .collect();
    (zt, wls)
}

/// One change `apply` makes, as data: planned from what the node has and
/// what the file wants, printed as a line, then carried out in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// ztunnel set; `diff` lists the settings that change (empty: new).
    Ztunnel {
        spec: Spec,
        new: bool,
        diff: Vec<String>,
    },
    ClearZtunnel {
        iface: String,
    },
    /// Frees addresses of a workload before others take them (shown as
    /// part of its Workload line).
    Trim {
        iface: String,
        ips: Vec<IpAddr>,
    },
    Detach {
        iface: String,
        ifindex: u32,
        ips: Vec<IpAddr>,
        stale: bool,
    },
    /// A workload converged to the file: new, or with these differences
    /// ("+ip 10.0.0.1", "-exclude outbound port 5432"); none is a no-op
    /// unless something needs repair.
    Workload {
        want: Desired,
        new: bool,
        items: Vec<String>,
    },
}

impl Change {
    /// The line apply prints for it ("+" adds, "-" removes, "~" modifies).
    pub fn line(&self) -> Option<String> {
        match self {
            Change::Ztunnel {
                spec, new: true, ..
            } => Some(format!(
                "+ ztunnel on {} in netns {}",
                spec.iface, spec.netns
            )),
            Change::Ztunnel { diff, .. } if diff.is_empty() => None,
            Change::Ztunnel { diff, .. } => Some(
                diff.iter()
                    .map(|d| format!("~ ztunnel: {d}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            Change::ClearZtunnel { iface } => Some(format!("- ztunnel on {iface} (clear)")),
            Change::Trim { .. } => None,
            Change::Detach {
                iface,
                ifindex,
                stale: true,
                ..
            } => Some(format!("- detach stale {iface} (ifindex {ifindex})")),
            Change::Detach { iface, ips, .. } => {
                Some(format!("- detach {iface} ({})", ips_text(ips)))
            }
            Change::Workload {
                want, new: true, ..
            } => {
                let ex = if want.exclude.is_empty() {
                    String::new()
                } else {
                    format!(", exclude {}", want.exclude.summary())
                };
                Some(format!(
                    "+ attach {} ({}{ex})",
                    want.iface,
                    ips_text(&want.ips)
                ))
            }
            Change::Workload { items, .. } if items.is_empty() => None,
            Change::Workload { want, items, .. } => {
                Some(format!("~ {}: {}", want.iface, items.join(", ")))
            }
        }
    }

    fn what(&self) -> String {
        match self {
            Change::Ztunnel { spec, .. } => format!("ztunnel set on {}", spec.iface),
            Change::ClearZtunnel { .. } => "ztunnel clear".into(),
            Change::Trim { iface, ips } => format!("remove {} from {iface}", ips_text(ips)),
            Change::Detach { iface, .. } => format!("detach {iface}"),
            Change::Workload { want, .. } => format!("attach {}", want.iface),
        }
    }

    /// Order: trims and detaches first, so that an address moving between
    /// workloads, or to ztunnel, is free when its new owner takes it.
    fn rank(&self) -> u8 {
        match self {
            Change::Trim { .. } | Change::Detach { .. } => 0,
            Change::Ztunnel { .. } | Change::ClearZtunnel { .. } => 1,
            Change::Workload { .. } => 2,
        }
    }
}

fn ips_text(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the node has, read once before planning.
#[derive(Debug, Clone, Default)]
pub struct Current {
    /// The configured ztunnel, and the settings `set` was given.
    pub ztunnel: Option<(ztr_config, Spec)>,
    /// Attached workloads: the ifindex each was attached with.
    pub workloads: Vec<(u32, Desired)>,
    /// The ifindex each attached workload's interface has now (None: gone).
    pub ifindex_now: BTreeMap<String, Option<u32>>,
    /// Addresses that are ztunnel's or node host IPs.
    pub special: Vec<(IpAddr, EndpointKind)>,
}

/// What the file wants, checked against the system.
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    /// The ztunnel, and where it is (host ifindex, pod ifindex, netns inode).
    pub ztunnel: Option<(Spec, (u32, u32, u64))>,
    pub workloads: Vec<Desired>,
    /// Every address the file gives, and to whom.
    pub owner: BTreeMap<IpAddr, String>,
}

/// The plan: pure, from what the node has to what the file wants. An
/// impossible file is a usage error.
pub fn plan(cur: &Current, want: &Wanted, prune: bool) -> Result<Vec<Change>> {
    check_ztunnel_kept(cur, want)?;
    let mut changes = plan_ztunnel(cur, want, prune);
    let named: BTreeSet<&str> = want.workloads.iter().map(|w| w.iface.as_str()).collect();
    let mut kept = Vec::new();
    for (ifindex, c) in &cur.workloads {
        let now = cur.ifindex_now.get(&c.iface).copied().flatten();
        let wanted = named.contains(c.iface.as_str());
        if wanted && now.is_some_and(|i| i != *ifindex) {
            // Deleted and made again under the same name: a new ifindex.
            changes.push(detach(c, *ifindex, true));
        } else if wanted {
            kept.push(c);
        } else if prune {
            changes.push(detach(c, *ifindex, false));
        } else if let Some(ip) = c.ips.iter().find(|ip| want.owner.contains_key(ip)) {
            return Err(usage(format!(
                "IP {ip} belongs to {}, which the file does not name (name it, or use --prune)",
                c.iface
            )));
        }
    }
    for w in &want.workloads {
        changes.extend(plan_workload(
            kept.iter().find(|c| c.iface == w.iface).copied(),
            w,
        ));
    }
    changes.sort_by_key(Change::rank);
    Ok(changes)
}

fn detach(c: &Desired, ifindex: u32, stale: bool) -> Change {
    Change::Detach {
        iface: c.iface.clone(),
        ifindex,
        ips: c.ips.clone(),
        stale,
    }
}

/// Without a ztunnel in the file, the one configured stays: its interface
/// and addresses are not a workload's to take.
fn check_ztunnel_kept(cur: &Current, want: &Wanted) -> Result<()> {
    let (None, Some((_, have))) = (&want.ztunnel, &cur.ztunnel) else {
        return Ok(());
    };
    if let Some(w) = want.workloads.iter().find(|w| w.iface == have.iface) {
        return Err(usage(format!(
            "interface {} is ztunnel's, not a workload's",
            w.iface
        )));
    }
    for (ip, kind) in &cur.special {
        if let Some(w) = want.workloads.iter().find(|w| w.ips.contains(ip)) {
            let what = if *kind == EndpointKind::Host {
                "a node host IP"
            } else {
                "ztunnel's address"
            };
            return Err(usage(format!(
                "IP {ip} of {} is {what}, not a workload's",
                w.iface
            )));
        }
    }
    Ok(())
}

fn plan_ztunnel(cur: &Current, want: &Wanted, prune: bool) -> Vec<Change> {
    match (&want.ztunnel, &cur.ztunnel) {
        (Some((spec, place)), Some((cfg, have))) => vec![Change::Ztunnel {
            spec: spec.clone(),
            new: false,
            diff: ztunnel::diff(cfg, have, *place, spec),
        }],
        (Some((spec, _)), None) => vec![Change::Ztunnel {
            spec: spec.clone(),
            new: true,
            diff: vec![],
        }],
        (None, Some((_, have))) if prune => vec![Change::ClearZtunnel {
            iface: have.iface.clone(),
        }],
        _ => vec![],
    }
}

fn plan_workload(have: Option<&Desired>, w: &Desired) -> Vec<Change> {
    let Some(c) = have else {
        return vec![Change::Workload {
            want: w.clone(),
            new: true,
            items: vec![],
        }];
    };
    let gone: Vec<IpAddr> = c
        .ips
        .iter()
        .filter(|ip| !w.ips.contains(ip))
        .copied()
        .collect();
    let mut items: Vec<String> = w
        .ips
        .iter()
        .filter(|ip| !c.ips.contains(ip))
        .map(|ip| format!("+ip {ip}"))
        .collect();
    items.extend(gone.iter().map(|ip| format!("-ip {ip}")));
    items.extend(c.exclude.diff(&w.exclude).into_iter().map(|d| {
        let (sign, rest) = d.split_at(1);
        format!("{sign}exclude {rest}")
    }));
    if let (Some(h), Some(m)) = (c.mode, w.mode) {
        if h != m {
            items.push(format!("attach mode {} -> {}", h.name(), m.name()));
        }
    }
    let mut out = vec![Change::Workload {
        want: w.clone(),
        new: false,
        items,
    }];
    if !gone.is_empty() {
        out.push(Change::Trim {
            iface: c.iface.clone(),
            ips: gone,
        });
    }
    out
}

/// Checks the file against the system before any lock or change: every
/// interface, netns and address it names. Returns what it wants.
fn wanted(ctx: &Ctx, file: &NodeFile) -> Result<Wanted> {
    let (zt, workloads) = desired(file, ctx.mode);
    let forced = zt
        .iter()
        .filter_map(|z| z.mode)
        .chain(workloads.iter().filter_map(|w| w.mode));
    if forced.into_iter().any(|m| m == Mode::Tcx) && !crate::dataplane::attach::tcx_supported(1) {
        return Err(usage(
            "attach mode tcx: this kernel has no TCX (use auto or tc)",
        ));
    }
    let mut want = Wanted::default();
    if let Some(spec) = zt {
        let plan = ztunnel::validate(ctx, None, &spec)?;
        for ip in &plan.ips {
            want.owner.insert(*ip, "ztunnel".into());
        }
        for ip in &spec.host_ips {
            want.owner.insert(*ip, "the node host IPs".into());
        }
        want.ztunnel = Some((spec, plan.place()));
    }
    for w in workloads {
        let (link, ips) = workload::resolve(ctx, None, &w.iface, &w.ips)?;
        if want
            .ztunnel
            .as_ref()
            .is_some_and(|(z, _)| z.iface == link.name)
        {
            return Err(usage(format!(
                "interface {} is both ztunnel's and a workload's",
                link.name
            )));
        }
        for ip in &ips {
            if let Some(other) = want.owner.insert(*ip, w.iface.clone()) {
                return Err(usage(format!(
                    "IP {ip} would belong to both {other} and {}",
                    w.iface
                )));
            }
        }
        want.workloads.push(Desired { ips, ..w });
    }
    Ok(want)
}

/// What the node has now.
fn current(ctx: &Ctx, st: Option<&State>) -> Result<Current> {
    let Some(st) = st else {
        return Ok(Current::default());
    };
    let ztunnel = match st.ztunnel()? {
        Some(cfg) => Some((cfg, ztunnel::current_spec(st, &cfg)?)),
        None => None,
    };
    let workloads = workload::current_all(st)?;
    let mut ifindex_now = BTreeMap::new();
    for (_, d) in &workloads {
        ifindex_now.insert(
            d.iface.clone(),
            ctx.nl.link_by_name(&d.iface)?.map(|l| l.index),
        );
    }
    let special = st
        .endpoints()?
        .into_iter()
        .filter(|e| e.kind != EndpointKind::Workload)
        .map(|e| (e.ip, e.kind))
        .collect();
    Ok(Current {
        ztunnel,
        workloads,
        ifindex_now,
        special,
    })
}

fn report(changes: &[Change], dry_run: bool, repaired: Vec<String>) -> Report {
    let mut lines: Vec<String> = changes
        .iter()
        .filter_map(Change::line)
        .flat_map(|l| l.split('\n').map(str::to_string).collect::<Vec<_>>())
        .collect();
    lines.extend(repaired);
    Report {
        changed: !lines.is_empty(),
        dry_run,
        changes: lines,
    }
}

pub fn apply(ctx: &Ctx, file: &NodeFile, opts: Options) -> Result<Report> {
    // 1. Everything the file names must exist, before any lock or change.
    let want = wanted(ctx, file)?;
    // 2. What is there now, and the plan; a dry run stops here.
    if opts.dry_run {
        let reader = ctx.read()?;
        let cur = current(ctx, reader.as_deref())?;
        return Ok(report(&plan(&cur, &want, opts.prune)?, true, vec![]));
    }
    // 3. The changes, in one change of the pinned state: a failing step
    // undoes the ones before it.
    ctx.change(|tx| {
        let cur = current(ctx, Some(tx))?;
        let changes = plan(&cur, &want, opts.prune)?;
        crate::failpoint::hit("apply-validated")?;
        let have: Vec<Desired> = cur.workloads.iter().map(|(_, d)| d.clone()).collect();
        let mut repaired = Vec::new();
        for (i, change) in changes.iter().enumerate() {
            let o = crate::failpoint::hit(&format!("apply-step-{}", i + 1))
                .and_then(|()| run(tx, change, &have))
                .map_err(|e| {
                    anyhow!("apply failed at step {} ({}): {e:#}", i + 1, change.what())
                })?;
            if o.changed && change.line().is_none() && !matches!(change, Change::Trim { .. }) {
                repaired.extend(o.messages.into_iter().map(|m| format!("~ repaired: {m}")));
            }
        }
        Ok(report(&changes, false, repaired))
    })
}

fn run(tx: &Txn, change: &Change, have: &[Desired]) -> Result<Outcome> {
    match change {
        Change::Ztunnel { spec, .. } => ztunnel::set_locked(tx, spec),
        Change::ClearZtunnel { .. } => ztunnel::clear_locked(tx),
        Change::Workload { want, new, .. } => {
            let none = Desired {
                iface: want.iface.clone(),
                ips: vec![],
                exclude: Default::default(),
                mode: None,
            };
            // New: nothing (a stale entry of the same name was detached).
            let h = match new {
                true => &none,
                false => have.iter().find(|c| c.iface == want.iface).unwrap_or(&none),
            };
            workload::converge(tx, want, Some(h))
        }
        Change::Trim { iface, ips } => {
            for ip in ips {
                tx.del_endpoint(ip)?;
            }
            Ok(Outcome::changed(format!(
                "removed {} from {iface}",
                ips_text(ips)
            )))
        }
        Change::Detach { ifindex, .. } => {
            let key = crate::dataplane::state::node_key(*ifindex);
            match tx.iface(key)? {
                Some(entry) => workload::detach_entry(tx, key, &entry),
                None => Ok(Outcome::default()),
            }
        }
    }
}

/// The node's state as a node file that `apply` accepts.
pub fn export(ctx: &Ctx) -> Result<NodeFile> {
    let mut file = NodeFile {
        version: nodefile::Version(nodefile::VERSION),
        attach_mode: None,
        ztunnel: None,
        workloads: vec![],
    };
    let Some(st) = ctx.read()? else {
        return Ok(file);
    };
    let mut top: Option<Mode> = None;
    if let Some(cfg) = st.ztunnel()? {
        let s = ztunnel::current_spec(&st, &cfg)?;
        top = s.mode;
        file.ztunnel = Some(nodefile::ZtunnelFile {
            iface: IfName(s.iface),
            netns: s.netns,
            pod_iface: s.pod_iface.map(nodefile::NsIfName),
            host_ips: s.host_ips.into_iter().map(UniqueIp).collect(),
            capture_dns: s.capture_dns,
            ports: nodefile::PortsFile {
                outbound: crate::node::exclude::Port(s.ports.outbound),
                inbound_plaintext: crate::node::exclude::Port(s.ports.inbound),
                inbound_hbone: crate::node::exclude::Port(s.ports.hbone),
                dns: crate::node::exclude::Port(s.ports.dns),
            },
            conntrack_size: ConntrackSize(s.conntrack.unwrap_or(0)),
        });
    }
    for (_, d) in workload::current_all(&st)? {
        top = top.or(d.mode);
        file.workloads.push(nodefile::WorkloadFile {
            iface: IfName(d.iface),
            ips: d.ips.into_iter().map(WorkloadIp).collect(),
            exclude: d.exclude,
            attach_mode: d.mode.map(AttachMode::of),
        });
    }
    file.attach_mode = top.map(AttachMode::of);
    for w in &mut file.workloads {
        if w.attach_mode == file.attach_mode {
            w.attach_mode = None;
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::exclude::{Exclusions, Port};

    fn wl(iface: &str, ips: &[&str]) -> Desired {
        Desired {
            iface: iface.into(),
            ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
            exclude: Exclusions::default(),
            mode: None,
        }
    }

    fn spec(capture_dns: bool) -> Spec {
        Spec {
            in_pod: false,
            iface: "vzt".into(),
            netns: "zt".into(),
            pod_iface: Some("eth0".into()),
            host_ips: vec!["10.99.0.1".parse().unwrap()],
            capture_dns,
            ports: Ports::DEFAULT,
            conntrack: Some(Ports::CONNTRACK_DEFAULT),
            mode: None,
        }
    }

    fn zt_cfg() -> ztr_config {
        ztr_config {
            host_ifindex: 3,
            pod_ifindex: 2,
            netns_inode: 77,
            ..Default::default()
        }
    }

    /// A node with `workloads` attached (ifindex 10, 11, ... unchanged).
    fn node(ztunnel: bool, workloads: Vec<Desired>) -> Current {
        let mut cur = Current::default();
        if ztunnel {
            cur.ztunnel = Some((zt_cfg(), spec(false)));
            cur.special = vec![("10.244.0.2".parse().unwrap(), EndpointKind::Ztunnel)];
        }
        for (i, w) in workloads.iter().enumerate() {
            let ifindex = 10 + i as u32;
            cur.workloads.push((ifindex, w.clone()));
            cur.ifindex_now.insert(w.iface.clone(), Some(ifindex));
        }
        cur
    }

    fn file(ztunnel: Option<Spec>, workloads: Vec<Desired>) -> Wanted {
        let mut want = Wanted {
            ztunnel: ztunnel.map(|s| (s, (3, 2, 77))),
            workloads: workloads.clone(),
            ..Default::default()
        };
        for w in &workloads {
            for ip in &w.ips {
                want.owner.insert(*ip, w.iface.clone());
            }
        }
        want
    }

    fn lines(changes: &[Change]) -> Vec<String> {
        report(changes, true, vec![]).changes
    }

    type Case = (&'static str, Current, Wanted, bool, Vec<&'static str>);

    /// (what, the node, the file, --prune, the lines apply prints).
    fn cases() -> Vec<Case> {
        let va = wl("va", &["10.244.0.10"]);
        let vb = wl("vb", &["10.244.0.11"]);
        let va_moved = wl("va", &["10.244.0.12"]);
        let mut va_excl = va.clone();
        va_excl.exclude.outbound_ports.insert(Port(5432));
        vec![
            (
                "nothing to nothing",
                node(false, vec![]),
                file(None, vec![]),
                false,
                vec![],
            ),
            (
                "a new workload",
                node(false, vec![]),
                file(None, vec![va.clone()]),
                false,
                vec!["+ attach va (10.244.0.10)"],
            ),
            (
                "the same workload",
                node(false, vec![va.clone()]),
                file(None, vec![va.clone()]),
                false,
                vec![],
            ),
            (
                "an address moves",
                node(false, vec![va.clone()]),
                file(None, vec![va_moved]),
                false,
                vec!["~ va: +ip 10.244.0.12, -ip 10.244.0.10"],
            ),
            (
                "an exclusion",
                node(false, vec![va.clone()]),
                file(None, vec![va_excl]),
                false,
                vec!["~ va: +exclude outbound port 5432"],
            ),
            (
                "unnamed kept",
                node(false, vec![va.clone(), vb.clone()]),
                file(None, vec![va.clone()]),
                false,
                vec![],
            ),
            (
                "unnamed pruned",
                node(false, vec![va.clone(), vb]),
                file(None, vec![va.clone()]),
                true,
                vec!["- detach vb (10.244.0.11)"],
            ),
            (
                "a new ztunnel",
                node(false, vec![]),
                file(Some(spec(false)), vec![]),
                false,
                vec!["+ ztunnel on vzt in netns zt"],
            ),
            (
                "a ztunnel setting",
                node(true, vec![]),
                file(Some(spec(true)), vec![]),
                false,
                vec!["~ ztunnel: capture-dns false -> true"],
            ),
            (
                "the same ztunnel",
                node(true, vec![]),
                file(Some(spec(false)), vec![]),
                false,
                vec![],
            ),
            (
                "ztunnel kept",
                node(true, vec![]),
                file(None, vec![]),
                false,
                vec![],
            ),
            (
                "ztunnel pruned",
                node(true, vec![]),
                file(None, vec![]),
                true,
                vec!["- ztunnel on vzt (clear)"],
            ),
        ]
    }

    #[test]
    fn plans_are_the_differences_in_order() {
        let cases = cases();
        for (what, cur, want, prune, expect) in cases {
            let changes = plan(&cur, &want, prune).unwrap_or_else(|e| panic!("{what}: {e:#}"));
            assert_eq!(lines(&changes), expect, "{what}");
        }
    }

    #[test]
    fn trims_and_detaches_come_first() {
        // va gives its address to vb: freeing it must come before vb takes it.
        let cur = node(true, vec![wl("va", &["10.244.0.10"])]);
        let want = file(Some(spec(true)), vec![wl("vb", &["10.244.0.10"])]);
        let changes = plan(&cur, &want, true).unwrap();
        let ranks: Vec<u8> = changes.iter().map(Change::rank).collect();
        assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "{changes:?}");
        assert!(matches!(changes[0], Change::Detach { ref iface, .. } if iface == "va"));
        assert!(
            matches!(changes.last(), Some(Change::Workload { want, new: true, .. }) if want.iface == "vb")
        );
    }

    #[test]
    fn a_recreated_interface_is_detached_and_attached_afresh() {
        let va = wl("va", &["10.244.0.10"]);
        let mut cur = node(false, vec![va.clone()]);
        cur.ifindex_now.insert("va".into(), Some(99));
        let changes = plan(&cur, &file(None, vec![va]), false).unwrap();
        assert_eq!(
            lines(&changes),
            [
                "- detach stale va (ifindex 10)",
                "+ attach va (10.244.0.10)"
            ]
        );
    }

    #[test]
    fn impossible_files_are_usage_errors() {
        // An address of an unnamed workload, without --prune.
        let cur = node(false, vec![wl("va", &["10.244.0.10"])]);
        let want = file(None, vec![wl("vb", &["10.244.0.10"])]);
        let e = plan(&cur, &want, false).unwrap_err();
        assert!(
            format!("{e}").contains("which the file does not name"),
            "{e}"
        );
        // ztunnel's interface or address as a workload's, with ztunnel kept.
        let cur = node(true, vec![]);
        for (w, says) in [
            (wl("vzt", &["10.244.0.30"]), "is ztunnel's"),
            (wl("vc", &["10.244.0.2"]), "ztunnel's address"),
        ] {
            let e = plan(&cur, &file(None, vec![w]), false).unwrap_err();
            assert!(format!("{e}").contains(says), "{e}");
            assert!(e.is::<crate::error::UsageError>(), "exit 2: {e}");
        }
    }
}
