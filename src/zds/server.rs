// SPDX-License-Identifier: Apache-2.0
//! The ZDS server: a `SOCK_SEQPACKET` unix socket that ztunnel connects to, one thread per
//! connection (ztunnel's own upgrade runs two processes, both connected), each keeping its
//! ztunnel in step with the workload source.
//!
//! A connection goes: ztunnel's hello (version 1), then the snapshot (an add per workload,
//! its netns as the one `SCM_RIGHTS` fd, each acked), snapshot sent (acked), then follow: the
//! source is polled every `POLL_INTERVAL` and what changed is sent (del for a workload gone,
//! add for a new one, del then add for one whose identity or netns changed). ztunnel exits on
//! a keep after the snapshot, a second snapshot sent or an add without workload info, so none
//! of them is ever sent. ztunnel sends nothing unprompted, so the socket is watched while
//! idle only to notice its EOF. An ack not there within `ACK_TIMEOUT` means ztunnel is stuck
//! or gone: the connection is closed, and a restarted ztunnel gets a full snapshot anew.
//!
//! Every message exchanged is one line on the log, `zds: conn N: -> ...` for what the server
//! sent and `zds: conn N: <- ...` for what it received.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::fmt;
use std::fs::{self, DirBuilder, File};
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, Scope};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::socket::{
    self, sockopt, AddressFamily, Backlog, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr,
};
use nix::sys::time::TimeVal;

use super::proto::{self, Add, Request, WorkloadInfo, MAX_MESSAGE, VERSION_V1};
use super::Workload;

/// Where ztunnel looks for the server (its `INPOD_UDS` default).
pub const DEFAULT_SOCKET: &str = "/var/run/ztunnel/ztunnel.sock";
/// The environment variable the CLI reads the socket path from.
pub const SOCKET_ENV: &str = "ZTREDIR_ZDS_SOCKET";

/// How often each connection asks the source what changed.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long ztunnel gets for each ack (istio-cni's limit), and for its hello.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How often blocking waits look at the stop flag.
const STOP_TICK: Duration = Duration::from_millis(100);
/// After an add acked with an error, the next try comes this late, doubling per failure.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// What the server reads per packet. ztunnel's own messages are a few bytes, but an ack's
/// error text has no set limit.
const RECV_BUFFER: usize = 64 * 1024;
const SOCKET_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o755;

/// Where the server gets the workloads from: called by every connection, every
/// `POLL_INTERVAL`; an error is logged and the call retried.
pub type Source<'a> = dyn Fn() -> Result<Vec<Workload>> + Sync + 'a;
/// Called after ztunnel acked an add: it may now listen with other sockets than before (a
/// restarted ztunnel, or a second one during its own upgrade).
pub type Added<'a> = dyn Fn(&Workload) + Sync + 'a;
/// Where the server's log lines go.
pub type Log<'a> = dyn Fn(&str) + Sync + 'a;

/// Serves ZDS on `socket` until `stop` is set, logging to stderr. See `serve_with_log`.
pub fn serve(socket: &Path, source: &Source<'_>, stop: &AtomicBool) -> Result<()> {
    serve_with_log(socket, source, stop, &|line| eprintln!("{line}"))
}

/// `serve_with_log` without an `added` hook.
pub fn serve_with_log(
    socket: &Path,
    source: &Source<'_>,
    stop: &AtomicBool,
    log: &Log<'_>,
) -> Result<()> {
    serve_full(socket, source, &|_| {}, stop, log)
}

