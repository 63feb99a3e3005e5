// SPDX-License-Identifier: Apache-2.0
//! Network namespaces: naming them, and running code inside one.
//!
//! The CLI acts in the netns it was started in (the node's). Work that must
//! happen in ztunnel's netns (netlink sockets, TCX links by ifindex,
//! sysctls) runs on a short-lived thread that has `setns`'d into it, so the
//! rest of the process never changes namespace.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::sched::{setns, CloneFlags};

use crate::error::usage;

/// A network namespace opened by name (under /run/netns) or by path.
#[derive(Debug)]
pub struct NetNs {
    pub path: PathBuf,
    pub file: File,
    pub inode: u64,
}

/// The path a netns spec names: `spec` itself if it contains a '/', else
/// `/run/netns/<spec>`.
pub fn path_of(spec: &str) -> PathBuf {
    if spec.contains('/') {
        PathBuf::from(spec)
    } else {
        Path::new("/run/netns").join(spec)
    }
}

impl NetNs {
    /// Opens `spec`: a path if it contains a '/', else a name under /run/netns.
    pub fn open(spec: &str) -> Result<NetNs> {
        let path = path_of(spec);
        let file = File::open(&path).map_err(|_| usage(format!("netns {spec} not found")))?;
        let meta = file
            .metadata()
            .with_context(|| format!("stat netns {}", path.display()))?;
        // nsfs files are the only ones setns accepts; catch a plain file now.
        if nix::sys::statfs::fstatfs(&file)
            .map(|s| s.filesystem_type().0 as u64 != 0x6e736673)
            .unwrap_or(true)
        {
            return Err(usage(format!("netns {spec} is not a network namespace")));
        }
        Ok(NetNs {
            path,
            file,
            inode: meta.ino(),
        })
    }

    /// Runs `f` on a thread that has entered this netns and returns its result.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce() -> Result<T> + Send,
    {
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("enter netns {}", self.path.display()))?;
                f()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in netns {} panicked", self.path.display()))?
        })
    }
}

/// Reads a sysctl of the calling thread's netns (/proc/sys/net follows the
/// thread). `key` uses '/' separators, since interface names may hold dots.
pub fn sysctl_get(key: &str) -> Result<String> {
    Ok(std::fs::read_to_string(Path::new("/proc/sys").join(key))
        .with_context(|| format!("read sysctl {}", key.replace('/', ".")))?
        .trim()
        .to_string())
}

/// Writes a sysctl of the calling thread's netns.
pub fn sysctl_set(key: &str, value: &str) -> Result<()> {
    std::fs::write(Path::new("/proc/sys").join(key), value)
        .with_context(|| format!("set sysctl {}={value}", key.replace('/', ".")))
}
