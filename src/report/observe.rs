// SPDX-License-Identifier: Apache-2.0
//! What the dataplane recorded: per-reason counters (`stats`), the
//! connection table (`conns`) and live decisions (`trace`). Reason and hook
//! names come from the shared header's enums, one table each.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};
use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;

use crate::dataplane::bpf;
use crate::dataplane::pins::PinDir;
use crate::dataplane::skel::types::{
    ztr_config_flags, ztr_ct_entry, ztr_ct_key, ztr_ct_pending, ztr_direction as D, ztr_event,
    ztr_hook_id as H, ztr_reason as R, ztr_stat, ztr_stat_key, ztr_stat_slot,
};
use crate::dataplane::state::{self, from_addr, State};

const REASONS: &[(R, &str)] = &[
    (R::ZTR_R_NOT_IP, "not-ip"),
    (R::ZTR_R_MALFORMED, "drop-malformed"),
    (R::ZTR_R_PASS_PROTO, "pass-protocol"),
    (R::ZTR_R_CAPTURE_OUTBOUND, "capture-outbound"),
    (R::ZTR_R_CAPTURE_INBOUND, "capture-inbound"),
    (R::ZTR_R_CAPTURE_DNS, "capture-dns"),
    (R::ZTR_R_BYPASS_HOST, "bypass-host-ip"),
    (R::ZTR_R_BYPASS_DNS, "bypass-dns"),
    (R::ZTR_R_BYPASS_ZTUNNEL, "bypass-from-ztunnel"),
    (R::ZTR_R_ZTUNNEL_TO_WORKLOAD, "ztunnel-to-workload"),
    (R::ZTR_R_ZTUNNEL_TO_OTHER, "ztunnel-to-other"),
    (R::ZTR_R_STEER_LOCAL, "steer-local"),
    (R::ZTR_R_ZTUNNEL_LOCAL, "to-ztunnel"),
    (R::ZTR_R_ASSIGN_LISTENER, "assign-listener"),
    (R::ZTR_R_DROP_NO_ZTUNNEL, "drop-no-ztunnel"),
    (R::ZTR_R_DROP_NO_LISTENER, "drop-no-listener"),
    (R::ZTR_R_BYPASS_EXCLUDED, "bypass-excluded"),
    (R::ZTR_R_TIME_WAIT_REUSE, "time-wait-reuse"),
    (R::ZTR_R_DROP_FRAGMENT, "drop-fragment"),
    (R::ZTR_R_DROP_SPOOFED, "drop-spoofed"),
    (R::ZTR_R_ZTUNNEL_HAIRPIN, "ztunnel-via-node"),
    (R::ZTR_R_PROXY_OWN, "proxy-own"),
    (R::ZTR_R_LOCAL_LEG, "local-leg"),
    (R::ZTR_R_DNS_REPLY, "dns-reply"),
];

const HOOKS: &[(H, &str)] = &[
    (H::ZTR_HOOK_WORKLOAD_OUT, "workload-out"),
    (H::ZTR_HOOK_WORKLOAD_IN, "workload-in"),
    (H::ZTR_HOOK_ZTUNNEL_HOST, "ztunnel-host"),
    (H::ZTR_HOOK_ZTUNNEL_POD, "ztunnel-pod"),
    (H::ZTR_HOOK_SK_LOOKUP, "sk-lookup"),
    (H::ZTR_HOOK_POD_OUT, "pod-out"),
    (H::ZTR_HOOK_POD_IN, "pod-in"),
    (H::ZTR_HOOK_POD_LO, "pod-lo"),
    (H::ZTR_HOOK_POD_LOOKUP, "pod-lookup"),
    (H::ZTR_HOOK_HOST_GUARD, "host-guard"),
];

pub fn reason_name(r: u32) -> String {
    REASONS
        .iter()
        .find(|(k, _)| k.0 == r)
        .map_or_else(|| format!("reason-{r}"), |(_, n)| n.to_string())
}

pub fn hook_name(h: u32) -> String {
    HOOKS
        .iter()
        .find(|(k, _)| k.0 == h)
        .map_or_else(|| format!("hook-{h}"), |(_, n)| n.to_string())
}

fn is_ztunnel_netns_hook(h: u32) -> bool {
    h == H::ZTR_HOOK_ZTUNNEL_POD.0 || h == H::ZTR_HOOK_SK_LOOKUP.0
}

