// SPDX-License-Identifier: Apache-2.0
//! The journal: every change to the system records how to put it back
//! before it acts. Records live in a pinned map in the pin directory, so
//! that an invocation killed at any point leaves them behind, and the next
//! one undoes the interrupted change (or, for `uninstall`, finishes it)
//! before doing anything else. The same records roll back a change that
//! fails part-way. One mechanism, used by every verb.
//!
//! bpffs holds no regular files, hence a map: one entry per record, keyed
//! by its sequence number, the record as JSON in the value. An entry is
//! written by one syscall, which a SIGKILL cannot cut in half.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};
use serde::{Deserialize, Serialize};

use crate::dataplane::attach::{self, Hook};
use crate::dataplane::bpf::{self, Prog};
use crate::dataplane::netns::{sysctl_set, NetNs};
use crate::dataplane::pins::PinDir;

/// Bytes a record may take (JSON after a 4-byte length).
const RECORD_BYTES: u32 = 2048;
const MAX_RECORDS: u32 = 1 << 20;

/// How to put back one thing a change did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "undo", rename_all = "kebab-case")]
pub enum Undo {
    /// Put a map entry back as it was (None: delete it). Key and value in hex.
    MapEntry {
        map: String,
        key: String,
        old: Option<String>,
    },
    /// Put the connection table back to this size (None: tracking off).
    ConnTable { size: Option<u32> },
    /// Remove a pin this change made; a link's pin detaches the link.
    Unpin { path: PathBuf },
    /// Remove a classic tc filter this change added.
    TcDetach {
        netns: Option<String>,
        ifindex: u32,
        hook: String,
        prog: String,
    },
    /// Add back a classic tc filter this change removed.
    TcAttach {
        netns: Option<String>,
        ifindex: u32,
        hook: String,
        prog: String,
    },
    /// Attach again, with a pinned TCX link, a program this change detached.
    TcxAttach {
        netns: Option<String>,
        ifindex: u32,
        hook: String,
        prog: String,
        pin: PathBuf,
    },
    /// Attach again the sk_lookup program this change detached.
    SkLookupAttach { netns: String, pin: PathBuf },
    /// Set a sysctl back (None: the node's netns).
    Sysctl {
        netns: Option<String>,
        key: String,
        value: String,
    },
    /// Remove the policy routing this change added.
    PolicyRoutingRemove { netns: String },
    /// Add back the policy routing this change removed.
    PolicyRoutingAdd { netns: String },
}

/// A journal record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Record {
    Undo(Undo),
    /// A change the next invocation must finish rather than undo.
    Finish(Intent),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Intent {
    Uninstall,
    /// The new programs and maps are staged: swap them in (see
    /// dataplane::upgrade::finish), never back out.
    Upgrade,
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> Result<Vec<u8>> {
    if s.len() % 2 != 0 {
        bail!("odd-length hex in the journal");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).context("bad hex in the journal"))
        .collect()
}

pub struct Journal {
    map: MapHandle,
    next: std::sync::atomic::AtomicU32,
}

impl Journal {
    pub fn path(pins: &PinDir) -> PathBuf {
        pins.root.join("journal")
    }

