//! Cancellation, cleanup of everything a job leaves behind, jobs outliving a dead
//! supervisor, and the process-identity and notification primitives the daemon relies on.

mod support;

use std::fs;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ravel_exec::{is_same_process, procfs, request_cancel};
use support::{DEADLINE, Run, live_members, sleepers, spec, supervisor_exe, wait_for};

fn assert_all_gone(pids: &[(i32, u64)]) {
    for &(pid, start) in pids {
        assert!(!is_same_process(pid, start), "process {pid} survived");
    }
}

#[test]
fn cancel_kills_the_whole_group() {
    let mut run = Run::start(&spec(&["sh", "-c", "sleep 600 & sleep 600"], Path::new("/")));
    let job = run.job().job_pid.unwrap();
    let sleeps = wait_for("both sleeps", || {
        let s = sleepers(job);
        (s.len() == 2).then_some(s)
    });
    let sup = run.launched;
    assert!(request_cancel(sup.pid, sup.start_time).unwrap());
    let exit = run.finish();
    assert!(exit.canceled);
    assert_eq!(exit.signal, Some(libc::SIGTERM));
    assert_eq!(exit.error, None);
    assert_all_gone(&sleeps);
    assert!(procfs::group_members(job).is_empty(), "group {job} not empty");
    assert!(!request_cancel(sup.pid, sup.start_time).unwrap());
}

#[test]
fn job_ignoring_sigterm_is_killed_after_the_grace_period() {
    let mut s = spec(&["sh", "-c", "trap '' TERM; sleep 600"], Path::new("/"));
    s.kill_grace_ms = 200;
    let mut run = Run::start(&s);
    let job = run.job().job_pid.unwrap();
    let sleeps = wait_for("the sleep", || {
        let s = sleepers(job);
        (s.len() == 1).then_some(s)
    });
    let asked = Instant::now();
    assert!(request_cancel(run.launched.pid, run.launched.start_time).unwrap());
    let exit = run.finish();
    let took = asked.elapsed();
    assert!(exit.canceled);
    assert_eq!(exit.signal, Some(libc::SIGKILL));
    assert!(took >= Duration::from_millis(200), "killed after {took:?}");
    assert!(took < Duration::from_secs(3), "killed after {took:?}");
    assert_all_gone(&sleeps);
    assert!(procfs::group_members(job).is_empty());
}

#[test]
fn background_child_of_a_finished_job_is_killed() {
    let cwd = tempfile::tempdir().unwrap();
    let cmd = ["sh", "-c", "sleep 600 & echo $! > bg.pid; exit 0"];
    let mut run = Run::start(&spec(&cmd, cwd.path()));
    let exit = run.finish();
    assert_eq!(exit.exit_code, Some(0));
    assert!(!exit.canceled);
    let bg: i32 = fs::read_to_string(cwd.path().join("bg.pid")).unwrap().trim().parse().unwrap();
    assert!(procfs::read_stat(bg).is_none(), "background sleep {bg} survived");
    let job = ravel_exec::read_supervisor(run.path()).unwrap().job_pid.unwrap();
    assert!(procfs::group_members(job).is_empty());
}

#[test]
fn descendant_that_left_the_group_is_killed() {
    let cwd = tempfile::tempdir().unwrap();
    // setsid moves the sleep into a new session and group, out of reach of killpg; once
    // the job's shell exits it is re-parented to the supervisor (child subreaper).
    let script = "setsid sleep 600 & echo $! > esc.pid; \
                  while [ \"$(ps -o sid= -p $!)\" = \"$(ps -o sid= -p $$)\" ]; do sleep 0.01; done; \
                  exit 0";
    let mut run = Run::start(&spec(&["sh", "-c", script], cwd.path()));
    let escaped: i32 = wait_for("esc.pid", || fs::read_to_string(cwd.path().join("esc.pid")).ok()?.trim().parse().ok());
    run.also_kill(escaped);
    let exit = run.finish();
    assert_eq!(exit.exit_code, Some(0));
    assert_eq!(exit.error, None);
    assert!(procfs::read_stat(escaped).is_none(), "escaped sleep {escaped} survived");
}

