// SPDX-License-Identifier: Apache-2.0
//! A node with ztredir on it: the topology, the ztunnel stand-in running in
//! the ztunnel pod, test servers, and the ztredir binary run in the node's
//! netns against the topology's private pin directory.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::testbed::*;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a connection that must fail gets before it counts as failed.
pub const FAIL_TIMEOUT: Duration = Duration::from_millis(1500);

pub struct Node {
    pub topo: Topo,
    pub mode: &'static str,
    pub pins: PathBuf,
    pub proxy_log: PathBuf,
    pub proxy_pid: Option<u32>,
}

impl Node {
    /// A topology with the stand-in running in the ztunnel pod; nothing
    /// attached yet. `mode` is ztredir's --attach-mode.
    pub fn new(mode: &'static str) -> Node {
        let topo = Topo::new();
        let pins = topo.pin_dir().join("ztredir");
        let proxy_log = topo
            .pin_dir()
            .parent()
            .expect("topo temp dir")
            .join("proxy.log");
        let mut node = Node {
            topo,
            mode,
            pins,
            proxy_log,
            proxy_pid: None,
        };
        node.start_proxy(&[]);
        node
    }

    /// Starts the stand-in (extra flags appended) and waits until it listens.
    pub fn start_proxy(&mut self, extra: &[&str]) {
        // Built by cargo with the tests, as a binary of this package.
        let bin = Path::new(env!("CARGO_BIN_EXE_ztunnel_standin"));
        let pid = self.topo.start_standin(bin, &self.proxy_log, extra);
        self.proxy_pid = Some(pid);
    }

    pub fn stop_proxy(&mut self) {
        if let Some(pid) = self.proxy_pid.take() {
            self.topo.kill(pid);
        }
    }

    /// Runs ztredir in the node's netns.
    pub fn ztredir(&self, args: &[&str]) -> Output {
        self.ztredir_bin(Path::new(env!("CARGO_BIN_EXE_ztredir")), args)
    }

    /// Runs the ztredir binary at `bin` (another version) in the node's netns.
    pub fn ztredir_bin(&self, bin: &Path, args: &[&str]) -> Output {
        let pins = self.pins.to_str().unwrap();
        let mut full = vec![
            bin.to_str().unwrap(),
            "--pin-dir",
            pins,
            "--attach-mode",
            self.mode,
        ];
        full.extend_from_slice(args);
        self.topo.sh("node", &full)
    }

    /// Runs ztredir and panics unless it succeeds; returns stdout.
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

    pub fn status_json(&self) -> Value {
        serde_json::from_str(&self.ok(&["-o", "json", "status"])).expect("status -o json parses")
    }

    /// `ztunnel set` for the topology's ztunnel pod, host IPs as bypass.
    pub fn set_ztunnel(&self, extra: &[&str]) {
        let args = self.set_ztunnel_args(extra);
        self.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }

    /// The arguments of `set_ztunnel`.
    pub fn set_ztunnel_args(&self, extra: &[&str]) -> Vec<String> {
        let ns = self.topo.ns("zt");
        let mut args = vec!["ztunnel", "set", "--iface", "vzt", "--netns", ns.as_str()];
        args.extend_from_slice(&["--host-ip", "10.99.0.1", "--host-ip", "fd00:99::1"]);
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_string).collect()
    }

    /// A node with ztunnel set and workloads a and b attached.
    pub fn ready(mode: &'static str) -> Node {
        let node = Node::new(mode);
        node.set_ztunnel(&[]);
        node.ok(&["attach", "va"]);
        node.ok(&["attach", "vb"]);
        node
    }

    /// Every JSON line the proxy has logged so far.
    pub fn proxy_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.proxy_log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad proxy log line {l:?}: {e}"))
            })
            .collect()
    }

    /// Waits for the proxy's line about the connection from `client` (it is
    /// written when the proxied connection ends).
    pub fn proxy_line_for(&self, client: SocketAddr) -> Value {
        line_for(|| self.proxy_lines(), client)
    }

    /// A transfer from pod `from` to `dst`, which must succeed byte-exact.
    pub fn transfer(
        &self,
        from: &str,
        src: Option<IpAddr>,
        dst: SocketAddr,
        up: u64,
        down: u64,
    ) -> Transfer {
        let what = format!("{from} -> {dst} ({})", self.mode);
        checked_transfer(&self.topo.ns_path(from), src, dst, up, down, &what)
    }

    /// A connection from `from` to `dst` that must fail.
    pub fn assert_fails(&self, from: &str, dst: SocketAddr) {
        fails_from(
            &self.topo.ns_path(from),
            dst,
            &format!("{from} -> {dst} ({})", self.mode),
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let st = self.ztredir(&["status"]);
            eprintln!(
                "ztredir status at failure:\n{}",
                String::from_utf8_lossy(&st.stdout)
            );
            eprintln!(
                "proxy log:\n{}",
                std::fs::read_to_string(&self.proxy_log).unwrap_or_default()
            );
        }
    }
}

/// Waits for the line of a proxy log (`lines`, read again each time) about
/// the connection from `client`: it is written when the connection ends.
pub fn line_for(lines: impl Fn() -> Vec<Value>, client: SocketAddr) -> Value {
    let t0 = Instant::now();
    loop {
        if let Some(l) = lines()
            .into_iter()
            .find(|l| l["client"] == client.to_string())
        {
            return l;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "proxy logged nothing for {client}: {:?}",
            lines()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A transfer from the netns at `ns` to `dst` that must succeed byte-exact.
pub fn checked_transfer(
    ns: &Path,
    src: Option<IpAddr>,
    dst: SocketAddr,
    up: u64,
    down: u64,
    what: &str,
) -> Transfer {
    let t = tcp_transfer(
        ns,
        src.map(|i| SocketAddr::new(i, 0)),
        dst,
        up,
        down,
        CONNECT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(t.bytes_down, down, "{what}: bytes received");
    assert!(t.pattern_ok, "{what}: reply corrupted");
    t
}

/// A connection from the netns at `ns` to `dst` that must fail.
pub fn fails_from(ns: &Path, dst: SocketAddr, what: &str) {
    let r = tcp_transfer(ns, None, dst, 10, 10, FAIL_TIMEOUT);
    assert!(r.is_err(), "{what} should fail but got {r:?}");
}

pub fn zt_v4() -> IpAddr {
    IpAddr::V4(pod("zt").v4)
}
pub fn zt_v6() -> IpAddr {
    IpAddr::V6(pod("zt").v6.unwrap())
}

/// Held by tests that load the machine (bulk transfers) or count every
/// retransmission (port reuse), so that neither runs beside the other: on
/// two cores a 10 MB transfer can overflow a backlog queue and cost an
/// unrelated test a SYN.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