/// Serves ZDS on `socket` until `stop` is set: every connected ztunnel gets the workloads
/// `source` returns, and follows its changes. `log` gets one line per message exchanged and
/// per event (the tests read them).
///
/// Fails only if the socket cannot be set up: its directory is made if missing (0755), a
/// stale socket file (nothing listening) is replaced, but a live server there is refused. A
/// source error is logged and retried. Once stopped, connections are closed and the socket
/// file is removed. `added` runs after each add ztunnel acked.
pub fn serve_full(
    socket: &Path,
    source: &Source<'_>,
    added: &Added<'_>,
    stop: &AtomicBool,
    log: &Log<'_>,
) -> Result<()> {
    let (listener, file) = listen(socket, log)?;
    log(&format!("zds: listening on {}", socket.display()));
    let server = Server {
        source,
        log,
        added,
        stop,
        done: AtomicBool::new(false),
    };
    thread::scope(|scope| {
        accept_loop(scope, &server, listener);
        server.done.store(true, Ordering::SeqCst);
    });
    drop(file);
    log(&format!("zds: stopped; removed {}", socket.display()));
    Ok(())
}

/// Serves ZDS on `socket` until SIGTERM or SIGINT (what `ztredir zds` runs); Ok on a signal.
pub fn run(socket: &Path, source: &Source<'_>, added: &Added<'_>) -> Result<()> {
    SIGNALLED.store(false, Ordering::SeqCst);
    let previous = install_stop_handlers()?;
    let result = serve_full(socket, source, added, &SIGNALLED, &|line| {
        eprintln!("{line}")
    });
    for (sig, action) in previous {
        // SAFETY: puts back the disposition that was there before `run`.
        let _ = unsafe { signal::sigaction(sig, &action) };
    }
    result
}

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::SeqCst);
}

/// Makes SIGTERM and SIGINT set `SIGNALLED`; returns what they did before. No SA_RESTART: a
/// wait interrupted by the signal returns at once, and every wait loop handles EINTR.
fn install_stop_handlers() -> Result<Vec<(Signal, SigAction)>> {
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    let mut previous = Vec::new();
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        match unsafe { signal::sigaction(sig, &action) } {
            Ok(old) => previous.push((sig, old)),
            Err(e) => {
                for (sig, old) in previous {
                    // SAFETY: restores the disposition just replaced.
                    let _ = unsafe { signal::sigaction(sig, &old) };
                }
                return Err(anyhow!("install a {sig} handler: {e}"));
            }
        }
    }
    Ok(previous)
}

// ---------------------------------------------------------------------------------------------
// The socket

/// The socket file this server bound: removed when dropped, unless someone else's file has
/// taken its place meanwhile.
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino);
        if ours {
            if let Err(e) = fs::remove_file(&self.path) {
                eprintln!("zds: remove {}: {e}", self.path.display());
            }
        }
    }
}

/// A listening socket at `path`, mode 0600, its directory made if missing.
fn listen(path: &Path, log: &Log<'_>) -> Result<(OwnedFd, SocketFile)> {
    let shown = path.display();
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.exists() && !d.as_os_str().is_empty())
    {
        let made = DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            // Whatever the umask: ztunnel must be able to reach the socket.
            .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE)));
        made.with_context(|| format!("zds socket {shown}: create {}", dir.display()))?;
    }
    clear_stale(path, log)?;
    let addr = UnixAddr::new(path).with_context(|| format!("zds socket {shown}"))?;
    let fd = seqpacket().with_context(|| format!("zds socket {shown}"))?;
    match socket::bind(fd.as_raw_fd(), &addr) {
        Ok(()) => {}
        Err(Errno::EADDRINUSE) => bail!("zds socket {shown}: another server bound it meanwhile"),
        Err(e) => bail!("zds socket {shown}: bind: {e}"),
    }
    let file = match fs::symlink_metadata(path) {
        Ok(meta) => SocketFile {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        },
        Err(e) => {
            let _ = fs::remove_file(path);
            bail!("zds socket {shown}: stat after bind: {e}");
        }
    };
    // Before listen: nobody can have connected while the file had the umask's mode.
    fs::set_permissions(path, fs::Permissions::from_mode(SOCKET_MODE))
        .with_context(|| format!("zds socket {shown}: chmod {SOCKET_MODE:o}"))?;
    socket::listen(&fd, Backlog::new(128).expect("valid backlog"))
        .with_context(|| format!("zds socket {shown}: listen"))?;
    Ok((fd, file))
}

