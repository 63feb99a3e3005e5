// SPDX-License-Identifier: Apache-2.0
//! In-pod mode: the stand-in as ztunnel's shared mode, a ZDS client.
//!
//! It connects to the server's socket (retrying, 10 ms doubling to 1 s, while there is none
//! or it refuses), says hello, and serves what it is told: an add opens the workload's
//! listeners in the netns that came with it (`pod`) and is acked once they are all bound, or
//! acked with the error that prevented it; a del closes them before its ack; snapshot sent
//! drops every workload not (re)added since the connection began. After an EOF it reconnects
//! the same way and keeps its workloads until the next snapshot, as ztunnel does, so a
//! server restart does not disturb a workload the new server sends again with the same netns.
//!
//! Like ztunnel it exits (status 1) on what ztunnel treats as a protocol error: a keep after
//! the snapshot, a second snapshot sent on one connection, an add without workload info, an
//! undecodable or oversized message. Every ZDS event is a JSON line on the log, next to the
//! connection lines: `zds-connected`, `zds-add`, `zds-del`, `zds-keep`, `zds-snapshot`,
//! `zds-eof`, `zds-error`, `zds-protocol-error`.

use std::collections::{HashMap, HashSet};
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};
use serde_json::Value;
use ztredir::zds::proto::{self, Ack, Add, Hello, Request, WorkloadInfo};

use super::pod::Pod;
use super::{announce_ready, open_log, Config, PodId, Proxy};

const RECONNECT_FIRST: Duration = Duration::from_millis(10);
const RECONNECT_MAX: Duration = Duration::from_secs(1);
/// More descriptors than an add carries, so that extra ones are seen (and closed).
const MAX_FDS: usize = 8;

/// Why a connection ended other than by the server's EOF.
enum Fault {
    /// What ztunnel exits on.
    Protocol(anyhow::Error),
    /// A broken connection: reconnect.
    Io(anyhow::Error),
}

fn protocol(msg: impl Into<String>) -> Fault {
    Fault::Protocol(anyhow!(msg.into()))
}

/// Runs the ZDS client until a protocol error (or a signal).
pub(super) fn run(cfg: Config) -> Result<()> {
    let socket = cfg
        .zds
        .clone()
        .unwrap_or_else(|| PathBuf::from(ztredir::zds::DEFAULT_SOCKET));
    let log = open_log(cfg.log.as_ref())?;
    let mut client = Client {
        ready_file: cfg.ready_file.clone(),
        proxy: Arc::new(Proxy {
            cfg,
            log: Mutex::new(log),
        }),
        pods: HashMap::new(),
        announced: false,
    };
    loop {
        let conn = connect(&socket);
        client.event("zds-connected", &[("socket", path_value(&socket))]);
        match client.session(&conn) {
            Ok(()) => client.event("zds-eof", &[]),
            Err(Fault::Io(e)) => client.event("zds-error", &[("error", format!("{e:#}").into())]),
            Err(Fault::Protocol(e)) => {
                client.event("zds-protocol-error", &[("error", format!("{e:#}").into())]);
                return Err(e.context("ZDS protocol error"));
            }
        }
    }
}

fn path_value(path: &Path) -> Value {
    path.display().to_string().into()
}

/// A connected socket to the server, after as many tries as it takes.
fn connect(path: &Path) -> OwnedFd {
    let mut delay = RECONNECT_FIRST;
    loop {
        match try_connect(path) {
            Ok(fd) => return fd,
            // No server (yet, or between two): the normal wait.
            Err(Errno::ENOENT | Errno::ECONNREFUSED) => {}
            Err(e) => eprintln!("ztunnel_standin: connect {}: {e}", path.display()),
        }
        thread::sleep(delay);
        delay = (delay * 2).min(RECONNECT_MAX);
    }
}

fn try_connect(path: &Path) -> nix::Result<OwnedFd> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(fd)
}

/// The workloads served, which outlive connections.
struct Client {
    proxy: Arc<Proxy>,
    ready_file: Option<PathBuf>,
    pods: HashMap<String, Pod>,
    /// Whether the first snapshot was acked (and readiness announced).
    announced: bool,
}

impl Client {
    fn event(&self, event: &str, fields: &[(&str, Value)]) {
        let mut line = vec![("event", Value::from(event))];
        line.extend(fields.iter().cloned());
        self.proxy.log(&line);
    }

    /// One connection, from hello to the server's EOF.
    fn session(&mut self, sock: &OwnedFd) -> Result<(), Fault> {
        let hello = proto::encode_hello(&Hello {
            version: proto::VERSION_V1,
        });
        send(sock, &hello).map_err(|e| Fault::Io(e.context("send hello")))?;
        let mut snapshot_done = false;
        // Workloads the server added or kept since this connection began.
        let mut confirmed = HashSet::new();
        while let Some((msg, fds)) = recv(sock)? {
            let req = proto::decode_request(&msg).map_err(|e| protocol(e.to_string()))?;
            let result = match req {
                Request::Add(add) => {
                    let uid = add.uid.clone();
                    let result = self.add(add, fds)?;
                    if result.is_ok() && !snapshot_done {
                        confirmed.insert(uid);
                    }
                    result
                }
                Request::Del { uid } => {
                    self.del(&uid);
                    Ok(())
                }
                Request::SnapshotSent => {
                    if snapshot_done {
                        return Err(protocol("a second snapshot sent on one connection"));
                    }
                    snapshot_done = true;
                    self.snapshot(&confirmed);
                    Ok(())
                }
                Request::Keep { uid } => {
                    if snapshot_done {
                        return Err(protocol(format!("keep uid={uid} after the snapshot")));
                    }
                    self.keep(&uid, &mut confirmed)
                }
            };
            let ack = proto::encode_response(&Ack {
                error: result.err().unwrap_or_default(),
            });
            send(sock, &ack).map_err(|e| Fault::Io(e.context("send ack")))?;
            if snapshot_done && !self.announced {
                self.announced = true;
                announce_ready(self.ready_file.as_deref()).map_err(Fault::Io)?;
            }
        }
        Ok(())
    }

