// SPDX-License-Identifier: Apache-2.0
//! Attaching ztredir's programs to one interface, as a set of hooks. Each
//! attach and detach is journaled first, so that the change it belongs to
//! undoes it if it fails later, or dies.

use std::os::fd::AsFd;

use anyhow::{Context, Result};

use crate::dataplane::attach::{self, Hook, Mode};
use crate::dataplane::bpf::{prog_fd, Prog};
use crate::dataplane::journal::Undo;
use crate::dataplane::pins::PinDir;
use crate::dataplane::state::Txn;

/// One interface and the programs that go on its hooks. `link_prefix`
/// names the pins of its TCX links and must be unique per interface.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub name: &'a str,
    pub ifindex: u32,
    pub hooks: &'a [(Hook, Prog)],
    pub link_prefix: String,
    /// Where the interface lives: None for the node's netns, else how to
    /// open it (a name under /run/netns or a path). Callers run the
    /// target's methods in that netns.
    pub netns: Option<&'a str>,
}

impl Target<'_> {
    fn netns_name(&self) -> &str {
        self.netns.unwrap_or("node")
    }

    fn link_pin(&self, pins: &PinDir, hook: Hook) -> std::path::PathBuf {
        pins.link(&format!("{}-{}", self.link_prefix, hook.name()))
    }

    fn what(&self, prog: Prog, hook: Hook) -> String {
        format!(
            "attach {} {} on {} (ifindex {}) in netns {}",
            prog.name(),
            hook.name(),
            self.name,
            self.ifindex,
            self.netns_name()
        )
    }

    /// Picks TCX when asked or, in auto mode, when the kernel has it.
    pub fn resolve_mode(&self, requested: Option<Mode>) -> Mode {
        requested.unwrap_or_else(|| {
            if attach::tcx_supported(self.ifindex) {
                Mode::Tcx
            } else {
                Mode::Tc
            }
        })
    }

    /// Whether `hook` currently runs our program. Returns its prog id.
    pub fn attached(&self, pins: &PinDir, mode: Mode, hook: Hook, prog: Prog) -> Option<u32> {
        match mode {
            Mode::Tcx => attach::link_state(&self.link_pin(pins, hook))
                .filter(|s| s.attached)
                .map(|s| s.prog_id),
            Mode::Tc => {
                let fd = prog_fd(pins, prog).ok()?;
                let id = attach::tc_prog_id(fd.as_fd(), self.ifindex, hook)?;
                (attach::prog_id(fd.as_fd()).ok()? == id).then_some(id)
            }
        }
    }

    /// Attaches every hook that is not attached yet, each journaled in
    /// `tx` first. Returns whether anything was attached.
    pub fn attach(&self, tx: &Txn, mode: Mode) -> Result<bool> {
        let mut any = false;
        for &(hook, prog) in self.hooks {
            if self.attached(tx.pins, mode, hook, prog).is_some() {
                continue;
            }
            tx.record(match mode {
                Mode::Tcx => Undo::Unpin {
                    path: self.link_pin(tx.pins, hook),
                },
                Mode::Tc => Undo::TcDetach {
                    netns: self.netns.map(str::to_string),
                    ifindex: self.ifindex,
                    hook: hook.name().into(),
                    prog: prog.name().into(),
                },
            })?;
            self.attach_one(tx.pins, mode, hook, prog)?;
            any = true;
        }
        Ok(any)
    }

    fn attach_one(&self, pins: &PinDir, mode: Mode, hook: Hook, prog: Prog) -> Result<()> {
        let fd = prog_fd(pins, prog)?;
        match mode {
            Mode::Tcx => {
                let pin = self.link_pin(pins, hook);
                // A stale pin of a link whose device is gone blocks the new one.
                attach::detach_link(&pin)?;
                attach::attach_tcx(fd.as_fd(), self.ifindex, hook, &pin)
            }
            Mode::Tc => attach::attach_tc(fd.as_fd(), self.ifindex, hook),
        }
        .with_context(|| self.what(prog, hook))
    }

    fn detach_one(&self, pins: &PinDir, mode: Mode, hook: Hook, prog: Prog) -> Result<()> {
        match mode {
            Mode::Tcx => attach::detach_link(&self.link_pin(pins, hook)),
            Mode::Tc => attach::detach_tc(prog_fd(pins, prog)?.as_fd(), self.ifindex, hook),
        }
        .with_context(|| {
            format!(
                "detach {} {} on {} (ifindex {})",
                prog.name(),
                hook.name(),
                self.name,
                self.ifindex
            )
        })
    }

    /// Removes our programs from every hook, each journaled in `tx` first.
    /// `present` is false when the interface is gone: then only the pins
    /// are cleaned up.
    pub fn detach(&self, tx: &Txn, mode: Mode, present: bool) -> Result<()> {
        for &(hook, prog) in self.hooks {
            if present && self.attached(tx.pins, mode, hook, prog).is_some() {
                let netns = self.netns.map(str::to_string);
                let (ifindex, hook_s, prog_s) =
                    (self.ifindex, hook.name().into(), prog.name().into());
                tx.record(match mode {
                    Mode::Tcx => Undo::TcxAttach {
                        netns,
                        ifindex,
                        hook: hook_s,
                        prog: prog_s,
                        pin: self.link_pin(tx.pins, hook),
                    },
                    Mode::Tc => Undo::TcAttach {
                        netns,
                        ifindex,
                        hook: hook_s,
                        prog: prog_s,
                    },
                })?;
            }
            match (mode, present) {
                (Mode::Tcx, _) => attach::detach_link(&self.link_pin(tx.pins, hook))?,
                (Mode::Tc, true) => self.detach_one(tx.pins, mode, hook, prog)?,
                (Mode::Tc, false) => {}
            }
        }
        Ok(())
    }

    /// Another ztredir instance's program on one of the hooks, TCX or
    /// classic tc, whichever mode this one would use: both would capture.
    pub fn foreign(&self, pins: &PinDir) -> Option<Foreign> {
        let own = crate::dataplane::bpf::own_ids(pins);
        self.hooks.iter().find_map(|&(hook, _)| {
            let tc = attach::tc_filter_prog(self.ifindex, hook).map(|p| (p, 0));
            let progs = attach::tcx_progs(self.ifindex, hook).into_iter().chain(tc);
            foreign_among(pins, &own, hook.name(), progs)
        })
    }

    /// Per hook: its name, and the prog id (and TCX link id) when attached.
    pub fn hook_states(&self, pins: &PinDir, mode: Mode) -> Vec<HookState> {
        self.hooks
            .iter()
            .map(|&(hook, prog)| {
                let link = match mode {
                    Mode::Tcx => {
                        attach::link_state(&self.link_pin(pins, hook)).filter(|s| s.attached)
                    }
                    Mode::Tc => None,
                };
                HookState {
                    hook,
                    program: prog.name(),
                    prog_id: self.attached(pins, mode, hook, prog),
                    link_id: link.map(|l| l.link_id),
                }
            })
            .collect()
    }
}

