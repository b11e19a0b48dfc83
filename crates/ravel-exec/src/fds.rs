//! Keeping the caller's file descriptors out of supervisors and jobs.
//!
//! Rust opens everything close-on-exec, but C libraries in the daemon (GPU drivers, for
//! one) may not. An inherited descriptor would pin a socket, device or lock for as long
//! as a job runs, so every descriptor above stdio is marked close-on-exec right before exec.

use std::io;

/// Marks every descriptor from 3 up close-on-exec. Async-signal-safe (a single syscall), for
/// use in `pre_exec`. Marking rather than closing keeps std's own exec-status pipe working.
/// Kernels before 5.11 lack the flag; there nothing is done, which only loses this hygiene.
pub(crate) fn cloexec_above_stdio() -> io::Result<()> {
    // SAFETY: close_range takes integer arguments only; with CLOSE_RANGE_CLOEXEC it closes
    // nothing.
    let r = unsafe {
        libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC)
    };
    if r == -1 {
        let e = io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)) {
            return Err(e);
        }
    }
    Ok(())
}

/// Closes every descriptor from 3 up (the supervisor's first step).
pub(crate) fn close_above_stdio() {
    // SAFETY: close_range takes integer arguments only; nothing in the supervisor has opened
    // a descriptor yet, so nothing of ours is closed.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, libc::c_uint::MAX, 0 as libc::c_uint);
    }
}

/// Clears O_NONBLOCK on `fd`. Files that might be a FIFO planted by a user are opened
/// non-blocking, so that the open itself cannot hang; once they are known to be regular files
/// they go back to ordinary blocking I/O (a job's stdout/stderr shares these flags with us).
pub(crate) fn set_blocking(fd: &impl std::os::fd::AsRawFd) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor the caller owns, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags == -1 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
