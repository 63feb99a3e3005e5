// SPDX-License-Identifier: Apache-2.0
//! Smoke tests of the namespace harness itself, without any eBPF: every path the redirect
//! tests rely on must work directly first, and a dropped `Topo` must leave nothing behind.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::testbed::*;

const UP: u64 = 100 * 1024;
const DOWN: u64 = 200 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One byte-exact transfer from `from` (bound to `src` if given) to `server`, which must see the
/// client's own address as peer, with IP `peer_ip`: nothing on the direct path rewrites it.
fn assert_path(topo: &Topo, from: &str, src: Option<IpAddr>, server: &TcpServer, peer_ip: IpAddr) {
    let what = format!("{from} -> {}", server.addr);
    let src = src.map(|ip| SocketAddr::new(ip, 0));
    let t = tcp_transfer(
        &topo.ns_path(from),
        src,
        server.addr,
        UP,
        DOWN,
        CONNECT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(t.bytes_down, DOWN, "{what}: bytes received by the client");
    assert!(t.pattern_ok, "{what}: reply corrupted");
    assert_eq!(t.local.ip(), peer_ip, "{what}: client source address");
    let records = server.accepted();
    let rec = records.iter().find(|r| r.peer == t.local);
    let rec =
        rec.unwrap_or_else(|| panic!("{what}: server has no record of {}: {records:?}", t.local));
    assert_eq!(rec.bytes_in, UP, "{what}: bytes received by the server");
    assert!(rec.pattern_ok, "{what}: request corrupted");
    assert_eq!(rec.bytes_out, DOWN, "{what}: bytes sent by the server");
    assert_eq!(rec.local, server.addr, "{what}: server-side address");
}

fn assert_udp_echo(topo: &Topo, from: &str, echo: &UdpEcho, peer_ip: IpAddr) {
    let what = format!("UDP {from} -> {}", echo.addr);
    let payload = format!("hello from {from}");
    let (reply, reply_from) = udp_roundtrip(
        &topo.ns_path(from),
        echo.addr,
        payload.as_bytes(),
        CONNECT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(reply, payload.as_bytes(), "{what}: reply payload");
    assert_eq!(reply_from, echo.addr, "{what}: reply source");
    assert_eq!(
        echo.peers().last().map(|p| p.ip()),
        Some(peer_ip),
        "{what}: source seen by the server"
    );
}

#[test]
fn topology_direct_paths() {
    let topo = Topo::new();
    let server =
        |ns: &str, ip: IpAddr| TcpServer::start(&topo.ns_path(ns), SocketAddr::new(ip, 8080));
    let (a, b, srv) = (pod("a"), pod("b"), pod("srv"));
    let b_v6 = IpAddr::V6(b.v6.unwrap());

    let remote4 = server("remote", REMOTE_V4.into());
    let remote6 = server("remote", REMOTE_V6.into());
    let srv4 = server("srv", srv.v4.into());
    let srv6 = server("srv", srv.v6.unwrap().into());
    let b4 = server("b", b.v4.into());
    let b6 = server("b", b_v6);

    // Pod to remote and pod to pod on the same node, through the node's forwarding.
    assert_path(&topo, "a", None, &remote4, a.v4.into());
    assert_path(&topo, "b", None, &remote6, b_v6);
    assert_path(&topo, "a", None, &srv4, a.v4.into());
    assert_path(&topo, "b", None, &srv6, b_v6);
    // Inbound from outside the node.
    assert_path(&topo, "remote", None, &b4, REMOTE_V4.into());
    assert_path(&topo, "remote", None, &b6, REMOTE_V6.into());
    // From the node itself, with its host IP as source (what kubelet probes look like).
    assert_path(&topo, "node", Some(HOST_V4.into()), &b4, HOST_V4.into());
    assert_path(&topo, "node", Some(HOST_V6.into()), &b6, HOST_V6.into());

    // Pod a is IPv4-only: it has no IPv6 route, so this must fail, and fail at once.
    let start = Instant::now();
    let v6_from_a = tcp_transfer(
        &topo.ns_path("a"),
        None,
        remote6.addr,
        1,
        1,
        CONNECT_TIMEOUT,
    );
    assert!(
        v6_from_a.is_err(),
        "a reached {} over IPv6: {v6_from_a:?}",
        remote6.addr
    );
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "IPv6 from a failed only after a timeout"
    );

    let echo4 = UdpEcho::start(
        &topo.ns_path("remote"),
        SocketAddr::new(REMOTE_V4.into(), 5353),
    );
    let echo6 = UdpEcho::start(
        &topo.ns_path("remote"),
        SocketAddr::new(REMOTE_V6.into(), 5353),
    );
    assert_udp_echo(&topo, "b", &echo4, b.v4.into());
    assert_udp_echo(&topo, "b", &echo6, b_v6);

    // No retransmissions on a clean path: a baseline later tests compare against.
    let counters = nstat(&topo, "b");
    assert!(
        counters.contains_key("TcpRetransSegs"),
        "nstat has no TcpRetransSegs: {counters:?}"
    );
}

/// Names listed by `ip netns list` (first word of each line).
fn listed_netns() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    assert!(
        out.status.success(),
        "ip netns list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn mounts() -> String {
    std::fs::read_to_string("/proc/mounts").expect("read /proc/mounts")
}

#[test]
fn topology_cleans_up() {
    let start = Instant::now();
    let topo = Topo::new();
    let built = start.elapsed();

    let names: Vec<String> = NAMESPACES.iter().map(|ns| topo.ns(ns)).collect();
    let pin_dir = topo.pin_dir();
    let pin_mount = format!("bpf {} bpf ", pin_dir.display());
    assert!(
        mounts().contains(&pin_mount),
        "{} is not a bpffs mount",
        pin_dir.display()
    );
    let listed = listed_netns();
    for name in &names {
        assert!(
            listed.contains(name),
            "{name} missing from `ip netns list`: {listed:?}"
        );
    }
    assert!(
        topo.set_gro("b", "eth0", true),
        "GRO did not turn on for eth0 in b"
    );
    let sleeper = topo.spawn("srv", &["sleep", "600"], &[]);
    assert!(Path::new(&format!("/proc/{sleeper}")).exists());

    let start = Instant::now();
    drop(topo);
    let dropped = start.elapsed();
    eprintln!("Topo::new took {built:?}, drop took {dropped:?}");

    let listed = listed_netns();
    let mounts = mounts();
    for name in &names {
        assert!(!listed.contains(name), "{name} still in `ip netns list`");
        assert!(
            !Path::new("/run/netns").join(name).exists(),
            "/run/netns/{name} still exists"
        );
        assert!(!mounts.contains(name.as_str()), "{name} still mounted");
    }
    assert!(!pin_dir.exists(), "{} still exists", pin_dir.display());
    assert!(
        !mounts.contains(&pin_dir.display().to_string()),
        "{} still mounted",
        pin_dir.display()
    );
    assert!(
        !Path::new(&format!("/proc/{sleeper}")).exists(),
        "spawned pid {sleeper} survived the drop"
    );
}
