// SPDX-License-Identifier: Apache-2.0
//! Upgrades from the previous release: a node set up by ztredir 0.1.0
//! (commit 32abf0e, built once from the repository's own history into
//! target/ztredir-0.1.0-32abf0e) is upgraded in place by this build, under
//! load; the skew in between is shown and refused; an incompatible map is
//! refused; an upgrade killed at several points completes when rerun.

use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::Value;
use ztredir::dataplane::attach::{attach_tcx, Hook};

use crate::foreign::{ifindex, load_continue_prog, tcx_prog_ids};
use crate::node::*;
use crate::redirect::{server, through_proxy};
use crate::testbed::*;

/// 0.1.0: found by hash, since a clone may lack the v0.1.0 tag.
const RELEASE: &str = "32abf0e";

/// The 0.1.0 binary: scripts/test.sh builds it once from the repository's
/// history (scripts/build-release.sh) and passes it in ZTREDIR_OLD, so
/// that no test runs cargo. Run by hand, the test builds it the same way.
fn old_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("ZTREDIR_OLD") {
            return PathBuf::from(p);
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but ZTREDIR_OLD is not: run the suite with scripts/test.sh"
        );
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(root.join("scripts/build-release.sh"))
            .args([RELEASE, "0.1.0"])
            .output()
            .expect("run scripts/build-release.sh");
        assert!(
            out.status.success(),
            "build ztredir 0.1.0: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

fn old(node: &Node, args: &[&str]) -> String {
    let out = node.ztredir_bin(old_binary(), args);
    assert!(
        out.status.success(),
        "ztredir 0.1.0 {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A node that 0.1.0 set up: ztunnel, workloads a and b.
fn old_node(mode: &'static str) -> Node {
    let node = Node::new(mode);
    let set = node.set_ztunnel_args(&[]);
    old(&node, &set.iter().map(String::as_str).collect::<Vec<_>>());
    old(&node, &["attach", "va"]);
    old(&node, &["attach", "vb"]);
    node
}

fn json(node: &Node, args: &[&str]) -> Value {
    let mut full = vec!["-o", "json"];
    full.extend(args);
    serde_json::from_str(&node.ok(&full)).expect("JSON output")
}

/// (interface, hook) -> (prog id, link id), from `status`.
fn hooks(node: &Node) -> Vec<(String, String, Value, Value)> {
    let st = node.status_json();
    let mut out = vec![];
    for i in st["interfaces"].as_array().unwrap() {
        for h in i["hooks"].as_array().unwrap() {
            let name = i["name"].as_str().unwrap().to_string();
            let hook = h["hook"].as_str().unwrap().to_string();
            out.push((name, hook, h["prog_id"].clone(), h["link_id"].clone()));
        }
    }
    out
}

/// Established connections reset, counted in pods a and b.
fn resets(node: &Node) -> u64 {
    ["a", "b"]
        .iter()
        .map(|p| {
            nstat(&node.topo, p)
                .get("TcpEstabResets")
                .copied()
                .unwrap_or(0)
        })
        .sum()
}

fn upgrade_under_load(mode: &'static str) {
    let _heavy = heavy();
    let node = old_node(mode);
    let remote = server(&node, "remote", "10.99.0.2:8080");
    through_proxy(&node, "a", &remote, 15001, zt_v4());
    // A foreign TCX program on va's ingress, before ztredir's.
    let va = ifindex(&node.topo, "node", "va");
    let foreign = load_continue_prog("foreign_tcx");
    let foreign_id = ztredir::dataplane::attach::prog_id(foreign.as_fd()).unwrap();
    if mode == "tcx" {
        let pin = node.topo.pin_dir().join("foreign_link");
        let fd = foreign.try_clone().unwrap();
        in_netns(&node.topo.ns_path("node"), move || {
            attach_tcx(fd.as_fd(), va, Hook::Ingress, &pin).expect("attach foreign TCX")
        });
    }
    let order_before = tcx_prog_ids(&node.topo.ns_path("node"), va, Hook::Ingress);
    let (hooks_before, stats_before) = (hooks(&node), json(&node, &["stats"]));
    let conns_before = json(&node, &["conns"]);
    let resets_before = resets(&node);

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let (ns, dst) = (node.topo.ns_path("b"), remote.addr);
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match tcp_transfer(&ns, None, dst, 100, 1000, CONNECT_TIMEOUT) {
                    Ok(t) if t.bytes_down == 1000 && t.pattern_ok => {
                        ok.fetch_add(1, Ordering::SeqCst)
                    }
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
            }
        })
    };
    let streams: Vec<_> = (0..3)
        .map(|_| {
            let (ns, dst) = (node.topo.ns_path("a"), remote.addr);
            std::thread::spawn(move || {
                slow_transfer(&ns, dst, 30, Duration::from_millis(100), 50_000)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let out = node.ok(&["upgrade"]);
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::SeqCst);
    load.join().unwrap();
    for s in streams {
        let t = s
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("long-lived stream ({mode}): {e}"));
        assert!(
            t.bytes_down == 50_000 && t.pattern_ok,
            "long-lived stream ({mode}): {t:?}"
        );
    }
    assert!(out.contains("~ program ztr_workload_out: id "), "{out}");
    assert!(out.contains("~ map ztr_stat_slots: migrated "), "{out}");
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "failed connections ({mode})"
    );
    assert!(ok.load(Ordering::SeqCst) > 10, "the load ran ({mode})");
    assert_eq!(resets(&node), resets_before, "connections reset ({mode})");

    check_after(&node, mode, &hooks_before, &order_before, foreign_id);
    check_state_kept(&node, &stats_before, &conns_before);
    through_proxy(&node, "a", &remote, 15001, zt_v4());
    let again = node.ok(&["upgrade"]);
    assert!(again.contains("no change"), "{again}");
}

/// Program ids changed, link ids and attach order kept, the foreign
/// program untouched, one ztredir program per hook.
fn check_after(
    node: &Node,
    mode: &str,
    before: &[(String, String, Value, Value)],
    order: &[u32],
    foreign: u32,
) {
    let after = hooks(node);
    assert_eq!(after.len(), before.len());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!((&b.0, &b.1), (&a.0, &a.1));
        assert!(
            a.2.is_u64() && a.2 != b.2,
            "{mode}: program of {} {} did not change: {b:?} {a:?}",
            a.0,
            a.1
        );
        assert_eq!(a.3, b.3, "{mode}: link of {} {} changed", a.0, a.1);
    }
    let va = ifindex(&node.topo, "node", "va");
    let now = tcx_prog_ids(&node.topo.ns_path("node"), va, Hook::Ingress);
    assert_eq!(
        now.len(),
        order.len(),
        "{mode}: TCX chain of va: {order:?} -> {now:?}"
    );
    for (o, n) in order.iter().zip(&now) {
        assert!(
            (o == n) == (*o == foreign),
            "{mode}: TCX chain of va: {order:?} -> {now:?}"
        );
    }
    if mode == "tc" {
        let f = node
            .topo
            .sh_ok("node", &["tc", "filter", "show", "dev", "va", "ingress"]);
        assert_eq!(f.matches("handle 0x7a72").count(), 1, "{f}");
    }
    let st = node.status_json();
    assert_eq!(st["version"]["current"], true, "{st}");
}

