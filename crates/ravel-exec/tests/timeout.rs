//! Job timeouts, enforced by the supervisor itself: a job that outruns `timeout_ms` is ended
//! like a canceled one (SIGTERM to its group, SIGKILL after the grace period) and recorded as
//! timed out.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use ravel_exec::{is_same_process, procfs, request_cancel};
use support::{Run, sleepers, spec, wait_for};

fn with_timeout(command: &[&str], timeout_ms: u64) -> ravel_exec::LaunchSpec {
    let mut s = spec(command, Path::new("/"));
    s.timeout_ms = Some(timeout_ms);
    s
}

#[test]
fn job_past_its_timeout_is_terminated() {
    let started = Instant::now();
    let mut run = Run::start(&with_timeout(&["sleep", "600"], 300));
    let job = run.job().job_pid.unwrap();
    let exit = run.finish();
    let took = started.elapsed();
    assert!(exit.timed_out);
    assert!(!exit.canceled);
    assert_eq!((exit.exit_code, exit.signal), (None, Some(libc::SIGTERM)));
    assert_eq!(exit.error, None);
    assert!(took >= Duration::from_millis(300), "ended after {took:?}");
    assert!(took < Duration::from_secs(5), "ended after {took:?}");
    assert!(procfs::group_members(job).is_empty(), "group {job} not empty");
}

#[test]
fn timed_out_job_ignoring_sigterm_is_killed_after_the_grace_period() {
    let mut s = with_timeout(&["sh", "-c", "trap '' TERM; sleep 600"], 200);
    s.kill_grace_ms = 200;
    let started = Instant::now();
    let mut run = Run::start(&s);
    let job = run.job().job_pid.unwrap();
    let sleeps = wait_for("the sleep", || {
        let s = sleepers(job);
        (s.len() == 1).then_some(s)
    });
    let exit = run.finish();
    let took = started.elapsed();
    assert!(exit.timed_out);
    assert!(!exit.canceled);
    assert_eq!((exit.exit_code, exit.signal), (None, Some(libc::SIGKILL)));
    assert!(took >= Duration::from_millis(400), "killed after {took:?}");
    assert!(took < Duration::from_secs(5), "killed after {took:?}");
    for (pid, start) in sleeps {
        assert!(!is_same_process(pid, start), "sleep {pid} survived");
    }
    assert!(procfs::group_members(job).is_empty(), "group {job} not empty");
}

#[test]
fn job_finishing_before_its_timeout_is_not_timed_out() {
    let started = Instant::now();
    let mut run = Run::start(&with_timeout(&["true"], 10_000));
    let exit = run.finish();
    assert!(!exit.timed_out);
    assert!(!exit.canceled);
    assert_eq!((exit.exit_code, exit.signal), (Some(0), None));
    // The supervisor left as soon as the job did, not at the deadline.
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn cancel_before_the_timeout_is_a_cancel() {
    let mut run = Run::start(&with_timeout(&["sleep", "600"], 10_000));
    let job = run.job().job_pid.unwrap();
    wait_for("the sleep", || (sleepers(job).len() == 1).then_some(()));
    let sup = run.launched;
    assert!(request_cancel(sup.pid, sup.start_time).unwrap());
    let exit = run.finish();
    assert!(exit.canceled);
    assert!(!exit.timed_out);
    assert_eq!(exit.signal, Some(libc::SIGTERM));
    assert!(procfs::group_members(job).is_empty(), "group {job} not empty");
}

#[test]
fn records_without_the_timeout_fields_still_parse() {
    // Written by a supervisor or daemon from before timeouts existed.
    let spec: ravel_exec::LaunchSpec =
        serde_json::from_str(r#"{"command":["true"],"cwd":"/","env":[],"kill_grace_ms":5}"#).unwrap();
    assert_eq!(spec.timeout_ms, None);
    let dir = tempfile::tempdir().unwrap();
    let old = r#"{"exit_code":0,"signal":null,"canceled":false,"error":null,"started_at_ms":1,"finished_at_ms":2}"#;
    std::fs::write(dir.path().join(ravel_exec::EXIT_FILE), old).unwrap();
    let exit = ravel_exec::read_exit(dir.path()).expect("old exit.json reads");
    assert!(!exit.timed_out);
}

/// Self-fencing: a job whose node lost its lease (the agent stopped pushing the deadline in the
/// lease file forward) is killed at once, without waiting for the grace period.
#[test]
fn job_whose_lease_runs_out_is_killed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let lease = dir.path().join("lease");
    let renew = |ms_ahead: i64| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        std::fs::write(&lease, (now + ms_ahead).to_string()).unwrap();
    };
    renew(600);
    let mut s = spec(&["sh", "-c", "trap '' TERM; sleep 600"], Path::new("/"));
    s.kill_grace_ms = 60_000;
    s.lease_file = Some(lease.display().to_string());
    let started = Instant::now();
    let mut run = Run::start(&s);
    let job = run.job().job_pid.unwrap();
    // Renewed while it runs: the job lives on past the first deadline.
    std::thread::sleep(Duration::from_millis(300));
    renew(700);
    std::thread::sleep(Duration::from_millis(500));
    assert!(is_same_process(job, procfs::process_start_time(job).unwrap()), "killed while its lease held");
    let exit = run.finish();
    let took = started.elapsed();
    assert!(exit.fenced, "{exit:?}");
    assert!(!exit.canceled && !exit.timed_out);
    assert_eq!(exit.signal, Some(libc::SIGKILL));
    assert!(took >= Duration::from_millis(950), "ended after {took:?}");
    assert!(took < Duration::from_secs(5), "ended after {took:?}: not at once");
    assert!(procfs::group_members(job).is_empty(), "group {job} not empty");
}

#[test]
fn a_missing_lease_file_fences_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(&["sleep", "600"], Path::new("/"));
    s.lease_file = Some(dir.path().join("none").display().to_string());
    let exit = Run::start(&s).finish();
    assert!(exit.fenced);
}
