// SPDX-License-Identifier: Apache-2.0
//! What the node is: ztunnel (`ztunnel set | clear`), workload interfaces
//! and addresses (`attach`, `detach`, `workload`), their exclusions, and
//! the node file's format. Reads the state, writes it through a
//! dataplane transaction (`state::Txn`); may call the dataplane.

pub mod exclude;
pub mod inpod;
pub mod nodefile;
pub mod workload;
pub mod ztunnel;
