//! A shared box's system daemon for tests, and the test users that talk to it.
//!
//! The daemon runs as root (CI runs as root) with its home and socket in a temp dir
//! (`RAVEL_SYSTEM_HOME`, `RAVEL_SYSTEM_SOCKET`); users' commands run as real Unix users, created
//! once per machine (idempotently) by [`ensure_user`].

use crate::{FakeGpu, kill_jobs_under, write_gpus};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The two test users, and a group alice is in besides her own.
pub const ALICE: &str = "ravel-alice";
pub const BOB: &str = "ravel-bob";
pub const LAB_GROUP: &str = "ravel-lab";

/// A Unix user as the passwd database has it.
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// True when tests that need root can run; under `CI=true` a non-root run fails loudly instead.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{test} needs root (CI runs as root)");
    eprintln!("skipping {test}: it needs root to run jobs as other users");
    false
}

/// Serialises changes to the user and group databases between parallel tests (and test
/// binaries): useradd and usermod fail rather than wait when another holds their lock.
fn users_lock() -> std::fs::File {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("ravel-test-users.lock"))
        .expect("users lock file");
    // SAFETY: flock on an fd we own; released when the file is dropped.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    f
}

/// Creates the user (with a user group) if it does not exist; safe to call from parallel tests.
pub fn ensure_user(name: &str) -> User {
    let _lock = users_lock();
    if lookup(name).is_none() {
        let out = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", name])
            .output()
            .expect("run useradd");
        // 9: it exists (another test made it meanwhile).
        assert!(out.status.success() || out.status.code() == Some(9), "useradd {name}: {out:?}");
    }
    lookup(name).unwrap_or_else(|| panic!("user {name} was not created"))
}

/// Creates the lab group and puts alice in it, unless that is done already; returns its gid.
pub fn ensure_lab_group() -> u32 {
    ensure_user(ALICE);
    if let Some(gid) = group_gid(LAB_GROUP).filter(|_| alice_in_lab()) {
        return gid;
    }
    let _lock = users_lock();
    let out = Command::new("groupadd").args(["-f", LAB_GROUP]).output().expect("run groupadd");
    assert!(out.status.success(), "groupadd {LAB_GROUP}: {out:?}");
    if !alice_in_lab() {
        let out = Command::new("usermod").args(["-aG", LAB_GROUP, ALICE]).output().expect("run usermod");
        assert!(out.status.success(), "usermod -aG {LAB_GROUP} {ALICE}: {out:?}");
    }
    group_gid(LAB_GROUP).expect("lab group")
}

fn alice_in_lab() -> bool {
    let out = Command::new("id").args(["-nG", ALICE]).output().expect("run id");
    String::from_utf8_lossy(&out.stdout).split_whitespace().any(|g| g == LAB_GROUP)
}

/// The gid of a group.
pub fn group_gid(name: &str) -> Option<u32> {
    let out = Command::new("getent").args(["group", name]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).split(':').nth(2)?.trim().parse().ok()
}

fn lookup(name: &str) -> Option<User> {
    let out = Command::new("getent").args(["passwd", name]).output().ok()?;
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let f: Vec<&str> = line.trim().split(':').collect();
    Some(User {
        name: name.into(),
        uid: f.get(2)?.parse().ok()?,
        gid: f.get(3)?.parse().ok()?,
        home: f.get(5)?.to_string(),
    })
}

pub struct SystemDaemon {
    dir: tempfile::TempDir,
    bin: PathBuf,
    gpu_file: PathBuf,
    fake: String,
}

impl SystemDaemon {
    /// Starts `ravel daemon start --system ARGS` with `gpus` fake GPUs in a file (see `set_gpus`).
    pub fn start(bin: impl Into<PathBuf>, gpus: &[FakeGpu], args: &[&str]) -> SystemDaemon {
        let dir = tempfile::Builder::new().prefix("ravel-sys-").tempdir().expect("temp dir");
        // Users reach the socket, their run dirs and their own dirs through it.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let gpu_file = dir.path().join("fake-gpus.json");
        write_gpus(&gpu_file, gpus);
        let d = SystemDaemon { fake: gpu_file.to_string_lossy().into_owned(), dir, bin: bin.into(), gpu_file };
        let mut cmd = d.root();
        cmd.args(["daemon", "start", "--system", "--cpus", "8", "--kill-grace", "1"]).args(args);
        let out = cmd.output().expect("run ravel daemon start --system");
        assert!(out.status.success(), "system daemon start failed: {}", String::from_utf8_lossy(&out.stderr));
        d
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run").join("ravel.sock")
    }

