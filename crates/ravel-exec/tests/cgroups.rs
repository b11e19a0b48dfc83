//! Jobs contained in their own cgroup: memory limits with OOM detection, everything the job
//! started killed at its end, cgroups removed, leftovers of a dead supervisor cleaned up.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use ravel_exec::cgroup::{self, CgroupSupport};
use ravel_exec::{CgroupSpec, LaunchSpec, STDOUT_FILE, is_same_process, procfs, users};
use support::system::{self, ALICE, CgroupGuard, RunAsUser, User, chown, root_or_skip};
use support::{Run, spec, wait_for};

const MIB: u64 = 1 << 20;

/// The attempt cgroup's directory in each hierarchy of this host.
fn dirs_of(name: &str) -> Vec<PathBuf> {
    match cgroup::detect() {
        CgroupSupport::V2 { root } => vec![root.join(name)],
        CgroupSupport::V1 { memory, pids } => std::iter::once(memory).chain(pids).map(|r| r.join(name)).collect(),
        CgroupSupport::Unavailable(why) => panic!("no cgroups here: {why}"),
    }
}

fn assert_removed(name: &str) {
    for d in dirs_of(name) {
        assert!(!d.exists(), "{} is still there", d.display());
    }
}

fn contained(command: &[&str], cwd: &Path, name: &str, memory_max_bytes: Option<u64>) -> LaunchSpec {
    let mut s = spec(command, cwd);
    s.cgroup = Some(CgroupSpec { name: name.to_owned(), memory_max_bytes, pids_max: None });
    s
}

/// True if `pid`'s cgroup is `name` (under Ravel's directory) in some hierarchy.
fn in_cgroup(pid: i32, name: &str) -> bool {
    let want = format!("/ravel/{name}");
    fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default().lines().any(|l| l.ends_with(&want))
}

#[test]
fn detect_finds_this_hosts_hierarchy() {
    if !root_or_skip("detect_finds_this_hosts_hierarchy") {
        return;
    }
    let found = cgroup::detect();
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        assert_eq!(found, CgroupSupport::V2 { root: "/sys/fs/cgroup/ravel".into() });
    } else {
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
        let mount_of = |controller: &str| {
            mounts.lines().find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[2] == "cgroup" && f[3].split(',').any(|o| o == controller)).then(|| PathBuf::from(f[1]))
            })
        };
        let memory = mount_of("memory").expect("a cgroup v1 memory hierarchy (CI hosts have cgroups)");
        let pids = mount_of("pids");
        // This crate's CI and dev machines mount both.
        assert!(pids.is_some(), "no cgroup v1 pids hierarchy");
        assert_eq!(found, CgroupSupport::V1 { memory: memory.join("ravel"), pids: pids.map(|p| p.join("ravel")) });
    }
    assert!(found.available());
    assert_eq!(cgroup::detect(), found, "a second call differs");
}

#[test]
fn a_job_past_its_memory_limit_is_oom_killed_and_its_neighbour_is_not() {
    if !root_or_skip("a_job_past_its_memory_limit_is_oom_killed_and_its_neighbour_is_not") {
        return;
    }
    let alice = system::ensure_user(ALICE);
    let (big, small) = (system::cgroup_name("oom"), system::cgroup_name("neighbour"));
    let _guards = (CgroupGuard(big.clone()), CgroupGuard(small.clone()));
    // tail keeps the last lines of its input; /dev/zero has no line ends, so it keeps it all.
    let mut hog = contained(&["sh", "-c", "head -c 400M /dev/zero | tail"], Path::new("/"), &big, Some(64 * MIB));
    hog.run_as = Some(alice.run_as());
    let modest = contained(&["sh", "-c", "sleep 1; echo fine"], Path::new("/"), &small, Some(64 * MIB));
    let (mut hog_run, mut modest_run) = (Run::start(&hog), Run::start(&modest));
    let (hog_exit, modest_exit) = (hog_run.finish(), modest_run.finish());

    assert!(hog_exit.oom_killed, "{hog_exit:?}");
    assert!(hog_exit.signal == Some(libc::SIGKILL) || hog_exit.exit_code == Some(128 + libc::SIGKILL), "{hog_exit:?}");
    assert_eq!(hog_exit.error, None);
    assert!(!modest_exit.oom_killed, "{modest_exit:?}");
    assert_eq!((modest_exit.exit_code, modest_exit.error.as_deref()), (Some(0), None));
    assert_eq!(fs::read_to_string(modest_run.path().join(STDOUT_FILE)).unwrap(), "fine\n");
    assert_removed(&big);
    assert_removed(&small);
}

