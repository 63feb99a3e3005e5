// SPDX-License-Identifier: Apache-2.0
//! The node file: apply (idempotent, dry run, prune, validation, rollback),
//! export, exclusions with real traffic, doctor, and the examples; the same
//! for in-pod nodes (workloads by netns and identity), whose netns apply,
//! --prune and uninstall leave as they found them.

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

// ---------------------------------------------------------------------------------------------
// In-pod nodes
// ---------------------------------------------------------------------------------------------

/// A node with workload pods a and b and no ztunnel pod (in-pod ztunnel
/// listens in the workloads' netns); nothing attached yet.
fn in_pod_node() -> Node {
    let topo = Topo::build(&Options {
        pods: vec!["a", "b"],
        ..Default::default()
    });
    let pins = topo.pin_dir().join("ztredir");
    let proxy_log = topo.pin_dir().parent().unwrap().join("proxy.log");
    Node {
        topo,
        mode: "auto",
        pins,
        proxy_log,
        proxy_pid: None,
    }
}

/// examples/node-inpod.yaml with the topology's workload netns.
fn in_pod_example_for(node: &Node) -> String {
    let text = std::fs::read_to_string(example("node-inpod.yaml")).expect("node-inpod.yaml");
    let mut out = text.clone();
    for (name, pod) in [("app-a", "a"), ("app-b", "b")] {
        let line = format!("  - netns: {name}\n");
        assert!(text.contains(&line), "{line:?}");
        out = out.replace(&line, &format!("  - netns: {}\n", node.topo.ns(pod)));
    }
    out
}

/// What in-pod attach changes in a workload's netns and detach puts back.
fn netns_settings(node: &Node, pod: &str) -> Vec<String> {
    let mut out = Vec::new();
    for args in [
        &["ip", "rule", "show"][..],
        &["ip", "-6", "rule", "show"],
        &["ip", "route", "show", "table", "100"],
        &["ip", "-6", "route", "show", "table", "100"],
        &["sysctl", "-n", "net.ipv4.conf.lo.accept_local"],
        &["sysctl", "-n", "net.ipv4.conf.lo.route_localnet"],
    ] {
        // A table never made is an error, and one made and emptied is not:
        // both have no routes.
        let o = node.topo.sh(pod, args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success() || err.contains("FIB table does not exist"),
            "{args:?} in {pod}: {err}"
        );
        out.push(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout)
        ));
    }
    out
}

fn has_local_rule(node: &Node, pod: &str) -> bool {
    node.topo
        .sh_ok(pod, &["ip", "rule", "show"])
        .contains("fwmark 0x400/0xfff lookup 100")
}

fn pods_of(st: &Value) -> Vec<Value> {
    st["pods"].as_array().expect("status pods").clone()
}

/// The pod attached in netns `ns` (by the path stored).
fn pod_in<'a>(pods: &'a [Value], ns: &str) -> &'a Value {
    pods.iter()
        .find(|p| p["netns"] == format!("/run/netns/{ns}"))
        .unwrap_or_else(|| panic!("no pod in netns {ns}: {pods:?}"))
}

