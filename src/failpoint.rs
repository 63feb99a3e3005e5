// SPDX-License-Identifier: Apache-2.0
//! Failure injection for tests, from the environment:
//! `ZTREDIR_FAILPOINT=NAME` makes the failpoint NAME fail (as if the kernel
//! had refused a call), and `ZTREDIR_FAILPOINT=wait:NAME:PATH` makes it wait
//! until PATH exists (at most 30 s), so a test can change the system at
//! that moment, and `ZTREDIR_FAILPOINT=kill:NAME` sends the process SIGKILL
//! there, as a node's OOM killer or a unit's timeout would. Without the
//! variable every failpoint is one lookup.

use anyhow::{anyhow, Result};

/// Fails when the environment names this failpoint; waits when asked to.
pub fn hit(name: &str) -> Result<()> {
    let Ok(fp) = std::env::var("ZTREDIR_FAILPOINT") else {
        return Ok(());
    };
    if fp == name {
        return Err(anyhow!("injected failure at {name} (ZTREDIR_FAILPOINT)"));
    }
    if fp.strip_prefix("kill:") == Some(name) {
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
    }
    if let Some(path) = fp
        .strip_prefix("wait:")
        .and_then(|rest| rest.strip_prefix(name))
        .and_then(|rest| rest.strip_prefix(':'))
    {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !std::path::Path::new(path).exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    Ok(())
}
