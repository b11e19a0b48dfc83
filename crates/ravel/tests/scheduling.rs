//! End to end: real daemon, real store, real supervisors and jobs, fake GPUs.
//! Submit → placement on free GPUs → environment → order → freeing → next start.

use ravel_test_support::{FakeGpu, FakeGpus, TestDaemon, read_when_written};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_ravel");

fn file_arg(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

#[test]
fn jobs_get_distinct_free_gpus_and_ravel_variables() {
    let d = TestDaemon::builder(BIN).gpus(FakeGpus::Count(4)).start();
    let dir = d.scratch("env");
    let script = "echo \"$CUDA_VISIBLE_DEVICES|$RAVEL_JOB_ID|$RAVEL_ATTEMPT|$RAVEL_RUN_DIR|$RAVEL_OUTPUT_DIR|$MY_VAR|$(pwd)|$CUDA_DEVICE_ORDER\" > \"$OUT\"; sleep 2";
    let mut ids = vec![];
    for i in 0..2 {
        let out = dir.join(format!("job{i}"));
        ids.push(d.submit(&[
            "--gpus",
            "2",
            "--env",
            &format!("OUT={}", file_arg(&out)),
            "--env",
            "MY_VAR=hello",
            "--cwd",
            &file_arg(&dir),
            "--",
            "sh",
            "-c",
            script,
        ]));
    }
    let mut seen = vec![];
    for (i, id) in ids.iter().enumerate() {
        let line = read_when_written(&dir.join(format!("job{i}")), Duration::from_secs(10)).expect("job wrote its env");
        let f: Vec<&str> = line.trim().split('|').collect();
        let gpus: Vec<u32> = f[0].split(',').map(|g| g.parse().unwrap()).collect();
        assert_eq!(gpus.len(), 2, "{line}");
        seen.extend(gpus);
        assert_eq!(f[1], id.to_string());
        assert_eq!(f[2], "1");
        assert!(f[3].ends_with(&format!("runs/{}k/{id}/1", id / 1000)), "{line}");
        assert_eq!(f[4], format!("{}/outputs", f[3]));
        assert_eq!(f[5], "hello");
        assert_eq!(f[6], file_arg(&dir));
        assert_eq!(f[7], "PCI_BUS_ID");
        let shown = d.show(*id);
        assert_eq!(shown["gpus_assigned"].as_array().unwrap().len(), 2);
    }
    seen.sort();
    assert_eq!(seen, vec![0, 1, 2, 3], "two jobs must hold four distinct GPUs");
    // When the attempt ends, run.json in its run dir records it.
    d.wait_state(ids[0], "succeeded");
    let run_dir = d.show(ids[0])["run_dir"].as_str().unwrap().to_string();
    let run_json = std::path::Path::new(&run_dir).join("run.json");
    assert!(ravel_test_support::eventually(Duration::from_secs(5), || run_json.exists()));
    let run: serde_json::Value = serde_json::from_slice(&std::fs::read(&run_json).unwrap()).unwrap();
    assert_eq!(run["attempt"]["state"], "succeeded");
    assert_eq!(run["attempt"]["exit_code"], 0);
    assert_eq!(run["job"]["id"], ids[0]);
}

#[test]
fn a_waiting_job_starts_promptly_when_a_gpu_frees() {
    let d = TestDaemon::builder(BIN).gpus(FakeGpus::Count(1)).start();
    let dir = d.scratch("handoff");
    let mut gaps = vec![];
    for round in 0..3 {
        let end = dir.join(format!("end{round}"));
        let start = dir.join(format!("start{round}"));
        let holder =
            d.submit(&["--gpus", "1", "--", "sh", "-c", &format!("sleep 0.5; date +%s%N > {}", file_arg(&end))]);
        let waiter = d.submit(&["--gpus", "1", "--", "sh", "-c", &format!("date +%s%N > {}", file_arg(&start))]);
        // While the only GPU is held, the second job waits, and (once a pass looked at it) says why.
        let v = d.wait_for(waiter, Duration::from_secs(5), |v| {
            v["state"] != "queued" || v["pending_reason"].as_str().is_some_and(|r| r != "Queued")
        });
        if v["state"] == "queued" {
            let reason = v["pending_reason"].as_str().unwrap_or_default();
            assert!(reason.contains("GPU"), "pending reason {reason:?}");
        }
        let t_end: i128 = read_when_written(&end, Duration::from_secs(10)).unwrap().trim().parse().unwrap();
        let t_start: i128 = read_when_written(&start, Duration::from_secs(10)).unwrap().trim().parse().unwrap();
        assert!(t_start > t_end, "the waiter started before the holder ended");
        gaps.push((t_start - t_end) as f64 / 1e6);
        d.wait_state(holder, "succeeded");
        d.wait_state(waiter, "succeeded");
    }
    gaps.sort_by(|a, b| a.partial_cmp(b).unwrap());
    // From the holder's last instruction to the waiter's first: the median of three hand-offs.
    eprintln!("hand-off gaps (ms): {gaps:?}");
    assert!(gaps[1] < 50.0, "hand-off took {gaps:?} ms");
}

#[test]
fn a_foreign_process_keeps_its_gpu_out_of_use() {
    let gpus = vec![FakeGpu::idle(), FakeGpu::foreign(4242)];
    let d = TestDaemon::builder(BIN).gpus(FakeGpus::File(gpus)).start();
    let a = d.submit(&["--gpus", "1", "--", "sleep", "30"]);
    let b = d.submit(&["--gpus", "1", "--", "true"]);
    let va = d.wait_state(a, "running");
    assert_eq!(va["gpus_assigned"], serde_json::json!([0]));
    let vb = d.wait_for(b, Duration::from_secs(5), |v| {
        v["pending_reason"].as_str().is_some_and(|r| r.contains("GPU 1 busy") && r.contains("4242"))
    });
    assert_eq!(vb["state"], "queued");
    let gpus = d.ok(&["gpus"]);
    assert!(gpus.contains("busy") && gpus.contains("4242"), "{gpus}");
    // The foreign process goes away: the job gets GPU 1 at the next probe.
    d.set_gpus(&[FakeGpu::idle(), FakeGpu::idle()]);
    let vb = d.wait_state(b, "succeeded");
    assert_eq!(vb["gpus_assigned"], serde_json::json!([1]));
}

#[test]
fn higher_priority_runs_first_then_submit_order() {
    let d = TestDaemon::builder(BIN).gpus(FakeGpus::Count(1)).start();
    let dir = d.scratch("order");
    let log = dir.join("order.log");
    let blocker = d.submit(&["--gpus", "1", "--", "sleep", "1"]);
    d.wait_state(blocker, "running");
    let append = |name: &str| format!("echo {name} >> {}", file_arg(&log));
    let low = d.submit(&["--gpus", "1", "--priority", "-1", "--", "sh", "-c", &append("low")]);
    let first = d.submit(&["--gpus", "1", "--", "sh", "-c", &append("first")]);
    let second = d.submit(&["--gpus", "1", "--", "sh", "-c", &append("second")]);
    let high = d.submit(&["--gpus", "1", "--priority", "5", "--", "sh", "-c", &append("high")]);
    for id in [low, first, second, high] {
        d.wait_state(id, "succeeded");
    }
    let order = std::fs::read_to_string(&log).unwrap();
    assert_eq!(order.lines().collect::<Vec<_>>(), vec!["high", "first", "second", "low"]);
}

#[test]
fn cpu_slots_limit_concurrency() {
    let d = TestDaemon::builder(BIN).gpus(FakeGpus::Count(0)).cpus(2).start();
    let ids: Vec<i64> = (0..3).map(|_| d.submit(&["--", "sleep", "30"])).collect();
    d.wait_state(ids[0], "running");
    d.wait_state(ids[1], "running");
    let v = d.show(ids[2]);
    assert_eq!(v["state"], "queued");
    assert!(v["pending_reason"].as_str().unwrap().contains("CPU"), "{v}");
    // A job wanting more slots than the node has is refused at submit.
    let (_, err) = d.fails(&["run", "--cpus", "3", "--", "true"]);
    assert!(err.contains("2 CPU slots"), "{err}");
}

#[test]
fn jobs_placed_as_they_arrive_never_outnumber_the_slots() {
    // Submits from several clients at once: a job that can start the moment it arrives is placed
    // in its submit's own write, under the same lock as any other placement. Never more jobs at
    // once than slots, each runs once, and the ones that had to wait start when slots free.
    let d = TestDaemon::builder(BIN).gpus(FakeGpus::Count(0)).cpus(2).start();
    let dir = d.scratch("slots");
    let running = dir.join("running");
    std::fs::create_dir_all(&running).unwrap();
    let (seen, done) = (dir.join("seen"), dir.join("done"));
    let env =
        [format!("R={}", file_arg(&running)), format!("SEEN={}", file_arg(&seen)), format!("DONE={}", file_arg(&done))];
    // Each job marks itself running, counts the marks (its own included), and unmarks itself.
    let script = r#"touch "$R/$RAVEL_JOB_ID"; ls "$R" | wc -l >> "$SEEN"; sleep 0.05; rm "$R/$RAVEL_JOB_ID"; echo "$RAVEL_JOB_ID" >> "$DONE""#;
    let ids: Vec<i64> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..6)
            .map(|_| {
                s.spawn(|| {
                    (0..5)
                        .map(|_| {
                            d.submit(&["--env", &env[0], "--env", &env[1], "--env", &env[2], "--", "sh", "-c", script])
                        })
                        .collect::<Vec<i64>>()
                })
            })
            .collect();
        clients.into_iter().flat_map(|c| c.join().unwrap()).collect()
    });
    assert_eq!(ids.len(), 30);
    for id in &ids {
        d.wait_state(*id, "succeeded");
    }
    let most = std::fs::read_to_string(&seen).unwrap().lines().map(|l| l.trim().parse::<u32>().unwrap()).max();
    assert!(most.is_some_and(|m| (1..=2).contains(&m)), "at most 2 jobs at once on 2 slots, saw {most:?}");
    let mut ran: Vec<i64> = std::fs::read_to_string(&done).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    ran.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(ran, want, "each job ran exactly once");
}
