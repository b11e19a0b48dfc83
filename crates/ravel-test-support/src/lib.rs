//! Starts real Ravel daemons for tests: a temp `RAVEL_HOME`, fake GPUs, the real binary.
//!
//! Nothing is mocked but the GPUs: the daemon, its store, the supervisors and the jobs are the
//! real ones. Every daemon (and every job it started) is stopped when its `TestDaemon` drops.

pub mod system;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How fake GPUs are given to the daemon.
pub enum FakeGpus {
    /// `RAVEL_FAKE_GPUS=N`: N idle GPUs.
    Count(u32),
    /// `RAVEL_FAKE_GPUS=<file>`: the file is re-read on every probe; change it with `set_gpus`.
    File(Vec<FakeGpu>),
}

/// One GPU in a fake inventory file.
#[derive(Clone, Debug)]
pub struct FakeGpu {
    pub memory_used_mib: u64,
    pub utilization_pct: u32,
    /// Processes outside Ravel: (pid, MiB).
    pub processes: Vec<(u32, u64)>,
}

impl FakeGpu {
    pub fn idle() -> FakeGpu {
        FakeGpu { memory_used_mib: 0, utilization_pct: 0, processes: vec![] }
    }

    /// A GPU that someone else is using heavily.
    pub fn foreign(pid: u32) -> FakeGpu {
        FakeGpu { memory_used_mib: 40_000, utilization_pct: 90, processes: vec![(pid, 40_000)] }
    }
}

pub struct Builder {
    bin: PathBuf,
    gpus: FakeGpus,
    cpus: Option<u32>,
    kill_grace: Option<f64>,
    args: Vec<String>,
}

impl Builder {
    /// An extra flag for `ravel daemon start`.
    pub fn arg(mut self, a: &str) -> Builder {
        self.args.push(a.to_string());
        self
    }

    pub fn gpus(mut self, gpus: FakeGpus) -> Builder {
        self.gpus = gpus;
        self
    }

    pub fn cpus(mut self, n: u32) -> Builder {
        self.cpus = Some(n);
        self
    }

    pub fn kill_grace(mut self, secs: f64) -> Builder {
        self.kill_grace = Some(secs);
        self
    }

    /// Prepares the home without starting a daemon (for tests of auto-start).
    pub fn prepare(self) -> TestDaemon {
        let home = tempfile::Builder::new().prefix("ravel-test-").tempdir().expect("temp dir");
        let gpu_file = home.path().join("fake-gpus.json");
        let fake = match &self.gpus {
            FakeGpus::Count(n) => n.to_string(),
            FakeGpus::File(gpus) => {
                write_gpus(&gpu_file, gpus);
                gpu_file.to_string_lossy().into_owned()
            }
        };
        let mut daemon_args = vec![];
        if let Some(c) = self.cpus {
            daemon_args.extend(["--cpus".to_string(), c.to_string()]);
        }
        if let Some(g) = self.kill_grace {
            daemon_args.extend(["--kill-grace".to_string(), g.to_string()]);
        }
        daemon_args.extend(self.args);
        TestDaemon { home, bin: self.bin, fake, gpu_file, daemon_args }
    }

    /// Starts the daemon and waits until it answers.
    pub fn start(self) -> TestDaemon {
        let d = self.prepare();
        d.start_daemon();
        d
    }
}

pub struct TestDaemon {
    home: tempfile::TempDir,
    bin: PathBuf,
    fake: String,
    gpu_file: PathBuf,
    daemon_args: Vec<String>,
}

impl TestDaemon {
    /// `bin` is the ravel binary: `env!("CARGO_BIN_EXE_ravel")` in the binary crate's tests.
    pub fn builder(bin: impl Into<PathBuf>) -> Builder {
        Builder { bin: bin.into(), gpus: FakeGpus::Count(4), cpus: Some(8), kill_grace: Some(2.0), args: vec![] }
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// A scratch directory inside the home, for files jobs write.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.home.path().join("scratch").join(name);
        std::fs::create_dir_all(&p).expect("scratch dir");
        p
    }

    /// A `ravel` command in this daemon's environment.
    pub fn cmd(&self) -> Command {
        self.cmd_of(&self.bin)
    }

