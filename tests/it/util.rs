// SPDX-License-Identifier: Apache-2.0
//! Network-namespace test harness.
//!
//! `Topo::new()` builds a small Kubernetes-like node out of network namespaces (a node, a
//! ztunnel pod, three workload pods and a remote server behind the node), wired the way
//! point-to-point CNIs do it: each pod has a /32 (/128) on `eth0`, a link-scope route to the
//! fake gateway 169.254.1.1 (fe80::1) that the node answers on every pod veth, and the node has a
//! host route per pod. Everything lives in namespaces and a private bpffs that the `Topo` made
//! itself; dropping it (also while unwinding from a failed assertion) removes all of it, so the
//! machine's own namespace is never touched.
//!
//! The traffic helpers create their sockets inside a namespace from a short-lived thread that
//! called `setns(CLONE_NEWNET)`: a socket stays in the namespace it was created in, so the rest
//! of the I/O can happen on any thread.
#![allow(dead_code)] // Each test binary uses a different subset of these helpers.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{killpg, Signal};
use nix::sys::socket::{
    bind, connect, getsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage,
};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

// ---------------------------------------------------------------------------------------------
// Addressing plan
// ---------------------------------------------------------------------------------------------

/// The node's "host IPs", on `up0`, the link to the remote server.
pub const HOST_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
pub const HOST_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 1);
/// The remote server, reached through the node.
pub const REMOTE_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
pub const REMOTE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 2);
/// The gateway every pod routes through; the node owns it on every pod veth.
pub const POD_GW_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
pub const POD_GW_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// One pod on the node: its namespace suffix, the node-side veth name and its addresses.
pub struct PodSpec {
    pub name: &'static str,
    pub veth: &'static str,
    pub v4: Ipv4Addr,
    pub v6: Option<Ipv6Addr>,
}

const fn pod_v6(last: u16) -> Option<Ipv6Addr> {
    Some(Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, last))
}

pub const PODS: [PodSpec; 4] = [
    PodSpec {
        name: "zt",
        veth: "vzt",
        v4: Ipv4Addr::new(10, 244, 0, 2),
        v6: pod_v6(0x2),
    },
    PodSpec {
        name: "a",
        veth: "va",
        v4: Ipv4Addr::new(10, 244, 0, 10),
        v6: None,
    },
    PodSpec {
        name: "b",
        veth: "vb",
        v4: Ipv4Addr::new(10, 244, 0, 11),
        v6: pod_v6(0x11),
    },
    PodSpec {
        name: "srv",
        veth: "vsrv",
        v4: Ipv4Addr::new(10, 244, 0, 20),
        v6: pod_v6(0x20),
    },
];

/// Every namespace a `Topo` has, by suffix.
pub const NAMESPACES: [&str; 6] = ["node", "zt", "a", "b", "srv", "remote"];

/// The spec of pod `name` ("zt", "a", "b", "srv"); panics on anything else.
pub fn pod(name: &str) -> &'static PodSpec {
    PODS.iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("unknown pod {name:?}; pods are zt, a, b, srv"))
}

/// Where `ip netns` (and `ip -n`, `nsenter --net=`) look for named namespaces.
const NETNS_DIR: &str = "/run/netns";
/// Read/write timeout of every traffic helper socket, so a broken path fails instead of hanging.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long spawned processes get between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------------
// Topo
// ---------------------------------------------------------------------------------------------

pub struct Topo {
    /// `ztr<pid>x<n>`: unique per process and per `Topo`, so parallel tests never collide.
    prefix: String,
    /// `/tmp/<prefix>`: holds the bpffs mount point and the logs of spawned processes.
    tmp_dir: PathBuf,
    tmp_made: bool,
    pin_dir: PathBuf,
    bpffs_mounted: bool,
    /// Full names of the namespaces this `Topo` created (never one it found already there).
    netns: Vec<String>,
    children: Mutex<Vec<Spawned>>,
    spawn_seq: AtomicUsize,
}

struct Spawned {
    child: Child,
    what: String,
    log: PathBuf,
}

/// Process-wide bookkeeping of /run/netns. The directory lives on the root filesystem here, so
/// if this process had to create it, the last `Topo` to go removes it again. Creating our own
/// bind mounts (instead of `ip netns add`) also avoids the self-bind mount `ip` leaves on it.
struct NetnsDirState {
    created: bool,
    live: usize,
}

