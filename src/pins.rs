// SPDX-License-Identifier: Apache-2.0
//! The pin directory: where ztredir's maps, programs and links live in bpffs
//! so that they outlive the CLI, and the lock that serializes changes.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use nix::mount::{mount, MsFlags};
use nix::sys::statfs::statfs;

const BPF_FS_MAGIC: i64 = 0xcafe4a11;
const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

#[derive(Debug, Clone)]
pub struct PinDir {
    pub root: PathBuf,
}

/// Held while an invocation reads or changes the pinned state.
pub struct PinLock {
    _lock: Flock<File>,
}

impl PinDir {
    pub fn new(root: impl Into<PathBuf>) -> PinDir {
        PinDir { root: root.into() }
    }

    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }
    pub fn progs(&self) -> PathBuf {
        self.root.join("progs")
    }
    pub fn prog(&self, name: &str) -> PathBuf {
        self.progs().join(name)
    }
    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }
    pub fn link(&self, name: &str) -> PathBuf {
        self.links().join(name)
    }

    /// True once something has been pinned here.
    pub fn exists(&self) -> bool {
        self.map("ztr_config").exists()
    }

    /// Creates the pin directory for a change, mounting bpffs at
    /// /sys/fs/bpf first when the directory lives there and nothing is
    /// mounted (fresh hosts), and takes the exclusive lock.
    pub fn prepare_for_change(&self) -> Result<PinLock> {
        let parent = existing_ancestor(&self.root);
        if !is_bpffs(&parent) {
            if self.root.starts_with(DEFAULT_BPFFS) && !is_bpffs(Path::new(DEFAULT_BPFFS)) {
                std::fs::create_dir_all(DEFAULT_BPFFS).context("create /sys/fs/bpf")?;
                mount(
                    Some("bpf"),
                    DEFAULT_BPFFS,
                    Some("bpf"),
                    MsFlags::empty(),
                    None::<&str>,
                )
                .context("mount bpffs at /sys/fs/bpf")?;
            } else {
                bail!(
                    "pin dir {} is not on a bpf filesystem (mount -t bpf bpf DIR)",
                    self.root.display()
                );
            }
        }
        for dir in [self.root.clone(), self.maps(), self.progs(), self.links()] {
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        }
        self.lock(FlockArg::LockExclusive)
    }

    /// Takes a shared lock for reading, or None when nothing is pinned yet.
    pub fn prepare_for_read(&self) -> Result<Option<PinLock>> {
        if !self.exists() {
            return Ok(None);
        }
        self.lock(FlockArg::LockShared).map(Some)
    }

    fn lock(&self, how: FlockArg) -> Result<PinLock> {
        let f = File::open(&self.root).with_context(|| format!("open {}", self.root.display()))?;
        let lock = Flock::lock(f, how)
            .map_err(|(_, e)| e)
            .with_context(|| format!("lock {}", self.root.display()))?;
        Ok(PinLock { _lock: lock })
    }
}

fn existing_ancestor(p: &Path) -> PathBuf {
    let mut cur = p.to_path_buf();
    while !cur.exists() {
        if !cur.pop() {
            return PathBuf::from("/");
        }
    }
    cur
}

fn is_bpffs(p: &Path) -> bool {
    statfs(p)
        .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}
