// SPDX-License-Identifier: Apache-2.0
//! ztredir's ZDS server (`ztredir::zds::serve`, run on a thread of the test with a source the
//! test edits) against the ztunnel stand-in in in-pod mode, in real network namespaces, and
//! against a raw client made of the codec where the exact messages matter: the snapshot, the
//! follow, restarts of either side, a netns path that names another namespace by now, a live
//! or stale socket, an add ztunnel refuses, and what the server never sends.

use std::fs;
use std::io::{IoSliceMut, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    self, sockopt, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};
use nix::sys::time::TimeVal;
use serde_json::Value;
use ztredir::zds::{self, proto, Workload};

use crate::testbed::*;

const STANDIN: &str = env!("CARGO_BIN_EXE_ztunnel_standin");
/// How long anything the tests wait for may take.
const WAIT: Duration = Duration::from_secs(5);
/// The ports the stand-in opens in every workload's netns, as `ss` shows a dual-stack socket.
const PORTS: [&str; 3] = ["*:15001", "*:15006", "*:15008"];

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Polls `cond` every 20 ms for up to `timeout`; panics with `what` and `detail()` if it never
/// holds.
fn wait_until(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
    detail: impl Fn() -> String,
) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < timeout,
            "{what}: not within {timeout:?}\n{}",
            detail()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// The server under test

/// What the server's source returns; the test edits it while the server runs.
#[derive(Default)]
struct SourceState {
    workloads: Vec<Workload>,
    /// Makes the source fail with this message (pinned state unreadable for a moment).
    error: Option<String>,
}

/// `zds::serve_with_log` on a thread, its log lines captured (and passed on to stderr).
struct TestServer {
    state: Arc<Mutex<SourceState>>,
    lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// A server on `socket` serving `workloads`; returns once it listens.
    fn start(socket: &Path, workloads: Vec<Workload>) -> TestServer {
        let state = Arc::new(Mutex::new(SourceState {
            workloads,
            error: None,
        }));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (path, st, ln, flag) = (
            socket.to_owned(),
            Arc::clone(&state),
            Arc::clone(&lines),
            Arc::clone(&stop),
        );
        let thread = thread::spawn(move || {
            let source = move || -> anyhow::Result<Vec<Workload>> {
                let st = lock(&st);
                match &st.error {
                    Some(e) => Err(anyhow::anyhow!("{e}")),
                    None => Ok(st.workloads.clone()),
                }
            };
            let log = move |line: &str| {
                eprintln!("{line}");
                lock(&ln).push(line.to_owned());
            };
            zds::serve_with_log(&path, &source, &flag, &log)
        });
        let server = TestServer {
            state,
            lines,
            stop,
            thread: Some(thread),
        };
        server.wait_line("the server listening", |l| {
            l.starts_with("zds: listening on ")
        });
        server
    }

    fn set(&self, workloads: Vec<Workload>) {
        lock(&self.state).workloads = workloads;
    }

    fn fail_source(&self, error: Option<&str>) {
        lock(&self.state).error = error.map(str::to_owned);
    }

    fn lines(&self) -> Vec<String> {
        lock(&self.lines).clone()
    }

    /// The lines of connection `conn`, without their `zds: conn N: ` prefix.
    fn conn_lines(&self, conn: u64) -> Vec<String> {
        let prefix = format!("zds: conn {conn}: ");
        self.lines()
            .iter()
            .filter_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
            .collect()
    }

    /// Waits for a line that satisfies `pred`, and returns it.
    fn wait_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let mut found = None;
        wait_until(
            what,
            WAIT,
            || {
                found = self.lines().into_iter().find(|l| pred(l));
                found.is_some()
            },
            || format!("server log:\n{}", self.lines().join("\n")),
        );
        found.expect("found")
    }

    /// Waits until connection `conn` has logged `n` lines, and returns them.
    fn wait_conn_lines(&self, conn: u64, n: usize) -> Vec<String> {
        let what = format!("{n} lines of conn {conn}");
        wait_until(
            &what,
            WAIT,
            || self.conn_lines(conn).len() >= n,
            || format!("server log:\n{}", self.lines().join("\n")),
        );
        self.conn_lines(conn)
    }

    /// Stops the server and returns what `serve` returned.
    fn stop(mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().expect("running");
        thread.join().expect("server thread panicked")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Workloads, the stand-in and what it shows

fn inode(path: &Path) -> u64 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .ino()
}

/// Pod `pod` of the topology as a workload: uid `uid-POD`, `default/app-POD`, sa `sa-POD`.
fn workload(topo: &Topo, pod: &str) -> Workload {
    let netns = topo.ns_path(pod);
    Workload {
        uid: format!("uid-{pod}"),
        name: format!("app-{pod}"),
        namespace: "default".into(),
        service_account: format!("sa-{pod}"),
        netns_inode: inode(&netns),
        netns,
    }
}

/// The socket path of a test: in a directory that does not exist yet (the server makes it).
fn socket_path(topo: &Topo) -> PathBuf {
    topo.work_dir().join("zds").join("ztunnel.sock")
}

/// Starts the in-pod stand-in in the ztunnel pod, logging to `log`; returns once it has acked
/// its first snapshot.
fn start_standin(topo: &Topo, socket: &Path, log: &Path, extra: &[&str]) -> u32 {
    let socket = socket.to_str().expect("UTF-8 path");
    let mut args = vec!["--in-pod", "--zds", socket];
    args.extend_from_slice(extra);
    topo.start_standin(Path::new(STANDIN), log, &args)
}

/// Every JSON line the stand-in logged.
fn events(log: &Path) -> Vec<Value> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad log line {l:?}: {e}")))
        .collect()
}

fn events_of(log: &Path, event: &str) -> Vec<Value> {
    events(log)
        .into_iter()
        .filter(|e| e["event"] == event)
        .collect()
}

/// Waits for a stand-in line that satisfies `pred` and returns it.
fn wait_event(log: &Path, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let mut found = None;
    wait_until(
        what,
        WAIT,
        || {
            found = events(log).into_iter().find(|e| pred(e));
            found.is_some()
        },
        || {
            format!(
                "stand-in log:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            )
        },
    );
    found.expect("found")
}

/// The TCP listening sockets in `pod`'s netns as (local address, socket inode), from `ss`.
fn tcp_listeners(topo: &Topo, pod: &str) -> Vec<(String, String)> {
    let out = topo.sh_ok(pod, &["ss", "-Hltne"]);
    out.lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let local = fields.get(3)?;
            let ino = fields.iter().find_map(|f| f.strip_prefix("ino:"))?;
            Some((local.to_string(), ino.to_string()))
        })
        .collect()
}

