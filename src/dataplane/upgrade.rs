// SPDX-License-Identifier: Apache-2.0
//! The mechanics of an in-place upgrade: load this binary's programs
//! beside the pinned ones, reusing every map whose layout is unchanged and
//! migrating the others into new maps, stage all of it in
//! `<pin-dir>/upgrade/`, then replace each attached program in place and
//! move the staged pins over the old ones (bpffs renames atomically).
//!
//! Staging is undone if it is cut short; once it is complete the journal
//! says "finish" (Intent::Upgrade) and `finish`, which only moves forward
//! and checks each step's state first, is what the next invocation runs.
//! Every hook runs the old program or the new one at every moment.

use std::collections::BTreeMap;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use anyhow::{bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};

use crate::dataplane::attach::{self, Hook};
use crate::dataplane::bpf::{obj_get, obj_pin, Prog, MAP_NAMES};
use crate::dataplane::hooks::{WORKLOAD_HOOKS, ZTUNNEL_HOST_HOOKS, ZTUNNEL_POD_HOOKS};
use crate::dataplane::journal::{Journal, Record, Undo};
use crate::dataplane::pins::{create_dirs, PinDir};
use crate::dataplane::schema::{self, Layout};
use crate::dataplane::skel::ZtredirSkelBuilder;

/// Where the new objects wait until they are swapped in.
pub fn staging(pins: &PinDir) -> PinDir {
    PinDir::new(pins.root.join("upgrade"))
}

/// What happens to one map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MapStep {
    Reuse,
    Migrate,
    Create,
}

/// This binary's map layouts, from its object (nothing loaded).
pub fn expected_layouts() -> Result<BTreeMap<String, Layout>> {
    let mut storage = MaybeUninit::uninit();
    let open = ZtredirSkelBuilder::default()
        .open(&mut storage)
        .context("open BPF object")?;
    Ok(schema::object_layouts(open.open_object()))
}

/// Per map, what the upgrade does with it. A changed map ztredir has no
/// conversion for is an error naming it.
pub fn map_steps(
    pinned: &BTreeMap<String, Layout>,
    want: &BTreeMap<String, Layout>,
) -> Result<Vec<(String, MapStep)>> {
    let mut out = Vec::new();
    for name in MAP_NAMES {
        let step = match (pinned.get(name), want.get(name)) {
            (None, _) => MapStep::Create,
            (Some(p), Some(w)) if p == w => MapStep::Reuse,
            (Some(p), Some(w)) => {
                if !convertible(p, w) {
                    bail!(
                        "map {name} changed in a way ztredir cannot migrate ({} -> {}): nothing changed",
                        p.describe(),
                        w.describe()
                    );
                }
                MapStep::Migrate
            }
            (Some(_), None) => bail!("map {name} is not in this binary's object"),
        };
        out.push((name.to_string(), step));
    }
    Ok(out)
}

fn convertible(p: &Layout, w: &Layout) -> bool {
    let copyable = [
        MapType::Hash,
        MapType::LruHash,
        MapType::LpmTrie,
        MapType::Array,
        MapType::PercpuArray,
        MapType::PercpuHash,
        MapType::RingBuf,
    ]
    .map(u32::from);
    p.map_type == w.map_type && p.key == w.key && copyable.contains(&p.map_type)
}

