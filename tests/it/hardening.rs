// SPDX-License-Identifier: Apache-2.0
//! Security and robustness of the control plane: bad input is refused in
//! one line with exit 2 before anything changes, state nobody else can
//! tamper with, and no silent loss of capture.

use std::process::{Command, Output};

use crate::cli::{assert_rejected, bad, run, status_text, Bad};
use crate::node::*;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ztredir_plain(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ztredir"))
        .args(args)
        .output()
        .expect("run ztredir")
}

/// Usage errors are one line, but asking for help or the version still
/// prints them in full, on stdout, with exit 0.
#[test]
fn help_and_version_are_not_errors() {
    for args in [
        &["--help"][..],
        &["-h"],
        &["help"],
        &["attach", "--help"],
        &["help", "ztunnel", "set"],
    ] {
        let out = ztredir_plain(args);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "ztredir {args:?}: {out:?}");
        assert!(
            stdout.contains("Usage: ztredir") && stdout.lines().count() > 5,
            "ztredir {args:?}: {stdout}"
        );
        assert!(out.stderr.is_empty(), "ztredir {args:?}: {out:?}");
    }
    let out = ztredir_plain(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout).trim(),
        format!("ztredir {}", env!("CARGO_PKG_VERSION"))
    );
}

/// Every kind of parse error, without a node: one line naming the value.
#[test]
fn parse_errors_are_one_line() {
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("x", vec!["attach", "va", "--ip", "x"]),
        ("70000", vec!["conns", "--port", "70000"]),
        (
            "10.0.0.0/33",
            vec!["attach", "va", "--exclude-cidr", "10.0.0.0/33"],
        ),
        ("--file", vec!["apply", "-f", "a", "-f", "b"]),
        ("frobnicate", vec!["frobnicate"]),
        ("bogus", vec!["-o", "bogus", "status"]),
        ("--all", vec!["detach", "va", "--all"]),
        ("ztunnel", vec!["ztunnel"]),
        ("ztredir", vec![]),
        ("<IFACE>", vec!["attach"]),
        ("--ip", vec!["attach", "va", "--ip"]),
    ];
    for (value, args) in cases {
        let out = ztredir_plain(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "ztredir {args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "ztredir {args:?}: {stderr:?}");
        assert!(
            stderr.starts_with("Error: ") && stderr.contains(value),
            "ztredir {args:?} does not name {value:?}: {stderr:?}"
        );
        assert!(out.stdout.is_empty(), "ztredir {args:?}: {out:?}");
    }
}

/// Addresses no pod can have, in every form a workload address is given.
const IMPOSSIBLE_IPS: [&str; 10] = [
    "0.0.0.0",
    "::",
    "255.255.255.255",
    "224.0.0.1",
    "ff02::1",
    "127.0.0.1",
    "127.1.2.3",
    "::1",
    "::ffff:127.0.0.1",
    "::ffff:224.0.0.9",
];

/// The value an error about `ip` names: the IPv4 form of a mapped address.
fn shown(ip: &str) -> &str {
    ip.strip_prefix("::ffff:").unwrap_or(ip)
}

fn write_node_file(node: &Node, name: &str, body: &str) -> String {
    let dir = node.topo.pin_dir();
    let path = dir.parent().expect("topo temp dir").join(name);
    std::fs::write(&path, body).expect("write node file");
    path.to_str().expect("UTF-8 path").to_string()
}

