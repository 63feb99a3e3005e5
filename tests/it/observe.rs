// SPDX-License-Identifier: Apache-2.0
//! The observability commands against real traffic: the connection table,
//! the counters by reason, the live trace, and the Prometheus output.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::node::*;
use crate::testbed::*;

/// Bytes a packet may carry besides payload at tc: Ethernet (14), IPv6
/// (40; IPv4 20) and TCP with options (60), rounded up.
const HEADER_BOUND: u64 = 120;

fn conns(node: &Node, args: &[&str]) -> Vec<Value> {
    let mut full = vec!["-o", "json", "conns"];
    full.extend_from_slice(args);
    serde_json::from_str::<Value>(&node.ok(&full))
        .expect("conns -o json parses")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Packets by (hook, reason), summed over interfaces.
fn counters(node: &Node) -> HashMap<(String, String), u64> {
    let rows: Value =
        serde_json::from_str(&node.ok(&["-o", "json", "stats"])).expect("stats -o json parses");
    let mut out = HashMap::new();
    for r in rows.as_array().expect("stats rows") {
        let k = (
            r["hook"].as_str().unwrap().to_string(),
            r["reason"].as_str().unwrap().to_string(),
        );
        *out.entry(k).or_insert(0) += r["packets"].as_u64().unwrap();
    }
    out
}

fn delta(
    before: &HashMap<(String, String), u64>,
    after: &HashMap<(String, String), u64>,
    hook: &str,
    reason: &str,
) -> u64 {
    let k = (hook.to_string(), reason.to_string());
    after.get(&k).copied().unwrap_or(0) - before.get(&k).copied().unwrap_or(0)
}

/// Payload plus one set of headers per packet, at most.
fn assert_bytes(what: &str, bytes: &Value, packets: &Value, payload: u64) {
    let (b, p) = (bytes.as_u64().unwrap(), packets.as_u64().unwrap());
    assert!(
        b >= payload && b <= payload + p * HEADER_BOUND,
        "{what}: {b} bytes in {p} packets for {payload} bytes of payload"
    );
}

/// The one entry for `local` (the workload end) in the table.
fn entry_for(node: &Node, iface: &str, workload: SocketAddr) -> Value {
    let rows = conns(
        node,
        &[
            "--iface",
            iface,
            "--ip",
            &workload.ip().to_string(),
            "--port",
            &workload.port().to_string(),
        ],
    );
    let mine: Vec<&Value> = rows
        .iter()
        .filter(|r| r["workload"] == workload.to_string())
        .collect();
    assert_eq!(mine.len(), 1, "entries for {workload} on {iface}: {rows:?}");
    mine[0].clone()
}

#[test]
fn conn_table_accounts_known_transfers() {
    const UP: u64 = 1_000_000;
    const DOWN: u64 = 2_000_000;
    let _heavy = heavy();
    let node = Node::ready("tcx");
    for (from, iface, dst) in [
        ("a", "va", "10.99.0.2:8080"),
        ("b", "vb", "[fd00:99::2]:8080"),
    ] {
        let srv = TcpServer::start(&node.topo.ns_path("remote"), sa(dst));
        let t = node.transfer(from, None, srv.addr, UP, DOWN);
        let e = entry_for(&node, iface, t.local);
        let what = format!("{from} -> {dst}: {e}");
        assert_eq!(e["direction"], "outbound", "{what}");
        assert_eq!(e["proto"], "tcp", "{what}");
        assert_eq!(e["peer"], dst, "{what}");
        assert_eq!(e["proxy_port"], 15001, "{what}");
        // The request carries an 8-byte header before the payload.
        assert_bytes(
            &what,
            &e["bytes_from_workload"],
            &e["packets_from_workload"],
            UP + 8,
        );
        assert_bytes(
            &what,
            &e["bytes_to_workload"],
            &e["packets_to_workload"],
            DOWN,
        );
        let flags = e["tcp_flags"].as_array().unwrap();
        assert!(
            flags.contains(&"SYN".into()) && flags.contains(&"FIN".into()),
            "{what}"
        );
    }
    // Inbound: remote -> b, steered to the inbound port.
    let b6 = TcpServer::start(&node.topo.ns_path("b"), sa("[fd00:244::11]:8081"));
    let t = node.transfer("remote", None, b6.addr, 1000, 3000);
    let rows = conns(
        &node,
        &[
            "--direction",
            "inbound",
            "--port",
            &t.local.port().to_string(),
        ],
    );
    assert_eq!(rows.len(), 1, "inbound entries: {rows:?}");
    let e = &rows[0];
    assert_eq!(e["workload"], b6.addr.to_string(), "{e}");
    assert_eq!(e["peer"], t.local.to_string(), "{e}");
    assert_eq!(e["iface"], "vb", "{e}");
    assert_eq!(e["proxy_port"], 15006, "{e}");
    assert_bytes(
        "inbound",
        &e["bytes_to_workload"],
        &e["packets_to_workload"],
        1008,
    );
    assert_bytes(
        "inbound",
        &e["bytes_from_workload"],
        &e["packets_from_workload"],
        3000,
    );
    // Newest first, and flush empties it.
    let all = conns(&node, &[]);
    assert_eq!(all[0]["direction"], "inbound", "newest first: {all:?}");
    assert!(node.ok(&["conns", "flush"]).contains("flushed"));
    assert!(conns(&node, &[]).is_empty(), "after flush");
}

#[test]
fn conn_table_keeps_the_newest() {
    let node = Node::new("tc");
    node.set_ztunnel(&["--conntrack-size", "64"]);
    node.ok(&["attach", "va"]);
    let st = node.status_json();
    assert_eq!(st["ztunnel"]["conntrack_size"], 64, "{st}");
    let srv = TcpServer::start(&node.topo.ns_path("remote"), sa("10.99.0.2:8080"));
    // 200 connections, then enough to overflow the map itself (it is sized
    // with headroom for the kernel's per-CPU LRU batches), so that eviction
    // has run: each time `conns` shows 64, the newest 64.
    let headroom = (possible_cpus() + 1) * 128;
    let mut ports = Vec::new();
    for total in [200, 64 + headroom + 200] {
        while ports.len() < total {
            ports.push(node.transfer("a", None, srv.addr, 10, 10).local.port());
        }
        let rows = conns(&node, &["--iface", "va"]);
        let kept: Vec<u16> = rows
            .iter()
            .map(|r| {
                r["workload"]
                    .as_str()
                    .unwrap()
                    .parse::<SocketAddr>()
                    .unwrap()
                    .port()
            })
            .collect();
        assert_eq!(kept.len(), 64, "entries kept of {total}: {kept:?}");
        let newest: Vec<u16> = ports.iter().rev().take(64).copied().collect();
        let mut a = kept.clone();
        let mut b = newest.clone();
        a.sort();
        b.sort();
        assert_eq!(a, b, "after {total} connections, the newest 64 are kept");
        // Newest first by last activity (a connection's closing packets
        // may land after the next one started, so this is not exactly
        // the order of the transfers).
        let seen: Vec<&str> = rows
            .iter()
            .map(|r| r["last_seen"].as_str().unwrap())
            .collect();
        assert!(
            seen.windows(2).all(|w| w[0] >= w[1]),
            "not newest first: {seen:?}"
        );
    }
    // Tracking off: nothing new is recorded.
    node.set_ztunnel(&["--no-conntrack"]);
    assert!(node.ok(&["conns"]).contains("connection tracking is off"));
    node.transfer("a", None, srv.addr, 10, 10);
    assert!(conns(&node, &[]).is_empty());
}

/// UDP datagrams from pod `from` to `dst` that nobody answers.
fn udp_send(node: &Node, from: &str, dst: SocketAddr, n: usize) {
    in_netns(&node.topo.ns_path(from), move || {
        let s =
            std::net::UdpSocket::bind(if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).unwrap();
        for _ in 0..n {
            s.send_to(b"q", dst).unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(100));
}

#[test]
fn counters_move_by_known_amounts() {
    const N: u64 = 5;
    let node = Node::ready("tcx");
    let srv = TcpServer::start(&node.topo.ns_path("remote"), sa("10.99.0.2:8080"));
    let b4 = TcpServer::start(&node.topo.ns_path("b"), sa("10.244.0.11:8080"));
    node.ok(&["stats", "reset"]);
    let c0 = counters(&node);

    // Captured: one listener assignment per new connection.
    for _ in 0..N {
        node.transfer("a", None, srv.addr, 10, 10);
    }
    let c1 = counters(&node);
    assert_eq!(delta(&c0, &c1, "sk-lookup", "assign-listener"), N, "{c1:?}");
    assert!(
        delta(&c0, &c1, "workload-out", "capture-outbound") >= 3 * N,
        "{c1:?}"
    );
    assert!(
        delta(&c0, &c1, "ztunnel-pod", "steer-local") >= 3 * N,
        "{c1:?}"
    );

    // Host IP bypass, both ways.
    for _ in 0..N {
        node.transfer("node", Some(HOST_V4.into()), b4.addr, 10, 10);
    }
    let c2 = counters(&node);
    let (inb, outb) = (
        delta(&c1, &c2, "workload-in", "bypass-host-ip"),
        delta(&c1, &c2, "workload-out", "bypass-host-ip"),
    );
    assert!(
        (3 * N..=8 * N).contains(&inb) && (3 * N..=8 * N).contains(&outb),
        "host bypass {inb}/{outb}: {c2:?}"
    );
    assert_eq!(
        delta(&c1, &c2, "sk-lookup", "assign-listener"),
        0,
        "host traffic reached the proxy"
    );

    // DNS without capture: one bypass per datagram.
    udp_send(&node, "b", sa("10.99.0.2:53"), N as usize);
    let c3 = counters(&node);
    assert_eq!(delta(&c2, &c3, "workload-out", "bypass-dns"), N, "{c3:?}");

    // No ztunnel: every SYN is dropped (short attempts, before any retransmit).
    node.ok(&["ztunnel", "clear"]);
    for _ in 0..N {
        let r = tcp_transfer(
            &node.topo.ns_path("a"),
            None,
            srv.addr,
            1,
            1,
            Duration::from_millis(300),
        );
        assert!(r.is_err(), "connection without ztunnel: {r:?}");
    }
    let c4 = counters(&node);
    assert_eq!(
        delta(&c3, &c4, "workload-out", "drop-no-ztunnel"),
        N,
        "{c4:?}"
    );
    let st = node.status_json();
    let warned = st["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w.as_str().unwrap().contains("drop-no-ztunnel"));
    assert!(warned, "status warns about the drops: {st}");
}

#[test]
fn trace_shows_a_connections_decisions() {
    let node = Node::ready("tcx");
    let srv = TcpServer::start(&node.topo.ns_path("remote"), sa("10.99.0.2:7001"));
    let pins = node.pins.to_str().unwrap().to_string();
    let child = Command::new("nsenter")
        .arg(format!("--net={}", node.topo.ns_path("node").display()))
        .args([
            env!("CARGO_BIN_EXE_ztredir"),
            "--pin-dir",
            &pins,
            "-o",
            "json",
            "trace",
            "--port",
            "7001",
        ])
        .args(["--proto", "tcp", "--count", "3", "--duration", "20"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start ztredir trace");
    // Tracing starts once trace has set its flag in the config map.
    let ctx = ztredir::ctx::Ctx::new(ztredir::dataplane::pins::PinDir::new(&node.pins), None)
        .expect("netlink");
    // Without holding the read lock: trace takes the change lock to start.
    let st = ctx
        .read()
        .expect("open pinned maps")
        .expect("something pinned")
        .into_state();
    let trace_bit = ztredir::dataplane::skel::types::ztr_config_flags::ZTR_CFG_TRACE.0;
    let t0 = std::time::Instant::now();
    while st.config_flags().unwrap() & trace_bit == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "trace never turned tracing on"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    node.transfer("a", None, srv.addr, 10, 10);
    let out = child.wait_with_output().expect("trace output");
    assert!(out.status.success(), "trace exit: {:?}", out.status);
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("trace line {l:?}: {e}")))
        .collect();
    assert_eq!(events.len(), 3, "{events:?}");
    let reasons: Vec<&str> = events
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        ["capture-outbound", "steer-local", "assign-listener"],
        "{events:?}"
    );
    assert_eq!(events[0]["iface"], "va");
    assert_eq!(events[0]["verdict"], "redirect");
    assert_eq!(events[0]["redirect_to"], "vzt", "{events:?}");
    assert_eq!(events[0]["dst"], "10.99.0.2:7001");
    // Tracing is off again: the programs stop paying for it.
    assert_eq!(
        st.config_flags().unwrap() & trace_bit,
        0,
        "trace left tracing on"
    );
}

#[test]
fn observability_with_nothing_attached_says_so() {
    let node = Node::new("tcx");
    for args in [&["conns"][..], &["stats"], &["trace", "--count", "1"]] {
        let out = node.ok(args);
        assert!(out.contains("nothing attached"), "{args:?}: {out}");
    }
    assert_eq!(node.ok(&["-o", "json", "conns"]).trim(), "[]");
}

/// Checks the Prometheus text exposition format line by line: HELP and
/// TYPE before the samples of each metric, names and labels well formed,
/// values numeric.
fn check_prometheus(text: &str) -> usize {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut typed = HashMap::new();
    let mut samples = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, what) = (
                parts.next().unwrap(),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
            );
            assert!(name_ok(name), "metric name in {line:?}");
            match kind {
                "HELP" => assert!(!what.is_empty(), "{line:?}"),
                "TYPE" => {
                    assert!(["counter", "gauge"].contains(&what), "{line:?}");
                    typed.insert(name.to_string(), what.to_string());
                }
                _ => panic!("unknown comment {line:?}"),
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("value in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name_ok(name) && typed.contains_key(name),
            "untyped or bad metric in {line:?}"
        );
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .unwrap_or_else(|| panic!("{line:?}"));
            for pair in inner.split("\",") {
                let (k, v) = pair
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("label in {line:?}"));
                assert!(name_ok(k), "label name in {line:?}");
                assert!(
                    !v.trim_end_matches('"').contains('"'),
                    "unescaped quote in {line:?}"
                );
            }
        }
        samples += 1;
    }
    samples
}

#[test]
fn prometheus_output_parses() {
    let node = Node::ready("tc");
    let srv = TcpServer::start(&node.topo.ns_path("remote"), sa("10.99.0.2:8080"));
    node.transfer("a", None, srv.addr, 100, 100);
    let text = node.ok(&["-o", "prometheus", "stats"]);
    let n = check_prometheus(&text);
    assert!(n > 4, "samples: {n}\n{text}");
    assert!(text.contains("reason=\"capture-outbound\""), "{text}");
    assert!(text.contains("ztredir_connections "), "{text}");
    // Prometheus output is for stats only.
    let out = node.ztredir(&["-o", "prometheus", "status"]);
    assert_eq!(out.status.code(), Some(2));
}

/// CPUs the kernel may bring up: per-CPU LRU lists exist for each.
fn possible_cpus() -> usize {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    text.trim()
        .split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
            None => 1,
        })
        .sum()
}
