//! Starting a supervisor for one job attempt: preparing the run dir and spawning
//! `EXE __supervise RUN_DIR -` detached from the caller's session.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::error::ExecError;
use crate::records::{LaunchSpec, OUTPUTS_DIR};
use crate::{procfs, signals, spawn};

/// The hidden subcommand of the `ravel` binary that must call [`crate::supervise_main`].
pub const SUPERVISE_SUBCOMMAND: &str = "__supervise";

/// A started supervisor, identified by pid and start time (see [`crate::is_same_process`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launched {
    pub pid: i32,
    pub start_time: u64,
}

/// Creates `outputs/`, spawns `exe __supervise RUN_DIR -` in a new session with stdio on
/// /dev/null but for stdin, a pipe that carries the launch spec, and returns the supervisor's
/// pid and start time. The supervisor is the caller's child: the caller reaps it (see
/// [`crate::reap`]). Returns once the supervisor has been exec'd; it does not wait for the job.
///
/// `posix_spawn` (vfork-style in glibc) rather than fork: the daemon is multi-threaded, and
/// fork would copy its page tables and shoot down TLBs on every launch. The spec goes through
/// a pipe rather than a file to keep inode creation (costly on ext4) off the dispatch path.
pub fn launch(exe: &Path, run_dir: &Path, spec: &LaunchSpec) -> Result<Launched, ExecError> {
    if spec.command.is_empty() {
        return Err(ExecError::EmptyCommand { run_dir: run_dir.to_owned() });
    }
    // The supervisor inherits our working directory, but callers may change theirs later
    // (and logs should name unambiguous paths).
    let run_dir = absolute(run_dir)?;
    let outputs = run_dir.join(OUTPUTS_DIR);
    fs::create_dir_all(&outputs).map_err(|source| ExecError::CreateDir { path: outputs.clone(), source })?;
    if let Some(user) = &spec.run_as {
        // The attempt's dir and its outputs are the job's user's alone. Done through fds opened
        // without following links: the dirs were just made by us, under root's own dirs.
        for dir in [&run_dir, &outputs] {
            give_dir(dir, user.uid, user.gid).map_err(|source| ExecError::CreateDir { path: dir.clone(), source })?;
        }
    }
    let json = serde_json::to_vec(spec)
        .map_err(|e| ExecError::SpawnSupervisor { exe: exe.to_owned(), source: std::io::Error::other(e) })?;
    let spawn_err = |source: std::io::Error| ExecError::SpawnSupervisor { exe: exe.to_owned(), source };
    let (read_end, write_end) = pipe().map_err(spawn_err)?;
    let pid = spawn::spawn_detached(
        exe,
        &[OsStr::new(SUPERVISE_SUBCOMMAND), run_dir.as_os_str(), OsStr::new(SPEC_FROM_STDIN)],
        read_end.as_raw_fd(),
        &signals::watched(),
    )
    .map_err(spawn_err)?;
    drop(read_end);
    // A supervisor that died before reading leaves EPIPE here; its end is noticed by the
    // caller's watch like any other.
    let _ = File::from(write_end).write_all(&json);
    // Not yet reaped, so /proc/PID exists even if the supervisor already exited.
    let start_time = procfs::process_start_time(pid).ok_or(ExecError::StartTime { pid })?;
    Ok(Launched { pid, start_time })
}

/// Makes directory `dir` owned by `uid:gid`, mode 0700, without following a symlink.
fn give_dir(dir: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)?;
    std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
    f.set_permissions(fs::Permissions::from_mode(0o700))
}

/// The argument after RUN_DIR that tells the supervisor to read its spec from stdin.
pub const SPEC_FROM_STDIN: &str = "-";

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds on success; we take ownership of both.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn absolute(path: &Path) -> Result<PathBuf, ExecError> {
    std::path::absolute(path).map_err(|source| ExecError::CreateDir { path: path.to_owned(), source })
}
