//! The files of a run dir and the records stored in them: what the daemon asks for
//! (`launch.json`), who is running it (`supervisor.json`) and how it ended (`exit.json`).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::ExecError;

pub const LAUNCH_FILE: &str = "launch.json";
pub const SUPERVISOR_FILE: &str = "supervisor.json";
pub const EXIT_FILE: &str = "exit.json";
pub const STDOUT_FILE: &str = "stdout.log";
pub const STDERR_FILE: &str = "stderr.log";
pub const OUTPUTS_DIR: &str = "outputs";

/// What to run. `env` is the job's complete environment: nothing of the supervisor's (or the
/// daemon's) environment leaks into the job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LaunchSpec {
    pub command: Vec<String>,
    pub cwd: String,
    pub env: Vec<(String, String)>,
    /// How long a canceled job gets between SIGTERM and SIGKILL.
    pub kill_grace_ms: u64,
    /// fsync `supervisor.json` and `exit.json` (the daemon's full durability mode).
    #[serde(default)]
    pub sync_records: bool,
    /// Longest the job may run, counted on the monotonic clock from its spawn. Past it the
    /// supervisor ends the job as it would on a cancel (SIGTERM to the group, SIGKILL after
    /// `kill_grace_ms`), also while no daemon is running. None: no limit.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Run the job as this user (system mode: the supervisor is root and drops privileges in
    /// the job's process). None: the job runs as the supervisor's own user.
    #[serde(default)]
    pub run_as: Option<RunAs>,
    /// The submitter's umask, applied in the job's process. None: inherited.
    #[serde(default)]
    pub umask: Option<u32>,
    /// Contain the job in its own cgroup. None: no cgroup.
    #[serde(default)]
    pub cgroup: Option<CgroupSpec>,
    /// Cluster mode: a file holding the lease's deadline (UTC ms, decimal), which the agent
    /// pushes forward after each successful contact with the controller. Once it has passed, or
    /// the file cannot be read, the supervisor kills the job's group at once (self-fencing: the
    /// controller is about to declare the node lost and run the job elsewhere). None: no lease.
    #[serde(default)]
    pub lease_file: Option<String>,
}

/// Whom a job runs as: the submitter, identified by the kernel (`SO_PEERCRED`) at submit time.
/// Supplementary groups, home directory and shell variables come from the user's entry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    /// The user's name (for supplementary groups and `USER`/`LOGNAME`).
    pub user: String,
}

/// The cgroup one attempt runs in and its limits. `name` is one path component (no `/`, not
/// starting with `.`), taken relative to Ravel's directory in each hierarchy (see
/// [`crate::cgroup`]): `12.1` becomes `/sys/fs/cgroup/ravel/12.1` on cgroup v2.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CgroupSpec {
    pub name: String,
    /// Hard memory limit (swap included where the host accounts it).
    pub memory_max_bytes: Option<u64>,
    /// Most processes/threads the job may have at once.
    pub pids_max: Option<u64>,
}

/// Identity of the supervisor and of the job it spawned, so that a restarted daemon can tell
/// a live supervisor from an unrelated process that reused its pid.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SupervisorRecord {
    pub supervisor_pid: i32,
    pub supervisor_start: u64,
    /// The job's pid, which is also its process group id. None if it was never spawned.
    pub job_pid: Option<i32>,
    pub job_start: Option<u64>,
    pub started_at_ms: i64,
}

/// How an attempt ended. Written once, after the job and everything in its process group
/// are gone.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ExitRecord {
    /// The job's exit status if it exited; 127/126 if the program was not found / could not
    /// be executed.
    pub exit_code: Option<i32>,
    /// The signal that killed the job's main process.
    pub signal: Option<i32>,
    /// A cancel request reached the supervisor (the job may still have exited on its own).
    pub canceled: bool,
    /// The supervisor ended the job because it outran `LaunchSpec::timeout_ms`. Never true
    /// together with `canceled`: whichever came first is recorded.
    #[serde(default)]
    pub timed_out: bool,
    /// Why the job could not be started or run to completion cleanly (spawn failure,
    /// unreadable launch spec, processes that survived SIGKILL).
    pub error: Option<String>,
    /// When the job was spawned; None if it never was.
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: i64,
    /// The kernel's OOM killer killed a process of the job because its cgroup hit its memory
    /// limit.
    #[serde(default)]
    pub oom_killed: bool,
    /// The supervisor killed the job because its node's lease ran out (`LaunchSpec::lease_file`).
    #[serde(default)]
    pub fenced: bool,
}

