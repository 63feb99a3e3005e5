// SPDX-License-Identifier: Apache-2.0
//! The command line's contract: bad input exits 2 with its reason on stderr
//! and changes nothing (not even the pin directory); every verb can be
//! repeated without effect; and what one invocation did is what the next one
//! finds, since the state lives in the pins.

use std::process::Output;

use serde_json::Value;
use ztredir::dataplane::bpf::{Prog, MAP_NAMES};
use ztredir::dataplane::pins::PinDir;

use crate::node::*;

/// A bad command line and the value its error message must name.
pub struct Bad {
    pub args: Vec<String>,
    pub value: &'static str,
}

pub fn bad(value: &'static str, args: &[&str]) -> Bad {
    Bad {
        args: args.iter().map(|a| a.to_string()).collect(),
        value,
    }
}

/// Runs ztredir like `Node::ztredir`, except that a command line with its
/// own --attach-mode does not get the fixture's: clap would reject the
/// repeated option before ever looking at its value.
pub fn run(node: &Node, args: &[String]) -> Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if !args.contains(&"--attach-mode") {
        return node.ztredir(&args);
    }
    let pins = node.pins.to_str().expect("pin dir is UTF-8");
    let mut full = vec![env!("CARGO_BIN_EXE_ztredir"), "--pin-dir", pins];
    full.extend(args);
    node.topo.sh("node", &full)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `status -o json` without its packet counters, which any stray packet
/// (an IPv6 router solicitation) moves: the pinned state, byte for byte.
pub fn status_text(node: &Node) -> String {
    let mut v: Value =
        serde_json::from_str(&node.ok(&["-o", "json", "status"])).expect("status -o json parses");
    v.as_object_mut()
        .expect("status is an object")
        .remove("counters");
    serde_json::to_string_pretty(&v).expect("serialize status")
}

/// Checks that `case` exits 2 naming the bad value in exactly one line on
/// stderr (whether ztredir or its argument parser rejects it), with nothing
/// on stdout.
pub fn assert_rejected(node: &Node, case: &Bad) {
    let what = format!("`ztredir {}` ({})", case.args.join(" "), node.mode);
    let out = run(node, &case.args);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{what}: exit status; stderr: {stderr}"
    );
    assert!(
        stderr.contains(case.value),
        "{what}: stderr does not name {:?}: {stderr:?}",
        case.value
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "{what}: stderr must be exactly one line: {stderr:?}"
    );
    assert!(
        out.stdout.is_empty(),
        "{what}: printed on stdout: {:?}",
        text(&out.stdout)
    );
}

/// `ztunnel set --iface IFACE --netns NETNS` followed by `extra`.
fn set_cmd<'a>(iface: &'a str, netns: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["ztunnel", "set", "--iface", iface, "--netns", netns];
    args.extend_from_slice(extra);
    args
}

/// Every bad input for a node whose ztunnel pod is `zt` and whose va is
/// attached with 10.244.0.10; dummy0 (no peer) and the veth pair vloop0,
/// vloop1 must exist in the node netns.
fn bad_inputs(node: &Node) -> Vec<Bad> {
    let zt = node.topo.ns("zt");
    let zt = zt.as_str();
    vec![
        // Unknown interfaces.
        bad("nosuch0", &["attach", "nosuch0"]),
        bad("nosuch0", &set_cmd("nosuch0", zt, &[])),
        bad("nosuch0", &["detach", "nosuch0"]),
        bad(
            "nosuch0",
            &["workload", "add", "10.244.0.99", "--iface", "nosuch0"],
        ),
        // Malformed addresses.
        bad("10.1.2", &["attach", "va", "--ip", "10.1.2"]),
        bad("fd00::zz", &["attach", "va", "--ip", "fd00::zz"]),
        bad(
            "300.1.1.1",
            &set_cmd("vzt", zt, &["--host-ip", "300.1.1.1"]),
        ),
        // Unknown netns.
        bad("nosuchns", &set_cmd("vzt", "nosuchns", &[])),
        // An address that belongs to another interface.
        bad("10.244.0.10", &["attach", "vb", "--ip", "10.244.0.10"]),
        // An interface without a peer.
        bad("dummy0", &set_cmd("dummy0", zt, &[])),
        // A veth whose peer is in the same netns, not ztunnel's.
        bad("vloop0", &set_cmd("vloop0", zt, &[])),
        // More conflicts with what is set up: ztunnel's interface or
        // address as a workload's, a workload address as a host IP, ports
        // given twice, an address that is not a workload's, an interface
        // that is not attached, a netns path that is no netns.
        bad("vzt", &["attach", "vzt"]),
        bad("10.244.0.2", &["attach", "va", "--ip", "10.244.0.2"]),
        bad(
            "10.244.0.10",
            &set_cmd("vzt", zt, &["--host-ip", "10.244.0.10"]),
        ),
        bad("15006", &set_cmd("vzt", zt, &["--outbound-port", "15006"])),
        bad("10.244.0.2", &["workload", "del", "10.244.0.2"]),
        bad(
            "vsrv",
            &["workload", "add", "10.244.0.99", "--iface", "vsrv"],
        ),
        bad("/tmp", &set_cmd("vzt", "/tmp", &[])),
        // What the argument parser rejects: a bad option value, a port out
        // of range, a CIDR with host bits, an option given twice, an
        // unknown subcommand or option, a missing argument.
        bad("bogus", &["--attach-mode", "bogus", "status"]),
        bad("bogus", &["-o", "bogus", "status"]),
        bad("70000", &set_cmd("vzt", zt, &["--outbound-port", "70000"])),
        bad("0", &["attach", "va", "--exclude-inbound-port", "0"]),
        bad(
            "10.0.0.1/8",
            &["attach", "va", "--exclude-cidr", "10.0.0.1/8"],
        ),
        bad("--iface", &set_cmd("vzt", zt, &["--iface", "vzt"])),
        bad("frobnicate", &["frobnicate"]),
        bad("--frob", &["status", "--frob"]),
        bad("--iface", &["workload", "add", "10.244.0.99"]),
    ]
}

