//! End to end, issue "Scheduling that researchers trust": memory packing, dependencies,
//! retries, timeouts, holds, begin times, fair share, backfill, arrays, re-adoption as `lost`.

use ravel_test_support::{FakeGpu, FakeGpus, TestDaemon, eventually, read_when_written};
use serde_json::Value;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ravel");

fn attempts(v: &Value) -> Vec<Value> {
    v["attempts"].as_array().cloned().unwrap_or_default()
}

#[test]
fn memory_jobs_pack_onto_shared_gpus_and_whole_jobs_wait() {
    let d = TestDaemon::builder(BIN).gpus(FakeGpus::Count(2)).start();
    let dir = d.scratch("pack");
    let mut ids = vec![];
    for i in 0..3 {
        let out = dir.join(format!("env{i}"));
        let script = format!("echo \"$CUDA_VISIBLE_DEVICES $RAVEL_GPU_MEM_MIB\" > {}; sleep 30", out.display());
        ids.push(d.submit(&["--gpu-mem", "30G", "--", "sh", "-c", &script]));
    }
    let mut seen = vec![];
    for i in 0..3 {
        let line = read_when_written(&dir.join(format!("env{i}")), Duration::from_secs(10)).expect("job started");
        seen.push(line.trim().to_string());
    }
    // 30 GiB each on 80 GiB GPUs: two share GPU 0 (best fit keeps GPU 1 as free as possible).
    assert_eq!(seen, vec!["0 30720", "0 30720", "1 30720"]);
    let gpus: Value = serde_json::from_str(&d.ok(&["gpus", "--json"])).unwrap();
    assert_eq!(gpus["gpus"][0]["reserved_mib"], 61440);
    assert_eq!(gpus["gpus"][0]["shared"].as_array().unwrap().len(), 2);
    assert!(d.ok(&["gpus"]).contains(&format!("job {}", ids[0])));
    // A whole-GPU job finds no GPU without reservations.
    let whole = d.submit(&["--gpus", "1", "--", "true"]);
    let v = d.wait_for(whole, Duration::from_secs(5), |v| v["pending_reason"].as_str().is_some_and(|r| r != "Queued"));
    assert_eq!(v["state"], "queued");
    assert!(v["pending_reason"].as_str().unwrap().contains("needs 1 GPU, 0 free"), "{v}");
    // Bad sizes are refused at submit.
    let (_, err) = d.fails(&["run", "--gpu-mem", "100G", "--", "true"]);
    assert!(err.contains("more than any GPU"), "{err}");
    let (code, err) = d.fails(&["run", "--gpu-mem", "12X", "--", "true"]);
    assert_eq!(code, 2);
    assert!(err.contains("unit"), "{err}");
}

