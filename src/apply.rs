// SPDX-License-Identifier: Apache-2.0
//! `apply -f FILE` and `export`: converge the node to a node file, and
//! print the node as one.
//!
//! apply validates everything it can before the first change (the file,
//! then every interface, netns and address against the system), plans the
//! changes, and then makes them one step at a time under the pin-directory
//! lock. Before each step it notes how to put back what the step touches;
//! when a step fails, the steps done so far are undone in reverse order, so
//! the node ends either as it was or as the file says.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use anyhow::{anyhow, Context, Result};
use serde::Serialize;

use crate::attach::Mode;
use crate::bpf;
use crate::ctx::{Ctx, Outcome};
use crate::error::usage;
use crate::nodefile::{self, ConntrackSize, FileMode, IfName, NodeFile, UniqueIp, WorkloadIp};
use crate::state::State;
use crate::workload::{self, Desired};
use crate::ztunnel::{self, Ports, Spec};

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
    let top = cli_mode.or(file.attach_mode.and_then(FileMode::forced));
    let zt = file.ztunnel.as_ref().map(|z| Spec {
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
                .or(w.attach_mode.and_then(FileMode::forced))
                .or(top),
        })
        .collect();
    (zt, wls)
}

enum Step {
    Ztunnel(Spec),
    ClearZtunnel,
    /// Remove these IPs from a workload before others may take them.
    Trim(String, Vec<IpAddr>),
    /// A workload interface, by name and ifindex.
    Detach(String, u32),
    Converge(Desired),
}

impl Step {
    fn what(&self) -> String {
        match self {
            Step::Ztunnel(s) => format!("ztunnel set on {}", s.iface),
            Step::ClearZtunnel => "ztunnel clear".into(),
            Step::Trim(n, ips) => format!("remove {} from {n}", ips_text(ips)),
            Step::Detach(n, _) => format!("detach {n}"),
            Step::Converge(d) => format!("attach {}", d.iface),
        }
    }
}

/// How to put back what a step touches: the thing as it was before apply.
enum Undo {
    Ztunnel(Option<Spec>),
    Workload(String, Option<Desired>),
}

