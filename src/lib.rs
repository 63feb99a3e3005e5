// SPDX-License-Identifier: Apache-2.0
//! ztredir: redirect a node's workload traffic into its transparent proxy
//! (Istio ambient's ztunnel) with tc-BPF programs.
//!
//! The CLI in main.rs only parses and prints; every operation lives here so
//! that tests can call it directly. The folders are the architecture:
//! `dataplane` (programs, pins, attachment, the pinned state and its
//! journal), `node` (ztunnel, workloads, exclusions, the node file), `plan`
//! (apply's plan and execution, uninstall) and `report` (status, doctor,
//! health, observability, output). Each says what it owns and may call.
//! `zds` is the server side of ztunnel's in-pod protocol; it depends on
//! nothing else here.

pub mod cli;
pub mod ctx;
pub mod dataplane;
pub mod error;
pub mod failpoint;
pub mod node;
pub mod plan;
pub mod report;
pub mod zds;