#[test]
fn cancel_right_after_launch_starts_nothing_or_kills_it() {
    let mut run = Run::start(&spec(&["sleep", "600"], Path::new("/")));
    assert!(request_cancel(run.launched.pid, run.launched.start_time).unwrap());
    let exit = run.finish();
    assert!(exit.canceled);
    if let Some(job) = ravel_exec::read_supervisor(run.path()).and_then(|r| r.job_pid) {
        assert!(procfs::group_members(job).is_empty());
    }
}

#[test]
fn cancel_pending_at_start_spawns_nothing() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let s = spec(&["sh", "-c", "echo ran > ran"], cwd.path());
    fs::write(dir.path().join(ravel_exec::LAUNCH_FILE), serde_json::to_vec(&s).unwrap()).unwrap();
    let mut command = Command::new(support::supervisor_exe());
    command.arg(ravel_exec::SUPERVISE_SUBCOMMAND).arg(dir.path());
    // SAFETY: only async-signal-safe calls. A blocked, raised SIGTERM stays pending across
    // exec: the supervisor starts with a cancel request already waiting.
    unsafe {
        command.pre_exec(|| {
            let mut set = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            libc::raise(libc::SIGTERM);
            Ok(())
        });
    }
    let status = command.status().unwrap();
    assert_eq!(status.code(), Some(0));
    let exit = ravel_exec::read_exit(dir.path()).expect("exit.json");
    assert!(exit.canceled);
    assert_eq!((exit.exit_code, exit.signal, exit.started_at_ms), (None, None, None));
    let sup = ravel_exec::read_supervisor(dir.path()).expect("supervisor.json");
    assert_eq!(sup.job_pid, None);
    assert!(!cwd.path().join("ran").exists());
}

#[test]
fn job_outlives_a_killed_supervisor() {
    let mut run = Run::start(&spec(&["sleep", "600"], Path::new("/")));
    let record = run.job();
    let (job, job_start) = (record.job_pid.unwrap(), record.job_start.unwrap());
    // SAFETY: plain kill of our own child.
    unsafe { libc::kill(run.launched.pid, libc::SIGKILL) };
    let _ = run.finish_without_record();
    std::thread::sleep(Duration::from_millis(100));
    assert!(is_same_process(job, job_start), "job died with its supervisor");
    assert_eq!(ravel_exec::read_exit(run.path()), None);
    assert!(ravel_exec::kill_group_and_wait(job, DEADLINE));
    assert!(live_members(job).is_empty());
    assert!(!is_same_process(job, job_start));
}

#[test]
fn pidfd_becomes_readable_when_the_supervisor_exits() {
    let mut run = Run::start(&spec(&["sleep", "0.3"], Path::new("/")));
    let fd = ravel_exec::pidfd_open(run.launched.pid).unwrap();
    let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    assert_eq!(unsafe { libc::poll(&mut pfd, 1, 0) }, 0, "readable too early");
    let timeout_ms = DEADLINE.as_millis() as i32;
    // SAFETY: one valid pollfd.
    assert_eq!(unsafe { libc::poll(&mut pfd, 1, timeout_ms) }, 1);
    assert_ne!(pfd.revents & libc::POLLIN, 0);
    // Readable means exited, and exit.json is written before that.
    assert_eq!(ravel_exec::read_exit(run.path()).map(|e| e.exit_code), Some(Some(0)));
    run.finish();
}

#[test]
fn pidfd_open_of_a_missing_process_fails() {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id() as i32;
    child.wait().unwrap();
    assert!(ravel_exec::pidfd_open(pid).is_err());
}

#[test]
fn identity_of_live_dead_and_zombie_processes() {
    let me = std::process::id() as i32;
    let start = ravel_exec::process_start_time(me).unwrap();
    assert!(is_same_process(me, start));
    assert!(!is_same_process(me, start + 1));

    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id() as i32;
    dead.wait().unwrap();
    assert_eq!(ravel_exec::process_start_time(dead_pid), None);

    let mut zombie = Command::new("true").spawn().unwrap();
    let zombie_pid = zombie.id() as i32;
    let stat = wait_for("a zombie", || procfs::read_stat(zombie_pid).filter(|s| s.is_zombie()));
    assert_eq!(ravel_exec::process_start_time(zombie_pid), Some(stat.start_time));
    assert!(!is_same_process(zombie_pid, stat.start_time));
    ravel_exec::reap(zombie_pid);
    assert_eq!(ravel_exec::process_start_time(zombie_pid), None);
    // Already reaped: std's wait now sees ECHILD, which is fine.
    let _ = zombie.wait();
}

