//! End to end under load: many concurrent submitters, kill -9 during a submit storm, and a store
//! with a long history.

use ravel_client::{Client, ClientError};
use ravel_core::{JobSpec, JobState};
use ravel_proto::{ArrayRequest, SubmitRequest, SubmitResponse};
use ravel_test_support::{FakeGpus, TestDaemon, eventually};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_ravel");

fn spec(home: &std::path::Path, cmd: &[&str]) -> SubmitRequest {
    SubmitRequest {
        spec: JobSpec {
            command: cmd.iter().map(|s| s.to_string()).collect(),
            cwd: home.to_string_lossy().into_owned(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            ..JobSpec::default()
        },
        array: None,
    }
}

/// Every listed job exists and succeeded, and every attempt but the last never started its job
/// (placed, then the daemon died before handing it over: the standby supervisor it was placed
/// with may be recorded, but it ran nothing and the attempt was never marked started).
fn assert_ran_once(d: &TestDaemon, ids: &[i64]) {
    let all: Vec<Value> = serde_json::from_str(&d.ok(&["queue", "--all", "--json"])).unwrap();
    for id in ids {
        let j = all.iter().find(|j| j["id"] == *id).unwrap_or_else(|| panic!("acknowledged job {id} is missing"));
        assert_eq!(j["state"], "succeeded", "job {id}: {j}");
        if j["attempt"] != 1 {
            let shown = d.show(*id);
            let attempts = shown["attempts"].as_array().unwrap();
            for a in &attempts[..attempts.len() - 1] {
                assert_eq!(a["state"], "lost", "job {id}: {shown:#}");
                let never_started = [
                    "the controller stopped before this attempt was launched",
                    "the attempt ended before its job was started",
                ];
                assert!(never_started.contains(&a["reason"].as_str().unwrap_or("")), "job {id}: {shown:#}");
                assert!(a["started_at"].is_null(), "job {id} started twice: {shown:#}");
            }
        }
    }
}

#[test]
fn a_thousand_concurrent_submitters_get_distinct_ids_and_each_job_runs_once() {
    let d = TestDaemon::builder(BIN).gpus(FakeGpus::Count(0)).cpus(8).start();
    let socket = d.home().join("ravel.sock");
    let ids = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..1000)
        .map(|_| {
            let (socket, ids, home) = (socket.clone(), ids.clone(), d.home().to_path_buf());
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let client = Client::local(socket);
                    for _ in 0..10 {
                        let r: SubmitResponse = client.post("/v1/jobs", &spec(&home, &["true"])).expect("submit");
                        ids.lock().unwrap().push(r.id);
                    }
                })
                .unwrap()
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut ids = ids.lock().unwrap().clone();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10_000, "10,000 acknowledged submits, 10,000 distinct ids");
    d.ok(&["wait", "--all", "--timeout", "300"]);
    assert_ran_once(&d, &ids);
}

#[test]
fn kill_9_during_a_submit_storm_loses_no_acknowledged_job() {
    let d = TestDaemon::builder(BIN).gpus(FakeGpus::Count(0)).cpus(4).start();
    let socket = d.home().join("ravel.sock");
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (socket, acked, stop, home) = (socket.clone(), acked.clone(), stop.clone(), d.home().to_path_buf());
            std::thread::spawn(move || {
                let client = Client::local(socket).with_timeout(Duration::from_secs(5));
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let log = format!("echo $RAVEL_JOB_ID >> {}/runs.log", home.display());
                    match client.post::<_, SubmitResponse>("/v1/jobs", &spec(&home, &["sh", "-c", &log])) {
                        Ok(r) => acked.lock().unwrap().push(r.id),
                        // The daemon is gone: the submit was not acknowledged. Stop.
                        Err(ClientError::NotRunning { .. } | ClientError::Io { .. } | ClientError::Protocol(_)) => {
                            break;
                        }
                        Err(e) => panic!("unexpected error {e}"),
                    }
                }
            })
        })
        .collect();
    assert!(eventually(Duration::from_secs(20), || acked.lock().unwrap().len() >= 300), "the storm did not get going");
    let pid = d.daemon_pid().unwrap();
    // SAFETY: kill(2) of the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    d.start_daemon();
    d.ok(&["wait", "--all", "--timeout", "120"]);
    assert_ran_once(&d, &acked);
    // Each job wrote its id once: no acknowledged job ran twice, none was lost.
    let log = std::fs::read_to_string(d.home().join("runs.log")).unwrap();
    let mut counts = std::collections::HashMap::new();
    for line in log.lines() {
        *counts.entry(line.parse::<i64>().unwrap()).or_insert(0) += 1;
    }
    for id in &acked {
        assert_eq!(counts.get(id), Some(&1), "job {id} ran {:?} times", counts.get(id));
    }
    assert!(counts.values().all(|c| *c == 1), "some job ran twice");
}

