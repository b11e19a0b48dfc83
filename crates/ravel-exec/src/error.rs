//! The crate's error type. Every message names the path, program or pid it is about, because
//! these errors end up in `exit.json` and in the daemon's log, far from any context.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("empty command for run dir {run_dir}")]
    EmptyCommand { run_dir: PathBuf },

    #[error("cannot create directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },

    #[error("cannot write {path}: {source}")]
    WriteFile { path: PathBuf, source: io::Error },

    #[error("cannot read {path}: {source}")]
    ReadFile { path: PathBuf, source: io::Error },

    #[error("malformed {path}: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },

    #[error("cannot start supervisor `{exe}`: {source}")]
    SpawnSupervisor { exe: PathBuf, source: io::Error },

    #[error("cannot read the start time of process {pid} from /proc/{pid}/stat")]
    StartTime { pid: i32 },

    #[error("cannot signal process {pid}: {source}")]
    Signal { pid: i32, source: io::Error },

    #[error("working directory {cwd} does not exist")]
    MissingCwd { cwd: String },

    #[error("working directory {cwd} is not usable: {source}")]
    BadCwd { cwd: String, source: io::Error },

    #[error("cannot open job log {path}: {source}")]
    OpenLog { path: PathBuf, source: io::Error },

    #[error("cannot run `{program}`: {source}")]
    CannotRun { program: String, source: io::Error },

    #[error("cannot enter working directory {cwd} as {user}: {source}")]
    EnterCwd { cwd: String, user: String, source: io::Error },

    #[error("cannot run as {user}: {reason}")]
    RunAs { user: String, reason: String },

    #[error("{0}")]
    Cgroup(String),
}

impl ExecError {
    /// The exit code a job that failed to start is reported with, following the shell's
    /// convention (127: not found, 126: found but could not be executed). Failures that are
    /// not about the program itself (working directory, logs) have no exit code.
    pub(crate) fn job_exit_code(&self) -> Option<i32> {
        match self {
            ExecError::CannotRun { source, .. } => match source.kind() {
                io::ErrorKind::NotFound => Some(127),
                _ if source.raw_os_error().is_some() => Some(126),
                _ => None,
            },
            _ => None,
        }
    }
}
