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
use crate::node::inpod::{self, Pod, PodSpec};
use crate::node::nodefile::{
    self, ConntrackSize, IfName, NodeFile, UniqueIp, WorkloadIp, ZtunnelMode,
};
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

/// What a node file asks for, as operations want it.
#[derive(Debug, Clone, Default)]
pub struct Desires {
    pub ztunnel: Option<Spec>,
    /// Node-level workloads.
    pub workloads: Vec<Desired>,
    /// In-pod workloads.
    pub pods: Vec<PodSpec>,
}

/// The file's ztunnel and workloads as operations want them. A mode given
/// on the command line wins over the file's.
pub fn desired(file: &NodeFile, cli_mode: Option<Mode>) -> Desires {
    let top = cli_mode.or(file.attach_mode.and_then(AttachMode::forced));
    let ztunnel = file.ztunnel.as_ref().map(|z| Spec {
        in_pod: z.mode == ZtunnelMode::InPod,
        iface: z.iface.as_ref().map(|i| i.0.clone()).unwrap_or_default(),
        netns: z.netns.clone().unwrap_or_default(),
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
    let mut out = Desires {
        ztunnel,
        ..Default::default()
    };
    for w in &file.workloads {
        let mode = cli_mode
            .or(w.attach_mode.and_then(AttachMode::forced))
            .or(top);
        let ips = w.ips.iter().map(|i| i.0).collect();
        let iface = w.iface.as_ref().map(|i| i.0.clone());
        match (&w.netns, &w.workload) {
            (Some(netns), workload) => out.pods.push(PodSpec {
                netns: netns.0.clone(),
                iface,
                namespace: workload
                    .as_ref()
                    .map(|n| n.namespace.clone())
                    .unwrap_or_default(),
                name: workload
                    .as_ref()
                    .map(|n| n.name.clone())
                    .unwrap_or_default(),
                service_account: w
                    .service_account
                    .as_ref()
                    .map(|s| s.0.clone())
                    .unwrap_or_default(),
                uid: w.uid.as_ref().map(|u| u.0.clone()),
                ips,
                mode,
            }),
            (None, _) => out.workloads.push(Desired {
                iface: iface.unwrap_or_default(),
                ips,
                exclude: w.exclude.clone(),
                mode,
            }),
        }
    }
    out
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
        in_pod: bool,
    },
    /// Frees addresses of a workload (an interface, or an in-pod
    /// NAMESPACE/NAME) before others take them (shown as part of its
    /// Workload or Pod line).
    Trim {
        owner: String,
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
    /// An in-pod workload detached (pruned, or its netns made again under
    /// the same name: `stale`).
    DetachPod {
        id: u32,
        workload: String,
        netns: String,
        ips: Vec<IpAddr>,
        stale: bool,
    },
    /// An in-pod workload converged to the file: new, or with these
    /// differences ("service-account a -> b", "+ip 10.0.0.1"); none is a
    /// no-op unless something needs repair.
    Pod {
        want: WantedPod,
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
            } if spec.in_pod => Some("+ ztunnel in-pod (shared mode)".to_string()),
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
            Change::ClearZtunnel { in_pod: true, .. } => {
                Some("- ztunnel in-pod (clear)".to_string())
            }
            Change::ClearZtunnel { iface, .. } => Some(format!("- ztunnel on {iface} (clear)")),
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
            Change::DetachPod {
                workload,
                netns,
                stale: true,
                ..
            } => Some(format!(
                "- detach stale in-pod {workload} (netns {netns} is another one now)"
            )),
            Change::DetachPod {
                workload,
                netns,
                ips,
                ..
            } => Some(format!(
                "- detach in-pod {workload} in netns {netns} ({})",
                ips_text(ips)
            )),
            Change::Pod {
                want, new: true, ..
            } => {
                let uid = match &want.spec.uid {
                    Some(u) if *u != want.workload() => format!(", uid {u}"),
                    _ => String::new(),
                };
                Some(format!(
                    "+ attach in-pod {} in netns {} (sa {}{uid}, {} {})",
                    want.workload(),
                    want.netns,
                    want.spec.service_account,
                    want.iface,
                    ips_text(&want.ips)
                ))
            }
            Change::Pod { items, .. } if items.is_empty() => None,
            Change::Pod { want, items, .. } => Some(format!(
                "~ in-pod {}: {}",
                want.workload(),
                items.join(", ")
            )),
        }
    }

    fn what(&self) -> String {
        match self {
            Change::Ztunnel { spec, .. } if spec.in_pod => "ztunnel set --in-pod".into(),
            Change::Ztunnel { spec, .. } => format!("ztunnel set on {}", spec.iface),
            Change::ClearZtunnel { .. } => "ztunnel clear".into(),
            Change::Trim { owner, ips } => format!("remove {} from {owner}", ips_text(ips)),
            Change::Detach { iface, .. } => format!("detach {iface}"),
            Change::Workload { want, .. } => format!("attach {}", want.iface),
            Change::DetachPod { workload, .. } => format!("detach in-pod {workload}"),
            Change::Pod { want, .. } => format!("attach in-pod {}", want.workload()),
        }
    }

    /// Order: trims and detaches first, so that an address moving between
    /// workloads, or to ztunnel, is free when its new owner takes it.
    fn rank(&self) -> u8 {
        match self {
            Change::Trim { .. } | Change::Detach { .. } | Change::DetachPod { .. } => 0,
            Change::Ztunnel { .. } | Change::ClearZtunnel { .. } => 1,
            Change::Workload { .. } | Change::Pod { .. } => 2,
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
    /// In-pod workloads.
    pub pods: Vec<Pod>,
}

/// An in-pod workload the file wants, and what its netns has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedPod {
    pub spec: PodSpec,
    /// The netns' path, as attach stores it (/run/netns/NAME for a name).
    pub netns: String,
    pub inode: u64,
    /// The interface there (named, or the default route's).
    pub iface: String,
    pub ifindex: u32,
    /// The addresses (given, or the interface's).
    pub ips: Vec<IpAddr>,
}

impl WantedPod {
    pub fn workload(&self) -> String {
        format!("{}/{}", self.spec.namespace, self.spec.name)
    }
}

/// What the file wants, checked against the system.
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    /// The ztunnel, and where it is (host ifindex, pod ifindex, netns inode).
    pub ztunnel: Option<(Spec, (u32, u32, u64))>,
    pub workloads: Vec<Desired>,
    pub pods: Vec<WantedPod>,
    /// Every address the file gives, and to whom.
    pub owner: BTreeMap<IpAddr, String>,
}

