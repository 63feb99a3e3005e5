// SPDX-License-Identifier: Apache-2.0
//! All integration tests, in one binary with shared helpers. They need root.
mod bench;
mod cli;
mod crash;
mod datapath;
mod declarative;
mod foreign;
#[path = "../support/frame.rs"]
mod frame;
mod hardening;
mod inpod;
mod linkage;
mod node;
mod observe;
mod redirect;
mod security;
#[path = "../../testbed/mod.rs"]
mod testbed;
mod topology;
mod upgrade;
mod zds;