/// Whether `pod`'s netns has all of the stand-in's TCP listeners.
fn serves(topo: &Topo, pod: &str) -> bool {
    let listeners = tcp_listeners(topo, pod);
    PORTS.iter().all(|p| listeners.iter().any(|(l, _)| l == p))
}

/// Whether `pod`'s netns has none of them.
fn serves_none(topo: &Topo, pod: &str) -> bool {
    let listeners = tcp_listeners(topo, pod);
    !PORTS.iter().any(|p| listeners.iter().any(|(l, _)| l == p))
}

fn ss(topo: &Topo, pod: &str) -> String {
    format!("ss -ltne in {pod}:\n{}", topo.sh_ok(pod, &["ss", "-ltne"]))
}

/// The socket inodes of the stand-in's listeners in `pod`, by port.
fn listener_inodes(topo: &Topo, pod: &str) -> Vec<(String, String)> {
    let mut l: Vec<(String, String)> = tcp_listeners(topo, pod)
        .into_iter()
        .filter(|(addr, _)| PORTS.contains(&addr.as_str()))
        .collect();
    l.sort();
    l
}

/// The line the server logs for sending `w`'s add.
fn add_line(w: &Workload) -> String {
    format!(
        "-> add uid={} {}/{} (sa {}) netns {}",
        w.uid,
        w.namespace,
        w.name,
        w.service_account,
        w.netns.display()
    )
}

// ---------------------------------------------------------------------------------------------
// Tests with the stand-in

#[test]
fn zds_snapshot_opens_listeners_in_each_workload_netns() {
    let topo = Topo::new();
    let socket = socket_path(&topo);
    let (a, b) = (workload(&topo, "a"), workload(&topo, "b"));
    let server = TestServer::start(&socket, vec![a.clone(), b.clone()]);
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&socket), 0o600, "socket mode");
    assert_eq!(
        mode(socket.parent().unwrap()),
        0o755,
        "socket directory mode"
    );

    let log = topo.work_dir().join("standin.log");
    start_standin(&topo, &socket, &log, &[]);

    // The stand-in saw both adds with their identities and netns, then the snapshot.
    let ev = events(&log);
    let pos = |pred: &dyn Fn(&Value) -> bool| ev.iter().position(pred);
    for w in [&a, &b] {
        let at = pos(&|e| e["event"] == "zds-add" && e["uid"] == w.uid.as_str());
        let add = &ev[at.unwrap_or_else(|| panic!("no zds-add for {}: {ev:?}", w.uid))];
        assert_eq!(add["workload"], format!("default/{}", w.name), "{add}");
        assert_eq!(add["service_account"], w.service_account.as_str(), "{add}");
        assert_eq!(add["netns_inode"], w.netns_inode, "{add}");
        assert_eq!(add["result"], "bound", "{add}");
        let snapshot = pos(&|e| e["event"] == "zds-snapshot").expect("a zds-snapshot line");
        assert!(
            at.unwrap() < snapshot,
            "add of {} after the snapshot",
            w.uid
        );
    }
    assert_eq!(events_of(&log, "zds-add").len(), 2, "{ev:?}");
    assert_eq!(events_of(&log, "zds-snapshot")[0]["workloads"], 2);

    // Listeners in each workload's netns, dual stack; none where no workload was sent, nor in
    // the stand-in's own netns.
    for pod in ["a", "b"] {
        assert!(serves(&topo, pod), "{}", ss(&topo, pod));
    }
    // ztunnel's mark on each, and dual stack.
    for pod in ["a", "b"] {
        let out = topo.sh_ok(pod, &["ss", "-Hltne"]);
        let ours: Vec<&str> = out
            .lines()
            .filter(|l| PORTS.iter().any(|p| l.contains(p)))
            .collect();
        assert_eq!(ours.len(), 3, "{out}");
        for line in ours {
            assert!(
                line.contains("fwmark:0x539") && line.contains("v6only:0"),
                "{line}"
            );
        }
    }
    for pod in ["srv", "zt"] {
        assert!(serves_none(&topo, pod), "{}", ss(&topo, pod));
    }

    // The server's side: hello, each add acked, the snapshot acked, nothing else.
    assert_eq!(
        server.wait_conn_lines(1, 8),
        vec![
            "accepted".to_string(),
            "<- hello version 1".into(),
            add_line(&a),
            "<- ack".into(),
            add_line(&b),
            "<- ack".into(),
            "-> snapshot sent".into(),
            "<- ack".into(),
        ]
    );
}

#[test]
fn zds_follow_adds_removes_and_moves_workloads() {
    let topo = Topo::new();
    let socket = socket_path(&topo);
    let (a, b) = (workload(&topo, "a"), workload(&topo, "b"));
    let server = TestServer::start(&socket, vec![a.clone()]);
    let log = topo.work_dir().join("standin.log");
    start_standin(&topo, &socket, &log, &[]);
    assert!(serves(&topo, "a"), "{}", ss(&topo, "a"));
    assert!(serves_none(&topo, "b"), "{}", ss(&topo, "b"));

    // Nothing changes: nothing is sent, however many polls go by.
    let settled = server.wait_conn_lines(1, 6);
    thread::sleep(Duration::from_secs(1));
    assert_eq!(server.conn_lines(1), settled, "sent without a change");

    // A new workload gets its listeners, nothing restarted.
    server.set(vec![a.clone(), b.clone()]);
    wait_until(
        "b's listeners",
        Duration::from_secs(2),
        || serves(&topo, "b"),
        || ss(&topo, "b"),
    );
    wait_event(&log, "b's add", |e| {
        e["event"] == "zds-add" && e["uid"] == "uid-b"
    });
    assert!(
        serves(&topo, "a"),
        "a lost its listeners: {}",
        ss(&topo, "a")
    );

    // One removed: its listeners are gone within 2 s, the other's stay.
    server.set(vec![b.clone()]);
    wait_until(
        "a's listeners gone",
        Duration::from_secs(2),
        || serves_none(&topo, "a"),
        || ss(&topo, "a"),
    );
    let del = wait_event(&log, "a's del", |e| e["event"] == "zds-del");
    assert_eq!(del["uid"], "uid-a", "{del}");
    assert_eq!(del["known"], true, "{del}");
    assert_eq!(del["workload"], "default/app-a", "{del}");
    server.wait_line("a's del", |l| l == "zds: conn 1: -> del uid=uid-a");
    assert!(serves(&topo, "b"), "{}", ss(&topo, "b"));

    // The same uid in another netns: del, then add with the new netns.
    let mark = server.conn_lines(1).len();
    let mut moved = b.clone();
    moved.netns = topo.ns_path("srv");
    moved.netns_inode = inode(&moved.netns);
    server.set(vec![moved.clone()]);
    wait_until(
        "b's listeners moved to srv",
        Duration::from_secs(2),
        || serves(&topo, "srv") && serves_none(&topo, "b"),
        || format!("{}\n{}", ss(&topo, "b"), ss(&topo, "srv")),
    );
    assert_eq!(
        server.wait_conn_lines(1, mark + 4)[mark..],
        [
            "-> del uid=uid-b".to_string(),
            "<- ack".into(),
            add_line(&moved),
            "<- ack".into(),
        ]
    );
    let add = wait_event(&log, "the moved add", |e| {
        e["event"] == "zds-add" && e["netns_inode"] == moved.netns_inode
    });
    assert_eq!(add["uid"], "uid-b", "{add}");
    assert_eq!(add["result"], "bound", "{add}");
}

