// SPDX-License-Identifier: Apache-2.0

//! A stand-in for Istio's ztunnel, used by ztredir's tests and demo.
//!
//! It listens the way ztunnel does — on the wildcard addresses with
//! `IP_TRANSPARENT`/`IPV6_TRANSPARENT`, on the outbound (15001), inbound
//! (15006) and HBONE (15008) ports and optionally the DNS port (15053, TCP and
//! UDP) — so that traffic ztredir steers into it is accepted whatever its
//! destination. Every connection is forwarded in plain TCP to its original
//! destination (the accepted socket's local address), optionally from the
//! client's own address, and one JSON line is logged per connection or
//! datagram. It speaks neither HBONE nor mTLS: it only proves where traffic
//! went.
//!
//! With `--in-pod` it acts like ztunnel's shared mode instead (see `inpod`):
//! it connects to a ZDS server (`--zds PATH`), and opens those listeners
//! inside the network namespace of every workload the server hands it, each
//! connection logged with the workload it was seen as. Its DNS port then
//! answers queries itself.
//!
//! ```text
//! ztunnel_standin [--outbound-port 15001] [--inbound-port 15006] [--hbone-port 15008]
//!                 [--dns-port 15053] [--dns] [--spoof inbound|all|none] [--log FILE]
//!                 [--ready-file PATH] [--bind4 0.0.0.0] [--bind6 ::] [--in-pod [--zds PATH]]
//! ```

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket,
};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::sys::socket::{
    self, sockopt, AddressFamily, Backlog, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    SockaddrIn, SockaddrIn6, SockaddrStorage,
};
use serde_json::Value;

// In-pod mode, in a folder of its own: testbed/ holds the testbed module tree.
#[path = "ztunnel_standin/inpod.rs"]
mod inpod;
#[path = "ztunnel_standin/pod.rs"]
mod pod;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const UDP_REPLY_TIMEOUT: Duration = Duration::from_secs(2);
const COPY_BUFFER: usize = 64 * 1024;
const MAX_DATAGRAM: usize = 65_535;

const USAGE: &str = "\
usage: ztunnel_standin [--outbound-port 15001] [--inbound-port 15006] [--hbone-port 15008]
                       [--dns-port 15053] [--dns] [--spoof inbound|all|none] [--log FILE]
                       [--ready-file PATH] [--bind4 0.0.0.0] [--bind6 ::]
                       [--in-pod [--zds /var/run/ztunnel/ztunnel.sock]]";

/// Which listeners make the upstream connection from the client's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spoof {
    /// Inbound and HBONE ports only, as ztunnel does: the destination pod sees
    /// its real peer, while outbound traffic leaves from the node.
    Inbound,
    All,
    None,
}

#[derive(Debug)]
struct Config {
    outbound_port: u16,
    inbound_port: u16,
    hbone_port: u16,
    dns_port: u16,
    dns: bool,
    spoof: Spoof,
    log: Option<PathBuf>,
    ready_file: Option<PathBuf>,
    bind4: Ipv4Addr,
    bind6: Ipv6Addr,
    /// Listen in the workloads' namespaces that a ZDS server hands over, not in our own.
    in_pod: bool,
    /// The ZDS server's socket (in-pod mode).
    zds: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            outbound_port: 15001,
            inbound_port: 15006,
            hbone_port: 15008,
            dns_port: 15053,
            dns: false,
            spoof: Spoof::Inbound,
            log: None,
            ready_file: None,
            bind4: Ipv4Addr::UNSPECIFIED,
            bind6: Ipv6Addr::UNSPECIFIED,
            in_pod: false,
            zds: None,
        }
    }
}

/// What the command line asked for.
enum Command {
    Run(Config),
    Help,
}

