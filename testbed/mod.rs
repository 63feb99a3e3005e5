// SPDX-License-Identifier: Apache-2.0
//! The testbed: one implementation of the node topology the integration tests, the benchmarks,
//! `scripts/demo.sh` and `bench/e2e.sh` run in (`topo`), and the traffic helpers that test it
//! (`traffic`).
//!
//! A module tree included by path (`#[path = ".../testbed/mod.rs"]`) rather than a crate of its
//! own: the `testbed` binary, the integration tests and the dataplane benchmark all compile it
//! with ztredir's own dependencies, and the binary stays a target of the ztredir package, so
//! the tests get it (and the stand-in) from cargo's test build through `CARGO_BIN_EXE_*`.
// Each user takes a different subset of these helpers (and of the re-exports).
#![allow(dead_code, unused_imports)]

mod topo;
mod traffic;

pub use topo::*;
pub use traffic::*;