/// Loads the new programs, reusing the maps marked Reuse, and pins every
/// new program and map in the staging directory, each pin journaled
/// first. Migrated maps get the old entries, converted. Returns one line
/// per map step.
pub fn stage(pins: &PinDir, journal: &Journal, steps: &[(String, MapStep)]) -> Result<Vec<String>> {
    let st = staging(pins);
    for dir in [st.root.clone(), st.maps(), st.progs()] {
        create_dirs(&dir)?;
    }
    let mut storage = MaybeUninit::uninit();
    let mut open = ZtredirSkelBuilder::default()
        .open(&mut storage)
        .context("open BPF object")?;
    for mut map in open.open_object_mut().maps_mut() {
        let name = map.name().to_string_lossy().into_owned();
        if steps.contains(&(name.clone(), MapStep::Reuse)) {
            map.set_pin_path(pins.map(&name))
                .with_context(|| format!("reuse map {name}"))?;
        }
    }
    let skel = open
        .load()
        .context("load the new BPF programs (is this kernel new enough?)")?;
    let mut lines = Vec::new();
    for map in Skel::object(&skel).maps() {
        let name = map.name().to_string_lossy().into_owned();
        let Some((_, step)) = steps.iter().find(|(n, _)| *n == name) else {
            continue;
        };
        let path = st.map(&name);
        match step {
            MapStep::Reuse => continue,
            MapStep::Create => lines.push(format!("+ map {name}: created")),
            MapStep::Migrate => {
                let old = MapHandle::from_pinned_path(pins.map(&name))?;
                let new = MapHandle::try_from(&map)?;
                let n = copy_entries(&old, &new).with_context(|| format!("migrate map {name}"))?;
                lines.push(format!("~ map {name}: migrated {} entries", thousands(n)));
            }
        }
        journal.record(&Record::Undo(Undo::Unpin { path: path.clone() }))?;
        obj_pin(map.as_fd(), &path).with_context(|| format!("stage map {name}"))?;
    }
    for prog in Skel::object(&skel).progs() {
        let path = st.prog(&prog.name().to_string_lossy());
        journal.record(&Record::Undo(Undo::Unpin { path: path.clone() }))?;
        obj_pin(prog.as_fd(), &path).context("stage a program")?;
        crate::failpoint::hit("upgrade-stage-prog")?;
    }
    Ok(lines)
}

/// 8192 -> "8,192".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A value of the old layout in the new one: the common prefix, the rest
/// zero. This is the conversion every changed layout so far needs:
/// structs grew at the end (a stat slot's reasons are indexed by
/// position, and new reasons were appended).
fn convert(v: &[u8], size: usize) -> Vec<u8> {
    let mut out = vec![0u8; size];
    let n = v.len().min(size);
    out[..n].copy_from_slice(&v[..n]);
    out
}

/// Copies every entry of `old` into `new`, converting values; returns how
/// many were copied (for arrays: the entries that are not all zero).
fn copy_entries(old: &MapHandle, new: &MapHandle) -> Result<u64> {
    let size = new.value_size() as usize;
    let percpu = matches!(old.map_type(), MapType::PercpuArray | MapType::PercpuHash);
    let array = matches!(old.map_type(), MapType::Array | MapType::PercpuArray);
    if old.map_type() == MapType::RingBuf {
        return Ok(0);
    }
    let keys: Vec<Vec<u8>> = if array {
        (0..old.max_entries())
            .map(|i| i.to_ne_bytes().to_vec())
            .collect()
    } else {
        old.keys().collect()
    };
    let mut n = 0;
    for k in keys {
        if percpu {
            let Some(vals) = old.lookup_percpu(&k, MapFlags::ANY)? else {
                continue;
            };
            if array && vals.iter().all(|v| v.iter().all(|b| *b == 0)) {
                continue;
            }
            let conv: Vec<Vec<u8>> = vals.iter().map(|v| convert(v, size)).collect();
            new.update_percpu(&k, &conv, MapFlags::ANY)?;
        } else {
            let Some(v) = old.lookup(&k, MapFlags::ANY)? else {
                continue;
            };
            if array && v.iter().all(|b| *b == 0) {
                continue;
            }
            new.update(&k, &convert(&v, size), MapFlags::ANY)?;
        }
        n += 1;
    }
    Ok(n)
}

/// The program a hook should run after the upgrade: the staged one, or,
/// once it has been moved into place, the pinned one.
fn target_prog(pins: &PinDir, prog: Prog) -> Result<OwnedFd> {
    let staged = staging(pins).prog(prog.name());
    let path = if staged.exists() {
        staged
    } else {
        pins.prog(prog.name())
    };
    obj_get(&path)
}

/// Finishes a staged upgrade: every hook onto the new programs, the staged
/// pins over the old ones, the schema record, the staging directory gone.
/// Each step looks first, so running it again after a crash completes it.
pub fn finish(pins: &PinDir) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let old_ids: BTreeMap<&str, Option<u32>> = Prog::ALL
        .into_iter()
        .map(|p| (p.name(), prog_id_at(&pins.prog(p.name()))))
        .collect();
    lines.extend(replace_links(pins)?);
    lines.extend(replace_tc_filters(pins)?);
    crate::failpoint::hit("upgrade-hooks-replaced")?;
    let st = staging(pins);
    for name in MAP_NAMES {
        rename_if_staged(&st.map(name), &pins.map(name))?;
    }
    for p in Prog::ALL {
        let staged = st.prog(p.name());
        if let Some(new) = prog_id_at(&staged) {
            rename_if_staged(&staged, &pins.prog(p.name()))?;
            let old = old_ids[p.name()].map_or("none".into(), |i| i.to_string());
            lines.push(format!("~ program {}: id {old} -> {new}", p.name()));
        }
        crate::failpoint::hit("upgrade-swap-prog")?;
    }
    schema::write(pins, &schema::ours(expected_layouts()?))?;
    remove_staging(pins)?;
    Ok(lines)
}