impl Config {
    /// Accepts both `--flag value` and `--flag=value`.
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Command> {
        let mut cfg = Config::default();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (arg, None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .with_context(|| format!("{flag} needs a value"))
            };
            match flag.as_str() {
                "-h" | "--help" => return Ok(Command::Help),
                "--outbound-port" => cfg.outbound_port = parse_value(&flag, &value()?)?,
                "--inbound-port" => cfg.inbound_port = parse_value(&flag, &value()?)?,
                "--hbone-port" => cfg.hbone_port = parse_value(&flag, &value()?)?,
                "--dns-port" => cfg.dns_port = parse_value(&flag, &value()?)?,
                "--dns" => cfg.dns = true,
                "--spoof" => cfg.spoof = parse_spoof(&value()?)?,
                "--log" => cfg.log = Some(PathBuf::from(value()?)),
                "--ready-file" => cfg.ready_file = Some(PathBuf::from(value()?)),
                "--bind4" => cfg.bind4 = parse_value(&flag, &value()?)?,
                "--bind6" => cfg.bind6 = parse_value(&flag, &value()?)?,
                "--in-pod" => cfg.in_pod = true,
                "--zds" => cfg.zds = Some(PathBuf::from(value()?)),
                _ => bail!("unknown argument {flag:?}"),
            }
        }
        cfg.check()?;
        Ok(Command::Run(cfg))
    }

    /// Refuses flags that mean nothing in the mode asked for.
    fn check(&self) -> Result<()> {
        if self.zds.is_some() && !self.in_pod {
            bail!("--zds needs --in-pod");
        }
        if self.in_pod && (!self.bind4.is_unspecified() || !self.bind6.is_unspecified()) {
            bail!("--bind4 and --bind6 do not apply with --in-pod: it listens on the wildcard address in every workload's namespace");
        }
        Ok(())
    }

    fn tcp_ports(&self) -> Vec<u16> {
        let mut ports = vec![self.outbound_port, self.inbound_port, self.hbone_port];
        if self.dns {
            ports.push(self.dns_port);
        }
        ports
    }

    fn spoofs(&self, listener_port: u16) -> bool {
        match self.spoof {
            Spoof::All => true,
            Spoof::None => false,
            Spoof::Inbound => {
                listener_port == self.inbound_port || listener_port == self.hbone_port
            }
        }
    }
}

fn parse_value<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e| anyhow!("{flag} {value:?}: {e}"))
}

fn parse_spoof(value: &str) -> Result<Spoof> {
    match value {
        "inbound" => Ok(Spoof::Inbound),
        "all" => Ok(Spoof::All),
        "none" => Ok(Spoof::None),
        _ => bail!("--spoof must be inbound, all or none, not {value:?}"),
    }
}

/// State shared by every listener and connection thread.
struct Proxy {
    cfg: Config,
    /// One lock around the sink so that concurrent lines never interleave.
    log: Mutex<Box<dyn Write + Send>>,
}

impl Proxy {
    fn log(&self, fields: &[(&str, Value)]) {
        // One write per line, under the lock, keeps lines whole.
        let line = format!("{}\n", json_line(fields));
        // A poisoned lock only means another thread panicked mid-write; the
        // sink itself is still usable.
        let mut sink = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = sink.write_all(line.as_bytes()).and_then(|()| sink.flush()) {
            eprintln!("ztunnel_standin: cannot write log line: {e}");
        }
    }

    /// The line for one proxied connection (TCP) or datagram exchange (UDP). Only TCP has an
    /// upstream source worth logging: UDP replies are relayed from a throwaway socket.
    fn log_conn(&self, conn: &Conn, transfer: &Transfer, error: Option<&anyhow::Error>) {
        let mut fields = vec![
            ("proto", conn.proto.into()),
            ("listener", conn.port.into()),
            ("client", addr_value(Some(conn.client))),
            ("orig_dst", addr_value(Some(conn.orig_dst))),
        ];
        if conn.proto == "tcp" {
            fields.push(("upstream_src", addr_value(transfer.upstream_src)));
        }
        fields.extend([
            ("bytes_up", transfer.bytes_up.into()),
            ("bytes_down", transfer.bytes_down.into()),
            ("error", error_value(error)),
        ]);
        if let Some(pod) = &conn.pod {
            fields.extend([
                ("workload", pod.workload.as_str().into()),
                ("uid", pod.uid.as_str().into()),
                ("netns_inode", pod.netns_inode.into()),
            ]);
        }
        self.log(&fields);
    }