#[test]
fn memory_tags_come_from_the_daemon_and_unknown_ones_are_refused() {
    let d = TestDaemon::builder(BIN).gpus(FakeGpus::Count(1)).prepare();
    d.start_daemon_with_env(&[("RAVEL_MEMORY_LIMITS", "small=8G,large=40G")]);
    let out = d.run(&["run", "-q", "--memory-tag", "small", "--wait", "--", "sh", "-c", "echo $RAVEL_GPU_MEM_MIB"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "8192\n");
    let (code, err) = d.fails(&["run", "--memory-tag", "huge", "--", "true"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown memory tag \"huge\"") && err.contains("small=8192M"), "{err}");
}

#[test]
fn dependencies_wait_for_success_and_failures_cancel_dependents() {
    let d = TestDaemon::builder(BIN).gpus(FakeGpus::Count(0)).start();
    let first = d.submit(&["-q", "--", "sleep", "0.5"]);
    let after_ok = d.submit(&["--after", &first.to_string(), "--", "true"]);
    assert_eq!(d.state(after_ok), "blocked");
    assert!(d.show(after_ok)["pending_reason"].as_str().unwrap().contains(&format!("Dependency {first}")));
    d.wait_state(after_ok, "succeeded");
    let started = d.show(after_ok)["started_at"].as_i64().unwrap();
    assert!(started >= d.show(first)["finished_at"].as_i64().unwrap(), "started before its dependency ended");

    let failing = d.submit(&["--", "sh", "-c", "sleep 0.3; exit 4"]);
    let dependent = d.submit(&["--after", &failing.to_string(), "--", "true"]);
    let chained = d.submit(&["--after", &dependent.to_string(), "--", "true"]);
    let any = d.submit(&["--after-any", &failing.to_string(), "--", "true"]);
    let v = d.wait_state(dependent, "canceled");
    assert_eq!(v["reason"], format!("dependency {failing} failed"));
    assert_eq!(d.wait_state(chained, "canceled")["reason"], format!("dependency {dependent} was canceled"));
    d.wait_state(any, "succeeded");

    let (code, err) = d.fails(&["run", "--after", "9999", "--", "true"]);
    assert_eq!(code, 1);
    assert!(err.contains("no job 9999"), "{err}");
}

#[test]
fn failed_attempts_are_retried_as_new_attempts_and_timeouts_kill() {
    let d = TestDaemon::builder(BIN).gpus(FakeGpus::Count(0)).start();
    let dir = d.scratch("retry");
    let counter = dir.join("count");
    // Fails on its first two runs, succeeds on the third.
    let script =
        format!("n=$(cat {c} 2>/dev/null || echo 0); echo $((n+1)) > {c}; [ $n -ge 2 ]", c = counter.display());
    let id = d.submit(&["--retries", "3", "--retry-delay", "100ms", "--", "sh", "-c", &script]);
    let v = d.wait_state(id, "succeeded");
    let a = attempts(&v);
    assert_eq!(a.iter().map(|a| a["state"].as_str().unwrap()).collect::<Vec<_>>(), ["failed", "failed", "succeeded"]);
    assert_ne!(a[0]["run_dir"], a[1]["run_dir"], "each attempt has its own run dir");
    assert_eq!(v["retries_used"], 2);
    // Backoff: the second retry waited at least twice the first delay after the failure.
    let gap = a[2]["started_at"].as_i64().unwrap() - a[1]["finished_at"].as_i64().unwrap();
    assert!(gap >= 200, "second retry after {gap} ms");

    let t0 = Instant::now();
    let slow = d.submit(&["--timeout", "300ms", "--", "sleep", "30"]);
    let v = d.wait_state(slow, "failed");
    assert_eq!(v["reason"], "timeout");
    assert!(t0.elapsed() < Duration::from_secs(10));

    // `ravel retry` runs a finished job again.
    assert!(d.ok(&["retry", &slow.to_string()]).contains("queued again"));
    let v = d.wait_for(slow, Duration::from_secs(10), |v| attempts(v).len() == 2 && v["state"] == "failed");
    assert_eq!(v["reason"], "timeout");
    let (_, err) = d.fails(&["retry", "4242"]);
    assert!(err.contains("no job 4242"), "{err}");
}

#[test]
fn hold_release_priority_and_begin_times() {
    let d = TestDaemon::builder(BIN).gpus(FakeGpus::Count(1)).start();
    let held = d.submit(&["--hold", "--", "true"]);
    let v = d.wait_for(held, Duration::from_secs(5), |v| v["pending_reason"] == "Held");
    assert_eq!(v["held"], true);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.state(held), "queued", "a held job must not start");
    d.ok(&["release", &held.to_string()]);
    d.wait_state(held, "succeeded");

    let blocker = d.submit(&["--gpus", "1", "--", "sleep", "1"]);
    d.wait_state(blocker, "running");
    let low = d.submit(&["--gpus", "1", "--", "true"]);
    let high = d.submit(&["--gpus", "1", "--", "true"]);
    d.wait_for(high, Duration::from_secs(5), |v| v["position"] == 2);
    d.ok(&["priority", &high.to_string(), "10"]);
    let v = d.wait_for(high, Duration::from_secs(5), |v| v["position"] == 1 || v["state"] != "queued");
    assert!(v["position"] == 1 || v["state"] != "queued", "{v}");
    assert!(d.ok(&["queue"]).contains("#1 "), "positions show in the queue");
    d.wait_state(low, "succeeded");
    assert!(d.show(high)["started_at"].as_i64() < d.show(low)["started_at"].as_i64(), "priority change ignored");
    // Holding or repricing a finished job is refused with the reason.
    let (code, err) = d.fails(&["hold", &low.to_string()]);
    assert_eq!(code, 1);
    assert!(err.contains("succeeded") && err.contains("only queued or blocked"), "{err}");
    let (_, err) = d.fails(&["priority", &low.to_string(), "3"]);
    assert!(err.contains("succeeded"), "{err}");

    let t0 = ravel_controller_now();
    let later = d.submit(&["--begin", "+1s", "--", "true"]);
    let v = d.wait_for(later, Duration::from_secs(5), |v| {
        v["pending_reason"].as_str().is_some_and(|r| r.starts_with("Begin"))
    });
    assert_eq!(v["state"], "queued");
    let v = d.wait_state(later, "succeeded");
    assert!(v["started_at"].as_i64().unwrap() >= t0 + 1000, "started before its begin time");
    let (code, err) = d.fails(&["run", "--retries", "-1", "--", "true"]);
    assert_eq!(code, 2);
    assert!(err.contains("--retries"), "{err}");
    let (code, err) = d.fails(&["run", "--timeout", "soon", "--", "true"]);
    assert_eq!(code, 2);
    assert!(err.contains("bad duration"), "{err}");
    let (code, err) = d.fails(&["run", "--begin", "tomorrow", "--", "true"]);
    assert_eq!(code, 2);
    assert!(err.contains("--begin"), "{err}");
}