/// Interface names by (hook, ifindex), from what ztredir attached; the
/// in-pod hooks' by ifindex inside the workloads' netns (one name for the
/// same ifindex in every workload).
struct Names(Vec<(u64, String)>, Vec<(u32, String)>);

fn is_pod_hook(h: u32) -> bool {
    [
        H::ZTR_HOOK_POD_OUT.0,
        H::ZTR_HOOK_POD_IN.0,
        H::ZTR_HOOK_POD_LO.0,
        H::ZTR_HOOK_POD_LOOKUP.0,
    ]
    .contains(&h)
}

impl Names {
    fn load(st: &State) -> Result<Names> {
        Ok(Names(
            st.ifaces()?
                .into_iter()
                .map(|(k, i)| (k, state::from_cstr(&i.name)))
                .collect(),
            st.pods()?
                .into_iter()
                .map(|(_, p)| (p.ifindex, state::from_cstr(&p.iface)))
                .chain([(1, "lo".to_string())])
                .collect(),
        ))
    }
    fn of(&self, hook: u32, ifindex: u32) -> String {
        if is_pod_hook(hook) {
            return self
                .1
                .iter()
                .find(|(i, _)| *i == ifindex)
                .map_or_else(|| format!("if{ifindex}"), |(_, n)| format!("pod:{n}"));
        }
        let key = if is_ztunnel_netns_hook(hook) {
            state::ztunnel_pod_key(ifindex)
        } else {
            state::node_key(ifindex)
        };
        self.0
            .iter()
            .find(|(k, _)| *k == key)
            .map_or_else(|| format!("if{ifindex}"), |(_, n)| n.clone())
    }
}

/// An `--iface` filter must name an interface: one ztredir knows (even one
/// that is gone since, or ztunnel's in its netns, or shown as `if<N>`), or
/// one of the node's. A typo would otherwise show an empty, reassuring
/// result.
pub fn check_iface_filter(ctx: &crate::ctx::Ctx, st: Option<&State>, name: &str) -> Result<()> {
    if let Some(st) = st {
        if st
            .ifaces()?
            .iter()
            .any(|(_, i)| state::from_cstr(&i.name) == name)
        {
            return Ok(());
        }
        let shown_by_index = name
            .strip_prefix("if")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if shown_by_index {
            return Ok(());
        }
    }
    if ctx.nl.link_by_name(name)?.is_some() {
        return Ok(());
    }
    Err(crate::error::usage(format!("interface {name} not found")))
}

// ---- stats ----------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct StatRow {
    pub iface: String,
    pub ifindex: u32,
    pub hook: String,
    pub reason: String,
    pub packets: u64,
    pub bytes: u64,
}

/// (ifindex, hook, reason) -> (packets, bytes), summed over CPUs, from the
/// per-CPU array slots and the hash that takes what the slots cannot.
type StatTotals = BTreeMap<(u32, u16, u16), (u64, u64)>;

fn stat_totals(st: &State) -> Result<StatTotals> {
    let mut acc = StatTotals::new();
    let slots = st.maps.stat_slots.max_entries();
    for idx in 0..slots {
        let Some(per_cpu) = st
            .maps
            .stat_slots
            .lookup_percpu(&idx.to_ne_bytes(), MapFlags::ANY)
            .context("read stats")?
        else {
            continue;
        };
        for v in &per_cpu {
            let s: ztr_stat_slot = bpf::from_bytes(v);
            if s.hook == 0 {
                continue;
            }
            for (reason, r) in s.r.iter().enumerate() {
                if r.packets > 0 {
                    let e = acc.entry((s.ifindex, s.hook, reason as u16)).or_default();
                    e.0 += r.packets;
                    e.1 += r.bytes;
                }
            }
        }
    }
    for k in st.maps.stats.keys() {
        let key: ztr_stat_key = bpf::from_bytes(&k);
        let Some(per_cpu) = st
            .maps
            .stats
            .lookup_percpu(&k, MapFlags::ANY)
            .context("read stats")?
        else {
            continue;
        };
        let e = acc.entry((key.ifindex, key.hook, key.reason)).or_default();
        for v in &per_cpu {
            let s: ztr_stat = bpf::from_bytes(v);
            e.0 += s.packets;
            e.1 += s.bytes;
        }
    }
    Ok(acc)
}