/// The plan: pure, from what the node has to what the file wants. An
/// impossible file is a usage error.
pub fn plan(cur: &Current, want: &Wanted, prune: bool) -> Result<Vec<Change>> {
    check_ztunnel_kept(cur, want)?;
    check_one_mode(cur, want, prune)?;
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
    plan_pods(cur, want, prune, &mut changes)?;
    changes.sort_by_key(Change::rank);
    Ok(changes)
}

/// A node is in one mode: what the file adds and what stays must agree.
fn check_one_mode(cur: &Current, want: &Wanted, prune: bool) -> Result<()> {
    // The ztunnel the node ends with: the file's, else the one kept.
    let zt_in_pod = match (&want.ztunnel, &cur.ztunnel) {
        (Some((s, _)), _) => Some(s.in_pod),
        (None, Some((_, have))) if !prune => Some(have.in_pod),
        _ => None,
    };
    if let (Some(false), Some(p)) = (zt_in_pod, want.pods.first()) {
        return Err(usage(format!(
            "in-pod workload {} needs an in-pod ztunnel, and this node's is node-level: give ztunnel mode: in-pod",
            p.workload()
        )));
    }
    if let (Some(true), Some(w)) = (zt_in_pod, want.workloads.first()) {
        return Err(usage(format!(
            "node-level workload {} needs a node-level ztunnel, and this node's is in-pod: give ztunnel iface and netns",
            w.iface
        )));
    }
    if prune {
        return Ok(());
    }
    // Without --prune what the file does not name stays: it must be in
    // the file's mode.
    let file_in_pod = want.ztunnel.as_ref().is_some_and(|(s, _)| s.in_pod) || !want.pods.is_empty();
    let file_node_level =
        want.ztunnel.as_ref().is_some_and(|(s, _)| !s.in_pod) || !want.workloads.is_empty();
    let named: BTreeSet<&str> = want.workloads.iter().map(|w| w.iface.as_str()).collect();
    if let Some((_, w)) = cur
        .workloads
        .iter()
        .find(|(_, w)| file_in_pod && !named.contains(w.iface.as_str()))
    {
        return Err(usage(format!(
            "workload interface {} is attached in node-level mode and the file is in-pod: detach it, or use --prune",
            w.iface
        )));
    }
    let kept_pod = cur
        .pods
        .iter()
        .find(|p| file_node_level && !want.pods.iter().any(|w| w.inode == p.netns_inode));
    if let Some(p) = kept_pod {
        return Err(usage(format!(
            "in-pod workload {} (netns {}) is attached and the file is node-level: detach it, or use --prune",
            p.workload(),
            p.netns
        )));
    }
    Ok(())
}