#[test]
fn zds_restarts_of_either_side() {
    let topo = Topo::new();
    let socket = socket_path(&topo);
    let (a, b) = (workload(&topo, "a"), workload(&topo, "b"));
    let server = TestServer::start(&socket, vec![a.clone(), b.clone()]);
    let log1 = topo.work_dir().join("standin1.log");
    let first = start_standin(&topo, &socket, &log1, &[]);
    assert!(serves(&topo, "a") && serves(&topo, "b"));

    // ztunnel restarts: its listeners go with it, and the new one gets a full snapshot.
    topo.kill(first);
    assert!(serves_none(&topo, "a"), "{}", ss(&topo, "a"));
    server.wait_line("conn 1 closed", |l| l == "zds: conn 1: closed (eof)");
    let log = topo.work_dir().join("standin2.log");
    start_standin(&topo, &socket, &log, &[]);
    assert!(serves(&topo, "a"), "{}", ss(&topo, "a"));
    assert!(serves(&topo, "b"), "{}", ss(&topo, "b"));
    let conn2 = server.wait_conn_lines(2, 8);
    assert!(conn2.contains(&add_line(&a)), "{conn2:?}");
    assert!(conn2.contains(&add_line(&b)), "{conn2:?}");
    assert_eq!(conn2.iter().filter(|l| *l == "-> snapshot sent").count(), 1);

    // A connection through b's 15006 that spans the server's restart.
    redirect_inbound(&topo, "b", 8080);
    let app = TcpServer::start(&b.netns, sa("10.244.0.11:8080"));
    let remote = topo.ns_path("remote");
    let dst = app.addr;
    let long =
        thread::spawn(move || slow_transfer(&remote, dst, 30, Duration::from_millis(100), 1000));

    let established = || {
        let filter = ["ss", "-Htn", "state", "established", "( sport = :8080 )"];
        !topo.sh_ok("b", &filter).trim().is_empty()
    };
    wait_until("the app's connection", WAIT, established, || ss(&topo, "b"));

    // The server stops: the socket file goes, the stand-in keeps serving.
    let before = listener_inodes(&topo, "b");
    assert_eq!(before.len(), 3, "{}", ss(&topo, "b"));
    server.stop().expect("serve returned an error");
    assert!(!socket.exists(), "{} left after stop", socket.display());
    wait_event(&log, "the stand-in's EOF", |e| e["event"] == "zds-eof");
    assert!(
        serves(&topo, "a") && serves(&topo, "b"),
        "listeners lost without a server"
    );

    // A new server with only b: the stand-in reconnects by itself and gets a snapshot; b's
    // listeners are the very same sockets, a, left out, is dropped.
    let server = TestServer::start(&socket, vec![b.clone()]);
    let snapshot = wait_event(&log, "the second snapshot", |e| {
        e["event"] == "zds-snapshot" && e["dropped"] != Value::Array(vec![])
    });
    assert_eq!(
        snapshot["dropped"],
        serde_json::json!(["uid-a"]),
        "{snapshot}"
    );
    assert_eq!(snapshot["workloads"], 1, "{snapshot}");
    assert_eq!(events_of(&log, "zds-connected").len(), 2);
    let kept = events_of(&log, "zds-add");
    let kept = kept.last().expect("an add");
    assert_eq!(kept["uid"], "uid-b", "{kept}");
    assert_eq!(kept["result"], "kept", "{kept}");
    assert_eq!(
        listener_inodes(&topo, "b"),
        before,
        "b's listeners were replaced"
    );
    assert!(serves_none(&topo, "a"), "{}", ss(&topo, "a"));
    assert_eq!(
        server.wait_conn_lines(1, 6),
        [
            "accepted".to_string(),
            "<- hello version 1".into(),
            add_line(&b),
            "<- ack".into(),
            "-> snapshot sent".into(),
            "<- ack".into(),
        ]
    );

    // The connection accepted before the restart finished intact, and new ones work.
    let t = long
        .join()
        .unwrap()
        .expect("the connection across the restart");
    assert!(t.bytes_down == 1000 && t.pattern_ok, "{t:?}");
    let rec = app.accepted();
    assert_eq!(rec.len(), 1, "{rec:?}");
    assert!(rec[0].pattern_ok && rec[0].bytes_in == 30 * 1024, "{rec:?}");
    let t = tcp_transfer(&topo.ns_path("remote"), None, app.addr, 1024, 1024, WAIT)
        .expect("a connection after the restart");
    assert!(t.pattern_ok, "{t:?}");
    let line = wait_event(&log, "its line", |e| e["client"] == t.local.to_string());
    assert_eq!(line["workload"], "default/app-b", "{line}");

    server.stop().expect("serve returned an error");
    assert!(!socket.exists(), "{} left after stop", socket.display());
}

