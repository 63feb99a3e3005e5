// SPDX-License-Identifier: Apache-2.0
//! Real traffic through ztredir and the ztunnel stand-in, in both attach
//! modes: capture in each direction, the bypasses, detach, fail-closed,
//! GRO, and port reuse against TIME_WAIT.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};

use nix::sys::time::TimeVal;

use crate::node::*;
use crate::testbed::*;

const UP: u64 = 64 * 1024;
const DOWN: u64 = 128 * 1024;

/// Sends `from -> server` and checks the proxy took it on `listener` with
/// the right original destination, and the server saw `upstream` as peer.
pub fn through_proxy(node: &Node, from: &str, server: &TcpServer, listener: u16, upstream: IpAddr) {
    let what = format!("{from} -> {} ({})", server.addr, node.mode);
    let t = node.transfer(from, None, server.addr, UP, DOWN);
    let line = node.proxy_line_for(t.local);
    assert_eq!(line["listener"], listener, "{what}: listener in {line}");
    assert_eq!(
        line["orig_dst"],
        server.addr.to_string(),
        "{what}: original destination in {line}"
    );
    assert_eq!(line["bytes_up"], UP + 8, "{what}: {line}");
    assert_eq!(line["bytes_down"], DOWN, "{what}: {line}");
    assert!(line["error"].is_null(), "{what}: {line}");
    let up_src = line["upstream_src"]
        .as_str()
        .expect("upstream_src")
        .to_string();
    let rec = server
        .accepted()
        .into_iter()
        .find(|r| r.peer.to_string() == up_src);
    let rec = rec.unwrap_or_else(|| panic!("{what}: server saw no connection from {up_src}"));
    assert_eq!(rec.peer.ip(), upstream, "{what}: peer seen by the server");
    assert!(
        rec.pattern_ok && rec.bytes_in == UP,
        "{what}: request at the server: {rec:?}"
    );
}

/// Sends `from -> server` directly: the proxy logs nothing new and the
/// server sees the client itself.
pub fn direct(node: &Node, from: &str, src: Option<IpAddr>, server: &TcpServer) {
    let what = format!("{from} -> {} ({})", server.addr, node.mode);
    let before = node.proxy_lines().len();
    let t = node.transfer(from, src, server.addr, UP, DOWN);
    let rec = server.accepted().into_iter().find(|r| r.peer == t.local);
    assert!(
        rec.is_some(),
        "{what}: server did not see the client {} itself",
        t.local
    );
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        node.proxy_lines().len(),
        before,
        "{what}: the proxy saw it: {:?}",
        node.proxy_lines()
    );
}

pub fn server(node: &Node, pod: &str, addr: &str) -> TcpServer {
    TcpServer::start(&node.topo.ns_path(pod), sa(addr))
}

