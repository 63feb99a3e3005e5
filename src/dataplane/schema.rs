// SPDX-License-Identifier: Apache-2.0
//! The schema record: which ztredir made the pinned state and what layout
//! each pinned map has, so that a binary never reads or writes maps laid
//! out by another version as if they were its own.
//!
//! A layout is the map's type, key and value sizes, max entries and a hash
//! of a text dump of its key and value BTF types (the type ids differ
//! from one build to the next, the types' text does not), plus, for the
//! maps whose content the CLI lays out beyond the key and value (the trace
//! ring's events, the connection table's inner tables), a hash of those
//! types. The record lives in a pinned map (`<pin-dir>/schema`, one entry,
//! JSON), since bpffs holds no regular files; it is written in the first
//! load and by `upgrade`. A pin directory without one was made by 0.1.0,
//! which is recognised by its layouts.

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use libbpf_rs::libbpf_sys as sys;
use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};
use serde::{Deserialize, Serialize};

use crate::dataplane::bpf::{obj_get, obj_pin, MAP_NAMES};
use crate::dataplane::pins::PinDir;

/// This binary's version and BPF object.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const OBJECT: &str = env!("ZTREDIR_BPF_HASH");

const RECORD_BYTES: u32 = 8192;

/// One map's layout identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub map_type: u32,
    pub key: u32,
    pub value: u32,
    pub max: u32,
    /// Hash of the key and value BTF types' text (0: the map has none).
    pub btf: u64,
    /// Hash of the content types beyond key and value (0: none).
    #[serde(default)]
    pub payload: u64,
}

impl Layout {
    /// What the kernel can confirm of a pinned map: all but the payload.
    pub fn same_shape(&self, o: &Layout) -> bool {
        (self.map_type, self.key, self.value, self.max, self.btf)
            == (o.map_type, o.key, o.value, o.max, o.btf)
    }

    pub fn describe(&self) -> String {
        format!(
            "type {}, key {} B, value {} B, {} entries, BTF {:016x}",
            self.map_type, self.key, self.value, self.max, self.btf
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub version: String,
    /// The BPF object's hash: one version built with other programs differs.
    pub object: String,
    pub maps: BTreeMap<String, Layout>,
}

/// The content types of maps whose entries are more than key and value.
fn payload_types(map: &str) -> &'static [&'static str] {
    match map {
        "ztr_events" => &["ztr_event"],
        "ztr_conns" => &["ztr_ct_key", "ztr_ct_entry"],
        _ => &[],
    }
}

/// The layouts of 0.1.0 (commit 32abf0e), which wrote no record: read
/// from a pin directory it made (the same dump and hash as `map_layout`).
pub fn release_0_1_0() -> BTreeMap<String, Layout> {
    let l = |map_type, key, value, max, btf, payload| Layout {
        map_type,
        key,
        value,
        max,
        btf,
        payload,
    };
    [
        ("ztr_config", l(2, 4, 512, 1, 0x62d27b2e2fb86fe3, 0)),
        ("ztr_conns", l(12, 4, 4, 1, 0, 0xff76f480c0395e22)),
        ("ztr_endpoints", l(1, 16, 8, 65536, 0x6890c9711717e394, 0)),
        ("ztr_events", l(27, 0, 0, 1 << 20, 0, 0xf727e1696c38660b)),
        ("ztr_excl_cidrs", l(11, 28, 4, 16384, 0x0a1e91c2729293c1, 0)),
        ("ztr_excl_ports", l(1, 8, 4, 65536, 0xa642b44f4f7b3838, 0)),
        ("ztr_ifaces", l(1, 8, 48, 16384, 0xcf5100fc9a75f443, 0)),
        ("ztr_listeners", l(15, 4, 8, 10, 0, 0)),
        ("ztr_stat_slots", l(6, 4, 296, 512, 0x16a8df5cee491cc5, 0)),
        ("ztr_stats", l(5, 8, 16, 65536, 0xa0334e38925c1fbd, 0)),
    ]
    .into_iter()
    .map(|(n, l)| (n.to_string(), l))
    .collect()
}

fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, x| {
        (h ^ *x as u64).wrapping_mul(0x100000001b3)
    })
}

