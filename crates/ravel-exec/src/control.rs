//! What the daemon does to supervisors and job groups from the outside: cancel requests,
//! last-resort group kills, exit notification (pidfd) and reaping.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::ExecError;
use crate::{group, procfs};

/// Pause between checks while a killed group dies.
const POLL: Duration = Duration::from_millis(5);

/// Asks the supervisor `pid` (started at `start_time`) to cancel its job: SIGTERM, which it
/// turns into SIGTERM, then after the grace period SIGKILL, for the job's group.
/// Ok(false) if that supervisor is already gone (or exited and awaits reaping).
pub fn request_cancel(pid: i32, start_time: u64) -> Result<bool, ExecError> {
    if !procfs::is_same_process(pid, start_time) {
        return Ok(false);
    }
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, libc::SIGTERM) } == -1 {
        let source = io::Error::last_os_error();
        if source.raw_os_error() == Some(libc::ESRCH) {
            return Ok(false);
        }
        return Err(ExecError::Signal { pid, source });
    }
    Ok(true)
}

/// SIGKILLs process group `pgid` until no live process is left in it, for at most
/// `timeout`. For a job whose supervisor vanished (kill -9): nobody else will clean up its
/// group. Members that are our own children are reaped; zombies awaiting another parent
/// count as gone. Returns true if the group is gone. Refuses (false) to touch pgid <= 1 or
/// the caller's own group.
pub fn kill_group_and_wait(pgid: i32, timeout: Duration) -> bool {
    // SAFETY: getpgrp cannot fail.
    if pgid <= 1 || pgid == unsafe { libc::getpgrp() } {
        return false;
    }
    let deadline = Instant::now() + timeout;
    loop {
        // Repeated every round: a member may fork between rounds.
        if let Err(e) = group::signal(pgid, libc::SIGKILL)
            && e.raw_os_error() == Some(libc::ESRCH)
        {
            return true;
        }
        reap_group(pgid);
        if group::has_no_live_members(pgid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL);
    }
}

/// Reaps every exited child of ours that is in group `pgid`.
fn reap_group(pgid: i32) {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out pointer.
        let reaped = unsafe { libc::waitpid(-pgid, &mut status, libc::WNOHANG) };
        if reaped <= 0 {
            return;
        }
    }
}

/// A pidfd for `pid`: it becomes readable when the process exits (becomes a zombie), also
/// for processes that are not our children, such as supervisors re-adopted after a restart.
/// Close-on-exec.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Reaps `pid` if it is our child and has exited; a no-op otherwise (ECHILD for supervisors
/// re-adopted after a daemon restart, which are not our children).
pub fn reap(pid: i32) {
    if pid <= 0 {
        return;
    }
    let mut status = 0;
    // SAFETY: `status` is a valid out pointer.
    unsafe {
        libc::waitpid(pid, &mut status, libc::WNOHANG);
    }
}

/// Waits for the child `pid` to exit, and reaps it.
pub fn wait_for_child(pid: i32) {
    if pid <= 0 {
        return;
    }
    let mut status = 0;
    // SAFETY: `status` is a valid out pointer; EINTR is retried.
    while unsafe { libc::waitpid(pid, &mut status, 0) } == -1
        && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
    {}
}
