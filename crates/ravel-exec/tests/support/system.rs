//! System mode in tests: root, the test users and groups (made once per machine, idempotently,
//! safe from parallel tests and test binaries), and cgroup names that never collide.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use ravel_exec::RunAs;

// Each test binary uses a different part of these.
#[allow(unused_imports)]
pub use ravel_test_support::system::{ALICE, BOB, LAB_GROUP, User, ensure_lab_group, ensure_user, root_or_skip};

/// The spec part that makes a job run as `self`.
pub trait RunAsUser {
    fn run_as(&self) -> RunAs;
}

impl RunAsUser for User {
    fn run_as(&self) -> RunAs {
        RunAs { uid: self.uid, gid: self.gid, user: self.name.clone() }
    }
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