#[test]
fn kill_group_and_wait_refuses_dangerous_groups() {
    // SAFETY: getpgrp cannot fail.
    let own = unsafe { libc::getpgrp() };
    assert!(!ravel_exec::kill_group_and_wait(own, Duration::ZERO));
    assert!(!ravel_exec::kill_group_and_wait(1, Duration::ZERO));
    assert!(!ravel_exec::kill_group_and_wait(0, Duration::ZERO));
}

#[test]
fn records_read_as_absent_when_missing_or_malformed() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(ravel_exec::read_exit(dir.path()), None);
    assert_eq!(ravel_exec::read_supervisor(dir.path()), None);
    fs::write(dir.path().join(ravel_exec::EXIT_FILE), "{").unwrap();
    assert_eq!(ravel_exec::read_exit(dir.path()), None);
}

#[test]
fn a_standby_supervisor_runs_the_attempt_it_is_handed() {
    let cwd = tempfile::tempdir().unwrap();
    let mut run = Run::start_on_standby(&spec(&["sh", "-c", "echo from-standby; echo oops >&2; exit 3"], cwd.path()));
    let record = run.finish();
    assert_eq!(record.exit_code, Some(3));
    assert_eq!(std::fs::read_to_string(run.path().join(ravel_exec::STDOUT_FILE)).unwrap(), "from-standby\n");
    assert_eq!(std::fs::read_to_string(run.path().join(ravel_exec::STDERR_FILE)).unwrap(), "oops\n");
    assert!(run.path().join(ravel_exec::OUTPUTS_DIR).is_dir());
    let sup = ravel_exec::read_supervisor(run.path()).expect("supervisor.json");
    assert_eq!((sup.supervisor_pid, sup.supervisor_start), (run.launched.pid, run.launched.start_time));
}

#[test]
fn a_standby_let_go_exits_without_running_anything() {
    let standby = ravel_exec::Standby::spawn(&supervisor_exe()).expect("spawn a standby supervisor");
    let pid = standby.launched().pid;
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(ravel_exec::is_same_process(pid, standby.launched().start_time), "it waits for an order");
    drop(standby);
    let status = wait_for("the standby to exit", || {
        let mut status = 0;
        // SAFETY: valid out pointer; `pid` is our child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        (r == pid).then_some(status)
    });
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 1, "status {status:#x}");
}

#[test]
fn a_standby_handed_a_bad_run_dir_gets_nothing() {
    let standby = ravel_exec::Standby::spawn(&supervisor_exe()).expect("spawn a standby supervisor");
    let pid = standby.launched().pid;
    let file = tempfile::NamedTempFile::new().unwrap();
    // A run dir below a regular file cannot be made.
    let err = standby.hand_over(&file.path().join("run"), &spec(&["true"], Path::new("/"))).unwrap_err();
    assert!(err.to_string().contains("cannot create directory"), "{err}");
    let mut status = 0;
    // SAFETY: valid out pointer; `pid` is our child, which exits on the end of its input.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 1, "status {status:#x}");
}

