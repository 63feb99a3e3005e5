// SPDX-License-Identifier: Apache-2.0
//! All integration tests, in one binary with shared helpers. They need root.
mod bench;
mod cli;
mod declarative;
mod foreign;
mod hardening;
mod node;
mod observe;
mod redirect;
mod topology;
mod util;