fn detach_pod(p: &Pod, stale: bool) -> Change {
    Change::DetachPod {
        id: p.id,
        workload: p.workload(),
        netns: p.netns.clone(),
        ips: p.ips.clone(),
        stale,
    }
}

/// In-pod workloads, matched to the file's by netns (inode): the ones it
/// does not name are detached with --prune, a netns made again under its
/// path is detached and attached afresh, the others converge. A uid moving
/// from one workload to another is given up before it is taken.
fn plan_pods(cur: &Current, want: &Wanted, prune: bool, changes: &mut Vec<Change>) -> Result<()> {
    let mut have: Vec<Option<&Pod>> = vec![None; want.pods.len()];
    for p in &cur.pods {
        if let Some(i) = want.pods.iter().position(|w| w.inode == p.netns_inode) {
            have[i] = Some(p);
        } else if want.pods.iter().any(|w| w.netns == p.netns) {
            changes.push(detach_pod(p, true));
        } else if prune {
            changes.push(detach_pod(p, false));
        } else if let Some(ip) = p.ips.iter().find(|ip| want.owner.contains_key(ip)) {
            return Err(usage(format!(
                "IP {ip} belongs to in-pod {} (netns {}), which the file does not name (name it, or use --prune)",
                p.workload(),
                p.netns
            )));
        } else if want.pods.iter().any(|w| w.spec.uid() == p.uid) {
            return Err(usage(format!(
                "uid {} belongs to in-pod {} (netns {}), which the file does not name (name it, or use --prune)",
                p.uid,
                p.workload(),
                p.netns
            )));
        }
    }
    let n = want.pods.len();
    let mut done = vec![false; n];
    for _ in 0..n {
        // Ready: no other workload not yet converged holds its uid now.
        let ready = (0..n).find(|&i| {
            !done[i]
                && (0..n).all(|j| {
                    j == i || done[j] || have[j].is_none_or(|h| h.uid != want.pods[i].spec.uid())
                })
        });
        let Some(i) = ready else {
            let left: Vec<&str> = (0..n)
                .filter(|&i| !done[i])
                .map(|i| want.pods[i].netns.as_str())
                .collect();
            return Err(usage(format!(
                "the in-pod workloads in netns {} swap uids: apply a file with other uids for them first",
                left.join(", ")
            )));
        };
        done[i] = true;
        changes.extend(plan_pod(have[i], &want.pods[i]));
    }
    Ok(())
}

