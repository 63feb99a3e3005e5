// SPDX-License-Identifier: Apache-2.0
//! `uninstall`: detach every workload, clear ztunnel (restoring what `set`
//! changed), and remove the pin directory with its programs, maps and
//! links, so that the node is as before ztredir.

use anyhow::{Context, Result};

use crate::ctx::{Ctx, Outcome};
use crate::state::State;
use crate::{workload, ztunnel};

pub fn uninstall(ctx: &Ctx) -> Result<Outcome> {
    let root = &ctx.pins.root;
    if !root.exists() {
        return Ok(Outcome::unchanged(format!(
            "nothing pinned at {}, nothing to do",
            root.display()
        )));
    }
    let _lock = ctx.pins.prepare_for_change()?;
    let mut out = Outcome::default();
    if ctx.pins.exists() {
        let st = State::open(&ctx.pins)?;
        let detached = workload::detach_all_locked(ctx, &st)?;
        if detached.changed {
            out.messages.extend(detached.messages);
        }
        let cleared = ztunnel::clear_locked(ctx, &st)?;
        if cleared.changed {
            out.messages.extend(cleared.messages);
        }
    }
    // Unpinning drops the last references: links detach, programs and maps
    // are freed.
    for dir in [
        ctx.pins.trace_dir(),
        ctx.pins.links(),
        ctx.pins.progs(),
        ctx.pins.maps(),
    ] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                std::fs::remove_file(e.path())
                    .with_context(|| format!("unpin {}", e.path().display()))?;
            }
        }
        if dir.exists() {
            std::fs::remove_dir(&dir).with_context(|| format!("remove {}", dir.display()))?;
        }
    }
    std::fs::remove_dir(root).with_context(|| format!("remove {}", root.display()))?;
    out.changed = true;
    out.messages.push(format!(
        "removed {} and everything pinned there",
        root.display()
    ));
    Ok(out)
}
