//! What the job sees (command, environment, working directory, logs) and how its outcome,
//! including failures to start, lands in the run dir.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use ravel_exec::{ExitRecord, procfs};
use support::{Run, spec};

fn run_to_end(spec: &ravel_exec::LaunchSpec) -> (Run, ExitRecord) {
    let mut run = Run::start(spec);
    let exit = run.finish();
    (run, exit)
}

fn make_script(path: &Path, body: &str, mode: u32) {
    fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn exit_code_is_recorded() {
    let (_run, exit) = run_to_end(&spec(&["sh", "-c", "exit 3"], Path::new("/")));
    assert_eq!(exit.exit_code, Some(3));
    assert_eq!(exit.signal, None);
    assert!(!exit.canceled);
    assert_eq!(exit.error, None);
    let started = exit.started_at_ms.expect("job was started");
    assert!(exit.finished_at_ms >= started);
}

#[test]
fn death_by_signal_is_recorded() {
    let (_run, exit) = run_to_end(&spec(&["sh", "-c", "kill -USR1 $$"], Path::new("/")));
    assert_eq!((exit.exit_code, exit.signal), (None, Some(libc::SIGUSR1)));
}

#[test]
fn stdout_and_stderr_land_in_their_logs() {
    let cmd = ["sh", "-c", "echo to-out; echo to-err >&2"];
    let (run, exit) = run_to_end(&spec(&cmd, Path::new("/")));
    assert_eq!(exit.exit_code, Some(0));
    let read = |name| fs::read_to_string(run.path().join(name)).unwrap();
    assert_eq!(read(ravel_exec::STDOUT_FILE), "to-out\n");
    assert_eq!(read(ravel_exec::STDERR_FILE), "to-err\n");
}

#[test]
fn environment_is_exactly_the_given_one() {
    let mut s = spec(&["env"], Path::new("/"));
    s.env.push(("RAVEL_TEST_VAR".to_owned(), "a b=c".to_owned()));
    let (run, exit) = run_to_end(&s);
    assert_eq!(exit.exit_code, Some(0));
    let out = fs::read_to_string(run.path().join(ravel_exec::STDOUT_FILE)).unwrap();
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort_unstable();
    let path_line = format!("PATH={}", support::PATH);
    assert_eq!(lines, vec![path_line.as_str(), "RAVEL_TEST_VAR=a b=c"]);
}

#[test]
fn working_directory_is_used() {
    let cwd = tempfile::tempdir().unwrap();
    let (run, exit) = run_to_end(&spec(&["sh", "-c", "pwd; echo x > here"], cwd.path()));
    assert_eq!(exit.exit_code, Some(0));
    let out = fs::read_to_string(run.path().join(ravel_exec::STDOUT_FILE)).unwrap();
    assert_eq!(out.trim_end(), cwd.path().display().to_string());
    assert!(cwd.path().join("here").is_file());
}

#[test]
fn launch_prepares_the_run_dir() {
    let s = spec(&["true"], Path::new("/"));
    let (run, exit) = run_to_end(&s);
    assert_eq!(exit.exit_code, Some(0));
    assert!(run.path().join(ravel_exec::OUTPUTS_DIR).is_dir());
    // The spec reached the supervisor through its stdin pipe: no file is created for it.
    assert!(!run.path().join(ravel_exec::LAUNCH_FILE).exists());
}

#[test]
fn program_is_looked_up_in_the_jobs_path() {
    let bin = tempfile::tempdir().unwrap();
    make_script(&bin.path().join("ravel-test-tool"), "echo found-it", 0o755);
    let mut s = spec(&["ravel-test-tool"], Path::new("/"));
    s.env = vec![("PATH".to_owned(), format!("{}:/bin", bin.path().display()))];
    let (run, exit) = run_to_end(&s);
    assert_eq!(exit.exit_code, Some(0), "{:?}", exit.error);
    let out = fs::read_to_string(run.path().join(ravel_exec::STDOUT_FILE)).unwrap();
    assert_eq!(out, "found-it\n");
}

#[test]
fn program_outside_the_jobs_path_is_not_found() {
    // `sh` is on the supervisor's PATH but not on the job's.
    let mut s = spec(&["sh", "-c", "exit 0"], Path::new("/"));
    s.env = vec![("PATH".to_owned(), "/nonexistent".to_owned())];
    let (_run, exit) = run_to_end(&s);
    assert_eq!(exit.exit_code, Some(127));
}

#[test]
fn missing_command_is_127_with_the_spawn_error() {
    let (run, exit) = run_to_end(&spec(&["ravel-no-such-program"], Path::new("/")));
    assert_eq!(exit.exit_code, Some(127));
    assert_eq!(
        exit.error.as_deref(),
        Some("cannot run `ravel-no-such-program`: No such file or directory (os error 2)")
    );
    assert_eq!(exit.started_at_ms, None);
    let sup = ravel_exec::read_supervisor(run.path()).expect("supervisor.json");
    assert_eq!((sup.job_pid, sup.job_start), (None, None));
    assert_eq!(sup.supervisor_pid, run.launched.pid);
}

#[test]
fn unexecutable_command_is_126() {
    let dir = tempfile::tempdir().unwrap();
    make_script(&dir.path().join("plain"), "exit 0", 0o644);
    for program in ["plain", "./plain"] {
        let mut s = spec(&[program], dir.path());
        s.env = vec![("PATH".to_owned(), dir.path().display().to_string())];
        let (_run, exit) = run_to_end(&s);
        assert_eq!(exit.exit_code, Some(126), "{program}");
        let error = exit.error.expect("spawn error");
        assert!(error.contains("Permission denied"), "{error}");
    }
}

#[test]
fn missing_working_directory_is_named() {
    let cwd = Path::new("/nonexistent/ravel-exec-cwd");
    let (_run, exit) = run_to_end(&spec(&["true"], cwd));
    assert_eq!(exit.error.as_deref(), Some("working directory /nonexistent/ravel-exec-cwd does not exist"));
    assert_eq!((exit.exit_code, exit.started_at_ms), (None, None));
}

#[test]
fn supervisor_leads_its_own_session_and_the_job_its_own_group() {
    let run = Run::start(&spec(&["sleep", "600"], Path::new("/")));
    let record = run.job();
    let sup = procfs::read_stat(run.launched.pid).expect("supervisor alive");
    assert_eq!(sup.session, sup.pid);
    assert_eq!(record.supervisor_pid, run.launched.pid);
    assert_eq!(record.supervisor_start, run.launched.start_time);
    let job_pid = record.job_pid.unwrap();
    let job = procfs::read_stat(job_pid).expect("job alive");
    assert_eq!((job.pgrp, job.session, job.ppid), (job_pid, sup.pid, sup.pid));
    assert_eq!(record.job_start, Some(job.start_time));
    // Run's Drop kills both.
}

#[test]
fn unreadable_launch_spec_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(ravel_exec::LAUNCH_FILE), "{not json").unwrap();
    let status =
        Command::new(support::supervisor_exe()).arg(ravel_exec::SUPERVISE_SUBCOMMAND).arg(dir.path()).status().unwrap();
    assert_eq!(status.code(), Some(1));
    let exit = ravel_exec::read_exit(dir.path()).expect("exit.json");
    let error = exit.error.expect("error");
    let launch_path = dir.path().join(ravel_exec::LAUNCH_FILE);
    assert!(error.starts_with(&format!("malformed {}", launch_path.display())), "{error}");
    assert_eq!(exit.exit_code, None);
}

