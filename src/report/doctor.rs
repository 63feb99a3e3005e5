// SPDX-License-Identifier: Apache-2.0
//! `doctor`: checks that the kernel has what the programs need and that the
//! node is set up so that redirection works, each with a fix on failure.

use std::mem::MaybeUninit;
use std::path::Path;

use anyhow::Result;
use libbpf_rs::libbpf_sys as sys;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use serde::Serialize;

use crate::ctx::Ctx;

use crate::report::health::Findings;
pub use crate::report::health::{Finding as Check, Level as Outcome};

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

pub fn run(ctx: &Ctx) -> Result<Report> {
    let mut f = Findings::default();
    kernel(ctx, &mut f);
    node(ctx, &mut f)?;
    let mut r = Report {
        checks: f.0,
        ..Default::default()
    };
    for c in &r.checks {
        match c.result {
            Outcome::Pass | Outcome::Warn => r.passed += 1,
            Outcome::Fail => r.failed += 1,
            Outcome::Skip => r.skipped += 1,
        }
    }
    Ok(r)
}

fn kernel(ctx: &Ctx, r: &mut Findings) {
    let btf = Path::new("/sys/kernel/btf/vmlinux");
    r.check(
        "kernel BTF",
        btf.exists(),
        if btf.exists() {
            "/sys/kernel/btf/vmlinux present"
        } else {
            "/sys/kernel/btf/vmlinux missing"
        },
        "use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
    );

    let probe = |t: sys::bpf_prog_type, f: sys::bpf_func_id| unsafe {
        sys::libbpf_probe_bpf_helper(t, f, std::ptr::null()) == 1
    };
    let sk_lookup = unsafe {
        sys::libbpf_probe_bpf_prog_type(sys::BPF_PROG_TYPE_SK_LOOKUP, std::ptr::null()) == 1
    };
    let assign = sk_lookup && probe(sys::BPF_PROG_TYPE_SK_LOOKUP, sys::BPF_FUNC_sk_assign);
    let peer = probe(sys::BPF_PROG_TYPE_SCHED_CLS, sys::BPF_FUNC_redirect_peer);
    r.check(
        "kernel socket assignment",
        assign && peer,
        format!("sk_lookup programs {sk_lookup}, bpf_sk_assign {assign}, bpf_redirect_peer {peer}"),
        "use Linux 5.10 or later",
    );

    if crate::dataplane::attach::tcx_supported(1) {
        r.add("kernel TCX", Outcome::Pass, "TCX links available");
    } else {
        r.fix(
            "kernel TCX",
            Outcome::Warn,
            "no TCX: classic tc (clsact + cls_bpf) is used",
            "Linux 6.6 or later has TCX; classic tc works meanwhile",
        );
    }

    programs_and_bpffs(ctx, r);
}

/// The programs pass this kernel's verifier; the pin directory is on bpffs.
fn programs_and_bpffs(ctx: &Ctx, r: &mut Findings) {
    let verifier = {
        let mut storage = MaybeUninit::uninit();
        crate::dataplane::skel::ZtredirSkelBuilder::default()
            .open(&mut storage)
            .and_then(|o| o.load())
            .map(drop)
    };
    match verifier {
        Ok(()) => r.add(
            "programs load",
            Outcome::Pass,
            "all programs pass the verifier",
        ),
        Err(e) => r.fail(
            "programs load",
            format!("{e}"),
            "run with -v to see the verifier log",
        ),
    }

    let root = &ctx.pins.root;
    let (dir, on_bpffs) = ctx.pins.bpffs_base();
    if on_bpffs {
        r.add(
            "bpffs",
            Outcome::Pass,
            format!("{} is on bpffs", dir.display()),
        );
    } else if root.starts_with("/sys/fs/bpf") {
        r.add(
            "bpffs",
            Outcome::Pass,
            "/sys/fs/bpf not mounted yet: ztredir mounts it on the first change",
        );
    } else {
        r.fail(
            "bpffs",
            format!("{} is not on a bpf filesystem", dir.display()),
            format!("mount -t bpf bpf {}", dir.display()),
        );
    }
}

/// The node's findings, from the one health model `status` also shows.
fn node(ctx: &Ctx, r: &mut Findings) -> Result<()> {
    if !ctx.pins.bpffs_base().1 {
        // The bpffs check above says what is wrong.
        r.add("ztunnel", Outcome::Skip, "no pinned state to check");
        return Ok(());
    }
    let st = ctx.read()?;
    let health = crate::report::health::inspect(ctx, st.as_deref())?;
    r.0.extend(health.findings.0);
    Ok(())
}
