// SPDX-License-Identifier: Apache-2.0
//! Attaching programs to interfaces: TCX links where the kernel has them,
//! classic clsact + cls_bpf direct-action filters otherwise. Only what
//! ztredir attached is ever removed: other tools' filters, TCX programs and
//! qdiscs stay.
//!
//! Every function acts in the calling thread's netns (ifindexes are
//! per-netns); callers wrap work for ztunnel's netns in `NetNs::run`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use anyhow::{bail, Context, Result};
use libbpf_rs::libbpf_sys as sys;
use libbpf_rs::{TcHookBuilder, TC_EGRESS, TC_INGRESS};

use crate::dataplane::bpf::{obj_get, obj_pin};

/// Our classic-tc filters' priority and handle: a fixed pair lets ztredir
/// find its own filter and leave every other one alone.
pub const TC_PRIO: u32 = 1;
pub const TC_HANDLE: u32 = 0x7a72;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    Ingress,
    Egress,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        }
    }
    fn tcx_type(self) -> sys::bpf_attach_type {
        match self {
            Hook::Ingress => sys::BPF_TCX_INGRESS,
            Hook::Egress => sys::BPF_TCX_EGRESS,
        }
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Tcx,
    Tc,
}

/// How to attach, as asked (`--attach-mode`, the node file's
/// `attach-mode`): TCX where the kernel has it (auto), or one mode.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Auto,
    Tcx,
    Tc,
}

impl AttachMode {
    /// The mode asked for, or None for auto.
    pub fn forced(self) -> Option<Mode> {
        match self {
            AttachMode::Auto => None,
            AttachMode::Tcx => Some(Mode::Tcx),
            AttachMode::Tc => Some(Mode::Tc),
        }
    }
    pub fn of(m: Mode) -> AttachMode {
        match m {
            Mode::Tcx => AttachMode::Tcx,
            Mode::Tc => AttachMode::Tc,
        }
    }
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Tcx => "tcx",
            Mode::Tc => "tc",
        }
    }
}

fn os_err(ret: i32) -> io::Error {
    io::Error::from_raw_os_error(if ret < 0 { -ret } else { ret })
}

/// True when the kernel has TCX: querying a TCX hook fails with EINVAL on
/// kernels that lack it.
pub fn tcx_supported(ifindex: u32) -> bool {
    let mut opts = sys::bpf_prog_query_opts {
        sz: std::mem::size_of::<sys::bpf_prog_query_opts>() as _,
        ..Default::default()
    };
    let ret = unsafe { sys::bpf_prog_query_opts(ifindex as i32, sys::BPF_TCX_INGRESS, &mut opts) };
    ret == 0
}

/// Attaches `prog` at the front of the TCX hook and pins the link, which
/// keeps it attached after we exit.
pub fn attach_tcx(prog: BorrowedFd<'_>, ifindex: u32, hook: Hook, pin: &Path) -> Result<()> {
    let opts = sys::bpf_link_create_opts {
        sz: std::mem::size_of::<sys::bpf_link_create_opts>() as _,
        // First in line: a program before ours that returns TC_ACT_OK
        // would let packets skip capture.
        flags: sys::BPF_F_BEFORE,
        ..Default::default()
    };
    let fd =
        unsafe { sys::bpf_link_create(prog.as_raw_fd(), ifindex as i32, hook.tcx_type(), &opts) };
    if fd < 0 {
        return Err(os_err(fd)).context("create TCX link");
    }
    let link = unsafe { OwnedFd::from_raw_fd(fd) };
    obj_pin(link.as_fd(), pin)
}

/// Attaches `prog` to the netns of `netns` as its sk_lookup program and
/// pins the link.
pub fn attach_sk_lookup(prog: BorrowedFd<'_>, netns: BorrowedFd<'_>, pin: &Path) -> Result<()> {
    let fd = unsafe {
        sys::bpf_link_create(
            prog.as_raw_fd(),
            netns.as_raw_fd(),
            sys::BPF_SK_LOOKUP,
            std::ptr::null(),
        )
    };
    if fd < 0 {
        return Err(os_err(fd)).context("create sk_lookup link");
    }
    let link = unsafe { OwnedFd::from_raw_fd(fd) };
    obj_pin(link.as_fd(), pin)
}