/// Largest record read from a run dir: on a shared box its user owns the run dir and could
/// plant anything there.
const MAX_RECORD_BYTES: u64 = 1 << 20;

/// Reads a file of a run dir without following a symlink in its place, up to the size limit.
/// Opened without blocking (a FIFO planted there must not hang the open), and refused unless a
/// regular file, which reads the same either way: so no switch back to blocking reads. Read
/// into a buffer of the size it has, in one read and the one that finds its end.
fn read_record(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let f = open_nofollow_nonblocking(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::with_capacity(meta.len().min(MAX_RECORD_BYTES) as usize + 1);
    f.take(MAX_RECORD_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_RECORD_BYTES {
        return Err(std::io::Error::other("larger than any record"));
    }
    Ok(bytes)
}

/// Opens for reading without following a symlink, and without blocking on a FIFO: reads of
/// anything but a regular file do not block either.
fn open_nofollow_nonblocking(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC).open(path)
}

/// Opens for reading without following a symlink, and without blocking on a FIFO.
fn open_nofollow(path: &Path) -> std::io::Result<fs::File> {
    let f = open_nofollow_nonblocking(path)?;
    // Back to blocking reads (O_NONBLOCK only kept a FIFO from hanging the open); callers refuse
    // anything but a regular file anyway.
    crate::fds::set_blocking(&f)?;
    Ok(f)
}

/// Opens a job's log for the daemon to serve: never through a symlink, only a regular file
/// (a planted FIFO neither hangs nor feeds the reader), and, when `owner` is given, only one
/// owned by that uid (a hard link to another user's file is refused). On a shared box the
/// job's user owns the run dir and could otherwise make the daemon, as root, read for them.
///
/// A log that still belongs to the reader itself is one the supervisor has created and not yet
/// handed to the job's user: that is `ErrorKind::WouldBlock` (nothing to read yet), not a refusal.
pub fn open_log_for_reading(path: &Path, owner: Option<u32>) -> std::io::Result<fs::File> {
    use std::os::unix::fs::MetadataExt;
    let f = open_nofollow(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            std::io::Error::other(format!("{} is a symbolic link, not a log", path.display()))
        } else {
            e
        }
    })?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other(format!("{} is not a regular file", path.display())));
    }
    if let Some(uid) = owner.filter(|uid| meta.uid() != *uid) {
        // SAFETY: geteuid cannot fail and touches no memory.
        if meta.uid() == unsafe { libc::geteuid() } {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!("{} is not handed to the job's user yet", path.display()),
            ));
        }
        return Err(std::io::Error::other(format!(
            "{} belongs to uid {}, not to the job's user (uid {uid})",
            path.display(),
            meta.uid()
        )));
    }
    Ok(f)
}

/// Reads `launch.json`; the supervisor's first step.
pub fn read_launch(run_dir: &Path) -> Result<LaunchSpec, ExecError> {
    let path = run_dir.join(LAUNCH_FILE);
    let bytes = read_record(&path).map_err(|source| ExecError::ReadFile { path: path.clone(), source })?;
    serde_json::from_slice(&bytes).map_err(|source| ExecError::Parse { path, source })
}

/// Reads the launch spec from stdin to its end (the socket `launch` writes it into).
pub fn read_launch_from_stdin() -> Result<LaunchSpec, ExecError> {
    let path = PathBuf::from("<stdin>");
    // Room for a usual spec and its environment in one read, not a doubling series.
    let mut bytes = Vec::with_capacity(64 * 1024);
    std::io::stdin()
        .lock()
        .read_to_end(&mut bytes)
        .map_err(|source| ExecError::ReadFile { path: path.clone(), source })?;
    serde_json::from_slice(&bytes).map_err(|source| ExecError::Parse { path, source })
}

/// What a standby supervisor is handed on its stdin: where its attempt lives, and what to run.
/// Written from borrowed parts (`Order<&Path, &LaunchSpec>`), read as owned ones.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct Order<P = PathBuf, S = LaunchSpec> {
    pub run_dir: P,
    pub spec: S,
}