pub fn stats(st: &State, iface: Option<&str>) -> Result<Vec<StatRow>> {
    let names = Names::load(st)?;
    let mut rows = Vec::new();
    for ((ifindex, hook, reason), (packets, bytes)) in stat_totals(st)? {
        let row = StatRow {
            iface: names.of(hook as u32, ifindex),
            ifindex,
            hook: hook_name(hook as u32),
            reason: reason_name(reason as u32),
            packets,
            bytes,
        };
        if iface.is_none_or(|i| i == row.iface) {
            rows.push(row);
        }
    }
    rows.sort_by(|a, b| (&a.iface, &a.hook, &a.reason).cmp(&(&b.iface, &b.hook, &b.reason)));
    Ok(rows)
}

/// Frees the counter slots an interface's hooks own (on every CPU) once its
/// programs are detached, so that the next interface to use them gets the
/// fast path. Its counts go with them.
pub fn release_stat_slots(st: &State, ifindexes: &[u32], hooks: &[u32]) -> Result<()> {
    if ifindexes.is_empty() {
        return Ok(());
    }
    let size = std::mem::size_of::<ztr_stat_slot>();
    for idx in 0..st.maps.stat_slots.max_entries() {
        let key = idx.to_ne_bytes();
        let Some(mut per_cpu) = st
            .maps
            .stat_slots
            .lookup_percpu(&key, MapFlags::ANY)
            .context("read stats")?
        else {
            continue;
        };
        let mut changed = false;
        for v in per_cpu.iter_mut() {
            let s: ztr_stat_slot = bpf::from_bytes(v);
            if s.hook != 0 && ifindexes.contains(&s.ifindex) && hooks.contains(&(s.hook as u32)) {
                *v = vec![0u8; size];
                changed = true;
            }
        }
        if changed {
            st.maps
                .stat_slots
                .update_percpu(&key, &per_cpu, MapFlags::ANY)
                .context("release counter slot")?;
        }
    }
    Ok(())
}

pub fn reset_stats(st: &State) -> Result<usize> {
    let n = stat_totals(st)?.len();
    let keys: Vec<Vec<u8>> = st.maps.stats.keys().collect();
    for k in &keys {
        let _ = st.maps.stats.delete(k);
    }
    let cpus = libbpf_rs::num_possible_cpus().context("count CPUs")?;
    let zero = vec![vec![0u8; std::mem::size_of::<ztr_stat_slot>()]; cpus];
    for idx in 0..st.maps.stat_slots.max_entries() {
        st.maps
            .stat_slots
            .update_percpu(&idx.to_ne_bytes(), &zero, MapFlags::ANY)
            .context("reset stats")?;
    }
    Ok(n)
}

/// Packets per reason, summed over interfaces: the status summary.
pub fn totals(rows: &[StatRow]) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    for r in rows {
        match out.iter_mut().find(|(n, _)| *n == r.reason) {
            Some((_, c)) => *c += r.packets,
            None => out.push((r.reason.clone(), r.packets)),
        }
    }
    out.sort();
    out
}

/// The Prometheus text exposition format, for node_exporter's textfile collector.
pub fn prometheus(rows: &[StatRow], conns: Option<usize>) -> String {
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut out = String::new();
    for (metric, help, val) in [
        (
            "ztredir_packets_total",
            "Packets seen by ztredir's programs, by interface, program and reason.",
            0,
        ),
        (
            "ztredir_bytes_total",
            "Bytes seen by ztredir's programs, by interface, program and reason.",
            1,
        ),
    ] {
        out += &format!("# HELP {metric} {help}\n# TYPE {metric} counter\n");
        for r in rows {
            out += &format!(
                "{metric}{{iface=\"{}\",hook=\"{}\",reason=\"{}\"}} {}\n",
                esc(&r.iface),
                esc(&r.hook),
                esc(&r.reason),
                if val == 0 { r.packets } else { r.bytes }
            );
        }
    }
    if let Some(n) = conns {
        out += "# HELP ztredir_connections Entries in the connection table.\n# TYPE ztredir_connections gauge\n";
        out += &format!("ztredir_connections {n}\n");
    }
    out
}

// ---- connection table ---------------------------------------------------------

/// The connection table in use, or None when tracking is off.
pub fn conn_table(st: &State) -> Result<Option<MapHandle>> {
    let id: Option<u32> = bpf::lookup(&st.maps.conns, &0u32)?;
    id.map(|id| MapHandle::from_map_id(id).context("open the connection table"))
        .transpose()
}