#[test]
fn zds_two_standins_at_once_share_the_ports() {
    // ztunnel's own upgrade: the new process connects while the old one still serves.
    let topo = Topo::new();
    let socket = socket_path(&topo);
    let a = workload(&topo, "a");
    let server = TestServer::start(&socket, vec![a.clone()]);
    let old = start_standin(&topo, &socket, &topo.work_dir().join("old.log"), &[]);
    start_standin(&topo, &socket, &topo.work_dir().join("new.log"), &[]);
    let both = listener_inodes(&topo, "a");
    assert_eq!(
        both.len(),
        6,
        "two sockets per port (SO_REUSEPORT): {}",
        ss(&topo, "a")
    );
    for conn in [1, 2] {
        let lines = server.wait_conn_lines(conn, 6);
        assert!(lines.contains(&add_line(&a)), "conn {conn}: {lines:?}");
    }
    topo.kill(old);
    server.wait_line("conn 1 closed", |l| l == "zds: conn 1: closed (eof)");
    let left = listener_inodes(&topo, "a");
    assert_eq!(left.len(), 3, "{}", ss(&topo, "a"));
    assert!(
        left.iter().all(|l| both.contains(l)),
        "{left:?} not among {both:?}"
    );
    // The survivor still follows.
    server.set(vec![]);
    wait_until(
        "a's listeners gone",
        Duration::from_secs(2),
        || serves_none(&topo, "a"),
        || ss(&topo, "a"),
    );
}

#[test]
fn zds_netns_path_naming_another_netns_is_not_sent() {
    let topo = Topo::new();
    let socket = socket_path(&topo);
    let b = workload(&topo, "b");
    // a's path, but recorded when it named b's netns: it names another one now.
    let mut stale = workload(&topo, "a");
    stale.netns_inode = b.netns_inode;
    let server = TestServer::start(&socket, vec![stale.clone(), b.clone()]);
    let log = topo.work_dir().join("standin.log");
    start_standin(&topo, &socket, &log, &[]);

    let adds = events_of(&log, "zds-add");
    assert_eq!(adds.len(), 1, "{adds:?}");
    assert_eq!(adds[0]["uid"], "uid-b");
    assert!(serves_none(&topo, "a"), "{}", ss(&topo, "a"));
    assert!(serves(&topo, "b"), "{}", ss(&topo, "b"));
    let skip = format!(
        "skip uid=uid-a default/app-a: netns {} is inode {} now, not {} (another namespace); not sent",
        stale.netns.display(),
        inode(&stale.netns),
        b.netns_inode
    );
    let lines = server.wait_conn_lines(1, 7);
    assert_eq!(
        lines,
        [
            "accepted".to_string(),
            "<- hello version 1".into(),
            skip.clone(),
            add_line(&b),
            "<- ack".into(),
            "-> snapshot sent".into(),
            "<- ack".into(),
        ]
    );
    // Logged once, not on every poll.
    thread::sleep(Duration::from_secs(1));
    assert_eq!(server.conn_lines(1), lines);

    // Recorded anew with the right inode, it is sent on the next poll.
    server.set(vec![workload(&topo, "a"), b.clone()]);
    wait_until(
        "a's listeners",
        Duration::from_secs(2),
        || serves(&topo, "a"),
        || ss(&topo, "a"),
    );
    let add = wait_event(&log, "a's add", |e| {
        e["event"] == "zds-add" && e["uid"] == "uid-a"
    });
    assert_eq!(add["netns_inode"], inode(&stale.netns), "{add}");
}

#[test]
fn zds_add_refused_by_the_proxy_is_retried() {
    let topo = Topo::new();
    let socket = socket_path(&topo);
    let (a, b) = (workload(&topo, "a"), workload(&topo, "b"));
    // Something else holds a's HBONE port without SO_REUSEPORT: the stand-in cannot bind it.
    let blocker =
        in_netns(&a.netns, || std::net::TcpListener::bind("[::]:15008")).expect("bind the blocker");
    let server = TestServer::start(&socket, vec![a.clone(), b.clone()]);
    let log = topo.work_dir().join("standin.log");
    start_standin(&topo, &socket, &log, &[]);

    let failed = wait_event(&log, "a's failed add", |e| {
        e["event"] == "zds-add" && e["uid"] == "uid-a"
    });
    assert_eq!(failed["result"], "failed", "{failed}");
    let error = failed["error"].as_str().expect("an error");
    assert!(
        error.contains("[::]:15008") && error.contains("in use"),
        "{failed}"
    );
    let refused = server.wait_line("a's refused add", |l| l.contains("<- ack error"));
    assert_eq!(
        refused,
        format!("zds: conn 1: <- ack error {error:?} (uid=uid-a; retry in 500ms)")
    );
    // The connection stays, b is served, a's partial listeners are not left behind.
    assert!(serves(&topo, "b"), "{}", ss(&topo, "b"));
    let a_now = tcp_listeners(&topo, "a");
    assert_eq!(a_now.len(), 1, "only the blocker: {}", ss(&topo, "a"));

    // Retried (500 ms, then 1 s, ...) until it binds.
    drop(blocker);
    wait_until(
        "a's listeners",
        WAIT,
        || serves(&topo, "a"),
        || ss(&topo, "a"),
    );
    let lines = server.conn_lines(1);
    assert!(!lines.iter().any(|l| l.starts_with("closed")), "{lines:?}");
    let retries = lines.iter().filter(|l| **l == add_line(&a)).count();
    assert!(retries >= 2, "{lines:?}");
    assert_eq!(lines.iter().filter(|l| *l == "-> snapshot sent").count(), 1);
}

