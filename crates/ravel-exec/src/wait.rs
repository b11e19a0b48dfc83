//! Waiting for the job's main process to end, and ending the job's whole process group on a
//! cancel request or when its timeout expires: SIGTERM, then SIGKILL after the grace period.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::group;
use crate::lease::lease_holds;
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
    /// A cancel request arrived before the timeout expired (if there was one).
    pub canceled: bool,
    /// The timeout expired first and the supervisor started ending the job.
    pub timed_out: bool,
    /// The node's lease ran out and the supervisor killed the job's group.
    pub fenced: bool,
}

/// Why the supervisor is ending the job. The first reason sticks: a cancel arriving while a
/// timed-out job is already being terminated changes nothing, and vice versa.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reason {
    Canceled,
    TimedOut,
    Fenced,
}

/// How often a lease is looked at: a fenced job dies within this of its lease's end.
const LEASE_CHECK: Duration = Duration::from_millis(200);

/// Where the supervisor stands in ending the job.
#[derive(Clone, Copy)]
enum Stop {
    /// Nothing asked for yet; the job may still time out.
    Running,
    /// SIGTERM sent; SIGKILL at `kill_at`.
    Terminating {
        kill_at: Instant,
    },
    Killed,
}

/// Waits until the job's main process `pid` has exited, without reaping it: the zombie keeps
/// `pid` (the group id) reserved while the caller kills what is left of the group. A cancel
/// request, or reaching `deadline` (a monotonic instant; None means no timeout), starts
/// ending the group: SIGTERM, then SIGKILL once `grace` has passed. `watched` must be blocked.
///
/// No polling: each wait is a `sigtimedwait` bounded by the next instant something is due
/// (the deadline, or the SIGKILL), recomputed after every wake-up so that SIGCHLDs of other
/// children or EINTR never push it back.
pub(crate) fn wait_for_job(
    pid: i32,
    grace: Duration,
    deadline: Option<Instant>,
    lease: Option<&Path>,
    watched: &libc::sigset_t,
) -> JobEnd {
    let mut stop = Stop::Running;
    let mut reason = None;
    let mut next_lease_check = Instant::now();
    loop {
        let termination = match peek_exit(pid) {
            Ok(Some(termination)) => Some(termination),
            Ok(None) => None,
            Err(e) => Some(Termination::Lost(format!("cannot wait for job {pid}: {e}"))),
        };
        if let Some(termination) = termination {
            return JobEnd {
                termination,
                canceled: reason == Some(Reason::Canceled),
                timed_out: reason == Some(Reason::TimedOut),
                fenced: reason == Some(Reason::Fenced),
            };
        }
        // A lease that ran out ends the job at once, whatever else is under way: the job may
        // be about to run elsewhere.
        if let Some(file) = lease
            && !matches!(stop, Stop::Killed)
            && Instant::now() >= next_lease_check
        {
            next_lease_check = Instant::now() + LEASE_CHECK;
            if !lease_holds(file) {
                let _ = group::signal(pid, libc::SIGKILL);
                stop = Stop::Killed;
                reason = Some(Reason::Fenced);
                continue;
            }
        }
        let mut due = match stop {
            Stop::Running => deadline,
            Stop::Terminating { kill_at } => Some(kill_at),
            Stop::Killed => None,
        };
        if lease.is_some() && !matches!(stop, Stop::Killed) {
            due = Some(due.map_or(next_lease_check, |d| d.min(next_lease_check)));
        }
        // Once `due` has passed this is a zero timeout: sigtimedwait then only collects what
        // is already pending, so a cancel (or the job's exit) that came in before the deadline
        // was noticed still counts first.
        let timeout = due.map(|at| at.saturating_duration_since(Instant::now()));
        match signals::wait(watched, timeout) {
            Wake::Cancel => {
                if let Stop::Running = stop {
                    stop = terminate(pid, grace);
                    reason = Some(Reason::Canceled);
                }
            }
            Wake::Timeout => {
                let now = Instant::now();
                match stop {
                    Stop::Running if deadline.is_some_and(|at| now >= at) => {
                        stop = terminate(pid, grace);
                        reason = Some(Reason::TimedOut);
                    }
                    Stop::Terminating { kill_at } if now >= kill_at => {
                        // ESRCH only means everything already exited.
                        let _ = group::signal(pid, libc::SIGKILL);
                        stop = Stop::Killed;
                    }
                    // Woke before what was due (should not happen): wait again.
                    _ => {}
                }
            }
            // Look at the job again.
            Wake::Child => {}
        }
    }
}

/// Sends SIGTERM to the job's group and schedules the SIGKILL.
fn terminate(pid: i32, grace: Duration) -> Stop {
    // ESRCH only means everything already exited.
    let _ = group::signal(pid, libc::SIGTERM);
    let now = Instant::now();
    match now.checked_add(grace) {
        Some(kill_at) => Stop::Terminating { kill_at },
        // A grace period beyond the clock's range: SIGKILL would never be due, so nothing is
        // left to do but wait for the job to end.
        None => Stop::Killed,
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