/// The size asked for, when a table is in place.
pub fn conn_table_size(st: &State) -> Result<Option<u32>> {
    let size = st.config()?.map(|c| c.conns_size).filter(|n| *n > 0);
    Ok(if conn_table(st)?.is_some() {
        size
    } else {
        None
    })
}

/// The kernel's LRU keeps free nodes parked in per-CPU lists (up to 128 a
/// CPU) and evicts in batches of up to 128, so a map of exactly `n` entries
/// may hold far fewer, and not always the newest. Sizing it with that much
/// headroom on top keeps the `n` newest; `conns` shows those.
pub fn lru_entries(n: u32) -> u32 {
    let cpus = libbpf_rs::num_possible_cpus().unwrap_or(1) as u32;
    n.saturating_add((cpus + 1) * 128)
}

/// Puts a table of `size` entries in place (None: tracking off), the old
/// size journaled. Returns whether anything changed; a table of the right
/// size is kept as it is.
pub fn set_conn_table(tx: &crate::dataplane::state::Txn, size: Option<u32>) -> Result<bool> {
    if table_entries(&tx.maps.conns)? == size.map(lru_entries) {
        return Ok(false);
    }
    let old = conn_table_size(tx)?;
    tx.record(crate::dataplane::journal::Undo::ConnTable { size: old })?;
    install_conn_table(&tx.maps.conns, size)
}

/// The installed table's entries, headroom included.
fn table_entries(conns: &MapHandle) -> Result<Option<u32>> {
    match bpf::lookup::<u32, u32>(conns, &0u32)? {
        Some(id) => Ok(Some(
            MapHandle::from_map_id(id)
                .context("open the connection table")?
                .info()
                .context("connection table info")?
                .info
                .max_entries,
        )),
        None => Ok(None),
    }
}

/// The journal's undo: the table of the pin directory at `pins`.
pub fn set_conn_table_at(pins: &PinDir, size: Option<u32>) -> Result<bool> {
    let path = pins.map("ztr_conns");
    let conns = MapHandle::from_pinned_path(&path)
        .with_context(|| format!("open map {}", path.display()))?;
    install_conn_table(&conns, size)
}

fn install_conn_table(conns: &MapHandle, size: Option<u32>) -> Result<bool> {
    if table_entries(conns)? == size.map(lru_entries) {
        return Ok(false);
    }
    match size {
        None => bpf::delete(conns, &0u32)?,
        Some(n) => {
            let n = lru_entries(n);
            let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
                sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
                ..Default::default()
            };
            let table = MapHandle::create(
                MapType::LruHash,
                Some("ztr_conn_table"),
                std::mem::size_of::<ztr_ct_key>() as u32,
                std::mem::size_of::<ztr_ct_entry>() as u32,
                n,
                &opts,
            )
            .with_context(|| format!("create a connection table of {n} entries"))?;
            let fd = table.as_fd().as_raw_fd() as u32;
            conns
                .update(&0u32.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
                .context("install the connection table")?;
        }
    }
    Ok(true)
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnRow {
    pub direction: &'static str,
    pub proto: &'static str,
    pub workload: SocketAddr,
    pub peer: SocketAddr,
    pub iface: String,
    pub proxy_port: u16,
    pub first_seen: String,
    pub last_seen: String,
    pub packets_from_workload: u64,
    pub bytes_from_workload: u64,
    pub packets_to_workload: u64,
    pub bytes_to_workload: u64,
    pub tcp_flags: Vec<&'static str>,
    pub last_reason: String,
    #[serde(skip)]
    pub last_ns: u64,
    #[serde(skip)]
    pub first_ns: u64,
}

#[derive(Debug, Default, Clone)]
pub struct ConnFilter {
    pub iface: Option<String>,
    pub ip: Option<IpAddr>,
    pub port: Option<u16>,
    pub direction: Option<String>,
    pub proto: Option<String>,
}

impl ConnFilter {
    fn keeps(&self, c: &ConnRow) -> bool {
        self.iface.as_ref().is_none_or(|i| *i == c.iface)
            && self
                .ip
                .is_none_or(|ip| ip == c.workload.ip() || ip == c.peer.ip())
            && self
                .port
                .is_none_or(|p| p == c.workload.port() || p == c.peer.port())
            && self.direction.as_ref().is_none_or(|d| d == c.direction)
            && self.proto.as_ref().is_none_or(|p| p == c.proto)
    }
}

fn proto_name(p: u8) -> &'static str {
    match p as i32 {
        libc::IPPROTO_TCP => "tcp",
        libc::IPPROTO_UDP => "udp",
        _ => "other",
    }
}