fn plan_pod(have: Option<&Pod>, w: &WantedPod) -> Vec<Change> {
    let Some(c) = have else {
        return vec![Change::Pod {
            want: w.clone(),
            new: true,
            items: vec![],
        }];
    };
    let mut items = Vec::new();
    let mut changed = |what: &str, from: &str, to: &str| {
        if from != to {
            items.push(format!("{what} {from} -> {to}"));
        }
    };
    changed("workload", &c.workload(), &w.workload());
    changed(
        "service-account",
        &c.service_account,
        &w.spec.service_account,
    );
    changed("uid", &c.uid, &w.spec.uid());
    changed("netns", &c.netns, &w.netns);
    changed("iface", &c.iface, &w.iface);
    if c.iface == w.iface && c.ifindex != w.ifindex {
        items.push(format!(
            "iface {} (ifindex {} -> {})",
            w.iface, c.ifindex, w.ifindex
        ));
    }
    let gone: Vec<IpAddr> = c
        .ips
        .iter()
        .filter(|ip| !w.ips.contains(ip))
        .copied()
        .collect();
    items.extend(
        w.ips
            .iter()
            .filter(|ip| !c.ips.contains(ip))
            .map(|ip| format!("+ip {ip}")),
    );
    items.extend(gone.iter().map(|ip| format!("-ip {ip}")));
    if let Some(m) = w.spec.mode.filter(|m| *m != c.attach_mode()) {
        items.push(format!("attach mode {} -> {}", c.mode, m.name()));
    }
    let mut out = vec![Change::Pod {
        want: w.clone(),
        new: false,
        items,
    }];
    if !gone.is_empty() {
        out.push(Change::Trim {
            owner: c.workload(),
            ips: gone,
        });
    }
    out
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
    if let Some(w) = want
        .workloads
        .iter()
        .find(|w| !have.in_pod && w.iface == have.iface)
    {
        return Err(usage(format!(
            "interface {} is ztunnel's, not a workload's",
            w.iface
        )));
    }
    for (ip, kind) in &cur.special {
        if let Some(owner) = want.owner.get(ip) {
            let what = if *kind == EndpointKind::Host {
                "a node host IP"
            } else {
                "ztunnel's address"
            };
            return Err(usage(format!(
                "IP {ip} of {owner} is {what}, not a workload's"
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
            in_pod: have.in_pod,
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
            owner: c.iface.clone(),
            ips: gone,
        });
    }
    out
}

/// Checks the file against the system before any lock or change: every
/// interface, netns and address it names. Returns what it wants.
fn wanted(ctx: &Ctx, file: &NodeFile) -> Result<Wanted> {
    let Desires {
        ztunnel: zt,
        workloads,
        pods,
    } = desired(file, ctx.mode);
    let forced = zt
        .iter()
        .filter_map(|z| z.mode)
        .chain(workloads.iter().filter_map(|w| w.mode))
        .chain(pods.iter().filter_map(|p| p.mode));
    if forced.into_iter().any(|m| m == Mode::Tcx) && !crate::dataplane::attach::tcx_supported(1) {
        return Err(usage(
            "attach mode tcx: this kernel has no TCX (use auto or tc)",
        ));
    }
    let mut want = Wanted::default();
    if let Some(spec) = zt {
        let place = if spec.in_pod {
            ztunnel::validate_in_pod(&spec)?;
            (0, 0, 0)
        } else {
            let plan = ztunnel::validate(ctx, None, &spec)?;
            for ip in &plan.ips {
                want.owner.insert(*ip, "ztunnel".into());
            }
            plan.place()
        };
        for ip in &spec.host_ips {
            want.owner.insert(*ip, "the node host IPs".into());
        }
        want.ztunnel = Some((spec, place));
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
    for spec in pods {
        let plan = inpod::validate(ctx, None, &spec)?;
        let netns = plan.ns.path.to_string_lossy().into_owned();
        if let Some(other) = want.pods.iter().find(|p| p.inode == plan.ns.inode) {
            return Err(usage(format!(
                "netns {} and {netns} are the same network namespace",
                other.netns
            )));
        }
        let wp = WantedPod {
            netns,
            inode: plan.ns.inode,
            iface: plan.link.name.clone(),
            ifindex: plan.link.index,
            ips: plan.ips.clone(),
            spec,
        };
        for ip in &wp.ips {
            if let Some(other) = want.owner.insert(*ip, wp.workload()) {
                return Err(usage(format!(
                    "IP {ip} would belong to both {other} and {}",
                    wp.workload()
                )));
            }
        }
        want.pods.push(wp);
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
        .filter(|e| !e.kind.is_workload())
        .map(|e| (e.ip, e.kind))
        .collect();
    Ok(Current {
        ztunnel,
        workloads,
        ifindex_now,
        special,
        pods: inpod::pods(st)?,
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
        Change::Trim { owner, ips } => {
            for ip in ips {
                tx.del_endpoint(ip)?;
            }
            Ok(Outcome::changed(format!(
                "removed {} from {owner}",
                ips_text(ips)
            )))
        }
        Change::DetachPod { id, .. } => inpod::detach_locked(tx, *id),
        Change::Pod { want, .. } => inpod::attach_locked(tx, &want.spec),
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
        let node_level = !s.in_pod;
        file.ztunnel = Some(nodefile::ZtunnelFile {
            mode: match s.in_pod {
                true => ZtunnelMode::InPod,
                false => ZtunnelMode::NodeLevel,
            },
            iface: Some(IfName(s.iface)).filter(|_| node_level),
            netns: Some(s.netns).filter(|_| node_level),
            pod_iface: s.pod_iface.map(nodefile::NsIfName).filter(|_| node_level),
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
            netns: None,
            iface: Some(IfName(d.iface)),
            workload: None,
            service_account: None,
            uid: None,
            ips: d.ips.into_iter().map(WorkloadIp).collect(),
            exclude: d.exclude,
            attach_mode: d.mode.map(AttachMode::of),
        });
    }
    for p in inpod::pods(&st)? {
        let mode = p.attach_mode();
        top = top.or(Some(mode));
        let uid = Some(p.uid.clone()).filter(|u| *u != p.workload());
        file.workloads.push(nodefile::WorkloadFile {
            netns: Some(nodefile::NetnsName(p.netns)),
            iface: Some(IfName(p.iface)),
            workload: Some(nodefile::WorkloadName {
                namespace: p.namespace,
                name: p.name,
            }),
            service_account: Some(nodefile::ServiceAccount(p.service_account)),
            uid: uid.map(nodefile::Uid),
            ips: p.ips.into_iter().map(WorkloadIp).collect(),
            exclude: Default::default(),
            attach_mode: Some(AttachMode::of(mode)),
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

    fn in_pod_spec(capture_dns: bool) -> Spec {
        Spec {
            in_pod: true,
            iface: String::new(),
            netns: String::new(),
            pod_iface: None,
            ..spec(capture_dns)
        }
    }

    fn in_pod_cfg() -> ztr_config {
        ztr_config {
            flags: crate::dataplane::skel::types::ztr_config_flags::ZTR_CFG_INPOD.0,
            ..Default::default()
        }
    }

    /// An in-pod workload NAME in netns NAME (inode `inode`), in namespace
    /// default, with service account NAME.
    fn pod(id: u32, name: &str, inode: u64, ips: &[&str]) -> Pod {
        Pod {
            id,
            uid: format!("default/{name}"),
            namespace: "default".into(),
            name: name.into(),
            service_account: name.into(),
            netns: format!("/run/netns/{name}"),
            netns_inode: inode,
            iface: "eth0".into(),
            ifindex: 2,
            mode: "tcx",
            ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
        }
    }

    /// What the file wants of `pod`'s workload as it is.
    fn want_pod(p: &Pod) -> WantedPod {
        WantedPod {
            spec: PodSpec {
                netns: p.name.clone(),
                iface: None,
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                service_account: p.service_account.clone(),
                uid: None,
                ips: vec![],
                mode: None,
            },
            netns: p.netns.clone(),
            inode: p.netns_inode,
            iface: p.iface.clone(),
            ifindex: p.ifindex,
            ips: p.ips.clone(),
        }
    }

    /// An in-pod node: `ztunnel` set in-pod, these workloads attached.
    fn pod_node(ztunnel: bool, pods: Vec<Pod>) -> Current {
        Current {
            ztunnel: ztunnel.then(|| (in_pod_cfg(), in_pod_spec(false))),
            pods,
            ..Default::default()
        }
    }

    fn pod_file(ztunnel: Option<Spec>, pods: Vec<WantedPod>) -> Wanted {
        let mut want = Wanted {
            ztunnel: ztunnel.map(|s| (s, (0, 0, 0))),
            pods: pods.clone(),
            ..Default::default()
        };
        for p in &pods {
            for ip in &p.ips {
                want.owner.insert(*ip, p.workload());
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
        let a = pod(1, "a", 100, &["10.244.0.10"]);
        let b = pod(2, "b", 101, &["10.244.0.11", "fd00:244::11"]);
        let mut a_sa = want_pod(&a);
        a_sa.spec.service_account = "frontend".into();
        let mut a_uid = want_pod(&a);
        a_uid.spec.uid = Some("1234-abcd".into());
        let mut a_moved = want_pod(&a);
        a_moved.spec.namespace = "shop".into();
        a_moved.spec.mode = Some(Mode::Tc);
        a_moved.iface = "eth1".into();
        a_moved.ifindex = 3;
        a_moved.ips = vec!["10.244.0.12".parse().unwrap()];
        let mut a_path = want_pod(&a);
        a_path.netns = "/proc/77/ns/net".into();
        let mut a_again = want_pod(&a);
        a_again.inode = 200;
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
            (
                "a new in-pod ztunnel",
                node(false, vec![]),
                pod_file(Some(in_pod_spec(true)), vec![]),
                false,
                vec!["+ ztunnel in-pod (shared mode)"],
            ),
            (
                "the same in-pod ztunnel",
                pod_node(true, vec![]),
                pod_file(Some(in_pod_spec(false)), vec![]),
                false,
                vec![],
            ),
            (
                "an in-pod ztunnel setting",
                pod_node(true, vec![]),
                pod_file(Some(in_pod_spec(true)), vec![]),
                false,
                vec!["~ ztunnel: capture-dns false -> true"],
            ),
            (
                "node-level to in-pod, pruned",
                node(true, vec![va.clone()]),
                pod_file(Some(in_pod_spec(false)), vec![want_pod(&a)]),
                true,
                vec![
                    "- detach va (10.244.0.10)",
                    "~ ztunnel: mode node-level -> in-pod",
                    "+ attach in-pod default/a in netns /run/netns/a (sa a, eth0 10.244.0.10)",
                ],
            ),
            (
                "in-pod to node-level, pruned",
                pod_node(true, vec![a.clone()]),
                file(Some(spec(false)), vec![va.clone()]),
                true,
                vec![
                    "- detach in-pod default/a in netns /run/netns/a (10.244.0.10)",
                    "~ ztunnel: mode in-pod -> node-level",
                    "+ attach va (10.244.0.10)",
                ],
            ),
            (
                "in-pod ztunnel pruned",
                pod_node(true, vec![]),
                pod_file(None, vec![]),
                true,
                vec!["- ztunnel in-pod (clear)"],
            ),
            (
                "a new in-pod workload",
                pod_node(true, vec![]),
                pod_file(None, vec![want_pod(&a)]),
                false,
                vec!["+ attach in-pod default/a in netns /run/netns/a (sa a, eth0 10.244.0.10)"],
            ),
            (
                "a new in-pod workload with a uid",
                pod_node(true, vec![]),
                pod_file(None, vec![a_uid.clone()]),
                false,
                vec!["+ attach in-pod default/a in netns /run/netns/a (sa a, uid 1234-abcd, eth0 10.244.0.10)"],
            ),
            (
                "the same in-pod workload",
                pod_node(true, vec![a.clone(), b.clone()]),
                pod_file(Some(in_pod_spec(false)), vec![want_pod(&a), want_pod(&b)]),
                false,
                vec![],
            ),
            (
                "a service account",
                pod_node(true, vec![a.clone()]),
                pod_file(None, vec![a_sa]),
                false,
                vec!["~ in-pod default/a: service-account a -> frontend"],
            ),
            (
                "identity, interface and addresses",
                pod_node(true, vec![a.clone()]),
                pod_file(None, vec![a_moved]),
                false,
                vec!["~ in-pod shop/a: workload default/a -> shop/a, uid default/a -> shop/a, iface eth0 -> eth1, +ip 10.244.0.12, -ip 10.244.0.10, attach mode tcx -> tc"],
            ),
            (
                "an in-pod netns by another path",
                pod_node(true, vec![a.clone()]),
                pod_file(None, vec![a_path]),
                false,
                vec!["~ in-pod default/a: netns /run/netns/a -> /proc/77/ns/net"],
            ),
            (
                "unnamed in-pod kept",
                pod_node(true, vec![a.clone(), b.clone()]),
                pod_file(None, vec![want_pod(&a)]),
                false,
                vec![],
            ),
            (
                "unnamed in-pod pruned",
                pod_node(true, vec![a.clone(), b.clone()]),
                pod_file(Some(in_pod_spec(false)), vec![want_pod(&a)]),
                true,
                vec!["- detach in-pod default/b in netns /run/netns/b (10.244.0.11, fd00:244::11)"],
            ),
            (
                "an in-pod netns made again",
                pod_node(true, vec![a.clone()]),
                pod_file(None, vec![a_again]),
                false,
                vec![
                    "- detach stale in-pod default/a (netns /run/netns/a is another one now)",
                    "+ attach in-pod default/a in netns /run/netns/a (sa a, eth0 10.244.0.10)",
                ],
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
    fn in_pod_addresses_and_uids_move_in_order() {
        // a's address goes to b: freed first.
        let a = pod(1, "a", 100, &["10.244.0.10"]);
        let b = pod(2, "b", 101, &["10.244.0.11"]);
        let mut a2 = want_pod(&a);
        a2.ips = vec!["10.244.0.12".parse().unwrap()];
        let mut b2 = want_pod(&b);
        b2.ips = vec!["10.244.0.10".parse().unwrap()];
        let changes = plan(
            &pod_node(true, vec![a.clone(), b.clone()]),
            &pod_file(None, vec![b2, a2]),
            false,
        )
        .unwrap();
        let first_pod = changes
            .iter()
            .position(|c| matches!(c, Change::Pod { .. }))
            .unwrap();
        assert!(
            changes[..first_pod].iter().any(|c| matches!(c, Change::Trim { owner, ips } if owner == "default/a" && ips == &["10.244.0.10".parse::<IpAddr>().unwrap()])),
            "{changes:?}"
        );
        // b takes a's uid, a takes another: a goes first, whatever the
        // file's order.
        let mut a3 = want_pod(&a);
        a3.spec.uid = Some("a-2".into());
        let mut b3 = want_pod(&b);
        b3.spec.uid = Some("default/a".into());
        let cur = pod_node(true, vec![a.clone(), b.clone()]);
        let changes = plan(&cur, &pod_file(None, vec![b3.clone(), a3]), false).unwrap();
        assert_eq!(
            lines(&changes),
            [
                "~ in-pod default/a: uid default/a -> a-2",
                "~ in-pod default/b: uid default/b -> default/a"
            ]
        );
        // A swap cannot be done in one pass.
        let mut a4 = want_pod(&a);
        a4.spec.uid = Some("default/b".into());
        let e = plan(&cur, &pod_file(None, vec![b3, a4]), false).unwrap_err();
        assert!(format!("{e}").contains("swap uids"), "{e}");
        assert!(e.is::<crate::error::UsageError>(), "exit 2: {e}");
    }

    #[test]
    fn a_node_is_in_one_mode() {
        let a = pod(1, "a", 100, &["10.244.0.10"]);
        let va = wl("va", &["10.244.0.20"]);
        let cases: Vec<(Current, Wanted, &str)> = vec![
            // In-pod workloads with the node-level ztunnel kept.
            (
                node(true, vec![]),
                pod_file(None, vec![want_pod(&a)]),
                "needs an in-pod ztunnel",
            ),
            // Node-level workloads with the in-pod ztunnel kept.
            (
                pod_node(true, vec![]),
                file(None, vec![va.clone()]),
                "needs a node-level ztunnel",
            ),
            // Node-level workloads left attached under an in-pod file.
            (
                node(false, vec![va.clone()]),
                pod_file(Some(in_pod_spec(false)), vec![]),
                "attached in node-level mode",
            ),
            (
                node(false, vec![va.clone()]),
                pod_file(None, vec![want_pod(&a)]),
                "attached in node-level mode",
            ),
            // In-pod workloads left attached under a node-level file.
            (
                pod_node(false, vec![a.clone()]),
                file(Some(spec(false)), vec![]),
                "is attached and the file is node-level",
            ),
            (
                pod_node(false, vec![a.clone()]),
                file(None, vec![va.clone()]),
                "is attached and the file is node-level",
            ),
            // An unnamed workload's address or uid, without --prune.
            (
                pod_node(true, vec![a.clone()]),
                pod_file(
                    None,
                    vec![WantedPod {
                        inode: 300,
                        netns: "/run/netns/c".into(),
                        ..want_pod(&pod(3, "c", 300, &["10.244.0.10"]))
                    }],
                ),
                "which the file does not name",
            ),
            (
                pod_node(true, vec![a.clone()]),
                pod_file(None, {
                    let mut c = want_pod(&pod(3, "c", 300, &["10.244.0.30"]));
                    c.spec.uid = Some("default/a".into());
                    vec![c]
                }),
                "uid default/a belongs to in-pod default/a",
            ),
        ];
        for (i, (cur, want, says)) in cases.iter().enumerate() {
            let e = plan(cur, want, false).unwrap_err();
            assert!(format!("{e}").contains(says), "case {i}: {e}");
            assert!(e.is::<crate::error::UsageError>(), "case {i}: exit 2: {e}");
        }
        // With --prune what the file does not name goes, so the mode can change.
        for (i, (cur, want, _)) in cases.iter().enumerate().skip(2) {
            plan(cur, want, true).unwrap_or_else(|e| panic!("case {i} with --prune: {e}"));
        }
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