#[test]
fn zds_standin_answers_dns_as_the_workload() {
    let topo = Topo::new();
    let socket = socket_path(&topo);
    let (a, b) = (workload(&topo, "a"), workload(&topo, "b"));
    let _server = TestServer::start(&socket, vec![a.clone(), b.clone()]);
    let log = topo.work_dir().join("standin.log");
    start_standin(&topo, &socket, &log, &["--dns"]);
    for pod in ["a", "b"] {
        let listening = [
            topo.sh_ok(pod, &["ss", "-Hlun"]),
            topo.sh_ok(pod, &["ss", "-Hltn"]),
        ]
        .concat();
        for addr in ["127.0.0.1:15053", "[::1]:15053"] {
            assert_eq!(
                listening.matches(addr).count(),
                2,
                "TCP and UDP on {addr}: {listening}"
            );
        }
    }

    let query = [0x12u8, 0x34, 0x01, 0x00, 0x00, 0x01];
    let answer = |w: &Workload| {
        let mut answer = vec![0x12, 0x34];
        answer.extend_from_slice(format!("standin-dns:default/{}", w.name).as_bytes());
        answer
    };
    for w in [&a, &b] {
        for dst in ["127.0.0.1:15053", "[::1]:15053"] {
            let (reply, from) = udp_roundtrip(&w.netns, sa(dst), &query, WAIT)
                .unwrap_or_else(|e| panic!("UDP {dst} in {}: {e}", w.uid));
            assert_eq!(reply, answer(w), "UDP {dst} in {}", w.uid);
            assert_eq!(from, sa(dst));
        }
    }
    // TCP, two queries on one connection, each with its length prefix.
    let tcp = in_netns(&a.netns, move || -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&sa("127.0.0.1:15053"), WAIT)?;
        s.set_read_timeout(Some(WAIT))?;
        let mut framed = vec![0, query.len() as u8];
        framed.extend_from_slice(&query);
        s.write_all(&framed)?;
        s.write_all(&framed)?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut got = Vec::new();
        s.read_to_end(&mut got)?;
        Ok(got)
    })
    .expect("DNS over TCP");
    let mut one = vec![0, answer(&a).len() as u8];
    one.extend(answer(&a));
    assert_eq!(tcp, [one.clone(), one].concat());

    // One line per datagram and per connection, naming the workload that answered.
    let lines: Vec<Value> = events(&log)
        .into_iter()
        .filter(|e| e["listener"] == 15053)
        .collect();
    let of = |w: &Workload, proto: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|e| e["uid"] == w.uid.as_str() && e["proto"] == proto)
            .collect()
    };
    for w in [&a, &b] {
        let udp = of(w, "udp");
        assert_eq!(udp.len(), 2, "{lines:?}");
        for line in udp {
            assert_eq!(line["workload"], format!("default/{}", w.name), "{line}");
            assert_eq!(line["netns_inode"], w.netns_inode, "{line}");
            assert_eq!(line["bytes_down"], answer(w).len(), "{line}");
            assert!(line["error"].is_null(), "{line}");
        }
    }
    let tcp_line = wait_event(&log, "the DNS TCP line", |e| {
        e["listener"] == 15053 && e["proto"] == "tcp"
    });
    assert_eq!(tcp_line["workload"], "default/app-a", "{tcp_line}");
    assert_eq!(tcp_line["bytes_up"], 2 * (2 + query.len()), "{tcp_line}");
    assert!(tcp_line["error"].is_null(), "{tcp_line}");

    // A connection straight to a listener is seen as the workload too, and not forwarded to
    // itself.
    let client = in_netns(&b.netns, || {
        let mut s = TcpStream::connect_timeout(&sa("[fd00:244::11]:15006"), WAIT)?;
        let local = s.local_addr()?;
        s.set_read_timeout(Some(WAIT))?;
        let mut buf = [0u8; 1];
        let _ = s.read(&mut buf);
        std::io::Result::Ok(local)
    })
    .expect("connect to b's own 15006");
    let line = wait_event(&log, "the direct connection", |e| {
        e["client"] == client.to_string()
    });
    assert_eq!(line["workload"], "default/app-b", "{line}");
    assert_eq!(line["listener"], 15006, "{line}");
    assert_eq!(line["orig_dst"], "[fd00:244::11]:15006", "{line}");
    assert!(
        line["error"]
            .as_str()
            .unwrap_or("")
            .contains("own listener"),
        "{line}"
    );
}

/// Makes `pod`'s outbound TCP to `port` land on the stand-in's 15001 with nft `tproxy` and
/// policy routing, in place of the dataplane: what is not marked 0x539 (the proxy's own) is
/// marked 1, which routes it to `lo`, where `tproxy` hands it to the transparent listener.
fn redirect_outbound(topo: &Topo, pod: &str, port: u16) {
    nft(
        topo,
        pod,
        &format!(
            "table ip ztrtest {{
            chain out {{
                type route hook output priority mangle; policy accept;
                meta mark 0x539 return
                ip daddr 127.0.0.0/8 return
                tcp dport {port} meta mark set 0x1
            }}
            chain pre {{
                type filter hook prerouting priority mangle; policy accept;
                iifname \"lo\" meta mark 0x1 meta l4proto tcp tproxy to :15001 accept
            }}
        }}"
        ),
    );
    local_table(topo, pod, "0x1", false);
}

/// Makes inbound TCP to `port` arriving on `pod`'s eth0 land on the stand-in's 15006, the way
/// istio-cni's rules do: `tproxy` on eth0; the proxy's leg into the app (marked 0x539, to
/// the pod's address) gets connmark 0x111, so the app's replies, sent to the spoofed client
/// address, are marked 0x111 and routed to `lo`, back to the proxy.
fn redirect_inbound(topo: &Topo, pod: &str, port: u16) {
    let spec = crate::testbed::pod(pod);
    let v6 = spec.v6.expect("a dual-stack pod");
    for (family, addr, tproxy) in [
        ("ip", spec.v4.to_string(), "ip"),
        ("ip6", v6.to_string(), "ip6"),
    ] {
        nft(topo, pod, &format!(
            "table {family} ztrtest {{
                chain pre {{
                    type filter hook prerouting priority mangle; policy accept;
                    iifname \"eth0\" meta l4proto tcp tcp dport {port} tproxy {tproxy} to :15006 accept
                }}
                chain out {{
                    type route hook output priority mangle; policy accept;
                    meta mark 0x539 {family} daddr {addr} ct mark set 0x111 return
                    ct mark 0x111 meta mark set 0x111
                }}
            }}"
        ));
    }
    local_table(topo, pod, "0x111", true);
    // The proxy's spoofed leg must not pick the client's port (see FINDINGS).
    topo.sh_ok(
        pod,
        &["sysctl", "-qw", "net.ipv4.ip_local_port_range=20000 29999"],
    );
}

fn nft(topo: &Topo, pod: &str, ruleset: &str) {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    let file = topo.work_dir().join(format!("rules-{pod}-{n}.nft"));
    fs::write(&file, ruleset).unwrap();
    topo.sh_ok(pod, &["nft", "-f", file.to_str().unwrap()]);
}

/// Delivers packets marked `mark` locally (over `lo`), whatever their destination.
fn local_table(topo: &Topo, pod: &str, mark: &str, v6: bool) {
    let families: &[&str] = if v6 { &["-4", "-6"] } else { &["-4"] };
    for family in families {
        let any = if *family == "-4" { "0.0.0.0/0" } else { "::/0" };
        topo.sh_ok(
            pod,
            &["ip", family, "rule", "add", "fwmark", mark, "lookup", "100"],
        );
        topo.sh_ok(
            pod,
            &[
                "ip", family, "route", "add", "local", any, "dev", "lo", "table", "100",
            ],
        );
    }
}

