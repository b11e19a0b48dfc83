//! Measures dispatch latency: from calling `launch()` to the job's first instruction, taken
//! as the wall-clock time `date +%s%N` prints as the job. `date` is run directly (no shell),
//! so the figure includes the supervisor's start, its spawn of the job and `date`'s own exec
//! and dynamic linking.
//!
//! Usage: `cargo run -p ravel-exec --example launch_latency [ROUNDS]`. The example is also
//! its own supervisor (`launch_latency __supervise RUN_DIR`), as the `ravel` binary is.

use std::path::Path;
use std::process::{Command, exit};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ravel_exec::{LaunchSpec, SUPERVISE_SUBCOMMAND};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [sub, run_dir, rest @ ..] = args.as_slice()
        && sub == SUPERVISE_SUBCOMMAND
    {
        let from_stdin = rest.first().is_some_and(|a| a == ravel_exec::SPEC_FROM_STDIN);
        exit(ravel_exec::supervise_main(Path::new(run_dir), from_stdin));
    }
    let rounds: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(30);
    let exe = std::env::current_exe().expect("current_exe");

    let mut to_job = Vec::new();
    let mut in_launch = Vec::new();
    let mut direct = Vec::new();
    for _ in 0..rounds {
        let (job_start, launch_call) = one_launch(&exe);
        to_job.push(job_start);
        in_launch.push(launch_call);
        // Baseline: the same job spawned directly, without a supervisor.
        let t0 = now_ns();
        let out = Command::new("date").arg("+%s%N").output().expect("date");
        direct.push(parse_ns(&String::from_utf8_lossy(&out.stdout)) - t0);
    }
    report("launch() -> job's first instruction", &mut to_job);
    report("launch() call itself", &mut in_launch);
    report("baseline: spawn `date` directly", &mut direct);
}

/// Returns (ns from launch() to the job's timestamp, ns spent inside launch()).
fn one_launch(exe: &Path) -> (i64, i64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = LaunchSpec {
        command: vec!["date".into(), "+%s%N".into()],
        cwd: "/".into(),
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        kill_grace_ms: 1000,
        sync_records: false,
        timeout_ms: None,
        run_as: None,
        umask: None,
        cgroup: None,
        lease_file: None,
    };
    let t0 = now_ns();
    let launched = ravel_exec::launch(exe, dir.path(), &spec).expect("launch");
    let launch_call = now_ns() - t0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while ravel_exec::read_exit(dir.path()).is_none() {
        assert!(Instant::now() < deadline, "job did not finish");
        thread::sleep(Duration::from_millis(1));
    }
    // exit.json precedes the supervisor's exit by a moment; wait for it so no zombie is left.
    while ravel_exec::is_same_process(launched.pid, launched.start_time) {
        thread::sleep(Duration::from_millis(1));
    }
    ravel_exec::reap(launched.pid);
    let out = std::fs::read_to_string(dir.path().join(ravel_exec::STDOUT_FILE)).expect("log");
    (parse_ns(&out) - t0, launch_call)
}

fn now_ns() -> i64 {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    i64::try_from(d.as_nanos()).expect("nanoseconds fit i64 until 2262")
}

fn parse_ns(text: &str) -> i64 {
    text.trim().parse().expect("date +%s%N output")
}

fn report(what: &str, samples: &mut [i64]) {
    samples.sort_unstable();
    let ms = |ns: i64| ns as f64 / 1e6;
    let n = samples.len();
    eprintln!(
        "{what}: median {:.2} ms, min {:.2} ms, p90 {:.2} ms, max {:.2} ms ({n} rounds)",
        ms(samples[n / 2]),
        ms(samples[0]),
        ms(samples[n * 9 / 10]),
        ms(samples[n - 1]),
    );
}
