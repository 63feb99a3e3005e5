// SPDX-License-Identifier: Apache-2.0
//! What ztredir shows: `status` and `doctor` over one health model
//! (`health`), the connection table, counters and trace (`observe`), and
//! the printers (`output`). Reads only, through `Ctx::read`, except the
//! counter resets and the trace flag. May call dataplane and node.

pub mod doctor;
pub mod health;
pub mod observe;
pub mod output;
pub mod status;