fn direction_name(d: u8) -> &'static str {
    if d as u32 == D::ZTR_DIR_OUTBOUND.0 {
        "outbound"
    } else if d as u32 == D::ZTR_DIR_INBOUND.0 {
        "inbound"
    } else {
        "unknown"
    }
}

fn flag_names(f: u8) -> Vec<&'static str> {
    [(0x02, "SYN"), (0x01, "FIN"), (0x04, "RST")]
        .into_iter()
        .filter(|(b, _)| f & b != 0)
        .map(|(_, n)| n)
        .collect()
}

/// What the programs have counted per CPU and not yet added to the table
/// (struct ztr_ct_pending), summed per connection key. The slots are in
/// ztr_ct_cache, which is not pinned: it is found through the programs
/// that use this state's connection table map, one per program load.
fn pending(st: &State) -> Result<BTreeMap<Vec<u8>, ztr_ct_pending>> {
    let conns_id = st
        .maps
        .conns
        .info()
        .context("connection table map info")?
        .info
        .id;
    // Each map once: the programs of one load share theirs.
    let mut seen = std::collections::BTreeSet::new();
    let mut caches = Vec::new();
    for (_, fd) in crate::dataplane::attach::all_progs() {
        let Ok(ids) = crate::dataplane::attach::prog_map_ids(fd.as_fd()) else {
            continue;
        };
        if !ids.contains(&conns_id) {
            continue;
        }
        for id in ids {
            if !seen.insert(id) {
                continue;
            }
            if let Ok(m) = MapHandle::from_map_id(id) {
                if m.name().to_str() == Some("ztr_ct_cache") {
                    caches.push(m);
                }
            }
        }
    }
    let mut out: BTreeMap<Vec<u8>, ztr_ct_pending> = BTreeMap::new();
    let size = std::mem::size_of::<ztr_ct_pending>();
    for m in caches {
        let info = m.info().context("pending counts map info")?.info;
        // Another build's layout (programs not yet upgraded) is not read.
        if info.value_size as usize != size {
            continue;
        }
        let slots = info.max_entries;
        for slot in 0..slots {
            let Some(cpus) = m
                .lookup_percpu(&slot.to_ne_bytes(), MapFlags::ANY)
                .context("read pending counts")?
            else {
                continue;
            };
            for v in cpus.iter().filter(|v| v.len() >= size) {
                let c: ztr_ct_pending = bpf::from_bytes(&v[..size]);
                if c.valid == 0 || c.count == 0 {
                    continue;
                }
                let sum = out
                    .entry(bpf::bytes_of(&c.key).to_vec())
                    .or_insert_with(|| ztr_ct_pending {
                        key: c.key,
                        ..Default::default()
                    });
                sum.packets_from += c.packets_from;
                sum.bytes_from += c.bytes_from;
                sum.packets_to += c.packets_to;
                sum.bytes_to += c.bytes_to;
                if c.last_ns >= sum.last_ns {
                    sum.last_ns = c.last_ns;
                    sum.last_reason = c.last_reason;
                }
            }
        }
    }
    Ok(out)
}

