//! Spawning the job: its program, arguments, environment, working directory, logs, process
//! group and signal state, and the mapping of spawn failures to exit records.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::ExecError;
use crate::records::{LaunchSpec, STDERR_FILE, STDOUT_FILE};
use crate::{fds, resolve, signals};

/// Starts the job described by `spec` as the leader of a new process group (pgid = its pid)
/// and returns its pid. Its stdout/stderr are the run dir's log files themselves, not pipes,
/// so the job keeps running (and logging) if the supervisor dies.
pub(crate) fn spawn(spec: &LaunchSpec, run_dir: &Path) -> Result<i32, ExecError> {
    let Some(program) = spec.command.first() else {
        return Err(ExecError::EmptyCommand { run_dir: run_dir.to_owned() });
    };
    let cwd = Path::new(&spec.cwd);
    check_cwd(&spec.cwd)?;
    let resolved = resolve::find_program(program, &spec.env, cwd)
        .map_err(|source| ExecError::CannotRun { program: program.clone(), source })?;
    let stdout = open_log(&run_dir.join(STDOUT_FILE))?;
    let stderr = open_log(&run_dir.join(STDERR_FILE))?;

    let mut command = Command::new(&resolved);
    command
        .arg0(program)
        .args(&spec.command[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);
    let mut reset_signals = signals::reset_for_job();
    // SAFETY: the closure only makes async-signal-safe calls (signal, sigprocmask,
    // close_range).
    unsafe {
        command.pre_exec(move || {
            reset_signals()?;
            fds::cloexec_above_stdio()
        });
    }
    // The child is reaped with waitpid by pid, not through `Child`; dropping it neither waits
    // nor kills.
    command.spawn().map(|child| child.id() as i32).map_err(|source| {
        // The directory was checked above; if chdir failed anyway it vanished meanwhile, and
        // std's bare ENOENT would wrongly blame the program.
        check_cwd(&spec.cwd).err().unwrap_or_else(|| ExecError::CannotRun { program: program.clone(), source })
    })
}

fn check_cwd(cwd: &str) -> Result<(), ExecError> {
    match fs::metadata(cwd) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(ExecError::BadCwd { cwd: cwd.to_owned(), source: io::Error::from_raw_os_error(libc::ENOTDIR) }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ExecError::MissingCwd { cwd: cwd.to_owned() }),
        Err(source) => Err(ExecError::BadCwd { cwd: cwd.to_owned(), source }),
    }
}

/// Appends rather than truncates, so that nothing already logged is lost if the same run dir
/// is ever reused.
fn open_log(path: &Path) -> Result<File, ExecError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| ExecError::OpenLog { path: path.to_owned(), source })
}