#[test]
fn in_pod_file_applies_exports_and_reapplies_once() {
    let mut node = in_pod_node();
    let text = in_pod_example_for(&node);
    let file = write(&node, "node-inpod.yaml", &text);
    let (ns_a, ns_b) = (node.topo.ns("a"), node.topo.ns("b"));

    let planned = changes(&node, &["--dry-run", "-f", &file]);
    assert!(!node.pins.exists(), "--dry-run made the pin directory");
    let applied = changes(&node, &["-f", &file]);
    assert_eq!(applied, planned);
    assert_eq!(
        applied,
        [
            "+ ztunnel in-pod (shared mode)".to_string(),
            format!("+ attach in-pod default/app-a in netns /run/netns/{ns_a} (sa app-a, eth0 10.244.0.10)"),
            format!("+ attach in-pod shop/cart in netns /run/netns/{ns_b} (sa cart, uid 0b5e4c1a-77d2-4c1e-9b0e-2f6e1c0d9a11, eth0 10.244.0.11, fd00:244::11)"),
        ]
    );

    // Both attached, with their identities.
    let st = node.status_json();
    assert_eq!(st["ztunnel"]["mode"], "in-pod", "{st}");
    let pods = pods_of(&st);
    assert_eq!(pods.len(), 2, "{st}");
    let a = pod_in(&pods, &ns_a);
    assert_eq!(a["namespace"], "default");
    assert_eq!(a["name"], "app-a");
    assert_eq!(a["service_account"], "app-a");
    assert_eq!(a["uid"], "default/app-a");
    assert_eq!(a["iface"], "eth0");
    assert_eq!(a["ips"], serde_json::json!(["10.244.0.10"]));
    let b = pod_in(&pods, &ns_b);
    assert_eq!(b["namespace"], "shop");
    assert_eq!(b["name"], "cart");
    assert_eq!(b["service_account"], "cart");
    assert_eq!(b["uid"], "0b5e4c1a-77d2-4c1e-9b0e-2f6e1c0d9a11");
    assert_eq!(b["ips"], serde_json::json!(["10.244.0.11", "fd00:244::11"]));
    for p in &pods {
        assert_eq!(p["attached"], true, "{p}");
        assert_eq!(p["present"], true, "{p}");
    }
    assert!(has_local_rule(&node, "a") && has_local_rule(&node, "b"));

    // Again: nothing to do.
    let before = status(&node);
    let again = node.ztredir(&["apply", "-f", &file]);
    assert!(again.status.success(), "{again:?}");
    assert_eq!(String::from_utf8_lossy(&again.stdout), "no changes\n");
    assert_eq!(status(&node), before);

    // The export, applied: nothing to do either.
    let exported = node.ok(&["export"]);
    assert!(exported.contains("mode: in-pod"), "{exported}");
    assert!(
        exported.contains(&format!("netns: /run/netns/{ns_a}")),
        "{exported}"
    );
    assert!(!exported.contains("uid: default/app-a"), "{exported}");
    let exported_file = write(&node, "exported.yaml", &exported);
    assert_eq!(
        changes(&node, &["--dry-run", "--prune", "-f", &exported_file]),
        Vec::<String>::new()
    );
    let out = node.ok(&["apply", "--prune", "-f", &exported_file]);
    assert_eq!(out, "no changes\n");
    assert_eq!(status(&node), before);

    // One workload's service account changes: one change.
    let edited = text.replace("service-account: app-a\n", "service-account: frontend\n");
    assert_ne!(edited, text);
    let edited_file = write(&node, "edited.yaml", &edited);
    let want = vec!["~ in-pod default/app-a: service-account app-a -> frontend".to_string()];
    assert_eq!(changes(&node, &["--dry-run", "-f", &edited_file]), want);
    assert_eq!(status(&node), before, "--dry-run changed something");
    assert_eq!(changes(&node, &["-f", &edited_file]), want);
    let pods = pods_of(&node.status_json());
    assert_eq!(pod_in(&pods, &ns_a)["service_account"], "frontend");
    assert_eq!(pod_in(&pods, &ns_b)["service_account"], "cart");
    assert_eq!(changes(&node, &["-f", &edited_file]), Vec::<String>::new());

    // The export rebuilds the same node on a fresh pin directory.
    let before = status(&node);
    let exported = write(&node, "exported2.yaml", &node.ok(&["export"]));
    node.ok(&["uninstall"]);
    node.pins = node.topo.pin_dir().join("fresh");
    assert!(node.ok(&["apply", "-f", &exported]).contains("changed:"));
    assert_eq!(status(&node), before);
    node.ok(&["uninstall"]);
}