fn capture_paths(mode: &'static str) {
    let mut node = Node::ready(mode);
    let remote4 = server(&node, "remote", "10.99.0.2:8080");
    let remote6 = server(&node, "remote", "[fd00:99::2]:8080");
    let b4 = server(&node, "b", "10.244.0.11:8080");
    let b6 = server(&node, "b", "[fd00:244::11]:8080");
    let hbone4 = server(&node, "b", "10.244.0.11:15008");
    let hbone6 = server(&node, "b", "[fd00:244::11]:15008");
    let srv6 = server(&node, "srv", "[fd00:244::20]:8080");
    let remote = |v6: bool| -> IpAddr {
        if v6 {
            sa("[fd00:99::2]:0").ip()
        } else {
            sa("10.99.0.2:0").ip()
        }
    };

    // Outbound: workload -> remote and -> same-node pods, on 15001; the
    // proxy connects from its own address.
    through_proxy(&node, "a", &remote4, 15001, zt_v4());
    through_proxy(&node, "b", &remote6, 15001, zt_v6());
    through_proxy(&node, "a", &b4, 15001, zt_v4());
    through_proxy(&node, "b", &srv6, 15001, zt_v6());
    // Inbound: remote -> workload on 15006, or 15008 for port 15008; the
    // proxy keeps the client's address (spoofed), so the workload's replies
    // must be captured back too.
    through_proxy(&node, "remote", &b4, 15006, remote(false));
    through_proxy(&node, "remote", &b6, 15006, remote(true));
    through_proxy(&node, "remote", &hbone4, 15008, remote(false));
    through_proxy(&node, "remote", &hbone6, 15008, remote(true));
    // Node host IPs (kubelet probes) are not captured, either way.
    direct(&node, "node", Some(HOST_V4.into()), &b4);
    direct(&node, "node", Some(HOST_V6.into()), &b6);

    // Detach: b is reached directly again.
    assert!(node.ok(&["detach", "vb"]).contains("detached vb"));
    direct(&node, "remote", None, &b4);
    direct(&node, "remote", None, &b6);
    direct(&node, "b", None, &remote6);

    // Fail closed, proxy stopped: a's connection fails and the remote
    // server never sees it.
    node.stop_proxy();
    let seen = remote4.accepted().len();
    node.assert_fails("a", remote4.addr);
    // ztunnel cleared: the same.
    node.start_proxy(&[]);
    through_proxy(&node, "a", &remote4, 15001, zt_v4());
    node.ok(&["ztunnel", "clear"]);
    let seen2 = remote4.accepted().len();
    node.assert_fails("a", remote4.addr);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        remote4.accepted().len(),
        seen2,
        "remote saw a connection after ztunnel clear"
    );
    assert_eq!(
        seen + 1,
        seen2,
        "remote saw a connection while the proxy was stopped"
    );
}

#[test]
fn capture_paths_tcx() {
    capture_paths("tcx");
}

#[test]
fn capture_paths_tc() {
    capture_paths("tc");
}

/// GRO on ztunnel's eth0 coalesces the captured packets (and clobbers
/// skb->cb); direction must still be right and the bytes exact.
fn gro_bulk(mode: &'static str) {
    let _heavy = heavy();
    let node = Node::ready(mode);
    for (pod, iface) in [
        ("zt", "eth0"),
        ("a", "eth0"),
        ("b", "eth0"),
        ("remote", "eth0"),
    ] {
        assert!(node.topo.set_gro(pod, iface, true), "GRO on {pod}/{iface}");
    }
    const MB10: u64 = 10 * 1024 * 1024;
    let remote4 = server(&node, "remote", "10.99.0.2:9000");
    let b6 = server(&node, "b", "[fd00:244::11]:9000");
    for (from, srv, listener) in [("a", &remote4, 15001), ("remote", &b6, 15006)] {
        let t = node.transfer(from, None, srv.addr, MB10, MB10);
        let line = node.proxy_line_for(t.local);
        assert_eq!(line["listener"], listener, "{line}");
        assert_eq!(line["bytes_up"], MB10 + 8, "{line}");
        assert_eq!(line["bytes_down"], MB10, "{line}");
        let rec = srv.accepted().into_iter().last().expect("server record");
        assert!(rec.pattern_ok && rec.bytes_in == MB10, "{rec:?}");
    }
}

#[test]
fn gro_bulk_tcx() {
    gro_bulk("tcx");
}

#[test]
fn gro_bulk_tc() {
    gro_bulk("tc");
}

/// A server that answers each request and closes first, as HTTP servers
/// do with `Connection: close`: the proxy then closes its client-facing
/// socket first and holds it in TIME_WAIT on the client's tuple.
pub fn close_first_server(
    ns: &std::path::Path,
    addr: SocketAddr,
    conns: usize,
) -> std::thread::JoinHandle<usize> {
    let l = in_netns(ns, move || TcpListener::bind(addr)).expect("bind close-first server");
    // accept() honours SO_RCVTIMEO, so a failed test does not leave the thread blocked.
    nix::sys::socket::setsockopt(
        &l,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &TimeVal::new(5, 0),
    )
    .expect("accept timeout");
    std::thread::spawn(move || {
        let mut served = 0;
        while served < conns {
            let Ok((mut s, _)) = l.accept() else { break };
            let mut req = [0u8; 16];
            if s.read_exact(&mut req).is_ok() && s.write_all(&req).is_ok() {
                served += 1;
            }
        }
        served
    })
}