/// Every counter at least what it was, every connection still there.
fn check_state_kept(node: &Node, stats_before: &Value, conns_before: &Value) {
    let stats = json(node, &["stats"]);
    let key = |r: &Value| (r["iface"].clone(), r["hook"].clone(), r["reason"].clone());
    for b in stats_before.as_array().unwrap() {
        let a = stats.as_array().unwrap().iter().find(|a| key(a) == key(b));
        let a = a.unwrap_or_else(|| panic!("counter {b} gone after the upgrade: {stats}"));
        assert!(a["packets"].as_u64() >= b["packets"].as_u64(), "{b} -> {a}");
    }
    let conns = json(node, &["conns"]);
    let ck = |r: &Value| {
        (
            r["workload"].clone(),
            r["peer"].clone(),
            r["first_ns"].clone(),
        )
    };
    assert!(
        !conns_before.as_array().unwrap().is_empty(),
        "no connection before: proves nothing"
    );
    for b in conns_before.as_array().unwrap() {
        assert!(
            conns.as_array().unwrap().iter().any(|a| ck(a) == ck(b)),
            "{b} gone: {conns}"
        );
    }
}

#[test]
fn upgrade_from_0_1_0_under_load_tcx() {
    upgrade_under_load("tcx");
}

#[test]
fn upgrade_from_0_1_0_under_load_tc() {
    upgrade_under_load("tc");
}