#[test]
fn in_pod_prune_detaches_and_restores_the_netns() {
    let node = in_pod_node();
    let (ns_a, ns_b) = (node.topo.ns("a"), node.topo.ns("b"));
    let b_before = netns_settings(&node, "b");
    assert!(!has_local_rule(&node, "b"));
    let text = in_pod_example_for(&node);
    node.ok(&["apply", "-f", &write(&node, "node-inpod.yaml", &text)]);
    assert!(has_local_rule(&node, "b"));
    assert_ne!(netns_settings(&node, "b"), b_before);

    // The file without b.
    let start = text.find(&format!("  - netns: {ns_b}\n")).unwrap();
    let without_b = &text[..start];
    let file = write(&node, "without-b.yaml", without_b);
    let before = status(&node);
    // Without --prune b stays.
    assert_eq!(changes(&node, &["-f", &file]), Vec::<String>::new());
    let want = vec![format!(
        "- detach in-pod shop/cart in netns /run/netns/{ns_b} (10.244.0.11, fd00:244::11)"
    )];
    assert_eq!(changes(&node, &["--dry-run", "--prune", "-f", &file]), want);
    assert_eq!(status(&node), before, "--dry-run changed something");
    assert!(has_local_rule(&node, "b"));
    assert_eq!(changes(&node, &["--prune", "-f", &file]), want);

    // b's netns is as before: no fwmark rule, lo's sysctls back.
    assert!(!has_local_rule(&node, "b"));
    assert_eq!(netns_settings(&node, "b"), b_before);
    let pods = pods_of(&node.status_json());
    assert_eq!(pods.len(), 1, "{pods:?}");
    pod_in(&pods, &ns_a);
    assert!(has_local_rule(&node, "a"));
    assert_eq!(
        changes(&node, &["--prune", "-f", &file]),
        Vec::<String>::new()
    );
}

