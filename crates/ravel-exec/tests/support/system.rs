//! System mode in tests: root, the test users and groups (made once per machine, idempotently,
//! safe from parallel tests and test binaries), and cgroup names that never collide.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use ravel_exec::RunAs;

/// The test users (shared with the other crates' system-mode tests) and a group alice is in
/// besides her own.
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

impl User {
    pub fn run_as(&self) -> RunAs {
        RunAs { uid: self.uid, gid: self.gid, user: self.name.clone() }
    }
}

/// True if the test can run (it needs root to switch users and make cgroups). Otherwise it
/// fails under `CI=true`, where tests run as root, and elsewhere prints a note and is skipped.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} must run as root (CI runs the tests as root): it switches users and makes cgroups"
    );
    eprintln!("note: skipping {test}: not root");
    false
}

/// Holds an exclusive lock that serialises changes to the user and group databases: useradd and
/// usermod fail instead of waiting while another holds their own lock. The lock file is the one
/// the workspace's other system-mode tests use, so test binaries of different crates agree.
fn users_lock() -> std::fs::File {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("ravel-test-users.lock"))
        .expect("users lock file");
    // SAFETY: flock on a descriptor we own; the lock goes with it.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    f
}

/// The user `name`, created (with a group of the same name) if it does not exist yet.
pub fn ensure_user(name: &str) -> User {
    if let Some(u) = lookup(name) {
        return u;
    }
    let _lock = users_lock();
    if lookup(name).is_none() {
        let out = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", name])
            .output()
            .expect("run useradd");
        // 9: it exists already (made meanwhile by a test that does not take our lock).
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

fn group_gid(name: &str) -> Option<u32> {
    let out = Command::new("getent").args(["group", name]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).split(':').nth(2)?.trim().parse().ok()
}

fn lookup(name: &str) -> Option<User> {
    let out = Command::new("getent").args(["passwd", name]).output().ok()?;
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let f: Vec<&str> = line.trim().split(':').collect();
    Some(User {
        name: name.to_owned(),
        uid: f.get(2)?.parse().ok()?,
        gid: f.get(3)?.parse().ok()?,
        home: f.get(5)?.to_string(),
    })
}

pub fn chown(path: &Path, user: &User) {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
        .unwrap_or_else(|e| panic!("chown {} to {}: {e}", path.display(), user.name));
}

/// A cgroup name of its own for each use: test binaries and the tests in them run in parallel.
pub fn cgroup_name(tag: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    format!("test-{}-{}-{tag}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed))
}

/// Removes the cgroup (and kills what is in it) when dropped, so that a failing test leaves
/// none behind.
pub struct CgroupGuard(pub String);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        ravel_exec::cgroup::remove_leftover(&self.0);
    }
}