fn impossible_ips_refused(node: &Node, fresh: bool) {
    for ip in IMPOSSIBLE_IPS {
        let file = write_node_file(
            node,
            "bad-ip.yaml",
            &format!("version: 1\nworkloads:\n  - iface: va\n    ips: ['{ip}']\n"),
        );
        let mut cases: Vec<Bad> = vec![
            bad(shown(ip), &["attach", "va", "--ip", ip]),
            bad(shown(ip), &["apply", "-f", &file]),
            bad(shown(ip), &["apply", "--dry-run", "-f", &file]),
        ];
        if !fresh {
            cases.push(bad(shown(ip), &["workload", "add", ip, "--iface", "va"]));
        }
        let before = (!fresh).then(|| status_text(node));
        for case in &cases {
            assert_rejected(node, case);
            if let Some(before) = &before {
                assert_eq!(
                    &status_text(node),
                    before,
                    "`ztredir {}` changed the state",
                    case.args.join(" ")
                );
            } else {
                assert!(
                    !node.pins.exists(),
                    "`ztredir {}` created the pin dir",
                    case.args.join(" ")
                );
            }
        }
        // The node file error keeps its FILE:LINE:COL: form.
        let out = run(node, &cases[1].args);
        let stderr = text(&out.stderr);
        assert!(
            stderr.starts_with(&format!("Error: {file}:4:")),
            "apply {ip}: {stderr}"
        );
    }
}

#[test]
fn impossible_workload_addresses_are_refused() {
    impossible_ips_refused(&Node::new("tcx"), true);
    impossible_ips_refused(&Node::ready("tcx"), false);
}

/// One more character than the kernel allows in an interface name.
const LONG: &str = "abcdefghijklmnop";

/// `ztredir ARGS` in the node netns with `input` on stdin.
fn with_stdin(node: &Node, args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let pins = node.pins.to_str().expect("UTF-8 pin dir");
    let mut full = vec![env!("CARGO_BIN_EXE_ztredir"), "--pin-dir", pins];
    full.extend_from_slice(args);
    let mut child = node
        .topo
        .nsenter("node", &full)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ztredir");
    // A refusal may come before all of the input is read.
    let _ = child.stdin.take().expect("stdin").write_all(input);
    child.wait_with_output().expect("wait for ztredir")
}

fn bad_values_refused(node: &Node, fresh: bool) {
    let zt = node.topo.ns("zt");
    let zt = zt.as_str();
    let long_wl = write_node_file(
        node,
        "long-wl.yaml",
        &format!("version: 1\nworkloads:\n  - iface: {LONG}\n"),
    );
    let long_pod = write_node_file(
        node,
        "long-pod.yaml",
        &format!("version: 1\nztunnel: {{iface: vzt, netns: {zt}, pod-iface: {LONG}}}\n"),
    );
    let mut cases = vec![
        bad(LONG, &["attach", LONG]),
        bad(LONG, &["detach", LONG]),
        bad(LONG, &["ztunnel", "set", "--iface", LONG, "--netns", zt]),
        bad(
            LONG,
            &[
                "ztunnel",
                "set",
                "--iface",
                "vzt",
                "--netns",
                zt,
                "--pod-iface",
                LONG,
            ],
        ),
        bad(LONG, &["workload", "add", "10.244.0.99", "--iface", LONG]),
        bad(LONG, &["conns", "--iface", LONG]),
        bad(LONG, &["stats", "--iface", LONG]),
        bad(LONG, &["trace", "--iface", LONG]),
        bad(LONG, &["apply", "-f", &long_wl]),
        bad(LONG, &["apply", "--dry-run", "-f", &long_pod]),
        bad("nosuch0", &["stats", "--iface", "nosuch0"]),
        bad("nosuch0", &["conns", "--iface", "nosuch0"]),
        bad("nosuch0", &["trace", "--iface", "nosuch0", "--count", "1"]),
    ];
    for d in ["nan", "-1", "inf", "1e300", "0", "NaN", "700000"] {
        cases.push(bad(d, &["trace", "--duration", d]));
    }
    cases.push(bad("-inf", &["trace", "--duration=-inf"]));
    let before = (!fresh).then(|| status_text(node));
    for case in &cases {
        assert_rejected(node, case);
        let what = format!("`ztredir {}`", case.args.join(" "));
        if case.value == LONG {
            let stderr = text(&run(node, &case.args).stderr);
            assert!(stderr.contains("longer than 15"), "{what}: {stderr}");
        }
        match &before {
            Some(before) => assert_eq!(&status_text(node), before, "{what} changed the state"),
            None => assert!(!node.pins.exists(), "{what} created the pin dir"),
        }
    }

    // Binary input is bad input, from stdin as from a file.
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 131 % 256) as u8).collect();
    let path = write_node_file(node, "garbage.bin", "");
    std::fs::write(&path, &garbage).expect("write garbage");
    for (file, input) in [("-", &garbage[..]), (path.as_str(), &b""[..])] {
        let out = with_stdin(node, &["apply", "-f", file], input);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "apply -f {file}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "apply -f {file}: {stderr:?}");
        let name = if file == "-" { "<stdin>" } else { file };
        assert!(stderr.contains(name), "apply -f {file}: {stderr}");
        match &before {
            Some(before) => assert_eq!(&status_text(node), before, "apply -f {file}"),
            None => assert!(!node.pins.exists(), "apply -f {file} created the pin dir"),
        }
    }

    // An interface of the node with nothing attached is a valid filter.
    for args in [
        &["stats", "--iface", "up0"][..],
        &["conns", "--iface", "up0"],
        &["trace", "--iface", "up0", "--duration", "0.2"],
    ] {
        node.ok(args);
    }
}