#[test]
fn zds_standin_forwards_redirected_traffic_as_the_workload() {
    const UP: u64 = 64 * 1024;
    const DOWN: u64 = 128 * 1024;
    let topo = Topo::new();
    let socket = socket_path(&topo);
    let (a, b) = (workload(&topo, "a"), workload(&topo, "b"));
    let server = TestServer::start(&socket, vec![a.clone(), b.clone()]);
    let log = topo.work_dir().join("standin.log");
    start_standin(&topo, &socket, &log, &[]);
    let line_for = |client: SocketAddr| {
        wait_event(&log, "the connection's line", |e| {
            e["client"] == client.to_string()
        })
    };

    // Outbound: a -> remote through a's 15001; the proxy connects from a's own address.
    redirect_outbound(&topo, "a", 8080);
    let remote = TcpServer::start(&topo.ns_path("remote"), sa("10.99.0.2:8080"));
    let t = tcp_transfer(&a.netns, None, remote.addr, UP, DOWN, WAIT).expect("a -> remote");
    assert!(t.bytes_down == DOWN && t.pattern_ok, "{t:?}");
    let line = line_for(t.local);
    assert_eq!(line["listener"], 15001, "{line}");
    assert_eq!(line["workload"], "default/app-a", "{line}");
    assert_eq!(line["uid"], "uid-a", "{line}");
    assert_eq!(line["netns_inode"], a.netns_inode, "{line}");
    assert_eq!(line["orig_dst"], "10.99.0.2:8080", "{line}");
    assert_eq!(line["bytes_up"], UP + 8, "{line}");
    assert!(line["error"].is_null(), "{line}");
    let upstream = line["upstream_src"].as_str().expect("upstream_src");
    assert!(upstream.starts_with("10.244.0.10:"), "{line}");
    let rec = remote
        .accepted()
        .into_iter()
        .find(|r| r.peer.to_string() == upstream);
    let rec = rec.unwrap_or_else(|| panic!("remote saw no connection from {upstream}"));
    assert!(rec.pattern_ok && rec.bytes_in == UP, "{rec:?}");

    // Inbound: remote -> b through b's 15006, v4 and v6; the app sees the real client.
    redirect_inbound(&topo, "b", 8080);
    for (addr, client_ip) in [
        ("10.244.0.11:8080", "10.99.0.2"),
        ("[fd00:244::11]:8080", "fd00:99::2"),
    ] {
        let app = TcpServer::start(&b.netns, sa(addr));
        let t = tcp_transfer(&topo.ns_path("remote"), None, app.addr, UP, DOWN, WAIT)
            .unwrap_or_else(|e| panic!("remote -> {addr}: {e}"));
        assert!(t.bytes_down == DOWN && t.pattern_ok, "{addr}: {t:?}");
        let line = line_for(t.local);
        assert_eq!(line["listener"], 15006, "{line}");
        assert_eq!(line["workload"], "default/app-b", "{line}");
        assert_eq!(line["orig_dst"], addr, "{line}");
        assert!(line["error"].is_null(), "{line}");
        let rec = app.accepted();
        assert_eq!(rec.len(), 1, "{addr}: {rec:?}");
        assert_eq!(
            rec[0].peer.ip().to_string(),
            client_ip,
            "{addr}: peer seen by the app"
        );
        assert_eq!(rec[0].peer.to_string(), line["upstream_src"], "{line}");
        assert!(rec[0].pattern_ok && rec[0].bytes_in == UP, "{rec:?}");
    }

    // A del closes a's listeners at once: its redirected outbound fails (closed, not leaked).
    server.set(vec![b.clone()]);
    wait_until(
        "a's listeners gone",
        Duration::from_secs(2),
        || serves_none(&topo, "a"),
        || ss(&topo, "a"),
    );
    let seen = remote.accepted().len();
    let failed = tcp_transfer(&a.netns, None, remote.addr, 1, 1, Duration::from_secs(2));
    assert!(
        failed.is_err(),
        "a reached the remote without its proxy: {failed:?}"
    );
    assert_eq!(
        remote.accepted().len(),
        seen,
        "the remote saw a's connection"
    );
}

// ---------------------------------------------------------------------------------------------
// Tests with a raw client