fn ravel_controller_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

// Fair share between users needs real users (a job's user is its submitter's uid, from the
// kernel): see `a_user_with_a_long_queue_does_not_keep_another_from_the_next_gpu` in shared_box.rs.

#[test]
fn backfill_only_uses_held_gpus_when_it_provably_ends_in_time() {
    let d = TestDaemon::builder(BIN).gpus(FakeGpus::Count(2)).start();
    let running = d.submit(&["--gpus", "1", "--timeout", "4s", "--", "sleep", "3"]);
    d.wait_state(running, "running");
    // The head needs both GPUs: it waits for `running` and holds the free one.
    let head = d.submit(&["--gpus", "2", "--", "true"]);
    let v = d.wait_for(head, Duration::from_secs(5), |v| v["estimated_start"].is_i64());
    let shadow = v["estimated_start"].as_i64().unwrap();
    let ends_by = d.show(running)["started_at"].as_i64().unwrap() + 4000;
    assert!((shadow - ends_by).abs() < 1000, "estimated start {shadow} vs the running job's limit {ends_by}");
    // A short job with a limit fits before then: it backfills onto the held GPU.
    let short = d.submit(&["--gpus", "1", "--timeout", "1s", "--", "sleep", "0.2"]);
    d.wait_state(short, "succeeded");
    // A job without a limit could delay the head: it waits.
    let unbounded = d.submit(&["--gpus", "1", "--", "true"]);
    let v = d.wait_for(unbounded, Duration::from_secs(5), |v| {
        v["pending_reason"].as_str().is_some_and(|r| r.contains(&format!("held for job {head}")))
    });
    assert_eq!(v["state"], "queued");
    let h = d.wait_state(head, "succeeded");
    assert!(h["started_at"].as_i64() <= d.wait_state(unbounded, "succeeded")["started_at"].as_i64());
}