#[test]
fn in_pod_apply_failing_part_way_rolls_back() {
    let node = in_pod_node();
    let text = in_pod_example_for(&node);
    let file = write(&node, "node-inpod.yaml", &text);
    let a_before = netns_settings(&node, "a");
    let b_before = netns_settings(&node, "b");
    // Steps: ztunnel, a, b. Failing before b's undoes ztunnel and a.
    let out = finish(apply_env(
        &node,
        &file,
        &[("ZTREDIR_FAILPOINT", "apply-step-3")],
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("rolled back, the node is as it was"), "{err}");
    assert_eq!(netns_settings(&node, "a"), a_before);
    assert_eq!(netns_settings(&node, "b"), b_before);
    let st = node.status_json();
    assert!(st["ztunnel"].is_null(), "{st}");
    assert_eq!(pods_of(&st), Vec::<Value>::new(), "{st}");
    // Inside the in-pod attach, after it changed the netns.
    let out = finish(apply_env(
        &node,
        &file,
        &[("ZTREDIR_FAILPOINT", "inpod-attach")],
    ));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(netns_settings(&node, "a"), a_before);
    assert_eq!(pods_of(&node.status_json()), Vec::<Value>::new());
    // And then it applies.
    node.ok(&["apply", "-f", &file]);
    assert_eq!(pods_of(&node.status_json()).len(), 2);
}

/// The 1-based line of the first line of `text` that contains `needle`.
fn line_of(text: &str, needle: &str, nth: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(nth)
        .unwrap_or_else(|| panic!("no {needle:?} (#{nth}) in {text}"))
        .0
        + 1
}

#[test]
fn bad_in_pod_files_exit_2_with_place_and_change_nothing() {
    let node = in_pod_node();
    let text = in_pod_example_for(&node);
    let (ns_a, ns_b) = (node.topo.ns("a"), node.topo.ns("b"));
    let a_entry = format!("  - netns: {ns_a}\n");
    let b_entry = format!("  - netns: {ns_b}\n");
    let a_by_path = format!("netns: /run/netns/{ns_a}");
    // (the file, the line named: (needle, which one), what the error says)
    let cases: Vec<(String, (&str, usize), &str)> = vec![
        (
            text.replace("    service-account: app-a\n", ""),
            (a_entry.trim_end(), 0),
            "missing field `service-account`",
        ),
        (
            text.replace(&b_entry, &a_entry),
            (a_entry.trim_end(), 1),
            "is named twice",
        ),
        (
            text.replace(&b_entry, &format!("  - netns: /run/netns/{ns_a}\n")),
            (&a_by_path, 0),
            "is named twice",
        ),
        (
            text.replace(
                "    uid: 0b5e4c1a-77d2-4c1e-9b0e-2f6e1c0d9a11\n",
                "    uid: default/app-a\n",
            ),
            (b_entry.trim_end(), 0),
            "uid default/app-a is given twice",
        ),
        (
            text.replace("    # ips: [10.244.0.10]\n", "    ips: [10.244.0.10]\n")
                .replace("[10.244.0.11,", "[10.244.0.10, 10.244.0.11,"),
            ("ips: [10.244.0.10, 10.244.0.11", 0),
            "IP 10.244.0.10 is given twice",
        ),
        (
            format!("{text}  - iface: va\n"),
            ("- iface: va", 0),
            "node-level workload",
        ),
        (
            text.replace("  mode: in-pod\n", "  iface: va\n  netns: x\n"),
            (a_entry.trim_end(), 0),
            "in-pod workload (netns) with a node-level ztunnel",
        ),
        (
            text.replace("  mode: in-pod\n", "  mode: in-pod\n  iface: va\n"),
            ("  mode: in-pod", 0),
            "iface is for a node-level ztunnel",
        ),
        (
            text.replace(
                "    # Exclusions (exclude) are for node-level workloads only.\n",
                "    exclude: {outbound-ports: [5432]}\n",
            ),
            (b_entry.trim_end(), 0),
            "exclude is for node-level workloads",
        ),
        (
            text.replace("workload: shop/cart", "workload: cart"),
            ("workload: cart", 0),
            "not NAMESPACE/NAME",
        ),
    ];
    let pins_before = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&node.pins)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let run_cases = |phase: &str| {
        let before = (status(&node), node.ok(&["export"]), pins_before());
        let settings = (netns_settings(&node, "a"), netns_settings(&node, "b"));
        for (i, (bad, (needle, nth), why)) in cases.iter().enumerate() {
            assert_ne!(bad, &text, "case {i} did not change the file");
            let file = write(&node, &format!("bad{i}.yaml"), bad);
            let out = node.ztredir(&["apply", "-f", &file]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{phase} case {i} ({why}): {err}"
            );
            assert_eq!(err.trim().lines().count(), 1, "{phase} case {i}: {err}");
            let rest = err
                .trim()
                .strip_prefix(&format!("Error: {file}:"))
                .unwrap_or_else(|| panic!("{phase} case {i}: no file name: {err}"));
            let mut parts = rest.splitn(3, ':');
            let line: usize = parts.next().unwrap().parse().expect("line");
            let col: usize = parts.next().unwrap().parse().expect("column");
            assert!(col >= 1);
            assert!(
                parts.next().unwrap().contains(why),
                "{phase} case {i}: {err}"
            );
            assert_eq!(
                line,
                line_of(bad, needle, *nth),
                "{phase} case {i}: the wrong line: {err}"
            );
            // Not even a dry run gets through.
            let out = node.ztredir(&["apply", "--dry-run", "-f", &file]);
            assert_eq!(out.status.code(), Some(2), "{phase} case {i} --dry-run");
        }
        // Bad against the system: exit 2, no place, nothing changed.
        for (bad, why) in [
            (
                text.replace(&a_entry, "  - netns: ztr-no-such-netns\n"),
                "netns ztr-no-such-netns not found",
            ),
            (
                text.replace("    iface: eth0\n", "    iface: eth9\n"),
                "interface eth9 not found",
            ),
            // a's address (found on its interface) given to b.
            (
                text.replace("[10.244.0.11,", "[10.244.0.10, 10.244.0.11,"),
                "IP 10.244.0.10 would belong to both default/app-a and shop/cart",
            ),
            // One netns by two paths.
            (
                text.replace(
                    &b_entry,
                    &format!("  - netns: /run/netns/../netns/{ns_a}\n"),
                ),
                "are the same network namespace",
            ),
        ] {
            let file = write(&node, "sys.yaml", &bad);
            let out = node.ztredir(&["apply", "-f", &file]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{phase}: {err}");
            assert!(err.contains(why), "{phase}: {err}");
        }
        assert_eq!(
            (status(&node), node.ok(&["export"]), pins_before()),
            before,
            "{phase}: a bad file changed the pinned state"
        );
        assert_eq!(
            (netns_settings(&node, "a"), netns_settings(&node, "b")),
            settings,
            "{phase}: a bad file changed a workload's netns"
        );
    };
    // On a node without ztredir: not even the pin directory appears.
    run_cases("fresh");
    assert!(!node.pins.exists(), "a bad file made the pin directory");
    // On a node with the file applied.
    node.ok(&["apply", "-f", &write(&node, "node-inpod.yaml", &text)]);
    run_cases("applied");
}

/// In-pod and node-level do not mix on a node: a node-level file on an
/// in-pod node (and the other way) is refused unless --prune removes what
/// is in the other mode.
#[test]
fn in_pod_and_node_level_files_do_not_mix_without_prune() {
    let node = in_pod_node();
    let text = in_pod_example_for(&node);
    node.ok(&["apply", "-f", &write(&node, "node-inpod.yaml", &text)]);
    let before = status(&node);
    let node_level = "version: 1\nworkloads:\n  - iface: va\n    ips: [10.244.0.10]\n";
    let file = write(&node, "node-level.yaml", node_level);
    let out = node.ztredir(&["apply", "-f", &file]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("needs a node-level ztunnel"), "{err}");
    assert_eq!(status(&node), before);
    // With a node-level ztunnel of its own (here on va, a veth with its
    // peer in a netns), the in-pod workloads the file does not name are in
    // the way.
    let with_zt = format!(
        "version: 1\nztunnel: {{iface: va, netns: {}}}\n",
        node.topo.ns("a")
    );
    let out = node.ztredir(&["apply", "-f", &write(&node, "zt.yaml", &with_zt)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("is attached and the file is node-level: detach it, or use --prune"),
        "{err}"
    );
    assert_eq!(status(&node), before);
    // --prune takes the node over to node-level.
    let out = changes(&node, &["--prune", "-f", &file]);
    assert_eq!(out.len(), 4, "{out:?}");
    assert!(
        out[..2].iter().all(|l| l.starts_with("- detach in-pod")),
        "{out:?}"
    );
    assert!(
        out.contains(&"- ztunnel in-pod (clear)".to_string()),
        "{out:?}"
    );
    assert!(
        out.contains(&"+ attach va (10.244.0.10)".to_string()),
        "{out:?}"
    );
    assert!(!has_local_rule(&node, "a") && !has_local_rule(&node, "b"));
    // And back to in-pod.
    let out = node.ztredir(&["apply", "-f", &write(&node, "back.yaml", &text)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("attached in node-level mode"), "{err}");
    let out = changes(&node, &["--prune", "-f", &write(&node, "back.yaml", &text)]);
    assert_eq!(out[0], "- detach va (10.244.0.10)", "{out:?}");
    assert_eq!(pods_of(&node.status_json()).len(), 2);
}

#[test]
fn uninstall_after_in_pod_apply_restores_the_netns() {
    let node = in_pod_node();
    let a_before = netns_settings(&node, "a");
    let b_before = netns_settings(&node, "b");
    let text = in_pod_example_for(&node);
    node.ok(&["apply", "-f", &write(&node, "node-inpod.yaml", &text)]);
    assert!(has_local_rule(&node, "a") && has_local_rule(&node, "b"));
    let out = node.ok(&["uninstall"]);
    assert!(out.contains("detached in-pod default/app-a"), "{out}");
    assert!(out.contains("detached in-pod shop/cart"), "{out}");
    assert!(
        !node.pins.exists(),
        "uninstall left {}",
        node.pins.display()
    );
    assert_eq!(netns_settings(&node, "a"), a_before);
    assert_eq!(netns_settings(&node, "b"), b_before);
    // No program is left on the workloads' interfaces.
    use ztredir::dataplane::attach::Hook;
    for pod in ["a", "b"] {
        for dev in ["eth0", "lo"] {
            let ifindex = crate::foreign::ifindex(&node.topo, pod, dev);
            for hook in [Hook::Ingress, Hook::Egress] {
                let ids = crate::foreign::tcx_prog_ids(&node.topo.ns_path(pod), ifindex, hook);
                assert!(ids.is_empty(), "{pod} {dev} {}: {ids:?}", hook.name());
                let tc = node
                    .topo
                    .sh_ok(pod, &["tc", "filter", "show", "dev", dev, hook.name()]);
                assert!(!tc.contains("ztr_"), "{pod} {dev}: {tc}");
            }
        }
    }
}

/// examples/node-inpod.yaml parses as it is.
#[test]
fn in_pod_example_parses() {
    let text = std::fs::read_to_string(example("node-inpod.yaml")).unwrap();
    let f = ztredir::node::nodefile::parse(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(f.workloads.len(), 2);
}