    /// Serves a workload; Err is the ack's error.
    fn add(&mut self, add: Add, fds: Vec<OwnedFd>) -> Result<Result<(), String>, Fault> {
        let Add { uid, workload_info } = add;
        let info: WorkloadInfo = workload_info
            .ok_or_else(|| protocol(format!("add uid={uid} without workload info")))?;
        let workload = format!("{}/{}", info.namespace, info.name);
        let mut fields = vec![
            ("uid", Value::from(uid.as_str())),
            ("workload", workload.as_str().into()),
            ("service_account", info.service_account.as_str().into()),
        ];
        let netns = match <[OwnedFd; 1]>::try_from(fds) {
            Ok([fd]) => fd,
            Err(fds) => {
                let error = format!("add with {} fds, expected the netns only", fds.len());
                fields.push(("error", error.as_str().into()));
                self.event("zds-add", &fields);
                return Ok(Err(error));
            }
        };
        let result = self.serve(&uid, &info, netns);
        match &result {
            Ok((how, inode)) => fields.extend([
                ("netns_inode", Value::from(*inode)),
                ("result", Value::from(*how)),
            ]),
            Err(e) => fields.extend([("result", "failed".into()), ("error", e.as_str().into())]),
        }
        self.event("zds-add", &fields);
        Ok(result.map(drop))
    }

    /// Opens the listeners of workload `uid` in `netns`, unless it is served there already;
    /// returns what was done and the netns inode.
    fn serve(
        &mut self,
        uid: &str,
        info: &WorkloadInfo,
        netns: OwnedFd,
    ) -> Result<(&'static str, u64), String> {
        let inode = nix::sys::stat::fstat(&netns)
            .map_err(|e| format!("fstat the netns fd: {e}"))?
            .st_ino;
        let id = PodId {
            uid: uid.to_owned(),
            workload: format!("{}/{}", info.namespace, info.name),
            netns_inode: inode,
        };
        if let Some(pod) = self.pods.get(uid) {
            if pod.id.netns_inode == inode
                && pod.id.workload == id.workload
                && pod.service_account == info.service_account
            {
                return Ok(("kept", inode));
            }
        }
        let pod = Pod::start(
            Arc::clone(&self.proxy),
            Arc::new(id),
            info.service_account.clone(),
            netns,
        )
        .map_err(|e| format!("{e:#}"))?;
        // The new listeners are bound (SO_REUSEPORT) before the old ones close.
        let how = match self.pods.insert(uid.to_owned(), pod) {
            Some(_old) => "replaced",
            None => "bound",
        };
        Ok((how, inode))
    }

    fn del(&mut self, uid: &str) {
        let pod = self.pods.remove(uid);
        let workload = pod.as_ref().map(|p| Value::from(p.id.workload.as_str()));
        // Closes its listeners now, before the ack.
        drop(pod);
        let known = workload.is_some();
        self.event(
            "zds-del",
            &[
                ("uid", uid.into()),
                ("workload", workload.unwrap_or(Value::Null)),
                ("known", known.into()),
            ],
        );
    }

    fn keep(&mut self, uid: &str, confirmed: &mut HashSet<String>) -> Result<(), String> {
        let known = self.pods.contains_key(uid);
        self.event("zds-keep", &[("uid", uid.into()), ("known", known.into())]);
        if !known {
            return Err(format!("keep uid={uid}: no such workload"));
        }
        confirmed.insert(uid.to_owned());
        Ok(())
    }

    /// The end of a snapshot: workloads the server did not send again are gone.
    fn snapshot(&mut self, confirmed: &HashSet<String>) {
        let mut dropped: Vec<String> = self
            .pods
            .keys()
            .filter(|uid| !confirmed.contains(*uid))
            .cloned()
            .collect();
        dropped.sort();
        for uid in &dropped {
            self.pods.remove(uid);
        }
        self.event(
            "zds-snapshot",
            &[
                ("workloads", self.pods.len().into()),
                ("dropped", dropped.into()),
            ],
        );
    }
}

fn send(sock: &OwnedFd, msg: &[u8]) -> Result<()> {
    let n = socket::send(sock.as_raw_fd(), msg, MsgFlags::MSG_NOSIGNAL)?;
    if n != msg.len() {
        return Err(anyhow!("sent {n} of {} bytes", msg.len()));
    }
    Ok(())
}

/// A message with the descriptors that came with it.
type Message = (Vec<u8>, Vec<OwnedFd>);

/// The next message, or None at the server's EOF.
fn recv(sock: &OwnedFd) -> Result<Option<Message>, Fault> {
    let mut buf = [0u8; proto::MAX_MESSAGE];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (len, flags, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = match socket::recvmsg::<UnixAddr>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => msg,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(Fault::Io(anyhow!(e).context("receive"))),
        };
        let mut fds = Vec::new();
        let cmsgs = msg.cmsgs().context("control messages").map_err(Fault::Io)?;
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these descriptors for us alone.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        break (msg.bytes, msg.flags, fds);
    };
    if flags.contains(MsgFlags::MSG_TRUNC) {
        return Err(protocol(format!(
            "a message longer than {} bytes",
            proto::MAX_MESSAGE
        )));
    }
    if flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(protocol(format!("a message with more than {MAX_FDS} fds")));
    }
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    Ok(Some((buf[..len].to_vec(), fds)))
}
