// SPDX-License-Identifier: Apache-2.0
//! In-pod mode with real traffic: ztredir's programs inside each workload's
//! netns, `ztredir zds` handing the netns to the stand-in in its in-pod
//! mode (which listens inside each one, as ztunnel's shared mode does),
//! both attach modes, both families.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::node::{heavy, CONNECT_TIMEOUT, FAIL_TIMEOUT};
use crate::testbed::*;

const UP: u64 = 48 * 1024;
const DOWN: u64 = 96 * 1024;
const HOST_IPS: [&str; 2] = ["10.99.0.1", "fd00:99::1"];

/// A node whose workloads a, b and srv are in-pod, the ZDS server and the
/// stand-in (in-pod mode) running in the node's netns.
pub struct PodNode {
    pub topo: Topo,
    pub mode: &'static str,
    pub pins: PathBuf,
    pub socket: PathBuf,
    pub proxy_log: PathBuf,
    pub proxy: Option<u32>,
    pub zds: Option<u32>,
}

impl PodNode {
    /// The topology with ztunnel set in-pod; nothing attached, nothing running.
    pub fn new(mode: &'static str, set_extra: &[&str]) -> PodNode {
        let topo = Topo::build(&Options {
            pods: vec!["a", "b", "srv"],
            ..Options::default()
        });
        let work = topo.work_dir().to_path_buf();
        let node = PodNode {
            pins: topo.pin_dir().join("ztredir"),
            socket: work.join("zds.sock"),
            proxy_log: work.join("proxy.log"),
            topo,
            mode,
            proxy: None,
            zds: None,
        };
        // The proxy's leg into the app binds the client's address with a
        // port of the pod's range: kept apart from the clients' ranges, it
        // never takes the 4-tuple of the connection it serves.
        for pod in ["a", "b", "srv"] {
            node.topo.sh_ok(
                pod,
                &["sysctl", "-qw", "net.ipv4.ip_local_port_range=20000 29999"],
            );
        }
        let mut args = vec!["ztunnel", "set", "--in-pod"];
        for ip in HOST_IPS {
            args.extend_from_slice(&["--host-ip", ip]);
        }
        args.extend_from_slice(set_extra);
        node.ok(&args);
        node
    }

    /// `new`, the three workloads attached, ZDS and the stand-in running.
    pub fn ready(mode: &'static str, set_extra: &[&str]) -> PodNode {
        let mut node = PodNode::new(mode, set_extra);
        for pod in ["a", "b", "srv"] {
            node.attach(pod);
        }
        node.start_zds();
        let dns: &[&str] = if set_extra.contains(&"--capture-dns") {
            &["--dns"]
        } else {
            &[]
        };
        node.start_proxy(dns);
        node
    }