#[test]
fn a_zygote_forks_standbys_that_run_their_attempts_and_exits_with_its_caller() {
    let zygote = ravel_exec::Zygote::spawn(&supervisor_exe()).expect("spawn the zygote");
    let zygote_pid = zygote.pid();
    let cwd = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut launched = vec![];
    for (i, dir) in dirs.iter().enumerate() {
        let standby = zygote.standby().expect("a standby from the zygote");
        assert!(!standby.is_child(), "the zygote's child, not ours");
        launched.push(standby.launched());
        let script = format!("echo zygote-{i}; exit {}", 10 + i);
        standby.hand_over(dir.path(), &spec(&["sh", "-c", &script], cwd.path())).unwrap();
    }
    assert_ne!(launched[0].pid, launched[1].pid);
    for (i, dir) in dirs.iter().enumerate() {
        let record = wait_for("exit.json", || ravel_exec::read_exit(dir.path()));
        assert_eq!(record.exit_code, Some(10 + i as i32));
        let out = fs::read_to_string(dir.path().join(ravel_exec::STDOUT_FILE)).unwrap();
        assert_eq!(out, format!("zygote-{i}\n"));
        let sup = ravel_exec::read_supervisor(dir.path()).unwrap();
        assert_eq!((sup.supervisor_pid, sup.supervisor_start), (launched[i].pid, launched[i].start_time));
        // Its own session, not the zygote's.
        let stat = procfs::read_stat(sup.job_pid.unwrap());
        assert!(stat.is_none_or(|s| s.session == launched[i].pid), "{stat:?}");
    }
    // Reaped by the kernel once done (the zygote ignores SIGCHLD): nothing lingers as a zombie.
    for l in &launched {
        wait_for("the standby to be gone", || (!is_same_process(l.pid, l.start_time)).then_some(()));
    }
    // A standby waits while it is held; let go, it exits; the zygote exits when its caller
    // drops it. (Held in a variable: a temporary would be let go at once, and the standby could
    // be gone before the first look.)
    let standby = zygote.standby().unwrap();
    let unused = standby.launched();
    wait_for("the unused standby to wait", || is_same_process(unused.pid, unused.start_time).then_some(()));
    drop(standby);
    wait_for("the unused standby to exit", || (!is_same_process(unused.pid, unused.start_time)).then_some(()));
    drop(zygote);
    let mut status = 0;
    // SAFETY: valid out pointer; the zygote is our child.
    assert_eq!(unsafe { libc::waitpid(zygote_pid, &mut status, 0) }, zygote_pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "status {status:#x}");
}

#[test]
fn a_supervisor_serves_attempts_one_after_another_until_let_go() {
    let standby = ravel_exec::Standby::spawn(&supervisor_exe()).expect("spawn a standby supervisor");
    let me = standby.launched();
    let cwd = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut serving = Some(standby);
    for (i, dir) in dirs.iter().enumerate() {
        let script = format!("echo attempt-{i}; exit {}", 20 + i);
        let s = serving.take().unwrap().hand_over(dir.path(), &spec(&["sh", "-c", &script], cwd.path())).unwrap();
        // Nothing to read while the attempt runs; once it is recorded, one byte says so.
        let finished = wait_for("the attempt to be recorded", || match s.finished() {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("reading the supervisor's socket: {e}"),
        });
        assert_eq!(finished, ravel_exec::Finished::Ready);
        let record = ravel_exec::read_exit(dir.path()).expect("exit.json written before it says so");
        assert_eq!(record.exit_code, Some(20 + i as i32));
        assert_eq!(fs::read_to_string(dir.path().join(ravel_exec::STDOUT_FILE)).unwrap(), format!("attempt-{i}\n"));
        let sup = ravel_exec::read_supervisor(dir.path()).unwrap();
        assert_eq!((sup.supervisor_pid, sup.supervisor_start), (me.pid, me.start_time), "the same process");
        assert!(is_same_process(me.pid, me.start_time), "it waits for the next order");
        serving = Some(s);
    }
    // Let go after serving: it exits 0 (its last attempt is recorded), leaving nothing open.
    drop(serving);
    let mut status = 0;
    // SAFETY: valid out pointer; the standby is our child.
    assert_eq!(unsafe { libc::waitpid(me.pid, &mut status, 0) }, me.pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "status {status:#x}");
}

#[test]
fn a_supervisor_let_go_while_it_serves_finishes_that_attempt_first() {
    let standby = ravel_exec::Standby::spawn(&supervisor_exe()).expect("spawn a standby supervisor");
    let me = standby.launched();
    let dir = tempfile::tempdir().unwrap();
    let serving = standby.hand_over(dir.path(), &spec(&["sh", "-c", "sleep 0.3; exit 4"], Path::new("/"))).unwrap();
    drop(serving);
    let mut status = 0;
    // SAFETY: valid out pointer; the standby is our child.
    assert_eq!(unsafe { libc::waitpid(me.pid, &mut status, 0) }, me.pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "status {status:#x}");
    assert_eq!(ravel_exec::read_exit(dir.path()).expect("exit.json").exit_code, Some(4));
}
