// SPDX-License-Identifier: Apache-2.0
//! `uninstall`: detach every workload (node-level ones, and in-pod ones,
//! whose netns get their policy routing and lo sysctls back), clear ztunnel
//! (restoring what `set` changed), and remove the pin directory with its
//! programs, maps and links, so that the node is as before ztredir.
//!
//! All or nothing: detaching and clearing are journaled like any change (a
//! failure or a crash there is undone); once they are done the journal
//! says "finish", and removing the pins, which cannot be undone, is
//! completed by the next invocation if this one dies.

use std::path::Path;

use anyhow::{Context, Result};

use crate::ctx::{Ctx, Outcome};
use crate::dataplane::journal::{Intent, Journal};
use crate::dataplane::pins::PinDir;
use crate::node::{workload, ztunnel};

pub fn uninstall(ctx: &Ctx) -> Result<Outcome> {
    let root = &ctx.pins.root;
    if !root.exists() {
        return Ok(Outcome::unchanged(format!(
            "nothing pinned at {}, nothing to do",
            root.display()
        )));
    }
    ctx.change_any_version(|tx| {
        let mut out = Outcome::default();
        // detach_all_locked includes the in-pod workloads
        // (inpod::detach_all_locked): their netns are put back while the
        // change can still be undone, before any pin goes.
        for o in [workload::detach_all_locked(tx)?, ztunnel::clear_locked(tx)?] {
            if o.changed {
                out.messages.extend(o.messages);
            }
        }
        tx.finish_on_crash(Intent::Uninstall)?;
        crate::failpoint::hit("uninstall-unpin")?;
        remove_pins(tx.pins)?;
        out.changed = true;
        out.messages.push(format!(
            "removed {} and everything pinned there",
            root.display()
        ));
        Ok(out)
    })
}

/// Removes everything under the pin directory and the directory itself.
/// Unpinning drops the last references: links detach, programs and maps
/// are freed. Whatever is there goes, whatever it is, so that a stray
/// entry cannot stop an uninstall half-way; the journal goes last, so a
/// crash before then is finished by the next invocation.
pub fn remove_pins(pins: &PinDir) -> Result<()> {
    let journal = Journal::path(pins);
    remove_tree(&pins.root, &journal)?;
    crate::dataplane::journal::unpin(&journal)?;
    match std::fs::remove_dir(&pins.root) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("remove {}", pins.root.display()))
        }
        _ => Ok(()),
    }
}

/// Empties `dir` (every entry but `keep`) and removes its subdirectories.
fn remove_tree(dir: &Path, keep: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let path = e.path();
        if path == keep {
            continue;
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&path, keep)?;
            std::fs::remove_dir(&path).with_context(|| format!("remove {}", path.display()))?;
        } else {
            crate::dataplane::journal::unpin(&path)?;
        }
        crate::failpoint::hit("uninstall-unpinned-one")?;
    }
    Ok(())
}