/// An order as sent: its JSON's length (4 bytes, little-endian), then the JSON. A supervisor
/// serves several orders on one socket, so each says where it ends.
pub(crate) fn order_frame(order: &Order<&Path, &LaunchSpec>) -> serde_json::Result<Vec<u8>> {
    let mut frame = vec![0u8; 4];
    serde_json::to_writer(&mut frame, order)?;
    let len = u32::try_from(frame.len() - 4).map_err(serde::ser::Error::custom)?;
    frame[..4].copy_from_slice(&len.to_le_bytes());
    Ok(frame)
}

/// Reads the next order from `input`: `None` at the end of the input (no more orders), an error
/// for an order cut short or malformed.
pub(crate) fn read_order(input: &mut impl Read) -> Result<Option<Order>, ExecError> {
    let path = PathBuf::from("<stdin>");
    let read_err = |source| ExecError::ReadFile { path: path.clone(), source };
    let mut len = [0u8; 4];
    let first = loop {
        match input.read(&mut len[..1]) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => break r.map_err(read_err)?,
        }
    };
    if first == 0 {
        return Ok(None);
    }
    input.read_exact(&mut len[1..]).map_err(read_err)?;
    let mut bytes = vec![0u8; u32::from_le_bytes(len) as usize];
    input.read_exact(&mut bytes).map_err(read_err)?;
    serde_json::from_slice(&bytes).map(Some).map_err(|source| ExecError::Parse { path: path.clone(), source })
}

/// The exit record, if the supervisor has written one. A malformed file reads as absent:
/// records are replaced atomically, so a torn file cannot be a half-written one of ours.
pub fn read_exit(run_dir: &Path) -> Option<ExitRecord> {
    read_optional(&run_dir.join(EXIT_FILE))
}

/// The supervisor record, if the supervisor got as far as writing it.
pub fn read_supervisor(run_dir: &Path) -> Option<SupervisorRecord> {
    read_optional(&run_dir.join(SUPERVISOR_FILE))
}

fn read_optional<T: DeserializeOwned>(path: &Path) -> Option<T> {
    let bytes = read_record(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Wall-clock milliseconds since the Unix epoch, the unit of every timestamp in the records.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `read_exit` on another thread, so that a read that blocks fails the test instead of
    /// hanging it.
    fn read_exit_soon(dir: &Path) -> Option<ExitRecord> {
        let (tx, rx) = std::sync::mpsc::channel();
        let dir = dir.to_owned();
        std::thread::spawn(move || {
            let _ = tx.send(read_exit(&dir));
        });
        rx.recv_timeout(std::time::Duration::from_secs(5)).expect("read_exit blocked")
    }

    #[test]
    fn records_are_read_whole_and_nothing_but_a_regular_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let record = ExitRecord {
            exit_code: Some(3),
            signal: None,
            canceled: false,
            timed_out: false,
            error: Some("x".repeat(5000)),
            started_at_ms: Some(1),
            finished_at_ms: 2,
            oom_killed: false,
            fenced: false,
        };
        fs::write(dir.path().join(EXIT_FILE), serde_json::to_vec_pretty(&record).unwrap()).unwrap();
        let back = read_exit_soon(dir.path()).expect("a regular exit.json");
        assert_eq!((back.exit_code, back.error.map(|e| e.len())), (Some(3), Some(5000)));

        // A FIFO in its place (a shared box's user owns the run dir): refused, not waited on.
        fs::remove_file(dir.path().join(EXIT_FILE)).unwrap();
        let c = std::ffi::CString::new(dir.path().join(EXIT_FILE).as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(read_exit_soon(dir.path()).is_none());

        // A symlink to a good record is not followed; a file over the limit is not read.
        fs::remove_file(dir.path().join(EXIT_FILE)).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        fs::write(elsewhere.path().join("exit.json"), serde_json::to_vec(&record).unwrap()).unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join("exit.json"), dir.path().join(EXIT_FILE)).unwrap();
        assert!(read_exit_soon(dir.path()).is_none());
        fs::remove_file(dir.path().join(EXIT_FILE)).unwrap();
        fs::write(dir.path().join(EXIT_FILE), vec![b' '; MAX_RECORD_BYTES as usize + 1]).unwrap();
        assert!(read_record(&dir.path().join(EXIT_FILE)).is_err());
    }
}
