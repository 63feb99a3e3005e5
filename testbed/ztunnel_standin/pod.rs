// SPDX-License-Identifier: Apache-2.0
//! One in-pod workload: the listeners ztunnel opens inside the workload's netns, and what is
//! done with what they accept.
//!
//! A thread of its own joins the netns (`setns` applies to the calling thread only) and
//! creates every socket of the workload there, or in threads it starts, which inherit the
//! namespace: the listeners, the upstream connections, the DNS replies. The listeners are
//! ztunnel's, all with `SO_MARK 0x539` (which in-pod redirection leaves alone) and
//! `SO_REUSEPORT` (so that two proxies can hold them during an upgrade):
//!
//! - TCP `[::]:15001` (outbound), `[::]:15006` (inbound), `[::]:15008` (HBONE), dual stack and
//!   transparent. The accepted socket's local address is the original destination: outbound
//!   connects to it from the workload's own address (chosen by routing), inbound and HBONE
//!   from the client's address (transparent, freebind), in plain TCP.
//! - With `--dns`, TCP and UDP on `127.0.0.1:15053` and `[::1]:15053` (not transparent; no
//!   IPv6 ones if the netns has no `::1`). No upstream: every query gets a recognisable
//!   answer, its first two bytes (the DNS id) then `standin-dns:NAMESPACE/NAME`, over TCP
//!   with DNS's two-byte length prefix.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{self, sockopt, Backlog, SockFlag, SockType};

use super::{
    bind, canonical, handle_tcp, ipv6_unavailable, new_socket, set_transparent, spawn, Config,
    Conn, PodId, Proxy, Transfer, MAX_DATAGRAM,
};

/// ztunnel's mark on every socket it opens in a workload's netns.
pub(super) const MARK: u32 = 0x539;
/// A DNS client that stops talking is given up after this long.
const DNS_TCP_TIMEOUT: Duration = Duration::from_secs(10);
const DNS_ANSWER_TAG: &[u8] = b"standin-dns:";

