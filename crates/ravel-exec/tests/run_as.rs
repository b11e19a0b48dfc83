//! System mode: a root supervisor runs the job as its submitter, in a run dir that becomes the
//! submitter's, and never writes through (or reads through) what that user planted there.

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use ravel_exec::{ExitRecord, LaunchSpec, RunAs, STDERR_FILE, STDOUT_FILE};
use support::system::{self, ALICE, BOB, RunAsUser, User, chown, root_or_skip};
use support::{Run, spec};

fn run_to_end(spec: &LaunchSpec) -> (Run, ExitRecord) {
    let mut run = Run::start(spec);
    let exit = run.finish();
    (run, exit)
}

fn as_alice(command: &[&str], cwd: &Path) -> (User, LaunchSpec) {
    let alice = system::ensure_user(ALICE);
    let mut s = spec(command, cwd);
    s.run_as = Some(alice.run_as());
    (alice, s)
}

fn owner_and_mode(path: &Path) -> (u32, u32, u32) {
    let m = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

#[test]
fn the_job_runs_as_the_user_with_their_groups_environment_and_umask() {
    if !root_or_skip("the_job_runs_as_the_user_with_their_groups_environment_and_umask") {
        return;
    }
    let lab = system::ensure_lab_group();
    let cwd = tempfile::tempdir().unwrap();
    let script = "id -u; id -g; id -G; echo \"$HOME $USER $LOGNAME\"; umask; echo made > made-here; echo oops >&2";
    let (alice, mut s) = as_alice(&["sh", "-c", script], cwd.path());
    chown(cwd.path(), &alice);
    // The passwd entry wins over whatever the spec says.
    s.env.extend([("HOME", "/root"), ("USER", "root"), ("LOGNAME", "root")].map(|(k, v)| (k.into(), v.into())));
    s.umask = Some(0o027);
    let (run, exit) = run_to_end(&s);
    assert_eq!((exit.exit_code, exit.error.as_deref()), (Some(0), None));

    let out = fs::read_to_string(run.path().join(STDOUT_FILE)).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert_eq!(lines[0], alice.uid.to_string());
    assert_eq!(lines[1], alice.gid.to_string());
    let groups: Vec<u32> = lines[2].split_whitespace().map(|g| g.parse().unwrap()).collect();
    assert!(groups.contains(&alice.gid) && groups.contains(&lab), "{groups:?}");
    assert!(!groups.contains(&0), "root's group leaked: {groups:?}");
    assert_eq!(lines[3], format!("{} {ALICE} {ALICE}", alice.home));
    assert_eq!(lines[4], "0027");

    let made = cwd.path().join("made-here");
    assert_eq!(owner_and_mode(&made), (alice.uid, alice.gid, 0o640));
    for log in [STDOUT_FILE, STDERR_FILE] {
        assert_eq!(owner_and_mode(&run.path().join(log)), (alice.uid, alice.gid, 0o600), "{log}");
    }
    assert_eq!(fs::read_to_string(run.path().join(STDERR_FILE)).unwrap(), "oops\n");
    for dir in [run.path().to_owned(), run.path().join(ravel_exec::OUTPUTS_DIR)] {
        assert_eq!(owner_and_mode(&dir), (alice.uid, alice.gid, 0o700), "{}", dir.display());
    }
    // The records are the root supervisor's.
    assert_eq!(owner_and_mode(&run.path().join(ravel_exec::EXIT_FILE)).0, 0);
}

#[test]
fn umask_applies_without_run_as_too() {
    let (run, exit) = {
        let mut s = spec(&["sh", "-c", "umask"], Path::new("/"));
        s.umask = Some(0o077);
        run_to_end(&s)
    };
    assert_eq!(exit.exit_code, Some(0));
    assert_eq!(fs::read_to_string(run.path().join(STDOUT_FILE)).unwrap(), "0077\n");
}

#[test]
fn a_cwd_the_user_cannot_enter_fails_the_attempt() {
    if !root_or_skip("a_cwd_the_user_cannot_enter_fails_the_attempt") {
        return;
    }
    // Root's, mode 0700. Below it, whether a path exists is none of alice's business: a missing
    // one reads the same.
    let private = tempfile::tempdir().unwrap();
    fs::set_permissions(private.path(), fs::Permissions::from_mode(0o700)).unwrap();
    fs::create_dir(private.path().join("exists")).unwrap();
    for cwd in [private.path().to_owned(), private.path().join("exists"), private.path().join("missing")] {
        let (_alice, s) = as_alice(&["true"], &cwd);
        let (_run, exit) = run_to_end(&s);
        let want =
            format!("cannot enter working directory {} as {ALICE}: Permission denied (os error 13)", cwd.display());
        assert_eq!(exit.error.as_deref(), Some(want.as_str()), "{exit:?}");
        assert_eq!((exit.exit_code, exit.started_at_ms), (None, None));
    }
}

#[test]
fn a_missing_cwd_reads_as_missing_to_the_user() {
    if !root_or_skip("a_missing_cwd_reads_as_missing_to_the_user") {
        return;
    }
    let (_alice, s) = as_alice(&["true"], Path::new("/nonexistent/ravel-exec-cwd"));
    let (_run, exit) = run_to_end(&s);
    assert_eq!(exit.error.as_deref(), Some("working directory /nonexistent/ravel-exec-cwd does not exist"));
}

#[test]
fn a_user_without_a_passwd_entry_is_refused() {
    if !root_or_skip("a_user_without_a_passwd_entry_is_refused") {
        return;
    }
    let mut s = spec(&["true"], Path::new("/"));
    s.run_as = Some(RunAs { uid: 3_999_999, gid: 3_999_999, user: "ravel-no-such-user".into() });
    let (_run, exit) = run_to_end(&s);
    assert_eq!(exit.error.as_deref(), Some("cannot run as ravel-no-such-user: no such user in /etc/passwd"));
    assert_eq!((exit.exit_code, exit.started_at_ms), (None, None));
}

#[test]
fn a_program_the_user_may_not_execute_is_126() {
    if !root_or_skip("a_program_the_user_may_not_execute_is_126") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let tool = dir.path().join("root-only");
    fs::write(&tool, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&tool, fs::Permissions::from_mode(0o700)).unwrap();
    let (_alice, s) = as_alice(&[tool.to_str().unwrap()], Path::new("/"));
    let (_run, exit) = run_to_end(&s);
    assert_eq!(exit.exit_code, Some(126));
    let want = format!("cannot run `{}`: Permission denied (os error 13)", tool.display());
    assert_eq!(exit.error.as_deref(), Some(want.as_str()));
}

/// A root-owned file with known content and mtime, for a planted link to point at.
struct Target {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    before: fs::Metadata,
}

impl Target {
    fn new() -> Target {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("precious");
        fs::write(&path, "root's secret\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let before = fs::metadata(&path).unwrap();
        Target { _dir: dir, path, before }
    }

    fn assert_untouched(&self) {
        let now = fs::metadata(&self.path).unwrap();
        assert_eq!(fs::read_to_string(&self.path).unwrap(), "root's secret\n");
        assert_eq!((now.uid(), now.gid(), now.mode(), now.len()), (0, 0, self.before.mode(), self.before.len()));
        assert_eq!(now.modified().unwrap(), self.before.modified().unwrap());
    }
}

#[test]
fn links_planted_in_place_of_a_log_are_refused_and_their_targets_untouched() {
    if !root_or_skip("links_planted_in_place_of_a_log_are_refused_and_their_targets_untouched") {
        return;
    }
    let symlink: fn(&Path, &Path) = |target, at| std::os::unix::fs::symlink(target, at).unwrap();
    let hard_link: fn(&Path, &Path) = |target, at| fs::hard_link(target, at).unwrap();
    let links_refused = "it is a symbolic link, and links are never followed";
    let cases = [
        (STDOUT_FILE, symlink, links_refused),
        (STDERR_FILE, symlink, links_refused),
        (STDOUT_FILE, hard_link, "it has 2 hard links, so it may be another file's name too"),
    ];
    for (log, plant, why) in cases {
        let target = Target::new();
        let (_alice, s) = as_alice(&["true"], Path::new("/"));
        let mut run = Run::start_with(&s, |dir| plant(&target.path, &dir.join(log)));
        let exit = run.finish();
        let want = format!("cannot open job log {}: {why}", run.path().join(log).display());
        assert_eq!(exit.error.as_deref(), Some(want.as_str()));
        // Never started.
        assert_eq!((exit.exit_code, exit.started_at_ms), (None, None));
        target.assert_untouched();
    }
}

#[test]
fn a_fifo_planted_in_place_of_a_log_does_not_hang_the_supervisor() {
    let marker = tempfile::tempdir().unwrap();
    let cmd = format!("echo ran > {}/ran", marker.path().display());
    let s = spec(&["sh", "-c", &cmd], Path::new("/"));
    // `finish` gives up (and fails the test) after support::DEADLINE.
    let mut run = Run::start_with(&s, |dir| mkfifo(&dir.join(STDOUT_FILE)));
    let exit = run.finish();
    let want = format!("cannot open job log {}: not a regular file", run.path().join(STDOUT_FILE).display());
    assert_eq!(exit.error.as_deref(), Some(want.as_str()));
    assert!(!marker.path().join("ran").exists(), "the job ran");
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
}

/// Runs `open_log_for_reading` on another thread, so that a regression that blocks (on a FIFO)
/// fails the test instead of hanging it.
fn open_for_reading(path: &Path, owner: Option<u32>) -> Result<fs::File, String> {
    let (tx, rx) = mpsc::channel();
    let path = path.to_owned();
    std::thread::spawn(move || {
        let _ = tx.send(ravel_exec::open_log_for_reading(&path, owner).map_err(|e| e.to_string()));
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("open_log_for_reading blocked")
}

#[test]
fn open_log_for_reading_refuses_links_fifos_and_directories() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stdout.log");
    fs::write(&log, "hello\n").unwrap();
    let mut f = open_for_reading(&log, None).unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut f, &mut text).unwrap();
    assert_eq!(text, "hello\n");

    let link = dir.path().join("link.log");
    std::os::unix::fs::symlink(&log, &link).unwrap();
    let err = open_for_reading(&link, None).unwrap_err();
    assert_eq!(err, format!("{} is a symbolic link, not a log", link.display()));

    let fifo = dir.path().join("fifo.log");
    mkfifo(&fifo);
    let err = open_for_reading(&fifo, None).unwrap_err();
    assert_eq!(err, format!("{} is not a regular file", fifo.display()));

    let err = open_for_reading(dir.path(), None).unwrap_err();
    assert_eq!(err, format!("{} is not a regular file", dir.path().display()));
    assert!(open_for_reading(&dir.path().join("missing.log"), None).is_err());

    // A log still the reader's own has not been handed to the job's user yet: nothing to read
    // so far (a follower waits), which is not the refusal a file of another user gets.
    // SAFETY: geteuid cannot fail.
    let other = unsafe { libc::geteuid() } + 1;
    let err = ravel_exec::open_log_for_reading(&log, Some(other)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock, "{err}");
}

#[test]
fn open_log_for_reading_refuses_a_file_of_another_owner() {
    if !root_or_skip("open_log_for_reading_refuses_a_file_of_another_owner") {
        return;
    }
    let alice = system::ensure_user(ALICE);
    let bob = system::ensure_user(BOB);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stdout.log");
    fs::write(&log, "alice's output\n").unwrap();
    chown(&log, &alice);
    assert!(open_for_reading(&log, Some(alice.uid)).is_ok());
    let err = open_for_reading(&log, Some(bob.uid)).unwrap_err();
    assert_eq!(err, format!("{} belongs to uid {}, not to the job's user (uid {})", log.display(), alice.uid, bob.uid));
    // A hard link alice made to a root file is still root's file.
    let root_file = dir.path().join("root-file");
    fs::write(&root_file, "root's\n").unwrap();
    let linked = dir.path().join("stderr.log");
    fs::hard_link(&root_file, &linked).unwrap();
    assert!(open_for_reading(&linked, Some(alice.uid)).is_err());
}

#[test]
fn records_are_read_without_following_links_and_up_to_a_size() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real-exit.json");
    let record = ExitRecord {
        exit_code: Some(0),
        signal: None,
        canceled: false,
        timed_out: false,
        error: None,
        started_at_ms: Some(1),
        finished_at_ms: 2,
        oom_killed: false,
        fenced: false,
    };
    fs::write(&real, serde_json::to_vec(&record).unwrap()).unwrap();
    std::os::unix::fs::symlink(&real, dir.path().join(ravel_exec::EXIT_FILE)).unwrap();
    assert_eq!(ravel_exec::read_exit(dir.path()), None, "read through a symlink");
    fs::remove_file(dir.path().join(ravel_exec::EXIT_FILE)).unwrap();
    fs::copy(&real, dir.path().join(ravel_exec::EXIT_FILE)).unwrap();
    assert_eq!(ravel_exec::read_exit(dir.path()), Some(record));

    // A valid record, but padded far beyond the size of any record.
    let supervisor = ravel_exec::SupervisorRecord {
        supervisor_pid: 1,
        supervisor_start: 2,
        job_pid: None,
        job_start: None,
        started_at_ms: 3,
    };
    let mut bytes = serde_json::to_vec(&supervisor).unwrap();
    fs::write(dir.path().join(ravel_exec::SUPERVISOR_FILE), &bytes).unwrap();
    assert_eq!(ravel_exec::read_supervisor(dir.path()), Some(supervisor));
    bytes.resize(2 << 20, b' ');
    fs::write(dir.path().join(ravel_exec::SUPERVISOR_FILE), &bytes).unwrap();
    assert_eq!(ravel_exec::read_supervisor(dir.path()), None);
    mkfifo(&dir.path().join(ravel_exec::LAUNCH_FILE));
    let err = ravel_exec::read_launch(dir.path()).unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");
}
