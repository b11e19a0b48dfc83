//! Waiting for the job's main process to end, and escalating a cancel request from SIGTERM
//! to SIGKILL for the job's whole process group.

use std::io;
use std::time::{Duration, Instant};

use crate::group;
use crate::signals::{self, Wake};

/// How the job's main process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Termination {
    Exited(i32),
    Signaled(i32),
    /// The job could not be waited for; should not happen for our own child.
    Lost(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct JobEnd {
    pub termination: Termination,
    pub canceled: bool,
}

/// Where a cancel request stands.
enum Cancel {
    NotRequested,
    /// SIGTERM sent; SIGKILL at the deadline.
    Terminating {
        kill_at: Instant,
    },
    Killed,
}

/// Waits until the job's main process `pid` has exited, without reaping it: the zombie keeps
/// `pid` (the group id) reserved while the caller kills what is left of the group. `watched`
/// must be blocked.
pub(crate) fn wait_for_job(pid: i32, grace: Duration, watched: &libc::sigset_t) -> JobEnd {
    let mut cancel = Cancel::NotRequested;
    loop {
        let canceled = !matches!(cancel, Cancel::NotRequested);
        match peek_exit(pid) {
            Ok(Some(termination)) => {
                return JobEnd { termination, canceled };
            }
            Ok(None) => {}
            Err(e) => {
                let termination = Termination::Lost(format!("cannot wait for job {pid}: {e}"));
                return JobEnd { termination, canceled };
            }
        }
        let timeout = match cancel {
            Cancel::Terminating { kill_at } => {
                let now = Instant::now();
                if now >= kill_at {
                    // ESRCH only means everything already exited.
                    let _ = group::signal(pid, libc::SIGKILL);
                    cancel = Cancel::Killed;
                    continue;
                }
                Some(kill_at - now)
            }
            Cancel::NotRequested | Cancel::Killed => None,
        };
        if signals::wait(watched, timeout) == Wake::Cancel && matches!(cancel, Cancel::NotRequested) {
            let _ = group::signal(pid, libc::SIGTERM);
            cancel = Cancel::Terminating { kill_at: Instant::now() + grace };
        }
    }
}

/// The job's termination if it has ended, leaving it unreaped (WNOWAIT).
fn peek_exit(pid: i32) -> io::Result<Option<Termination>> {
    // SAFETY: siginfo_t is plain data; all-zero is a valid value and lets "no child has
    // exited yet" show as si_pid == 0.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
    // SAFETY: `info` is a valid, writable siginfo_t.
    if unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) } == -1 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::EINTR) { Ok(None) } else { Err(e) };
    }
    // SAFETY: waitid filled in the SIGCHLD fields of `info` (or left them zero).
    let (child, status) = unsafe { (info.si_pid(), info.si_status()) };
    if child == 0 {
        return Ok(None);
    }
    Ok(match info.si_code {
        libc::CLD_EXITED => Some(Termination::Exited(status)),
        libc::CLD_KILLED | libc::CLD_DUMPED => Some(Termination::Signaled(status)),
        _ => None,
    })
}
