// SPDX-License-Identifier: Apache-2.0
//! ztredir: redirect a node's workload traffic into its transparent proxy
//! (Istio ambient's ztunnel) with tc-BPF programs.
//!
//! The CLI in main.rs only parses and prints; every operation lives here so
//! that tests can call it directly.

pub mod apply;
pub mod attach;
pub mod bpf;
pub mod cli;
pub mod ctx;
pub mod doctor;
pub mod error;
pub mod exclude;
pub mod failpoint;
pub mod health;
pub mod iface;
pub mod journal;
pub mod netlink;
pub mod netns;
pub mod nodefile;
pub mod observe;
pub mod output;
pub mod pins;
pub mod skel;
pub mod state;
pub mod status;
pub mod uninstall;
pub mod workload;
pub mod ztunnel;
