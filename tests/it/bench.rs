// SPDX-License-Identifier: Apache-2.0
//! Short smoke runs of the benchmark scripts, so that they keep working.
//! Timings are printed by the scripts, never asserted; what is asserted is
//! that every mode ran and passed traffic where it should (the scripts
//! check that and exit non-zero otherwise) and left nothing behind.

use std::path::Path;
use std::process::Command;

fn run_script(script: &str, args: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out_dir = std::env::temp_dir().join(format!(
        "ztredir-bench-smoke-{}-{}",
        std::process::id(),
        script.replace('/', "-")
    ));
    let out = Command::new(root.join(script))
        .args(args)
        .arg("--out")
        .arg(&out_dir)
        .env("ZTREDIR", env!("CARGO_BIN_EXE_ztredir"))
        // The topology comes from the binary cargo built with the tests: no `cargo build` here.
        .env("TESTBED", env!("CARGO_BIN_EXE_testbed"))
        .current_dir(root)
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} {args:?} failed ({}):\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let written: Vec<_> = std::fs::read_dir(&out_dir)
        .map(|d| d.filter_map(|e| e.ok()).collect())
        .unwrap_or_default();
    assert!(
        !written.is_empty(),
        "{script} wrote no results in {}",
        out_dir.display()
    );
    std::fs::remove_dir_all(&out_dir).ok();
    text
}

#[test]
fn control_plane_benchmark_smoke() {
    let _heavy = crate::node::heavy();
    let text = run_script("bench/control.sh", &["--quick"]);
    for row in [
        "x `ztredir attach`",
        "`ztredir apply`",
        "`ztredir status` with 50 interfaces",
    ] {
        assert!(text.contains(row), "no row {row:?} in:\n{text}");
    }
}

#[test]
fn end_to_end_benchmark_smoke() {
    let _heavy = crate::node::heavy();
    let text = run_script("bench/e2e.sh", &["--quick"]);
    for mode in [
        "a direct",
        "b explicit proxy",
        "c iptables TPROXY",
        "d ztredir TCX",
        "e ztredir tc",
        "f ztredir TCX, no conntrack",
        "g in-pod iptables",
        "h in-pod nftables",
    ] {
        assert!(text.contains(mode), "no row for mode {mode:?} in:\n{text}");
    }
    for section in [
        "## Goals",
        "connections sweep",
        "## Load from others, per round",
    ] {
        assert!(text.contains(section), "no section {section:?} in:\n{text}");
    }
}
