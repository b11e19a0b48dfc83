//! The supervisor's signal handling.
//!
//! Instead of handlers that set a flag (which races: a SIGTERM landing between the flag check
//! and a blocking `waitpid` would go unnoticed until the job exits), SIGTERM, SIGINT and
//! SIGCHLD stay blocked and are consumed synchronously with `sigtimedwait`. A pending signal
//! is never lost, and "the job exited" and "cancel requested" wake the same wait.
//! `launch` blocks them already between fork and exec, so a cancel sent right after launch,
//! before the supervisor has run a single instruction, stays pending instead of killing it.

use std::io;
use std::mem::MaybeUninit;
use std::ptr;
use std::time::Duration;

use libc::c_int;

/// Signals that ask the supervisor to cancel its job.
const CANCEL_SIGNALS: [c_int; 2] = [libc::SIGTERM, libc::SIGINT];

/// Dispositions the supervisor changes (or inherits changed) that the job must not inherit.
const RESET_FOR_JOB: [c_int; 5] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGPIPE, libc::SIGCHLD];

/// What woke the supervisor up.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Wake {
    Cancel,
    /// A child changed state (or a spurious wakeup): look again.
    Child,
    Timeout,
}

fn sigset(signals: &[c_int]) -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset only fails for invalid signal
    // numbers, and these are constants.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        let mut set = set.assume_init();
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// The signals the supervisor waits for: cancel requests and child exits.
pub(crate) fn watched() -> libc::sigset_t {
    sigset(&[libc::SIGTERM, libc::SIGINT, libc::SIGCHLD])
}

/// Blocks `set` for the calling thread. Async-signal-safe: `launch` calls it between fork
/// and exec.
pub(crate) fn block(set: &libc::sigset_t) -> io::Result<()> {
    // SAFETY: `set` is an initialised sigset; the old mask is not requested.
    if unsafe { libc::sigprocmask(libc::SIG_BLOCK, set, ptr::null_mut()) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// SIGHUP: the supervisor has no terminal, but a stray hangup must not kill it.
/// SIGPIPE: writes to closed pipes must fail with EPIPE, not kill it.
pub(crate) fn ignore_hangup_and_pipe() {
    // SAFETY: setting a disposition to SIG_IGN has no memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// True if a cancel request is pending (it stays pending: the wait loop consumes it).
pub(crate) fn cancel_pending() -> bool {
    let mut pending = sigset(&[]);
    // SAFETY: `pending` is an initialised sigset that sigpending overwrites.
    if unsafe { libc::sigpending(&mut pending) } == -1 {
        return false;
    }
    CANCEL_SIGNALS
        .iter()
        // SAFETY: `pending` is initialised; the signal numbers are valid.
        .any(|&s| unsafe { libc::sigismember(&pending, s) } == 1)
}

/// Waits for one of the signals in `set` (which must be blocked), at most `timeout`.
pub(crate) fn wait(set: &libc::sigset_t, timeout: Option<Duration>) -> Wake {
    // SAFETY: `set` is initialised; a null siginfo pointer is allowed; `ts` outlives the call.
    let signal = unsafe {
        match timeout {
            None => libc::sigwaitinfo(set, ptr::null_mut()),
            Some(d) => {
                let ts = libc::timespec {
                    tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
                    // Below 10^9, so it fits a c_long on every target.
                    tv_nsec: d.subsec_nanos() as libc::c_long,
                };
                libc::sigtimedwait(set, ptr::null_mut(), &ts)
            }
        }
    };
    match signal {
        s if CANCEL_SIGNALS.contains(&s) => Wake::Cancel,
        -1 if io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN) => Wake::Timeout,
        // SIGCHLD, or EINTR from a signal outside the set: either way, look at the children.
        _ => Wake::Child,
    }
}

/// No signals: the mask a job starts with.
pub(crate) fn empty() -> libc::sigset_t {
    sigset(&[])
}

/// The signals a job starts with at their default disposition.
pub(crate) fn reset_set() -> libc::sigset_t {
    sigset(&RESET_FOR_JOB)
}

/// Prepares the signal state the job starts with: default dispositions and an empty mask,
/// as if started from a fresh shell. Returns a closure for `pre_exec`; the sigset is built
/// before fork so that the closure only makes async-signal-safe calls.
pub(crate) fn reset_for_job() -> impl FnMut() -> io::Result<()> + Send + Sync + 'static {
    let empty = empty();
    move || {
        for s in RESET_FOR_JOB {
            // SAFETY: restoring the default disposition is async-signal-safe.
            if unsafe { libc::signal(s, libc::SIG_DFL) } == libc::SIG_ERR {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: `empty` is an initialised sigset.
        if unsafe { libc::sigprocmask(libc::SIG_SETMASK, &empty, ptr::null_mut()) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
