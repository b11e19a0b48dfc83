//! Containing a job in its own cgroup: v2 where the host has it, v1 `memory` + `pids` otherwise.
//! (Interface only; the implementation lands with the supervisor's use of it.)

use std::path::PathBuf;

/// What this host lets us do with cgroups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupSupport {
    /// A writable cgroup v2 hierarchy; `root` is where Ravel's cgroups go (e.g. `/sys/fs/cgroup/ravel`).
    V2 { root: PathBuf },
    /// Writable cgroup v1 hierarchies: `memory` (required) and `pids` (if mounted), each the
    /// directory where Ravel's cgroups go (e.g. `/sys/fs/cgroup/memory/ravel`).
    V1 { memory: PathBuf, pids: Option<PathBuf> },
    /// No writable cgroup hierarchy; the reason, in one line.
    Unavailable(String),
}

impl CgroupSupport {
    pub fn available(&self) -> bool {
        !matches!(self, CgroupSupport::Unavailable(_))
    }
}

/// Finds out, once, whether jobs can get their own cgroups here.
pub fn detect() -> CgroupSupport {
    CgroupSupport::Unavailable("not implemented yet".into())
}

/// Kills whatever is left in the attempt's cgroup `name` and removes it (for a supervisor that
/// died before cleaning up). Best effort.
pub fn remove_leftover(_name: &str) {}
