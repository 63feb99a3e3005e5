// SPDX-License-Identifier: Apache-2.0
//! ztredir's pinned state seen as Rust values: the ztunnel config, the
//! endpoints (workload, ztunnel and host addresses) and the attached
//! interfaces. Map layouts come from the skeleton's generated types.
//!
//! The one entry to it: `Ctx::read` (a shared lock, for reading) and
//! `Ctx::change` (a transaction: the exclusive lock, the state opened once
//! with the programs loaded, and the journal). Only a transaction writes,
//! and every write records how to undo it first.

use std::net::{IpAddr, Ipv6Addr};

use anyhow::{Context, Result};

use crate::ctx::Ctx;
use crate::dataplane::bpf::{self, Maps};
use crate::dataplane::journal::{self, Intent, Journal, Record, Undo};
use crate::dataplane::pins::{PinDir, PinLock};
use crate::dataplane::skel::types::{
    ztr_addr, ztr_config, ztr_config_flags, ztr_endpoint, ztr_endpoint_kind, ztr_iface, ztr_pod,
    ztr_role, ztr_slot,
};

/// Keys of the ifaces map: a node ifindex, or ztunnel's eth0 in its netns.
pub fn node_key(ifindex: u32) -> u64 {
    ifindex as u64
}
pub fn ztunnel_pod_key(ifindex: u32) -> u64 {
    (1u64 << 32) | ifindex as u64
}

pub fn to_addr(ip: &IpAddr) -> ztr_addr {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => *v6,
    };
    let o = v6.octets();
    let mut a = ztr_addr::default();
    for (i, chunk) in o.chunks_exact(4).enumerate() {
        // Memory order is network order, as the programs read packets.
        a.a[i] = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    a
}