#[test]
fn skew_is_shown_and_changes_refused() {
    let node = old_node("tcx");
    let out = node.ztredir(&["attach", "vb", "--exclude-outbound-port", "5432"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("run `ztredir upgrade`") && err.contains("0.1.0"),
        "{err}"
    );
    let status = node.ok(&["status"]);
    assert!(
        status.contains("version: pinned 0.1.0, this binary 0.2.0"),
        "{status}"
    );
    let doctor = node.ztredir(&["doctor"]);
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert_eq!(doctor.status.code(), Some(1), "{text}");
    assert!(
        text.contains("pinned version") && text.contains("ztredir upgrade"),
        "{text}"
    );
    for read in [&["conns"][..], &["stats"], &["export"]] {
        node.ok(read);
    }
    for change in [
        &["stats", "reset"][..],
        &["conns", "flush"],
        &["detach", "va"],
    ] {
        let out = node.ztredir(change);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{change:?}: {err}");
        assert!(err.contains("run `ztredir upgrade`"), "{change:?}: {err}");
    }
    let dry = node.ok(&["upgrade", "--dry-run"]);
    assert!(dry.contains("+ map ztr_frags: create"), "{dry}");
    assert!(
        node.status_json()["version"]["current"] == false,
        "dry run changed it"
    );
}

/// Replaces the pin of ztr_endpoints with a map of other sizes.
fn plant(node: &Node) {
    let path = node.pins.join("maps/ztr_endpoints");
    std::fs::remove_file(&path).unwrap();
    let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
        ..Default::default()
    };
    let m = libbpf_rs::MapHandle::create(
        libbpf_rs::MapType::Hash,
        Some("ztr_endpoints"),
        8,
        8,
        16,
        &opts,
    )
    .unwrap();
    ztredir::dataplane::bpf::obj_pin(m.as_fd(), &path).unwrap();
}

#[test]
fn incompatible_map_is_refused() {
    let node = old_node("tcx");
    let before = pinned_ids(&node);
    plant(&node);
    let out = node.ztredir(&["upgrade"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("ztr_endpoints"), "{err}");
    assert!(!node.pins.join("upgrade").exists() && !node.pins.join("schema").exists());
    assert_eq!(
        pinned_ids(&node),
        before,
        "the upgrade changed programs or links"
    );
    let out = node.ztredir(&["status"]);
    assert_eq!(out.status.code(), Some(1), "status on a foreign map");
}

/// The ids of every pinned program and what every pinned link runs.
fn pinned_ids(node: &Node) -> Vec<(String, u32)> {
    let mut out = vec![];
    for dir in ["progs", "links"] {
        for e in std::fs::read_dir(node.pins.join(dir)).unwrap().flatten() {
            let fd = ztredir::dataplane::bpf::obj_get(&e.path()).unwrap();
            let id = match dir {
                "progs" => ztredir::dataplane::attach::prog_id(fd.as_fd()).unwrap(),
                _ => {
                    ztredir::dataplane::attach::link_state(&e.path())
                        .unwrap()
                        .prog_id
                }
            };
            out.push((e.path().display().to_string(), id));
        }
    }
    out.sort();
    assert!(out.len() > 5, "{out:?}");
    out
}

fn killed_upgrade(failpoint: &str) -> Output {
    let node = old_node("tcx");
    let remote = server(&node, "remote", "10.99.0.2:8080");
    let pins = node.pins.to_str().unwrap();
    let bin = env!("CARGO_BIN_EXE_ztredir");
    let fp = format!("kill:{failpoint}");
    let out = node
        .topo
        .nsenter("node", &[bin, "--pin-dir", pins, "upgrade"])
        .env("ZTREDIR_FAILPOINT", &fp)
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{failpoint}: not killed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Until the rerun the node still redirects, old programs or new.
    through_proxy(&node, "a", &remote, 15001, zt_v4());
    let again = node.ok(&["upgrade"]);
    assert!(
        node.status_json()["version"]["current"] == true,
        "{failpoint}: {again}"
    );
    assert!(
        !node.pins.join("upgrade").exists(),
        "{failpoint}: staging left"
    );
    let progs: Vec<_> = std::fs::read_dir(node.pins.join("progs"))
        .unwrap()
        .collect();
    assert_eq!(
        progs.len(),
        ztredir::dataplane::bpf::Prog::ALL.len(),
        "{failpoint}"
    );
    assert!(node.ok(&["upgrade"]).contains("no change"), "{failpoint}");
    through_proxy(&node, "a", &remote, 15001, zt_v4());
    for (iface, hook, prog, _) in hooks(&node) {
        assert!(prog.is_u64(), "{failpoint}: {iface} {hook} not attached");
    }
    out
}

#[test]
fn killed_in_upgrade_then_rerun() {
    for fp in [
        "upgrade-stage-prog",
        "upgrade-staged",
        "upgrade-link-replaced",
        "upgrade-swap-prog",
    ] {
        killed_upgrade(fp);
    }
}
