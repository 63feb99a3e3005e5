// SPDX-License-Identifier: Apache-2.0
//! The node file: apply (idempotent, dry run, prune, validation, rollback),
//! export, exclusions with real traffic, doctor, and the examples.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::node::*;
use crate::redirect::{direct, server, through_proxy};
use crate::testbed::*;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

/// examples/node.yaml with the topology's ztunnel netns.
fn example_for(node: &Node) -> String {
    let text = std::fs::read_to_string(example("node.yaml")).expect("examples/node.yaml");
    assert!(text.contains("netns: ztunnel\n"));
    text.replace(
        "netns: ztunnel\n",
        &format!("netns: {}\n", node.topo.ns("zt")),
    )
}

fn write(node: &Node, name: &str, text: &str) -> String {
    let dir = node.topo.pin_dir().parent().unwrap().to_path_buf();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

/// status -o json without what legitimately moves: counters, ids, the pin dir.
fn normalized(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| {
                    !["counters", "prog_id", "link_id", "pin_dir"].contains(&k.as_str())
                })
                .map(|(k, v)| (k.clone(), normalized(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalized).collect()),
        other => other.clone(),
    }
}

fn status(node: &Node) -> Value {
    normalized(&node.status_json())
}

fn changes(node: &Node, args: &[&str]) -> Vec<String> {
    let mut full = vec!["-o", "json", "apply"];
    full.extend_from_slice(args);
    let v: Value = serde_json::from_str(&node.ok(&full)).expect("apply -o json");
    v["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn example_file_captures_and_applies_once() {
    let node = Node::new("auto");
    let file = write(&node, "node.yaml", &example_for(&node));
    let out = node.ok(&["apply", "-f", &file]);
    assert!(
        out.contains("+ attach va") && out.contains("+ ztunnel"),
        "{out}"
    );

    // The core traffic results.
    let remote4 = server(&node, "remote", "10.99.0.2:8080");
    let remote6 = server(&node, "remote", "[fd00:99::2]:8080");
    let b4 = server(&node, "b", "10.244.0.11:8080");
    let b6 = server(&node, "b", "[fd00:244::11]:8080");
    through_proxy(&node, "a", &remote4, 15001, zt_v4());
    through_proxy(&node, "b", &remote6, 15001, zt_v6());
    through_proxy(&node, "a", &b4, 15001, zt_v4());
    through_proxy(&node, "remote", &b4, 15006, REMOTE_V4.into());
    through_proxy(&node, "remote", &b6, 15006, REMOTE_V6.into());
    direct(&node, "node", Some(HOST_V4.into()), &b4);
    direct(&node, "node", Some(HOST_V6.into()), &b6);
    // The example's exclusions on vb: outbound 5432 and inbound 9090 go direct.
    let db4 = server(&node, "remote", "10.99.0.2:5432");
    let db6 = server(&node, "remote", "[fd00:99::2]:5432");
    let metrics6 = server(&node, "b", "[fd00:244::11]:9090");
    direct(&node, "b", None, &db4);
    direct(&node, "b", None, &db6);
    direct(&node, "remote", None, &metrics6);
    through_proxy(&node, "a", &db4, 15001, zt_v4());

    // Again: nothing to do, and the dataplane is untouched.
    let before = status(&node);
    let again = node.ztredir(&["apply", "-f", &file]);
    assert!(again.status.success());
    assert_eq!(String::from_utf8_lossy(&again.stdout), "no changes\n");
    assert_eq!(status(&node), before);
    // The same from standard input.
    let pins = node.pins.to_str().unwrap();
    let bin = env!("CARGO_BIN_EXE_ztredir");
    let mut child = node
        .topo
        .nsenter("node", &[bin, "--pin-dir", pins, "apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(std::fs::read(&file).unwrap().as_slice())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "no changes\n");
    let st = node.status_json();
    let vb = st["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "vb")
        .expect("vb in status");
    assert_eq!(vb["exclude"]["outbound-ports"], serde_json::json!([5432]));
    assert!(node
        .ok(&["status"])
        .contains("vb: out-ports 5432; in-ports 9090"));
}

#[test]
fn dry_run_then_prune_and_exclusions_both_families() {
    let node = Node::new("tcx");
    let text = example_for(&node);
    node.ok(&["apply", "-f", &write(&node, "node.yaml", &text)]);
    // Remove workload a; vb gains an outbound port, an inbound port and a CIDR.
    let start = text.find("  - iface: va\n").unwrap();
    let end = text.find("  - iface: vb\n").unwrap();
    let mut edited = format!("{}{}", &text[..start], &text[end..]);
    edited = edited
        .replace("outbound-ports: [5432]", "outbound-ports: [5432, 8080]")
        .replace("inbound-ports: [9090]", "inbound-ports: [9090, 9091]")
        .replace(
            "outbound-cidrs: [192.0.2.0/24, \"2001:db8::/32\"]",
            "outbound-cidrs: [192.0.2.0/24, \"2001:db8::/32\", \"fd00:244::20/128\"]",
        );
    let file = write(&node, "edited.yaml", &edited);

    let before = status(&node);
    let want = vec![
        "- detach va (10.244.0.10)".to_string(),
        "~ vb: +exclude outbound port 8080, +exclude inbound port 9091, +exclude outbound cidr fd00:244::20/128".to_string(),
    ];
    assert_eq!(changes(&node, &["--dry-run", "--prune", "-f", &file]), want);
    assert_eq!(status(&node), before, "--dry-run changed something");
    // Without --prune, va stays.
    assert_eq!(
        changes(&node, &["--dry-run", "-f", &file]),
        want[1..].to_vec()
    );
    assert_eq!(changes(&node, &["--prune", "-f", &file]), want);
    assert_eq!(
        changes(&node, &["--prune", "-f", &file]),
        Vec::<String>::new()
    );

    let r80_4 = server(&node, "remote", "10.99.0.2:8080");
    let r80_6 = server(&node, "remote", "[fd00:99::2]:8080");
    let r81_4 = server(&node, "remote", "10.99.0.2:8081");
    let r81_6 = server(&node, "remote", "[fd00:99::2]:8081");
    let in91_4 = server(&node, "b", "10.244.0.11:9091");
    let in91_6 = server(&node, "b", "[fd00:244::11]:9091");
    let in81_6 = server(&node, "b", "[fd00:244::11]:8081");
    let srv6 = server(&node, "srv", "[fd00:244::20]:8081");
    let srv4 = server(&node, "srv", "10.244.0.20:8081");
    // Excluded: direct, and the proxy logs nothing.
    direct(&node, "b", None, &r80_4);
    direct(&node, "b", None, &r80_6);
    direct(&node, "remote", None, &in91_4);
    direct(&node, "remote", None, &in91_6);
    direct(&node, "b", None, &srv6);
    // Everything else is still captured.
    through_proxy(&node, "b", &r81_4, 15001, zt_v4());
    through_proxy(&node, "b", &r81_6, 15001, zt_v6());
    through_proxy(&node, "remote", &in81_6, 15006, REMOTE_V6.into());
    through_proxy(&node, "b", &srv4, 15001, zt_v4());
    // a was pruned: direct.
    direct(&node, "a", None, &r81_4);
    let c = node.ok(&["stats", "--iface", "vb"]);
    assert!(c.contains("bypass-excluded"), "{c}");
}

/// Runs `ztredir apply` with an environment, in the node netns.
fn apply_env(node: &Node, file: &str, env: &[(&str, &str)]) -> std::process::Child {
    let pins = node.pins.to_str().unwrap();
    let bin = env!("CARGO_BIN_EXE_ztredir");
    let mut cmd: Command = node
        .topo
        .nsenter("node", &[bin, "--pin-dir", pins, "apply", "-f", file]);
    cmd.envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd.spawn().expect("start ztredir apply")
}

fn finish(child: std::process::Child) -> Output {
    child.wait_with_output().expect("wait for ztredir apply")
}

#[test]
fn failure_part_way_rolls_back_everything() {
    let node = Node::new("auto");
    let text = example_for(&node);
    node.ok(&["apply", "-f", &write(&node, "node.yaml", &text)]);
    // A workload veth the file will add, and changes to everything else.
    node.topo.sh_ok(
        "node",
        &[
            "ip", "link", "add", "vc", "type", "veth", "peer", "name", "vcp",
        ],
    );
    node.topo.sh_ok("node", &["ip", "link", "set", "vc", "up"]);
    let edited = text
        .replace("capture-dns: false", "capture-dns: true")
        .replace("conntrack-size: 65536", "conntrack-size: 512")
        .replace("outbound-ports: [5432]", "outbound-ports: [5433]")
        .replace("ips: [10.244.0.10]", "ips: [10.244.0.10, 10.244.0.12]")
        + "  - iface: vc\n    ips: [10.244.0.30]\n";
    let file = write(&node, "edited.yaml", &edited);
    let before = status(&node);
    let export_before = node.ok(&["export"]);

    // Each step failing in turn leaves the node exactly as it was.
    // Five changes in four steps: ztunnel (two settings), va, vb, vc.
    let planned = changes(&node, &["--dry-run", "-f", &file]);
    assert_eq!(planned.len(), 5, "{planned:?}");
    for n in 1..=4 {
        let fp = format!("apply-step-{n}");
        let out = finish(apply_env(&node, &file, &[("ZTREDIR_FAILPOINT", &fp)]));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "step {n}: {err}");
        assert!(err.contains("rolled back, the node is as it was"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert_eq!(status(&node), before, "after a failure at step {n}");
        assert_eq!(node.ok(&["export"]), export_before);
    }

    // The interface disappears between validation and change.
    let go = node.topo.pin_dir().parent().unwrap().join("go");
    let child = apply_env(
        &node,
        &file,
        &[(
            "ZTREDIR_FAILPOINT",
            &format!("wait:apply-validated:{}", go.display()),
        )],
    );
    std::thread::sleep(Duration::from_millis(300));
    node.topo.sh_ok("node", &["ip", "link", "del", "vc"]);
    std::fs::write(&go, "").unwrap();
    let out = finish(child);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("vc") && err.contains("rolled back"), "{err}");
    assert_eq!(status(&node), before);
    // Traffic is as before: a captured, vb's 5432 still excluded.
    let db4 = server(&node, "remote", "10.99.0.2:5432");
    direct(&node, "b", None, &db4);
    through_proxy(&node, "a", &db4, 15001, zt_v4());
}

#[test]
fn invalid_files_exit_2_with_place_and_change_nothing() {
    let node = Node::new("auto");
    let text = example_for(&node);
    node.ok(&["apply", "-f", &write(&node, "node.yaml", &text)]);
    let before = status(&node);
    let cases: Vec<(String, &str)> = vec![
        (
            text.replace("version: 1", "version: 1\nextra: true"),
            "unknown field `extra`",
        ),
        (
            text.replace(
                "    ips: [10.244.0.10]",
                "    ips: [10.244.0.10]\n    ipz: []",
            ),
            "unknown field `ipz`",
        ),
        (
            text.replace("10.244.0.10]", "10.244.0.300]"),
            "invalid IP address",
        ),
        (text.replace("iface: vb", "iface: va"), "named twice"),
        (
            text.replace("[10.244.0.11,", "[10.244.0.10,"),
            "given twice",
        ),
        (
            text.replace("conntrack-size: 65536", "conntrack-size: lots"),
            "invalid type",
        ),
        (
            text.replace("outbound: 15001", "outbound: 0"),
            "invalid port 0",
        ),
        (
            text.replace("inbound-ports: [9090]", "inbound-ports: [90000]"),
            "invalid port 90000",
        ),
        (text.replace("192.0.2.0/24", "192.0.2.1/24"), "host bits"),
        (
            text.replace("attach-mode: auto", "attach-mode: fastest"),
            "unknown variant",
        ),
        (
            text.replace("version: 1", "version: 7"),
            "version 7 is not supported",
        ),
        (
            text.replace("capture-dns: false", "capture-dns: maybe"),
            "invalid type",
        ),
        (text.replace("  iface: vzt\n", ""), "missing field `iface`"),
        (
            text.replace("workloads:\n", "workloads:\n\t- iface: x\n"),
            "cannot start any token",
        ),
    ];
    assert!(cases.len() >= 10);
    for (i, (bad, why)) in cases.iter().enumerate() {
        assert_ne!(bad, &text, "case {i} did not change the file");
        let file = write(&node, &format!("bad{i}.yaml"), bad);
        let out = node.ztredir(&["apply", "-f", &file]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "case {i} ({why}): {err}");
        assert_eq!(err.trim().lines().count(), 1, "case {i}: {err}");
        // Error: FILE:LINE:COL: reason
        let rest = err
            .trim()
            .strip_prefix(&format!("Error: {file}:"))
            .unwrap_or_else(|| panic!("case {i}: no file name: {err}"));
        let mut parts = rest.splitn(3, ':');
        let line: usize = parts
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("case {i}: {err}"));
        let col: usize = parts
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("case {i}: {err}"));
        assert!(line >= 1 && col >= 1);
        assert!(parts.next().unwrap().contains(why), "case {i}: {err}");
        // The line named is where the fault is.
        let at = bad.lines().nth(line - 1).unwrap_or_default();
        if !why.starts_with("missing") && !why.starts_with("version") {
            assert!(
                !text.lines().any(|l| l == at) || *why == "named twice" || *why == "given twice",
                "case {i}: line {line} ({at:?}) is not the edited one: {err}"
            );
        }
    }
    // System errors: exit 2, one line, nothing changed.
    for (bad, why) in [
        (
            text.replace("iface: vb", "iface: vnothere"),
            "vnothere not found",
        ),
        (
            text.replace(&format!("netns: {}", node.topo.ns("zt")), "netns: nosuchns"),
            "netns nosuchns not found",
        ),
    ] {
        let file = write(&node, "sys.yaml", &bad);
        let out = node.ztredir(&["apply", "-f", &file]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(why), "{err}");
    }
    assert_eq!(status(&node), before);
}

#[test]
fn export_then_apply_on_a_fresh_pin_dir_reproduces_status() {
    let mut node = Node::ready("tc");
    node.set_ztunnel(&["--capture-dns", "--conntrack-size", "1000"]);
    node.ok(&[
        "attach",
        "vb",
        "--exclude-outbound-port",
        "5432",
        "--exclude-cidr",
        "fd00:99::/64",
    ]);
    let before = status(&node);
    let exported = node.ok(&["export"]);
    assert!(exported.contains("attach-mode: tc"), "{exported}");
    let file = write(&node, "exported.yaml", &exported);
    // Tear everything down, then rebuild from the file in a new pin dir.
    node.ok(&["detach", "--all"]);
    node.ok(&["ztunnel", "clear"]);
    node.pins = node.topo.pin_dir().join("fresh");
    node.mode = "auto";
    assert!(node.ok(&["apply", "-f", &file]).contains("changed:"));
    assert_eq!(status(&node), before);
    // JSON export is the same document.
    let j: Value = serde_json::from_str(&node.ok(&["-o", "json", "export"])).unwrap();
    assert_eq!(j["ztunnel"]["conntrack-size"], 1000);
    assert_eq!(j["ztunnel"]["capture-dns"], true);
    let remote6 = server(&node, "remote", "[fd00:99::2]:8080");
    direct(&node, "b", None, &remote6);
}

fn doctor(node: &Node) -> (bool, Vec<Value>) {
    let out = node.ztredir(&["-o", "json", "doctor"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("doctor -o json");
    (
        out.status.success(),
        v["checks"].as_array().unwrap().clone(),
    )
}

fn check<'a>(checks: &'a [Value], prefix: &str) -> &'a Value {
    checks
        .iter()
        .find(|c| c["name"].as_str().unwrap().starts_with(prefix))
        .unwrap_or_else(|| panic!("no check {prefix}: {checks:?}"))
}

#[test]
fn doctor_names_each_fault_and_its_fix() {
    let mut node = Node::ready("auto");
    let (ok, checks) = doctor(&node);
    assert!(ok, "{checks:#?}");
    assert!(checks.iter().all(|c| c["result"] != "fail"));
    assert_eq!(
        check(&checks, "ztunnel listens on tcp/15001")["result"],
        "pass"
    );
    assert_eq!(check(&checks, "workload va attached")["result"], "pass");

    // Break it three ways.
    let zt = node.topo.ns("zt");
    node.topo.sh_ok(
        "zt",
        &[
            "ip",
            "rule",
            "del",
            "fwmark",
            "0x400/0xfff",
            "lookup",
            "100",
        ],
    );
    node.topo
        .sh_ok("node", &["sysctl", "-qw", "net.ipv4.conf.vzt.rp_filter=1"]);
    node.stop_proxy();
    let (ok, checks) = doctor(&node);
    assert!(!ok, "doctor passed a broken node");
    let pr = check(&checks, &format!("policy routing in /run/netns/{zt}"));
    assert_eq!(pr["result"], "fail", "{pr}");
    assert!(pr["fix"]
        .as_str()
        .unwrap()
        .contains("ip rule add fwmark 0x400/0xfff lookup 100"));
    let rp = check(&checks, "rp_filter on vzt");
    assert_eq!(rp["result"], "fail", "{rp}");
    assert!(rp["fix"]
        .as_str()
        .unwrap()
        .contains("net.ipv4.conf.vzt.rp_filter=2"));
    for port in [15001, 15006, 15008] {
        let l = check(&checks, &format!("ztunnel listens on tcp/{port}"));
        assert_eq!(l["result"], "fail", "{l}");
        assert!(l["fix"].as_str().unwrap().contains("start ztunnel"));
    }
    assert_eq!(check(&checks, "forwarding off")["result"], "pass");
    let table = node.ztredir(&["doctor"]);
    assert_eq!(table.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&table.stdout).contains("fixes:"));

    // Repaired: passes again.
    node.start_proxy(&[]);
    node.set_ztunnel(&[]);
    let (ok, checks) = doctor(&node);
    assert!(ok, "{checks:#?}");
}

/// The bootstrap script applies the example file on a node and runs doctor.
#[test]
fn bootstrap_example_applies_the_node_file() {
    let node = Node::new("auto");
    let file = write(&node, "node.yaml", &example_for(&node));
    let script = example("bootstrap.sh");
    let pins = node.pins.to_str().unwrap().to_string();
    let out = node.topo.sh(
        "node",
        &[
            "env",
            &format!("ZTREDIR={}", env!("CARGO_BIN_EXE_ztredir")),
            &format!("ZTREDIR_PIN_DIR={pins}"),
            &format!("NODE_FILE={file}"),
            &format!("ZTUNNEL_NETNS={}", node.topo.ns("zt")),
            "WAIT_SECONDS=5",
            script.to_str().unwrap(),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("+ attach va"), "{text}");
    let remote4 = server(&node, "remote", "10.99.0.2:8080");
    through_proxy(&node, "a", &remote4, 15001, zt_v4());
}

/// The DaemonSet's ConfigMap carries a node file ztredir accepts, and the
/// pod has what ztredir needs; the systemd unit applies the file at boot.
#[test]
fn kubernetes_and_systemd_examples_are_consistent() {
    let text = std::fs::read_to_string(example("daemonset.yaml")).unwrap();
    let mut kinds = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).expect("manifest parses");
        let kind = v["kind"].as_str().unwrap_or_default().to_string();
        if kind == "ConfigMap" {
            let file = v["data"]["node.yaml"].as_str().expect("data.node.yaml");
            ztredir::node::nodefile::parse(file)
                .unwrap_or_else(|e| panic!("ConfigMap node.yaml: {e}"));
        }
        if kind == "DaemonSet" {
            let spec = &v["spec"]["template"]["spec"];
            assert_eq!(spec["hostNetwork"], true);
            let c = &spec["containers"][0];
            assert_eq!(c["securityContext"]["privileged"], true);
            let cmd = serde_json::to_string(&c["command"]).unwrap()
                + &serde_json::to_string(&c["args"]).unwrap();
            assert!(cmd.contains("apply") && cmd.contains("-f"), "{cmd}");
            let paths: Vec<&str> = spec["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|v| v["hostPath"]["path"].as_str())
                .collect();
            for p in ["/sys/fs/bpf", "/run/netns"] {
                assert!(paths.contains(&p), "{p} not mounted: {paths:?}");
            }
        }
        kinds.push(kind);
    }
    assert!(kinds.contains(&"ConfigMap".to_string()) && kinds.contains(&"DaemonSet".to_string()));

    let unit = std::fs::read_to_string(example("ztredir-apply.service")).unwrap();
    let exec: Vec<&str> = unit
        .lines()
        .filter(|l| l.starts_with("ExecStart="))
        .collect();
    assert!(
        exec.iter()
            .any(|l| l.contains("ztredir apply -f /etc/ztredir/node.yaml")),
        "{exec:?}"
    );
    assert!(unit.contains("[Install]") && unit.contains("Type=oneshot"));
    // systemd's own checker, where the machine has it.
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(example("ztredir-apply.service"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        // It cannot find /usr/sbin/ztredir here; anything else is a fault.
        let faults: Vec<&str> = err
            .lines()
            .filter(|l| !l.contains("ztredir") || l.contains("Unknown"))
            .collect();
        assert!(faults.is_empty(), "{err}");
    }
}

/// `ztunnel set` failing after it changed things (here: just before it
/// writes the config) puts back everything it did: no programs, no policy
/// routing, the sysctls as they were.
#[test]
fn ztunnel_set_failing_part_way_leaves_nothing() {
    let node = Node::new("auto");
    let fwd = node
        .topo
        .sh_ok("zt", &["sysctl", "-n", "net.ipv4.ip_forward"]);
    let rp = node
        .topo
        .sh_ok("node", &["sysctl", "-n", "net.ipv4.conf.vzt.rp_filter"]);
    let rules = node.topo.sh_ok("zt", &["ip", "rule", "show"]);
    let pins = node.pins.to_str().unwrap().to_string();
    let ns = node.topo.ns("zt");
    let bin = env!("CARGO_BIN_EXE_ztredir");
    let out = node
        .topo
        .nsenter(
            "node",
            &[
                bin,
                "--pin-dir",
                &pins,
                "ztunnel",
                "set",
                "--iface",
                "vzt",
                "--netns",
                &ns,
                "--host-ip",
                "10.99.0.1",
            ],
        )
        .env("ZTREDIR_FAILPOINT", "ztunnel-set-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        node.topo
            .sh_ok("zt", &["sysctl", "-n", "net.ipv4.ip_forward"]),
        fwd
    );
    assert_eq!(
        node.topo
            .sh_ok("node", &["sysctl", "-n", "net.ipv4.conf.vzt.rp_filter"]),
        rp
    );
    assert_eq!(node.topo.sh_ok("zt", &["ip", "rule", "show"]), rules);
    let st = node.status_json();
    assert!(st["ztunnel"].is_null(), "{st}");
    assert_eq!(st["interfaces"], serde_json::json!([]), "{st}");
    assert_eq!(node.ok(&["export"]).matches("iface").count(), 0);
    // And it then works.
    node.set_ztunnel(&[]);
    node.ok(&["attach", "va"]);
    let remote4 = server(&node, "remote", "10.99.0.2:8080");
    through_proxy(&node, "a", &remote4, 15001, zt_v4());
}

/// Addresses that swap between workloads, an interface deleted and made
/// again under its name, and addresses that belong to ztunnel.
#[test]
fn apply_handles_moves_recreated_interfaces_and_conflicts() {
    let node = Node::new("auto");
    let text = example_for(&node);
    node.ok(&["apply", "-f", &write(&node, "node.yaml", &text)]);
    let owner = |ip: &str| -> String {
        let v: Value = serde_json::from_str(&node.ok(&["-o", "json", "workload", "list"])).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .find(|w| w["ip"] == ip)
            .map_or(String::new(), |w| w["iface"].as_str().unwrap().to_string())
    };
    // Swap 10.244.0.10 and 10.244.0.11 between va and vb.
    let swapped = text
        .replace("ips: [10.244.0.10]", "ips: [X]")
        .replace("ips: [10.244.0.11,", "ips: [10.244.0.10,")
        .replace("ips: [X]", "ips: [10.244.0.11]");
    node.ok(&["apply", "-f", &write(&node, "swapped.yaml", &swapped)]);
    assert_eq!(owner("10.244.0.10"), "vb");
    assert_eq!(owner("10.244.0.11"), "va");
    node.ok(&["apply", "-f", &write(&node, "node.yaml", &text)]);
    assert_eq!(owner("10.244.0.10"), "va");

    // A workload veth deleted and created again gets a new ifindex.
    node.topo.sh_ok(
        "node",
        &[
            "ip", "link", "add", "vc", "type", "veth", "peer", "name", "vcp",
        ],
    );
    let with_vc = format!("{text}  - iface: vc\n    ips: [10.244.0.30]\n");
    let file = write(&node, "vc.yaml", &with_vc);
    node.ok(&["apply", "-f", &file]);
    node.topo.sh_ok("node", &["ip", "link", "del", "vc"]);
    node.topo.sh_ok(
        "node",
        &[
            "ip", "link", "add", "vc", "type", "veth", "peer", "name", "vcp",
        ],
    );
    let out = changes(&node, &["-f", &file]);
    assert!(
        out.iter().any(|c| c.starts_with("- detach stale vc"))
            && out.iter().any(|c| c.starts_with("+ attach vc")),
        "{out:?}"
    );
    assert_eq!(changes(&node, &["-f", &file]), Vec::<String>::new());
    let st = node.status_json();
    let vc = st["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["name"] == "vc")
        .count();
    assert_eq!(vc, 1, "one entry for vc: {st}");

    // ztunnel's address or a host IP as a workload's: bad input, exit 2.
    let before = status(&node);
    for (bad, why) in [
        (with_vc.replace("[10.244.0.30]", "[10.244.0.2]"), "ztunnel"),
        (with_vc.replace("[10.244.0.30]", "[10.99.0.1]"), "10.99.0.1"),
    ] {
        let out = node.ztredir(&["apply", "-f", &write(&node, "bad.yaml", &bad)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(why), "{err}");
    }
    // The same without a ztunnel section: the configured one is checked.
    let start = with_vc.find("ztunnel:\n").unwrap();
    let end = with_vc.find("# Workload interfaces").unwrap();
    let no_zt = format!("{}{}", &with_vc[..start], &with_vc[end..]);
    let out = node.ztredir(&[
        "apply",
        "-f",
        &write(
            &node,
            "nozt.yaml",
            &no_zt.replace("[10.244.0.30]", "[10.244.0.2]"),
        ),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(status(&node), before);
}
