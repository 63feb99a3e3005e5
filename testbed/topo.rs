// SPDX-License-Identifier: Apache-2.0
//! The node topology: namespaces, veths, addresses, routes, a private bpffs, spawned processes.
//!
//! `Topo::new()` builds a small Kubernetes-like node out of network namespaces (a node, a
//! ztunnel pod, three workload pods and a remote server behind the node), wired the way
//! point-to-point CNIs do it: each pod has a /32 (/128) on `eth0`, a link-scope route to the
//! fake gateway 169.254.1.1 (fe80::1) that the node answers on every pod veth, and the node has a
//! host route per pod. `Topo::build` makes a subset of the pods (the benchmarks need fewer) and
//! spare veth pairs, with a given prefix. Everything lives in namespaces and a private bpffs that
//! the `Topo` made itself; dropping it (also while unwinding from a failed assertion) removes all
//! of it, so the machine's own namespace is never touched. `keep` hands it over to a later
//! `remove(prefix)` instead (the `testbed up` / `testbed down` commands).

use std::fs::{self, File};
use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{killpg, Signal};
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
/// How long spawned processes get between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------------
// Topo
// ---------------------------------------------------------------------------------------------

/// What `Topo::build` makes. The default is the tests' whole node.
#[derive(Clone, Debug)]
pub struct Options {
    /// Namespace names are `<prefix>-<suffix>`, the work directory `/tmp/<prefix>`. `None`:
    /// `ztr<pid>x<n>`, unique per process and per `Topo`, so parallel tests never collide.
    pub prefix: Option<String>,
    /// Which of `PODS` to make (by name); the node and the remote are always there.
    pub pods: Vec<&'static str>,
    /// Unaddressed veth pairs `w<i>`/`p<i>`, both ends in the node: interfaces to attach to
    /// that carry no traffic (the control-plane benchmark's thousand workloads).
    pub veths: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            prefix: None,
            pods: PODS.iter().map(|p| p.name).collect(),
            veths: 0,
        }
    }
}

/// Refuses a prefix that could name something else than the testbed's own namespaces and work
/// directory (`remove` deletes by name, so `..` or `/` must never get through).
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 32
        && prefix.bytes().all(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid prefix {prefix:?}: 1 to 32 ASCII letters and digits"
        ))
    }
}

pub struct Topo {
    prefix: String,
    /// The pods this `Topo` has, in `PODS` order.
    pods: Vec<&'static PodSpec>,
    /// Suffixes of its namespaces: "node", the pods, "remote".
    suffixes: Vec<&'static str>,
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
    /// Builds the whole topology (`Options::default()`).
    pub fn new() -> Topo {
        Topo::build(&Options::default())
    }

