//! Shared harness for the integration tests: starting supervisors (the `supervise` example
//! plays the `ravel` binary), bounded waiting, and cleaning up every process a test started,
//! also when it fails.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod system;

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use ravel_exec::procfs::{self, ProcStat};
use ravel_exec::{ExitRecord, LaunchSpec, Launched, SupervisorRecord};

/// Upper bound for anything a test waits for.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The supervisor stand-in, built by `cargo test` next to the test binaries:
/// target/<profile>/deps/<test> -> target/<profile>/examples/supervise.
pub fn supervisor_exe() -> PathBuf {
    let test_exe = std::env::current_exe().expect("current_exe");
    let profile_dir = test_exe.parent().and_then(Path::parent).expect("test binary lives in target/<profile>/deps");
    let exe = profile_dir.join("examples").join("supervise");
    let built = fs::metadata(&exe).and_then(|m| m.modified()).unwrap_or_else(|_| {
        panic!(
            "{} is missing: run `cargo test -p ravel-exec` (with `--test NAME` cargo does not \
             build examples) or `cargo build -p ravel-exec --examples`",
            exe.display()
        )
    });
    // Same trap: after a source change, `--test NAME` rebuilds the test but not the example,
    // and the tests would silently run the old supervisor.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    if let Some(newer) = newest_file(&src).filter(|(t, _)| *t > built) {
        panic!(
            "{} is older than {}: rebuild it with `cargo build -p ravel-exec --examples`",
            exe.display(),
            newer.1.display()
        );
    }
    exe
}

fn newest_file(dir: &Path) -> Option<(std::time::SystemTime, PathBuf)> {
    fs::read_dir(dir)
        .ok()?
        .filter_map(|e| {
            let path = e.ok()?.path();
            let newest =
                if path.is_dir() { newest_file(&path)? } else { (fs::metadata(&path).ok()?.modified().ok()?, path) };
            Some(newest)
        })
        .max()
}

pub fn spec(command: &[&str], cwd: &Path) -> LaunchSpec {
    LaunchSpec {
        command: command.iter().map(|s| s.to_string()).collect(),
        cwd: cwd.display().to_string(),
        env: vec![("PATH".to_owned(), PATH.to_owned())],
        kill_grace_ms: 5_000,
        sync_records: true,
        timeout_ms: None,
        run_as: None,
        umask: None,
        cgroup: None,
        lease_file: None,
    }
}

/// Polls `probe` every few milliseconds until it yields a value; panics after [`DEADLINE`].
pub fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// Live (non-zombie) processes in group `pgid`.
pub fn live_members(pgid: i32) -> Vec<ProcStat> {
    procfs::group_members(pgid).into_iter().filter(|p| !p.is_zombie()).collect()
}

pub fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim_end().to_owned()
}

/// (pid, start time) of the live `sleep` processes in group `pgid`.
pub fn sleepers(pgid: i32) -> Vec<(i32, u64)> {
    live_members(pgid).into_iter().filter(|p| comm(p.pid) == "sleep").map(|p| (p.pid, p.start_time)).collect()
}

/// One launched attempt in its own temp run dir. Dropping it kills whatever is left of it.
pub struct Run {
    pub dir: tempfile::TempDir,
    pub launched: Launched,
    reaped: bool,
    /// Processes that left the job's session, which Drop cannot find otherwise.
    extra: Vec<(i32, u64)>,
}

impl Run {
    pub fn start(spec: &LaunchSpec) -> Run {
        Run::start_with(spec, |_| {})
    }

    /// Like `start`, with `prepare` run on the run dir before `launch` (to plant things in it).
    pub fn start_with(spec: &LaunchSpec, prepare: impl FnOnce(&Path)) -> Run {
        let dir = tempfile::tempdir().expect("tempdir");
        prepare(dir.path());
        let launched = ravel_exec::launch(&supervisor_exe(), dir.path(), spec).expect("launch supervisor");
        Run { dir, launched, reaped: false, extra: Vec::new() }
    }

    /// Like `start`, through a standby supervisor started first and handed the attempt.
    pub fn start_on_standby(spec: &LaunchSpec) -> Run {
        let dir = tempfile::tempdir().expect("tempdir");
        let standby = ravel_exec::Standby::spawn(&supervisor_exe()).expect("spawn a standby supervisor");
        let launched = standby.launched();
        standby.hand_over(dir.path(), spec).expect("hand over");
        Run { dir, launched, reaped: false, extra: Vec::new() }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn also_kill(&mut self, pid: i32) {
        if let Some(start) = procfs::process_start_time(pid) {
            self.extra.push((pid, start));
        }
    }

    /// The supervisor record once the job has been spawned.
    pub fn job(&self) -> SupervisorRecord {
        wait_for("supervisor.json with a job pid", || {
            ravel_exec::read_supervisor(self.path()).filter(|r| r.job_pid.is_some())
        })
    }

    /// Waits for the supervisor to exit, reaps it and returns the exit record.
    pub fn finish(&mut self) -> ExitRecord {
        self.finish_without_record().expect("exit.json written before the supervisor exits")
    }

    /// Waits for the supervisor to exit and reaps it; the exit record if there is one.
    pub fn finish_without_record(&mut self) -> Option<ExitRecord> {
        let pid = self.launched.pid;
        wait_for("the supervisor to exit", || {
            let mut status = 0;
            // SAFETY: valid out pointer.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            (r == pid).then_some(())
        });
        self.reaped = true;
        ravel_exec::read_exit(self.path())
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let sup = self.launched;
        if !self.reaped && ravel_exec::is_same_process(sup.pid, sup.start_time) {
            // SAFETY: plain kill of our own child.
            unsafe { libc::kill(sup.pid, libc::SIGKILL) };
        }
        // Job processes stay in the supervisor's session even after it died; a group is
        // only touched if it still holds such a process (its pgid cannot have been reused).
        if let Some(job) = ravel_exec::read_supervisor(self.path()).and_then(|r| r.job_pid)
            && procfs::group_members(job).iter().any(|p| p.session == sup.pid)
        {
            ravel_exec::kill_group_and_wait(job, DEADLINE);
        }
        for &(pid, start) in &self.extra {
            if ravel_exec::is_same_process(pid, start) {
                // SAFETY: plain kill of a process this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if !self.reaped {
            let deadline = Instant::now() + DEADLINE;
            while Instant::now() < deadline {
                let mut status = 0;
                // SAFETY: valid out pointer.
                let r = unsafe { libc::waitpid(sup.pid, &mut status, libc::WNOHANG) };
                if r != 0 {
                    break;
                }
                thread::sleep(Duration::from_millis(5));
            }
        }
    }
}