fn seqpacket() -> nix::Result<OwnedFd> {
    socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
}

/// Removes a socket file nothing listens on (a server that died), and refuses anything else:
/// a live server, or a file that is not a socket.
fn clear_stale(path: &Path, log: &Log<'_>) -> Result<()> {
    let shown = path.display();
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => bail!("zds socket {shown}: {e}"),
    };
    if !meta.file_type().is_socket() {
        bail!("zds socket {shown}: exists and is not a socket; not replacing it");
    }
    let probe = seqpacket().with_context(|| format!("zds socket {shown}: probe"))?;
    let addr = UnixAddr::new(path).with_context(|| format!("zds socket {shown}"))?;
    match socket::connect(probe.as_raw_fd(), &addr) {
        // EAGAIN: the listener's backlog is full, so there is a listener.
        Ok(()) | Err(Errno::EAGAIN) => {
            bail!("zds socket {shown}: another server is listening on it")
        }
        Err(Errno::EPROTOTYPE) => {
            bail!("zds socket {shown}: a server of another socket type is listening on it")
        }
        Err(Errno::ENOENT) => Ok(()),
        Err(Errno::ECONNREFUSED) => {
            match fs::remove_file(path) {
                Ok(()) => log(&format!("zds: removed stale socket {shown}")),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => bail!("zds socket {shown}: remove the stale socket: {e}"),
            }
            Ok(())
        }
        Err(e) => bail!("zds socket {shown}: probe: {e}"),
    }
}