#[test]
fn bad_names_durations_and_files_are_refused() {
    bad_values_refused(&Node::new("tcx"), true);
    let node = Node::ready("tcx");
    bad_values_refused(&node, false);
    // What ztredir knows is a valid filter too.
    node.ok(&["stats", "--iface", "va"]);
    node.ok(&["conns", "--iface", "eth0"]);
}

fn mode_of(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .mode()
        & 0o7777
}

/// ztredir with a pin dir of its own, in the node netns, through `sh` so
/// that `prelude` (a umask) applies to it.
fn ztredir_at(node: &Node, pins: &std::path::Path, prelude: &str, args: &[&str]) -> Output {
    ztredir_mode(node, pins, node.mode, prelude, args)
}

fn ztredir_mode(
    node: &Node,
    pins: &std::path::Path,
    mode: &str,
    prelude: &str,
    args: &[&str],
) -> Output {
    let mut cmd = format!(
        "{prelude} exec {} --pin-dir {} --attach-mode {mode}",
        env!("CARGO_BIN_EXE_ztredir"),
        pins.display(),
    );
    for a in args {
        cmd += &format!(" '{a}'");
    }
    node.topo.sh("node", &["sh", "-c", &cmd])
}

/// Under umask 000, every directory ztredir makes is still 0700.
#[test]
fn pin_dirs_are_0700_whatever_the_umask() {
    let node = Node::new("tcx");
    let nested = node.topo.pin_dir().join("a/b/ztredir");
    for pins in [node.pins.clone(), nested.clone()] {
        let out = ztredir_at(&node, &pins, "umask 000;", &["attach", "va"]);
        assert!(
            out.status.success(),
            "attach va at {}: {out:?}",
            pins.display()
        );
        for sub in ["", "maps", "progs", "links"] {
            let dir = pins.join(sub);
            assert_eq!(mode_of(&dir), 0o700, "mode of {}", dir.display());
        }
        let out = ztredir_at(&node, &pins, "", &["detach", "va"]);
        assert!(out.status.success(), "detach va: {out:?}");
    }
    for parent in ["a", "a/b"] {
        let dir = node.topo.pin_dir().join(parent);
        assert_eq!(mode_of(&dir), 0o700, "mode of {}", dir.display());
    }
}

