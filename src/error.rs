// SPDX-License-Identifier: Apache-2.0
//! Exit codes and the error that means "bad usage or input".

use std::fmt;

/// The process exit codes, documented in ztredir(8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    /// Failed at runtime: a kernel or netlink call, a missing privilege.
    Failed = 1,
    /// Bad usage or input: nothing was changed.
    Usage = 2,
}

/// Bad input from the user: an unknown interface, a malformed address, a
/// conflict. Reported as one line, exit code 2, and raised before any change.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

/// A failure already reported on stdout (doctor's failed checks): exit 1
/// and print nothing more.
#[derive(Debug)]
pub struct Silent;

impl fmt::Display for Silent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("failed")
    }
}

impl std::error::Error for Silent {}

/// The exit code an error maps to.
pub fn exit_code(err: &anyhow::Error) -> Exit {
    if err.chain().any(|e| e.is::<UsageError>()) {
        Exit::Usage
    } else {
        Exit::Failed
    }
}