/// Waits up to `timeout` for `fd` to be readable (or hung up, or in error); false on timeout
/// or a signal.
fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfd` is one valid pollfd for the duration of the call.
    match unsafe { libc::poll(&mut pfd, 1, millis) } {
        0 => Ok(false),
        n if n > 0 => Ok(true),
        _ if Errno::last() == Errno::EINTR => Ok(false),
        _ => Err(io::Error::last_os_error()),
    }
}

// ---------------------------------------------------------------------------------------------
// Accepting

/// What every connection thread shares.
struct Server<'a> {
    source: &'a Source<'a>,
    log: &'a Log<'a>,
    added: &'a Added<'a>,
    stop: &'a AtomicBool,
    /// Set once the accept loop is over and the listening socket closed, whatever ended it:
    /// the connections end then. Not at `stop` itself: a ztunnel whose connection closed
    /// reconnects at once, and must be refused rather than queued on a listener about to go.
    done: AtomicBool,
}

impl Server<'_> {
    /// Whether connections must end.
    fn stopping(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }
}

/// Accepts connections until the server stops, each served by a thread of its own; the
/// listening socket is closed when it returns.
fn accept_loop<'scope, 'env>(
    scope: &'scope Scope<'scope, 'env>,
    server: &'env Server<'env>,
    listener: OwnedFd,
) {
    let log = server.log;
    let mut last_id = 0u64;
    while !server.stop.load(Ordering::SeqCst) {
        match wait_readable(listener.as_fd(), STOP_TICK) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                log(&format!("zds: poll the listening socket: {e}"));
                thread::sleep(STOP_TICK);
                continue;
            }
        }
        match socket::accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            Ok(raw) => {
                // SAFETY: accept4 returned a new descriptor that nothing else owns.
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                last_id += 1;
                let id = last_id;
                let spawned = thread::Builder::new()
                    .name(format!("zds-conn-{id}"))
                    .spawn_scoped(scope, move || Conn::new(id, fd, server).run());
                if let Err(e) = spawned {
                    // The closure, and the connection with it, is dropped: ztunnel sees EOF
                    // and reconnects.
                    log(&format!("zds: conn {id}: cannot start its thread: {e}"));
                }
            }
            Err(Errno::EAGAIN | Errno::EINTR | Errno::ECONNABORTED) => {}
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                log(&format!("zds: accept: {e}"));
                thread::sleep(STOP_TICK);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One connection

/// Why a connection ended: its last log line says `closed (<this>)`.
enum End {
    Eof,
    Stopped,
    BadHello(String),
    Timeout(&'static str),
    Failed(String),
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Eof => f.write_str("eof"),
            End::Stopped => f.write_str("server stopping"),
            End::BadHello(why) => write!(f, "bad hello: {why}"),
            End::Timeout(what) => write!(f, "no {what} within {ACK_TIMEOUT:?}"),
            End::Failed(why) => write!(f, "error: {why}"),
        }
    }
}

/// The socket of one connection and how to talk on it.
struct Peer<'a> {
    id: u64,
    fd: OwnedFd,
    server: &'a Server<'a>,
}

impl Peer<'_> {
    fn log(&self, line: fmt::Arguments<'_>) {
        (self.server.log)(&format!("zds: conn {}: {line}", self.id));
    }

    /// Sends one message, with `netns` as its `SCM_RIGHTS` fd if given, and logs `-> what`.
    fn send(&self, msg: &[u8], netns: Option<BorrowedFd<'_>>, what: &str) -> Result<(), End> {
        let fds = netns.map(|fd| [fd.as_raw_fd()]);
        let cmsgs: Vec<ControlMessage<'_>> = fds
            .as_ref()
            .map(|fds| ControlMessage::ScmRights(fds))
            .into_iter()
            .collect();
        let iov = [IoSlice::new(msg)];
        let sent = socket::sendmsg::<UnixAddr>(
            self.fd.as_raw_fd(),
            &iov,
            &cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        );
        match sent {
            Ok(n) if n == msg.len() => {
                self.log(format_args!("-> {what}"));
                Ok(())
            }
            Ok(n) => Err(End::Failed(format!("sent {n} of {} bytes", msg.len()))),
            Err(Errno::EPIPE | Errno::ECONNRESET) => Err(End::Eof),
            Err(Errno::EAGAIN) => Err(End::Timeout("room to send")),
            Err(e) => Err(End::Failed(format!("send {what}: {e}"))),
        }
    }

    /// The next message, or None once `deadline` has passed.
    fn recv_until(&self, deadline: Instant) -> Result<Option<Vec<u8>>, End> {
        let mut buf = vec![0u8; RECV_BUFFER];
        loop {
            if self.server.stopping() {
                return Err(End::Stopped);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            match wait_readable(self.fd.as_fd(), left.min(STOP_TICK)) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => return Err(End::Failed(format!("poll: {e}"))),
            }
            // MSG_TRUNC: the packet's real length, to notice one longer than the buffer.
            let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC;
            match socket::recv(self.fd.as_raw_fd(), &mut buf, flags) {
                // ztunnel never sends an empty message: this is its end of the connection.
                Ok(0) => return Err(End::Eof),
                Ok(n) if n > buf.len() => {
                    return Err(End::Failed(format!("received a message of {n} bytes")))
                }
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(Some(buf));
                }
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(Errno::ECONNRESET) => return Err(End::Eof),
                Err(e) => return Err(End::Failed(format!("receive: {e}"))),
            }
        }
    }

    /// Waits for the ack of the request just sent and logs it; `on_error` is appended to the
    /// line of an ack carrying an error.
    fn await_ack(&self, on_error: impl FnOnce() -> String) -> Result<proto::Ack, End> {
        let msg = self
            .recv_until(Instant::now() + ACK_TIMEOUT)?
            .ok_or(End::Timeout("ack"))?;
        let ack = proto::decode_response(&msg)
            .map_err(|e| End::Failed(format!("undecodable response: {e}")))?;
        if ack.error.is_empty() {
            self.log(format_args!("<- ack"));
        } else {
            self.log(format_args!("<- ack error {:?}{}", ack.error, on_error()));
        }
        Ok(ack)
    }

    /// Waits `period` while nothing is expected; ztunnel going away ends the wait early.
    fn idle(&self, period: Duration) -> Result<(), End> {
        let deadline = Instant::now() + period;
        while let Some(msg) = self.recv_until(deadline)? {
            self.log(format_args!(
                "<- unexpected message of {} bytes, ignored",
                msg.len()
            ));
        }
        Ok(())
    }
}

/// An add that ztunnel refused: when to try again.
struct Retry {
    workload: Workload,
    failures: u32,
    next: Instant,
}

/// One connection's thread: the peer and what it holds of the source.
struct Conn<'a> {
    peer: Peer<'a>,
    /// Workloads whose add ztunnel acked, as sent.
    sent: HashMap<String, Workload>,
    /// Workloads whose add ztunnel acked with an error. ztunnel may keep such a one pending,
    /// so it is deleted too if it leaves the source.
    failed: HashMap<String, Retry>,
    /// Workloads not sent, with the reason logged for each, so it is logged once.
    skipped: HashMap<String, String>,
    /// Uids the source listed twice (logged once).
    duplicates: HashSet<String>,
    /// The last source error logged, so a lasting one is logged once.
    source_error: Option<String>,
}

impl<'a> Conn<'a> {
    fn new(id: u64, fd: OwnedFd, server: &'a Server<'a>) -> Self {
        Conn {
            peer: Peer { id, fd, server },
            sent: HashMap::new(),
            failed: HashMap::new(),
            skipped: HashMap::new(),
            duplicates: HashSet::new(),
            source_error: None,
        }
    }

    fn run(mut self) {
        self.peer.log(format_args!("accepted"));
        // A ztunnel that stops reading must not block this thread for good either.
        let limit = TimeVal::new(ACK_TIMEOUT.as_secs() as _, 0);
        if let Err(e) = socket::setsockopt(&self.peer.fd, sockopt::SendTimeout, &limit) {
            self.peer
                .log(format_args!("closed (error: SO_SNDTIMEO: {e})"));
            return;
        }
        let end = match self.session() {
            Err(end) => end,
            Ok(never) => match never {},
        };
        self.peer.log(format_args!("closed ({end})"));
    }

    /// Hello, snapshot, then follow until the connection ends.
    fn session(&mut self) -> Result<Infallible, End> {
        self.hello()?;
        let want = loop {
            if let Some(want) = self.poll_source() {
                break want;
            }
            self.peer.idle(POLL_INTERVAL)?;
        };
        self.sync(want)?;
        self.peer.send(
            &proto::encode_request(&Request::SnapshotSent),
            None,
            "snapshot sent",
        )?;
        self.peer.await_ack(String::new)?;
        loop {
            self.peer.idle(POLL_INTERVAL)?;
            if let Some(want) = self.poll_source() {
                self.sync(want)?;
            }
        }
    }

    fn hello(&self) -> Result<(), End> {
        let msg = self
            .peer
            .recv_until(Instant::now() + ACK_TIMEOUT)?
            .ok_or(End::Timeout("hello"))?;
        let hello = proto::decode_hello(&msg).map_err(|e| End::BadHello(e.to_string()))?;
        self.peer
            .log(format_args!("<- hello version {}", hello.version));
        if hello.version != VERSION_V1 {
            return Err(End::BadHello(format!(
                "version {} unsupported (only {VERSION_V1})",
                hello.version
            )));
        }
        Ok(())
    }

    /// The source's workloads, or None (logged once while it lasts) if it failed.
    fn poll_source(&mut self) -> Option<Vec<Workload>> {
        match (self.peer.server.source)() {
            Ok(want) => {
                if self.source_error.take().is_some() {
                    self.peer.log(format_args!("source: readable again"));
                }
                Some(want)
            }
            Err(e) => {
                let msg = format!("{e:#}");
                if self.source_error.as_ref() != Some(&msg) {
                    self.peer.log(format_args!(
                        "source: {msg} (retrying every {POLL_INTERVAL:?})"
                    ));
                    self.source_error = Some(msg);
                }
                None
            }
        }
    }

    /// Brings ztunnel to `want`: dels first (gone, or changed and about to be re-added), then
    /// adds in the source's order.
    fn sync(&mut self, want: Vec<Workload>) -> Result<(), End> {
        let want = self.dedupe(want);
        let by_uid: HashMap<&str, &Workload> = want.iter().map(|w| (w.uid.as_str(), w)).collect();
        let mut stale: Vec<String> = self
            .sent
            .iter()
            .filter(|(uid, old)| by_uid.get(uid.as_str()).is_none_or(|new| changed(old, new)))
            .map(|(uid, _)| uid.clone())
            .collect();
        stale.sort();
        for uid in stale {
            self.sent.remove(&uid);
            self.del(&uid)?;
        }
        let mut gone: Vec<String> = self
            .failed
            .keys()
            .filter(|uid| !by_uid.contains_key(uid.as_str()))
            .cloned()
            .collect();
        gone.sort();
        for uid in gone {
            self.failed.remove(&uid);
            self.del(&uid)?;
        }
        self.skipped
            .retain(|uid, _| by_uid.contains_key(uid.as_str()));
        self.duplicates
            .retain(|uid| by_uid.contains_key(uid.as_str()));
        for w in &want {
            if !self.sent.contains_key(&w.uid) {
                self.add(w)?;
            }
        }
        Ok(())
    }

    /// `want` without the second and later workloads of a uid.
    fn dedupe(&mut self, want: Vec<Workload>) -> Vec<Workload> {
        let mut seen = HashSet::new();
        let mut unique = Vec::with_capacity(want.len());
        for w in want {
            if seen.insert(w.uid.clone()) {
                unique.push(w);
            } else if self.duplicates.insert(w.uid.clone()) {
                self.peer.log(format_args!(
                    "source lists uid={} more than once; only the first is sent",
                    w.uid
                ));
            }
        }
        unique
    }

    fn del(&self, uid: &str) -> Result<(), End> {
        let msg = proto::encode_request(&Request::Del { uid: uid.into() });
        self.peer.send(&msg, None, &format!("del uid={uid}"))?;
        // An error deleting is ztunnel's to report: nothing here would do better on a retry.
        self.peer.await_ack(String::new).map(drop)
    }

    /// Sends `w` unless it waits for a retry or cannot be sent (its netns path names another
    /// namespace now, or the message would be too long for ztunnel).
    fn add(&mut self, w: &Workload) -> Result<(), End> {
        let retry = self.failed.get(&w.uid).filter(|r| r.workload == *w);
        if retry.is_some_and(|r| Instant::now() < r.next) {
            return Ok(());
        }
        let failures = retry.map_or(0, |r| r.failures);
        let (netns, msg) = match prepare_add(w) {
            Ok(ready) => ready,
            Err(reason) => {
                if self.skipped.get(&w.uid) != Some(&reason) {
                    self.peer.log(format_args!(
                        "skip uid={} {}/{}: {reason}",
                        w.uid, w.namespace, w.name
                    ));
                    self.skipped.insert(w.uid.clone(), reason);
                }
                return Ok(());
            }
        };
        self.skipped.remove(&w.uid);
        let what = format!(
            "add uid={} {}/{} (sa {}) netns {}",
            w.uid,
            w.namespace,
            w.name,
            w.service_account,
            w.netns.display()
        );
        self.peer.send(&msg, Some(netns.as_fd()), &what)?;
        drop(netns);
        let delay = retry_delay(failures);
        let ack = self
            .peer
            .await_ack(|| format!(" (uid={}; retry in {delay:?})", w.uid))?;
        if ack.error.is_empty() {
            self.failed.remove(&w.uid);
            self.sent.insert(w.uid.clone(), w.clone());
            (self.peer.server.added)(w);
        } else {
            let retry = Retry {
                workload: w.clone(),
                failures: failures + 1,
                next: Instant::now() + delay,
            };
            self.failed.insert(w.uid.clone(), retry);
        }
        Ok(())
    }
}

/// Whether ztunnel must be told again about a workload it holds as `old`: another identity or
/// another namespace. The same namespace under another path is the same workload.
fn changed(old: &Workload, new: &Workload) -> bool {
    (
        &old.name,
        &old.namespace,
        &old.service_account,
        old.netns_inode,
    ) != (
        &new.name,
        &new.namespace,
        &new.service_account,
        new.netns_inode,
    )
}

fn retry_delay(failures: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(1u32.checked_shl(failures).unwrap_or(u32::MAX))
        .min(RETRY_MAX)
}

/// The open netns and the encoded add of `w`, or why it must not be sent.
fn prepare_add(w: &Workload) -> Result<(File, Vec<u8>), String> {
    let msg = proto::encode_request(&Request::Add(Add {
        uid: w.uid.clone(),
        workload_info: Some(WorkloadInfo {
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            service_account: w.service_account.clone(),
        }),
    }));
    if msg.len() > MAX_MESSAGE {
        return Err(format!(
            "its add would be {} bytes, more than the {MAX_MESSAGE} ztunnel reads",
            msg.len()
        ));
    }
    Ok((open_netns(w)?, msg))
}

/// Opens `w.netns` and checks it is still the namespace the workload was recorded with.
fn open_netns(w: &Workload) -> Result<File, String> {
    let shown = w.netns.display();
    // std opens with O_CLOEXEC.
    let file = File::open(&w.netns).map_err(|e| format!("open netns {shown}: {e}"))?;
    let ino = file
        .metadata()
        .map_err(|e| format!("fstat netns {shown}: {e}"))?
        .ino();
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the descriptor's namespace.
    let nstype = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE) };
    if nstype != libc::CLONE_NEWNET {
        return Err(format!("{shown} is not a network namespace"));
    }
    if ino != w.netns_inode {
        return Err(format!(
            "netns {shown} is inode {ino} now, not {} (another namespace); not sent",
            w.netns_inode
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(uid: &str) -> Workload {
        Workload {
            uid: uid.into(),
            name: "app".into(),
            namespace: "default".into(),
            service_account: "app".into(),
            netns: "/proc/self/ns/net".into(),
            netns_inode: 1,
        }
    }

    #[test]
    fn retry_delay_doubles_up_to_the_cap() {
        assert_eq!(retry_delay(0), RETRY_FIRST);
        assert_eq!(retry_delay(1), RETRY_FIRST * 2);
        assert_eq!(retry_delay(3), RETRY_FIRST * 8);
        assert_eq!(retry_delay(10), RETRY_MAX);
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
    }

    #[test]
    fn a_new_path_to_the_same_netns_is_no_change() {
        let old = workload("u");
        let mut moved = old.clone();
        moved.netns = "/run/netns/x".into();
        assert!(!changed(&old, &moved));
        let mut other_ns = old.clone();
        other_ns.netns_inode = 2;
        assert!(changed(&old, &other_ns));
        let mut renamed = old.clone();
        renamed.service_account = "other".into();
        assert!(changed(&old, &renamed));
    }

    #[test]
    fn an_oversized_add_is_not_sent() {
        let mut w = workload("u");
        w.name = "n".repeat(MAX_MESSAGE);
        let err = prepare_add(&w).unwrap_err();
        assert!(err.contains("more than the 1024"), "{err}");
    }

    #[test]
    fn a_wrong_inode_or_a_non_netns_is_not_sent() {
        let mut w = workload("u");
        let err = open_netns(&w).unwrap_err();
        assert!(err.contains("another namespace"), "{err}");
        w.netns_inode = fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert!(open_netns(&w).is_ok());
        w.netns = "/proc/self/ns/uts".into();
        w.netns_inode = fs::metadata("/proc/self/ns/uts").unwrap().ino();
        let err = open_netns(&w).unwrap_err();
        assert!(err.contains("not a network namespace"), "{err}");
    }
}