/// Attaches a netfilter program to the calling thread's netns at
/// PRE_ROUTING of `pf` (NFPROTO_IPV4 or NFPROTO_IPV6), first of all
/// hooks there, and pins the link.
pub fn attach_netfilter(prog: BorrowedFd<'_>, pf: u32, pin: &Path) -> Result<()> {
    let mut opts: sys::bpf_link_create_opts = unsafe { std::mem::zeroed() };
    opts.sz = std::mem::size_of::<sys::bpf_link_create_opts>() as _;
    opts.__bindgen_anon_1.netfilter.pf = pf;
    opts.__bindgen_anon_1.netfilter.hooknum = libbpf_rs::NF_INET_PRE_ROUTING as u32;
    opts.__bindgen_anon_1.netfilter.priority = i32::MIN + 1;
    let fd = unsafe { sys::bpf_link_create(prog.as_raw_fd(), 0, sys::BPF_NETFILTER, &opts) };
    if fd < 0 {
        return Err(os_err(fd)).context("create netfilter link");
    }
    let link = unsafe { OwnedFd::from_raw_fd(fd) };
    obj_pin(link.as_fd(), pin)
}

/// Detaches a pinned link and removes its pin. A pin that is gone is fine.
pub fn detach_link(pin: &Path) -> Result<()> {
    if !pin.exists() {
        return Ok(());
    }
    let fd = obj_get(pin)?;
    // Detach now rather than when the last reference goes: someone may
    // hold an fd of the link.
    let ret = unsafe { sys::bpf_link_detach(fd.as_raw_fd()) };
    if ret < 0 {
        let e = os_err(ret);
        // ENOLINK: the device is already gone, and the link with it.
        if e.raw_os_error() != Some(libc::ENOLINK) {
            return Err(e).with_context(|| format!("detach link {}", pin.display()));
        }
    }
    std::fs::remove_file(pin).with_context(|| format!("unpin {}", pin.display()))
}

/// What a pinned link points at.
#[derive(Debug, Clone, Copy)]
pub struct LinkState {
    pub link_id: u32,
    pub prog_id: u32,
    /// False once the device (or netns) behind the link is gone.
    pub attached: bool,
}

pub fn link_state(pin: &Path) -> Option<LinkState> {
    let fd = obj_get(pin).ok()?;
    let mut info = sys::bpf_link_info::default();
    let mut len = std::mem::size_of::<sys::bpf_link_info>() as u32;
    let ret = unsafe { sys::bpf_link_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    if ret < 0 {
        return None;
    }
    let attached = match info.type_ {
        sys::BPF_LINK_TYPE_TCX => unsafe { info.__bindgen_anon_1.tcx.ifindex != 0 },
        sys::BPF_LINK_TYPE_NETNS => unsafe { info.__bindgen_anon_1.netns.netns_ino != 0 },
        _ => true,
    };
    Some(LinkState {
        link_id: info.id,
        prog_id: info.prog_id,
        attached,
    })
}

/// The id of a program fd.
pub fn prog_id(fd: BorrowedFd<'_>) -> Result<u32> {
    let mut info = sys::bpf_prog_info::default();
    let mut len = std::mem::size_of::<sys::bpf_prog_info>() as u32;
    let ret = unsafe { sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    if ret < 0 {
        return Err(os_err(ret)).context("read program info");
    }
    Ok(info.id)
}

/// The maps a program uses, by id.
pub fn prog_map_ids(fd: BorrowedFd<'_>) -> Result<Vec<u32>> {
    let get = |info: &mut sys::bpf_prog_info| {
        let mut len = std::mem::size_of::<sys::bpf_prog_info>() as u32;
        let ret = unsafe { sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), info, &mut len) };
        if ret < 0 {
            return Err(os_err(ret)).context("read program info");
        }
        Ok(())
    };
    let mut info = sys::bpf_prog_info::default();
    get(&mut info)?;
    let mut ids = vec![0u32; info.nr_map_ids as usize];
    let mut info = sys::bpf_prog_info {
        nr_map_ids: ids.len() as u32,
        map_ids: ids.as_mut_ptr() as u64,
        ..Default::default()
    };
    get(&mut info)?;
    ids.truncate(info.nr_map_ids as usize);
    Ok(ids)
}