#[test]
fn queue_answers_with_the_right_rows_over_a_long_history() {
    let d = TestDaemon::builder(BIN).gpus(FakeGpus::Count(0)).prepare();
    // 100,000 finished jobs written straight through the store, as a long-lived daemon leaves them.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use ravel_store::Store;
        let store = Arc::new(
            ravel_store::SqliteStore::open(&d.home().join("ravel.db"), ravel_store::Durability::Normal).unwrap(),
        );
        for chunk in 0..100 {
            let specs: Vec<JobSpec> = (0..1000).map(|_| spec(d.home(), &["true"]).spec).collect();
            let jobs = store.submit(specs, JobState::Queued, false, chunk).await.unwrap();
            // Concurrent cancels share commits (group commit).
            let tasks: Vec<_> = jobs
                .into_iter()
                .map(|j| {
                    let store = store.clone();
                    tokio::spawn(async move { store.request_cancel(j.id, "old".into(), 1_000_000 + j.id).await })
                })
                .collect();
            for t in tasks {
                t.await.unwrap().unwrap();
            }
        }
    });
    d.start_daemon();
    let live = d.submit(&["--", "sleep", "30"]);
    let rows: Vec<Value> = serde_json::from_str(&d.ok(&["queue", "--json", "--recent", "5"])).unwrap();
    let ids: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, vec![99_996, 99_997, 99_998, 99_999, 100_000, live], "the 5 latest finished, then the active job");
    let text = d.ok(&["queue"]);
    assert_eq!(text.lines().count(), 1 + 10 + 1, "header, 10 recent, 1 active:\n{text}");
    let all: Vec<Value> = serde_json::from_str(&d.ok(&["queue", "--all", "--json"])).unwrap();
    assert_eq!(all.len(), 100_001);
}

/// How many full scheduling passes the daemon has made (the pass histogram's count).
fn passes(client: &Client) -> u64 {
    let metrics = client.raw("GET", "/metrics", None).expect("GET /metrics");
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8_lossy(&metrics.body);
    let count = text.lines().find_map(|l| l.strip_prefix("ravel_scheduler_pass_seconds_count "));
    count.expect("the pass histogram's count").trim().parse().expect("a count")
}

/// 30,000 GPU jobs wait behind a job that holds the only GPU, and CPU jobs keep arriving, each
/// placed at once from the last pass's leftover and credited back to it when it ends. No pass is
/// needed for them: passes stay at the periodic rate (one a second, which refreshes reasons).
/// They used to run back to back: each pass over the long queue was overtaken by the next placed
/// submit and started over.
#[test]
fn jobs_placed_beside_a_long_waiting_queue_do_not_keep_passes_running() {
    let d = TestDaemon::builder(BIN).gpus(FakeGpus::Count(1)).cpus(8).start();
    let client = Client::local(d.home().join("ravel.sock"));
    let mut holder = spec(d.home(), &["sleep", "600"]);
    holder.spec.gpus = 1;
    let _: SubmitResponse = client.post("/v1/jobs", &holder).expect("submit the GPU's holder");
    for chunk in 0..3u32 {
        let mut waiting = spec(d.home(), &["true"]);
        waiting.spec.gpus = 1;
        waiting.array = Some(ArrayRequest { indices: (chunk * 10_000..(chunk + 1) * 10_000).collect(), limit: None });
        let _: Value = client.post("/v1/jobs", &waiting).expect("queue 10,000 GPU jobs");
    }
    // The passes the queue itself needed are over once the count stops moving.
    let mut settled = passes(&client);
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let now = passes(&client);
        if now == settled {
            break;
        }
        settled = now;
    }
    let started = std::time::Instant::now();
    let mut last = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let r: SubmitResponse = client.post("/v1/jobs", &spec(d.home(), &["true"])).expect("submit a CPU job");
        last = r.id;
        std::thread::sleep(Duration::from_millis(2));
    }
    d.wait_state(last, "succeeded");
    let made = passes(&client) - settled;
    let allowed = started.elapsed().as_secs() + 2;
    assert!(made <= allowed, "{made} passes in {:?}; the periodic rate allows {allowed}", started.elapsed());
    let queued: Vec<Value> = serde_json::from_str(&d.ok(&["queue", "--all", "--json"])).unwrap();
    assert_eq!(queued.iter().filter(|j| j["state"] == "queued").count(), 30_000, "the GPU jobs still wait");
}