    fn base(&self, home: &Path) -> Command {
        let mut c = Command::new(&self.bin);
        c.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", home)
            .env("RAVEL_SYSTEM_HOME", self.state_dir())
            .env("RAVEL_SYSTEM_SOCKET", self.socket())
            .env("RAVEL_FAKE_GPUS", &self.fake)
            .stdin(Stdio::null());
        c
    }

    /// A `ravel` command as root (the admin).
    pub fn root(&self) -> Command {
        let home = self.dir.path().join("root-home");
        std::fs::create_dir_all(&home).expect("root home");
        self.base(&home)
    }

    /// A directory of `user`'s own (their HOME in tests, and where their jobs run).
    pub fn user_dir(&self, user: &User) -> PathBuf {
        let d = self.dir.path().join("users").join(&user.name);
        std::fs::create_dir_all(&d).expect("user dir");
        std::fs::set_permissions(self.dir.path().join("users"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&d, Some(user.uid), Some(user.gid)).expect("chown user dir");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    /// A `ravel` command run as `user`, in their own directory.
    pub fn as_user(&self, user: &User) -> Command {
        let home = self.user_dir(user);
        let mut c = self.base(&home);
        c.env("USER", &user.name).current_dir(&home).uid(user.uid).gid(user.gid);
        c
    }

    /// Runs `ravel ARGS` as `user` (None: root).
    pub fn run(&self, user: Option<&User>, args: &[&str]) -> Output {
        let mut c = match user {
            Some(u) => self.as_user(u),
            None => self.root(),
        };
        c.args(args).output().expect("run ravel")
    }

    /// Runs `ravel ARGS` as `user`, asserts success, returns stdout.
    pub fn ok(&self, user: Option<&User>, args: &[&str]) -> String {
        let out = self.run(user, args);
        assert!(
            out.status.success(),
            "ravel {args:?} as {:?} failed ({}):\nstdout: {}\nstderr: {}",
            user.map(|u| &u.name),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `ravel ARGS` as `user`, asserts it fails, returns (exit code, stderr).
    pub fn fails(&self, user: Option<&User>, args: &[&str]) -> (i32, String) {
        let out = self.run(user, args);
        assert!(
            !out.status.success(),
            "ravel {args:?} as {:?} should have failed; stdout: {}",
            user.map(|u| &u.name),
            String::from_utf8_lossy(&out.stdout)
        );
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// `ravel run ARGS` as `user`, and the id it printed.
    pub fn submit(&self, user: &User, args: &[&str]) -> i64 {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        let out = self.ok(Some(user), &all);
        out.trim().parse().unwrap_or_else(|_| panic!("ravel run printed {out:?}, not an id"))
    }

    /// `ravel show --json` as root.
    pub fn show(&self, id: i64) -> serde_json::Value {
        serde_json::from_str(&self.ok(None, &["show", &id.to_string(), "--json"])).expect("JSON")
    }

    /// Polls `show` until the job is in `state`.
    pub fn wait_state(&self, id: i64, state: &str) -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let v = self.show(id);
            if v["state"] == state {
                return v;
            }
            assert!(std::time::Instant::now() < deadline, "job {id} did not become {state}: {v:#}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn set_gpus(&self, gpus: &[FakeGpu]) {
        write_gpus(&self.gpu_file, gpus);
    }
}

impl Drop for SystemDaemon {
    fn drop(&mut self) {
        let _ = self.root().args(["daemon", "stop", "--system", "--kill-jobs"]).output();
        kill_jobs_under(self.dir.path());
    }
}
