//! The supervisor process body: between the daemon and one job attempt at a time.
//!
//! It runs in its own session (see `launch`), spawns the job, records who it is, waits,
//! cleans up the job's process group and writes `exit.json`; a standby then waits for its next
//! attempt. No threads, no runtime and no configuration beyond its launch spec, so that it
//! starts the job within a few milliseconds.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::atomic::{self, Durability};
use crate::cgroup::Cgroup;
use crate::records::{EXIT_FILE, ExitRecord, LaunchSpec, SUPERVISOR_FILE, SupervisorRecord, now_ms};
use crate::wait::{JobEnd, Termination};
use crate::{cleanup, fds, job, procfs, records, signals, wait};

/// Runs the supervisor for `run_dir` and returns its own exit code: 0 once `exit.json`
/// describes the attempt (whatever the job did), 1 if `launch.json` was unusable or
/// `exit.json` could not be written.
pub fn supervise_main(run_dir: &Path, spec_from_stdin: bool) -> i32 {
    let watched = set_up();
    let spec = match if spec_from_stdin { records::read_launch_from_stdin() } else { records::read_launch(run_dir) } {
        Ok(spec) => spec,
        // A spec cut short on the socket means the launcher died while handing it over: nothing
        // ran, and no record must say otherwise, so that a restarted daemon sees an attempt
        // that was never launched and queues the job again.
        Err(_) if spec_from_stdin => return 1,
        Err(e) => {
            let _ = write_exit(run_dir, failed(e.to_string(), None), Durability::Synced);
            return 1;
        }
    };
    run(run_dir, spec, &watched).code
}

/// A supervisor started ahead of its attempt (see [`crate::Standby`]): waits for an order on
/// stdin, runs it like [`supervise_main`], tells the daemon on the same socket once `exit.json`
/// is written, and waits for the next. Exits at the end of its input: 1 if that came before any
/// order (or an order was cut short: its spawner died, or let it go unused; nothing is left
/// behind, since no attempt was given to it), else the last attempt's code.
pub fn supervise_standby() -> i32 {
    let watched = set_up();
    let mut input = std::io::stdin().lock();
    let mut code = 1;
    loop {
        let order = match records::read_order(&mut input) {
            Ok(Some(order)) => order,
            Ok(None) | Err(_) => return code,
        };
        let served = run(&order.run_dir, order.spec, &watched);
        code = served.code;
        // Without an exit record the daemon must see this process gone to know the attempt is
        // over; a process of the attempt that survived its cleanup (stuck in the kernel) must
        // not be this supervisor's child during the next one; and a daemon that is gone sends
        // no more orders.
        if code != 0 || !served.clean || !tell_finished() {
            return code;
        }
        // Nothing of the last attempt stays open into the next.
        fds::close_above_stdio();
    }
}

/// One byte on stdin's socket: this attempt is recorded, send the next order. False if the
/// daemon's end is closed.
fn tell_finished() -> bool {
    // SAFETY: send of one byte from a valid buffer on fd 0; MSG_NOSIGNAL turns a closed peer
    // into EPIPE.
    unsafe { libc::send(0, [b'F'].as_ptr().cast(), 1, libc::MSG_NOSIGNAL) == 1 }
}

/// The signal mask and descriptors every supervisor (and the zygote) starts from.
pub(crate) fn set_up() -> libc::sigset_t {
    let watched = signals::watched();
    // Usually already blocked by `launch`; repeated in case the supervisor was started some
    // other way. Failure is not fatal: it only reopens the races `signals` describes.
    let _ = signals::block(&watched);
    signals::ignore_hangup_and_pipe();

    // Descriptors the spawner leaked (C libraries may open without close-on-exec) are not ours.
    fds::close_above_stdio();
    watched
}

/// What an attempt left its supervisor with.
struct Served {
    /// The supervisor's exit code for it (see [`supervise_main`]).
    code: i32,
    /// Nothing of the attempt is left: its cleanup found no process it could not kill.
    clean: bool,
}