/// A served workload. Dropping it closes its listeners, and waits until they are closed;
/// connections already accepted carry on.
pub(super) struct Pod {
    pub(super) id: Arc<PodId>,
    pub(super) service_account: String,
    /// Wakes the workload's thread to make it return (and close the listeners).
    wake: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl Pod {
    /// Opens the listeners of `id` in `netns`; returns once all of them are bound.
    pub(super) fn start(
        proxy: Arc<Proxy>,
        id: Arc<PodId>,
        service_account: String,
        netns: OwnedFd,
    ) -> Result<Pod> {
        let wake = eventfd().context("eventfd")?;
        let woken = wake.try_clone().context("dup the eventfd")?;
        let (bound_tx, bound_rx) = mpsc::channel();
        let pod_id = Arc::clone(&id);
        let thread = thread::Builder::new()
            .name("pod".into())
            .spawn(move || match enter_and_bind(&netns, &proxy.cfg) {
                Ok(listeners) => {
                    drop(netns);
                    let _ = bound_tx.send(Ok(()));
                    serve(&proxy, &pod_id, &listeners, &woken);
                }
                Err(e) => {
                    let _ = bound_tx.send(Err(e));
                }
            })
            .context("spawn the workload's thread")?;
        let bound = bound_rx
            .recv()
            .unwrap_or_else(|_| Err(anyhow!("the workload's thread died")));
        if let Err(e) = bound {
            let _ = thread.join();
            return Err(e);
        }
        Ok(Pod {
            id,
            service_account,
            wake,
            thread: Some(thread),
        })
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to the eventfd we own.
        let rc = unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if rc != 8 {
            eprintln!(
                "ztunnel_standin: cannot wake the thread of {}: {}",
                self.id.workload,
                io::Error::last_os_error()
            );
            return; // never join a thread that will not return
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor we own.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: see above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What a listening socket is for.
enum Listener {
    /// Forwarded to the original destination (outbound, inbound, HBONE).
    Forward(TcpListener, u16),
    DnsTcp(TcpListener, u16),
    DnsUdp(UdpSocket, u16),
}

impl Listener {
    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Listener::Forward(l, _) | Listener::DnsTcp(l, _) => l.as_fd(),
            Listener::DnsUdp(s, _) => s.as_fd(),
        }
    }
}

/// Moves the calling thread into `netns` and binds all the workload's listeners there.
fn enter_and_bind(netns: &OwnedFd, cfg: &Config) -> Result<Vec<Listener>> {
    setns(netns, CloneFlags::CLONE_NEWNET).context("setns(CLONE_NEWNET)")?;
    let mut listeners = Vec::new();
    for port in [cfg.outbound_port, cfg.inbound_port, cfg.hbone_port] {
        let addr = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port);
        let fd = listener(addr, SockType::Stream, true)?;
        listeners.push(Listener::Forward(TcpListener::from(fd), port));
    }
    if cfg.dns {
        let port = cfg.dns_port;
        listeners.extend(dns_listeners(Ipv4Addr::LOCALHOST.into(), port)?);
        match dns_listeners(Ipv6Addr::LOCALHOST.into(), port) {
            Ok(v6) => listeners.extend(v6),
            // IPv6 off in this netns: lo has no ::1.
            Err(e) if ipv6_unavailable(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(listeners)
}

fn dns_listeners(ip: IpAddr, port: u16) -> Result<Vec<Listener>> {
    let addr = SocketAddr::new(ip, port);
    let tcp = listener(addr, SockType::Stream, false)?;
    let udp = listener(addr, SockType::Datagram, false)?;
    Ok(vec![
        Listener::DnsTcp(TcpListener::from(tcp), port),
        Listener::DnsUdp(UdpSocket::from(udp), port),
    ])
}

/// A listening (TCP) or bound (UDP) socket as ztunnel makes them in a workload's netns.
/// Non-blocking: the accept after a wake-up must not hang if the client has gone meanwhile.
fn listener(addr: SocketAddr, ty: SockType, transparent: bool) -> Result<OwnedFd> {
    let what = match ty {
        SockType::Stream => format!("TCP listener {addr}"),
        _ => format!("UDP socket {addr}"),
    };
    let make = || -> Result<OwnedFd> {
        let fd = new_socket(&addr, ty, SockFlag::SOCK_NONBLOCK).context("socket")?;
        socket::setsockopt(&fd, sockopt::ReusePort, &true).context("SO_REUSEPORT")?;
        socket::setsockopt(&fd, sockopt::Mark, &MARK).context("SO_MARK")?;
        if addr.is_ipv6() && addr.ip().is_unspecified() {
            socket::setsockopt(&fd, sockopt::Ipv6V6Only, &false).context("IPV6_V6ONLY")?;
        }
        if transparent {
            // Both: the socket takes IPv4 (v4-mapped) and IPv6 traffic.
            set_transparent(&fd, false).context("IP_TRANSPARENT")?;
            if addr.is_ipv6() {
                set_transparent(&fd, true).context("IPV6_TRANSPARENT")?;
            }
        }
        bind(&fd, addr)?;
        if ty == SockType::Stream {
            socket::listen(&fd, Backlog::MAXCONN).context("listen")?;
        }
        Ok(fd)
    };
    make().with_context(|| what)
}

/// Serves the listeners until `woken` is signalled; they close when the caller drops them.
fn serve(proxy: &Arc<Proxy>, id: &Arc<PodId>, listeners: &[Listener], woken: &OwnedFd) {
    let mut pfds: Vec<libc::pollfd> = std::iter::once(woken.as_fd())
        .chain(listeners.iter().map(Listener::fd))
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `pfds` is a live array of pollfds, its length passed with it.
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            if Errno::last() == Errno::EINTR {
                continue;
            }
            eprintln!(
                "ztunnel_standin: poll the listeners of {}: {}",
                id.workload,
                io::Error::last_os_error()
            );
            thread::sleep(Duration::from_millis(100));
            continue;
        }
        if pfds[0].revents != 0 {
            return;
        }
        for (pfd, listener) in pfds[1..].iter().zip(listeners) {
            if pfd.revents != 0 {
                ready(proxy, id, listener);
            }
        }
    }
}

/// Takes what is waiting on a listener that poll reported ready.
fn ready(proxy: &Arc<Proxy>, id: &Arc<PodId>, listener: &Listener) {
    match listener {
        Listener::Forward(l, port) | Listener::DnsTcp(l, port) => {
            let port = *port;
            let Some(client) = accept(l, port) else {
                return;
            };
            let (proxy, id) = (Arc::clone(proxy), Arc::clone(id));
            if matches!(listener, Listener::Forward(..)) {
                spawn("tcp-conn", move || {
                    handle_tcp(&proxy, client, port, Some(id));
                });
            } else {
                spawn("dns-tcp", move || dns_tcp(&proxy, &id, client, port));
            }
        }
        Listener::DnsUdp(sock, port) => dns_udp(proxy, id, sock, *port),
    }
}

/// One waiting connection, blocking and with the mark set (it is inherited from the
/// listener, but ztunnel's replies must carry it whatever happens).
fn accept(listener: &TcpListener, port: u16) -> Option<TcpStream> {
    let client = match listener.accept() {
        Ok((client, _)) => client,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
        Err(e) => {
            eprintln!("ztunnel_standin: accept on port {port}: {e}");
            // Out of descriptors or memory: back off instead of spinning.
            thread::sleep(Duration::from_millis(100));
            return None;
        }
    };
    if let Err(e) = socket::setsockopt(&client, sockopt::Mark, &MARK) {
        eprintln!("ztunnel_standin: SO_MARK on an accepted socket: {e}");
        return None;
    }
    Some(client)
}

/// The answer to every query: its id, then who answered.
fn dns_answer(query: &[u8], id: &PodId) -> Vec<u8> {
    let mut answer = query[..query.len().min(2)].to_vec();
    answer.extend_from_slice(DNS_ANSWER_TAG);
    answer.extend_from_slice(id.workload.as_bytes());
    answer
}

/// Answers every datagram waiting on the DNS socket, one log line each.
fn dns_udp(proxy: &Proxy, id: &Arc<PodId>, sock: &UdpSocket, port: u16) {
    let Ok(local) = sock.local_addr() else {
        return;
    };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (len, client) = match sock.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("ztunnel_standin: receive on DNS port {local}: {e}");
                return;
            }
        };
        let answer = dns_answer(&buf[..len], id);
        let mut transfer = Transfer {
            bytes_up: len as u64,
            ..Transfer::default()
        };
        let sent = sock.send_to(&answer, client).map_err(anyhow::Error::from);
        if sent.is_ok() {
            transfer.bytes_down = answer.len() as u64;
        }
        let conn = Conn {
            proto: "udp",
            port,
            client,
            orig_dst: local,
            pod: Some(Arc::clone(id)),
        };
        proxy.log_conn(&conn, &transfer, sent.err().as_ref());
    }
}