/// Adds an interface without a peer to the node netns: a dummy, or a bridge
/// where the kernel has no dummy driver.
fn add_peerless_iface(node: &Node, name: &str) {
    let mut errors = String::new();
    for kind in ["dummy", "bridge"] {
        let out = node
            .topo
            .sh("node", &["ip", "link", "add", name, "type", kind]);
        if out.status.success() {
            return;
        }
        errors += &format!("{kind}: {}", text(&out.stderr));
    }
    panic!("cannot add {name} in the node netns: {errors}");
}

fn bad_input(mode: &'static str) {
    let node = Node::ready(mode);
    add_peerless_iface(&node, "dummy0");
    node.topo.sh_ok(
        "node",
        &[
            "ip", "link", "add", "vloop0", "type", "veth", "peer", "name", "vloop1",
        ],
    );
    let before = status_text(&node);
    for case in bad_inputs(&node) {
        assert_rejected(&node, &case);
        assert_eq!(
            status_text(&node),
            before,
            "`ztredir {}` ({mode}) changed `status -o json`",
            case.args.join(" ")
        );
    }
}

#[test]
fn bad_input_exits_2_and_changes_nothing() {
    bad_input("tcx");
}

#[test]
fn bad_input_exits_2_and_changes_nothing_tc() {
    bad_input("tc");
}

#[test]
fn bad_input_on_fresh_node_creates_nothing() {
    let node = Node::new("tcx");
    let cases = [
        bad("nosuch0", &["attach", "nosuch0"]),
        bad("nosuchns", &set_cmd("vzt", "nosuchns", &[])),
    ];
    for case in &cases {
        assert_rejected(&node, case);
        assert!(
            !node.pins.exists(),
            "`ztredir {}` created the pin dir {}",
            case.args.join(" "),
            node.pins.display()
        );
    }
}

/// The host IPs `Node::set_ztunnel` passes. That helper does not return
/// ztredir's output, so the repeated `ztunnel set` is spelled out here.
const FIXTURE_HOST_IPS: [&str; 4] = ["--host-ip", "10.99.0.1", "--host-ip", "fd00:99::1"];

/// Runs `args`, which must succeed and print `says`, and leave `status -o
/// json` as it was.
fn assert_noop(node: &Node, args: &[&str], says: &str) {
    let what = format!("`ztredir {}` ({})", args.join(" "), node.mode);
    let before = status_text(node);
    let out = node.ok(args);
    assert!(out.contains(says), "{what}: expected {says:?} in {out:?}");
    assert_eq!(
        status_text(node),
        before,
        "{what}: changed `status -o json`"
    );
}

fn parse_json(what: &str, s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {s}"))
}

fn workload_list(node: &Node) -> Value {
    parse_json(
        "workload list -o json",
        &node.ok(&["workload", "list", "-o", "json"]),
    )
}

/// The interface called `name` in `status -o json`.
fn iface<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["interfaces"]
        .as_array()
        .expect("status interfaces")
        .iter()
        .find(|i| i["name"] == name)
}