/// `valid` made bad in one of four ways (by `kind`), and what the refusal must say.
fn bad_request(valid: &SubmitRequest, kind: usize) -> (SubmitRequest, &'static str) {
    let mut s = valid.clone();
    match kind % 4 {
        0 => {
            s.spec.cwd = "/nonexistent/ravel-storm".into();
            (s, "does not exist")
        }
        1 => {
            s.spec.env.push(("HUGE".into(), "x".repeat(ravel_core::job::MAX_ENV_BYTES + 1)));
            (s, "environment is")
        }
        2 => {
            s.spec.command.clear();
            (s, "empty command")
        }
        _ => {
            s.spec.cpus = 10_000;
            (s, "CPU slots")
        }
    }
}

/// The daemon's resident memory, in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_submit_stream_with_one_percent_bad_requests_loses_nothing_and_keeps_memory() {
    let d = TestDaemon::builder(BIN).gpus(FakeGpus::Count(0)).cpus(8).start();
    let socket = d.home().join("ravel.sock");
    let pid = d.daemon_pid().unwrap();
    let home = d.home().to_path_buf();
    let log = format!("echo $RAVEL_JOB_ID >> {}/runs.log", home.display());
    let valid = spec(&home, &["sh", "-c", &log]);
    // Warm up: the first requests fill the daemon's caches and pools.
    let client = Client::local(socket.clone());
    for _ in 0..50 {
        client.post::<_, SubmitResponse>("/v1/jobs", &valid).expect("warm-up submit");
    }
    d.ok(&["wait", "--all", "--timeout", "60"]);
    std::thread::sleep(Duration::from_millis(300));
    let idle = rss_kib(pid);

    // Every 100th request is bad in one of four ways; each must get its own clear 400.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (socket, acked, valid) = (socket.clone(), acked.clone(), valid.clone());
            std::thread::spawn(move || {
                let client = Client::local(socket);
                for n in 0..250 {
                    let i = t * 250 + n;
                    if i % 100 == 99 {
                        let (req, says) = bad_request(&valid, i / 100);
                        match client.post::<_, SubmitResponse>("/v1/jobs", &req) {
                            Err(ClientError::Api { status: 400, body }) => {
                                assert!(body.error.contains(says), "request {i}: {}", body.error)
                            }
                            other => panic!("bad request {i} was not refused: {other:?}"),
                        }
                    } else {
                        let r: SubmitResponse = client.post("/v1/jobs", &valid).expect("valid submit");
                        acked.lock().unwrap().push(r.id);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 1980, "every valid submit acknowledged");
    d.ok(&["wait", "--all", "--timeout", "300"]);
    let all: Vec<Value> = serde_json::from_str(&d.ok(&["queue", "--all", "--json"])).unwrap();
    assert_eq!(all.len(), 50 + 1980, "no refused request left a job behind");
    let ran = std::fs::read_to_string(home.join("runs.log")).unwrap();
    let mut counts = std::collections::HashMap::new();
    for line in ran.lines() {
        *counts.entry(line.parse::<i64>().unwrap()).or_insert(0) += 1;
    }
    for id in &acked {
        assert_eq!(counts.get(id), Some(&1), "job {id} ran {:?} times", counts.get(id));
    }
    // Back to idle: nothing of the storm (the refused 1 MiB environments included) is kept.
    let settled = eventually(Duration::from_secs(10), || rss_kib(pid) <= idle + 16 * 1024);
    assert!(settled, "daemon RSS {} KiB after the storm, {idle} KiB idle before it", rss_kib(pid));
}