    /// Another build of `ravel` (`bin`) in this daemon's environment.
    pub fn cmd_of(&self, bin: &Path) -> Command {
        let mut c = Command::new(bin);
        c.env("RAVEL_HOME", self.home.path())
            .env("RAVEL_FAKE_GPUS", &self.fake)
            .env_remove("RAVEL_DB_PATH")
            .env_remove("RAVEL_NO_GPU")
            // Never a controller the developer's shell or contexts point at.
            .env("XDG_CONFIG_HOME", self.home.path().join(".config"))
            .env_remove("RAVEL_CONTROLLER")
            .env_remove("RAVEL_CONTEXT")
            .env_remove("RAVEL_TOKEN")
            .env_remove("RAVEL_FINGERPRINT")
            .env_remove("RAVEL_CA_CERT")
            .stdin(Stdio::null());
        c
    }

    pub fn start_daemon(&self) {
        self.start_daemon_with_env(&[]);
    }

    /// Starts the daemon with extra environment (e.g. `RAVEL_FAILPOINT`).
    pub fn start_daemon_with_env(&self, env: &[(&str, &str)]) {
        let mut cmd = self.cmd();
        cmd.args(["daemon", "start"]).args(&self.daemon_args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run ravel daemon start");
        assert!(out.status.success(), "daemon start failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Runs `ravel ARGS` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run ravel")
    }

    /// Runs `ravel ARGS`, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ravel {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `ravel ARGS`, asserts it fails, returns (exit code, stderr).
    pub fn fails(&self, args: &[&str]) -> (i32, String) {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "ravel {args:?} should have failed; stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// `ravel run ARGS` and the id it printed.
    pub fn submit(&self, args: &[&str]) -> i64 {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        let out = self.ok(&all);
        out.trim().parse().unwrap_or_else(|_| panic!("ravel run printed {out:?}, not an id"))
    }

    pub fn show(&self, id: i64) -> Value {
        serde_json::from_str(&self.ok(&["show", &id.to_string(), "--json"])).expect("show --json is JSON")
    }

    pub fn state(&self, id: i64) -> String {
        self.show(id)["state"].as_str().unwrap_or_default().to_string()
    }

    /// Polls `show` until `pred` holds; panics with the last value after `timeout`.
    pub fn wait_for(&self, id: i64, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.show(id);
            if pred(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "job {id} did not get there within {timeout:?}: {v:#}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn wait_state(&self, id: i64, state: &str) -> Value {
        self.wait_for(id, Duration::from_secs(20), |v| v["state"] == state)
    }

    /// Rewrites the fake GPU file (atomically); the daemon sees it at its next probe.
    pub fn set_gpus(&self, gpus: &[FakeGpu]) {
        write_gpus(&self.gpu_file, gpus);
    }

    /// The daemon's pid, if one holds the pid file.
    pub fn daemon_pid(&self) -> Option<i32> {
        let out = self.run(&["daemon", "status", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v["pid"].as_i64().map(|p| p as i32)
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        let _ = self.cmd().args(["daemon", "stop", "--kill-jobs"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        // Jobs of a daemon that was killed (tests do that) have no daemon to stop them.
        kill_jobs_under(self.home.path());
    }
}

/// Kills every process whose command line mentions `dir` (supervisors of jobs under it) and
/// their process groups.
pub fn kill_jobs_under(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            // SAFETY: plain kill(2) on a pid read from /proc.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

pub(crate) fn write_gpus(path: &Path, gpus: &[FakeGpu]) {
    let list: Vec<Value> = gpus
        .iter()
        .enumerate()
        .map(|(i, g)| {
            serde_json::json!({
                "index": i,
                "name": "Fake GPU",
                "memory_total_mib": 81920,
                "memory_used_mib": g.memory_used_mib,
                "utilization_pct": g.utilization_pct,
                "processes": g.processes.iter().map(|(pid, mib)| serde_json::json!({"pid": pid, "used_memory_mib": mib})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&list).unwrap()).expect("write fake GPUs");
    std::fs::rename(&tmp, path).expect("rename fake GPUs");
}

/// True if any process in the system belongs to process group `pgid`.
pub fn group_alive(pgid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence.
    unsafe { libc::kill(-pgid, 0) == 0 }
}

/// Waits until `f` holds, polling every 5 ms; false after `timeout`.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    f()
}

/// Reads a file a job wrote, once it exists and is complete (ends with a newline).
pub fn read_when_written(path: &Path, timeout: Duration) -> Option<String> {
    let mut text = None;
    eventually(timeout, || {
        text = std::fs::read_to_string(path).ok().filter(|t| t.ends_with('\n'));
        text.is_some()
    });
    text
}