    pub fn ztredir(&self, args: &[&str]) -> Output {
        let bin = env!("CARGO_BIN_EXE_ztredir");
        let pins = self.pins.to_str().unwrap();
        let mut full = vec![bin, "--pin-dir", pins, "--attach-mode", self.mode];
        full.extend_from_slice(args);
        self.topo.sh("node", &full)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.ztredir(args);
        assert!(
            out.status.success(),
            "ztredir {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn attach(&self, pod: &str) -> String {
        let ns = self.topo.ns(pod);
        let workload = format!("default/{pod}");
        let sa = format!("sa-{pod}");
        self.ok(&[
            "attach",
            "--netns",
            &ns,
            "--workload",
            &workload,
            "--service-account",
            &sa,
        ])
    }

    pub fn start_zds(&mut self) {
        let bin = env!("CARGO_BIN_EXE_ztredir");
        let pins = self.pins.to_str().unwrap();
        let sock = self.socket.to_str().unwrap();
        let pid = self.topo.spawn(
            "node",
            &[bin, "--pin-dir", pins, "zds", "--socket", sock],
            &[],
        );
        let t0 = Instant::now();
        while !self.socket.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "zds did not start: {}",
                self.topo.log(pid)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.zds = Some(pid);
    }

    pub fn stop_zds(&mut self) {
        if let Some(pid) = self.zds.take() {
            self.topo.kill(pid);
        }
    }

    /// Starts the stand-in in its in-pod mode and waits until it has the
    /// ZDS snapshot (every workload's listeners bound).
    pub fn start_proxy(&mut self, extra: &[&str]) -> u32 {
        let log = self.proxy_log.clone();
        let pid = self.start_proxy_logging(&log, extra);
        self.proxy = Some(pid);
        pid
    }

    /// A stand-in logging to `log`; the caller stops it.
    pub fn start_proxy_logging(&self, log: &Path, extra: &[&str]) -> u32 {
        let bin = env!("CARGO_BIN_EXE_ztunnel_standin");
        let ready = log.with_extension("ready");
        let _ = std::fs::remove_file(&ready);
        let (log, sock, ready_s) = (
            log.to_str().unwrap().to_string(),
            self.socket.to_str().unwrap().to_string(),
            ready.to_str().unwrap().to_string(),
        );
        let mut args = vec![
            bin,
            "--in-pod",
            "--zds",
            &sock,
            "--log",
            &log,
            "--ready-file",
            &ready_s,
        ];
        args.extend_from_slice(extra);
        let pid = self.topo.spawn("node", &args, &[]);
        let t0 = Instant::now();
        while !ready.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "stand-in did not get the snapshot: {}",
                self.topo.log(pid)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        pid
    }

    pub fn stop_proxy(&mut self) {
        if let Some(pid) = self.proxy.take() {
            self.topo.kill(pid);
        }
    }

    pub fn proxy_lines(&self) -> Vec<Value> {
        lines_of(&self.proxy_log)
    }

    /// The stand-in's line about the connection from `client`.
    pub fn line_for(&self, client: SocketAddr) -> Value {
        crate::node::line_for(|| self.proxy_lines(), client)
    }

    pub fn transfer(&self, from: &str, dst: SocketAddr) -> Transfer {
        let what = format!("{from} -> {dst} ({})", self.mode);
        crate::node::checked_transfer(&self.topo.ns_path(from), None, dst, UP, DOWN, &what)
    }

    pub fn fails(&self, from: &str, dst: SocketAddr) {
        let what = format!("{from} -> {dst} ({})", self.mode);
        crate::node::fails_from(&self.topo.ns_path(from), dst, &what);
    }

    pub fn server(&self, pod: &str, addr: &str) -> TcpServer {
        TcpServer::start(&self.topo.ns_path(pod), sa(addr))
    }

    pub fn status(&self) -> Value {
        serde_json::from_str(&self.ok(&["-o", "json", "status"])).expect("status json")
    }
}

impl Drop for PodNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let st = self.ztredir(&["status"]);
            eprintln!(
                "status at failure:\n{}",
                String::from_utf8_lossy(&st.stdout)
            );
            eprintln!(
                "proxy log:\n{}",
                std::fs::read_to_string(&self.proxy_log).unwrap_or_default()
            );
            for pid in [self.proxy, self.zds].into_iter().flatten() {
                eprintln!("log of {pid}:\n{}", self.topo.log(pid));
            }
        }
    }
}

/// Checks that `t` went through the proxy on `listener`, for `workload`,
/// to `orig_dst`, and that `server` saw `peer` as its client's address.
fn proxied(
    node: &PodNode,
    t: &Transfer,
    listener: u16,
    workload: &str,
    orig_dst: SocketAddr,
    server: &TcpServer,
    peer: IpAddr,
) {
    let line = node.line_for(t.local);
    let what = format!("{} -> {orig_dst} ({}): {line}", t.local, node.mode);
    assert_eq!(line["listener"], listener, "listener: {what}");
    assert_eq!(line["workload"], workload, "workload: {what}");
    assert_eq!(
        line["orig_dst"],
        orig_dst.to_string(),
        "original destination: {what}"
    );
    let seen = server.accepted();
    assert!(
        seen.iter()
            .any(|r| r.peer.ip() == peer && r.bytes_in == UP && r.pattern_ok),
        "server should have seen {peer} send {UP} bytes: {what}; server saw {seen:?}"
    );
}

