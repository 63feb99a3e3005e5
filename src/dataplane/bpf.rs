// SPDX-License-Identifier: Apache-2.0
//! Loading the BPF object once, pinning its maps and programs, and opening
//! them again from the pins in every later invocation.

use std::ffi::CString;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Context, Result};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::dataplane::pins::PinDir;
use crate::dataplane::skel::ZtredirSkelBuilder;

/// The programs, by the role they play; the pin name is the C function's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prog {
    /// workload veth, tc ingress: outbound capture
    WorkloadOut,
    /// workload veth, tc egress: inbound capture
    WorkloadIn,
    /// ztunnel host veth, tc ingress: ztunnel -> workload
    ZtunnelHost,
    /// ztunnel eth0, tc ingress, in its netns: local delivery mark
    ZtunnelPod,
    /// ztunnel netns, sk_lookup: listener selection
    ZtunnelLookup,
    /// in-pod: the workload's interface, tc egress: outbound to the proxy
    PodOut,
    /// in-pod: the workload's interface, tc ingress: probes, listeners
    PodIn,
    /// in-pod: lo, tc egress: the proxy's leg into the app, DNS answers
    PodLo,
    /// in-pod: the workload netns, sk_lookup: listener selection
    PodLookup,
    /// in-pod: netfilter PRE_ROUTING in the node's netns: host IPs from outside dropped
    HostGuard,
}

impl Prog {
    pub const ALL: [Prog; 10] = [
        Prog::WorkloadOut,
        Prog::WorkloadIn,
        Prog::ZtunnelHost,
        Prog::ZtunnelPod,
        Prog::ZtunnelLookup,
        Prog::PodOut,
        Prog::PodIn,
        Prog::PodLo,
        Prog::PodLookup,
        Prog::HostGuard,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Prog::WorkloadOut => "ztr_workload_out",
            Prog::WorkloadIn => "ztr_workload_in",
            Prog::ZtunnelHost => "ztr_ztunnel_host",
            Prog::ZtunnelPod => "ztr_ztunnel_pod",
            Prog::ZtunnelLookup => "ztr_ztunnel_lookup",
            Prog::PodOut => "ztr_pod_out",
            Prog::PodIn => "ztr_pod_in",
            Prog::PodLo => "ztr_pod_lo",
            Prog::PodLookup => "ztr_pod_lookup",
            Prog::HostGuard => "ztr_host_guard",
        }
    }
}

/// The ztredir program a kernel program name (15 characters kept) is.
pub fn ztredir_prog_named(name: &str) -> Option<Prog> {
    Prog::ALL.into_iter().find(|p| {
        let full = p.name();
        full[..full.len().min(15)] == *name
    })
}

/// The program and link ids pinned in a pin directory: what is this
/// instance's own. A link's program counts too, in case the programs were
/// loaded again since it was made.
#[derive(Debug, Default)]
pub struct OwnIds {
    pub progs: std::collections::BTreeSet<u32>,
    pub links: std::collections::BTreeSet<u32>,
}