/// Connection-per-request from a client with four ephemeral ports: every
/// new SYN reuses a tuple the proxy still holds in TIME_WAIT. None may fail,
/// be retransmitted or be reset.
fn port_reuse(mode: &'static str, dst: &str) {
    const CONNS: usize = 500;
    let _heavy = heavy();
    let node = Node::ready(mode);
    node.topo.sh_ok(
        "b",
        &["sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40003"],
    );
    let dst = sa(dst);
    let server = close_first_server(&node.topo.ns_path("remote"), dst, CONNS);
    let before = nstat(&node.topo, "b");
    let ports = in_netns(&node.topo.ns_path("b"), move || {
        let mut ports = std::collections::BTreeSet::new();
        for i in 0..CONNS {
            let mut s = TcpStream::connect_timeout(&dst, CONNECT_TIMEOUT)
                .unwrap_or_else(|e| panic!("connection {i} to {dst}: {e}"));
            s.set_read_timeout(Some(CONNECT_TIMEOUT)).unwrap();
            s.write_all(&[i as u8; 16]).unwrap();
            let mut reply = Vec::new();
            s.read_to_end(&mut reply)
                .unwrap_or_else(|e| panic!("connection {i} to {dst}: {e}"));
            assert_eq!(reply, [i as u8; 16], "connection {i}: reply");
            ports.insert(s.local_addr().unwrap().port());
        }
        ports
    });
    assert_eq!(
        server.join().expect("server thread"),
        CONNS,
        "connections the server answered"
    );
    let after = nstat(&node.topo, "b");
    let delta = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    let what = format!("{mode}, {dst}");
    assert!(ports.len() <= 4, "client used ports {ports:?}");
    // No SYN may be lost at a TIME_WAIT socket. Under CPU saturation (two
    // busy loops on both cores) a SYN that recycles one is occasionally
    // discarded by TCP with no drop counter and sent again a second later,
    // with ztredir's TIME_WAIT probe compiled out as well; the connection
    // then succeeds. One such in 100 is tolerated; a collision with the
    // TIME_WAIT socket (the historic failure) would lose nearly every one.
    let retrans = delta("TcpExtTCPSynRetrans");
    assert!(
        retrans <= (CONNS / 100) as u64,
        "{retrans} SYN retransmissions in {CONNS} connections ({what})"
    );
    assert_eq!(delta("TcpOutRsts"), 0, "RSTs sent by the client ({what})");
    assert_eq!(
        delta("TcpAttemptFails"),
        0,
        "failed connection attempts ({what})"
    );
    let through = node
        .proxy_lines()
        .into_iter()
        .filter(|l| l["listener"] == 15001)
        .count();
    assert_eq!(through, CONNS, "connections through the proxy ({what})");
    let tw = node
        .topo
        .sh_ok("zt", &["ss", "-Htan", "state", "time-wait"]);
    assert!(
        !tw.trim().is_empty(),
        "expected TIME_WAIT sockets in the ztunnel netns ({what})"
    );
    // Every SYN after the first on a port met the proxy's TIME_WAIT socket
    // for the previous connection, and was counted so.
    let stats: serde_json::Value =
        serde_json::from_str(&node.ok(&["-o", "json", "stats"])).unwrap();
    let reused: u64 = stats
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["reason"] == "time-wait-reuse")
        .map(|r| r["packets"].as_u64().unwrap())
        .sum();
    let expected = (CONNS - ports.len()) as u64;
    assert!(
        reused >= expected * 9 / 10 && reused <= expected + retrans,
        "time-wait-reuse {reused}, expected about {expected} ({what})"
    );
}