/// Connections, newest first. Each entry's counts include what the
/// programs hold per CPU for it and have not added yet.
pub fn conns(st: &State, filter: &ConnFilter) -> Result<Vec<ConnRow>> {
    let Some(table) = conn_table(st)? else {
        return Ok(vec![]);
    };
    let pending = pending(st)?;
    let names = Names::load(st)?;
    // In-pod workloads by address: "NAMESPACE/NAME:IFACE" names them
    // (their interfaces' ifindexes are per netns).
    let pods: Vec<(IpAddr, String)> = crate::node::inpod::pods(st)?
        .into_iter()
        .flat_map(|p| {
            let label = format!("{}:{}", p.workload(), p.iface);
            p.ips.into_iter().map(move |ip| (ip, label.clone()))
        })
        .collect();
    let clock = Clock::now();
    let mut rows = Vec::new();
    for k in table.keys() {
        let Some(v) = table.lookup(&k, MapFlags::ANY).context("read connection")? else {
            continue;
        };
        let key: ztr_ct_key = bpf::from_bytes(&k);
        let mut e: ztr_ct_entry = bpf::from_bytes(&v);
        if let Some(c) = pending.get(&k) {
            e.packets_from += c.packets_from;
            e.bytes_from += c.bytes_from;
            e.packets_to += c.packets_to;
            e.bytes_to += c.bytes_to;
            if c.last_ns > e.last_ns {
                e.last_ns = c.last_ns;
                e.last_reason = c.last_reason;
            }
        }
        let row = ConnRow {
            direction: direction_name(e.direction),
            proto: proto_name(key.proto),
            workload: SocketAddr::new(from_addr(&key.workload), u16::from_be(key.workload_port)),
            peer: SocketAddr::new(from_addr(&key.peer), u16::from_be(key.peer_port)),
            iface: pods
                .iter()
                .find(|(ip, _)| *ip == from_addr(&key.workload))
                .map_or_else(
                    || names.of(H::ZTR_HOOK_WORKLOAD_OUT.0, e.ifindex),
                    |(_, l)| l.clone(),
                ),
            proxy_port: e.proxy_port,
            first_seen: clock.wall(e.first_ns),
            last_seen: clock.wall(e.last_ns),
            packets_from_workload: e.packets_from,
            bytes_from_workload: e.bytes_from,
            packets_to_workload: e.packets_to,
            bytes_to_workload: e.bytes_to,
            tcp_flags: flag_names(e.tcp_flags),
            last_reason: reason_name(e.last_reason),
            last_ns: e.last_ns,
            first_ns: e.first_ns,
        };
        if filter.keeps(&row) {
            rows.push(row);
        }
    }
    // Newest first: last seen (a clock tick's resolution), then opened.
    rows.sort_by_key(|r| std::cmp::Reverse((r.last_ns, r.first_ns)));
    if let Some(n) = conn_table_size(st)? {
        rows.truncate(n as usize);
    }
    Ok(rows)
}

pub fn flush_conns(st: &State) -> Result<usize> {
    let Some(table) = conn_table(st)? else {
        return Ok(0);
    };
    let keys: Vec<Vec<u8>> = table.keys().collect();
    for k in &keys {
        let _ = table.delete(k);
    }
    Ok(keys.len())
}

/// Converts the programs' CLOCK_MONOTONIC stamps to wall-clock time.
struct Clock {
    mono_ns: u64,
    real_ns: i128,
}

impl Clock {
    fn now() -> Clock {
        let get = |id| {
            nix::time::clock_gettime(id)
                .map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128)
        };
        let mono = get(nix::time::ClockId::CLOCK_MONOTONIC).unwrap_or(0) as u64;
        let real = get(nix::time::ClockId::CLOCK_REALTIME).unwrap_or(0);
        Clock {
            mono_ns: mono,
            real_ns: real,
        }
    }
    fn wall(&self, mono: u64) -> String {
        rfc3339(self.real_ns - (self.mono_ns as i128 - mono as i128))
    }
}

/// UTC RFC 3339 with milliseconds, from nanoseconds since the epoch.
pub fn rfc3339(ns: i128) -> String {
    let secs = ns.div_euclid(1_000_000_000) as i64;
    let ms = (ns.rem_euclid(1_000_000_000) / 1_000_000) as u32;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

// ---- trace ------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct TraceRow {
    pub time: String,
    pub iface: String,
    pub hook: String,
    pub proto: &'static str,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub len: u32,
    pub reason: String,
    pub verdict: String,
    /// The device a redirect sends the packet to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_to: Option<String>,
}

impl TraceRow {
    fn keeps(&self, f: &ConnFilter) -> bool {
        f.iface.as_ref().is_none_or(|i| *i == self.iface)
            && f.ip
                .is_none_or(|ip| ip == self.src.ip() || ip == self.dst.ip())
            && f.port
                .is_none_or(|p| p == self.src.port() || p == self.dst.port())
            && f.proto.as_ref().is_none_or(|p| p == self.proto)
            && f.direction
                .as_ref()
                .is_none_or(|d| self.reason.contains(d.as_str()))
    }
}

