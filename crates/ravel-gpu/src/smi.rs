//! The `nvidia-smi` backend, for hosts where the tool runs but NVML cannot be
//! loaded by this process (e.g. a driver library outside the loader's path).

mod parse;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::{GpuInfo, GpuProbe, ProbeError};

pub use parse::parse_smi;

const GPU_QUERY: &str = "--query-gpu=index,name,uuid,memory.total,memory.used,utilization.gpu";
const APPS_QUERY: &str = "--query-compute-apps=gpu_uuid,pid,used_memory";
const CSV_FORMAT: &str = "--format=csv,noheader,nounits";

/// nvidia-smi hangs when the driver is wedged; a probe must not hang the
/// agent with it.
const TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);

/// Probes GPUs by running `nvidia-smi` twice per probe (GPUs, then compute
/// processes) and joining the two by GPU uuid.
#[derive(Clone, Debug)]
pub struct SmiProbe {
    program: PathBuf,
}

impl SmiProbe {
    /// A probe running the given `nvidia-smi` executable.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        SmiProbe { program: program.into() }
    }

    /// Finds an executable `nvidia-smi` in a PATH-style list of directories.
    pub fn locate(path_var: &str) -> Option<Self> {
        std::env::split_paths(path_var)
            .map(|dir| dir.join("nvidia-smi"))
            .find(|candidate| is_executable(candidate))
            .map(SmiProbe::new)
    }

    /// The executable this probe runs.
    pub fn program(&self) -> &Path {
        &self.program
    }
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

impl GpuProbe for SmiProbe {
    fn kind(&self) -> &'static str {
        "nvidia-smi"
    }

    fn probe(&self) -> Result<Vec<GpuInfo>, ProbeError> {
        let gpus = run(&self.program, &[GPU_QUERY, CSV_FORMAT])?;
        let apps = run(&self.program, &[APPS_QUERY, CSV_FORMAT])?;
        parse_smi(&gpus, &apps)
    }
}

/// Reads a child's pipe to the end on its own thread, so the child never
/// blocks on a full pipe while we poll it for exit.
fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            // A read error just truncates the output; parsing reports the rest.
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Runs `program args`, returning stdout if it exits successfully within
/// [`TIMEOUT`].
fn run(program: &Path, args: &[&str]) -> Result<String, ProbeError> {
    let command = format!("{} {}", program.display(), args.join(" "));
    let spawn_error = |error| ProbeError::SmiSpawn { program: program.to_owned(), error };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        match child.try_wait().map_err(spawn_error)? {
            Some(status) => break status,
            None if Instant::now() < deadline => thread::sleep(POLL),
            None => {
                // Kill and reap so no zombie is left; the drain threads end
                // when the pipes close.
                let _ = child.kill();
                let _ = child.wait();
                return Err(ProbeError::SmiTimeout { command, secs: TIMEOUT.as_secs() });
            }
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    if !status.success() {
        return Err(ProbeError::SmiFailed { command, status: status.to_string(), stderr: stderr.trim().to_owned() });
    }
    Ok(stdout)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::{Mutex, MutexGuard};

    /// Held by every test that writes or runs a script: executing a file while
    /// a concurrently forked child still holds its write descriptor fails
    /// with ETXTBSY, which would make these tests flaky.
    static SCRIPTS: Mutex<()> = Mutex::new(());

    fn scripts_lock() -> MutexGuard<'static, ()> {
        SCRIPTS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Installs a stand-in `nvidia-smi` that answers only the exact queries
    /// the probe is meant to send.
    fn fake_smi(dir: &Path, script_body: &str) -> PathBuf {
        let path = dir.join("nvidia-smi");
        std::fs::write(&path, format!("#!/bin/sh\n{script_body}")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn locate_finds_only_executables_on_the_path() {
        let _guard = scripts_lock();
        let empty = tempfile::tempdir().unwrap();
        let with_smi = tempfile::tempdir().unwrap();
        let path_var = std::env::join_paths([empty.path(), with_smi.path()]).unwrap();
        let path_var = path_var.to_str().unwrap();
        assert!(SmiProbe::locate(path_var).is_none());

        std::fs::write(with_smi.path().join("nvidia-smi"), "not executable").unwrap();
        assert!(SmiProbe::locate(path_var).is_none());

        let program = fake_smi(with_smi.path(), "exit 0\n");
        assert_eq!(SmiProbe::locate(path_var).unwrap().program(), program);
    }

    #[test]
    fn probe_runs_both_queries_and_joins_apps_to_gpus() {
        let _guard = scripts_lock();
        let dir = tempfile::tempdir().unwrap();
        let program = fake_smi(
            dir.path(),
            &format!(
                "[ \"$2\" = \"{CSV_FORMAT}\" ] || exit 3\n\
                 case \"$1\" in\n\
                 {GPU_QUERY}) echo '0, NVIDIA A100, GPU-a, 81920, 40100, 97' ;;\n\
                 {APPS_QUERY}) echo 'GPU-a, 4242, 40000' ;;\n\
                 *) exit 2 ;;\n\
                 esac\n"
            ),
        );
        let probe = SmiProbe::new(program);
        assert_eq!(probe.kind(), "nvidia-smi");
        let gpus = probe.probe().unwrap();
        assert_eq!(gpus.len(), 1);
        assert_eq!(gpus[0].utilization_pct, 97);
        assert_eq!(gpus[0].processes[0].pid, 4242);
    }

    #[test]
    fn failing_tool_reports_command_and_stderr() {
        let _guard = scripts_lock();
        let dir = tempfile::tempdir().unwrap();
        let program = fake_smi(dir.path(), "echo 'NVIDIA-SMI has failed' >&2\nexit 9\n");
        let err = SmiProbe::new(&program).probe().unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ProbeError::SmiFailed { .. }), "{err:?}");
        assert!(text.contains("NVIDIA-SMI has failed") && text.contains(GPU_QUERY), "{text}");
    }

    #[test]
    fn missing_program_is_a_spawn_error_naming_it() {
        let _guard = scripts_lock();
        let err = SmiProbe::new("/nonexistent/nvidia-smi").probe().unwrap_err();
        assert!(matches!(err, ProbeError::SmiSpawn { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/nvidia-smi"), "{err}");
    }
}