/// The JSON lines of a stand-in's log (its connection and ZDS events).
fn lines_of(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn v(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn paths(mode: &'static str) {
    let node = PodNode::ready(mode, &[]);
    let remote4 = node.server("remote", "10.99.0.2:8080");
    let remote6 = node.server("remote", "[fd00:99::2]:8080");
    let b4 = node.server("b", "10.244.0.11:8080");
    let b6 = node.server("b", "[fd00:244::11]:8080");

    // Outbound: each workload's own proxy, from the workload's address.
    let t = node.transfer("a", sa("10.99.0.2:8080"));
    proxied(
        &node,
        &t,
        15001,
        "default/a",
        sa("10.99.0.2:8080"),
        &remote4,
        v("10.244.0.10"),
    );
    let t = node.transfer("b", sa("[fd00:99::2]:8080"));
    proxied(
        &node,
        &t,
        15001,
        "default/b",
        sa("[fd00:99::2]:8080"),
        &remote6,
        v("fd00:244::11"),
    );
    // Inbound: the destination's proxy, which connects to the app over lo
    // from the client's address; the app's replies find their way back.
    let t = node.transfer("remote", sa("10.244.0.11:8080"));
    proxied(
        &node,
        &t,
        15006,
        "default/b",
        sa("10.244.0.11:8080"),
        &b4,
        v("10.99.0.2"),
    );
    let t = node.transfer("remote", sa("[fd00:244::11]:8080"));
    proxied(
        &node,
        &t,
        15006,
        "default/b",
        sa("[fd00:244::11]:8080"),
        &b6,
        v("fd00:99::2"),
    );
    // Port 15008 is the proxy's HBONE listener: the stand-in takes it (as
    // srv) and does not forward it further.
    let r = tcp_transfer(
        &node.topo.ns_path("remote"),
        None,
        sa("[fd00:244::20]:15008"),
        10,
        10,
        FAIL_TIMEOUT,
    );
    let lines = node.proxy_lines();
    assert!(
        lines
            .iter()
            .any(|l| l["listener"] == 15008 && l["workload"] == "default/srv"),
        "HBONE to srv reached srv's proxy on 15008 ({r:?}): {lines:?}"
    );
    assert!(
        r.is_err(),
        "15008 is the proxy's own, nothing behind it answers: {r:?}"
    );
    // Pod to pod on the node: a's proxy out, b's proxy in, each as itself.
    let t = node.transfer("a", sa("10.244.0.11:8080"));
    let out = node.line_for(t.local);
    assert_eq!(out["workload"], "default/a", "a's outbound: {out}");
    assert_eq!(out["listener"], 15001, "a's outbound: {out}");
    let t0 = Instant::now();
    while !node.proxy_lines().iter().any(|l| {
        l["listener"] == 15006
            && l["workload"] == "default/b"
            && l["client"]
                .as_str()
                .is_some_and(|c| c.starts_with("10.244.0.10:"))
    }) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "b's proxy should have taken a's connection inbound: {:?}",
            node.proxy_lines()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A node host IP (a kubelet probe) reaches the app directly.
    let before = node.proxy_lines().len();
    let t = tcp_transfer(
        &node.topo.ns_path("node"),
        Some(sa("10.99.0.1:0")),
        sa("10.244.0.11:8080"),
        UP,
        DOWN,
        CONNECT_TIMEOUT,
    )
    .expect("probe from the node's host IP");
    assert_eq!(t.bytes_down, DOWN, "probe reply");
    assert!(
        b4.accepted().iter().any(|r| r.peer == t.local),
        "the app saw the probe itself"
    );
    let t = tcp_transfer(
        &node.topo.ns_path("node"),
        Some(sa("[fd00:99::1]:0")),
        sa("[fd00:244::11]:8080"),
        UP,
        DOWN,
        CONNECT_TIMEOUT,
    )
    .expect("IPv6 probe from the node's host IP");
    assert!(
        b6.accepted().iter().any(|r| r.peer == t.local),
        "the app saw the IPv6 probe itself"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        node.proxy_lines().len(),
        before,
        "probes went through the proxy"
    );
    // The proxy's own traffic was never captured again, and each hook counted.
    let st = node.status();
    let reasons: Vec<&str> = st["counters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["reason"].as_str())
        .collect();
    for r in [
        "proxy-own",
        "local-leg",
        "capture-outbound",
        "capture-inbound",
        "bypass-host-ip",
    ] {
        assert!(reasons.contains(&r), "no {r} in {reasons:?}");
    }
    let pods = st["pods"].as_array().expect("pods in status");
    assert_eq!(pods.len(), 3, "three in-pod workloads: {pods:?}");
    assert!(
        pods.iter()
            .all(|p| p["attached"] == true && p["present"] == true),
        "{pods:?}"
    );
    observability(&node);
}

/// conns, trace and doctor see the in-pod workloads by name.
fn observability(node: &PodNode) {
    let conns: Value =
        serde_json::from_str(&node.ok(&["-o", "json", "conns"])).expect("conns json");
    let conns = conns.as_array().expect("conns is a list");
    let has = |dir: &str, workload: &str, peer: &str, port: u16, iface: &str| {
        conns.iter().any(|c| {
            c["direction"] == dir
                && c["workload"]
                    .as_str()
                    .is_some_and(|w| w.starts_with(workload))
                && c["peer"].as_str().is_some_and(|p| p.starts_with(peer))
                && c["proxy_port"] == port
                && c["iface"] == iface
                // Both ways: the proxy answers in the workload's name.
                && c["packets_from_workload"].as_u64() > Some(0)
                && c["packets_to_workload"].as_u64() > Some(0)
        })
    };
    assert!(
        has(
            "outbound",
            "10.244.0.10:",
            "10.99.0.2:8080",
            15001,
            "default/a:eth0"
        ),
        "a's outbound connection in conns: {conns:?}"
    );
    assert!(
        has(
            "inbound",
            "10.244.0.11:8080",
            "10.99.0.2:",
            15006,
            "default/b:eth0"
        ),
        "b's inbound connection in conns: {conns:?}"
    );
    // trace: the decisions of the in-pod hooks, live.
    let bin = env!("CARGO_BIN_EXE_ztredir");
    let pins = node.pins.to_str().unwrap();
    let pid = node.topo.spawn(
        "node",
        &[
            bin,
            "--pin-dir",
            pins,
            "-o",
            "json",
            "trace",
            "--count",
            "40",
            "--duration",
            "10",
        ],
        &[],
    );
    std::thread::sleep(Duration::from_millis(500));
    node.transfer("a", sa("10.99.0.2:8080"));
    let t0 = Instant::now();
    while !(node.topo.log(pid).contains("pod-out") && node.topo.log(pid).contains("pod-lookup")) {
        assert!(
            t0.elapsed() < Duration::from_secs(8),
            "trace showed no pod-out decision: {}",
            node.topo.log(pid)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    node.topo.kill(pid);
    // doctor: every in-pod check passes while the proxy listens.
    let out = node.ztredir(&["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "doctor: {text}");
    for pod in ["a", "b", "srv"] {
        let want = format!("in-pod default/{pod}: ztunnel listens on tcp/15006");
        assert!(text.contains(&want), "doctor checks {want:?}: {text}");
    }
}

#[test]
fn inpod_paths_tcx() {
    paths("tcx");
}

#[test]
fn inpod_paths_tc() {
    paths("tc");
}

/// Raw packets from the uplink with a node host IP as source never reach a
/// workload: the host-IP bypass cannot be forged from outside the node.
#[test]
fn inpod_host_ip_bypass_cannot_be_forged() {
    let node = PodNode::ready("tcx", &[]);
    let raw = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/raw.py");
    for (src, dst) in [("10.99.0.1", "10.244.0.11"), ("fd00:99::1", "fd00:244::11")] {
        let marker = format!("FORGED{}", src.replace([':', '.'], ""));
        let pid = node
            .topo
            .spawn("b", &["python3", raw, "sniff", "eth0", &marker, "2"], &[]);
        let t0 = Instant::now();
        while !node.topo.log(pid).contains("ready") {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "sniffer did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        node.topo.sh_ok(
            "remote",
            &[
                "python3", raw, "send", src, dst, "tcp", "40000", "8080", &marker,
            ],
        );
        let t0 = Instant::now();
        while !node.topo.log(pid).contains("seen") {
            assert!(
                t0.elapsed() < Duration::from_secs(6),
                "sniffer did not finish"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = node.topo.log(pid);
        assert!(
            log.contains("seen 0"),
            "a SYN forged from {src} reached b: {log}"
        );
    }
    let stats = node.ok(&["stats"]);
    assert!(
        stats.contains("host-guard") && stats.contains("drop-spoofed"),
        "the guard counted the forged IPv6 packet: {stats}"
    );
}

/// Before the proxy listens, after it drops a workload, and while it is
/// down, captured traffic dies in the pod; it comes back with no ztredir
/// command when the proxy does. A ZDS restart leaves traffic alone.
#[test]
fn inpod_fails_closed_and_follows_the_proxy() {
    let mut node = PodNode::new("tcx", &[]);
    let remote4 = node.server("remote", "10.99.0.2:8080");
    let b4 = node.server("b", "10.244.0.11:8080");
    node.attach("a");
    node.attach("b");
    // Attached, no proxy yet: nothing leaves or enters around it.
    node.fails("a", sa("10.99.0.2:8080"));
    node.fails("remote", sa("10.244.0.11:8080"));
    assert!(
        remote4.accepted().is_empty() && b4.accepted().is_empty(),
        "traffic got around the proxy"
    );
    node.start_zds();
    node.start_proxy(&[]);
    node.transfer("a", sa("10.99.0.2:8080"));
    node.transfer("remote", sa("10.244.0.11:8080"));
    // A workload attached while everything runs gets its listeners.
    node.attach("srv");
    let srv = node.server("srv", "10.244.0.20:8080");
    let t0 = Instant::now();
    loop {
        let r = tcp_transfer(
            &node.topo.ns_path("remote"),
            None,
            sa("10.244.0.20:8080"),
            10,
            10,
            FAIL_TIMEOUT,
        );
        if r.is_ok() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "srv never got its listeners: {r:?}"
        );
    }
    assert!(!srv.accepted().is_empty());
    // ZDS restarts under running traffic: a connection open across it and
    // new ones keep working.
    let slow = {
        let ns = node.topo.ns_path("a");
        std::thread::spawn(move || {
            slow_transfer(
                &ns,
                sa("10.99.0.2:8080"),
                20,
                Duration::from_millis(50),
                4096,
            )
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    node.stop_zds();
    node.transfer("a", sa("10.99.0.2:8080"));
    node.start_zds();
    let t = slow
        .join()
        .unwrap()
        .expect("a connection open across the ZDS restart");
    assert_eq!(t.bytes_down, 4096);
    node.transfer("b", sa("10.99.0.2:8080"));
    // The proxy goes away: fail closed. It comes back: traffic flows.
    node.stop_proxy();
    let doctor = node.ztredir(&["doctor"]);
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        !doctor.status.success(),
        "doctor with the proxy gone: {text}"
    );
    assert!(text.contains("nothing listens on tcp port 15001"), "{text}");
    node.fails("a", sa("10.99.0.2:8080"));
    node.fails("remote", sa("10.244.0.11:8080"));
    let n = remote4.accepted().len();
    node.start_proxy(&[]);
    node.transfer("a", sa("10.99.0.2:8080"));
    assert_eq!(
        remote4.accepted().len(),
        n + 1,
        "one more connection, through the proxy"
    );
    // Detach: the proxy drops the workload, and the pod's traffic is no
    // longer ztredir's (it goes direct).
    node.ok(&["detach", "--netns", &node.topo.ns("b")]);
    let t = node.transfer("b", sa("10.99.0.2:8080"));
    assert!(
        remote4.accepted().iter().any(|r| r.peer == t.local),
        "b detached: the remote saw b itself"
    );
}

/// Two proxies hold the ports at once (ztunnel's own upgrade): new
/// connections follow the live one when the old one goes.
#[test]
fn inpod_follows_a_second_proxy_with_reuseport() {
    let mut node = PodNode::ready("tcx", &[]);
    let _remote = node.server("remote", "10.99.0.2:8080");
    let _b = node.server("b", "10.244.0.11:8080");
    node.transfer("a", sa("10.99.0.2:8080"));
    node.transfer("remote", sa("10.244.0.11:8080"));
    // The new one binds the same ports beside the old one (SO_REUSEPORT).
    let log2 = node.topo.work_dir().join("proxy2.log");
    let second = node.start_proxy_logging(&log2, &[]);
    let old = node.proxy.take().expect("first proxy");
    node.topo.kill(old);
    for i in 0..5 {
        let t = node.transfer("a", sa("10.99.0.2:8080"));
        let u = node.transfer("remote", sa("10.244.0.11:8080"));
        for (c, what) in [(t.local, "outbound"), (u.local, "inbound")] {
            let t0 = Instant::now();
            while !lines_of(&log2).iter().any(|l| l["client"] == c.to_string()) {
                assert!(
                    t0.elapsed() < Duration::from_secs(5),
                    "{what} connection {i} after the old proxy left went to the new one: {:?}",
                    lines_of(&log2)
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    node.topo.kill(second);
    node.fails("a", sa("10.99.0.2:8080"));
}

/// 500 sequential connections from 4 client ports: TIME_WAIT recycled with
/// no failure and no SYN retransmission; 10 MiB each way byte-exact with
/// GRO on.
#[test]
fn inpod_port_reuse_and_bulk() {
    let _heavy = heavy();
    let node = PodNode::ready("tcx", &[]);
    // The server closes first: the proxy's accepted socket then holds each
    // tuple in TIME_WAIT, and every new SYN from the four ports meets one.
    const CONNS: usize = 500;
    let dst = sa("10.99.0.2:8081");
    let server = crate::redirect::close_first_server(&node.topo.ns_path("remote"), dst, CONNS);
    node.topo.sh_ok(
        "a",
        &["sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40003"],
    );
    let before = nstat(&node.topo, "a");
    let ports = in_netns(&node.topo.ns_path("a"), move || {
        use std::io::{Read, Write};
        let mut ports = std::collections::BTreeSet::new();
        for i in 0..CONNS {
            let mut s = std::net::TcpStream::connect_timeout(&dst, CONNECT_TIMEOUT)
                .unwrap_or_else(|e| panic!("connection {i} from the 4-port range: {e}"));
            s.set_read_timeout(Some(CONNECT_TIMEOUT)).unwrap();
            s.write_all(&[i as u8; 16]).unwrap();
            let mut reply = Vec::new();
            s.read_to_end(&mut reply)
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            assert_eq!(reply, [i as u8; 16], "connection {i}: reply");
            ports.insert(s.local_addr().unwrap().port());
        }
        ports
    });
    assert_eq!(
        server.join().expect("server thread"),
        CONNS,
        "connections answered"
    );
    assert!(ports.len() <= 4, "client ports {ports:?}");
    let after = nstat(&node.topo, "a");
    let delta = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    // As in node-level mode (redirect::port_reuse): with the rest of the
    // suite running beside it, a SYN that recycles a TIME_WAIT socket is
    // now and then discarded by TCP without a drop counter and sent again;
    // the connection then succeeds. Alone it is zero; one in 100 is
    // tolerated, a collision with the TIME_WAIT socket would lose nearly
    // every one.
    let retrans = delta("TcpExtTCPSynRetrans");
    assert!(
        retrans <= (CONNS / 100) as u64,
        "{retrans} SYN retransmissions in {CONNS} connections"
    );
    assert_eq!(delta("TcpAttemptFails"), 0, "failed connection attempts");
    let through = node
        .proxy_lines()
        .iter()
        .filter(|l| l["listener"] == 15001 && l["orig_dst"] == dst.to_string())
        .count();
    assert_eq!(through, CONNS, "connections through a's proxy");
    let tw = node.topo.sh_ok("a", &["ss", "-Htan", "state", "time-wait"]);
    assert!(
        tw.lines()
            .any(|l| l.contains("10.99.0.2]:8081") || l.contains("10.99.0.2:8081")),
        "TIME_WAIT sockets of the proxy in a: {tw}"
    );
    node.topo.sh_ok(
        "a",
        &["sysctl", "-qw", "net.ipv4.ip_local_port_range=20000 29999"],
    );
    for pod in ["a", "b"] {
        node.topo.set_gro(pod, "eth0", true);
    }
    let big = 10 << 20;
    for (from, dst) in [("a", "10.99.0.2:8080"), ("remote", "[fd00:244::11]:8080")] {
        let server_pod = if from == "a" { "remote" } else { "b" };
        let _s = node.server(server_pod, dst);
        let t = tcp_transfer(
            &node.topo.ns_path(from),
            None,
            sa(dst),
            big,
            big,
            CONNECT_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("bulk {from} -> {dst}: {e}"));
        assert_eq!(t.bytes_down, big, "bulk {from} -> {dst}");
        assert!(t.pattern_ok, "bulk {from} -> {dst} corrupted");
    }
}

/// DNS, UDP and TCP, both families: the app asks its resolver, the proxy's
/// localhost listener answers, and the answer comes from the resolver's
/// address and port.
#[test]
fn inpod_dns_is_answered_by_the_proxy() {
    let node = PodNode::ready("tcx", &["--capture-dns"]);
    for resolver in ["10.99.0.53:53", "[fd00:99::53]:53"] {
        let r = sa(resolver);
        let (udp, tcp) = in_netns(&node.topo.ns_path("b"), move || dns_ask(r));
        for (proto, (answer, from)) in [("udp", udp), ("tcp", tcp)] {
            let what = format!("{proto} query to {resolver}: {answer:?} from {from}");
            assert_eq!(from, r, "the answer's source: {what}");
            assert_eq!(&answer[..2], &[0x12, 0x34], "the query's id: {what}");
            let text = String::from_utf8_lossy(&answer[2..]);
            assert!(
                text.contains("standin-dns") && text.contains("default/b"),
                "answered by b's proxy: {what}"
            );
        }
    }
    let stats = node.ok(&["stats"]);
    assert!(
        stats.contains("capture-dns") && stats.contains("dns-reply"),
        "{stats}"
    );
}

/// One UDP and one TCP query (id 0x1234) from the calling thread's netns;
/// the answers and who they came from.
fn dns_ask(r: SocketAddr) -> ((Vec<u8>, SocketAddr), (Vec<u8>, SocketAddr)) {
    use std::io::{Read, Write};
    let query = [0x12u8, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    let bind: SocketAddr = if r.is_ipv4() {
        sa("0.0.0.0:0")
    } else {
        sa("[::]:0")
    };
    let u = std::net::UdpSocket::bind(bind).unwrap();
    u.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    u.send_to(&query, r).unwrap();
    let mut buf = [0u8; 512];
    let (n, from) = u
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("UDP answer from {r}: {e}"));
    let udp = (buf[..n].to_vec(), from);
    let mut t = std::net::TcpStream::connect_timeout(&r, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("TCP to {r}: {e}"));
    t.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    t.write_all(&[0, query.len() as u8]).unwrap();
    t.write_all(&query).unwrap();
    let mut len = [0u8; 2];
    t.read_exact(&mut len).unwrap();
    let mut ans = vec![0u8; u16::from_be_bytes(len) as usize];
    t.read_exact(&mut ans).unwrap();
    let tcp = (ans, t.peer_addr().unwrap());
    (udp, tcp)
}

/// Bad input changes nothing: exit 2, one line naming the value.
#[test]
fn inpod_bad_input_is_refused() {
    let node = PodNode::new("tcx", &[]);
    let before = node.status();
    let own = node.topo.ns_path("node");
    let own = own.to_str().unwrap();
    let a = node.topo.ns("a");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "attach",
                "--netns",
                "/etc/hostname",
                "--workload",
                "d/x",
                "--service-account",
                "x",
            ],
            "/etc/hostname",
        ),
        (
            vec![
                "attach",
                "--netns",
                "nosuchnetns",
                "--workload",
                "d/x",
                "--service-account",
                "x",
            ],
            "nosuchnetns",
        ),
        (
            vec![
                "attach",
                "--netns",
                own,
                "--workload",
                "d/x",
                "--service-account",
                "x",
            ],
            "node's own netns",
        ),
        (
            vec![
                "attach",
                "--netns",
                &a,
                "nosuch0",
                "--workload",
                "d/x",
                "--service-account",
                "x",
            ],
            "nosuch0",
        ),
        (
            vec![
                "attach",
                "--netns",
                &a,
                "--workload",
                "noslash",
                "--service-account",
                "x",
            ],
            "noslash",
        ),
        (
            vec![
                "attach",
                "--netns",
                &a,
                "--workload",
                "Default/App",
                "--service-account",
                "x",
            ],
            "Default",
        ),
        (
            vec![
                "attach",
                "--netns",
                &a,
                "--workload",
                "d/x",
                "--service-account",
                "bad sa",
            ],
            "bad sa",
        ),
        (
            vec!["attach", "--netns", &a, "--workload", "d/x"],
            "service-account",
        ),
        (
            vec![
                "attach",
                "--netns",
                &a,
                "--workload",
                "d/x",
                "--service-account",
                "x",
                "--exclude-outbound-port",
                "80",
            ],
            "exclusions",
        ),
        (
            vec!["ztunnel", "set", "--in-pod", "--iface", "va", "--netns", &a],
            "--iface",
        ),
    ];
    for (args, needle) in cases {
        let out = node.ztredir(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
        assert!(err.contains(needle), "{args:?}: names {needle:?}: {err}");
    }
    assert_eq!(node.status()["pods"], before["pods"], "nothing attached");
    // The modes do not mix: a node-level workload refuses in-pod and back.
    let out = node.ztredir(&["attach", "vb"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "node-level attach on an in-pod node: {err}"
    );
    assert!(err.contains("in-pod"), "{err}");
    node.attach("a");
    let out = node.ztredir(&["ztunnel", "set", "--iface", "va", "--netns", &a]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "node-level set with in-pod workloads: {err}"
    );
    assert!(err.contains("in-pod workloads are attached"), "{err}");
    node.ok(&["detach", "--netns", &a]);
    node.ok(&["ztunnel", "clear"]);
    node.ok(&["attach", "vb"]);
    let out = node.ztredir(&[
        "attach",
        "--netns",
        &a,
        "--workload",
        "d/x",
        "--service-account",
        "x",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "in-pod attach beside a node-level workload: {err}"
    );
    assert!(err.contains("vb"), "{err}");
    let out = node.ztredir(&["ztunnel", "set", "--in-pod"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "in-pod set beside a node-level workload"
    );
}

/// The workload's interface need not be a veth: here it is a macvlan on
/// top of the pod's veth, with the pod's addresses and routes on it; nothing
/// in-pod looks at the node-side peer.
#[test]
fn inpod_any_device() {
    let mut node = PodNode::new("tcx", &[]);
    let script = [
        "link add mv0 link eth0 type macvlan mode bridge",
        "link set mv0 up",
        "addr del 10.244.0.11/32 dev eth0",
        "addr del fd00:244::11/128 dev eth0",
        "addr add 10.244.0.11/32 dev mv0",
        "addr add fd00:244::11/128 dev mv0 nodad",
        "route replace 169.254.1.1 dev mv0 scope link",
        "route replace default via 169.254.1.1 dev mv0",
        "-6 route replace ::/0 via fe80::1 dev mv0",
    ];
    for cmd in script {
        let mut args = vec!["ip"];
        args.extend(cmd.split(' '));
        node.topo.sh_ok("b", &args);
    }
    // Only mv0 may answer ARP for its address (eth0 would, for any of the
    // netns' addresses), and the node forgets eth0's MAC.
    node.topo
        .sh_ok("b", &["sysctl", "-qw", "net.ipv4.conf.eth0.arp_ignore=1"]);
    node.topo
        .sh_ok("node", &["ip", "neigh", "flush", "dev", "vb"]);
    let out = node.attach("b");
    assert!(
        out.contains("on mv0"),
        "the default route's interface was taken: {out}"
    );
    node.start_zds();
    node.start_proxy(&[]);
    let remote = node.server("remote", "[fd00:99::2]:8080");
    let b = node.server("b", "10.244.0.11:8080");
    let t = node.transfer("b", sa("[fd00:99::2]:8080"));
    proxied(
        &node,
        &t,
        15001,
        "default/b",
        sa("[fd00:99::2]:8080"),
        &remote,
        v("fd00:244::11"),
    );
    let t = node.transfer("remote", sa("10.244.0.11:8080"));
    proxied(
        &node,
        &t,
        15006,
        "default/b",
        sa("10.244.0.11:8080"),
        &b,
        v("10.99.0.2"),
    );
}

/// A connection the proxy holds in TIME_WAIT towards the listener's own
/// address (the app once talked to 127.0.0.1:15001 from port P) must not
/// stand in for the listener when the app opens a new connection from P:
/// the listener lookup uses no real source port.
#[test]
fn inpod_listener_lookup_ignores_stale_connections() {
    let node = PodNode::ready("tcx", &[]);
    let remote = node.server("remote", "10.99.0.2:8080");
    let port = 20999;
    let ns = node.topo.ns_path("a");
    // The stand-in takes the loopback connection, finds it addressed to
    // itself and closes first: its side stays in TIME_WAIT.
    in_netns(&ns, move || {
        use std::io::Read;
        let s = socket_from(sa(&format!("10.244.0.10:{port}")));
        s.connect(&nix::sys::socket::SockaddrIn::from(
            "127.0.0.1:15001".parse::<std::net::SocketAddrV4>().unwrap(),
        ))
        .expect("connect to 127.0.0.1:15001");
        let mut s = std::net::TcpStream::from(std::os::fd::OwnedFd::from(s));
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
    });
    let tw = node.topo.sh_ok("a", &["ss", "-Htan", "state", "time-wait"]);
    assert!(
        tw.contains(&format!(":{port}")),
        "a TIME_WAIT socket with port {port}: {tw}"
    );
    let t = in_netns(&ns, move || {
        let s = socket_from(sa(&format!("10.244.0.10:{port}")));
        s.connect(&nix::sys::socket::SockaddrIn::from(
            "10.99.0.2:8080".parse::<std::net::SocketAddrV4>().unwrap(),
        ))
    });
    t.expect("a new connection from the same port goes through the proxy");
    let t0 = Instant::now();
    while !remote
        .accepted()
        .iter()
        .any(|r| r.peer.ip() == v("10.244.0.10"))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the remote saw nothing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TCP socket bound to `addr` (SO_REUSEADDR, so that a TIME_WAIT of the
/// same port does not stop the bind).
struct Sock(std::os::fd::OwnedFd);

impl Sock {
    fn connect(&self, to: &nix::sys::socket::SockaddrIn) -> nix::Result<()> {
        use std::os::fd::AsRawFd;
        nix::sys::socket::connect(self.0.as_raw_fd(), to)
    }
}

impl From<Sock> for std::os::fd::OwnedFd {
    fn from(s: Sock) -> Self {
        s.0
    }
}

fn socket_from(addr: SocketAddr) -> Sock {
    use nix::sys::socket::{
        bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    setsockopt(&fd, sockopt::ReuseAddr, &true).unwrap();
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only")
    };
    bind(fd.as_raw_fd(), &SockaddrIn::from(v4)).unwrap();
    Sock(fd)
}
