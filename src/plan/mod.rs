// SPDX-License-Identifier: Apache-2.0
//! Changes as plans: `apply` reads what the node has, plans the changes as
//! data (pure, unit-tested), and carries them out in one transaction;
//! `uninstall` takes everything down, all or nothing. May call node and
//! dataplane.

pub mod apply;
pub mod uninstall;
pub mod upgrade;