fn prog_id_at(path: &std::path::Path) -> Option<u32> {
    let fd = obj_get(path).ok()?;
    attach::prog_id(fd.as_fd()).ok()
}

fn rename_if_staged(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    if !from.exists() {
        return Ok(());
    }
    std::fs::rename(from, to)
        .with_context(|| format!("move {} to {}", from.display(), to.display()))
}

/// Every pinned link (TCX and the sk_lookup netns link) onto the new
/// program of the same name, in place: its id and place in the chain stay.
fn replace_links(pins: &PinDir) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut pinned: Vec<_> = std::fs::read_dir(pins.links())
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    pinned.sort();
    for pin in pinned {
        let Some(state) = attach::link_state(&pin).filter(|s| s.attached) else {
            continue;
        };
        let name = attach::prog_name(state.prog_id).unwrap_or_default();
        let Some(prog) = crate::dataplane::bpf::ztredir_prog_named(&name) else {
            continue;
        };
        let new = target_prog(pins, prog)?;
        let new_id = attach::prog_id(new.as_fd())?;
        if new_id == state.prog_id {
            continue;
        }
        if prog == Prog::HostGuard {
            replace_netfilter_link(&pin, new.as_fd())?;
        } else {
            attach::update_link(&pin, new.as_fd(), state.prog_id)?;
        }
        crate::failpoint::hit("upgrade-link-replaced")?;
        let file = pin.file_name().unwrap_or_default().to_string_lossy();
        lines.push(format!(
            "~ link {file} (id {}): {} {} -> {new_id}",
            state.link_id,
            prog.name(),
            state.prog_id
        ));
    }
    Ok(lines)
}

/// A netfilter link cannot swap its program: the new one is attached
/// beside it first (both run; each only drops), then the old one goes.
fn replace_netfilter_link(pin: &std::path::Path, new: BorrowedFd<'_>) -> Result<()> {
    let name = pin.file_name().unwrap_or_default().to_string_lossy();
    let pf = crate::dataplane::hooks::HOST_GUARD_LINKS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, pf)| *pf)
        .with_context(|| format!("unknown netfilter link {}", pin.display()))?;
    let tmp = pin.with_extension("new");
    attach::detach_link(&tmp)?;
    attach::attach_netfilter(new, pf, &tmp)?;
    attach::detach_link(pin)?;
    std::fs::rename(&tmp, pin).with_context(|| format!("rename {}", tmp.display()))
}

/// Every classic filter ztredir attached, replaced at its priority and
/// handle; the ztunnel pod's in ztunnel's netns.
fn replace_tc_filters(pins: &PinDir) -> Result<Vec<String>> {
    use crate::dataplane::skel::types::{ztr_attach_mode, ztr_config, ztr_iface, ztr_role};
    let ifaces = MapHandle::from_pinned_path(pins.map("ztr_ifaces"))?;
    let config = MapHandle::from_pinned_path(pins.map("ztr_config"))?;
    let cfg: ztr_config = crate::dataplane::bpf::lookup(&config, &0u32)?.unwrap_or_default();
    let netns = crate::dataplane::state::from_cstr(&cfg.netns);
    let mut lines = Vec::new();
    for (key, i) in crate::dataplane::bpf::entries::<u64, ztr_iface>(&ifaces)? {
        if i.mode != ztr_attach_mode::ZTR_MODE_TC.0 {
            continue;
        }
        let hooks = match i.role {
            r if r == ztr_role::ZTR_ROLE_WORKLOAD.0 => WORKLOAD_HOOKS,
            r if r == ztr_role::ZTR_ROLE_ZTUNNEL_HOST.0 => ZTUNNEL_HOST_HOOKS,
            _ => ZTUNNEL_POD_HOOKS,
        };
        let ifindex = key as u32;
        let name = crate::dataplane::state::from_cstr(&i.name);
        let run = || replace_tc_hooks(pins, ifindex, &name, hooks);
        let done = if i.role == ztr_role::ZTR_ROLE_ZTUNNEL_POD.0 {
            crate::dataplane::netns::NetNs::open(&netns)?.run(run)?
        } else {
            run()?
        };
        lines.extend(done);
    }
    lines.extend(replace_pod_tc_filters(pins)?);
    Ok(lines)
}