/// What the earlier invocations left behind is there: the pins, and every
/// hook of every interface runs a program.
fn assert_persisted(node: &Node) {
    let mode = node.mode;
    let pins = PinDir::new(&node.pins);
    let mut want: Vec<_> = MAP_NAMES.iter().map(|m| pins.map(m)).collect();
    want.extend(Prog::ALL.iter().map(|p| pins.prog(p.name())));
    want.push(pins.link(ztredir::node::ztunnel::LOOKUP_LINK));

    let status = node.status_json();
    let ifaces = status["interfaces"].as_array().expect("status interfaces");
    let mut names: Vec<&str> = ifaces.iter().filter_map(|i| i["name"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["eth0", "va", "vb", "vzt"],
        "interfaces in status ({mode})"
    );
    for i in ifaces {
        let name = &i["name"];
        assert_eq!(i["mode"], mode, "{name}: mode in status");
        assert_eq!(i["present"], true, "{name}: present in status");
        let prefix = if i["role"] == "ztunnel-pod" {
            "zt"
        } else {
            "if"
        };
        for h in i["hooks"].as_array().expect("hooks") {
            assert!(
                h["prog_id"].as_u64().is_some(),
                "{name} {}: no prog_id in status ({mode}): {h}",
                h["hook"]
            );
            if mode == "tcx" {
                let hook = h["hook"].as_str().expect("hook name");
                want.push(pins.link(&format!("{prefix}{}-{hook}", i["ifindex"])));
            }
        }
    }
    for p in &want {
        assert!(p.exists(), "pin {} is missing ({mode})", p.display());
    }
    assert!(
        status["warnings"].as_array().is_some_and(|w| w.is_empty()),
        "warnings in status ({mode}): {}",
        status["warnings"]
    );
    if mode == "tc" {
        for dir in ["ingress", "egress"] {
            let f = node
                .topo
                .sh_ok("node", &["tc", "filter", "show", "dev", "va", dir]);
            assert!(
                f.contains("handle 0x7a72"),
                "no ztredir tc filter on va {dir}: {f}"
            );
        }
    }
}

/// `-j`, `-o json` and `-o yaml` print the same status.
fn assert_output_formats(node: &Node) {
    let json = parse_json("status -o json", &status_text(node));
    let mut j = parse_json("-j status", &node.ok(&["-j", "status"]));
    // Counters move with any stray packet; compare the rest.
    j.as_object_mut()
        .expect("status is an object")
        .remove("counters");
    assert_eq!(j, json, "`-j status` differs from `-o json status`");
    let yaml = node.ok(&["-o", "yaml", "status"]);
    assert!(
        !yaml.trim().is_empty() && yaml.contains("interfaces:"),
        "status -o yaml: {yaml:?}"
    );
    let again = parse_json("-j attach va", &node.ok(&["-j", "attach", "va"]));
    assert_eq!(again["changed"], false, "-j attach va (again): {again}");
}

fn workload_round_trip(node: &Node) {
    let ip = "10.244.0.99";
    let before = workload_list(node);
    assert!(
        node.ok(&["workload", "add", ip, "--iface", "vb"])
            .contains(&format!("added {ip} to vb")),
        "workload add {ip}"
    );
    let with = workload_list(node);
    let row = with
        .as_array()
        .expect("workload list is an array")
        .iter()
        .find(|r| r["ip"] == ip);
    let row = row.unwrap_or_else(|| panic!("{ip} not in workload list after add: {with}"));
    assert_eq!(row["iface"], "vb", "{ip} in workload list: {row}");
    assert_noop(node, &["workload", "add", ip, "--iface", "vb"], "no change");
    assert!(
        node.ok(&["workload", "del", ip])
            .contains(&format!("removed {ip}")),
        "workload del {ip}"
    );
    assert_eq!(
        workload_list(node),
        before,
        "workload list after add and del of {ip}"
    );
    assert_noop(node, &["workload", "del", ip], "nothing to do");
}

fn idempotent(mode: &'static str) {
    let node = Node::ready(mode);
    // Each call above was its own process: what status sees now was read
    // back from the pins.
    assert_persisted(&node);
    let va = iface(&node.status_json(), "va").cloned();
    assert!(va.is_some(), "va not in status after attach ({mode})");

    assert_noop(&node, &["attach", "va"], "already attached, no change");
    let zt = node.topo.ns("zt");
    assert_noop(&node, &set_cmd("vzt", &zt, &FIXTURE_HOST_IPS), "no change");
    assert_eq!(
        iface(&node.status_json(), "va").cloned(),
        va,
        "va in status after repeated attach and ztunnel set ({mode})"
    );
    workload_round_trip(&node);
    assert_output_formats(&node);

    assert!(
        node.ok(&["detach", "va"]).contains("detached va"),
        "first detach va ({mode})"
    );
    assert!(
        iface(&node.status_json(), "va").is_none(),
        "va still in status after detach ({mode})"
    );
    assert_noop(
        &node,
        &["detach", "va"],
        "va is not attached, nothing to do",
    );

    assert!(
        node.ok(&["ztunnel", "clear"]).contains("ztunnel cleared"),
        "first ztunnel clear ({mode})"
    );
    assert!(
        node.status_json()["ztunnel"].is_null(),
        "ztunnel still in status after clear ({mode})"
    );
    assert_noop(&node, &["ztunnel", "clear"], "nothing to do");
}

#[test]
fn verbs_are_idempotent_and_state_persists() {
    idempotent("tcx");
}

#[test]
fn verbs_are_idempotent_and_state_persists_tc() {
    idempotent("tc");
}

/// Bootstrap scripts run ztredir concurrently: changes serialize on the pin
/// directory's lock, and none is lost.
#[test]
fn concurrent_invocations_keep_every_change() {
    let node = Node::new("tcx");
    node.set_ztunnel(&[]);
    std::thread::scope(|s| {
        for iface in ["va", "vb", "vsrv"] {
            let node = &node;
            s.spawn(move || {
                for _ in 0..3 {
                    node.ok(&["attach", iface]);
                    node.ok(&["detach", iface]);
                }
                node.ok(&["attach", iface]);
            });
        }
    });
    let st = node.status_json();
    let mut names: Vec<&str> = st["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["role"] == "workload")
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["va", "vb", "vsrv"], "{st}");
    assert_eq!(st["workloads"].as_array().unwrap().len(), 5, "{st}");
    assert!(st["warnings"].as_array().unwrap().is_empty(), "{st}");
}

/// The completion scripts load in their shells and complete subcommands.
#[test]
fn completions_complete_subcommands() {
    let bin = env!("CARGO_BIN_EXE_ztredir");
    for shell in ["bash", "zsh", "fish"] {
        let out = std::process::Command::new(bin)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        for sub in ["apply", "export", "doctor", "attach", "conns"] {
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    // bash: source it and ask for completions of "ztredir ap" and "ztredir apply --dr".
    let script = std::process::Command::new(bin)
        .args(["completions", "bash"])
        .output()
        .unwrap()
        .stdout;
    let path = std::env::temp_dir().join(format!("ztredir-completion-{}.bash", std::process::id()));
    std::fs::write(&path, script).unwrap();
    let probe = format!(
        "source {}; COMP_WORDS=(ztredir ap); COMP_CWORD=1; _ztredir ztredir ap ztredir; echo \"${{COMPREPLY[@]}}\"; \
         COMP_WORDS=(ztredir apply --dr); COMP_CWORD=2; _ztredir ztredir --dr apply; echo \"${{COMPREPLY[@]}}\"",
        path.display()
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &probe])
        .output()
        .unwrap();
    std::fs::remove_file(&path).ok();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(lines[0].split_whitespace().any(|w| w == "apply"), "{text}");
    assert!(
        lines[1].split_whitespace().any(|w| w == "--dry-run"),
        "{text}"
    );
}

/// `uninstall` takes everything away: programs off the interfaces (traffic
/// goes direct), policy routing and sysctls back as they were in ztunnel's
/// netns, no pin directory. A second run has nothing to do.
fn uninstall(mode: &'static str) {
    let fwd = |node: &Node| {
        node.topo
            .sh_ok("zt", &["sysctl", "-n", "net.ipv4.ip_forward"])
    };
    let rules = |node: &Node| node.topo.sh_ok("zt", &["ip", "rule", "show"]);
    let plain = Node::new(mode);
    let (fwd0, rules0) = (fwd(&plain), rules(&plain));
    drop(plain);
    let node = Node::ready(mode);
    assert_ne!(rules(&node), rules0, "ztunnel set added its rule");
    let out = node.ok(&["uninstall"]);
    assert!(
        out.contains("detached va") && out.contains("removed"),
        "{out}"
    );
    assert!(!node.pins.exists(), "pin dir still there");
    assert_eq!(fwd(&node), fwd0);
    assert_eq!(rules(&node), rules0);
    let filters = node
        .topo
        .sh_ok("node", &["tc", "filter", "show", "dev", "va", "ingress"]);
    assert!(!filters.contains("ztr_"), "{filters}");
    let remote = crate::redirect::server(&node, "remote", "10.99.0.2:8080");
    crate::redirect::direct(&node, "a", None, &remote);
    assert!(node.ok(&["uninstall"]).contains("nothing to do"));
}

#[test]
fn uninstall_removes_everything() {
    uninstall("tcx");
    uninstall("tc");
}