fn verdict_name(hook: u32, v: i32) -> String {
    if hook == H::ZTR_HOOK_SK_LOOKUP.0 || hook == H::ZTR_HOOK_POD_LOOKUP.0 {
        return if v == 1 { "pass".into() } else { "drop".into() };
    }
    match v {
        -1 => "next".into(),
        0 => "ok".into(),
        2 => "drop".into(),
        7 => "redirect".into(),
        v => format!("verdict-{v}"),
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// When a trace stops by itself: after `count` events or `duration`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceLimits {
    pub count: Option<u64>,
    pub duration: Option<Duration>,
}

/// Streams decisions to `emit` until a limit or Ctrl-C.
/// Turns tracing on in the programs for as long as it runs.
pub fn trace(
    ctx: &crate::ctx::Ctx,
    st: &State,
    filter: &ConnFilter,
    limits: TraceLimits,
    mut emit: impl FnMut(&TraceRow) -> Result<()>,
) -> Result<u64> {
    let TraceLimits { count, duration } = limits;
    let names = Names::load(st)?;
    let clock = Clock::now();
    for sig in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
    ] {
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(on_signal),
            nix::sys::signal::SaFlags::empty(),
            nix::sys::signal::SigSet::empty(),
        );
        unsafe { nix::sys::signal::sigaction(sig, &action) }.context("install signal handler")?;
    }
    let seen = std::cell::Cell::new(0u64);
    let failure = std::cell::RefCell::new(None);
    let mut builder = libbpf_rs::RingBufferBuilder::new();
    builder
        .add(&st.maps.events, |data: &[u8]| {
            let e: ztr_event = bpf::from_bytes(data);
            let row = TraceRow {
                time: clock.wall(e.ts_ns),
                iface: names.of(e.hook as u32, e.ifindex),
                hook: hook_name(e.hook as u32),
                proto: proto_name(e.proto),
                src: SocketAddr::new(from_addr(&e.saddr), u16::from_be(e.sport)),
                dst: SocketAddr::new(from_addr(&e.daddr), u16::from_be(e.dport)),
                len: e.len,
                reason: reason_name(e.reason as u32),
                verdict: verdict_name(e.hook as u32, e.verdict),
                // Redirect targets are node-netns devices.
                redirect_to: (e.target != 0)
                    .then(|| names.of(H::ZTR_HOOK_WORKLOAD_OUT.0, e.target)),
            };
            if row.keeps(filter) && count.is_none_or(|c| seen.get() < c) {
                seen.set(seen.get() + 1);
                if let Err(err) = emit(&row) {
                    *failure.borrow_mut() = Some(err);
                    return 1;
                }
            }
            0
        })
        .context("open the trace ring buffer")?;
    let rb = builder.build().context("open the trace ring buffer")?;
    let tracer = start_tracing(ctx)?;
    let start = Instant::now();
    let res = loop {
        if let Err(e) = rb.poll(Duration::from_millis(100)) {
            if !STOP.load(Ordering::SeqCst) {
                break Err(anyhow::Error::from(e).context("read trace events"));
            }
        }
        if failure.borrow().is_some()
            || STOP.load(Ordering::SeqCst)
            || count.is_some_and(|c| seen.get() >= c)
            || duration.is_some_and(|d| start.elapsed() >= d)
        {
            break Ok(());
        }
    };
    stop_tracing(ctx, tracer)?;
    drop(rb);
    if let Some(e) = failure.into_inner() {
        return Err(e);
    }
    res.map(|_| seen.get())
}

// ---- who traces -------------------------------------------------------------
//
// The trace flag makes every program write every decision to the ring
// buffer; a `trace` killed with SIGKILL cannot clear it. Each running trace
// therefore holds a shared flock on the pin directory's trace/ directory
// (the kernel drops it when the process dies, however it dies) and leaves a
// symlink named by its PID there, for messages. The flag on while nobody
// holds that lock means a tracer died: status warns, doctor fails, and the
// next trace or change clears it.

/// The trace flag, and who holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TraceState {
    /// The programs write decisions to the ring buffer.
    pub on: bool,
    /// Some trace runs (holds the lock).
    pub running: bool,
    /// PIDs that started a trace and did not finish it: the running ones,
    /// or, when none runs, the ones that died.
    pub pids: Vec<u32>,
}

impl TraceState {
    /// The flag is on and nobody traces.
    pub fn stale(&self) -> bool {
        self.on && !self.running
    }