/// Starts, as alice in `cwd`, a job that leaves a `sleep 600` in a session of its own (double
/// fork + setsid) and then waits for a file `go` in `cwd`. Returns the run and the sleep's pid
/// once it has left the job's session.
fn start_with_escapee(alice: &User, cwd: &Path, name: &str, pids_max: Option<u64>) -> (Run, i32) {
    chown(cwd, alice);
    let script = "(setsid sleep 600 & echo $! > esc.pid); while [ ! -e go ]; do sleep 0.02; done";
    let mut s = contained(&["sh", "-c", script], cwd, name, Some(256 * MIB));
    s.cgroup.as_mut().unwrap().pids_max = pids_max;
    s.run_as = Some(alice.run_as());
    let mut run = Run::start(&s);
    let job = run.job().job_pid.unwrap();
    let escaped: i32 = wait_for("esc.pid", || fs::read_to_string(cwd.join("esc.pid")).ok()?.trim().parse().ok());
    run.also_kill(escaped);
    let job_session = procfs::read_stat(job).expect("job alive").session;
    wait_for("the sleep in its own session", || {
        procfs::read_stat(escaped).filter(|p| p.session != job_session && support::comm(escaped) == "sleep")
    });
    (run, escaped)
}

#[test]
fn everything_the_job_started_is_in_its_cgroup_and_killed_at_its_end() {
    if !root_or_skip("everything_the_job_started_is_in_its_cgroup_and_killed_at_its_end") {
        return;
    }
    let alice = system::ensure_user(ALICE);
    let name = system::cgroup_name("escape");
    let _guard = CgroupGuard(name.clone());
    let cwd = tempfile::tempdir().unwrap();
    let (mut run, escaped) = start_with_escapee(&alice, cwd.path(), &name, Some(64));
    let escaped_start = procfs::process_start_time(escaped).unwrap();

    let sup = run.launched.pid;
    assert!(in_cgroup(escaped, &name), "the escaped sleep is not in the job's cgroup");
    assert!(!in_cgroup(sup, &name), "the supervisor is in the job's cgroup");
    assert_eq!(users::process_uid(escaped as u32), Some(alice.uid));
    assert_eq!(users::process_uid(sup as u32), Some(0));
    let pids_dir = dirs_of(&name).pop().unwrap();
    assert_eq!(fs::read_to_string(pids_dir.join("pids.max")).unwrap().trim(), "64");

    fs::write(cwd.path().join("go"), "").unwrap();
    let exit = run.finish();
    assert_eq!((exit.exit_code, exit.error.as_deref(), exit.oom_killed), (Some(0), None, false));
    assert!(!is_same_process(escaped, escaped_start), "the escaped sleep {escaped} survived");
    assert!(procfs::all_processes().iter().all(|p| !in_cgroup(p.pid, &name)), "something is left in the cgroup");
    assert_removed(&name);
}

#[test]
fn remove_leftover_empties_and_removes_the_cgroup_of_a_dead_supervisor() {
    if !root_or_skip("remove_leftover_empties_and_removes_the_cgroup_of_a_dead_supervisor") {
        return;
    }
    let alice = system::ensure_user(ALICE);
    let name = system::cgroup_name("leftover");
    let _guard = CgroupGuard(name.clone());
    let cwd = tempfile::tempdir().unwrap();
    let (mut run, escaped) = start_with_escapee(&alice, cwd.path(), &name, None);
    let job = ravel_exec::read_supervisor(run.path()).unwrap();
    let (job_pid, job_start) = (job.job_pid.unwrap(), job.job_start.unwrap());
    let escaped_start = procfs::process_start_time(escaped).unwrap();
    // SAFETY: plain kill of our own child.
    unsafe { libc::kill(run.launched.pid, libc::SIGKILL) };
    assert_eq!(run.finish_without_record(), None);
    assert!(is_same_process(job_pid, job_start) && is_same_process(escaped, escaped_start));

    // The daemon calls this, and has children of its own whose exit status it waits for.
    let mut ours = Command::new("true").spawn().unwrap();
    let ours_pid = ours.id() as i32;
    wait_for("our child to exit", || procfs::read_stat(ours_pid).filter(|p| p.is_zombie()));

    cgroup::remove_leftover(&name);
    assert!(!is_same_process(job_pid, job_start), "the job survived");
    assert!(!is_same_process(escaped, escaped_start), "the escaped sleep survived");
    assert_removed(&name);
    assert!(ours.wait().expect("our child was reaped by someone else").success());
    // Nothing to do the second time.
    cgroup::remove_leftover(&name);
}

#[test]
fn a_cgroup_name_that_could_escape_fails_the_job() {
    let marker = tempfile::tempdir().unwrap();
    let cmd = format!("echo ran > {}/ran", marker.path().display());
    for bad in ["../elsewhere", "/sys/fs/cgroup/memory", ".", ""] {
        let mut run = Run::start(&contained(&["sh", "-c", &cmd], Path::new("/"), bad, Some(64 * MIB)));
        let exit = run.finish();
        let error = exit.error.unwrap_or_default();
        assert!(error.starts_with(&format!("bad cgroup name {bad:?}")), "{error}");
        assert_eq!((exit.exit_code, exit.started_at_ms), (None, None));
        assert!(!marker.path().join("ran").exists(), "the job ran with {bad:?}");
    }
}
