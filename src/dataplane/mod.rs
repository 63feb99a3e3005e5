// SPDX-License-Identifier: Apache-2.0
//! The dataplane: the BPF object (`skel`), loading and pinning it (`bpf`,
//! `pins`), attaching programs to hooks (`attach`, `hooks`), the kernel
//! interfaces around them (`netlink`, `netns`), and the pinned state with
//! the journal every change to it goes through (`state`, `journal`).
//! It calls nothing above it, except the connection table's undo
//! (report::observe) and the stale trace flag a change clears.

pub mod attach;
pub mod bpf;
pub mod hooks;
pub mod journal;
pub mod netlink;
pub mod netns;
pub mod pins;
pub mod schema;
pub mod skel;
pub mod state;
pub mod upgrade;