/// Every program loaded in the kernel, by id, open.
pub fn all_progs() -> Vec<(u32, OwnedFd)> {
    let mut out = Vec::new();
    let mut id = 0u32;
    while unsafe { sys::bpf_prog_get_next_id(id, &mut id) } == 0 {
        let fd = unsafe { sys::bpf_prog_get_fd_by_id(id) };
        if fd >= 0 {
            out.push((id, unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    out
}

/// The programs on a TCX hook (`target` an ifindex) or on a netns's
/// sk_lookup hook (`target` the netns fd), in order: (prog id, link id; 0
/// when the kernel does not report links there). Empty when the kernel has
/// no such hook.
pub fn attached_progs(target: i32, attach_type: sys::bpf_attach_type) -> Vec<(u32, u32)> {
    let mut progs = [0u32; 64];
    let mut links = [0u32; 64];
    let mut opts = sys::bpf_prog_query_opts {
        sz: std::mem::size_of::<sys::bpf_prog_query_opts>() as _,
        prog_ids: progs.as_mut_ptr(),
        ..Default::default()
    };
    if attach_type != sys::BPF_SK_LOOKUP {
        opts.link_ids = links.as_mut_ptr();
    }
    opts.__bindgen_anon_1.prog_cnt = progs.len() as u32;
    // SAFETY: the id buffers hold prog_cnt entries and outlive the call.
    let ret = unsafe { sys::bpf_prog_query_opts(target, attach_type, &mut opts) };
    if ret != 0 {
        return vec![];
    }
    // SAFETY: both fields of the union are the same u32.
    let n = (unsafe { opts.__bindgen_anon_1.prog_cnt } as usize).min(progs.len());
    (0..n).map(|i| (progs[i], links[i])).collect()
}

pub fn tcx_progs(ifindex: u32, hook: Hook) -> Vec<(u32, u32)> {
    attached_progs(ifindex as i32, hook.tcx_type())
}

/// A program's name, by id: what the kernel keeps of it (15 characters).
pub fn prog_name(id: u32) -> Option<String> {
    // SAFETY: plain syscall wrapper; a negative return is an error.
    let fd = unsafe { sys::bpf_prog_get_fd_by_id(id) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut info = sys::bpf_prog_info::default();
    let mut len = std::mem::size_of::<sys::bpf_prog_info>() as u32;
    let ret = unsafe { sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    if ret < 0 {
        return None;
    }
    let name: Vec<u8> = info
        .name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    Some(String::from_utf8_lossy(&name).into_owned())
}

/// The program of the classic filter at ztredir's priority and handle,
/// whoever put it there.
pub fn tc_filter_prog(ifindex: u32, hook: Hook) -> Option<u32> {
    let h = sys::bpf_tc_hook {
        sz: std::mem::size_of::<sys::bpf_tc_hook>() as _,
        ifindex: ifindex as i32,
        attach_point: match hook {
            Hook::Ingress => sys::BPF_TC_INGRESS,
            Hook::Egress => sys::BPF_TC_EGRESS,
        },
        ..Default::default()
    };
    let mut o = sys::bpf_tc_opts {
        sz: std::mem::size_of::<sys::bpf_tc_opts>() as _,
        handle: TC_HANDLE,
        priority: TC_PRIO,
        ..Default::default()
    };
    // SAFETY: both structs are initialised and live for the call.
    let ret = unsafe { sys::bpf_tc_query(&h, &mut o) };
    (ret == 0).then_some(o.prog_id)
}

fn tc_hook(prog: BorrowedFd<'_>, ifindex: u32, hook: Hook) -> libbpf_rs::TcHook {
    let mut b = TcHookBuilder::new(prog);
    b.ifindex(ifindex as i32)
        .replace(false)
        .handle(TC_HANDLE)
        .priority(TC_PRIO);
    b.hook(match hook {
        Hook::Ingress => TC_INGRESS,
        Hook::Egress => TC_EGRESS,
    })
}

/// Adds a clsact qdisc if there is none, then our direct-action filter.
pub fn attach_tc(prog: BorrowedFd<'_>, ifindex: u32, hook: Hook) -> Result<()> {
    let mut h = tc_hook(prog, ifindex, hook);
    h.create().context("add clsact qdisc")?;
    if let Ok(id) = h.query() {
        if id == prog_id(prog)? {
            return Ok(());
        }
        bail!(
            "tc {} filter prio {TC_PRIO} handle {TC_HANDLE:#x} is taken by program {id}",
            hook.name()
        );
    }
    h.attach().context("add tc filter")?;
    Ok(())
}

/// The program id of our classic filter, if present.
pub fn tc_prog_id(prog: BorrowedFd<'_>, ifindex: u32, hook: Hook) -> Option<u32> {
    tc_hook(prog, ifindex, hook).query().ok()
}

/// Removes our classic filter, and only if it still runs one of our
/// programs (`ours`). The clsact qdisc stays: other filters may use it.
pub fn detach_tc(prog: BorrowedFd<'_>, ifindex: u32, hook: Hook) -> Result<()> {
    let mut h = tc_hook(prog, ifindex, hook);
    match h.query() {
        Ok(id) if id == prog_id(prog)? => h.detach().context("delete tc filter"),
        _ => Ok(()),
    }
}

/// Points a pinned link (TCX or netns) at `new` in place, if it still runs
/// program `expected`: the kernel compares (BPF_F_REPLACE), so a program
/// someone swapped in meanwhile is found, not overwritten. The hook never
/// runs without a program.
pub fn update_link(pin: &Path, new: BorrowedFd<'_>, expected: u32) -> Result<()> {
    let link = obj_get(pin)?;
    let old = prog_fd_by_id(expected)?;
    let opts = sys::bpf_link_update_opts {
        sz: std::mem::size_of::<sys::bpf_link_update_opts>() as _,
        flags: sys::BPF_F_REPLACE,
        old_prog_fd: old.as_raw_fd() as u32,
        ..Default::default()
    };
    // SAFETY: both fds are open for the call; opts is initialised.
    let ret = unsafe { sys::bpf_link_update(link.as_raw_fd(), new.as_raw_fd(), &opts) };
    if ret < 0 {
        return Err(os_err(ret)).with_context(|| {
            format!(
                "replace the program of link {} (expected program {expected}: changed meanwhile?)",
                pin.display()
            )
        });
    }
    Ok(())
}

/// An fd of the program with this id.
pub fn prog_fd_by_id(id: u32) -> Result<OwnedFd> {
    // SAFETY: plain syscall wrapper; a negative return is an error.
    let fd = unsafe { sys::bpf_prog_get_fd_by_id(id) };
    if fd < 0 {
        return Err(os_err(fd)).with_context(|| format!("open program {id}"));
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Replaces the program of our classic filter in one netlink request at
/// the same priority and handle (cls_bpf swaps it under RCU: no packet
/// meets an empty hook), if it still runs program `expected`.
pub fn replace_tc(new: BorrowedFd<'_>, ifindex: u32, hook: Hook, expected: u32) -> Result<()> {
    match tc_filter_prog(ifindex, hook) {
        Some(id) if id == expected => {}
        other => bail!(
            "tc {} filter on ifindex {ifindex} runs program {other:?}, not {expected}: changed meanwhile",
            hook.name()
        ),
    }
    let mut h = tc_hook(new, ifindex, hook);
    h.replace(true);
    h.attach().context("replace tc filter")?;
    Ok(())
}