static NETNS_DIR_STATE: Mutex<NetnsDirState> = Mutex::new(NetnsDirState {
    created: false,
    live: 0,
});

impl Topo {
    /// Builds the whole topology. On failure it panics naming the step that failed; what was
    /// already made is removed by `Drop` while the panic unwinds.
    pub fn new() -> Topo {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let prefix = format!(
            "ztr{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let tmp_dir = std::env::temp_dir().join(&prefix);
        let mut topo = Topo {
            pin_dir: tmp_dir.join("bpf"),
            tmp_dir,
            tmp_made: false,
            bpffs_mounted: false,
            netns: Vec::new(),
            children: Mutex::new(Vec::new()),
            spawn_seq: AtomicUsize::new(0),
            prefix,
        };
        topo.make_dirs_and_bpffs();
        for suffix in NAMESPACES {
            topo.add_netns(suffix);
        }
        topo.wire();
        topo
    }

    /// Full namespace name of "node", "zt", "a", "b", "srv" or "remote".
    pub fn ns(&self, pod: &str) -> String {
        assert!(
            NAMESPACES.contains(&pod),
            "unknown namespace {pod:?}; expected one of {NAMESPACES:?}"
        );
        format!("{}-{pod}", self.prefix)
    }

    pub fn ns_path(&self, pod: &str) -> PathBuf {
        Path::new(NETNS_DIR).join(self.ns(pod))
    }

    /// A private bpffs instance, so pins of parallel tests never meet.
    pub fn pin_dir(&self) -> PathBuf {
        self.pin_dir.clone()
    }

    /// Runs `args` inside the namespace of `pod` and captures its output.
    pub fn sh(&self, pod: &str, args: &[&str]) -> Output {
        let mut cmd = self.nsenter(pod, args);
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", describe(&cmd)))
    }

    /// Like `sh`, but panics (naming the command and quoting its stderr) unless it exits 0.
    /// Returns stdout.
    pub fn sh_ok(&self, pod: &str, args: &[&str]) -> String {
        run_ok(&mut self.nsenter(pod, args), None)
    }

    /// Starts `args` in the background inside `pod`'s namespace, stdout and stderr going to a
    /// log file (see `log`), in a process group of its own. `kill` or the drop stops it and
    /// anything it started, and reaps it.
    pub fn spawn(&self, pod: &str, args: &[&str], env: &[(&str, &str)]) -> u32 {
        assert!(!args.is_empty(), "spawn needs a program");
        let n = self.spawn_seq.fetch_add(1, Ordering::SeqCst);
        let prog = Path::new(args[0])
            .file_name()
            .map_or("prog".into(), |p| p.to_string_lossy());
        let log = self.tmp_dir.join(format!("{n}-{prog}.log"));
        let out = File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out.try_clone().expect("dup log file");
        let mut cmd = self.nsenter(pod, args);
        cmd.envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // Its own process group, so stopping it also stops whatever it started (a shell's
        // children would otherwise outlive it).
        cmd.process_group(0);
        let what = describe(&cmd);
        // nsenter only enters a network namespace, so it execs the program without forking:
        // the PID we get is the program's own.
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{what}`: {e}"));
        let pid = child.id();
        lock(&self.children).push(Spawned { child, what, log });
        pid
    }

    /// Stops one process started by `spawn` (SIGTERM, then SIGKILL) and reaps it. PIDs this
    /// `Topo` did not spawn, or already stopped, are ignored.
    pub fn kill(&self, pid: u32) {
        let proc = {
            let mut children = lock(&self.children);
            let at = children.iter().position(|s| s.child.id() == pid);
            at.map(|i| children.remove(i))
        };
        if let Some(proc) = proc {
            stop_all(vec![proc]);
        }
    }

    /// What a spawned process printed so far (stdout and stderr interleaved).
    pub fn log(&self, pid: u32) -> String {
        let children = lock(&self.children);
        let proc = children.iter().find(|s| s.child.id() == pid);
        let proc = proc.unwrap_or_else(|| panic!("pid {pid} is not a running spawned process"));
        String::from_utf8_lossy(&fs::read(&proc.log).unwrap_or_default()).into_owned()
    }

    /// Turns GRO on `iface` in `pod` on or off; returns whether the interface now reports that
    /// state (veth only aggregates on the receiving side when its GRO is on).
    pub fn set_gro(&self, pod: &str, iface: &str, on: bool) -> bool {
        let want = if on { "on" } else { "off" };
        let set = self.sh(pod, &["ethtool", "-K", iface, "gro", want]);
        if !set.status.success() {
            eprintln!(
                "ethtool -K {iface} gro {want} in {}: {}",
                self.ns(pod),
                String::from_utf8_lossy(&set.stderr).trim()
            );
        }
        let shown = self.sh_ok(pod, &["ethtool", "-k", iface]);
        let state = format!("generic-receive-offload: {want}");
        shown.lines().any(|l| l.trim_start().starts_with(&state))
    }

    /// A command that runs `args` in `pod`'s namespace, to be started by the caller.
    pub fn nsenter(&self, pod: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.ns_path(pod).display()))
            .arg("--")
            .args(args);
        cmd
    }

    fn make_dirs_and_bpffs(&mut self) {
        // create_dir, not create_dir_all: a leftover directory of the same name is not ours.
        fs::create_dir(&self.tmp_dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", self.tmp_dir.display()));
        self.tmp_made = true;
        fs::create_dir(&self.pin_dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", self.pin_dir.display()));
        mount(
            Some("bpf"),
            &self.pin_dir,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("mount -t bpf bpf {}: {e}", self.pin_dir.display()));
        self.bpffs_mounted = true;
    }

    /// Creates namespace `<prefix>-<suffix>` the way `ip netns add` does (an empty file in
    /// /run/netns with the namespace bind-mounted on it) and sets its sysctls, all from a thread
    /// that unshared into the new namespace: /proc/sys/net belongs to the opening thread's netns.
    fn add_netns(&mut self, suffix: &str) {
        let name = self.ns(suffix);
        let path = Path::new(NETNS_DIR).join(&name);
        {
            let mut dir = lock(&NETNS_DIR_STATE);
            if !Path::new(NETNS_DIR).exists() {
                fs::create_dir(NETNS_DIR).unwrap_or_else(|e| panic!("create {NETNS_DIR}: {e}"));
                dir.created = true;
            }
            // create_new: never adopt a namespace somebody else made.
            File::options()
                .write(true)
                .create_new(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
            dir.live += 1;
            self.netns.push(name);
        }
        let node = suffix == "node";
        on_fresh_thread(move || {
            unshare(CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("unshare(CLONE_NEWNET): {e}"));
            mount(
                Some("/proc/thread-self/ns/net"),
                &path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .unwrap_or_else(|e| panic!("bind-mount the new netns on {}: {e}", path.display()));
            // A new namespace may inherit ip_forward=1; only the node routes. DAD off before any
            // interface exists so every address is usable at once ("all" is OR-ed in by the
            // kernel, "default" is what new and moved-in interfaces start with).
            sysctl("net/ipv4/ip_forward", if node { "1" } else { "0" });
            if node {
                sysctl("net/ipv6/conf/all/forwarding", "1");
            }
            sysctl("net/ipv6/conf/all/accept_dad", "0");
            sysctl("net/ipv6/conf/default/accept_dad", "0");
        });
    }

    /// Creates the veths, addresses and routes with one `ip -batch` per namespace: the link to
    /// the remote first, then the node (which creates each pod's eth0 directly in the pod's
    /// namespace), then the remote and the pods; then waits until every link is ready.
    fn wire(&self) {
        // The kernel applies a veth's carrier change at once only when its ifindex differs from
        // its peer's, otherwise up to a second later (linkwatch), which stalls the first
        // packets. Every pod's eth0 is index 2 and faces a node veth numbered 3 and up; up0 is
        // the node's index 2, so the remote's eth0 is created (from the remote side, the only
        // side `ip` lets us number) with another index.
        self.ip_batch(
            "remote",
            &[format!(
                "link add eth0 index 10 type veth peer name up0 netns {}",
                self.ns("node")
            )],
        );
        let mut node = vec!["link set lo up".to_string()];
        node.extend([
            format!("addr add {HOST_V4}/24 dev up0"),
            format!("addr add {HOST_V6}/64 dev up0 nodad"),
            "link set up0 up".to_string(),
        ]);
        for p in &PODS {
            node.extend([
                format!(
                    "link add {} type veth peer name eth0 netns {}",
                    p.veth,
                    self.ns(p.name)
                ),
                format!("addr add {POD_GW_V4}/32 dev {}", p.veth),
                format!("addr add {POD_GW_V6}/64 dev {} nodad", p.veth),
                format!("link set {} up", p.veth),
                format!("route add {}/32 dev {} src {HOST_V4}", p.v4, p.veth),
            ]);
            if let Some(v6) = p.v6 {
                node.push(format!("route add {v6}/128 dev {} src {HOST_V6}", p.veth));
            }
        }
        self.ip_batch("node", &node);

        self.ip_batch(
            "remote",
            &[
                "link set lo up".to_string(),
                format!("addr add {REMOTE_V4}/24 dev eth0"),
                format!("addr add {REMOTE_V6}/64 dev eth0 nodad"),
                "link set eth0 up".to_string(),
                format!("route add default via {HOST_V4}"),
                // `::/0` rather than `default`: batch lines cannot carry `-6`.
                format!("route add ::/0 via {HOST_V6}"),
            ],
        );
        for p in &PODS {
            self.make_pod(p);
        }
        self.wait_ready();
    }

    /// The pod side of a point-to-point CNI: host addresses on eth0, a link-scope route to
    /// the gateway the node answers for, and default routes through it.
    fn make_pod(&self, p: &PodSpec) {
        let mut script = vec![
            "link set lo up".to_string(),
            format!("addr add {}/32 dev eth0", p.v4),
        ];
        if let Some(v6) = p.v6 {
            script.push(format!("addr add {v6}/128 dev eth0 nodad"));
        }
        script.extend([
            "link set eth0 up".to_string(),
            format!("route add {POD_GW_V4} dev eth0 scope link"),
            format!("route add default via {POD_GW_V4} dev eth0"),
        ]);
        if p.v6.is_some() {
            script.push(format!("route add ::/0 via {POD_GW_V6} dev eth0"));
        }
        self.ip_batch(p.name, &script);
    }

    /// Waits until the kernel has every interface ready, which it shows by giving it its own
    /// (EUI-64) link-local address. Carrier changes are applied asynchronously: until then the
    /// device drops packets and IPv6 treats the link as down, so a test's first connection
    /// would be lost and only retried a second later.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        for ns in NAMESPACES {
            let ifaces: Vec<&str> = match ns {
                "node" => std::iter::once("up0")
                    .chain(PODS.iter().map(|p| p.veth))
                    .collect(),
                _ => vec!["eth0"],
            };
            let mut cmd = Command::new("ip");
            cmd.args(["-n", &self.ns(ns)])
                .args(["-o", "-6", "addr", "show", "scope", "link"]);
            loop {
                let out = run_ok(&mut cmd, None);
                // Lines look like "2: eth0    inet6 fe80::.../64 scope link ...".
                let ready = |iface: &str| {
                    out.lines()
                        .map(|l| l.split_whitespace().collect::<Vec<_>>())
                        .any(|f| {
                            f.get(1) == Some(&iface)
                                && f.get(3).is_some_and(|a| !a.starts_with("fe80::1/"))
                        })
                };
                let pending: Vec<&str> = ifaces.iter().copied().filter(|i| !ready(i)).collect();
                if pending.is_empty() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{pending:?} in {} not ready after 5 s; `ip -6 addr show scope link`:\n{out}",
                    self.ns(ns)
                );
                thread::sleep(Duration::from_millis(5));
            }
        }
    }

    fn ip_batch(&self, pod: &str, lines: &[String]) {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.ns(pod), "-batch", "-"]);
        run_ok(&mut cmd, Some(&lines.join("\n")));
    }
}

impl Drop for Topo {
    /// Removes everything in reverse order of creation and never panics (it also runs while a
    /// failed test unwinds); problems are reported on stderr, "already gone" is not a problem.
    fn drop(&mut self) {
        let procs = std::mem::take(&mut *lock(&self.children));
        let dump_logs = thread::panicking();
        let logs: Vec<(String, PathBuf)> = procs
            .iter()
            .map(|p| (p.what.clone(), p.log.clone()))
            .collect();
        stop_all(procs);
        if dump_logs {
            for (what, log) in logs {
                let text = fs::read(&log).unwrap_or_default();
                let tail = &text[text.len().saturating_sub(8192)..];
                eprintln!(
                    "--- output of `{what}` ---\n{}",
                    String::from_utf8_lossy(tail)
                );
            }
        }

        for name in self.netns.drain(..).rev() {
            delete_netns(&name);
        }
        if self.bpffs_mounted {
            match umount2(&self.pin_dir, MntFlags::MNT_DETACH) {
                Ok(()) | Err(Errno::ENOENT) | Err(Errno::EINVAL) => self.bpffs_mounted = false,
                Err(e) => eprintln!("umount {}: {e}", self.pin_dir.display()),
            }
        }
        // Only once the bpffs is detached: never recurse into a still-mounted filesystem.
        if self.tmp_made && !self.bpffs_mounted {
            if let Err(e) = fs::remove_dir_all(&self.tmp_dir) {
                if e.kind() != io::ErrorKind::NotFound {
                    eprintln!("remove {}: {e}", self.tmp_dir.display());
                }
            }
        }
    }
}

/// The inverse of `add_netns`, i.e. what `ip netns del` does. The namespace itself (and every
/// veth in it, with its peer) goes away once nothing holds it any more.
fn delete_netns(name: &str) {
    let path = Path::new(NETNS_DIR).join(name);
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::ENOENT) | Err(Errno::EINVAL) => {}
        Err(e) => eprintln!("umount {}: {e}", path.display()),
    }
    if let Err(e) = fs::remove_file(&path) {
        if e.kind() != io::ErrorKind::NotFound {
            eprintln!("remove {}: {e}", path.display());
        }
    }
    let mut dir = lock(&NETNS_DIR_STATE);
    dir.live -= 1;
    if dir.live == 0 && dir.created {
        // Fails harmlessly if someone else put a namespace there meanwhile.
        if fs::remove_dir(NETNS_DIR).is_ok() {
            dir.created = false;
        }
    }
}

/// Stops spawned processes with everything they started: SIGTERM to each process group, up to
/// `TERM_GRACE` for the leaders to exit, SIGKILL to whatever is left of the groups, then reap.
/// A leader stays unreaped (a zombie at worst) until after the last signal, so its PID, which
/// is also its group's id, cannot have been reused by an unrelated process.
fn stop_all(mut procs: Vec<Spawned>) {
    let group = |p: &Spawned| Pid::from_raw(p.child.id() as i32);
    for p in &procs {
        let _ = killpg(group(p), Signal::SIGTERM);
    }
    let exited = |p: &Spawned| {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        !matches!(waitid(Id::Pid(group(p)), flags), Ok(WaitStatus::StillAlive))
    };
    let deadline = Instant::now() + TERM_GRACE;
    let mut running: Vec<&Spawned> = procs.iter().collect();
    while !running.is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
        running.retain(|p| !exited(p));
    }
    for p in running {
        eprintln!(
            "`{}` ignored SIGTERM for {TERM_GRACE:?}; sending SIGKILL",
            p.what
        );
    }
    for p in &mut procs {
        let _ = killpg(group(p), Signal::SIGKILL);
        let _ = p.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

/// Locks `m` even if a panicking test thread poisoned it: the data (lists of things to clean
/// up) stays valid.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs `cmd` to completion, feeding it `stdin`, and returns its stdout; panics naming the
/// command, its input and its stderr unless it exits 0.
fn run_ok(cmd: &mut Command, stdin: Option<&str>) -> String {
    let what = describe(cmd);
    let input = if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    cmd.stdin(input)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{what}`: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(input.as_bytes())
            .unwrap_or_else(|e| panic!("writing the input of `{what}`: {e}"));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for `{what}`: {e}"));
    if !out.status.success() {
        let input = stdin.map(|s| format!("\ninput:\n{s}")).unwrap_or_default();
        panic!(
            "`{what}` failed ({}){input}\nstderr: {}\nstdout: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes a sysctl of the calling thread's network namespace (`key` as a /proc/sys path).
fn sysctl(key: &str, value: &str) {
    let path = format!("/proc/sys/{key}");
    fs::write(&path, value).unwrap_or_else(|e| panic!("write {value} to {path}: {e}"));
}

/// Runs `f` on a new thread, so namespace changes it makes die with that thread; its panic is
/// re-raised here.
fn on_fresh_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match thread::spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Runs `f` on a thread that joined the network namespace at `ns_path`; sockets it creates
/// belong to that namespace for good.
pub fn in_netns<T: Send + 'static>(ns_path: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = File::open(ns_path).unwrap_or_else(|e| panic!("open {}: {e}", ns_path.display()));
    let shown = ns_path.display().to_string();
    on_fresh_thread(move || {
        setns(&ns, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns({shown}): {e}"));
        f()
    })
}

/// Wakes a thread blocked in accept, poll or receive on socket `fd`: shutting a listening or
/// unconnected UDP socket down wakes its waiters at once on Linux.
fn wake(fd: RawFd) {
    // SAFETY: plain syscall on a descriptor the caller owns; errors (ENOTCONN for UDP, which
    // still wakes) are irrelevant.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// Waits until `fd` reports one of `events` (or an error); false on timeout.
fn wait_fd(fd: RawFd, events: libc::c_short, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd, count 1.
        match unsafe { libc::poll(&mut pfd, 1, ms) } {
            -1 if Errno::last() == Errno::EINTR => continue,
            -1 => return Err(io::Error::last_os_error()),
            0 => return Ok(false),
            _ => return Ok(true),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Payload pattern: byte i of every stream is (i % 251) as u8. A prime period does not line up
// with buffer or segment sizes, so lost, duplicated or reordered chunks are caught.
// ---------------------------------------------------------------------------------------------

const PERIOD: usize = 251;
const PATTERN_LEN: usize = PERIOD * 256;
static PATTERN: [u8; PATTERN_LEN] = {
    let mut p = [0u8; PATTERN_LEN];
    let mut i = 0;
    while i < PATTERN_LEN {
        p[i] = (i % PERIOD) as u8;
        i += 1;
    }
    p
};

/// The pattern from stream offset `offset` on, at most `max` bytes.
fn pattern_at(offset: u64, max: u64) -> &'static [u8] {
    let start = (offset % PERIOD as u64) as usize;
    let len = (PATTERN_LEN - start).min(usize::try_from(max).unwrap_or(usize::MAX));
    &PATTERN[start..start + len]
}

/// Writes `n` pattern bytes; returns how many were written before an error, if any.
fn write_pattern(w: &mut impl Write, n: u64) -> (u64, io::Result<()>) {
    let mut sent = 0;
    while sent < n {
        let chunk = pattern_at(sent, n - sent);
        if let Err(e) = w.write_all(chunk) {
            return (sent, Err(e));
        }
        sent += chunk.len() as u64;
    }
    (sent, Ok(()))
}

/// Counts and checks a pattern stream as it is read.
struct PatternCheck {
    bytes: u64,
    ok: bool,
}

impl PatternCheck {
    /// Reads `r` to EOF; on error `bytes` tells how far it got.
    fn read_to_eof(r: &mut impl Read) -> (PatternCheck, io::Result<()>) {
        let mut check = PatternCheck { bytes: 0, ok: true };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => return (check, Ok(())),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return (check, Err(e)),
            };
            check.ok = check.ok && check.matches(&buf[..n]);
            check.bytes += n as u64;
        }
    }

    fn matches(&self, mut data: &[u8]) -> bool {
        let mut offset = self.bytes;
        while !data.is_empty() {
            let want = pattern_at(offset, data.len() as u64);
            if data[..want.len()] != *want {
                return false;
            }
            offset += want.len() as u64;
            data = &data[want.len()..];
        }
        true
    }
}

// ---------------------------------------------------------------------------------------------
// TCP
// ---------------------------------------------------------------------------------------------

/// What the server saw of one finished connection.
#[derive(Clone, Debug)]
pub struct ConnRecord {
    pub peer: SocketAddr,
    /// The server's own address on the connection (the client's original destination).
    pub local: SocketAddr,
    /// Payload bytes received, without the 8-byte header.
    pub bytes_in: u64,
    /// Whether the whole request arrived intact: header, then the pattern up to EOF.
    pub pattern_ok: bool,
    /// Bytes of the reply actually written.
    pub bytes_out: u64,
}

/// Test server. Protocol: the client sends a big-endian u64 N, then its payload, then shuts
/// down its write side; the server reads to EOF, then sends N pattern bytes and closes.
pub struct TcpServer {
    pub addr: SocketAddr,
    /// A second handle on the listening socket, to wake the accept loop on drop.
    listener: TcpListener,
    records: Arc<Mutex<Vec<ConnRecord>>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl TcpServer {
    /// Listens on `bind` (port 0 picks one; see `addr`) inside the namespace at `ns_path`.
    pub fn start(ns_path: &Path, bind: SocketAddr) -> TcpServer {
        let listener = in_netns(ns_path, move || TcpListener::bind(bind))
            .unwrap_or_else(|e| panic!("bind TCP {bind} in {}: {e}", ns_path.display()));
        let addr = listener.local_addr().expect("listener address");
        // Nonblocking + poll with a timeout, so the accept loop notices `stop`.
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let records = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (records, stop) = (records.clone(), stop.clone());
            let listener = listener.try_clone().expect("dup listening socket");
            thread::spawn(move || accept_loop(listener, &stop, &records))
        };
        TcpServer {
            addr,
            listener,
            records,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// One record per finished connection, in order of completion. A connection's record is
    /// stored before the server closes it, so it is there once the client has seen EOF.
    pub fn accepted(&self) -> Vec<ConnRecord> {
        lock(&self.records).clone()
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        wake(self.listener.as_raw_fd());
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: TcpListener, stop: &AtomicBool, records: &Arc<Mutex<Vec<ConnRecord>>>) {
    let mut conns: Vec<(TcpStream, JoinHandle<()>)> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let spare = stream.try_clone();
                let records = records.clone();
                let handler = thread::spawn(move || serve_conn(stream, &records));
                match spare {
                    Ok(spare) => conns.push((spare, handler)),
                    Err(_) => drop(handler), // cannot interrupt it; its timeouts end it
                }
            }
            Err(_) if stop.load(Ordering::SeqCst) => break,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // `wake` ends the wait early on drop; the timeout is only a fallback.
                let _ = wait_fd(
                    listener.as_raw_fd(),
                    libc::POLLIN,
                    Duration::from_millis(200),
                );
            }
            Err(e) => {
                // e.g. ECONNABORTED: the peer gave up before we accepted; keep serving.
                eprintln!("accept on {:?}: {e}", listener.local_addr());
                thread::sleep(Duration::from_millis(10));
            }
        }
        conns.retain(|(_, h)| !h.is_finished());
    }
    // Wake handlers still blocked on a peer and wait for them: no thread outlives the server.
    for (stream, handler) in conns {
        let _ = stream.shutdown(Shutdown::Both);
        let _ = handler.join();
    }
}

fn serve_conn(mut s: TcpStream, records: &Mutex<Vec<ConnRecord>>) {
    let (Ok(peer), Ok(local)) = (s.peer_addr(), s.local_addr()) else {
        return; // already reset by the peer
    };
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    let mut rec = ConnRecord {
        peer,
        local,
        bytes_in: 0,
        pattern_ok: false,
        bytes_out: 0,
    };
    let mut header = [0u8; 8];
    if s.read_exact(&mut header).is_ok() {
        let (rx, res) = PatternCheck::read_to_eof(&mut s);
        rec.bytes_in = rx.bytes;
        rec.pattern_ok = rx.ok && res.is_ok();
        if res.is_ok() {
            rec.bytes_out = write_pattern(&mut s, u64::from_be_bytes(header)).0;
        }
    }
    lock(records).push(rec);
    // Only now, with the record visible, let the client see EOF. An explicit shutdown because
    // the accept loop holds a clone of this socket, so dropping `s` alone would not close it.
    let _ = s.shutdown(Shutdown::Both);
}

/// What a client saw of one `tcp_transfer`.
#[derive(Clone, Debug)]
pub struct Transfer {
    /// The client's own address (what the server should see as its peer).
    pub local: SocketAddr,
    pub bytes_down: u64,
    pub pattern_ok: bool,
}

/// One exchange with a `TcpServer`: connects from inside the namespace at `ns_path` (bound to
/// `src` if given), sends the header asking for `down` bytes and `up` pattern bytes, shuts down
/// its write side and reads to EOF.
pub fn tcp_transfer(
    ns_path: &Path,
    src: Option<SocketAddr>,
    dst: SocketAddr,
    up: u64,
    down: u64,
    connect_timeout: Duration,
) -> io::Result<Transfer> {
    let mut s = in_netns(ns_path, move || connect_from(src, dst, connect_timeout))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let local = s.local_addr()?;
    s.write_all(&down.to_be_bytes())?;
    write_pattern(&mut s, up).1?;
    s.shutdown(Shutdown::Write)?;
    let (rx, res) = PatternCheck::read_to_eof(&mut s);
    res?;
    Ok(Transfer {
        local,
        bytes_down: rx.bytes,
        pattern_ok: rx.ok,
    })
}

/// `TcpStream::connect_timeout` with an optional source address.
fn connect_from(
    src: Option<SocketAddr>,
    dst: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let family = if dst.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
    let fd = socket(family, SockType::Stream, flags, None)?;
    if let Some(src) = src {
        bind(fd.as_raw_fd(), &SockaddrStorage::from(src))?;
    }
    match connect(fd.as_raw_fd(), &SockaddrStorage::from(dst)) {
        Ok(()) | Err(Errno::EINPROGRESS) => {}
        Err(e) => return Err(e.into()),
    }
    if !wait_fd(fd.as_raw_fd(), libc::POLLOUT, timeout)? {
        let msg = format!("connect to {dst} timed out after {timeout:?}");
        return Err(io::Error::new(io::ErrorKind::TimedOut, msg));
    }
    match getsockopt(&fd, sockopt::SocketError)? {
        0 => {}
        err => return Err(io::Error::from_raw_os_error(err)),
    }
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

// ---------------------------------------------------------------------------------------------
// UDP
// ---------------------------------------------------------------------------------------------

/// UDP echo server: every datagram goes back to its sender unchanged.
pub struct UdpEcho {
    pub addr: SocketAddr,
    /// A second handle on the socket, to wake the echo loop on drop.
    sock: UdpSocket,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
}

impl UdpEcho {
    pub fn start(ns_path: &Path, bind: SocketAddr) -> UdpEcho {
        let sock = in_netns(ns_path, move || UdpSocket::bind(bind))
            .unwrap_or_else(|e| panic!("bind UDP {bind} in {}: {e}", ns_path.display()));
        let addr = sock.local_addr().expect("UDP socket address");
        // `wake` ends a pending receive on drop; the timeout is only a fallback.
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("UDP read timeout");
        let peers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let (peers, stop) = (peers.clone(), stop.clone());
            let sock = sock.try_clone().expect("dup UDP socket");
            thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                loop {
                    let got = sock.recv_from(&mut buf);
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok((n, from)) = got {
                        lock(&peers).push(from);
                        let _ = sock.send_to(&buf[..n], from);
                    }
                }
            })
        };
        UdpEcho {
            addr,
            sock,
            peers,
            stop,
            worker: Some(worker),
        }
    }

    /// Source address of every datagram received so far.
    pub fn peers(&self) -> Vec<SocketAddr> {
        lock(&self.peers).clone()
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        wake(self.sock.as_raw_fd());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// Sends `payload` to `dst` from the namespace at `ns_path` and waits up to `timeout` for one
/// reply; returns it with its source address (TimedOut if none came).
pub fn udp_roundtrip(
    ns_path: &Path,
    dst: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> io::Result<(Vec<u8>, SocketAddr)> {
    let any: SocketAddr = if dst.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = in_netns(ns_path, move || UdpSocket::bind(any))?;
    sock.set_read_timeout(Some(timeout))?;
    sock.send_to(payload, dst)?;
    let mut buf = vec![0u8; 65536];
    match sock.recv_from(&mut buf) {
        Ok((n, from)) => {
            buf.truncate(n);
            Ok((buf, from))
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no UDP reply from {dst} within {timeout:?}"),
        )),
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------------------------------------
// Counters
// ---------------------------------------------------------------------------------------------

/// The namespace's SNMP/netstat counters by nstat name (TcpRetransSegs, TcpExtTCPSynRetrans,
/// TcpOutRsts, ...), absolute values.
pub fn nstat(topo: &Topo, pod: &str) -> HashMap<String, u64> {
    // -a: absolute values; -s: never write nstat's history file, which is per user, not per
    // namespace, and would be shared by parallel tests; -z: zero counters too; -j: JSON.
    let out = topo.sh_ok(pod, &["nstat", "-asjz"]);
    let json: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("nstat -asjz in {}: bad JSON ({e}): {out}", topo.ns(pod)));
    let counters = json["kernel"].as_object();
    let counters =
        counters.unwrap_or_else(|| panic!("nstat -asjz in {}: no \"kernel\" object", topo.ns(pod)));
    counters
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
        .collect()
}

/// Parses "10.0.0.1:80" / "[fd00::1]:80" literals in tests.
pub fn sa(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("bad socket address {s:?}: {e}"))
}
