// SPDX-License-Identifier: Apache-2.0
//! Attaching ztredir's programs to one interface, as a set of hooks that
//! either all attach or are all rolled back.

use std::os::fd::AsFd;

use anyhow::{Context, Result};

use crate::attach::{self, Hook, Mode};
use crate::bpf::{prog_fd, Prog};
use crate::pins::PinDir;

/// One interface and the programs that go on its hooks. `link_prefix`
/// names the pins of its TCX links and must be unique per interface.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub name: &'a str,
    pub ifindex: u32,
    pub hooks: &'a [(Hook, Prog)],
    pub link_prefix: String,
    /// Where the interface lives, for messages.
    pub netns: &'a str,
}

impl Target<'_> {
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
            self.netns
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

    /// Attaches every hook that is not attached yet. Returns whether
    /// anything was attached. On failure, hooks attached by this call are
    /// removed again.
    pub fn attach(&self, pins: &PinDir, mode: Mode) -> Result<bool> {
        let mut done = Vec::new();
        for &(hook, prog) in self.hooks {
            if self.attached(pins, mode, hook, prog).is_some() {
                continue;
            }
            if let Err(e) = self.attach_one(pins, mode, hook, prog) {
                for &(h, p) in &done {
                    let _ = self.detach_one(pins, mode, h, p);
                }
                return Err(e);
            }
            done.push((hook, prog));
        }
        Ok(!done.is_empty())
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

    /// Removes our programs from every hook. `present` is false when the
    /// interface is gone: then only the pins are cleaned up.
    pub fn detach(&self, pins: &PinDir, mode: Mode, present: bool) -> Result<()> {
        for &(hook, prog) in self.hooks {
            match (mode, present) {
                (Mode::Tcx, _) => attach::detach_link(&self.link_pin(pins, hook))?,
                (Mode::Tc, true) => self.detach_one(pins, mode, hook, prog)?,
                (Mode::Tc, false) => {}
            }
        }
        Ok(())
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

#[derive(Debug, Clone, serde::Serialize)]
pub struct HookState {
    pub hook: Hook,
    pub program: &'static str,
    pub prog_id: Option<u32>,
    pub link_id: Option<u32>,
}

pub const WORKLOAD_HOOKS: &[(Hook, Prog)] = &[
    (Hook::Ingress, Prog::WorkloadOut),
    (Hook::Egress, Prog::WorkloadIn),
];
pub const ZTUNNEL_HOST_HOOKS: &[(Hook, Prog)] = &[(Hook::Ingress, Prog::ZtunnelHost)];
pub const ZTUNNEL_POD_HOOKS: &[(Hook, Prog)] = &[(Hook::Ingress, Prog::ZtunnelPod)];