pub fn from_addr(a: &ztr_addr) -> IpAddr {
    let mut o = [0u8; 16];
    for i in 0..4 {
        o[i * 4..i * 4 + 4].copy_from_slice(&a.a[i].to_ne_bytes());
    }
    let v6 = Ipv6Addr::from(o);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The one rule for workload addresses (attach --ip, workload add, node
/// files, host routes): an address no pod can have is refused, since the
/// programs would otherwise treat traffic to or from it as a workload's.
/// An IPv4-mapped IPv6 address is judged, and returned, as its IPv4 form.
pub fn workload_ip(ip: IpAddr) -> Result<IpAddr, String> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let why = match ip {
        _ if ip.is_unspecified() => Some("the unspecified address"),
        _ if ip.is_loopback() => Some("a loopback address"),
        _ if ip.is_multicast() => Some("a multicast address"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        _ => None,
    };
    match why {
        Some(why) => Err(format!("{ip} is {why}, never a workload's")),
        None => Ok(ip),
    }
}

/// A NUL-terminated C char array from a string (truncated to fit).
pub fn to_cstr<const N: usize>(s: &str) -> [i8; N] {
    let mut out = [0i8; N];
    for (i, b) in s.bytes().take(N - 1).enumerate() {
        out[i] = b as i8;
    }
    out
}

pub fn from_cstr(a: &[i8]) -> String {
    let bytes: Vec<u8> = a
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

pub fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointKind {
    Workload,
    Ztunnel,
    Host,
    /// An in-pod workload's address; `ifindex` is its pod id.
    Pod,
}

impl EndpointKind {
    pub fn raw(self) -> u32 {
        match self {
            EndpointKind::Workload => ztr_endpoint_kind::ZTR_EP_WORKLOAD.0,
            EndpointKind::Ztunnel => ztr_endpoint_kind::ZTR_EP_ZTUNNEL.0,
            EndpointKind::Host => ztr_endpoint_kind::ZTR_EP_HOST.0,
            EndpointKind::Pod => ztr_endpoint_kind::ZTR_EP_POD.0,
        }
    }
    /// Whether packets from this address are checked against it (the
    /// programs cache sources of these kinds).
    pub fn is_workload(self) -> bool {
        matches!(self, EndpointKind::Workload | EndpointKind::Pod)
    }
    fn from_raw(k: u32) -> Option<EndpointKind> {
        [
            EndpointKind::Workload,
            EndpointKind::Ztunnel,
            EndpointKind::Host,
            EndpointKind::Pod,
        ]
        .into_iter()
        .find(|e| e.raw() == k)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Workload,
    ZtunnelHost,
    ZtunnelPod,
}

impl Role {
    pub fn raw(self) -> u32 {
        match self {
            Role::Workload => ztr_role::ZTR_ROLE_WORKLOAD.0,
            Role::ZtunnelHost => ztr_role::ZTR_ROLE_ZTUNNEL_HOST.0,
            Role::ZtunnelPod => ztr_role::ZTR_ROLE_ZTUNNEL_POD.0,
        }
    }
    pub fn from_raw(r: u32) -> Option<Role> {
        [Role::Workload, Role::ZtunnelHost, Role::ZtunnelPod]
            .into_iter()
            .find(|x| x.raw() == r)
    }
    pub fn name(self) -> &'static str {
        match self {
            Role::Workload => "workload",
            Role::ZtunnelHost => "ztunnel-host",
            Role::ZtunnelPod => "ztunnel-pod",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub kind: EndpointKind,
    pub ifindex: u32,
}

/// The pinned maps, with typed accessors for reading.
pub struct State {
    pub maps: Maps,
}

impl State {
    fn open(pins: &PinDir) -> Result<State> {
        Ok(State {
            maps: Maps::open(pins)?,
        })
    }

    /// The config map's entry, whether or not a ztunnel is configured.
    pub fn config(&self) -> Result<Option<ztr_config>> {
        bpf::lookup(&self.maps.config, &0u32)
    }

    /// The ztunnel config, if a ztunnel is configured.
    pub fn ztunnel(&self) -> Result<Option<ztr_config>> {
        let cfg: Option<ztr_config> = bpf::lookup(&self.maps.config, &0u32)?;
        Ok(cfg.filter(|c| c.flags & ztr_config_flags::ZTR_CFG_ENABLED.0 != 0))
    }

    /// The config's flags, whether or not a ztunnel is configured.
    pub fn config_flags(&self) -> Result<u32> {
        let cfg: Option<ztr_config> = bpf::lookup(&self.maps.config, &0u32)?;
        Ok(cfg.map_or(0, |c| c.flags))
    }

    pub fn endpoints(&self) -> Result<Vec<Endpoint>> {
        let mut out: Vec<Endpoint> = bpf::entries::<ztr_addr, ztr_endpoint>(&self.maps.endpoints)?
            .into_iter()
            .filter_map(|(k, v)| {
                Some(Endpoint {
                    ip: from_addr(&k),
                    kind: EndpointKind::from_raw(v.kind)?,
                    ifindex: v.ifindex,
                })
            })
            .collect();
        out.sort_by_key(|e| (e.kind, e.ifindex, e.ip));
        Ok(out)
    }

    pub fn endpoint(&self, ip: &IpAddr) -> Result<Option<Endpoint>> {
        let v: Option<ztr_endpoint> = bpf::lookup(&self.maps.endpoints, &to_addr(ip))?;
        Ok(v.and_then(|v| {
            Some(Endpoint {
                ip: *ip,
                kind: EndpointKind::from_raw(v.kind)?,
                ifindex: v.ifindex,
            })
        }))
    }

    pub fn ifaces(&self) -> Result<Vec<(u64, ztr_iface)>> {
        let mut v = bpf::entries::<u64, ztr_iface>(&self.maps.ifaces)?;
        v.sort_by_key(|(k, i)| (i.role, from_cstr(&i.name), *k));
        Ok(v)
    }

    pub fn iface(&self, key: u64) -> Result<Option<ztr_iface>> {
        bpf::lookup(&self.maps.ifaces, &key)
    }

    /// In-pod workloads by pod id (none in pin directories of versions
    /// without in-pod mode).
    pub fn pods(&self) -> Result<Vec<(u32, ztr_pod)>> {
        let Some(m) = &self.maps.pods else {
            return Ok(Vec::new());
        };
        let mut v = bpf::entries::<u32, ztr_pod>(m)?;
        v.sort_by_key(|(k, _)| *k);
        Ok(v)
    }

    /// Whether the node runs the proxy in-pod (`ztunnel set --in-pod`).
    pub fn in_pod(&self) -> Result<bool> {
        Ok(self
            .ztunnel()?
            .is_some_and(|c| c.flags & ztr_config_flags::ZTR_CFG_INPOD.0 != 0))
    }

    /// Workload interfaces by name.
    pub fn workload_iface_by_name(&self, name: &str) -> Result<Option<(u64, ztr_iface)>> {
        Ok(self
            .ifaces()?
            .into_iter()
            .find(|(_, i)| i.role == Role::Workload.raw() && from_cstr(&i.name) == name))
    }
}

/// Read access: the shared lock and the state.
pub struct Reader {
    _lock: PinLock,
    pub st: State,
    /// Which ztredir made the state, against this binary.
    pub schema: crate::dataplane::schema::Pinned,
}

impl Reader {
    /// The state without the lock, for a long read that must not hold up
    /// changes (`trace`).
    pub fn into_state(self) -> State {
        self.st
    }
}

impl std::ops::Deref for Reader {
    type Target = State;
    fn deref(&self) -> &State {
        &self.st
    }
}

/// One change: the exclusive lock, the state (programs loaded), and the
/// journal every write goes through.
pub struct Txn<'a> {
    pub ctx: &'a Ctx,
    pub pins: &'a PinDir,
    st: State,
    journal: Journal,
    _lock: PinLock,
}

impl std::ops::Deref for Txn<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.st
    }
}

/// Config flags written by others than `ztunnel set`: a config it writes
/// keeps them as they are.
const OTHERS_FLAGS: u32 =
    ztr_config_flags::ZTR_CFG_TRACE.0 | ztr_config_flags::ZTR_CFG_EXCLUSIONS.0;

impl Ctx {
    /// Runs `f` as one change. Validation that needs no state belongs
    /// before this call (bad input must not even create the pin
    /// directory). When `f` fails, every step it made is undone; when the
    /// process dies inside it, the next invocation undoes them.
    pub fn change<T>(&self, f: impl FnOnce(&Txn) -> Result<T>) -> Result<T> {
        self.change_with(false, f)
    }

    /// A change that may act on state another version made (`uninstall`):
    /// it loads nothing, and uses only what every version has.
    pub fn change_any_version<T>(&self, f: impl FnOnce(&Txn) -> Result<T>) -> Result<T> {
        self.change_with(true, f)
    }

    fn change_with<T>(&self, skew_ok: bool, f: impl FnOnce(&Txn) -> Result<T>) -> Result<T> {
        let tx = Txn::begin(self, skew_ok)?;
        let e = match f(&tx) {
            Ok(v) => {
                tx.journal.clear()?;
                return Ok(v);
            }
            Err(e) => e,
        };
        // Bad input is reported as it is: one line, exit 2.
        let usage = e.chain().any(|c| c.is::<crate::error::UsageError>());
        match tx.rollback() {
            Ok(()) if usage => Err(e),
            Ok(()) => Err(anyhow::anyhow!("{e:#}; rolled back, the node is as it was")),
            Err(r) => Err(anyhow::anyhow!(
                "{e:#}; undoing it failed too ({r:#}), the node may be half changed: run the command again"
            )),
        }
    }

    /// The pinned state for reading, or None when nothing is pinned. An
    /// interrupted change is undone first.
    pub fn read(&self) -> Result<Option<Reader>> {
        if Journal::open(&self.pins)?.is_some_and(|j| !j.is_empty()) {
            let _lock = self.pins.prepare_for_change()?;
            recover(self, &Journal::open_or_create(&self.pins)?)?;
        }
        let Some(lock) = self.pins.prepare_for_read()? else {
            return Ok(None);
        };
        let Some(schema) = crate::dataplane::schema::inspect(&self.pins)? else {
            return Ok(None);
        };
        Ok(Some(Reader {
            _lock: lock,
            st: State::open(&self.pins)?,
            schema,
        }))
    }
}

/// Undoes, or finishes, what an invocation that died left in the journal.
pub fn recover(ctx: &Ctx, journal: &Journal) -> Result<()> {
    let records = journal.pending()?;
    if records.is_empty() {
        return Ok(());
    }
    if records.contains(&Record::Finish(Intent::Uninstall)) {
        crate::plan::uninstall::remove_pins(&ctx.pins)?;
        eprintln!("ztredir: finished an interrupted uninstall");
        return Ok(());
    }
    if records.contains(&Record::Finish(Intent::Upgrade)) {
        for line in crate::dataplane::upgrade::finish(&ctx.pins)? {
            eprintln!("{line}");
        }
        journal.clear()?;
        eprintln!("ztredir: finished an interrupted upgrade");
        return Ok(());
    }
    journal::undo_all(&ctx.pins, &records)
        .context("undo the change an interrupted ztredir left half done")?;
    crate::dataplane::upgrade::remove_staging(&ctx.pins)?;
    journal.clear()?;
    eprintln!(
        "ztredir: undid an interrupted change ({} steps)",
        records.len()
    );
    Ok(())
}

impl<'a> Txn<'a> {
    fn begin(ctx: &'a Ctx, skew_ok: bool) -> Result<Txn<'a>> {
        let lock = ctx.pins.prepare_for_change()?;
        let journal = Journal::open_or_create(&ctx.pins)?;
        recover(ctx, &journal)?;
        // A finished uninstall took the directories with it.
        let lock = if ctx.pins.root.exists() {
            lock
        } else {
            drop(lock);
            ctx.pins.prepare_for_change()?
        };
        let journal = Journal::open_or_create(&ctx.pins)?;
        // Another version's maps must not be written with this one's
        // layouts, nor this one's programs loaded beside its own.
        let skewed = match crate::dataplane::schema::inspect(&ctx.pins)? {
            Some(p) if !p.current && !skew_ok => return Err(p.skew_error()),
            Some(p) => !p.current,
            None => false,
        };
        if !skewed {
            bpf::ensure_loaded(&ctx.pins, &journal)?;
        }
        let tx = Txn {
            ctx,
            pins: &ctx.pins,
            st: State::open(&ctx.pins)?,
            journal,
            _lock: lock,
        };
        if !skewed {
            crate::report::observe::clear_stale_trace(&tx)?;
        }
        Ok(tx)
    }

    /// Undoes every step of this change so far.
    pub fn rollback(&self) -> Result<()> {
        let records = self.journal.pending()?;
        journal::undo_all(self.pins, &records)?;
        self.journal.clear()
    }

    /// Notes how to undo what the caller is about to do.
    pub fn record(&self, u: Undo) -> Result<()> {
        self.journal.record(&Record::Undo(u))
    }

    /// Marks the change as one to finish, not undo, from here on.
    pub fn finish_on_crash(&self, i: Intent) -> Result<()> {
        self.journal.record(&Record::Finish(i))
    }

    fn map(&self, name: &str) -> &libbpf_rs::MapHandle {
        self.st
            .maps
            .named(name)
            .unwrap_or_else(|| panic!("map {name} is not journaled"))
    }

    /// Writes a map entry, its old value journaled first.
    pub fn put<K: Copy, V: Copy>(&self, map: &str, key: &K, value: &V) -> Result<()> {
        let m = self.map(map);
        let old = libbpf_rs::MapCore::lookup(m, bpf::bytes_of(key), libbpf_rs::MapFlags::ANY)
            .with_context(|| format!("look up in map {map}"))?;
        if old.as_deref() == Some(bpf::bytes_of(value)) {
            return Ok(());
        }
        self.record(Undo::MapEntry {
            map: map.into(),
            key: journal::hex(bpf::bytes_of(key)),
            old: old.map(|o| journal::hex(&o)),
        })?;
        bpf::update(m, key, value)
    }

    /// Deletes a map entry, its old value journaled first.
    pub fn del<K: Copy>(&self, map: &str, key: &K) -> Result<()> {
        let m = self.map(map);
        let old = libbpf_rs::MapCore::lookup(m, bpf::bytes_of(key), libbpf_rs::MapFlags::ANY)
            .with_context(|| format!("look up in map {map}"))?;
        let Some(old) = old else { return Ok(()) };
        self.record(Undo::MapEntry {
            map: map.into(),
            key: journal::hex(bpf::bytes_of(key)),
            old: Some(journal::hex(&old)),
        })?;
        bpf::delete(m, key)
    }

    /// The one writer of the config word and its flags: `f` edits a copy
    /// of the current config. Returns whether anything changed.
    pub fn write_config(&self, f: impl FnOnce(&mut ztr_config)) -> Result<bool> {
        let old = self.config()?.unwrap_or_default();
        let mut cfg = old;
        f(&mut cfg);
        if bpf::bytes_of(&cfg) == bpf::bytes_of(&old) {
            return Ok(false);
        }
        self.put("ztr_config", &0u32, &cfg)?;
        Ok(true)
    }

    /// `ztunnel set`'s and `clear`'s config: all of it but the flags other
    /// writers own (trace, exclusions), which stay as they are.
    pub fn put_ztunnel_config(&self, new: &ztr_config) -> Result<bool> {
        self.write_config(|cfg| {
            let (keep, gen) = (cfg.flags & OTHERS_FLAGS, cfg.ep_gen);
            *cfg = *new;
            cfg.flags = (new.flags & !OTHERS_FLAGS) | keep;
            // Never back: the programs' source caches compare it.
            cfg.ep_gen = gen;
        })
    }

    /// Sets or clears one flag of the config word.
    pub fn set_flag(&self, bit: u32, on: bool) -> Result<bool> {
        self.write_config(|cfg| {
            cfg.flags = if on {
                cfg.flags | bit
            } else {
                cfg.flags & !bit
            };
        })
    }

    pub fn put_endpoint(&self, ep: &Endpoint) -> Result<()> {
        let v = ztr_endpoint {
            kind: ep.kind.raw(),
            ifindex: ep.ifindex,
        };
        let old = self.endpoint(&ep.ip)?;
        self.put("ztr_endpoints", &to_addr(&ep.ip), &v)?;
        match old {
            Some(o) if o.kind.is_workload() && o != *ep => self.sources_changed(),
            _ => Ok(()),
        }
    }

    pub fn del_endpoint(&self, ip: &IpAddr) -> Result<()> {
        let old = self.endpoint(ip)?;
        self.del("ztr_endpoints", &to_addr(ip))?;
        match old {
            Some(o) if o.kind.is_workload() => self.sources_changed(),
            _ => Ok(()),
        }
    }

    /// An address stopped being a workload's, or moved: the programs'
    /// caches of checked sources must not keep passing it.
    fn sources_changed(&self) -> Result<()> {
        self.write_config(|cfg| cfg.ep_gen = cfg.ep_gen.wrapping_add(1))
            .map(drop)
    }

    /// Makes the endpoints of `kind` exactly `want` (ifindex 0); returns
    /// whether anything changed.
    pub fn replace_endpoints(&self, kind: EndpointKind, want: &[IpAddr]) -> Result<bool> {
        let mut changed = false;
        for ep in self.endpoints()?.into_iter().filter(|e| e.kind == kind) {
            if !want.contains(&ep.ip) {
                self.del_endpoint(&ep.ip)?;
                changed = true;
            }
        }
        for ip in want {
            if self.endpoint(ip)?.map(|e| e.kind) != Some(kind) {
                self.put_endpoint(&Endpoint {
                    ip: *ip,
                    kind,
                    ifindex: 0,
                })?;
                changed = true;
            }
        }
        Ok(changed)
    }

    pub fn put_iface(&self, key: u64, i: &ztr_iface) -> Result<()> {
        self.put("ztr_ifaces", &key, i)
    }

    pub fn del_iface(&self, key: u64) -> Result<()> {
        self.del("ztr_ifaces", &key)
    }

    /// Sets a sysctl in `ns` (None: the node's), its old value journaled.
    pub fn sysctl(
        &self,
        ns: Option<&crate::dataplane::netns::NetNs>,
        key: &str,
        value: &str,
    ) -> Result<()> {
        let run = |f: &(dyn Fn() -> Result<String> + Sync)| match ns {
            Some(ns) => ns.run(f),
            None => f(),
        };
        let old = run(&|| crate::dataplane::netns::sysctl_get(key))?;
        if old == value {
            return Ok(());
        }
        self.record(Undo::Sysctl {
            netns: ns.map(|n| n.path.to_string_lossy().into_owned()),
            key: key.into(),
            value: old,
        })?;
        run(&|| crate::dataplane::netns::sysctl_set(key, value).map(|()| String::new())).map(drop)
    }

    /// An in-pod workload's entry; its netns may have changed, so the
    /// programs' caches of checked sources go stale.
    pub fn put_pod(&self, id: u32, pod: &ztr_pod) -> Result<()> {
        self.put("ztr_pods", &id, pod)?;
        self.sources_changed()
    }

    pub fn del_pod(&self, id: u32) -> Result<()> {
        self.del("ztr_pods", &id)?;
        self.sources_changed()
    }

    /// Forgets one in-pod workload's listener sockets: the programs look
    /// them up again at the next new connection (after the proxy got the
    /// workload again, it may listen with other sockets). Not journaled.
    pub fn clear_pod_listeners(&self, id: u32) -> Result<()> {
        clear_pod_listeners(&self.st, id)
    }

    /// Puts a netns back as ztredir found it: its policy routing removed
    /// unless it was there before (`had_policy_routing`), each sysctl of
    /// `saved` restored unless it was not saved (-1). Journaled.
    pub fn restore_netns(
        &self,
        ns: &crate::dataplane::netns::NetNs,
        had_policy_routing: bool,
        saved: &[(&str, i8)],
    ) -> Result<()> {
        if !had_policy_routing {
            let nl = crate::dataplane::netlink::Netlink::in_netns(ns)?;
            if nl.policy_routing()? != Default::default() {
                self.record(Undo::PolicyRoutingAdd {
                    netns: ns.path.to_string_lossy().into_owned(),
                })?;
                nl.remove_policy_routing()?;
            }
        }
        for &(key, v) in saved {
            if v >= 0 {
                self.sysctl(Some(ns), key, &v.to_string())?;
            }
        }
        Ok(())
    }

    /// Forgets every listener socket, so none is kept alive by the map.
    /// Not journaled: the programs fill the map again from ztunnel's live
    /// listeners.
    pub fn clear_listeners(&self) -> Result<()> {
        use libbpf_rs::MapCore;
        for slot in 0..ztr_slot::ZTR_SLOT_MAX.0 {
            // An empty sockmap slot answers EINVAL, not ENOENT.
            if let Err(e) = self.st.maps.listeners.delete(&slot.to_ne_bytes()) {
                if !matches!(
                    e.kind(),
                    libbpf_rs::ErrorKind::NotFound | libbpf_rs::ErrorKind::InvalidInput
                ) {
                    return Err(e).context("clear ztunnel listener map");
                }
            }
        }
        Ok(())
    }
}

/// See `Txn::clear_pod_listeners`; also for the ZDS server, which holds
/// no change.
pub fn clear_pod_listeners(st: &State, id: u32) -> Result<()> {
    use libbpf_rs::MapCore;
    let Some(m) = &st.maps.pod_listeners else {
        return Ok(());
    };
    for slot in 0..ztr_slot::ZTR_SLOT_MAX.0 {
        let key = id * ztr_slot::ZTR_SLOT_MAX.0 + slot;
        if let Err(e) = m.delete(&key.to_ne_bytes()) {
            if !matches!(
                e.kind(),
                libbpf_rs::ErrorKind::NotFound | libbpf_rs::ErrorKind::InvalidInput
            ) {
                return Err(e).context("clear in-pod listener map");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_and_ipv4_is_mapped() {
        for s in [
            "10.244.0.10",
            "0.0.0.0",
            "255.255.255.255",
            "fd00:244::11",
            "::1",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = s.parse().unwrap();
            let back = from_addr(&to_addr(&ip));
            // An IPv4-mapped IPv6 address is the same key as its IPv4 form.
            let want = match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
                v4 => v4,
            };
            assert_eq!(back, want, "{s}");
        }
        // The programs compare the third word with htonl(0xffff).
        let a = to_addr(&"10.0.0.1".parse().unwrap());
        assert_eq!(a.a[2], 0xffffu32.to_be());
        assert_eq!(a.a[3].to_ne_bytes(), [10, 0, 0, 1]);
    }

    #[test]
    fn impossible_workload_addresses_are_refused() {
        for s in [
            "0.0.0.0",
            "::",
            "255.255.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "ff02::1",
            "ff05::2",
            "127.0.0.1",
            "127.255.0.9",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:0.0.0.0",
            "::ffff:224.0.0.5",
            "::ffff:255.255.255.255",
        ] {
            let ip: IpAddr = s.parse().unwrap();
            let e = workload_ip(ip).expect_err(s);
            assert!(e.contains("never a workload's"), "{s}: {e}");
        }
        for s in ["10.244.0.10", "fd00:244::11", "192.0.2.255", "fe80::1"] {
            let ip: IpAddr = s.parse().unwrap();
            assert_eq!(workload_ip(ip), Ok(ip), "{s}");
        }
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(workload_ip(mapped), Ok("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn c_strings_truncate_and_terminate() {
        let a: [i8; 4] = to_cstr("abcdef");
        assert_eq!(from_cstr(&a), "abc");
        let b: [i8; 16] = to_cstr("veth0");
        assert_eq!(from_cstr(&b), "veth0");
    }
}