#[test]
fn arrays_run_each_index_once_within_their_limit() {
    let d = TestDaemon::builder(BIN).gpus(FakeGpus::Count(0)).cpus(8).start();
    let dir = d.scratch("array");
    let log = dir.join("log");
    let script = format!(
        "echo start $RAVEL_ARRAY_INDEX >> {l}; sleep 0.2; echo end $RAVEL_ARRAY_INDEX >> {l}",
        l = log.display()
    );
    let out = d.ok(&["run", "--json", "--array", "0-5%2", "--", "sh", "-c", &script]);
    let resp: Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<i64> = resp["ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 6);
    let q = d.ok(&["queue"]);
    assert!(q.contains(&format!("{}[6]", ids[0])) && q.contains("array"), "{q}");
    let mut wait = vec!["wait".to_string(), "--timeout".into(), "30".into()];
    wait.extend(ids.iter().map(|i| i.to_string()));
    d.ok(&wait.iter().map(String::as_str).collect::<Vec<_>>());
    let text = std::fs::read_to_string(&log).unwrap();
    let (mut running, mut most) = (0i32, 0i32);
    let mut started = vec![];
    for line in text.lines() {
        let (what, ix) = line.split_once(' ').unwrap();
        if what == "start" {
            running += 1;
            started.push(ix.parse::<u32>().unwrap());
        } else {
            running -= 1;
        }
        most = most.max(running);
    }
    started.sort();
    assert_eq!(started, vec![0, 1, 2, 3, 4, 5], "each index exactly once");
    assert!(most <= 2, "{most} elements ran at once; the limit is 2");
    assert!(d.ok(&["queue", "--expand"]).contains(&format!("[{}:5]", ids[0])));
}

#[test]
fn a_job_whose_process_vanished_while_the_daemon_was_down_is_lost_and_retried() {
    let d = TestDaemon::builder(BIN).gpus(FakeGpus::Count(0)).start();
    let dir = d.scratch("lost");
    let counter = dir.join("count");
    let script = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); echo $((n+1)) > {c}; [ $n -ge 1 ] || sleep 600",
        c = counter.display()
    );
    let id = d.submit(&["--retries", "1", "--retry-delay", "100ms", "--", "sh", "-c", &script]);
    let run_dir = d.wait_state(id, "running")["run_dir"].as_str().unwrap().to_string();
    let sup = std::path::Path::new(&run_dir).join("supervisor.json");
    assert!(eventually(Duration::from_secs(10), || sup.exists()));
    let rec: Value = serde_json::from_slice(&std::fs::read(&sup).unwrap()).unwrap();
    d.ok(&["daemon", "stop"]);
    // The machine "loses" the job while no daemon watches: supervisor and job killed outright.
    unsafe {
        libc::kill(rec["supervisor_pid"].as_i64().unwrap() as i32, libc::SIGKILL);
        libc::kill(-(rec["job_pid"].as_i64().unwrap() as i32), libc::SIGKILL);
    }
    std::thread::sleep(Duration::from_millis(200));
    d.start_daemon();
    let v = d.wait_state(id, "succeeded");
    let a = attempts(&v);
    assert_eq!(a[0]["state"], "lost", "{v:#}");
    assert_eq!(a.len(), 2);
}

#[test]
fn a_foreign_process_appearing_mid_run_keeps_new_work_off_its_gpu() {
    let gpus = vec![FakeGpu::idle(), FakeGpu::idle()];
    let d = TestDaemon::builder(BIN).gpus(FakeGpus::File(gpus)).start();
    let first = d.submit(&["--gpus", "1", "--", "sleep", "30"]);
    assert_eq!(d.wait_state(first, "running")["gpus_assigned"], serde_json::json!([0]));
    d.set_gpus(&[FakeGpu::idle(), FakeGpu::foreign(5151)]);
    std::thread::sleep(Duration::from_millis(1500));
    let second = d.submit(&["--gpus", "1", "--", "true"]);
    let v = d
        .wait_for(second, Duration::from_secs(5), |v| v["pending_reason"].as_str().is_some_and(|r| r.contains("5151")));
    assert_eq!(v["state"], "queued");
    d.ok(&["cancel", &first.to_string()]);
    assert_eq!(d.wait_state(second, "succeeded")["gpus_assigned"], serde_json::json!([0]));
}
