//! End to end: cancel, daemon stop/start/restart, kill -9 of the daemon, concurrent clients.

use ravel_test_support::{FakeGpus, TestDaemon, eventually, group_alive, read_when_written};
use std::collections::HashSet;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_ravel");

fn job_pid(d: &TestDaemon, id: i64) -> i32 {
    let run_dir = d.show(id)["run_dir"].as_str().unwrap().to_string();
    let text = read_when_written(&std::path::Path::new(&run_dir).join("supervisor.json"), Duration::from_secs(10))
        .or_else(|| std::fs::read_to_string(std::path::Path::new(&run_dir).join("supervisor.json")).ok())
        .expect("supervisor.json");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["job_pid"].as_i64().expect("job pid") as i32
}

fn wait_for_supervisor(d: &TestDaemon, id: i64) -> i32 {
    let dir = d.wait_state(id, "running")["run_dir"].as_str().unwrap().to_string();
    let path = std::path::Path::new(&dir).join("supervisor.json");
    assert!(eventually(Duration::from_secs(10), || path.exists()), "no supervisor.json");
    job_pid(d, id)
}

#[test]
fn cancel_kills_the_whole_process_tree() {
    let d = TestDaemon::builder(BIN).start();
    let id = d.submit(&["--", "sh", "-c", "sleep 600 & sleep 600"]);
    let pgid = wait_for_supervisor(&d, id);
    assert!(group_alive(pgid));
    let out = d.ok(&["cancel", &id.to_string()]);
    assert!(out.contains("terminating"), "{out}");
    let v = d.wait_state(id, "canceled");
    assert_eq!(v["reason"], "canceled by user");
    assert_eq!(v["signal"], 15, "sh died of the SIGTERM");
    assert!(eventually(Duration::from_secs(5), || !group_alive(pgid)), "processes of job {id} survived cancel");
    // Canceling again changes nothing and says so.
    assert!(d.ok(&["cancel", &id.to_string()]).contains("already finished"));
}

#[test]
fn cancel_of_a_queued_job_drops_it() {
    let d = TestDaemon::builder(BIN).gpus(FakeGpus::Count(1)).start();
    let holder = d.submit(&["--gpus", "1", "--", "sleep", "30"]);
    let queued = d.submit(&["--gpus", "1", "--", "true"]);
    d.wait_state(holder, "running");
    assert!(d.ok(&["cancel", &queued.to_string()]).contains("canceled"));
    assert_eq!(d.state(queued), "canceled");
    assert!(d.show(queued)["attempts"].as_array().is_none_or(|a| a.is_empty()), "a canceled queued job never starts");
}

#[test]
fn queued_jobs_survive_daemon_stop_and_run_after_start() {
    let d = TestDaemon::builder(BIN).gpus(FakeGpus::Count(1)).start();
    let holder = d.submit(&["--gpus", "1", "--", "sleep", "1.5"]);
    let queued: Vec<i64> = (0..3).map(|_| d.submit(&["--gpus", "1", "--", "true"])).collect();
    d.wait_state(holder, "running");
    let out = d.ok(&["daemon", "stop"]);
    assert!(out.contains("stopped"), "{out}");
    let (code, err) = d.fails(&["queue"]);
    assert_eq!(code, 1);
    assert!(err.contains("not running"), "{err}");
    // The holder finishes while no daemon runs; its exit is read back at the next start.
    std::thread::sleep(Duration::from_millis(1800));
    d.start_daemon();
    assert_eq!(d.wait_state(holder, "succeeded")["exit_code"], 0);
    for id in queued {
        d.wait_state(id, "succeeded");
    }
}

#[test]
fn a_running_job_survives_restart_and_its_exit_is_recorded() {
    let d = TestDaemon::builder(BIN).start();
    let dir = d.scratch("restart");
    let go = dir.join("go");
    let script = format!("while [ ! -e {} ]; do sleep 0.05; done; exit 7", go.display());
    let id = d.submit(&["--", "sh", "-c", &script]);
    let pgid = wait_for_supervisor(&d, id);
    let before = d.daemon_pid().unwrap();
    d.ok(&["daemon", "restart"]);
    let after = d.daemon_pid().unwrap();
    assert_ne!(before, after, "restart must replace the daemon process");
    assert!(group_alive(pgid), "the job died with the daemon");
    assert_eq!(d.state(id), "running");
    std::fs::write(&go, "").unwrap();
    let v = d.wait_state(id, "failed");
    assert_eq!(v["exit_code"], 7);
    assert_eq!(v["attempts"].as_array().unwrap().len(), 1, "re-adopted, not restarted");
}

#[test]
fn kill_9_of_the_daemon_loses_no_accepted_job() {
    let d = TestDaemon::builder(BIN).gpus(FakeGpus::Count(1)).start();
    let dir = d.scratch("kill9");
    let go = dir.join("go");
    let running =
        d.submit(&["--gpus", "1", "--", "sh", "-c", &format!("while [ ! -e {} ]; do sleep 0.05; done", go.display())]);
    let queued: Vec<i64> = (0..5).map(|_| d.submit(&["--gpus", "1", "--", "true"])).collect();
    let pgid = wait_for_supervisor(&d, running);
    let pid = d.daemon_pid().unwrap();
    // SAFETY: kill(2) of the daemon we started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(eventually(Duration::from_secs(5), || d.daemon_pid().is_none()));
    assert!(group_alive(pgid), "the job must outlive a crashed daemon");
    // The stale socket and pid file are detected: the next command starts a new daemon.
    let late = d.submit(&["--", "true"]);
    std::fs::write(&go, "").unwrap();
    d.wait_state(running, "succeeded");
    for id in queued.iter().chain([&late]) {
        d.wait_state(*id, "succeeded");
    }
    assert_eq!(d.show(running)["attempts"].as_array().unwrap().len(), 1);
}