    /// True when a client reached one of our listeners directly rather than
    /// being redirected: forwarding that to its "original destination" would
    /// connect back to ourselves forever.
    fn is_self_addressed(&self, dst: SocketAddr) -> bool {
        // The DNS port, when served, is among the TCP ports and is the UDP one.
        self.cfg.tcp_ports().contains(&dst.port()) && local_ips().contains(&dst.ip())
    }
}

/// Builds a JSON object with the keys in the given order, which a
/// `serde_json::Map` without the `preserve_order` feature would not keep.
fn json_line(fields: &[(&str, Value)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(key, value)| format!("{}:{value}", Value::from(*key)))
        .collect();
    format!("{{{}}}", body.join(","))
}

fn addr_value(addr: Option<SocketAddr>) -> Value {
    addr.map_or(Value::Null, |a| Value::from(a.to_string()))
}

fn error_value(error: Option<&anyhow::Error>) -> Value {
    error.map_or(Value::Null, |e| Value::from(format!("{e:#}")))
}

fn local_ips() -> HashSet<IpAddr> {
    match nix::ifaddrs::getifaddrs() {
        Ok(ifaddrs) => ifaddrs
            .filter_map(|ifa| ifa.address.and_then(to_socket_addr))
            .map(|a| a.ip())
            .collect(),
        Err(e) => {
            eprintln!("ztunnel_standin: getifaddrs: {e}");
            HashSet::new()
        }
    }
}

/// `addr` with a v4-mapped IPv6 address turned back into the IPv4 one.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

fn to_socket_addr(addr: SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        Some(SocketAddr::from(*v4))
    } else {
        addr.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6))
    }
}

// ---------------------------------------------------------------------------
// Sockets

fn family(addr: &SocketAddr) -> AddressFamily {
    if addr.is_ipv6() {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    }
}

fn new_socket(addr: &SocketAddr, ty: SockType, flags: SockFlag) -> nix::Result<OwnedFd> {
    socket::socket(family(addr), ty, flags | SockFlag::SOCK_CLOEXEC, None)
}

/// Lets the socket accept traffic for, or send from, addresses that are not
/// local to this host — the heart of a transparent proxy.
fn set_transparent(fd: &OwnedFd, ipv6: bool) -> nix::Result<()> {
    if ipv6 {
        // nix has no wrapper for IPV6_TRANSPARENT.
        set_int_option(fd, libc::SOL_IPV6, libc::IPV6_TRANSPARENT, 1)
    } else {
        socket::setsockopt(fd, sockopt::IpTransparent, &true)
    }
}

/// Lets the socket bind an address no interface has (yet).
fn set_freebind(fd: &OwnedFd, ipv6: bool) -> nix::Result<()> {
    if ipv6 {
        set_int_option(fd, libc::SOL_IPV6, libc::IPV6_FREEBIND, 1)
    } else {
        socket::setsockopt(fd, sockopt::IpFreebind, &true)
    }
}

fn set_int_option(fd: &OwnedFd, level: i32, name: i32, value: libc::c_int) -> nix::Result<()> {
    // SAFETY: the pointer and length describe a live c_int for the duration
    // of the call, and the descriptor is owned by `fd`.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    Errno::result(rc).map(drop)
}

fn bind(fd: &OwnedFd, addr: SocketAddr) -> Result<()> {
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))
        .with_context(|| format!("bind {addr}"))
}

/// A transparent listening socket: TCP is listening, UDP also reports each
/// datagram's original destination.
fn transparent_listener(addr: SocketAddr, ty: SockType) -> Result<OwnedFd> {
    let fd = new_socket(&addr, ty, SockFlag::empty()).context("socket")?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true).context("SO_REUSEADDR")?;
    if addr.is_ipv6() {
        // Keep v4 on its own sockets so that every address we report is in
        // its natural form, never v4-mapped.
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true).context("IPV6_V6ONLY")?;
    }
    set_transparent(&fd, addr.is_ipv6()).context("IP(V6)_TRANSPARENT")?;
    if ty == SockType::Datagram {
        if addr.is_ipv6() {
            socket::setsockopt(&fd, sockopt::Ipv6OrigDstAddr, &true)
        } else {
            socket::setsockopt(&fd, sockopt::Ipv4OrigDstAddr, &true)
        }
        .context("IP(V6)_RECVORIGDSTADDR")?;
    }
    bind(&fd, addr)?;
    if ty == SockType::Stream {
        socket::listen(&fd, Backlog::MAXCONN).context("listen")?;
    }
    Ok(fd)
}