fn ips_text(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn apply(ctx: &Ctx, file: &NodeFile, opts: Options) -> Result<Report> {
    let (zt, wanted) = desired(file, ctx.mode);

    // 1. Everything the file names must exist, before any lock or change.
    let forced_tcx = zt
        .iter()
        .filter_map(|z| z.mode)
        .chain(wanted.iter().filter_map(|w| w.mode));
    if forced_tcx.into_iter().any(|m| m == Mode::Tcx) && !crate::attach::tcx_supported(1) {
        return Err(usage(
            "attach mode tcx: this kernel has no TCX (use auto or tc)",
        ));
    }
    let mut owner: BTreeMap<IpAddr, String> = BTreeMap::new();
    if let Some(spec) = &zt {
        let plan = ztunnel::validate(ctx, None, spec)?;
        for ip in &plan.ips {
            owner.insert(*ip, "ztunnel".into());
        }
    }
    for ip in zt.iter().flat_map(|z| &z.host_ips) {
        owner.insert(*ip, "the node host IPs".into());
    }
    let mut resolved = Vec::new();
    for w in &wanted {
        let (link, ips) = workload::resolve(ctx, None, &w.iface, &w.ips)?;
        if zt.as_ref().is_some_and(|z| z.iface == link.name) {
            return Err(usage(format!(
                "interface {} is both ztunnel's and a workload's",
                link.name
            )));
        }
        for ip in &ips {
            if let Some(other) = owner.insert(*ip, w.iface.clone()) {
                return Err(usage(format!(
                    "IP {ip} would belong to both {other} and {}",
                    w.iface
                )));
            }
        }
        resolved.push(Desired { ips, ..w.clone() });
    }

    // 2. Under the lock: what is there now, and the plan.
    let _lock = if opts.dry_run {
        ctx.pins.prepare_for_read()?
    } else {
        Some(ctx.pins.prepare_for_change()?)
    };
    let st = if ctx.pins.exists() {
        Some(State::open(&ctx.pins)?)
    } else {
        None
    };
    let cur_cfg = match &st {
        Some(st) => st.ztunnel()?,
        None => None,
    };
    let cur_zt = match (&st, &cur_cfg) {
        (Some(st), Some(cfg)) => Some(ztunnel::current_spec(st, cfg)?),
        _ => None,
    };
    let with_index: Vec<(u32, Desired)> = match &st {
        Some(st) => workload::current_all(st)?,
        None => Vec::new(),
    };
    let current: Vec<Desired> = with_index.iter().map(|(_, d)| d.clone()).collect();
    // Without a ztunnel in the file, the one configured stays: its
    // interface and addresses are not a workload's to take.
    if let (None, Some(have), Some(st)) = (&zt, &cur_zt, &st) {
        if let Some(w) = resolved.iter().find(|w| w.iface == have.iface) {
            return Err(usage(format!(
                "interface {} is ztunnel's, not a workload's",
                w.iface
            )));
        }
        for ep in st.endpoints()? {
            if ep.kind == crate::state::EndpointKind::Workload {
                continue;
            }
            if let Some(w) = resolved.iter().find(|w| w.ips.contains(&ep.ip)) {
                let what = if ep.kind == crate::state::EndpointKind::Host {
                    "a node host IP"
                } else {
                    "ztunnel's address"
                };
                return Err(usage(format!(
                    "IP {} of {} is {what}, not a workload's",
                    ep.ip, w.iface
                )));
            }
        }
    }

    let mut steps = Vec::new();
    let mut changes = Vec::new();
    match (&zt, &cur_zt, &cur_cfg) {
        (Some(want), Some(have), Some(cfg)) => {
            let plan = ztunnel::validate(ctx, None, want)?;
            for d in ztunnel::diff(cfg, have, &plan, want) {
                changes.push(format!("~ ztunnel: {d}"));
            }
            steps.push(Step::Ztunnel(want.clone()));
        }
        (Some(want), _, _) => {
            changes.push(format!(
                "+ ztunnel on {} in netns {}",
                want.iface, want.netns
            ));
            steps.push(Step::Ztunnel(want.clone()));
        }
        (None, Some(have), _) if opts.prune => {
            changes.push(format!("- ztunnel on {} (clear)", have.iface));
            steps.push(Step::ClearZtunnel);
        }
        _ => {}
    }
    let named: BTreeSet<&str> = resolved.iter().map(|w| w.iface.as_str()).collect();
    let mut current = current;
    for (ifindex, c) in &with_index {
        // An interface deleted and made again under the same name has a new
        // ifindex: its stale entry goes, and it is attached afresh.
        let now = ctx.nl.link_by_name(&c.iface)?.map(|l| l.index);
        if named.contains(c.iface.as_str()) && now.is_some_and(|i| i != *ifindex) {
            changes.push(format!("- detach stale {} (ifindex {ifindex})", c.iface));
            steps.push(Step::Detach(c.iface.clone(), *ifindex));
            current.retain(|x| x.iface != c.iface);
            continue;
        }
        if named.contains(c.iface.as_str()) {
            continue;
        }
        if opts.prune {
            changes.push(format!("- detach {} ({})", c.iface, ips_text(&c.ips)));
            steps.push(Step::Detach(c.iface.clone(), *ifindex));
        } else if let Some(ip) = c.ips.iter().find(|ip| owner.contains_key(ip)) {
            return Err(usage(format!(
                "IP {ip} belongs to {}, which the file does not name (name it, or use --prune)",
                c.iface
            )));
        }
    }
    for w in &resolved {
        match current.iter().find(|c| c.iface == w.iface) {
            None => {
                let ex = if w.exclude.is_empty() {
                    String::new()
                } else {
                    format!(", exclude {}", w.exclude.summary())
                };
                changes.push(format!("+ attach {} ({}{ex})", w.iface, ips_text(&w.ips)));
            }
            Some(c) => {
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
                if !items.is_empty() {
                    changes.push(format!("~ {}: {}", w.iface, items.join(", ")));
                }
                if !gone.is_empty() {
                    steps.push(Step::Trim(c.iface.clone(), gone));
                }
            }
        }
    }
    // Trims and detaches first, so that an address moving between
    // workloads, or to ztunnel, is free when its new owner takes it.
    steps.sort_by_key(|s| match s {
        Step::Trim(..) | Step::Detach(..) => 0,
        Step::Ztunnel(_) | Step::ClearZtunnel => 1,
        Step::Converge(_) => 2,
    });
    steps.extend(resolved.into_iter().map(Step::Converge));

    if opts.dry_run {
        return Ok(Report {
            changed: !changes.is_empty(),
            dry_run: true,
            changes,
        });
    }

    // 3. The changes, each undoable.
    bpf::ensure_loaded(&ctx.pins)?;
    let st = State::open(&ctx.pins)?;
    crate::failpoint::hit("apply-validated")?;
    let mut undo: Vec<Undo> = Vec::new();
    let mut repaired = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        undo.push(match step {
            Step::Ztunnel(_) | Step::ClearZtunnel => Undo::Ztunnel(cur_zt.clone()),
            Step::Converge(d) => Undo::Workload(
                d.iface.clone(),
                current.iter().find(|c| c.iface == d.iface).cloned(),
            ),
            Step::Trim(n, _) | Step::Detach(n, _) => {
                Undo::Workload(n.clone(), current.iter().find(|c| &c.iface == n).cloned())
            }
        });
        let result = crate::failpoint::hit(&format!("apply-step-{}", i + 1))
            .and_then(|()| run_step(ctx, &st, step, &current));
        match result {
            Ok(o) => {
                let predicted = changes.iter().any(|c| match step {
                    Step::Ztunnel(_) => c.contains(" ztunnel"),
                    Step::Converge(d) => {
                        c.starts_with(&format!("~ {}:", d.iface))
                            || c.starts_with(&format!("+ attach {} ", d.iface))
                    }
                    _ => true,
                });
                if o.changed && !predicted {
                    repaired.extend(o.messages.into_iter().map(|m| format!("~ repaired: {m}")));
                }
            }
            Err(e) => {
                let undone = rollback(ctx, &st, &undo);
                return Err(match undone {
                    Ok(()) => anyhow!(
                        "apply failed at step {} ({}): {e:#}; rolled back, the node is as it was",
                        i + 1,
                        step.what()
                    ),
                    Err(r) => anyhow!(
                        "apply failed at step {} ({}): {e:#}; rollback incomplete: {r:#}",
                        i + 1,
                        step.what()
                    ),
                });
            }
        }
    }
    changes.extend(repaired);
    Ok(Report {
        changed: !changes.is_empty(),
        dry_run: false,
        changes,
    })
}

