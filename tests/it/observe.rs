// SPDX-License-Identifier: Apache-2.0
//! The observability commands against real traffic: the connection table,
//! the counters by reason, the live trace, and the Prometheus output.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::node::*;
use crate::util::*;

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
    let mut ports = Vec::new();
    for _ in 0..200 {
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
    assert_eq!(kept.len(), 64, "entries kept of 200: {kept:?}");
    // The kernel's LRU is approximate (second-chance reference bits, batch
    // eviction): what it guarantees is that recent entries stay and old ones
    // go. The newest 32 are all there, in order, and nothing older than the
    // newest 128 survives.
    let newest: Vec<u16> = ports.iter().rev().copied().collect();
    assert_eq!(
        kept[..32],
        newest[..32],
        "the newest connections, newest first"
    );
    assert!(
        kept.iter().all(|p| newest[..128].contains(p)),
        "old entries survived: {kept:?}"
    );
    // Tracking off: nothing new is recorded.
    node.ok(&[
        "ztunnel",
        "set",
        "--iface",
        "vzt",
        "--netns",
        &node.topo.ns("zt"),
        "--no-conntrack",
    ]);
    assert!(node.ok(&["conns"]).contains("connection tracking is off"));
    node.transfer("a", None, srv.addr, 10, 10);
    assert!(conns(&node, &[]).is_empty());
}
