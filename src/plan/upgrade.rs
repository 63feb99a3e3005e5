// SPDX-License-Identifier: Apache-2.0
//! `upgrade`: move the pinned state made by another ztredir version onto
//! this binary's programs and map layouts without detaching anything.
//! The plan (per map: reuse, migrate or create; every program replaced)
//! is what `--dry-run` prints; carrying it out stages the new objects
//! (undone if cut short) and then finishes in place (completed by the next
//! invocation if cut short). The mechanics are dataplane::upgrade.

use anyhow::{anyhow, Result};

use crate::ctx::{Ctx, Outcome};
use crate::dataplane::bpf::Prog;
use crate::dataplane::journal::{self, Intent, Journal, Record};
use crate::dataplane::schema::{self, VERSION};
use crate::dataplane::upgrade::{self as mech, MapStep};

pub fn upgrade(ctx: &Ctx, dry_run: bool) -> Result<Outcome> {
    let pins = &ctx.pins;
    if !pins.root.exists() {
        return Ok(Outcome::unchanged(format!(
            "nothing pinned at {}, nothing to upgrade",
            pins.root.display()
        )));
    }
    let _lock = pins.prepare_for_change()?;
    let journal = Journal::open_or_create(pins)?;
    let interrupted = journal
        .pending()?
        .contains(&Record::Finish(Intent::Upgrade));
    crate::dataplane::state::recover(ctx, &journal)?;
    let Some(pinned) = schema::inspect(pins)? else {
        return Ok(Outcome::unchanged("nothing pinned, nothing to upgrade"));
    };
    let steps = mech::map_steps(&pinned.maps, &mech::expected_layouts()?)?;
    if pinned.current && steps.iter().all(|(_, s)| *s == MapStep::Reuse) {
        return Ok(match interrupted {
            true => Outcome::changed(format!(
                "finished an interrupted upgrade to ztredir {VERSION}"
            )),
            false => Outcome::unchanged(format!(
                "no change: the pinned state is already ztredir {VERSION}'s"
            )),
        });
    }
    let mut out = Outcome::default();
    out.messages.push(format!(
        "upgrade ztredir {} -> {VERSION}{}",
        pinned.version,
        if dry_run { " (dry run)" } else { "" }
    ));
    if dry_run {
        out.messages.extend(dry_run_lines(pins, &steps));
        return Ok(out);
    }
    out.changed = true;
    out.messages.extend(stage(pins, &journal, &steps)?);
    journal.record(&Record::Finish(Intent::Upgrade))?;
    crate::failpoint::hit("upgrade-staged")?;
    let done = mech::finish(pins).map_err(|e| {
        anyhow!("{e:#}; the upgrade is half done (every hook runs the old or the new programs): run `ztredir upgrade` again to complete it")
    })?;
    out.messages.extend(done);
    journal.clear()?;
    Ok(out)
}

/// Stages the new objects; a failure removes what was staged.
fn stage(
    pins: &crate::dataplane::pins::PinDir,
    journal: &Journal,
    steps: &[(String, MapStep)],
) -> Result<Vec<String>> {
    match mech::stage(pins, journal, steps) {
        Ok(lines) => Ok(lines),
        Err(e) => {
            let undo = journal::undo_all(pins, &journal.pending()?)
                .and_then(|()| mech::remove_staging(pins))
                .and_then(|()| journal.clear());
            match undo {
                Ok(()) => Err(anyhow!("{e:#}; nothing changed")),
                Err(u) => Err(anyhow!(
                    "{e:#}; removing the staged objects failed too ({u:#}): run `ztredir upgrade` again"
                )),
            }
        }
    }
}

fn dry_run_lines(
    pins: &crate::dataplane::pins::PinDir,
    steps: &[(String, MapStep)],
) -> Vec<String> {
    let mut lines: Vec<String> = steps
        .iter()
        .map(|(name, step)| match step {
            MapStep::Reuse => format!("= map {name}: reused"),
            MapStep::Migrate => format!("~ map {name}: migrate (entries copied and converted)"),
            MapStep::Create => format!("+ map {name}: create"),
        })
        .collect();
    for p in Prog::ALL {
        let id = crate::dataplane::bpf::prog_fd(pins, p)
            .ok()
            .and_then(|fd| crate::dataplane::attach::prog_id(std::os::fd::AsFd::as_fd(&fd)).ok());
        let id = id.map_or("none".into(), |i| i.to_string());
        lines.push(format!(
            "~ program {}: id {id} -> new, replaced in place",
            p.name()
        ));
    }
    lines
}