fn run(run_dir: &Path, spec: LaunchSpec, watched: &libc::sigset_t) -> Served {
    // Records are fsynced only when the daemon runs with full durability: after a power loss
    // the job is gone anyway, and a missing record then reads as "supervisor vanished".
    let durability = if spec.sync_records { Durability::Synced } else { Durability::Unsynced };
    // Orphaned descendants of the job re-parent to us instead of init, so that cleanup can
    // find and reap them. Failure only weakens cleanup.
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes integer arguments only.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }

    let me = std::process::id() as i32;
    // Read once per process: a supervisor may serve many attempts.
    static OWN_START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let own_start = *OWN_START.get_or_init(|| procfs::process_start_time(me).unwrap_or(0));
    let identity = |job: Option<(i32, Option<u64>)>, started_at_ms| SupervisorRecord {
        supervisor_pid: me,
        supervisor_start: own_start,
        job_pid: job.map(|(pid, _)| pid),
        job_start: job.and_then(|(_, start)| start),
        started_at_ms,
    };

    if signals::cancel_pending() {
        let _ = atomic::write_json(&run_dir.join(SUPERVISOR_FILE), &identity(None, now_ms()), durability);
        let record = ExitRecord { canceled: true, ..not_started() };
        return served(write_exit(run_dir, record, durability), true);
    }

    // The job's own cgroup, made before it starts: a job that asked to be contained never runs
    // uncontained.
    let cgroup = match spec.cgroup.as_ref().map(Cgroup::create).transpose() {
        Ok(c) => c,
        Err(e) => {
            let _ = atomic::write_json(&run_dir.join(SUPERVISOR_FILE), &identity(None, now_ms()), durability);
            return served(write_exit(run_dir, failed(e, None), durability), true);
        }
    };
    let cgroup_fds = cgroup.as_ref().map(Cgroup::procs_fds).unwrap_or_default();
    let spawning = procfs::boot_clock_ns();
    let job_pid = match job::spawn(&spec, run_dir, &cgroup_fds) {
        Ok(pid) => pid,
        Err(e) => {
            if let Some(c) = cgroup {
                c.finish();
            }
            let _ = atomic::write_json(&run_dir.join(SUPERVISOR_FILE), &identity(None, now_ms()), durability);
            return served(write_exit(run_dir, failed(e.to_string(), e.job_exit_code()), durability), true);
        }
    };
    // The deadline runs on the monotonic clock (Instant is CLOCK_MONOTONIC): wall-clock steps
    // must neither cut a job short nor extend it. A limit too large to represent is none.
    let spawned = Instant::now();
    let deadline = spec.timeout_ms.and_then(|ms| spawned.checked_add(Duration::from_millis(ms)));
    let job_start = procfs::start_time_between(job_pid, spawning, procfs::boot_clock_ns());
    let started_at_ms = now_ms();
    // Without this record a restarted daemon cannot re-adopt the attempt, but the job is
    // already running and still gets supervised and recorded, so carry on.
    let _ = atomic::write_json(
        &run_dir.join(SUPERVISOR_FILE),
        &identity(Some((job_pid, job_start)), started_at_ms),
        durability,
    );

    let grace = Duration::from_millis(spec.kill_grace_ms);
    let lease = spec.lease_file.as_deref().map(Path::new);
    let JobEnd { termination, canceled, timed_out, fenced } =
        wait::wait_for_job(job_pid, grace, deadline, lease, watched);
    let cleanup = cleanup::clear_leftovers(job_pid, watched);
    let clean = cleanup.is_ok();
    // Descendants that left the group and the supervisor's care (double fork + setsid) are
    // still in the cgroup: they go now, and the cgroup with them.
    let oom_killed = cgroup.is_some_and(Cgroup::finish);

    let (exit_code, signal, lost) = match termination {
        Termination::Exited(code) => (Some(code), None, None),
        Termination::Signaled(sig) => (None, Some(sig), None),
        Termination::Lost(e) => (None, None, Some(e)),
    };
    let record = ExitRecord {
        exit_code,
        signal,
        canceled,
        timed_out,
        error: lost.or(cleanup.err()),
        started_at_ms: Some(started_at_ms),
        finished_at_ms: now_ms(),
        oom_killed,
        fenced,
    };
    served(write_exit(run_dir, record, durability), clean)
}

/// The record of a job that was never spawned.
fn not_started() -> ExitRecord {
    ExitRecord {
        exit_code: None,
        signal: None,
        canceled: false,
        timed_out: false,
        error: None,
        started_at_ms: None,
        finished_at_ms: now_ms(),
        oom_killed: false,
        fenced: false,
    }
}

/// The record of a job that could not be started.
fn failed(error: String, exit_code: Option<i32>) -> ExitRecord {
    ExitRecord { exit_code, error: Some(error), ..not_started() }
}

fn write_exit(run_dir: &Path, record: ExitRecord, durability: Durability) -> std::io::Result<()> {
    atomic::write_json(&run_dir.join(EXIT_FILE), &record, durability)
}

/// Exit code 0 once `exit.json` describes the attempt, 1 if it could not be written.
fn served(written: std::io::Result<()>, clean: bool) -> Served {
    Served { code: if written.is_ok() { 0 } else { 1 }, clean }
}