/// In-pod workloads attached with classic tc: their interface's and lo's
/// filters, in each one's netns.
fn replace_pod_tc_filters(pins: &PinDir) -> Result<Vec<String>> {
    use crate::dataplane::hooks::{POD_HOOKS, POD_LO_HOOKS};
    use crate::dataplane::skel::types::{ztr_attach_mode, ztr_pod};
    let path = pins.map("ztr_pods");
    if !path.exists() {
        return Ok(Vec::new());
    }
    let pods = MapHandle::from_pinned_path(&path)?;
    let mut lines = Vec::new();
    for (_, p) in crate::dataplane::bpf::entries::<u32, ztr_pod>(&pods)? {
        if p.mode != ztr_attach_mode::ZTR_MODE_TC.0 {
            continue;
        }
        let netns = crate::dataplane::state::from_cstr(&p.netns);
        let Ok(ns) = crate::dataplane::netns::NetNs::open(&netns) else {
            continue;
        };
        if ns.inode != p.netns_inode {
            continue;
        }
        let name = crate::dataplane::state::from_cstr(&p.iface);
        lines.extend(ns.run(|| {
            let mut l = replace_tc_hooks(pins, p.ifindex, &name, POD_HOOKS)?;
            l.extend(replace_tc_hooks(pins, 1, "lo", POD_LO_HOOKS)?);
            Ok(l)
        })?);
    }
    Ok(lines)
}

fn replace_tc_hooks(
    pins: &PinDir,
    ifindex: u32,
    name: &str,
    hooks: &[(Hook, Prog)],
) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for &(hook, prog) in hooks {
        let Some(cur) = attach::tc_filter_prog(ifindex, hook) else {
            continue;
        };
        let new = target_prog(pins, prog)?;
        let new_id = attach::prog_id(new.as_fd())?;
        if cur == new_id {
            continue;
        }
        attach::replace_tc(new.as_fd(), ifindex, hook, cur)?;
        crate::failpoint::hit("upgrade-link-replaced")?;
        lines.push(format!(
            "~ tc {name} {}: {} {cur} -> {new_id}",
            hook.name(),
            prog.name()
        ));
    }
    Ok(lines)
}

/// Removes the staging directory and anything left in it.
pub fn remove_staging(pins: &PinDir) -> Result<()> {
    let st = staging(pins);
    if !st.root.exists() {
        return Ok(());
    }
    for dir in [st.maps(), st.progs()] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            crate::dataplane::journal::unpin(&e.path())?;
        }
        let _ = std::fs::remove_dir(&dir);
    }
    std::fs::remove_dir(&st.root).with_context(|| format!("remove {}", st.root.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_convert_by_common_prefix_and_counts_read_well() {
        assert_eq!(convert(&[1, 2, 3], 5), vec![1, 2, 3, 0, 0]);
        assert_eq!(convert(&[1, 2, 3], 2), vec![1, 2]);
        assert_eq!(thousands(8192), "8,192");
        assert_eq!(thousands(7), "7");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn map_steps_reuse_migrate_create_and_refuse() {
        let l = |value, btf| Layout {
            map_type: MapType::Hash.into(),
            key: 4,
            value,
            max: 16,
            btf,
            payload: 0,
        };
        let want: BTreeMap<String, Layout> =
            MAP_NAMES.iter().map(|n| (n.to_string(), l(8, 1))).collect();
        let mut pinned = want.clone();
        pinned.remove("ztr_frags");
        pinned.insert("ztr_config".into(), l(4, 2));
        let steps = map_steps(&pinned, &want).unwrap();
        let step = |n: &str| steps.iter().find(|(m, _)| m == n).unwrap().1;
        assert_eq!(step("ztr_frags"), MapStep::Create);
        assert_eq!(step("ztr_config"), MapStep::Migrate);
        assert_eq!(step("ztr_endpoints"), MapStep::Reuse);
        let mut bad = l(8, 1);
        bad.key = 8;
        pinned.insert("ztr_ifaces".into(), bad);
        let e = map_steps(&pinned, &want).unwrap_err().to_string();
        assert!(e.contains("ztr_ifaces"), "{e}");
    }
}