#[test]
fn fifty_concurrent_clients_get_distinct_ids_and_each_job_runs_once() {
    // No daemon yet: the first clients race to start it.
    let d = TestDaemon::builder(BIN).gpus(FakeGpus::Count(0)).prepare();
    let dir = d.scratch("fifty");
    let children: Vec<_> = (0..50)
        .map(|i| {
            d.cmd()
                .args(["run", "--", "sh", "-c", &format!("echo {i} >> {}/runs.log", dir.display())])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut ids = HashSet::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        ids.insert(String::from_utf8_lossy(&out.stdout).trim().parse::<i64>().unwrap());
    }
    assert_eq!(ids.len(), 50);
    d.ok(&["wait", "--all", "--timeout", "60"]);
    for id in &ids {
        assert_eq!(d.state(*id), "succeeded");
    }
    let log = std::fs::read_to_string(dir.join("runs.log")).unwrap();
    let mut lines: Vec<u32> = log.lines().map(|l| l.parse().unwrap()).collect();
    lines.sort();
    assert_eq!(lines, (0..50).collect::<Vec<_>>(), "every job ran exactly once");
    // Only one daemon was started.
    let daemons = std::fs::read_to_string(d.home().join("daemon.log")).unwrap().matches("ravel daemon ready").count();
    assert_eq!(daemons, 1);
}

/// Crashes the daemon at a failpoint between placing a job and recording its start, restarts it,
/// and checks the job ran exactly once.
fn crash_at(failpoint: &str) -> (TestDaemon, i64, std::path::PathBuf) {
    let d = TestDaemon::builder(BIN).prepare();
    d.start_daemon_with_env(&[("RAVEL_FAILPOINT", failpoint)]);
    let log = d.scratch("crash").join("runs.log");
    let pid = d.daemon_pid().unwrap();
    let id = d.submit(&["--", "sh", "-c", &format!("echo ran >> {}; sleep 0.3", log.display())]);
    // The daemon aborts at the failpoint right after the job is placed.
    assert!(eventually(Duration::from_secs(10), || d.daemon_pid().is_none()), "daemon {pid} did not hit {failpoint}");
    d.start_daemon();
    d.wait_state(id, "succeeded");
    // Give a wrongly duplicated run time to show itself.
    std::thread::sleep(Duration::from_millis(500));
    let runs = std::fs::read_to_string(&log).unwrap();
    assert_eq!(runs.lines().count(), 1, "the job ran {} times", runs.lines().count());
    (d, id, log)
}

#[test]
fn a_crash_after_placing_before_launch_requeues_the_job_once() {
    let (d, id, _) = crash_at("after_allocate");
    let attempts = d.show(id)["attempts"].as_array().unwrap().clone();
    assert_eq!(attempts.len(), 2, "attempt 1 never launched; attempt 2 ran: {attempts:?}");
    assert_eq!(attempts[0]["state"], "lost");
    assert_eq!(attempts[1]["state"], "succeeded");
}

#[test]
fn a_crash_right_after_launch_adopts_the_running_job() {
    let (d, id, _) = crash_at("after_launch");
    let attempts = d.show(id)["attempts"].as_array().unwrap().clone();
    assert_eq!(attempts.len(), 1, "the launched attempt is adopted, not run again: {attempts:?}");
}

#[test]
fn run_json_a_crash_left_unwritten_is_written_after_restart() {
    let d = TestDaemon::builder(BIN).prepare();
    d.start_daemon_with_env(&[("RAVEL_FAILPOINT", "before_run_json")]);
    let pid = d.daemon_pid().unwrap();
    let id = d.submit(&["--", "true"]);
    // The daemon aborts once the end is recorded, before its run.json is written or queued.
    assert!(
        eventually(Duration::from_secs(10), || d.daemon_pid().is_none()),
        "daemon {pid} did not reach the failpoint"
    );
    let run_json =
        d.home().join("runs").join(format!("{}k", id / 1000)).join(id.to_string()).join("1").join("run.json");
    assert!(run_json.parent().unwrap().join("exit.json").exists());
    assert!(!run_json.exists(), "written before the failpoint");
    d.start_daemon();
    let shown = d.wait_state(id, "succeeded");
    assert_eq!(shown["run_dir"].as_str().map(std::path::Path::new), run_json.parent());
    assert!(eventually(Duration::from_secs(5), || run_json.exists()), "recovery did not write {}", run_json.display());
    let run: serde_json::Value = serde_json::from_slice(&std::fs::read(&run_json).unwrap()).unwrap();
    assert_eq!(run["job"]["id"], id);
    assert_eq!(run["attempt"]["state"], "succeeded");
}