    /// Builds the topology `opts` asks for. On failure it panics naming the step that failed;
    /// what was already made is removed by `Drop` while the panic unwinds.
    pub fn build(opts: &Options) -> Topo {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let prefix = opts.prefix.clone().unwrap_or_else(|| {
            let n = SEQ.fetch_add(1, Ordering::SeqCst);
            format!("ztr{}x{n}", std::process::id())
        });
        check_prefix(&prefix).unwrap_or_else(|e| panic!("{e}"));
        let pods: Vec<&'static PodSpec> = PODS
            .iter()
            .filter(|p| opts.pods.contains(&p.name))
            .collect();
        for name in &opts.pods {
            pod(name); // panics naming the pods there are
        }
        let mut suffixes = vec!["node"];
        suffixes.extend(pods.iter().map(|p| p.name));
        suffixes.push("remote");
        let tmp_dir = work_dir(&prefix);
        let mut topo = Topo {
            pods,
            suffixes,
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
        for suffix in topo.suffixes.clone() {
            topo.add_netns(suffix);
        }
        topo.wire(opts.veths);
        topo
    }

    /// Leaves everything in place (namespaces, bpffs, processes) for `remove(prefix)` to take
    /// down later: what `testbed up` does before it exits.
    pub fn keep(self) {
        std::mem::forget(self);
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `/tmp/<prefix>`: the bpffs mount point (`pin_dir`) and the logs of spawned processes.
    pub fn work_dir(&self) -> &Path {
        &self.tmp_dir
    }

    /// The pods this topology has.
    pub fn pods(&self) -> &[&'static PodSpec] {
        &self.pods
    }

    /// Suffixes of its namespaces ("node", the pods, "remote"), in order of creation.
    pub fn suffixes(&self) -> &[&'static str] {
        &self.suffixes
    }

    /// Full namespace name of "node", "remote" or one of its pods ("zt", "a", "b", "srv").
    pub fn ns(&self, pod: &str) -> String {
        assert!(
            self.suffixes.contains(&pod),
            "unknown namespace {pod:?}; expected one of {:?}",
            self.suffixes
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

    /// Starts the ztunnel stand-in (`bin`, extra flags appended) in the ztunnel pod, logging one
    /// JSON line per connection to `log`, and waits until it listens (it creates
    /// `<log>.ready` then). Returns its PID; `kill` stops it.
    pub fn start_standin(&self, bin: &Path, log: &Path, extra: &[&str]) -> u32 {
        let ready = log.with_extension("ready");
        let _ = fs::remove_file(&ready);
        let (bin, log_s, ready_s) = (
            bin.to_string_lossy(),
            log.to_string_lossy(),
            ready.to_string_lossy(),
        );
        let mut args = vec![&*bin, "--log", &*log_s, "--ready-file", &*ready_s];
        args.extend_from_slice(extra);
        let pid = self.spawn("zt", &args, &[]);
        let t0 = Instant::now();
        while !ready.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "stand-in did not start: {}",
                self.log(pid)
            );
            thread::sleep(Duration::from_millis(20));
        }
        pid
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
        fs::create_dir(&self.tmp_dir).unwrap_or_else(|e| {
            panic!(
                "create {}: {e} (a leftover? `testbed down --prefix {}`)",
                self.tmp_dir.display(),
                self.prefix
            )
        });
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
    fn wire(&self, veths: usize) {
        // The kernel applies a veth's carrier change at once only when its ifindex differs from
        // its peer's, otherwise up to a second later (linkwatch), which stalls the first
        // packets. Every pod's eth0 is index 2 and faces a node veth numbered 3 and up; up0 is
        // the node's index 2, so the remote's eth0 is created (from the remote side, the only
        // side `ip` lets us number) with another index.
        let remote = self.ns("remote");
        ip_batch(
            Some(&remote),
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
        for p in &self.pods {
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
        node.extend(veth_pairs(veths));
        ip_batch(Some(&self.ns("node")), &node);

        ip_batch(
            Some(&remote),
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
        for p in &self.pods {
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
        ip_batch(Some(&self.ns(p.name)), &script);
    }

    /// Waits until the kernel has every interface ready, which it shows by giving it its own
    /// (EUI-64) link-local address. Carrier changes are applied asynchronously: until then the
    /// device drops packets and IPv6 treats the link as down, so a test's first connection
    /// would be lost and only retried a second later.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        for &ns in &self.suffixes {
            let ifaces: Vec<&str> = match ns {
                "node" => std::iter::once("up0")
                    .chain(self.pods.iter().map(|p| p.veth))
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
            forget_netns();
        }
        if self.bpffs_mounted && unmount(&self.pin_dir) {
            self.bpffs_mounted = false;
        }
        // Only once the bpffs is detached: never recurse into a still-mounted filesystem.
        if self.tmp_made && !self.bpffs_mounted {
            remove_dir_all(&self.tmp_dir);
        }
    }
}

/// `/tmp/<prefix>`, the work directory of a `Topo`.
fn work_dir(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(prefix)
}

/// Takes down what a kept `Topo` with this prefix left (`testbed down`): its namespaces (any
/// of `NAMESPACES`), its bpffs and its work directory; what is not there is skipped. Processes
/// are not its business: their starter stops them by PID. Panics on a bad prefix.
pub fn remove(prefix: &str) {
    check_prefix(prefix).unwrap_or_else(|e| panic!("{e}"));
    for suffix in NAMESPACES.iter().rev() {
        delete_netns(&format!("{prefix}-{suffix}"));
    }
    let dir = work_dir(prefix);
    // Loop: a bpffs mounted twice on the same point shows the next one after an unmount.
    let bpffs = dir.join("bpf");
    while is_mount_point(&bpffs) {
        if !unmount(&bpffs) {
            return; // reported; never recurse into a still-mounted filesystem
        }
    }
    remove_dir_all(&dir);
}

fn is_mount_point(path: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let path = path.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(&*path))
}

/// Detaches the mount at `path`; true when nothing is mounted there any more.
fn unmount(path: &Path) -> bool {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::ENOENT) | Err(Errno::EINVAL) => true,
        Err(e) => {
            eprintln!("umount {}: {e}", path.display());
            false
        }
    }
}

fn remove_dir_all(dir: &Path) {
    if let Err(e) = fs::remove_dir_all(dir) {
        if e.kind() != io::ErrorKind::NotFound {
            eprintln!("remove {}: {e}", dir.display());
        }
    }
}

/// The inverse of `add_netns`, i.e. what `ip netns del` does. The namespace itself (and every
/// veth in it, with its peer) goes away once nothing holds it any more.
fn delete_netns(name: &str) {
    let path = Path::new(NETNS_DIR).join(name);
    unmount(&path);
    if let Err(e) = fs::remove_file(&path) {
        if e.kind() != io::ErrorKind::NotFound {
            eprintln!("remove {}: {e}", path.display());
        }
    }
}

/// This process's bookkeeping for one namespace `delete_netns` removed.
fn forget_netns() {
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
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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

/// Runs `ip -batch` with `lines` in namespace `netns` (or the calling thread's).
fn ip_batch(netns: Option<&str>, lines: &[String]) {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-batch", "-"]);
    run_ok(&mut cmd, Some(&lines.join("\n")));
}

/// `ip` lines making `n` veth pairs `w<i>`/`p<i>`, both ends in the same namespace.
fn veth_pairs(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("link add w{i} type veth peer name p{i}"))
        .collect()
}

/// Moves the calling thread into a new, unnamed network namespace with loopback up and the
/// veth pairs `pairs` (both ends in it), for programs run with BPF_PROG_TEST_RUN on
/// interfaces of their own. The namespace goes away with the thread (or process).
pub fn private_netns_with_veths(pairs: &[(&str, &str)]) {
    unshare(CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("unshare(CLONE_NEWNET): {e}"));
    let mut lines = vec!["link set lo up".to_string()];
    lines.extend(
        pairs
            .iter()
            .map(|(a, b)| format!("link add {a} type veth peer name {b}")),
    );
    ip_batch(None, &lines);
}

/// The index of interface `name` in the calling thread's namespace.
pub fn ifindex(name: &str) -> u32 {
    nix::net::if_::if_nametoindex(name).unwrap_or_else(|e| panic!("ifindex of {name}: {e}"))
}

/// Writes a sysctl of the calling thread's network namespace (`key` as a /proc/sys path).
fn sysctl(key: &str, value: &str) {
    let path = format!("/proc/sys/{key}");
    fs::write(&path, value).unwrap_or_else(|e| panic!("write {value} to {path}: {e}"));
}

/// Runs `f` on a new thread, so namespace changes it makes die with that thread; its panic is
/// re-raised here.
pub(super) fn on_fresh_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
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