/// A pin dir (or a parent ztredir would create it in) that someone else
/// owns or may write to is refused, and nothing is pinned there.
#[test]
fn pin_dirs_others_can_change_are_refused() {
    use std::os::unix::fs::{chown, PermissionsExt};
    let node = Node::new("tcx");
    let base = node.topo.pin_dir();
    let set_mode = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod")
    };
    // (the directory to tamper with, the pin dir, how)
    let cases: Vec<(std::path::PathBuf, std::path::PathBuf, &str)> = vec![
        (base.join("p1"), base.join("p1"), "owned by uid 65534"),
        (
            base.join("p2"),
            base.join("p2"),
            "writable by group or others (mode 0777)",
        ),
        (
            base.join("p3"),
            base.join("p3"),
            "writable by group or others (mode 0775)",
        ),
        (
            base.join("q1"),
            base.join("q1/ztredir"),
            "owned by uid 65534",
        ),
        (
            base.join("q2"),
            base.join("q2/ztredir"),
            "writable by group or others (mode 0777)",
        ),
    ];
    for (dir, pins, why) in &cases {
        std::fs::create_dir(dir).expect("mkdir");
        if why.contains("65534") {
            chown(dir, Some(65534), Some(65534)).expect("chown");
        } else if why.contains("0777") {
            set_mode(dir, 0o777);
        } else {
            set_mode(dir, 0o775);
        }
        let shown = dir.to_str().expect("UTF-8 path");
        for args in [
            &["attach", "va"][..],
            &[
                "ztunnel",
                "set",
                "--iface",
                "vzt",
                "--netns",
                &node.topo.ns("zt"),
            ],
        ] {
            let out = ztredir_at(&node, pins, "umask 000;", args);
            let stderr = text(&out.stderr);
            let what = format!("ztredir --pin-dir {} {args:?}", pins.display());
            assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{what}: {stderr:?}");
            assert!(
                stderr.contains(shown) && stderr.contains(why),
                "{what}: {stderr}"
            );
            let entries: Vec<_> = std::fs::read_dir(dir).expect("read dir").collect();
            assert!(entries.is_empty(), "{what} made {entries:?}");
        }
        let out = ztredir_at(&node, pins, "", &["doctor"]);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "doctor: {stdout}");
        let line = stdout.lines().find(|l| l.contains("pin dir permissions"));
        assert!(
            line.is_some_and(|l| l.contains("FAIL")),
            "doctor with {}: {stdout}",
            dir.display()
        );
        let out = ztredir_at(&node, pins, "", &["-o", "json", "status"]);
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
        assert!(
            st["warnings"].to_string().contains(why),
            "status with {}: {st}",
            dir.display()
        );
    }
    // Fixed, it is accepted.
    let (dir, pins, _) = &cases[1];
    set_mode(dir, 0o700);
    let out = ztredir_at(&node, pins, "", &["attach", "va"]);
    assert!(out.status.success(), "attach after chmod 0700: {out:?}");
    let out = ztredir_at(&node, pins, "", &["detach", "va"]);
    assert!(out.status.success(), "detach: {out:?}");
}

/// After the pin dir's bpffs is unmounted the TCX links are gone and
/// traffic flows direct: read commands say so and exit 1. A pin dir that
/// does not exist yet on a mounted bpffs is still an empty node (exit 0).
#[test]
fn unmounted_bpffs_is_not_an_empty_node() {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    let node = Node::ready("tcx");
    let empty = write_node_file(&node, "empty.yaml", "version: 1\n");
    let reads: [&[&str]; 8] = [
        &["status"],
        &["-o", "json", "status"],
        &["workload", "list"],
        &["ztunnel", "show"],
        &["export"],
        &["stats"],
        &["conns"],
        &["apply", "--dry-run", "-f", &empty],
    ];
    for args in reads {
        node.ok(args);
    }
    let bpffs = node.topo.pin_dir();
    umount2(&bpffs, MntFlags::MNT_DETACH).expect("umount the test's bpffs");
    // The topology unmounts it again at the end; let that find a mount.
    struct Remount<'a>(&'a std::path::Path);
    impl Drop for Remount<'_> {
        fn drop(&mut self) {
            let _ = mount(
                Some("bpf"),
                self.0,
                Some("bpf"),
                MsFlags::empty(),
                None::<&str>,
            );
        }
    }
    let remount = Remount(&bpffs);
    for args in reads {
        let out = node.ztredir(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?} after umount: {out:?}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr:?}");
        assert!(
            stderr.contains("not on a mounted bpffs"),
            "{args:?} after umount: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?} after umount: {out:?}");
    }
    let doctor = node.ztredir(&["doctor"]);
    assert_eq!(
        doctor.status.code(),
        Some(1),
        "doctor after umount: {doctor:?}"
    );
    assert!(
        text(&doctor.stdout)
            .lines()
            .any(|l| l.contains("bpffs") && l.contains("FAIL")),
        "doctor after umount: {}",
        text(&doctor.stdout)
    );

    // A fresh bpffs where the pin dir would go: nothing attached, exit 0.
    drop(remount);
    assert!(!node.pins.exists());
    let out = node.ok(&["status"]);
    assert!(
        out.contains("nothing attached") || out.contains("none"),
        "{out}"
    );
    let st = node.status_json();
    assert!(
        st["interfaces"].as_array().is_some_and(|i| i.is_empty()),
        "{st}"
    );
    node.ok(&["stats"]);
    node.ok(&["export"]);
}