/// A stable text of BTF type `id` (names, sizes, member offsets, element
/// counts), followed through typedefs, modifiers and arrays.
fn dump(btf: *const sys::btf, id: u32, out: &mut String, depth: u32) {
    if id == 0 || depth > 16 {
        out.push_str("void");
        return;
    }
    // SAFETY: libbpf returns a pointer into the BTF it owns, or null.
    let t = unsafe { sys::btf__type_by_id(btf, id) };
    if t.is_null() {
        out.push('?');
        return;
    }
    let t = unsafe { &*t };
    let name = |off: u32| unsafe {
        let p = sys::btf__name_by_offset(btf, off);
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    let (kind, vlen) = ((t.info >> 24) & 0x1f, t.info & 0xffff);
    // SAFETY: size and type share the union; which one is meant follows from kind.
    let size_or_type = unsafe { t.__bindgen_anon_1.size };
    // SAFETY: a type's extra data follows the 12-byte header.
    let extra = |i: usize| unsafe { *((t as *const sys::btf_type).add(1) as *const u32).add(i) };
    out.push_str(&format!("{kind}:{}:", name(t.name_off)));
    match kind {
        1 => out.push_str(&format!("int{size_or_type}/{:x}", extra(0))),
        3 => {
            out.push_str(&format!("[{}]", extra(2)));
            dump(btf, extra(0), out, depth + 1);
        }
        4 | 5 => {
            out.push_str(&format!("{size_or_type}{{"));
            for m in 0..vlen as usize {
                out.push_str(&format!("{}@{}:", name(extra(m * 3)), extra(m * 3 + 2)));
                dump(btf, extra(m * 3 + 1), out, depth + 1);
                out.push(';');
            }
            out.push('}');
        }
        6 | 19 | 16 | 7 => out.push_str(&format!("{size_or_type}")),
        2 => out.push_str("ptr"),
        _ => dump(btf, size_or_type, out, depth + 1),
    }
}

fn type_hash(btf: *const sys::btf, ids: &[u32]) -> u64 {
    if ids.iter().all(|i| *i == 0) {
        return 0;
    }
    let mut s = String::new();
    for id in ids {
        dump(btf, *id, &mut s, 0);
        s.push('|');
    }
    fnv1a(s.as_bytes())
}

fn named_hash(btf: *const sys::btf, names: &[&str]) -> u64 {
    let ids: Vec<u32> = names
        .iter()
        .map(|n| {
            let c = std::ffi::CString::new(*n).expect("no NUL");
            // SAFETY: a valid BTF and a NUL-terminated name.
            let id = unsafe { sys::btf__find_by_name(btf, c.as_ptr()) };
            id.max(0) as u32
        })
        .collect();
    type_hash(btf, &ids)
}

/// The map types for which libbpf creates the map without BTF (see
/// bpf_object__create_map), whose pinned layout therefore has none.
fn btf_less(map_type: u32) -> bool {
    use sys::*;
    [
        BPF_MAP_TYPE_ARRAY_OF_MAPS,
        BPF_MAP_TYPE_HASH_OF_MAPS,
        BPF_MAP_TYPE_SOCKMAP,
        BPF_MAP_TYPE_SOCKHASH,
        BPF_MAP_TYPE_PERF_EVENT_ARRAY,
    ]
    .contains(&map_type)
}

/// The layouts of an opened (not yet loaded) BPF object's pinned maps:
/// what this binary expects, or what an old object file had.
pub fn object_layouts(obj: &libbpf_rs::OpenObject) -> BTreeMap<String, Layout> {
    let raw = libbpf_rs::AsRawLibbpf::as_libbpf_object(obj);
    // SAFETY: the object outlives this call; libbpf owns its BTF.
    let btf = unsafe { sys::bpf_object__btf(raw.as_ptr()) };
    let mut out = BTreeMap::new();
    for map in obj.maps() {
        let name = map.name().to_string_lossy().into_owned();
        if !MAP_NAMES.contains(&name.as_str()) {
            continue;
        }
        let map_type: u32 = map.map_type().into();
        let m = libbpf_rs::AsRawLibbpf::as_libbpf_object(&map).as_ptr();
        // SAFETY: a map of the open object.
        let (k, v) = unsafe {
            (
                sys::bpf_map__btf_key_type_id(m),
                sys::bpf_map__btf_value_type_id(m),
            )
        };
        let ids = if btf_less(map_type) { [0, 0] } else { [k, v] };
        out.insert(
            name.clone(),
            Layout {
                map_type,
                key: map.key_size(),
                value: map.value_size(),
                max: map.max_entries(),
                btf: type_hash(btf, &ids),
                payload: named_hash(btf, payload_types(&name)),
            },
        );
    }
    out
}

/// What the kernel says of a map: its layout without the payload.
pub fn map_layout(fd: BorrowedFd<'_>) -> Result<Layout> {
    let mut info = sys::bpf_map_info::default();
    let mut len = std::mem::size_of::<sys::bpf_map_info>() as u32;
    // SAFETY: info is as large as len says.
    let ret = unsafe { sys::bpf_map_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    if ret < 0 {
        return Err(std::io::Error::from_raw_os_error(-ret)).context("read map info");
    }
    let mut btf = 0;
    if info.btf_id != 0 && (info.btf_key_type_id != 0 || info.btf_value_type_id != 0) {
        // SAFETY: a fresh BTF object, freed below.
        let b = unsafe { sys::btf__load_from_kernel_by_id(info.btf_id) };
        if !b.is_null() {
            btf = type_hash(b, &[info.btf_key_type_id, info.btf_value_type_id]);
            unsafe { sys::btf__free(b) };
        }
    }
    Ok(Layout {
        map_type: info.type_,
        key: info.key_size,
        value: info.value_size,
        max: info.max_entries,
        btf,
        payload: 0,
    })
}

/// The layout of every ztredir map pinned in `maps/`.
pub fn pinned_layouts(pins: &PinDir) -> Result<BTreeMap<String, Layout>> {
    let mut out = BTreeMap::new();
    for name in MAP_NAMES {
        let path = pins.map(name);
        if !path.exists() {
            continue;
        }
        let fd = obj_get(&path)?;
        let l = map_layout(fd.as_fd()).with_context(|| format!("inspect map {name}"))?;
        out.insert(name.to_string(), l);
    }
    Ok(out)
}

pub fn path(pins: &PinDir) -> PathBuf {
    pins.root.join("schema")
}

/// The schema record, if the pin directory has one.
pub fn read(pins: &PinDir) -> Result<Option<Record>> {
    let p = path(pins);
    if !p.exists() {
        return Ok(None);
    }
    let map = MapHandle::from_pinned_path(&p).with_context(|| format!("open {}", p.display()))?;
    let Some(v) = map.lookup(&0u32.to_ne_bytes(), MapFlags::ANY)? else {
        return Ok(None);
    };
    let len = (u32::from_ne_bytes(v[..4].try_into().expect("4 bytes")) as usize).min(v.len() - 4);
    if len == 0 {
        return Ok(None);
    }
    serde_json::from_slice(&v[4..4 + len])
        .map(Some)
        .with_context(|| format!("the schema record {} does not parse", p.display()))
}

/// Writes the record (one map update: all of it or none).
pub fn write(pins: &PinDir, rec: &Record) -> Result<()> {
    let p = path(pins);
    let map = if p.exists() {
        MapHandle::from_pinned_path(&p)?
    } else {
        create_at(&p)?
    };
    let json = serde_json::to_vec(rec)?;
    if json.len() + 4 > RECORD_BYTES as usize {
        bail!("schema record of {} bytes is too large", json.len());
    }
    let mut v = vec![0u8; RECORD_BYTES as usize];
    v[..4].copy_from_slice(&(json.len() as u32).to_ne_bytes());
    v[4..4 + json.len()].copy_from_slice(&json);
    map.update(&0u32.to_ne_bytes(), &v, MapFlags::ANY)
        .context("write the schema record")
}

fn create_at(p: &Path) -> Result<MapHandle> {
    let opts = sys::bpf_map_create_opts {
        sz: std::mem::size_of::<sys::bpf_map_create_opts>() as _,
        ..Default::default()
    };
    let map = MapHandle::create(
        MapType::Array,
        Some("ztr_schema"),
        4,
        RECORD_BYTES,
        1,
        &opts,
    )
    .context("create the schema record map")?;
    obj_pin(map.as_fd(), p).context("pin the schema record")?;
    Ok(map)
}

/// The record this binary writes for `layouts`.
pub fn ours(layouts: BTreeMap<String, Layout>) -> Record {
    Record {
        version: VERSION.into(),
        object: OBJECT.into(),
        maps: layouts,
    }
}

/// What the pinned state is, against this binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    /// The version that made it ("0.1.0" for a record-less one).
    pub version: String,
    /// It is this binary's: same version and programs.
    pub current: bool,
    /// Every pinned map's full layout (the record's payloads included).
    pub maps: BTreeMap<String, Layout>,
}

impl Pinned {
    /// The one line a changing command refuses a skew with.
    pub fn skew_error(&self) -> anyhow::Error {
        crate::error::usage(format!(
            "the pinned state was made by ztredir {}{}, this is ztredir {VERSION}: run `ztredir upgrade`",
            self.version,
            if self.version == VERSION { " (other programs)" } else { "" }
        ))
    }
}

/// Reads the record (or recognises 0.1.0) and checks every pinned map
/// against it. A map that matches no layout ztredir knows is an error
/// naming it (exit 1): nothing may be read or written through it. None
/// when nothing is pinned.
pub fn inspect(pins: &PinDir) -> Result<Option<Pinned>> {
    if !pins.exists() {
        return Ok(None);
    }
    let pinned = pinned_layouts(pins)?;
    let (version, object, known) = match read(pins)? {
        Some(r) => (r.version, r.object, r.maps),
        None => ("0.1.0".to_string(), String::new(), release_0_1_0()),
    };
    let mut maps = BTreeMap::new();
    for (name, have) in &pinned {
        let ok = known.get(name).filter(|k| k.same_shape(have));
        let Some(k) = ok else {
            bail!(
                "map {name} at {} matches no layout ztredir knows (it has {}; ztredir {version} made {}): refusing to use it, nothing changed",
                pins.map(name).display(),
                have.describe(),
                known.get(name).map_or("no such map".into(), |k| k.describe()),
            );
        };
        maps.insert(name.clone(), *k);
    }
    Ok(Some(Pinned {
        current: version == VERSION && object == OBJECT,
        version,
        maps,
    }))
}