/// Answers the queries of one DNS-over-TCP connection until its client closes it.
fn dns_tcp(proxy: &Proxy, id: &Arc<PodId>, client: TcpStream, port: u16) {
    let (Ok(peer), Ok(local)) = (client.peer_addr(), client.local_addr()) else {
        return;
    };
    let conn = Conn {
        proto: "tcp",
        port,
        client: canonical(peer),
        orig_dst: canonical(local),
        pod: Some(Arc::clone(id)),
    };
    let mut transfer = Transfer::default();
    let result = dns_tcp_exchange(&client, id, &mut transfer);
    proxy.log_conn(&conn, &transfer, result.err().as_ref());
}

fn dns_tcp_exchange(mut client: &TcpStream, id: &PodId, transfer: &mut Transfer) -> Result<()> {
    client.set_read_timeout(Some(DNS_TCP_TIMEOUT))?;
    loop {
        let mut prefix = [0u8; 2];
        match client.read(&mut prefix[..1]) {
            Ok(0) => return Ok(()),
            Ok(_) => client
                .read_exact(&mut prefix[1..])
                .context("length prefix")?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(anyhow!(e).context("length prefix")),
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
        client.read_exact(&mut query).context("query")?;
        transfer.bytes_up += 2 + query.len() as u64;
        let answer = dns_answer(&query, id);
        let Ok(len) = u16::try_from(answer.len()) else {
            bail!(
                "answer of {} bytes does not fit a DNS message",
                answer.len()
            );
        };
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(&answer);
        client.write_all(&framed).context("answer")?;
        transfer.bytes_down += framed.len() as u64;
    }
}