    /// The pin directory's journal, made when missing (under the change lock).
    pub fn open_or_create(pins: &PinDir) -> Result<Journal> {
        if let Some(j) = Journal::open(pins)? {
            return Ok(j);
        }
        let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
            map_flags: libbpf_rs::libbpf_sys::BPF_F_NO_PREALLOC,
            ..Default::default()
        };
        let map = MapHandle::create(
            MapType::Hash,
            Some("ztr_journal"),
            4,
            RECORD_BYTES,
            MAX_RECORDS,
            &opts,
        )
        .context("create the journal map")?;
        let path = Journal::path(pins);
        bpf::obj_pin(map.as_fd(), &path).context("pin the journal")?;
        Ok(Journal {
            map,
            next: std::sync::atomic::AtomicU32::new(0),
        })
    }

    /// The journal if there is one.
    pub fn open(pins: &PinDir) -> Result<Option<Journal>> {
        let path = Journal::path(pins);
        if !path.exists() {
            return Ok(None);
        }
        let map = MapHandle::from_pinned_path(&path)
            .with_context(|| format!("open the journal {}", path.display()))?;
        let next = map
            .keys()
            .filter_map(|k| k.try_into().ok().map(u32::from_ne_bytes))
            .max()
            .map_or(0, |m| m + 1);
        Ok(Some(Journal {
            map,
            next: std::sync::atomic::AtomicU32::new(next),
        }))
    }

    /// The records left by an invocation that did not finish, oldest first.
    pub fn pending(&self) -> Result<Vec<Record>> {
        let mut keys: Vec<u32> = self
            .map
            .keys()
            .filter_map(|k| k.try_into().ok().map(u32::from_ne_bytes))
            .collect();
        keys.sort_unstable();
        let mut out = Vec::new();
        for k in keys {
            let Some(v) = self
                .map
                .lookup(&k.to_ne_bytes(), MapFlags::ANY)
                .context("read the journal")?
            else {
                continue;
            };
            let len = u32::from_ne_bytes(v[..4].try_into().expect("4 bytes")) as usize;
            let rec: Record = serde_json::from_slice(&v[4..4 + len.min(v.len() - 4)])
                .context("a journal record does not parse")?;
            out.push(rec);
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.map.keys().next().is_none()
    }

    /// Writes one record; it is in the pin directory when this returns.
    pub fn record(&self, r: &Record) -> Result<()> {
        let json = serde_json::to_vec(r).context("encode a journal record")?;
        if json.len() + 4 > RECORD_BYTES as usize {
            bail!("journal record of {} bytes is too large", json.len());
        }
        let mut v = vec![0u8; RECORD_BYTES as usize];
        v[..4].copy_from_slice(&(json.len() as u32).to_ne_bytes());
        v[4..4 + json.len()].copy_from_slice(&json);
        let k = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.map
            .update(&k.to_ne_bytes(), &v, MapFlags::ANY)
            .context("write the journal")?;
        crate::failpoint::hit(&format!("journal-{k}"))
    }

    /// Forgets every record: the change is complete (or fully undone).
    pub fn clear(&self) -> Result<()> {
        let keys: Vec<Vec<u8>> = self.map.keys().collect();
        for k in keys {
            self.map.delete(&k).context("clear the journal")?;
        }
        self.next.store(0, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

fn hook_named(s: &str) -> Result<Hook> {
    match s {
        "ingress" => Ok(Hook::Ingress),
        "egress" => Ok(Hook::Egress),
        _ => Err(anyhow!("unknown hook {s:?} in the journal")),
    }
}

fn prog_named(s: &str) -> Result<Prog> {
    Prog::ALL
        .into_iter()
        .find(|p| p.name() == s)
        .ok_or_else(|| anyhow!("unknown program {s:?} in the journal"))
}

/// Runs `f` in `netns` (None: here, the node's).
fn in_netns<T: Send>(netns: &Option<String>, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    match netns {
        None => f(),
        Some(spec) => NetNs::open(spec)?.run(f),
    }
}

/// Carries out one undo. Things already as the undo wants them (a pin
/// gone, a device gone) are fine: recovery may run an undo twice.
pub fn undo(pins: &PinDir, u: &Undo) -> Result<()> {
    match u {
        Undo::MapEntry { map, key, old } => {
            let path = pins.map(map);
            let m = MapHandle::from_pinned_path(&path)
                .with_context(|| format!("open map {}", path.display()))?;
            let key = unhex(key)?;
            match old {
                Some(v) => m
                    .update(&key, &unhex(v)?, MapFlags::ANY)
                    .with_context(|| format!("restore an entry of {map}")),
                None => match m.delete(&key) {
                    Err(e) if e.kind() != libbpf_rs::ErrorKind::NotFound => {
                        Err(e).with_context(|| format!("remove an entry of {map}"))
                    }
                    _ => Ok(()),
                },
            }
        }
        Undo::ConnTable { size } => {
            crate::report::observe::set_conn_table_at(pins, *size).map(drop)
        }
        Undo::Unpin { path } => unpin(path),
        Undo::TcDetach { .. } | Undo::TcAttach { .. } | Undo::TcxAttach { .. } => {
            undo_hook(pins, u)
        }
        Undo::SkLookupAttach { netns, pin } => {
            if attach::link_state(pin).is_some_and(|s| s.attached) {
                return Ok(());
            }
            attach::detach_link(pin)?;
            let fd = bpf::prog_fd(pins, Prog::ZtunnelLookup)?;
            let ns = NetNs::open(netns)?;
            attach::attach_sk_lookup(fd.as_fd(), ns.file.as_fd(), pin)
        }
        Undo::Sysctl { netns, key, value } => in_netns(netns, || sysctl_set(key, value)),
        Undo::PolicyRoutingRemove { netns } => in_netns(&Some(netns.clone()), || {
            crate::dataplane::netlink::Netlink::new()?.remove_policy_routing()
        }),
        Undo::PolicyRoutingAdd { netns } => in_netns(&Some(netns.clone()), || {
            crate::dataplane::netlink::Netlink::new()?.ensure_policy_routing()
        }),
    }
}

/// The undos of a program on a tc or TCX hook, each done only if needed.
fn undo_hook(pins: &PinDir, u: &Undo) -> Result<()> {
    let (netns, ifindex, hook, prog) = match u {
        Undo::TcDetach {
            netns,
            ifindex,
            hook,
            prog,
        }
        | Undo::TcAttach {
            netns,
            ifindex,
            hook,
            prog,
        }
        | Undo::TcxAttach {
            netns,
            ifindex,
            hook,
            prog,
            ..
        } => (netns, *ifindex, hook, prog),
        _ => unreachable!("not a hook undo"),
    };
    let (hook, prog) = (hook_named(hook)?, prog_named(prog)?);
    let fd = bpf::prog_fd(pins, prog)?;
    in_netns(netns, || {
        let ours = attach::tc_prog_id(fd.as_fd(), ifindex, hook).is_some();
        match u {
            Undo::TcDetach { .. } if ours => attach::detach_tc(fd.as_fd(), ifindex, hook),
            Undo::TcAttach { .. } if !ours => attach::attach_tc(fd.as_fd(), ifindex, hook),
            Undo::TcxAttach { pin, .. } if !attach::link_state(pin).is_some_and(|s| s.attached) => {
                attach::detach_link(pin)?;
                attach::attach_tcx(fd.as_fd(), ifindex, hook, pin)
            }
            _ => Ok(()),
        }
    })
}

/// Removes a pin (a link's detaches it); gone already is fine.
pub fn unpin(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("unpin {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Undoes `records` newest first. Every undo is tried; the first failure
/// is returned. A device or netns that is gone has nothing left to undo.
pub fn undo_all(pins: &PinDir, records: &[Record]) -> Result<()> {
    let mut first = None;
    for r in records.iter().rev() {
        if let Record::Undo(u) = r {
            if let Err(e) = undo(pins, u) {
                if !gone(&e) {
                    first.get_or_insert(e);
                }
            }
        }
    }
    first.map_or(Ok(()), Err)
}

/// Whether an undo failed only because what it would restore is gone.
fn gone(e: &anyhow::Error) -> bool {
    let text = format!("{e:#}");
    text.contains("not found")
        || text.contains("No such device")
        || text.contains("No such file")
        || e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(io.raw_os_error(), Some(libc::ENODEV) | Some(libc::ENOENT))
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_as_json() {
        let recs = vec![
            Record::Undo(Undo::MapEntry {
                map: "ztr_config".into(),
                key: hex(&0u32.to_ne_bytes()),
                old: None,
            }),
            Record::Undo(Undo::Sysctl {
                netns: Some("/run/netns/zt".into()),
                key: "net/ipv4/ip_forward".into(),
                value: "1".into(),
            }),
            Record::Finish(Intent::Uninstall),
        ];
        for r in recs {
            let j = serde_json::to_vec(&r).unwrap();
            assert!(j.len() < RECORD_BYTES as usize);
            assert_eq!(serde_json::from_slice::<Record>(&j).unwrap(), r);
        }
        assert_eq!(
            unhex(&hex(&[0, 1, 0xab, 0xff])).unwrap(),
            [0, 1, 0xab, 0xff]
        );
        assert!(unhex("abc").is_err());
    }
}