/// Starts `ztredir trace` in the background and waits until it holds the
/// trace flag.
fn start_trace(node: &Node) -> u32 {
    let pins = node.pins.to_str().expect("UTF-8 pin dir");
    let bin = env!("CARGO_BIN_EXE_ztredir");
    let pid = node
        .topo
        .spawn("node", &[bin, "--pin-dir", pins, "trace"], &[]);
    let t0 = std::time::Instant::now();
    loop {
        let t = node.status_json()["trace"].clone();
        if t["running"] == true && t["pids"].to_string().contains(&pid.to_string()) {
            assert_eq!(t["on"], true, "{t}");
            return pid;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "trace {pid} did not start: {t}; log: {}",
            node.topo.log(pid)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn sigkill(node: &Node, pid: u32) {
    use nix::sys::signal::{kill, Signal};
    kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).expect("SIGKILL the trace");
    // Reaps it (the SIGTERM that comes first finds it dead already).
    node.topo.kill(pid);
}

fn trace_check(node: &Node) -> String {
    let out = node.ztredir(&["doctor"]);
    let stdout = text(&out.stdout);
    let line = stdout.lines().find(|l| l.contains("trace flag"));
    let line = line.unwrap_or_else(|| panic!("no trace flag check in doctor: {stdout}"));
    if line.contains("FAIL") {
        assert_eq!(out.status.code(), Some(1), "doctor: {stdout}");
    }
    line.to_string()
}

fn assert_stale(node: &Node, pid: u32) {
    let st = node.status_json();
    assert_eq!(st["trace"]["on"], true, "flag after SIGKILL: {st}");
    assert_eq!(st["trace"]["running"], false, "{st}");
    let warnings = st["warnings"].to_string();
    assert!(
        warnings.contains("trace flag is on") && warnings.contains(&pid.to_string()),
        "status after SIGKILL of trace {pid}: {warnings}"
    );
    let check = trace_check(node);
    assert!(check.contains("FAIL"), "doctor after SIGKILL: {check}");
}

fn assert_off(node: &Node, when: &str) {
    let st = node.status_json();
    assert_eq!(st["trace"]["on"], false, "{when}: {st}");
    assert!(
        !st["warnings"].to_string().contains("trace"),
        "{when}: {st}"
    );
    let check = trace_check(node);
    assert!(
        check.contains("pass") && check.contains("off"),
        "{when}: {check}"
    );
}

/// A trace killed with SIGKILL cannot clear the flag: status and doctor say
/// so, and the next trace or change clears it. A trace that ends while
/// another runs leaves the flag to that one.
#[test]
fn killed_trace_is_noticed_and_cleared() {
    let node = Node::ready("tcx");
    assert_off(&node, "before any trace");

    let pid = start_trace(&node);
    assert!(trace_check(&node).contains("pass"), "doctor while tracing");
    sigkill(&node, pid);
    assert_stale(&node, pid);
    node.ok(&["trace", "--duration", "0.2"]);
    assert_off(&node, "after a later trace");

    let pid = start_trace(&node);
    sigkill(&node, pid);
    assert_stale(&node, pid);
    node.ok(&["attach", "va"]);
    assert_off(&node, "after a changing command");

    let first = start_trace(&node);
    node.ok(&["trace", "--duration", "0.2"]);
    let st = node.status_json();
    assert_eq!(
        st["trace"]["on"], true,
        "flag after a second trace ended: {st}"
    );
    assert_eq!(st["trace"]["running"], true, "{st}");
    node.topo.kill(first);
    assert_off(&node, "after the first trace ended too");
}

/// The programs on va's TCX ingress hook (only ztredir's in these tests).
fn va_ztredir_tcx(node: &Node) -> Vec<u32> {
    let va = crate::foreign::ifindex(&node.topo, "node", "va");
    let ns = node.topo.ns_path("node");
    crate::foreign::tcx_prog_ids(&ns, va, ztredir::dataplane::attach::Hook::Ingress)
}

/// A second pin directory must not attach a second set of programs where
/// another ztredir instance already captures: refused, naming the
/// interface and the other pin dir, unless --force.
fn second_instance_refused(mode: &'static str) {
    let node = Node::ready(mode);
    let other = node.topo.pin_dir().join("other");
    let zt = node.topo.ns("zt");
    let wl = write_node_file(
        &node,
        "other-wl.yaml",
        "version: 1\nworkloads:\n  - iface: va\n",
    );
    let ztf = write_node_file(
        &node,
        "other-zt.yaml",
        &format!("version: 1\nztunnel: {{iface: vzt, netns: {zt}}}\n"),
    );
    let before = status_text(&node);
    let tcx_before = va_ztredir_tcx(&node);
    let cases: [(&str, &[&str]); 6] = [
        ("va", &["attach", "va"]),
        ("va", &["apply", "--dry-run", "-f", &wl]),
        ("va", &["apply", "-f", &wl]),
        ("vzt", &["ztunnel", "set", "--iface", "vzt", "--netns", &zt]),
        ("vzt", &["apply", "--dry-run", "-f", &ztf]),
        ("vzt", &["apply", "-f", &ztf]),
    ];
    let first = node.pins.to_str().expect("UTF-8 pin dir");
    for other_mode in ["tcx", "tc"] {
        for (iface, args) in cases {
            let out = ztredir_mode(&node, &other, other_mode, "", args);
            let stderr = text(&out.stderr);
            let what = format!("{args:?} from a second pin dir ({mode} then {other_mode})");
            assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{what}: {stderr:?}");
            assert!(
                stderr.contains(&format!("interface {iface} ")) && stderr.contains(first),
                "{what}: {stderr}"
            );
            assert!(!other.exists(), "{what} created {}", other.display());
            assert_eq!(
                status_text(&node),
                before,
                "{what} changed the first instance"
            );
            assert_eq!(
                va_ztredir_tcx(&node),
                tcx_before,
                "{what}: va's TCX programs"
            );
        }
    }
    if mode == "tcx" {
        let out = ztredir_at(&node, &other, "", &["--force", "attach", "va"]);
        assert!(out.status.success(), "--force attach va: {out:?}");
        assert_eq!(va_ztredir_tcx(&node).len(), 2, "both instances on va");
        let out = ztredir_at(&node, &other, "", &["uninstall"]);
        assert!(out.status.success(), "uninstall the second: {out:?}");
        assert_eq!(va_ztredir_tcx(&node), tcx_before);
    }
    // Its own pin dir attaches again without a complaint.
    node.ok(&["attach", "va"]);
    node.set_ztunnel(&[]);
}

#[test]
fn second_instance_is_refused_tcx() {
    second_instance_refused("tcx");
}

#[test]
fn second_instance_is_refused_tc() {
    second_instance_refused("tc");
}