pub fn own_ids(pins: &PinDir) -> OwnIds {
    let mut own = OwnIds::default();
    let entries = |dir: std::path::PathBuf| {
        std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    for pin in entries(pins.progs()) {
        if let Some(id) = obj_get(&pin)
            .ok()
            .and_then(|fd| crate::dataplane::attach::prog_id(fd.as_fd()).ok())
        {
            own.progs.insert(id);
        }
    }
    for pin in entries(pins.links()) {
        if let Some(l) = crate::dataplane::attach::link_state(&pin) {
            own.links.insert(l.link_id);
            own.progs.insert(l.prog_id);
        }
    }
    own
}

pub const MAP_NAMES: [&str; 17] = [
    "ztr_config",
    "ztr_endpoints",
    "ztr_ifaces",
    "ztr_stats",
    "ztr_listeners",
    "ztr_conns",
    "ztr_events",
    "ztr_excl_ports",
    "ztr_excl_cidrs",
    "ztr_stat_slots",
    "ztr_frags",
    "ztr_node_conns",
    "ztr_iface_flags",
    "ztr_hairpin_seen",
    "ztr_pods",
    "ztr_pod_listeners",
    "ztr_dns_nat",
];

/// Loads the object and pins what is not pinned yet. Maps already pinned
/// are reused as they are, so loading never loses state. Every pin it is
/// about to make is in the journal first, so that a load cut short is
/// removed whole by the next invocation instead of leaving half a state.
pub fn ensure_loaded(pins: &PinDir, journal: &crate::dataplane::journal::Journal) -> Result<()> {
    use crate::dataplane::journal::{Record, Undo};
    let missing: Vec<&str> = MAP_NAMES
        .iter()
        .copied()
        .filter(|m| !pins.map(m).exists())
        .collect();
    let missing_progs: Vec<Prog> = Prog::ALL
        .into_iter()
        .filter(|p| !pins.prog(p.name()).exists())
        .collect();
    if missing.is_empty() && missing_progs.is_empty() {
        return Ok(());
    }
    let new_pins = missing
        .iter()
        .map(|m| pins.map(m))
        .chain(missing_progs.iter().map(|p| pins.prog(p.name())));
    // A fresh state gets its schema record; one missing a map or a
    // program otherwise (pins removed by hand) keeps the record it has.
    let fresh = missing.len() == MAP_NAMES.len();
    if fresh {
        journal.record(&Record::Undo(Undo::Unpin {
            path: crate::dataplane::schema::path(pins),
        }))?;
    }
    for path in new_pins {
        journal.record(&Record::Undo(Undo::Unpin { path }))?;
    }
    let mut storage = MaybeUninit::uninit();
    let mut open = ZtredirSkelBuilder::default()
        .open(&mut storage)
        .context("open BPF object")?;
    for map in open.open_object_mut().maps_mut() {
        let name = map.name().to_string_lossy().into_owned();
        // Reuse what is pinned; the rest is pinned below, one at a time.
        if MAP_NAMES.contains(&name.as_str()) && !missing.contains(&name.as_str()) {
            let mut map = map;
            map.set_pin_path(pins.map(&name))
                .with_context(|| format!("set pin path of map {name}"))?;
        }
    }
    let layouts = crate::dataplane::schema::object_layouts(open.open_object());
    let skel = open
        .load()
        .context("load BPF programs (is this kernel new enough, and are you root?)")?;
    if fresh {
        crate::dataplane::schema::write(pins, &crate::dataplane::schema::ours(layouts))?;
    }
    for (i, map) in skel.object().maps().enumerate() {
        let name = map.name().to_string_lossy().into_owned();
        if missing.contains(&name.as_str()) {
            obj_pin(map.as_fd(), &pins.map(&name)).with_context(|| format!("pin map {name}"))?;
            crate::failpoint::hit(&format!("load-pin-{i}"))?;
        }
    }
    for prog in skel.object().progs() {
        let name = prog.name().to_string_lossy().into_owned();
        let path = pins.prog(&name);
        if path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("unpin {}", path.display()))?;
        }
        obj_pin(prog.as_fd(), &path).with_context(|| format!("pin program {name}"))?;
    }
    Ok(())
}

/// Pins a BPF object (program, map, link) by fd.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let ret = unsafe { libbpf_rs::libbpf_sys::bpf_obj_pin(fd.as_raw_fd(), c.as_ptr()) };
    if ret < 0 {
        return Err(std::io::Error::from_raw_os_error(-ret))
            .with_context(|| format!("pin at {}", path.display()));
    }
    Ok(())
}

