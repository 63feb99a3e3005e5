// SPDX-License-Identifier: Apache-2.0
//! Crashes: ztredir killed (SIGKILL, as by a unit's timeout or the OOM
//! killer) at a failpoint inside the first load, inside `ztunnel set` and
//! inside `uninstall`, then run again. The rerun completes, and the node's
//! sysctls, policy routing and pins are as the uninterrupted command leaves
//! them: the journal undid (or finished) the interrupted change.

use std::os::unix::process::ExitStatusExt;
use std::process::Output;

use crate::node::*;
use crate::redirect::{direct, server, through_proxy};

/// Runs ztredir in the node's netns with `env`.
fn run_env(node: &Node, env: &[(&str, &str)], args: &[&str]) -> Output {
    let pins = node.pins.to_str().unwrap();
    let mut full = vec![env!("CARGO_BIN_EXE_ztredir"), "--pin-dir", pins];
    full.extend(["--attach-mode", node.mode]);
    full.extend(args);
    node.topo
        .nsenter("node", &full)
        .envs(env.iter().copied())
        .output()
        .expect("run ztredir")
}

/// Runs ztredir and expects it to die by SIGKILL at `failpoint`.
fn killed_at(node: &Node, failpoint: &str, args: &[&str]) {
    let fp = format!("kill:{failpoint}");
    let out = run_env(node, &[("ZTREDIR_FAILPOINT", &fp)], args);
    assert_eq!(
        out.status.signal(),
        Some(9),
        "ztredir {args:?} was not killed at {failpoint}: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The sysctls ztunnel set and clear touch, and the policy routing in
/// ztunnel's netns.
fn settings(node: &Node) -> Vec<String> {
    let read = |pod: &str, key: &str| {
        let v = node.topo.sh_ok(pod, &["cat", &format!("/proc/sys/{key}")]);
        format!("{pod} {key}={}", v.trim())
    };
    let mut out = vec![
        read("zt", "net/ipv4/ip_forward"),
        read("zt", "net/ipv6/conf/all/forwarding"),
        read("node", "net/ipv4/conf/vzt/rp_filter"),
    ];
    for args in [
        &["ip", "rule"][..],
        &["ip", "-6", "rule"],
        &["ip", "route", "show", "table", "100"],
        &["ip", "-6", "route", "show", "table", "100"],
    ] {
        // The kernel keeps a routing table once made, empty: no table and
        // an empty one are the same routing.
        let o = node.topo.sh("zt", args);
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success() || err.contains("FIB table does not exist"),
            "{args:?}: {err}"
        );
        out.push(format!("{args:?}: {}", text.trim()));
    }
    out
}

/// What the pin directory holds, as sorted relative paths.
fn pins(node: &Node) -> Vec<String> {
    fn walk(dir: &std::path::Path, base: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if p.is_dir() {
                walk(&p, base, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&node.pins, &node.pins, &mut out);
    out.sort();
    out
}

/// Non-default values in the test's own namespaces, so that restoring them
/// is visible: forwarding on in ztunnel's netns, strict rp_filter on its veth.
fn set_baseline(node: &Node) {
    node.topo
        .sh_ok("zt", &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    node.topo
        .sh_ok("zt", &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    node.topo
        .sh_ok("node", &["sysctl", "-qw", "net.ipv4.conf.vzt.rp_filter=1"]);
}

#[test]
fn killed_in_the_first_load_then_rerun() {
    let node = Node::new("tcx");
    killed_at(&node, "load-pin-4", &["attach", "va"]);
    assert!(
        node.pins.join("maps").read_dir().unwrap().next().is_some(),
        "the kill came before any pin: the test proves nothing"
    );
    // Every command works again (before, each failed on a missing map).
    let out = node.ztredir(&["status"]);
    assert!(
        out.status.success(),
        "status after the kill: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("undid an interrupted change"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    node.ok(&["attach", "va"]);
    // The same pins as an uninterrupted attach on a fresh node.
    let control = Node::new("tcx");
    control.ok(&["attach", "va"]);
    assert_eq!(pins(&node), pins(&control));
    node.set_ztunnel(&[]);
    let remote = server(&node, "remote", "10.99.0.2:8080");
    through_proxy(&node, "a", &remote, 15001, zt_v4());
}

#[test]
fn killed_in_ztunnel_set_then_rerun_and_clear() {
    let node = Node::new("tcx");
    set_baseline(&node);
    let baseline = settings(&node);
    let ns = node.topo.ns("zt");
    let set = node.set_ztunnel_args(&[]);
    let set: Vec<&str> = set.iter().map(String::as_str).collect();
    killed_at(&node, "ztunnel-set-config", &set);
    assert_ne!(
        settings(&node),
        baseline,
        "the kill came before any change: the test proves nothing"
    );
    node.ok(&set);
    let after_set = settings(&node);
    // An uninterrupted set on a fresh node leaves the same.
    let control = Node::new("tcx");
    set_baseline(&control);
    let cns = control.topo.ns("zt");
    control.set_ztunnel(&[]);
    let strip =
        |v: Vec<String>| -> Vec<String> { v.into_iter().map(|s| s.replace(&cns, "")).collect() };
    assert_eq!(
        after_set
            .iter()
            .map(|s| s.replace(&ns, ""))
            .collect::<Vec<_>>(),
        strip(settings(&control))
    );
    assert_eq!(pins(&node), pins(&control));
    // clear puts back what was there before ztredir, not ztredir's own
    // values from the interrupted run.
    node.ok(&["ztunnel", "clear"]);
    assert_eq!(settings(&node), baseline);
}

#[test]
fn killed_in_uninstall_then_rerun() {
    for failpoint in ["journal-3", "uninstall-unpin", "uninstall-unpinned-one"] {
        let node = Node::new("tcx");
        set_baseline(&node);
        let baseline = settings(&node);
        node.set_ztunnel(&[]);
        node.ok(&["attach", "va"]);
        node.ok(&["attach", "vb"]);
        // A stray entry in links/ must not stop an uninstall half-way.
        std::fs::create_dir(node.pins.join("links/stray")).unwrap();
        killed_at(&node, failpoint, &["uninstall"]);
        assert!(
            node.pins.exists(),
            "{failpoint}: nothing was left to finish"
        );
        node.ok(&["uninstall"]);
        assert!(
            !node.pins.exists(),
            "{failpoint}: {} is still there",
            node.pins.display()
        );
        assert_eq!(settings(&node), baseline, "after {failpoint}");
        // Nothing captures any more.
        let remote = server(&node, "remote", "10.99.0.2:8080");
        direct(&node, "a", None, &remote);
        let again = node.ok(&["uninstall"]);
        assert!(again.contains("nothing to do"), "{again}");
    }
}

#[test]
fn interrupted_uninstall_is_finished_by_any_command() {
    let node = Node::ready("tc");
    killed_at(&node, "uninstall-unpinned-one", &["uninstall"]);
    let out = node.ztredir(&["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("finished an interrupted uninstall"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!node.pins.exists());
}