fn run_step(ctx: &Ctx, st: &State, step: &Step, current: &[Desired]) -> Result<Outcome> {
    match step {
        Step::Ztunnel(spec) => ztunnel::set_locked(ctx, st, spec),
        Step::ClearZtunnel => ztunnel::clear_locked(ctx, st),
        Step::Converge(d) => {
            let have = current.iter().find(|c| c.iface == d.iface);
            workload::converge(
                ctx,
                st,
                d,
                Some(have.unwrap_or(&Desired {
                    iface: d.iface.clone(),
                    ips: vec![],
                    exclude: Default::default(),
                    mode: None,
                })),
            )
        }
        Step::Trim(name, ips) => {
            for ip in ips {
                st.del_endpoint(ip)?;
            }
            Ok(Outcome::changed(format!(
                "removed {} from {name}",
                ips_text(ips)
            )))
        }
        Step::Detach(_, ifindex) => detach_index(ctx, st, *ifindex),
    }
}

fn detach_index(ctx: &Ctx, st: &State, ifindex: u32) -> Result<Outcome> {
    let key = crate::state::node_key(ifindex);
    match st.iface(key)? {
        Some(entry) => workload::detach_entry(ctx, st, key, &entry),
        None => Ok(Outcome::default()),
    }
}

fn detach(ctx: &Ctx, st: &State, name: &str) -> Result<Outcome> {
    match st.workload_iface_by_name(name)? {
        Some((key, entry)) => workload::detach_entry(ctx, st, key, &entry),
        None => Ok(Outcome::default()),
    }
}

/// Puts back everything the done steps touched, newest first.
fn rollback(ctx: &Ctx, st: &State, undo: &[Undo]) -> Result<()> {
    let mut first_err = None;
    for u in undo.iter().rev() {
        let r = match u {
            Undo::Ztunnel(Some(spec)) => ztunnel::set_locked(ctx, st, spec).map(drop),
            Undo::Ztunnel(None) => ztunnel::clear_locked(ctx, st).map(drop),
            Undo::Workload(_, Some(d)) => workload::converge(ctx, st, d, None).map(drop),
            Undo::Workload(name, None) => detach(ctx, st, name).map(drop),
        };
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// The node's state as a node file that `apply` accepts.
pub fn export(ctx: &Ctx) -> Result<NodeFile> {
    let mut file = NodeFile {
        version: nodefile::Version(nodefile::VERSION),
        attach_mode: None,
        ztunnel: None,
        workloads: vec![],
    };
    let Some(_lock) = ctx.pins.prepare_for_read()? else {
        return Ok(file);
    };
    let st = State::open(&ctx.pins)?;
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
                outbound: crate::exclude::Port(s.ports.outbound),
                inbound_plaintext: crate::exclude::Port(s.ports.inbound),
                inbound_hbone: crate::exclude::Port(s.ports.hbone),
                dns: crate::exclude::Port(s.ports.dns),
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
            attach_mode: d.mode.map(FileMode::of),
        });
    }
    file.attach_mode = top.map(FileMode::of);
    for w in &mut file.workloads {
        if w.attach_mode == file.attach_mode {
            w.attach_mode = None;
        }
    }
    Ok(file)
}
