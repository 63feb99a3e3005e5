// SPDX-License-Identifier: Apache-2.0
//! Traffic helpers: test servers and clients for TCP and UDP, each created inside a namespace.
//!
//! The sockets are created from a short-lived thread that called `setns(CLONE_NEWNET)`
//! (`in_netns`): a socket stays in the namespace it was created in, so the rest of the I/O can
//! happen on any thread.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    bind, connect, getsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage,
};

use super::topo::{in_netns, lock, Topo};

/// Read/write timeout of every traffic helper socket, so a broken path fails instead of hanging.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

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
pub type TcpServer = Server<ConnRecord>;

/// UDP echo server: every datagram goes back to its sender unchanged.
pub type UdpEcho = Server<SocketAddr>;

/// A test server in a namespace: its address, what it has seen (`T`: a record per connection,
/// a peer per datagram) and its thread, stopped on drop.
pub struct Server<T> {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<T>>>,
    _thread: ServerThread,
}

/// A server's thread and how to stop it: on drop it sets `stop`, wakes the thread from its
/// wait on the socket and joins it, so no thread outlives its server.
struct ServerThread {
    stop: Arc<AtomicBool>,
    /// A second handle on the server's socket, to wake the thread.
    sock: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

/// The server at `addr`: runs `run(sock, stop, seen)` on a thread of its own until the server
/// is dropped; `seen` is the list it fills (connections, peers) for the test to read.
fn serve<S, T>(addr: SocketAddr, sock: S, run: ServeFn<S, T>) -> Server<T>
where
    S: AsFd + Send + 'static,
    T: Send + 'static,
{
    let seen = Arc::new(Mutex::new(Vec::new()));
    let spare = sock.as_fd().try_clone_to_owned();
    let spare = spare.expect("dup server socket");
    let stop = Arc::new(AtomicBool::new(false));
    let (flag, list) = (stop.clone(), seen.clone());
    let thread = thread::spawn(move || run(sock, &flag, &list));
    let thread = ServerThread {
        stop,
        sock: spare,
        thread: Some(thread),
    };
    Server {
        addr,
        seen,
        _thread: thread,
    }
}

type ServeFn<S, T> = fn(S, &AtomicBool, &Arc<Mutex<Vec<T>>>);

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        wake(self.sock.as_raw_fd());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Server<ConnRecord> {
    /// Listens on `bind` (port 0 picks one; see `addr`) inside the namespace at `ns_path`.
    pub fn start(ns_path: &Path, bind: SocketAddr) -> TcpServer {
        let listener = in_netns(ns_path, move || TcpListener::bind(bind))
            .unwrap_or_else(|e| panic!("bind TCP {bind} in {}: {e}", ns_path.display()));
        let addr = listener.local_addr().expect("listener address");
        // Nonblocking + poll with a timeout, so the accept loop notices `stop`.
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        serve(addr, listener, accept_loop)
    }

    /// One record per finished connection, in order of completion. A connection's record is
    /// stored before the server closes it, so it is there once the client has seen EOF.
    pub fn accepted(&self) -> Vec<ConnRecord> {
        lock(&self.seen).clone()
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
    let s = in_netns(ns_path, move || connect_from(src, dst, connect_timeout))?;
    exchange(s, down, |s| write_pattern(s, up).1)
}

/// A long-lived connection to a `TcpServer`: like `tcp_transfer`, but the
/// upload goes in `chunks` pieces of 1 KiB, `pause` apart, so that the
/// connection spans whatever the caller does meanwhile (an upgrade).
pub fn slow_transfer(
    ns_path: &Path,
    dst: SocketAddr,
    chunks: u64,
    pause: Duration,
    down: u64,
) -> io::Result<Transfer> {
    let s = in_netns(ns_path, move || {
        connect_from(None, dst, Duration::from_secs(3))
    })?;
    exchange(s, down, |s| {
        let mut sent = 0u64;
        for i in 1..=chunks {
            while sent < i * 1024 {
                let c = pattern_at(sent, i * 1024 - sent);
                s.write_all(c)?;
                sent += c.len() as u64;
            }
            thread::sleep(pause);
        }
        Ok(())
    })
}

/// The exchange on a connected socket: the header asking for `down`
/// bytes, the upload `send` writes, then the reply read to EOF.
fn exchange(
    mut s: TcpStream,
    down: u64,
    send: impl FnOnce(&mut TcpStream) -> io::Result<()>,
) -> io::Result<Transfer> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let local = s.local_addr()?;
    s.write_all(&down.to_be_bytes())?;
    send(&mut s)?;
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

impl Server<SocketAddr> {
    pub fn start(ns_path: &Path, bind: SocketAddr) -> UdpEcho {
        let sock = in_netns(ns_path, move || UdpSocket::bind(bind))
            .unwrap_or_else(|e| panic!("bind UDP {bind} in {}: {e}", ns_path.display()));
        let addr = sock.local_addr().expect("UDP socket address");
        // `wake` ends a pending receive on drop; the timeout is only a fallback.
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("UDP read timeout");
        serve(addr, sock, echo_loop)
    }

    /// Source address of every datagram received so far.
    pub fn peers(&self) -> Vec<SocketAddr> {
        lock(&self.seen).clone()
    }
}

/// Sends every datagram back to its sender, recording who sent it.
fn echo_loop(sock: UdpSocket, stop: &AtomicBool, peers: &Arc<Mutex<Vec<SocketAddr>>>) {
    let mut buf = vec![0u8; 65536];
    loop {
        let got = sock.recv_from(&mut buf);
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if let Ok((n, from)) = got {
            lock(peers).push(from);
            let _ = sock.send_to(&buf[..n], from);
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
