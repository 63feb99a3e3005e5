// SPDX-License-Identifier: Apache-2.0
//! The pin directory: where ztredir's maps, programs and links live in bpffs
//! so that they outlive the CLI, and the lock that serializes changes.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use nix::mount::{mount, MsFlags};
use nix::sys::statfs::statfs;

const BPF_FS_MAGIC: i64 = 0xcafe4a11;
const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
/// Every directory ztredir creates: whoever can write to the pin
/// directory can unpin the links, which detaches capture.
pub const DIR_MODE: u32 = 0o700;

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

    /// Why someone other than root could change the pinned state, if so:
    /// the pin directory or one of its subdirectories is not root's or is
    /// writable by group or others, or one of the directories above it (up
    /// to /) would let someone else replace it. A directory above may be
    /// world-writable with the sticky bit (/tmp, a bpffs mounted without a
    /// mode): others can then add names beside the pin directory but not
    /// remove or rename root's, and a pin directory they made is refused.
    pub fn unsafe_reason(&self) -> Option<String> {
        let mut own = vec![self.root.clone()];
        own.extend([self.maps(), self.progs(), self.links(), self.trace_dir()]);
        for dir in own.iter().filter(|d| d.exists()) {
            if let Some(why) = dir_problem(dir, false) {
                return Some(format!("pin dir {}: {why}", dir.display()));
            }
        }
        let existing = existing_ancestor(&self.root);
        let canon = std::fs::canonicalize(&existing).unwrap_or(existing.clone());
        let first = if existing == self.root { 1 } else { 0 };
        for dir in canon.ancestors().skip(first) {
            if let Some(why) = dir_problem(dir, true) {
                return Some(format!(
                    "{}, above pin dir {}: {why}",
                    dir.display(),
                    self.root.display()
                ));
            }
        }
        None
    }

    /// Where `trace` records who traces.
    pub fn trace_dir(&self) -> PathBuf {
        self.root.join("trace")
    }

    /// Creates the pin directory for a change, mounting bpffs at
    /// /sys/fs/bpf first when the directory lives there and nothing is
    /// mounted (fresh hosts), and takes the exclusive lock. A pin directory
    /// that others could change is refused before anything is made.
    pub fn prepare_for_change(&self) -> Result<PinLock> {
        if let Some(why) = self.unsafe_reason() {
            return Err(crate::error::usage(format!(
                "{why}: refusing it (only root may be able to change the pins)"
            )));
        }
        let parent = existing_ancestor(&self.root);
        if !is_bpffs(&parent) {
            if self.root.starts_with(DEFAULT_BPFFS) && !is_bpffs(Path::new(DEFAULT_BPFFS)) {
                std::fs::create_dir_all(DEFAULT_BPFFS).context("create /sys/fs/bpf")?;
                // Without a mode, bpffs's root is 1777.
                mount(
                    Some("bpf"),
                    DEFAULT_BPFFS,
                    Some("bpf"),
                    MsFlags::empty(),
                    Some("mode=0700"),
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
            create_dirs(&dir)?;
        }
        // Someone may have slipped a directory of their own in meanwhile.
        if let Some(why) = self.unsafe_reason() {
            return Err(crate::error::usage(format!("{why}: refusing it")));
        }
        self.lock(FlockArg::LockExclusive)
    }

    /// The directory the pin directory is or would be made in, and whether
    /// it is on bpffs.
    pub fn bpffs_base(&self) -> (PathBuf, bool) {
        let dir = existing_ancestor(&self.root);
        let on = is_bpffs(&dir);
        (dir, on)
    }

    /// Takes a shared lock for reading, or None when nothing is pinned yet.
    /// A pin directory that is not on a mounted bpffs is an error, not an
    /// empty node: after its bpffs is unmounted every TCX link is gone and
    /// traffic flows uncaptured, which must not read as "nothing attached".
    pub fn prepare_for_read(&self) -> Result<Option<PinLock>> {
        if !self.exists() {
            let (dir, on_bpffs) = self.bpffs_base();
            if !on_bpffs {
                bail!(
                    "pin dir {} is not on a mounted bpffs ({} is not bpffs): anything pinned there is gone, with every TCX link; mount bpffs there (mount -t bpf bpf DIR) and attach again",
                    self.root.display(),
                    dir.display()
                );
            }
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

/// Another pin directory, on any bpffs mounted here, that holds program
/// `prog_id` (pinned, or behind one of its links): which ztredir instance
/// runs it. `except` is the caller's own.
pub fn find_pin_dir_of(prog_id: u32, except: &Path) -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let roots = mounts.lines().filter_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let point = left.split(' ').nth(4)?;
        (right.split_whitespace().next()? == "bpf").then(|| unescape(point))
    });
    for root in roots {
        let mut stack = vec![(PathBuf::from(root), 0)];
        while let Some((dir, depth)) = stack.pop() {
            if dir.as_path() != except && holds(&PinDir::new(&dir), prog_id) {
                return Some(dir);
            }
            if depth >= 4 {
                continue;
            }
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((e.path(), depth + 1));
                }
            }
        }
    }
    None
}

fn holds(dir: &PinDir, prog_id: u32) -> bool {
    dir.progs().is_dir() && crate::dataplane::bpf::own_ids(dir).progs.contains(&prog_id)
}

/// A mountinfo path: space, tab, newline and backslash come octal-escaped.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Creates `dir` and its missing parents with mode DIR_MODE whatever the
/// umask; directories already there are left as they are.
pub fn create_dirs(dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut cur = dir;
    while !cur.exists() {
        missing.push(cur);
        match cur.parent() {
            Some(p) => cur = p,
            None => break,
        }
    }
    for d in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(DIR_MODE).create(d) {
            Ok(()) => std::fs::set_permissions(d, std::fs::Permissions::from_mode(DIR_MODE))
                .with_context(|| format!("chmod {}", d.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("create {}", d.display())),
        }
    }
    Ok(())
}

/// What lets someone other than root change `dir`'s entries, if anything.
fn dir_problem(dir: &Path, sticky_ok: bool) -> Option<String> {
    let md = match std::fs::metadata(dir) {
        Ok(md) => md,
        Err(e) => return Some(format!("cannot inspect it: {e}")),
    };
    if !md.is_dir() {
        return Some("not a directory".into());
    }
    let mode = md.mode() & 0o7777;
    if md.uid() != 0 {
        return Some(format!("owned by uid {}, not root", md.uid()));
    }
    let sticky = mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !(sticky_ok && sticky) {
        return Some(format!("writable by group or others (mode {mode:04o})"));
    }
    None
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
