//! Starting a supervisor for one job attempt: preparing the run dir and spawning
//! `EXE __supervise RUN_DIR` detached from the caller's session.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::atomic::{self, Durability};
use crate::error::ExecError;
use crate::records::{LAUNCH_FILE, LaunchSpec, OUTPUTS_DIR};
use crate::{fds, procfs, signals};

/// The hidden subcommand of the `ravel` binary that must call [`crate::supervise_main`].
pub const SUPERVISE_SUBCOMMAND: &str = "__supervise";

/// A started supervisor, identified by pid and start time (see [`crate::is_same_process`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launched {
    pub pid: i32,
    pub start_time: u64,
}

/// Writes `launch.json`, creates `outputs/`, spawns `exe __supervise RUN_DIR` in a new
/// session with stdio on /dev/null, and returns its pid and start time. The supervisor is
/// the caller's child: the caller reaps it (see [`crate::reap`]). Returns once the
/// supervisor has been exec'd; it does not wait for the job.
pub fn launch(exe: &Path, run_dir: &Path, spec: &LaunchSpec) -> Result<Launched, ExecError> {
    if spec.command.is_empty() {
        return Err(ExecError::EmptyCommand { run_dir: run_dir.to_owned() });
    }
    // The supervisor inherits our working directory, but callers may change theirs later
    // (and logs should name unambiguous paths).
    let run_dir = absolute(run_dir)?;
    let outputs = run_dir.join(OUTPUTS_DIR);
    fs::create_dir_all(&outputs).map_err(|source| ExecError::CreateDir { path: outputs, source })?;
    let launch_file = run_dir.join(LAUNCH_FILE);
    // Not fsynced: this is on the dispatch path, and after a machine crash the attempt is
    // lost anyway, whatever launch.json says.
    atomic::write_json(&launch_file, spec, Durability::Unsynced)
        .map_err(|source| ExecError::WriteFile { path: launch_file, source })?;

    let watched = signals::watched();
    let mut command = Command::new(exe);
    command.arg(SUPERVISE_SUBCOMMAND).arg(&run_dir).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: the closure only makes async-signal-safe calls (setsid, close_range,
    // sigprocmask), as
    // required between fork and exec in a possibly multi-threaded caller.
    unsafe {
        command.pre_exec(move || {
            // Own session: the supervisor survives the daemon's terminal, session and
            // process group being signalled.
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            fds::cloexec_above_stdio()?;
            // The mask survives exec: a cancel arriving before the supervisor is ready stays
            // pending instead of killing it (see `signals`).
            signals::block(&watched)
        });
    }
    let child = command.spawn().map_err(|source| ExecError::SpawnSupervisor { exe: exe.to_owned(), source })?;
    let pid = child.id() as i32;
    // Not yet reaped, so /proc/PID exists even if the supervisor already exited.
    let start_time = procfs::process_start_time(pid).ok_or(ExecError::StartTime { pid })?;
    Ok(Launched { pid, start_time })
}

fn absolute(path: &Path) -> Result<PathBuf, ExecError> {
    std::path::absolute(path).map_err(|source| ExecError::CreateDir { path: path.to_owned(), source })
}
