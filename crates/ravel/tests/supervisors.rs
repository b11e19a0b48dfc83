//! The local agent's supervisors, driven directly with the real `ravel-main` as supervisor: one
//! serves attempts one after another, a late stop request never reaches the attempt it serves
//! next, one asked to stop is not reused, and a restart's re-adoption reads an attempt that a
//! living supervisor has finished as ended.

use std::path::Path;
use std::time::{Duration, Instant};

use ravel_agent::{Adoption, AgentEvent, LocalAgent};
use ravel_exec::{LaunchSpec, is_same_process};
use tokio::sync::mpsc;

fn spec(script: &str, cwd: &Path) -> LaunchSpec {
    LaunchSpec {
        command: vec!["sh".into(), "-c".into(), script.into()],
        cwd: cwd.display().to_string(),
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        kill_grace_ms: 5_000,
        sync_records: false,
        timeout_ms: None,
        run_as: None,
        umask: None,
        cgroup: None,
        lease_file: None,
    }
}

async fn next_end(rx: &mut mpsc::UnboundedReceiver<AgentEvent>) -> (i64, u32, Option<ravel_exec::ExitRecord>) {
    let event = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.expect("an end within 20 s");
    let AgentEvent::Ended { job, attempt, exit, .. } = event.expect("the agent is alive");
    (job, attempt, exit)
}

async fn wait_until(what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !probe() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_serves_attempts_in_turn_and_late_stops_miss_the_next_one() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let exe = Path::new(env!("CARGO_BIN_EXE_ravel-main")).to_owned();
    let agent = LocalAgent::new(exe, "test".into(), Box::new(ravel_gpu::NoGpus), tx);
    let tmp = tempfile::tempdir().unwrap();
    let run = |n: u32| tmp.path().join(format!("run{n}"));

    // Attempt 1 of job 1 on a standby; its end arrives with its exit status.
    let standby = agent.take_standby().await.expect("a standby from the zygote");
    let first = standby.launched();
    let launched = agent.launch(1, 1, run(1), spec("exit 3", tmp.path()), Some(standby)).await.unwrap();
    assert_eq!(launched, first);
    let (job, attempt, exit) = next_end(&mut rx).await;
    assert_eq!((job, attempt, exit.and_then(|e| e.exit_code)), (1, 1, Some(3)));
    assert!(is_same_process(first.pid, first.start_time), "it lives on, ready for another attempt");

    // Re-adoption after a restart: the supervisor is alive, but past this attempt.
    assert_eq!(agent.adopt(1, 1, &run(1), Some((first.pid, first.start_time))), Adoption::Ended);
    let (job, _, exit) = next_end(&mut rx).await;
    assert_eq!((job, exit.and_then(|e| e.exit_code)), (1, Some(3)));

    // It takes job 2 (among the ready ones: a new standby may have been started meanwhile).
    let mut others = vec![];
    let standby = loop {
        let s = agent.take_standby().await.expect("a ready supervisor");
        if s.launched() == first {
            break s;
        }
        others.push(s);
        assert!(others.len() < 8, "the first supervisor never became ready again");
    };
    for s in others {
        agent.put_back(Some(s));
    }
    agent.launch(2, 1, run(2), spec("echo $$ > pid; exec sleep 30", tmp.path()), Some(standby)).await.unwrap();
    wait_until("job 2 to start", || run(2).join(ravel_exec::SUPERVISOR_FILE).exists()).await;
    let job_pid = ravel_exec::read_supervisor(&run(2)).and_then(|r| r.job_pid).expect("job 2's pid");
    let job_start = ravel_exec::process_start_time(job_pid).expect("job 2 runs");

    // A stop meant for job 1, arriving late, is not sent: it would stop job 2.
    assert!(!agent.stop(first.pid, first.start_time, 1, 1));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(is_same_process(job_pid, job_start), "job 2 was stopped by a request for job 1");

    // Job 2's own stop ends it; a supervisor asked to stop is not reused: it exits.
    assert!(agent.stop(first.pid, first.start_time, 2, 1));
    let (job, attempt, exit) = next_end(&mut rx).await;
    let exit = exit.expect("an exit record");
    assert_eq!((job, attempt, exit.canceled), (2, 1, true));
    wait_until("the stopped supervisor to exit", || !is_same_process(first.pid, first.start_time)).await;
}