/// How an upstream connection is made.
#[derive(Clone, Copy, Debug, Default)]
struct Upstream {
    /// Spoof: connect from this (the client's) address.
    source: Option<IpAddr>,
    /// `SO_MARK`, which in-pod redirection leaves alone.
    mark: Option<u32>,
    /// `IP(V6)_FREEBIND` with `source`, as ztunnel sets for its leg into the app.
    freebind: bool,
}

/// An upstream TCP connection to `dst`, as `how` says.
fn connect_upstream(dst: SocketAddr, how: Upstream) -> Result<TcpStream> {
    let fd = new_socket(&dst, SockType::Stream, SockFlag::SOCK_NONBLOCK).context("socket")?;
    if let Some(mark) = how.mark {
        socket::setsockopt(&fd, sockopt::Mark, &mark).context("SO_MARK")?;
    }
    if let Some(ip) = how.source {
        set_transparent(&fd, dst.is_ipv6()).context("IP(V6)_TRANSPARENT")?;
        if how.freebind {
            set_freebind(&fd, dst.is_ipv6()).context("IP(V6)_FREEBIND")?;
        }
        bind(&fd, SocketAddr::new(ip, 0))?;
    }
    // Non-blocking so that the connect can be given up after CONNECT_TIMEOUT.
    match socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(dst)) {
        Ok(()) => Ok(()),
        Err(Errno::EINPROGRESS) => wait_connected(&fd, CONNECT_TIMEOUT),
        Err(e) => Err(e.into()),
    }
    .with_context(|| format!("connect {dst}"))?;
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