#[test]
fn port_reuse_tcx() {
    port_reuse("tcx", "10.99.0.2:7000");
    port_reuse("tcx", "[fd00:99::2]:7000");
}

#[test]
fn port_reuse_tc() {
    port_reuse("tc", "10.99.0.2:7000");
}

/// DNS over UDP and TCP goes to the DNS port only with --capture-dns;
/// other UDP and ICMP are never touched.
fn dns_and_other_protocols(mode: &'static str) {
    let mut node = Node::new(mode);
    node.stop_proxy();
    node.start_proxy(&["--dns"]);
    node.set_ztunnel(&["--capture-dns"]);
    node.ok(&["attach", "va"]);
    node.ok(&["attach", "vb"]);
    let remote = node.topo.ns_path("remote");
    let dns4 = UdpEcho::start(&remote, sa("10.99.0.2:53"));
    let dns6 = UdpEcho::start(&remote, sa("[fd00:99::2]:53"));
    let other = UdpEcho::start(&remote, sa("10.99.0.2:5000"));
    let udp = |from: &str, echo: &UdpEcho| {
        let (reply, src) = udp_roundtrip(
            &node.topo.ns_path(from),
            echo.addr,
            b"query",
            CONNECT_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("UDP {from} -> {} ({mode}): {e}", echo.addr));
        assert_eq!(reply, b"query", "UDP {from} -> {}: reply", echo.addr);
        assert_eq!(
            src, echo.addr,
            "UDP {from} -> {}: the reply must come from the server's address",
            echo.addr
        );
        echo.peers().last().copied().expect("echo saw the query")
    };
    let udp_lines = || {
        node.proxy_lines()
            .into_iter()
            .filter(|l| l["proto"] == "udp")
            .collect::<Vec<_>>()
    };

    // Captured: the proxy asks the server from its own address.
    assert_eq!(
        udp("a", &dns4).ip(),
        zt_v4(),
        "UDP/53 from a should come through the proxy"
    );
    assert_eq!(
        udp("b", &dns6).ip(),
        zt_v6(),
        "UDP/53 from b should come through the proxy"
    );
    // The proxy logs a datagram after it has sent the reply back.
    let t0 = std::time::Instant::now();
    while udp_lines().len() < 2 && t0.elapsed() < CONNECT_TIMEOUT {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let lines = udp_lines();
    assert_eq!(lines.len(), 2, "proxy UDP lines: {lines:?}");
    assert!(lines.iter().all(|l| l["listener"] == 15053), "{lines:?}");
    let tcp53 = server(&node, "remote", "10.99.0.2:53");
    through_proxy(&node, "b", &tcp53, 15053, zt_v4());

    // Other UDP and ICMP: untouched.
    assert_eq!(
        udp("a", &other).ip(),
        IpAddr::V4(pod("a").v4),
        "UDP/5000 must go direct"
    );
    node.topo.sh_ok("b", &["ping", "-c1", "-W2", "10.99.0.2"]);
    node.topo.sh_ok("b", &["ping", "-c1", "-W2", "fd00:99::2"]);

    // DNS capture off: UDP/53 goes direct, TCP/53 is ordinary outbound TCP.
    node.set_ztunnel(&[]);
    assert_eq!(
        udp("b", &dns4).ip(),
        IpAddr::V4(pod("b").v4),
        "UDP/53 without --capture-dns must go direct"
    );
    through_proxy(&node, "b", &tcp53, 15001, zt_v4());
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(udp_lines().len(), 2, "no new UDP through the proxy");
}

#[test]
fn dns_and_other_protocols_tcx() {
    dns_and_other_protocols("tcx");
}

#[test]
fn dns_and_other_protocols_tc() {
    dns_and_other_protocols("tc");
}
