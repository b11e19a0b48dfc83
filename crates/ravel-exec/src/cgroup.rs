//! Containing a job in its own cgroup: v2 where the host has it, v1 `memory` + `pids` otherwise.
//!
//! Ravel's cgroups live under a `ravel` directory in each hierarchy (`/sys/fs/cgroup/ravel` on
//! v2; `/sys/fs/cgroup/memory/ravel` and `/sys/fs/cgroup/pids/ravel` on v1), one per attempt
//! (`<job>.<attempt>`). The supervisor creates the attempt's cgroup and sets its limits before
//! it spawns the job; the job's process moves itself in (writing `0` to `cgroup.procs`, which
//! means "the writer") before it runs its first instruction, so everything it starts is inside.
//! The supervisor itself stays outside. When the job has ended, whatever is left in the cgroup
//! is killed, the OOM counter is read and the cgroup removed.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::records::CgroupSpec;

const V2_ROOT: &str = "/sys/fs/cgroup";

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

    /// The attempt cgroup's directory in each hierarchy.
    fn dirs(&self, name: &str) -> Vec<PathBuf> {
        match self {
            CgroupSupport::V2 { root } => vec![root.join(name)],
            CgroupSupport::V1 { memory, pids } => {
                std::iter::once(memory).chain(pids.as_ref()).map(|r| r.join(name)).collect()
            }
            CgroupSupport::Unavailable(_) => vec![],
        }
    }
}

/// Finds out whether jobs can get their own cgroups here, creating Ravel's directories. Cheap
/// and idempotent: the daemon calls it at start, each supervisor again.
pub fn detect() -> CgroupSupport {
    match try_v2() {
        Ok(Some(s)) => return s,
        Ok(None) => {}
        Err(why) => return CgroupSupport::Unavailable(why),
    }
    try_v1().unwrap_or_else(CgroupSupport::Unavailable)
}

fn try_v2() -> Result<Option<CgroupSupport>, String> {
    let root = Path::new(V2_ROOT);
    let Ok(controllers) = fs::read_to_string(root.join("cgroup.controllers")) else {
        return Ok(None);
    };
    if !controllers.split_whitespace().any(|c| c == "memory") {
        return Err("cgroup v2 without the memory controller".into());
    }
    let ours = root.join("ravel");
    mkdir(&ours).map_err(|e| format!("cannot create {}: {e}", ours.display()))?;
    // Children of `ravel` get the controllers only if its parent hands them down to it and it
    // hands them down in turn.
    for dir in [root, ours.as_path()] {
        for c in ["+memory", "+pids"] {
            let _ = fs::write(dir.join("cgroup.subtree_control"), c);
        }
    }
    let enabled = fs::read_to_string(ours.join("cgroup.subtree_control")).unwrap_or_default();
    if !enabled.split_whitespace().any(|c| c == "memory") {
        return Err(format!("cannot enable the memory controller for {}", ours.display()));
    }
    Ok(Some(CgroupSupport::V2 { root: ours }))
}

fn try_v1() -> Result<CgroupSupport, String> {
    let mounts = fs::read_to_string("/proc/self/mounts").map_err(|e| format!("cannot read /proc/self/mounts: {e}"))?;
    let mount_of = |controller: &str| {
        mounts.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 3 && f[2] == "cgroup" && f[3].split(',').any(|o| o == controller)).then(|| PathBuf::from(f[1]))
        })
    };
    let memory = mount_of("memory").ok_or("no cgroup v2, and no cgroup v1 memory controller mounted")?.join("ravel");
    mkdir(&memory).map_err(|e| format!("cannot create {}: {e}", memory.display()))?;
    let pids = mount_of("pids").map(|m| m.join("ravel")).filter(|p| mkdir(p).is_ok());
    Ok(CgroupSupport::V1 { memory, pids })
}

fn mkdir(dir: &Path) -> std::io::Result<()> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        // Made by someone else (another daemon, as root): usable only if we may create in it.
        _ if !writable(dir) => Err(std::io::Error::from_raw_os_error(libc::EACCES)),
        _ => Ok(()),
    }
}