fn wait_connected(fd: &OwnedFd, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let millis = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `pfd` is one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, millis) };
        match rc {
            0 => return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
            n if n > 0 => break,
            _ if Errno::last() == Errno::EINTR => continue,
            _ => return Err(io::Error::last_os_error()),
        }
    }
    match socket::getsockopt(&fd.as_fd(), sockopt::SocketError)? {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// A UDP socket for one exchange. `transparent` allows binding to a foreign
/// address; SO_REUSEADDR lets concurrent replies share one source address.
fn udp_socket(bind_to: SocketAddr, transparent: bool) -> Result<UdpSocket> {
    let fd = new_socket(&bind_to, SockType::Datagram, SockFlag::empty()).context("socket")?;
    if transparent {
        set_transparent(&fd, bind_to.is_ipv6()).context("IP(V6)_TRANSPARENT")?;
        socket::setsockopt(&fd, sockopt::ReuseAddr, &true).context("SO_REUSEADDR")?;
    }
    bind(&fd, bind_to)?;
    Ok(UdpSocket::from(fd))
}

fn unspecified(like: &SocketAddr) -> IpAddr {
    if like.is_ipv6() {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    }
}

// ---------------------------------------------------------------------------
// TCP

fn serve_tcp(proxy: Arc<Proxy>, listener: TcpListener, port: u16) {
    for conn in listener.incoming() {
        match conn {
            Ok(client) => {
                let proxy = Arc::clone(&proxy);
                spawn("tcp-conn", move || handle_tcp(&proxy, client, port, None));
            }
            Err(e) => {
                eprintln!("ztunnel_standin: accept on port {port}: {e}");
                // Out of descriptors or memory: back off instead of spinning.
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// What a log line says about where a connection came from and was going.
struct Conn {
    proto: &'static str,
    port: u16,
    client: SocketAddr,
    orig_dst: SocketAddr,
    /// In-pod mode: the workload whose namespace the listener is in.
    pod: Option<Arc<PodId>>,
}

/// An in-pod workload as its connections' log lines name it.
struct PodId {
    uid: String,
    /// `namespace/name`.
    workload: String,
    netns_inode: u64,
}

#[derive(Default)]
struct Transfer {
    bytes_up: u64,
    bytes_down: u64,
    upstream_src: Option<SocketAddr>,
}

fn handle_tcp(proxy: &Proxy, client: TcpStream, port: u16, pod: Option<Arc<PodId>>) {
    let (Ok(peer), Ok(orig_dst)) = (client.peer_addr(), client.local_addr()) else {
        // The client is already gone; there is nothing meaningful to log.
        return;
    };
    // A dual-stack (in-pod) listener reports IPv4 peers as v4-mapped IPv6.
    let conn = Conn {
        proto: "tcp",
        port,
        client: canonical(peer),
        orig_dst: canonical(orig_dst),
        pod,
    };
    handle(proxy, &conn, |t| forward_tcp(proxy, client, &conn, t));
}

/// Forwards one connection or datagram, unless it is addressed to this proxy itself, and logs
/// it.
fn handle(proxy: &Proxy, conn: &Conn, forward: impl FnOnce(&mut Transfer) -> Result<()>) {
    let mut transfer = Transfer::default();
    let result = if proxy.is_self_addressed(conn.orig_dst) {
        let dst = conn.orig_dst;
        Err(anyhow!("not forwarded: {dst} is this proxy's own listener"))
    } else {
        forward(&mut transfer)
    };
    proxy.log_conn(conn, &transfer, result.as_ref().err());
}

fn forward_tcp(
    proxy: &Proxy,
    client: TcpStream,
    conn: &Conn,
    transfer: &mut Transfer,
) -> Result<()> {
    let source = proxy.cfg.spoofs(conn.port).then_some(conn.client.ip());
    // In-pod, as ztunnel: every socket carries its mark, and the leg into the app may bind
    // the client's address before it exists anywhere.
    let in_pod = conn.pod.is_some();
    let how = Upstream {
        source,
        mark: in_pod.then_some(pod::MARK),
        freebind: in_pod,
    };
    let upstream = connect_upstream(conn.orig_dst, how)?;
    transfer.upstream_src = upstream.local_addr().ok();
    relay(client, upstream, transfer)
}

/// Copies both ways until both directions have ended. A clean EOF is passed
/// on as a half-close so request/response protocols that rely on it work; an
/// error tears down both connections.
fn relay(client: TcpStream, upstream: TcpStream, transfer: &mut Transfer) -> Result<()> {
    let (client_rx, upstream_tx) = (client.try_clone()?, upstream.try_clone()?);
    let up = thread::Builder::new()
        .name("tcp-up".into())
        .spawn(move || pump(&client_rx, &upstream_tx))
        .context("spawn copy thread")?;
    let (down_bytes, down_err) = pump(&upstream, &client);
    let (up_bytes, up_err) = up
        .join()
        .unwrap_or_else(|_| (0, Some(io::Error::other("copy thread panicked"))));
    transfer.bytes_up = up_bytes;
    transfer.bytes_down = down_bytes;
    match (up_err, down_err) {
        (Some(e), _) => Err(anyhow!(e).context("client->upstream")),
        (None, Some(e)) => Err(anyhow!(e).context("upstream->client")),
        (None, None) => Ok(()),
    }
}

/// Returns the bytes delivered and the error that stopped the copy, if any.
fn pump(from: &TcpStream, to: &TcpStream) -> (u64, Option<io::Error>) {
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut total = 0u64;
    loop {
        let n = match (&*from).read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return (total, None);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return (total, Some(abort(from, to, e))),
        };
        if let Err(e) = (&*to).write_all(&buf[..n]) {
            return (total, Some(abort(from, to, e)));
        }
        total += n as u64;
    }
}

/// Unblocks the opposite direction's copy so the connection ends as a whole.
fn abort(a: &TcpStream, b: &TcpStream, e: io::Error) -> io::Error {
    let _ = a.shutdown(Shutdown::Both);
    let _ = b.shutdown(Shutdown::Both);
    e
}

// ---------------------------------------------------------------------------
// UDP

fn serve_udp(proxy: Arc<Proxy>, sock: UdpSocket, port: u16) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match recv_with_orig_dst(&sock, &mut buf) {
            Ok((len, client, orig_dst)) => {
                let proxy = Arc::clone(&proxy);
                let payload = buf[..len].to_vec();
                spawn("udp-exchange", move || {
                    handle_udp(&proxy, &payload, client, orig_dst, port)
                });
            }
            Err(e) => eprintln!("ztunnel_standin: recvmsg on UDP port {port}: {e:#}"),
        }
    }
}

/// Reads one datagram with its sender and the destination it was sent to.
fn recv_with_orig_dst(sock: &UdpSocket, buf: &mut [u8]) -> Result<(usize, SocketAddr, SocketAddr)> {
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(libc::sockaddr_in6);
    let msg = socket::recvmsg::<SockaddrStorage>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )?;
    let client = msg
        .address
        .and_then(to_socket_addr)
        .context("datagram without a source address")?;
    let mut orig_dst = None;
    for cmsg in msg.cmsgs()? {
        match cmsg {
            ControlMessageOwned::Ipv4OrigDstAddr(sin) => {
                orig_dst = Some(SocketAddr::from(SockaddrIn::from(sin)));
            }
            ControlMessageOwned::Ipv6OrigDstAddr(sin6) => {
                orig_dst = Some(SocketAddr::from(SockaddrIn6::from(sin6)));
            }
            _ => {}
        }
    }
    let orig_dst = orig_dst.context("datagram without an original destination")?;
    Ok((msg.bytes, client, orig_dst))
}

fn handle_udp(proxy: &Proxy, payload: &[u8], client: SocketAddr, orig_dst: SocketAddr, port: u16) {
    let conn = Conn {
        proto: "udp",
        port,
        client,
        orig_dst,
        pod: None,
    };
    handle(proxy, &conn, |t| forward_datagram(proxy, payload, &conn, t));
}

/// Sends the datagram on to its original destination and relays one reply,
/// which must look to the client as if the destination itself answered.
fn forward_datagram(
    proxy: &Proxy,
    payload: &[u8],
    conn: &Conn,
    transfer: &mut Transfer,
) -> Result<()> {
    let (client, orig_dst) = (conn.client, conn.orig_dst);
    let spoof = proxy.cfg.spoofs(conn.port);
    let source = SocketAddr::new(
        if spoof {
            client.ip()
        } else {
            unspecified(&orig_dst)
        },
        0,
    );
    let upstream = udp_socket(source, spoof)?;
    upstream
        .send_to(payload, orig_dst)
        .with_context(|| format!("send to {orig_dst}"))?;
    transfer.bytes_up = payload.len() as u64;

    let reply = await_reply(&upstream, orig_dst, UDP_REPLY_TIMEOUT)?;
    let responder = udp_socket(orig_dst, true)?;
    responder
        .send_to(&reply, client)
        .with_context(|| format!("reply to {client}"))?;
    transfer.bytes_down = reply.len() as u64;
    Ok(())
}

/// The socket is unconnected, so anything could arrive: only a datagram from
/// the original destination counts as the reply.
fn await_reply(sock: &UdpSocket, from: SocketAddr, timeout: Duration) -> Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no reply from {from} within {timeout:?}");
        }
        sock.set_read_timeout(Some(left))?;
        match sock.recv_from(&mut buf) {
            Ok((len, sender)) if sender == from => return Ok(buf[..len].to_vec()),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                bail!("no reply from {from} within {timeout:?}")
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(anyhow!(e).context(format!("receive from {from}"))),
        }
    }
}