#[test]
fn empty_command_is_rejected_by_launch() {
    let dir = tempfile::tempdir().unwrap();
    let err = ravel_exec::launch(&support::supervisor_exe(), dir.path(), &spec(&[], Path::new("/"))).unwrap_err();
    assert!(err.to_string().contains(&dir.path().display().to_string()));
}

#[test]
fn inheritable_descriptors_of_the_caller_do_not_reach_the_job() {
    const LEAKY_FD: i32 = 917;
    // SAFETY: dup2 onto an unused descriptor number; no close-on-exec flag, on purpose.
    let fd = unsafe { libc::dup2(1, LEAKY_FD) };
    assert_eq!(fd, LEAKY_FD);
    let (run, exit) = run_to_end(&spec(&["sh", "-c", "ls /proc/$$/fd"], Path::new("/")));
    // SAFETY: closing the descriptor this test opened.
    unsafe { libc::close(LEAKY_FD) };
    assert_eq!(exit.exit_code, Some(0));
    let out = fs::read_to_string(run.path().join(ravel_exec::STDOUT_FILE)).unwrap();
    let fds: Vec<&str> = out.lines().collect();
    assert!(fds.contains(&"1"), "{fds:?}");
    assert!(!fds.contains(&"917"), "{fds:?}");
}

#[test]
fn a_job_starts_with_default_signals_an_empty_mask_its_umask_and_its_environment() {
    // The supervisor ignores SIGHUP and SIGPIPE and blocks SIGTERM, SIGINT and SIGCHLD; none
    // of that reaches the job. The shell reads its own status itself: a child (grep) reading it
    // could catch the shell between blocking every signal around a fork and its wait.
    let dir = tempfile::tempdir().unwrap();
    let script = "while read -r l; do case $l in SigBlk*|SigIgn*) echo \"$l\";; esac; done < /proc/$$/status; \
                  umask; pwd; echo \"$A|$B\"";
    let mut s = spec(&["sh", "-c", script], dir.path());
    s.umask = Some(0o027);
    s.env.extend([("A".to_owned(), "first".to_owned()), ("B".to_owned(), "b".to_owned())]);
    s.env.push(("A".to_owned(), "last".to_owned()));
    let (run, exit) = run_to_end(&s);
    assert_eq!(exit.exit_code, Some(0));
    let out = fs::read_to_string(run.path().join(ravel_exec::STDOUT_FILE)).unwrap();
    let mut lines = out.lines();
    let mask = |line: Option<&str>, name: &str| {
        let hex = line.and_then(|l| l.strip_prefix(name)).unwrap_or_else(|| panic!("no {name} in {out:?}"));
        u64::from_str_radix(hex.trim(), 16).unwrap()
    };
    assert_eq!(mask(lines.next(), "SigBlk:"), 0, "{out}");
    // The standard signals (1-31). glibc's posix_spawn leaves its own two (32, 33) ignored; any
    // program on glibc sets them up again at its start.
    assert_eq!(mask(lines.next(), "SigIgn:") & 0x7fff_ffff, 0, "{out}");
    let rest: Vec<&str> = lines.collect();
    assert_eq!(rest, ["0027", &dir.path().display().to_string(), "last|b"]);
}