/// A pinned object's fd.
pub fn obj_get(path: &Path) -> Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let fd = unsafe { libbpf_rs::libbpf_sys::bpf_obj_get(c.as_ptr()) };
    if fd < 0 {
        return Err(std::io::Error::from_raw_os_error(-fd))
            .with_context(|| format!("open pin {}", path.display()));
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn prog_fd(pins: &PinDir, prog: Prog) -> Result<OwnedFd> {
    obj_get(&pins.prog(prog.name()))
}

/// The pinned maps, opened by path.
pub struct Maps {
    pub config: MapHandle,
    pub endpoints: MapHandle,
    pub ifaces: MapHandle,
    pub stats: MapHandle,
    pub listeners: MapHandle,
    pub conns: MapHandle,
    pub events: MapHandle,
    pub excl_ports: MapHandle,
    pub excl_cidrs: MapHandle,
    pub stat_slots: MapHandle,
    /// None in a 0.1.0 pin directory (read across a version skew).
    pub iface_flags: Option<MapHandle>,
    /// In-pod workloads and their listeners; None in pin directories of
    /// versions without in-pod mode.
    pub pods: Option<MapHandle>,
    pub pod_listeners: Option<MapHandle>,
}

impl Maps {
    /// The map pinned under `name`, for the journal's generic undo.
    pub fn named(&self, name: &str) -> Option<&MapHandle> {
        Some(match name {
            "ztr_config" => &self.config,
            "ztr_endpoints" => &self.endpoints,
            "ztr_ifaces" => &self.ifaces,
            "ztr_excl_ports" => &self.excl_ports,
            "ztr_excl_cidrs" => &self.excl_cidrs,
            "ztr_iface_flags" => self.iface_flags.as_ref()?,
            "ztr_pods" => self.pods.as_ref()?,
            _ => return None,
        })
    }

    pub fn open(pins: &PinDir) -> Result<Maps> {
        let open = |name: &str| {
            let path = pins.map(name);
            MapHandle::from_pinned_path(&path)
                .with_context(|| format!("open map {}", path.display()))
        };
        Ok(Maps {
            config: open("ztr_config")?,
            endpoints: open("ztr_endpoints")?,
            ifaces: open("ztr_ifaces")?,
            stats: open("ztr_stats")?,
            listeners: open("ztr_listeners")?,
            conns: open("ztr_conns")?,
            events: open("ztr_events")?,
            excl_ports: open("ztr_excl_ports")?,
            excl_cidrs: open("ztr_excl_cidrs")?,
            stat_slots: open("ztr_stat_slots")?,
            iface_flags: open_if(pins, "ztr_iface_flags")?,
            pods: open_if(pins, "ztr_pods")?,
            pod_listeners: open_if(pins, "ztr_pod_listeners")?,
        })
    }
}

/// A map that versions before it did not have: None when not pinned.
fn open_if(pins: &PinDir, name: &str) -> Result<Option<MapHandle>> {
    let path = pins.map(name);
    if !path.exists() {
        return Ok(None);
    }
    MapHandle::from_pinned_path(&path)
        .map(Some)
        .with_context(|| format!("open map {}", path.display()))
}

/// Views a plain C struct from the skeleton as bytes for a map call.
pub fn bytes_of<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is a repr(C) skeleton type made of integers and arrays.
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) }
}

/// Reads a plain C struct from a map value.
pub fn from_bytes<T: Copy + Default>(b: &[u8]) -> T {
    let mut v = T::default();
    let n = b.len().min(std::mem::size_of::<T>());
    // SAFETY: as above; any bit pattern is a valid value of such a type.
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), &mut v as *mut T as *mut u8, n) };
    v
}

pub fn lookup<K: Copy, V: Copy + Default>(map: &MapHandle, key: &K) -> Result<Option<V>> {
    Ok(map
        .lookup(bytes_of(key), MapFlags::ANY)
        .with_context(|| format!("look up in map {}", map.name().to_string_lossy()))?
        .map(|b| from_bytes(&b)))
}

pub fn update<K: Copy, V: Copy>(map: &MapHandle, key: &K, value: &V) -> Result<()> {
    map.update(bytes_of(key), bytes_of(value), MapFlags::ANY)
        .with_context(|| format!("update map {}", map.name().to_string_lossy()))
}

/// Deletes a key; a key that is not there is not an error.
pub fn delete<K: Copy>(map: &MapHandle, key: &K) -> Result<()> {
    match map.delete(bytes_of(key)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
        Err(e) => {
            Err(e).with_context(|| format!("delete from map {}", map.name().to_string_lossy()))
        }
    }
}

/// Every entry of a hash map.
pub fn entries<K: Copy + Default, V: Copy + Default>(map: &MapHandle) -> Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    for k in map.keys() {
        if let Some(v) = map.lookup(&k, MapFlags::ANY).context("read map entry")? {
            out.push((from_bytes(&k), from_bytes(&v)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel keeps 15 characters of a program's name.
    #[test]
    fn kernel_program_names_are_recognised() {
        assert_eq!(
            ztredir_prog_named("ztr_workload_ou"),
            Some(Prog::WorkloadOut)
        );
        assert_eq!(
            ztredir_prog_named("ztr_workload_in"),
            Some(Prog::WorkloadIn)
        );
        assert_eq!(
            ztredir_prog_named("ztr_ztunnel_loo"),
            Some(Prog::ZtunnelLookup)
        );
        assert_eq!(
            ztredir_prog_named("ztr_ztunnel_pod"),
            Some(Prog::ZtunnelPod)
        );
        for other in ["", "ztr_", "foreign_tcx", "ztr_workload_o"] {
            assert_eq!(ztredir_prog_named(other), None, "{other:?}");
        }
    }
}