// ---------------------------------------------------------------------------
// Startup

enum Listener {
    Tcp(TcpListener, u16),
    Udp(UdpSocket, u16),
}

/// Binds every listener before any is served, so that readiness means all of
/// them accept traffic.
fn bind_listeners(cfg: &Config) -> Result<Vec<Listener>> {
    let mut listeners = bind_family(cfg, IpAddr::V4(cfg.bind4))?;
    match bind_family(cfg, IpAddr::V6(cfg.bind6)) {
        Ok(v6) => listeners.extend(v6),
        Err(e) if ipv6_unavailable(&e) => {
            eprintln!("ztunnel_standin: warning: IPv6 unavailable ({e:#}); serving IPv4 only");
        }
        Err(e) => return Err(e),
    }
    Ok(listeners)
}

fn bind_family(cfg: &Config, ip: IpAddr) -> Result<Vec<Listener>> {
    let mut listeners = Vec::new();
    for port in cfg.tcp_ports() {
        let addr = SocketAddr::new(ip, port);
        let fd = transparent_listener(addr, SockType::Stream)
            .with_context(|| format!("TCP listener {addr}"))?;
        listeners.push(Listener::Tcp(TcpListener::from(fd), port));
    }
    if cfg.dns {
        let addr = SocketAddr::new(ip, cfg.dns_port);
        let fd = transparent_listener(addr, SockType::Datagram)
            .with_context(|| format!("UDP listener {addr}"))?;
        listeners.push(Listener::Udp(UdpSocket::from(fd), cfg.dns_port));
    }
    Ok(listeners)
}