    /// Why the flag is on with nobody tracing, for status and doctor.
    pub fn stale_message(&self) -> String {
        let who = match self.pids.as_slice() {
            [] => String::new(),
            pids => format!(
                " (trace pid {} ended without clearing it)",
                pids.iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        format!(
            "the trace flag is on but no `ztredir trace` runs{who}: every packet's decision is written to the ring buffer"
        )
    }
}

/// Clears a stale trace flag; the fix status and doctor print.
pub const TRACE_FIX: &str = "ztredir trace --duration 0.1 (any trace or change clears it)";

fn trace_dir_lock(pins: &PinDir, how: FlockArg) -> Result<Option<Flock<File>>> {
    let dir = pins.trace_dir();
    let f = match File::open(&dir) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("open {}", dir.display())),
    };
    match Flock::lock(f, how) {
        Ok(l) => Ok(Some(l)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(e).with_context(|| format!("lock {}", dir.display())),
    }
}

/// Whether some trace holds its lock.
fn someone_traces(pins: &PinDir) -> Result<bool> {
    if !pins.trace_dir().exists() {
        return Ok(false);
    }
    Ok(trace_dir_lock(pins, FlockArg::LockExclusiveNonblock)?.is_none())
}

fn tracer_pids(pins: &PinDir) -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir(pins.trace_dir())
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

/// The trace flag and its owners, read under the caller's lock.
pub fn trace_state(pins: &PinDir, st: &State) -> Result<TraceState> {
    let on = st.config_flags()? & ztr_config_flags::ZTR_CFG_TRACE.0 != 0;
    Ok(TraceState {
        on,
        running: someone_traces(pins)?,
        pids: tracer_pids(pins),
    })
}

fn forget_tracers(pins: &PinDir) {
    for pid in tracer_pids(pins) {
        let _ = std::fs::remove_file(pins.trace_dir().join(pid.to_string()));
    }
}

/// Clears the trace flag when no trace runs, in the caller's change.
/// Returns whether it was on.
pub fn clear_stale_trace(tx: &crate::dataplane::state::Txn) -> Result<bool> {
    if !trace_state(tx.pins, tx)?.stale() {
        return Ok(false);
    }
    tx.set_flag(ztr_config_flags::ZTR_CFG_TRACE.0, false)?;
    forget_tracers(tx.pins);
    Ok(true)
}

/// A running trace's hold on the flag.
struct Tracer {
    lock: Flock<File>,
    mark: PathBuf,
}

/// Turns the flag on for this process, which holds it until `stop_tracing`
/// or its death.
fn start_tracing(ctx: &crate::ctx::Ctx) -> Result<Tracer> {
    // A change, which also clears a flag a dead trace left.
    ctx.change(|tx| {
        let pins = tx.pins;
        crate::dataplane::pins::create_dirs(&pins.trace_dir())?;
        let lock =
            trace_dir_lock(pins, FlockArg::LockShared)?.context("lock the trace directory")?;
        let pid = std::process::id().to_string();
        let mark = pins.trace_dir().join(&pid);
        let _ = std::fs::remove_file(&mark);
        std::os::unix::fs::symlink(&pid, &mark)
            .with_context(|| format!("record the tracer at {}", mark.display()))?;
        tx.set_flag(ztr_config_flags::ZTR_CFG_TRACE.0, true)?;
        Ok(Tracer { lock, mark })
    })
}

/// Gives up this process's hold; the flag goes off when no other trace
/// runs. A change, so that a reader never sees the flag on with nobody
/// holding it.
fn stop_tracing(ctx: &crate::ctx::Ctx, t: Tracer) -> Result<()> {
    ctx.change(|tx| {
        let _ = std::fs::remove_file(&t.mark);
        drop(t.lock);
        if !someone_traces(tx.pins)? {
            tx.set_flag(ztr_config_flags::ZTR_CFG_TRACE.0, false)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_and_hook_has_one_name() {
        let n = R::ZTR_R_MAX.0;
        assert_eq!(REASONS.len() as u32, n, "one name per reason");
        for (i, (r, _)) in REASONS.iter().enumerate() {
            assert_eq!(r.0, i as u32, "REASONS follows the header's order");
        }
        let mut names: Vec<&str> = REASONS.iter().map(|(_, n)| *n).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), REASONS.len(), "reason names are unique");
        assert_eq!(hook_name(H::ZTR_HOOK_SK_LOOKUP.0), "sk-lookup");
    }

    #[test]
    fn wall_clock_formatting() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(1_700_000_000_123_000_000),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(rfc3339(951_782_400_000_000_000), "2000-02-29T00:00:00.000Z");
    }
}