/// A program of another ztredir instance (another pin directory) on a hook
/// this one would attach to: two sets of programs would both capture.
#[derive(Debug, Clone)]
pub struct Foreign {
    pub prog_id: u32,
    pub name: String,
    pub hook: &'static str,
    /// The other instance's pin directory, when one holding the program is
    /// mounted here.
    pub pin_dir: Option<std::path::PathBuf>,
}

impl Foreign {
    /// The usage error: one line naming the interface and the other
    /// instance.
    pub fn error(&self, iface: &str) -> anyhow::Error {
        let whose = match &self.pin_dir {
            Some(d) => format!("the ztredir of pin dir {}", d.display()),
            None => "another ztredir (pin dir not found)".into(),
        };
        crate::error::usage(format!(
            "interface {iface} is already captured by {whose}: program {} (id {}) on {}; use that pin dir, or --force to attach anyway",
            self.name, self.prog_id, self.hook
        ))
    }
}

/// The first ztredir program on these hooks (prog id, link id) that is
/// not this pin directory's own.
pub fn foreign_among(
    pins: &PinDir,
    own: &crate::dataplane::bpf::OwnIds,
    hook: &'static str,
    progs: impl IntoIterator<Item = (u32, u32)>,
) -> Option<Foreign> {
    progs.into_iter().find_map(|(prog, link)| {
        if own.progs.contains(&prog) || (link != 0 && own.links.contains(&link)) {
            return None;
        }
        let name = attach::prog_name(prog)?;
        crate::dataplane::bpf::ztredir_prog_named(&name)?;
        Some(Foreign {
            prog_id: prog,
            name,
            hook,
            pin_dir: crate::dataplane::pins::find_pin_dir_of(prog, &pins.root),
        })
    })
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct HookState {
    pub hook: Hook,
    pub program: &'static str,
    pub prog_id: Option<u32>,
    pub link_id: Option<u32>,
}

/// The one rule for naming an interface's link pins: `if<N>` in the
/// node's netns, `zt<N>` for ztunnel's eth0 in its own (ifindexes are per
/// netns, so the two could collide).
pub fn link_prefix(role: crate::dataplane::state::Role, ifindex: u32) -> String {
    match role {
        crate::dataplane::state::Role::ZtunnelPod => format!("zt{ifindex}"),
        _ => format!("if{ifindex}"),
    }
}

pub const WORKLOAD_HOOKS: &[(Hook, Prog)] = &[
    (Hook::Ingress, Prog::WorkloadOut),
    (Hook::Egress, Prog::WorkloadIn),
];
pub const ZTUNNEL_HOST_HOOKS: &[(Hook, Prog)] = &[(Hook::Ingress, Prog::ZtunnelHost)];
pub const ZTUNNEL_POD_HOOKS: &[(Hook, Prog)] = &[(Hook::Ingress, Prog::ZtunnelPod)];

/// The in-pod host-IP guard's netfilter links (IPv4, IPv6) in the node's
/// netns, by pin name.
pub const HOST_GUARD_LINKS: [(&str, u32); 2] = [
    ("host-guard-v4", libbpf_rs::NFPROTO_IPV4 as u32),
    ("host-guard-v6", libbpf_rs::NFPROTO_IPV6 as u32),
];

/// In-pod: the workload's interface inside its netns, and lo there.
pub const POD_HOOKS: &[(Hook, Prog)] =
    &[(Hook::Egress, Prog::PodOut), (Hook::Ingress, Prog::PodIn)];
pub const POD_LO_HOOKS: &[(Hook, Prog)] = &[(Hook::Egress, Prog::PodLo)];