/// A directory of a test's own under /tmp, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("ztrzds{}x{n}", std::process::id()));
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        TempDir(dir)
    }

    fn socket(&self) -> PathBuf {
        self.0.join("run").join("ztunnel.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// What a raw client got.
enum Received {
    Msg(Vec<u8>, Vec<OwnedFd>),
    Eof,
    Timeout,
}

/// A ZDS client made of the codec, to see exactly what the server sends.
struct RawClient {
    fd: OwnedFd,
    /// Every request received, in order.
    requests: Vec<proto::Request>,
}

impl RawClient {
    fn connect(socket: &Path) -> RawClient {
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        let addr = UnixAddr::new(socket).expect("socket path");
        socket::connect(fd.as_raw_fd(), &addr)
            .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
        RawClient {
            fd,
            requests: Vec::new(),
        }
    }

    fn send(&self, msg: &[u8]) {
        let n = socket::send(self.fd.as_raw_fd(), msg, MsgFlags::MSG_NOSIGNAL).expect("send");
        assert_eq!(n, msg.len(), "short send");
    }

    fn hello(&self) {
        self.send(&proto::encode_hello(&proto::Hello {
            version: proto::VERSION_V1,
        }));
    }

    fn ack(&self, error: &str) {
        self.send(&proto::encode_response(&proto::Ack {
            error: error.into(),
        }));
    }

    fn recv(&self, timeout: Duration) -> Received {
        let limit = TimeVal::new(timeout.as_secs() as _, timeout.subsec_micros() as _);
        socket::setsockopt(&self.fd, sockopt::ReceiveTimeout, &limit).expect("SO_RCVTIMEO");
        let mut buf = vec![0u8; 4096];
        let mut cmsg = nix::cmsg_space!([RawFd; 4]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let (len, fds) = match socket::recvmsg::<UnixAddr>(
            self.fd.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EAGAIN) => return Received::Timeout,
            // The server closed with our last message unread (it stopped right after it
            // arrived): the kernel reports that as a reset rather than EOF.
            Err(Errno::ECONNRESET) => return Received::Eof,
            Err(e) => panic!("recvmsg: {e}"),
            Ok(msg) => {
                let mut fds = Vec::new();
                for c in msg.cmsgs().expect("cmsgs") {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        // SAFETY: descriptors the kernel just installed for us.
                        fds.extend(
                            raw.into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
                (msg.bytes, fds)
            }
        };
        if len == 0 && fds.is_empty() {
            return Received::Eof;
        }
        buf.truncate(len);
        Received::Msg(buf, fds)
    }

    /// The next request (decoded, its fds, its bytes) within `WAIT`.
    fn request(&mut self) -> (proto::Request, Vec<OwnedFd>, Vec<u8>) {
        match self.recv(WAIT) {
            Received::Msg(bytes, fds) => {
                let req = proto::decode_request(&bytes)
                    .unwrap_or_else(|e| panic!("undecodable request {bytes:02x?}: {e}"));
                self.requests.push(req.clone());
                (req, fds, bytes)
            }
            Received::Eof => panic!("EOF instead of a request"),
            Received::Timeout => panic!("no request within {WAIT:?}"),
        }
    }

    /// Asserts nothing arrives for `period`.
    fn quiet(&self, period: Duration) {
        match self.recv(period) {
            Received::Timeout => {}
            Received::Eof => panic!("EOF while waiting for nothing"),
            Received::Msg(bytes, _) => panic!(
                "unexpected {:?}",
                proto::decode_request(&bytes).map_err(|e| e.to_string())
            ),
        }
    }

    fn expect_eof(&self, timeout: Duration) {
        match self.recv(timeout) {
            Received::Eof => {}
            Received::Timeout => panic!("no EOF within {timeout:?}"),
            Received::Msg(bytes, _) => panic!("a message instead of EOF: {bytes:02x?}"),
        }
    }
}

/// Workload `n` in this process's own netns (a raw client never enters it).
fn raw_workload(n: u32) -> Workload {
    let netns = PathBuf::from("/proc/self/ns/net");
    Workload {
        uid: format!("uid-{n}"),
        name: format!("app-{n}"),
        namespace: "raw".into(),
        service_account: format!("sa-{n}"),
        netns_inode: inode(&netns),
        netns,
    }
}

fn add_of(w: &Workload) -> proto::Request {
    proto::Request::Add(proto::Add {
        uid: w.uid.clone(),
        workload_info: Some(proto::WorkloadInfo {
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            service_account: w.service_account.clone(),
        }),
    })
}

impl RawClient {
    /// Takes the add of `w`, checks its netns fd, and acks it with `error`.
    fn take_add(&mut self, w: &Workload, error: &str) {
        let (req, fds, _) = self.request();
        assert_eq!(req, add_of(w));
        assert_eq!(fds.len(), 1, "one fd with the add");
        let st = nix::sys::stat::fstat(&fds[0]).expect("fstat");
        assert_eq!(st.st_ino, w.netns_inode, "the add's netns");
        self.ack(error);
    }

    fn take_snapshot_sent(&mut self) {
        let (req, fds, bytes) = self.request();
        assert_eq!(req, proto::Request::SnapshotSent);
        assert_eq!(bytes, [0x1a, 0x00]);
        assert!(fds.is_empty());
        self.ack("");
    }
}

#[test]
fn zds_raw_client_sees_one_snapshot_then_changes_only() {
    let dir = TempDir::new();
    let socket = dir.socket();
    let w: Vec<Workload> = (1..=4).map(raw_workload).collect();
    let server = TestServer::start(&socket, vec![w[0].clone(), w[1].clone()]);
    let mut c = RawClient::connect(&socket);
    c.hello();
    c.take_add(&w[0], "");
    c.take_add(&w[1], "");
    c.take_snapshot_sent();
    c.quiet(Duration::from_secs(1));

    // A new workload: an add, refused; it comes again after the backoff, on the same
    // connection, and nothing else does.
    server.set(w[..3].to_vec());
    c.take_add(&w[2], "no room");
    let refused = Instant::now();
    c.take_add(&w[2], "");
    assert!(
        refused.elapsed() >= Duration::from_millis(400),
        "retried after {:?}",
        refused.elapsed()
    );
    c.quiet(Duration::from_millis(700));

    // A workload gone: a del, its uid in field 2.
    server.set(vec![w[0].clone(), w[2].clone()]);
    let (req, fds, bytes) = c.request();
    assert_eq!(
        req,
        proto::Request::Del {
            uid: "uid-2".into()
        }
    );
    assert_eq!(
        bytes,
        [[0x12, 0x07, 0x12, 0x05].as_slice(), b"uid-2"].concat()
    );
    assert!(fds.is_empty());
    c.ack("");

    // The source unreadable for a while: logged once, nothing sent, then on as before.
    server.fail_source(Some("pinned state unreadable"));
    server.set(vec![w[0].clone(), w[2].clone(), w[3].clone()]);
    c.quiet(Duration::from_secs(1));
    let complaints = |s: &TestServer| {
        s.lines()
            .iter()
            .filter(|l| l.contains("source: pinned state unreadable"))
            .count()
    };
    assert_eq!(complaints(&server), 1, "{:?}", server.lines());
    server.fail_source(None);
    c.take_add(&w[3], "");
    server.wait_line("the source's recovery", |l| {
        l == "zds: conn 1: source: readable again"
    });

    // A second ztunnel meanwhile gets its own full snapshot.
    let mut c2 = RawClient::connect(&socket);
    c2.hello();
    for wl in [&w[0], &w[2], &w[3]] {
        c2.take_add(wl, "");
    }
    c2.take_snapshot_sent();
    c.quiet(Duration::from_millis(500));

    // Never a second snapshot sent nor a keep on a connection.
    for client in [&c, &c2] {
        let snapshots = client
            .requests
            .iter()
            .filter(|r| **r == proto::Request::SnapshotSent)
            .count();
        assert_eq!(snapshots, 1, "{:?}", client.requests);
        assert!(
            !client
                .requests
                .iter()
                .any(|r| matches!(r, proto::Request::Keep { .. })),
            "{:?}",
            client.requests
        );
    }

    // Stopping closes the connections and removes the socket.
    server.stop().expect("serve returned an error");
    c.expect_eof(WAIT);
    c2.expect_eof(WAIT);
    assert!(!socket.exists());
}

#[test]
fn zds_bad_hello_or_missing_ack_closes_the_connection() {
    let dir = TempDir::new();
    let socket = dir.socket();
    let server = TestServer::start(&socket, vec![raw_workload(1)]);

    let bad = RawClient::connect(&socket);
    bad.send(&proto::encode_hello(&proto::Hello { version: 2 }));
    bad.expect_eof(WAIT);
    server.wait_line("the bad hello", |l| {
        l == "zds: conn 1: closed (bad hello: version 2 unsupported (only 1))"
    });

    // No ack within 5 s: the connection is given up; the next ztunnel starts afresh.
    let mut slow = RawClient::connect(&socket);
    slow.hello();
    let (req, _, _) = slow.request();
    assert_eq!(req, add_of(&raw_workload(1)));
    let sent = Instant::now();
    slow.expect_eof(Duration::from_secs(8));
    assert!(
        sent.elapsed() >= Duration::from_millis(4900),
        "gave up after {:?}",
        sent.elapsed()
    );
    server.wait_line("the timeout", |l| {
        l == "zds: conn 2: closed (no ack within 5s)"
    });
    let mut next = RawClient::connect(&socket);
    next.hello();
    next.take_add(&raw_workload(1), "");
    next.take_snapshot_sent();
}

#[test]
fn zds_live_server_is_refused_and_a_stale_socket_replaced() {
    let dir = TempDir::new();
    let socket = dir.socket();
    let shown = socket.display().to_string();
    let first = TestServer::start(&socket, vec![]);
    let stop = AtomicBool::new(false);
    let second = |socket: &Path| {
        zds::serve_with_log(socket, &|| Ok(vec![]), &stop, &|_| {})
            .expect_err("a second server started")
    };
    let msg = format!("{:#}", second(&socket));
    assert_eq!(
        msg,
        format!("zds socket {shown}: another server is listening on it")
    );

    // The first still serves.
    let mut c = RawClient::connect(&socket);
    c.hello();
    c.take_snapshot_sent();
    first.stop().expect("serve returned an error");
    c.expect_eof(WAIT);
    assert!(!socket.exists());

    // A socket file whose server died is replaced.
    drop(UnixListener::bind(&socket).expect("bind a stale socket"));
    assert!(socket.exists());
    let server = TestServer::start(&socket, vec![]);
    server.wait_line("the stale socket", |l| {
        l == format!("zds: removed stale socket {shown}")
    });
    let mut c = RawClient::connect(&socket);
    c.hello();
    c.take_snapshot_sent();
    server.stop().expect("serve returned an error");

    // Neither a live server of another socket type nor a file that is no socket is touched.
    let stream = UnixListener::bind(&socket).expect("bind a stream socket");
    let msg = format!("{:#}", second(&socket));
    assert!(
        msg.contains(&shown) && msg.contains("another socket type"),
        "{msg}"
    );
    drop(stream);
    fs::remove_file(&socket).unwrap();
    fs::write(&socket, "not a socket").unwrap();
    let msg = format!("{:#}", second(&socket));
    assert_eq!(
        msg,
        format!("zds socket {shown}: exists and is not a socket; not replacing it")
    );
    assert_eq!(fs::read_to_string(&socket).unwrap(), "not a socket");
}

#[test]
fn zds_run_returns_on_sigterm() {
    let dir = TempDir::new();
    let socket = dir.socket();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let path = socket.clone();
    thread::spawn(move || {
        // SAFETY: pthread_self has no preconditions.
        tid_tx.send(unsafe { libc::pthread_self() }).unwrap();
        let _ =
            done_tx.send(zds::run(&path, &|| Ok(vec![]), &|_| {}).map_err(|e| format!("{e:#}")));
    });
    let tid = tid_rx.recv().unwrap();
    // run installs its handlers before it binds: once connectable, SIGTERM is caught.
    wait_until("the socket", WAIT, || socket.exists(), String::new);
    let mut c = RawClient::connect(&socket);
    c.hello();
    c.take_snapshot_sent();
    // To the serving thread only, so no other test's thread sees an EINTR.
    // SAFETY: `tid` is a live thread of this process (it is blocked in run).
    assert_eq!(unsafe { libc::pthread_kill(tid, libc::SIGTERM) }, 0);
    let result = done_rx.recv_timeout(WAIT).expect("run did not return");
    assert_eq!(result, Ok(()));
    c.expect_eof(WAIT);
    assert!(!socket.exists());
}

/// A stand-in process the test started by itself (no namespace needed: it never gets an
/// add with a netns); killed and reaped on drop.
struct Standin(std::process::Child);

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn zds_standin_exits_on_what_ztunnel_exits_on() {
    use proto::Request::{Add, Keep, SnapshotSent};
    // The stand-in is as strict as ztunnel, so that the other tests would see a server that
    // sends any of these: the stand-in would be gone.
    let dir = TempDir::new();
    let cases = [
        (
            "keep uid=k after the snapshot",
            vec![SnapshotSent, Keep { uid: "k".into() }],
        ),
        (
            "a second snapshot sent on one connection",
            vec![SnapshotSent, SnapshotSent],
        ),
        (
            "add uid=u without workload info",
            vec![Add(proto::Add {
                uid: "u".into(),
                workload_info: None,
            })],
        ),
    ];
    for (i, (error, requests)) in cases.into_iter().enumerate() {
        let path = dir.0.join(format!("{i}.sock"));
        let log = dir.0.join(format!("{i}.log"));
        let listener = socket::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .expect("socket");
        socket::bind(listener.as_raw_fd(), &UnixAddr::new(&path).unwrap()).expect("bind");
        socket::listen(&listener, socket::Backlog::new(1).unwrap()).expect("listen");
        let mut standin = Standin(
            std::process::Command::new(STANDIN)
                .args(["--in-pod", "--zds", path.to_str().unwrap()])
                .args(["--log", log.to_str().unwrap()])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start the stand-in"),
        );
        let mut fd = None;
        wait_until(
            "the stand-in's connection",
            WAIT,
            || {
                fd = socket::accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC).ok();
                fd.is_some()
            },
            String::new,
        );
        // SAFETY: accept4 returned a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd.unwrap()) };
        let peer = RawClient {
            fd,
            requests: Vec::new(),
        };
        let Received::Msg(hello, _) = peer.recv(WAIT) else {
            panic!("{error}: no hello");
        };
        assert_eq!(hello, [0x08, 0x01], "{error}: hello");
        let last = requests.len() - 1;
        for (n, req) in requests.iter().enumerate() {
            peer.send(&proto::encode_request(req));
            if n < last {
                let Received::Msg(ack, _) = peer.recv(WAIT) else {
                    panic!("{error}: no ack of {req:?}");
                };
                assert_eq!(ack, [0x0a, 0x00], "{error}: ack of {req:?}");
            }
        }
        peer.expect_eof(WAIT);
        let mut status = None;
        wait_until(
            "the stand-in's exit",
            WAIT,
            || {
                status = standin.0.try_wait().expect("try_wait");
                status.is_some()
            },
            String::new,
        );
        assert_eq!(status.unwrap().code(), Some(1), "{error}: exit status");
        let logged = events_of(&log, "zds-protocol-error");
        assert_eq!(logged.len(), 1, "{error}: {logged:?}");
        assert_eq!(logged[0]["error"], error);
    }
}