/// The kernel lacks IPv6 or it is disabled (`disable_ipv6` leaves no `::`
/// to bind).
fn ipv6_unavailable(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<Errno>(),
            Some(Errno::EAFNOSUPPORT | Errno::EADDRNOTAVAIL)
        )
    })
}

fn open_log(path: Option<&PathBuf>) -> Result<Box<dyn Write + Send>> {
    Ok(match path {
        Some(path) => {
            let file: File = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("open log {}", path.display()))?;
            Box::new(file)
        }
        None => Box::new(io::stdout()),
    })
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Option<JoinHandle<()>> {
    match thread::Builder::new().name(name.into()).spawn(f) {
        Ok(handle) => Some(handle),
        // The closure, and with it the connection, is dropped: the client
        // sees a close rather than the whole proxy going down.
        Err(e) => {
            eprintln!("ztunnel_standin: cannot spawn {name} thread: {e}");
            None
        }
    }
}

fn run(cfg: Config) -> Result<()> {
    let log = open_log(cfg.log.as_ref())?;
    let listeners = bind_listeners(&cfg)?;
    let ready_file = cfg.ready_file.clone();
    let proxy = Arc::new(Proxy {
        cfg,
        log: Mutex::new(log),
    });

    let mut handles = Vec::new();
    for listener in listeners {
        let proxy = Arc::clone(&proxy);
        let handle = match listener {
            Listener::Tcp(l, port) => spawn("tcp-listener", move || serve_tcp(proxy, l, port)),
            Listener::Udp(s, port) => spawn("udp-listener", move || serve_udp(proxy, s, port)),
        };
        handles.push(handle.context("cannot start listener thread")?);
    }

    announce_ready(ready_file.as_deref())?;
    for handle in handles {
        let _ = handle.join();
    }
    Ok(())
}

/// Tells whoever waits that the proxy serves: writes our PID to the ready
/// file, if any, and a "ready" line on stderr.
fn announce_ready(ready_file: Option<&std::path::Path>) -> Result<()> {
    let pid = std::process::id();
    if let Some(path) = ready_file {
        std::fs::write(path, format!("{pid}\n"))
            .with_context(|| format!("write ready file {}", path.display()))?;
    }
    eprintln!(
        "{}",
        json_line(&[("event", "ready".into()), ("pid", pid.into())])
    );
    Ok(())
}

/// A non-interactive shell starts background jobs with SIGINT ignored, and
/// that disposition is inherited; tests and the demo stop the proxy with
/// either signal, so both get their default action back.
fn restore_default_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installing SIG_DFL registers no handler code.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
    }
}

fn main() -> ExitCode {
    restore_default_signals();
    match Config::parse(std::env::args().skip(1)) {
        Ok(Command::Help) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Command::Run(cfg)) => match if cfg.in_pod {
            inpod::run(cfg)
        } else {
            run(cfg)
        } {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ztunnel_standin: {e:#}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("ztunnel_standin: {e:#}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