fn writable(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    // SAFETY: access on a NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// An attempt's cgroup, created and limited, with its `cgroup.procs` files open for the job's
/// process to write itself into.
pub(crate) struct Cgroup {
    support: CgroupSupport,
    dirs: Vec<PathBuf>,
    procs: Vec<File>,
}

impl Cgroup {
    /// Creates the cgroup `spec.name`, sets its limits and opens its `cgroup.procs`. On failure
    /// nothing is left behind: a half-made cgroup would only be found again by
    /// `remove_leftover`, and only if the supervisor died.
    pub(crate) fn create(spec: &CgroupSpec) -> Result<Cgroup, String> {
        let name = &spec.name;
        if !valid_name(name) {
            return Err(format!("bad cgroup name {name:?}: it must be one path component, not starting with `.`"));
        }
        let support = detect();
        if let CgroupSupport::Unavailable(why) = &support {
            return Err(format!("cannot contain the job in a cgroup: {why}"));
        }
        let mut cg = Cgroup { dirs: vec![], procs: vec![], support };
        match cg.set_up(spec) {
            Ok(()) => Ok(cg),
            Err(e) => {
                drop(cg.procs);
                remove(&cg.dirs);
                Err(e)
            }
        }
    }

    fn set_up(&mut self, spec: &CgroupSpec) -> Result<(), String> {
        for d in self.support.dirs(&spec.name) {
            mkdir(&d).map_err(|e| format!("cannot create cgroup {}: {e}", d.display()))?;
            self.dirs.push(d);
        }
        if let Some(bytes) = spec.memory_max_bytes {
            match &self.support {
                CgroupSupport::V2 { .. } => {
                    self.set(0, "memory.max", bytes)?;
                    // Not every host has swap accounting; without it there is nothing to cap.
                    let _ = self.set(0, "memory.swap.max", 0);
                }
                _ => {
                    self.set(0, "memory.limit_in_bytes", bytes)?;
                    // Else swap would let the job exceed its limit. memsw (memory + swap) must be
                    // at least the memory limit: set after it.
                    if self.dirs[0].join("memory.memsw.limit_in_bytes").exists() {
                        self.set(0, "memory.memsw.limit_in_bytes", bytes)?;
                    }
                }
            }
        }
        if let Some(n) = spec.pids_max {
            let i = match &self.support {
                // No pids hierarchy mounted: `detect` told the daemon (pids: None).
                CgroupSupport::V1 { pids: None, .. } => None,
                CgroupSupport::V1 { .. } => Some(1),
                _ => Some(0),
            };
            if let Some(i) = i {
                self.set(i, "pids.max", n)?;
            }
        }
        for d in &self.dirs {
            let path = d.join("cgroup.procs");
            let f = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            self.procs.push(f);
        }
        Ok(())
    }

    fn set(&self, dir: usize, file: &str, value: u64) -> Result<(), String> {
        let path = self.dirs[dir].join(file);
        fs::write(&path, value.to_string()).map_err(|e| format!("cannot set {} to {value}: {e}", path.display()))
    }

    /// Descriptors the job's process writes `0` to, to join (see `join`).
    pub(crate) fn procs_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(|f| f.as_raw_fd()).collect()
    }

    /// Kills what is left in the cgroup, removes it, and says whether the OOM killer struck.
    pub(crate) fn finish(self) -> bool {
        kill_all(&self.dirs, true);
        let oom = oom_kills(&self.support, &self.dirs) > 0;
        drop(self.procs);
        remove(&self.dirs);
        oom
    }
}

/// Moves the calling process into the cgroups whose `cgroup.procs` are open as `fds`. Async-
/// signal-safe (one write per fd), for the job's `pre_exec`.
pub(crate) fn join(fds: &[RawFd]) -> std::io::Result<()> {
    for &fd in fds {
        // SAFETY: writing one byte from a static buffer to an fd we opened.
        if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Kills whatever is left in the attempt's cgroup `name` and removes it (for a supervisor that
/// died before cleaning up). Best effort.
pub fn remove_leftover(name: &str) {
    if !valid_name(name) {
        return;
    }
    let support = detect();
    let dirs: Vec<PathBuf> = support.dirs(name).into_iter().filter(|d| d.exists()).collect();
    if dirs.is_empty() {
        return;
    }
    // Not our children (their supervisor is gone), and the caller (the daemon) reaps its own.
    kill_all(&dirs, false);
    remove(&dirs);
}

/// One path component inside Ravel's directory: nothing that could name another cgroup.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && !name.starts_with('.')
}

fn pids_in(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// SIGKILLs every process in the cgroups until they are empty (bounded: a process stuck in the
/// kernel may take longer, and then the cgroup is left for `remove_leftover`). With `reap`, the
/// caller is the supervisor, a subreaper that has become the parent of the job's orphans: it
/// reaps whatever child of its own has exited. Anyone else must not: `waitpid(-1)` would take
/// exit statuses that other parts of the daemon wait for.
fn kill_all(dirs: &[PathBuf], reap: bool) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let pids: Vec<i32> = dirs.iter().flat_map(|d| pids_in(d)).collect();
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        // cgroup v2 (Linux 5.14+) kills the whole cgroup at once, processes forked meanwhile
        // included; elsewhere the file is missing and the loop does it pid by pid.
        for d in dirs {
            let _ = OpenOptions::new().write(true).open(d.join("cgroup.kill")).and_then(|mut f| f.write_all(b"1"));
        }
        for pid in pids {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if reap {
            reap_any();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn reap_any() {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out pointer.
        if unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } <= 0 {
            return;
        }
    }
}

fn oom_kills(support: &CgroupSupport, dirs: &[PathBuf]) -> u64 {
    let file = match support {
        CgroupSupport::V2 { .. } => "memory.events",
        CgroupSupport::V1 { .. } => "memory.oom_control",
        CgroupSupport::Unavailable(_) => return 0,
    };
    let Some(dir) = dirs.first() else { return 0 };
    fs::read_to_string(dir.join(file))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        .unwrap_or(0)
}

fn remove(dirs: &[PathBuf]) {
    for d in dirs {
        // A just-killed process may linger a moment as it exits: retry briefly.
        for _ in 0..50 {
            if fs::remove_dir(d).is_ok() || !d.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        // SAFETY: geteuid cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn names_that_could_escape_are_refused() {
        for bad in ["", "../x", "a/b", ".hidden"] {
            let spec = CgroupSpec { name: bad.into(), memory_max_bytes: None, pids_max: None };
            assert!(Cgroup::create(&spec).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_cgroup_is_created_limited_and_removed() {
        if !root() || !detect().available() {
            return;
        }
        let name = format!("unit-{}", std::process::id());
        let spec = CgroupSpec { name: name.clone(), memory_max_bytes: Some(64 << 20), pids_max: Some(100) };
        let cg = Cgroup::create(&spec).unwrap();
        let dirs = cg.dirs.clone();
        assert!(dirs.iter().all(|d| d.is_dir()));
        let limit = match &cg.support {
            CgroupSupport::V2 { .. } => fs::read_to_string(dirs[0].join("memory.max")).unwrap(),
            _ => fs::read_to_string(dirs[0].join("memory.limit_in_bytes")).unwrap(),
        };
        assert_eq!(limit.trim(), (64u64 << 20).to_string());
        assert!(!cg.finish());
        assert!(dirs.iter().all(|d| !d.exists()), "removed");
    }
}
