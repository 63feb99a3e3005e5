// SPDX-License-Identifier: Apache-2.0
//! ZDS, the unix-socket protocol by which ztunnel learns the workloads it serves in-pod: the
//! server (istio-cni's role, here ztredir's) hands ztunnel each workload's identity with its
//! network namespace as an fd, and ztunnel opens its listeners inside that namespace.
//!
//! `proto` is the wire format, `server` the server: it keeps every connected ztunnel in step
//! with a list of workloads it polls from a caller-given source (the CLI reads the pinned
//! in-pod workloads). It depends on nothing else in ztredir, so that the dataplane, the CLI and
//! the tests' ztunnel stand-in can all use it.

pub mod proto;
mod server;

use std::path::PathBuf;

pub use server::{
    run, serve, serve_full, serve_with_log, Added, Log, Source, DEFAULT_SOCKET, SOCKET_ENV,
};

/// One workload as the server hands it to ztunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// The key of the workload on the protocol (a pod's uid in Kubernetes; ztunnel does not
    /// need it to match XDS).
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    /// Where the workload's netns is bind-mounted (`/run/netns/NAME`, `/proc/PID/ns/net`).
    pub netns: PathBuf,
    /// The netns' inode when the workload was recorded. The path is opened anew for every
    /// connection; if it names another namespace by then, the workload is not sent: handing
    /// ztunnel a wrong netns would put one workload's listeners, and identity, in another's.
    pub netns_inode: u64,
}
