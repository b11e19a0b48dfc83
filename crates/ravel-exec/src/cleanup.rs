//! Making sure nothing of the job outlives it: after the main process has exited, the rest
//! of its process group, and descendants that left the group (setsid) but were re-parented
//! to the supervisor as child subreaper, are killed and reaped.

use std::io;
use std::time::{Duration, Instant};

use crate::signals;
use crate::{group, procfs};

/// How long the supervisor keeps killing and reaping before it reports survivors. SIGKILL
/// normally takes effect within milliseconds; only processes stuck in the kernel (state D,
/// e.g. on a hung GPU driver or NFS) take longer.
const BOUND: Duration = Duration::from_secs(2);

/// Pause between rounds while processes are still dying; a SIGCHLD ends it early.
const ROUND: Duration = Duration::from_millis(5);

/// Kills the job's group `pgid` and every remaining child of the supervisor, and reaps them
/// all, including the job's own zombie. Err names what survived the bound.
pub(crate) fn clear_leftovers(pgid: i32, watched: &libc::sigset_t) -> Result<(), String> {
    let me = std::process::id() as i32;
    let deadline = Instant::now() + BOUND;
    loop {
        // The job's zombie is still unreaped here (see `wait`), so `pgid` cannot have been
        // reused by an unrelated group yet.
        let _ = group::signal(pgid, libc::SIGKILL);
        let children_left = reap_children();
        if children_left {
            kill_children(me, pgid);
        } else if group::is_empty(pgid) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "processes of job group {pgid} or children of supervisor {me} were still \
                 alive {}s after SIGKILL",
                BOUND.as_secs()
            ));
        }
        // Any wake-up means "look again"; a late cancel request is moot now.
        signals::wait(watched, Some(ROUND));
    }
}

/// Reaps every child that has exited. True if some children are still running.
fn reap_children() -> bool {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out pointer.
        match unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } {
            0 => return true,
            -1 if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
            // ECHILD: no children at all.
            -1 => return false,
            _ => {}
        }
    }
}

/// SIGKILLs the supervisor's live children. Those outside the job's group escaped it with
/// setsid/setpgid; their own groups go too, since they consist of the job's descendants.
fn kill_children(me: i32, pgid: i32) {
    for child in procfs::children_of(me) {
        if child.is_zombie() {
            continue;
        }
        if child.pgrp == child.pid && child.pgrp != pgid {
            let _ = group::signal(child.pgrp, libc::SIGKILL);
        }
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(child.pid, libc::SIGKILL);
        }
    }
}
