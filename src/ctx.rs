// SPDX-License-Identifier: Apache-2.0
//! What every operation needs: the pin directory, the requested attach
//! mode, and a netlink connection in the node's netns.

use anyhow::Result;

use crate::dataplane::attach::Mode;
use crate::dataplane::netlink::Netlink;
use crate::dataplane::pins::PinDir;

pub struct Ctx {
    pub pins: PinDir,
    /// None: TCX where the kernel has it, classic tc otherwise.
    pub mode: Option<Mode>,
    pub nl: Netlink,
    /// Attach even where another ztredir instance's programs run.
    pub force: bool,
}

impl Ctx {
    pub fn new(pins: PinDir, mode: Option<Mode>) -> Result<Ctx> {
        Ok(Ctx {
            pins,
            mode,
            nl: Netlink::new()?,
            force: false,
        })
    }
}

/// What a changing command did, for the user and for scripts.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Outcome {
    pub changed: bool,
    pub messages: Vec<String>,
}

impl Outcome {
    pub fn unchanged(msg: impl Into<String>) -> Outcome {
        Outcome {
            changed: false,
            messages: vec![msg.into()],
        }
    }
    pub fn changed(msg: impl Into<String>) -> Outcome {
        Outcome {
            changed: true,
            messages: vec![msg.into()],
        }
    }
}
