//! A shared GPU box: one system daemon (root) for every user, jobs run as their submitters,
//! permissions from the kernel's peer credentials, per-user limits, cgroup containment, and
//! GPU checks. Real daemon, real Unix users (created once, idempotently), real processes; only
//! the GPUs are fake.

use ravel_test_support::system::{ALICE, BOB, LAB_GROUP, SystemDaemon, User, ensure_lab_group, ensure_user};
use ravel_test_support::system::{group_gid, root_or_skip};
use ravel_test_support::{FakeGpu, TestDaemon, eventually, read_when_written};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_ravel");

fn users() -> (User, User) {
    let alice = ensure_user(ALICE);
    let bob = ensure_user(BOB);
    ensure_lab_group();
    (alice, bob)
}

fn gpus(n: usize) -> Vec<FakeGpu> {
    vec![FakeGpu::idle(); n]
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn jobs_run_as_their_submitters_with_their_groups_and_files() {
    if !root_or_skip("jobs_run_as_their_submitters") {
        return;
    }
    let (alice, bob) = users();
    let d = SystemDaemon::start(BIN, &gpus(2), &[]);
    let status = d.ok(Some(&alice), &["daemon", "status"]);
    assert!(status.contains("ravel system daemon is running"), "{status}");
    assert!(status.contains(&format!("you:      {ALICE}\n")), "not an admin, and named by the kernel: {status}");

    let script = "id -u; id -g; id -G; echo \"$HOME $USER $LOGNAME\"; umask; touch made-by-job";
    let out = d.as_user(&alice).args(["run", "--wait", "-q", "--", "sh", "-c", script]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect();
    assert_eq!(lines[0], alice.uid.to_string());
    assert_eq!(lines[1], alice.gid.to_string());
    let lab = group_gid(LAB_GROUP).unwrap().to_string();
    assert!(lines[2].split_whitespace().any(|g| g == lab), "supplementary groups from the group database: {lines:?}");
    assert!(lines[3].ends_with(&format!(" {ALICE} {ALICE}")), "{lines:?}");
    assert_eq!(lines[4], "0022", "the submitter's umask");
    let made = d.user_dir(&alice).join("made-by-job");
    assert_eq!(std::fs::metadata(&made).unwrap().uid(), alice.uid, "files the job writes are its user's");

    // Bob's job is bob's, and its run dir is private to him.
    let id = d.submit(&bob, &["--", "sh", "-c", "id -un > whoami"]);
    let v = d.wait_state(id, "succeeded");
    assert_eq!(v["spec"]["user"], BOB);
    let whoami = read_when_written(&d.user_dir(&bob).join("whoami"), Duration::from_secs(5)).unwrap();
    assert_eq!(whoami.trim(), BOB);
    let run_dir = v["run_dir"].as_str().unwrap();
    let meta = std::fs::metadata(run_dir).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (bob.uid, 0o700), "run dir {run_dir}");
    assert_eq!(std::fs::metadata(format!("{run_dir}/stdout.log")).unwrap().uid(), bob.uid);
}

#[test]
fn other_users_jobs_are_off_limits_and_root_is_not_a_submitter() {
    if !root_or_skip("other_users_jobs_are_off_limits") {
        return;
    }
    let (alice, bob) = users();
    let d = SystemDaemon::start(BIN, &gpus(1), &[]);
    let running = d.submit(&alice, &["--", "sh", "-c", "echo secret-output; sleep 60"]);
    let waiting = d.submit(&alice, &["--hold", "--", "true"]);
    d.wait_state(running, "running");
    let (r, w) = (running.to_string(), waiting.to_string());

    for args in
        [vec!["cancel", &r], vec!["hold", &w], vec!["release", &w], vec!["priority", &w, "-5"], vec!["logs", &r]]
    {
        let (code, err) = d.fails(Some(&bob), &args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(ALICE), "{args:?} names the owner: {err}");
        assert!(!err.contains("secret-output"));
    }
    let (_, err) = d.fails(Some(&bob), &["retry", &r]);
    assert!(err.contains("belongs to"), "{err}");
    assert_eq!(d.show(running)["state"], "running", "bob's attempts changed nothing");
    assert_eq!(d.show(waiting)["held"], true);
    assert_eq!(d.show(waiting)["spec"]["priority"], 0);

    // Everyone sees the queue, with a user column.
    let queue = d.ok(Some(&bob), &["queue"]);
    assert!(queue.contains("USER") && queue.contains(ALICE), "{queue}");
    // But not another user's environment.
    let shown: serde_json::Value =
        serde_json::from_str(&d.ok(Some(&bob), &["show", &r, "--json"])).expect("show --json");
    assert_eq!(shown["spec"]["env"], serde_json::json!([]));

    // A request body cannot claim another user: the kernel says who is asking.
    let submit_raw = |spec: serde_json::Value| {
        let body = serde_json::json!({ "spec": spec }).to_string();
        let sock = d.socket();
        let out = std::process::Command::new("curl")
            .args(["-s", "--unix-socket", sock.to_str().unwrap(), "-H", "content-type: application/json", "-d", &body])
            .arg("http://ravel/v1/jobs")
            .uid(bob.uid)
            .gid(bob.gid)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let reply = submit_raw(serde_json::json!({"command": ["true"], "cwd": "/tmp", "user": ALICE}));
    assert!(reply.contains("forbidden") && reply.contains("cannot be submitted as another user"), "{reply}");
    // Nor claim root's uid.
    let reply = submit_raw(serde_json::json!({"command": ["true"], "cwd": "/tmp", "uid": 0, "gid": 0}));
    assert!(reply.contains("forbidden") && reply.contains("cannot claim another uid"), "{reply}");
    // A user may lower their own job's priority, not raise it above others'.
    d.ok(Some(&alice), &["priority", &w, "-1"]);
    let (_, err) = d.fails(Some(&alice), &["priority", &w, "10"]);
    assert!(err.contains("only an admin may raise"), "{err}");

    // Root is the admin: it may act on anyone's job, but does not run jobs itself.
    let (_, err) = d.fails(None, &["run", "--", "true"]);
    assert!(err.contains("jobs as root are refused"), "{err}");
    d.ok(None, &["cancel", &r]);
    d.wait_state(running, "canceled");
    // Alice may act on her own.
    d.ok(Some(&alice), &["release", &w]);
    d.wait_state(waiting, "succeeded");
    let logs = d.ok(Some(&alice), &["logs", &r]);
    assert!(logs.contains("secret-output"), "{logs}");
}

#[test]
fn a_cwd_the_user_cannot_enter_is_refused() {
    if !root_or_skip("a_cwd_the_user_cannot_enter_is_refused") {
        return;
    }
    let (alice, bob) = users();
    let d = SystemDaemon::start(BIN, &gpus(1), &[]);
    let private = d.user_dir(&alice).join("private");
    std::fs::create_dir_all(&private).unwrap();
    std::os::unix::fs::chown(&private, Some(alice.uid), Some(alice.gid)).unwrap();
    std::fs::set_permissions(&private, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let (code, err) = d.fails(Some(&bob), &["run", "--cwd", private.to_str().unwrap(), "--", "ls"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot enter") && err.contains("private"), "{err}");
    // What lies beyond a directory bob cannot search is not revealed: a missing path there reads
    // the same as an existing one.
    let hidden = private.join("no-such-dir");
    let (_, err) = d.fails(Some(&bob), &["run", "--cwd", hidden.to_str().unwrap(), "--", "ls"]);
    assert!(err.contains("cannot enter") && !err.contains("does not exist"), "{err}");
    let queue = d.ok(None, &["queue", "--json"]);
    assert_eq!(queue.trim(), "[]", "nothing was queued");
    d.submit(&alice, &["--cwd", private.to_str().unwrap(), "--", "true"]);
}

#[test]
fn symlinks_planted_in_a_run_dir_are_never_followed() {
    if !root_or_skip("symlinks_planted_in_a_run_dir_are_never_followed") {
        return;
    }
    let (alice, _) = users();
    let d = SystemDaemon::start(BIN, &gpus(1), &[]);
    let secret_dir = tempfile::tempdir().unwrap();
    let target = secret_dir.path().join("shadow");
    std::fs::write(&target, "root-only-secret\n").unwrap();
    std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::set_permissions(secret_dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let before = std::fs::metadata(&target).unwrap();

    // The job (as alice, who owns her run dir) swaps every record and log for a link to root's
    // file, then ends: the supervisor and the daemon write and read there as root.
    let t = target.to_str().unwrap();
    let script = format!(
        "cd \"$RAVEL_RUN_DIR\" && for f in exit.json supervisor.json run.json stdout.log stderr.log; do \
         rm -f $f; ln -s {t} $f; done"
    );
    let id = d.submit(&alice, &["--", "sh", "-c", &script]);
    let v = d.wait_state(id, "succeeded");
    let run_dir = v["run_dir"].as_str().unwrap().to_string();
    // run.json is written behind: once it is a file, every record has been written.
    let run_json = format!("{run_dir}/run.json");
    assert!(
        eventually(Duration::from_secs(10), || std::fs::symlink_metadata(&run_json).is_ok_and(|m| m.is_file())),
        "run.json replaced, not followed"
    );
    let after = std::fs::metadata(&target).unwrap();
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "root-only-secret\n", "target untouched");
    assert_eq!((after.mtime(), after.mtime_nsec(), after.len()), (before.mtime(), before.mtime_nsec(), before.len()));
    assert!(std::fs::symlink_metadata(format!("{run_dir}/exit.json")).unwrap().is_file(), "replaced, not followed");
    let out = d.run(Some(&alice), &["logs", &id.to_string()]);
    assert!(!text(&out).contains("root-only-secret"), "the daemon never reads through the link: {}", text(&out));
}

#[test]
fn a_user_with_a_long_queue_does_not_keep_another_from_the_next_gpu() {
    if !root_or_skip("a_user_with_a_long_queue") {
        return;
    }
    let (alice, bob) = users();
    let d = SystemDaemon::start(BIN, &gpus(2), &[]);
    // Long enough that bob's job is surely queued before alice's first two end, on a busy
    // machine; and they end a second apart, so "the next free GPU" is one GPU.
    let sleep = "sleep $((3 + RAVEL_ARRAY_INDEX))";
    let first = d.submit(&alice, &["--gpus", "1", "--array", "0-99", "--", "sh", "-c", sleep]);
    d.wait_state(first, "running");
    d.wait_state(first + 1, "running");
    let b = d.submit(&bob, &["--gpus", "1", "--", "true"]);
    assert_eq!(d.show(b)["state"], "queued", "both GPUs are alice's when bob submits");
    d.wait_state(b, "succeeded");
    let bob_started = d.show(b)["started_at"].as_i64().unwrap();
    let jobs: serde_json::Value = serde_json::from_str(&d.ok(None, &["queue", "--all", "--json"])).unwrap();
    let alice_started: Vec<i64> = jobs
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["spec"]["user"] == ALICE)
        .filter_map(|j| j["started_at"].as_i64())
        .collect();
    let before_bob = alice_started.iter().filter(|t| **t < bob_started).count();
    assert!(before_bob <= 2, "bob's job took the next free GPU; alice started {before_bob} before it");
}

#[test]
fn per_user_limits_hold_under_contention_and_only_admins_set_them() {
    if !root_or_skip("per_user_limits_hold_under_contention") {
        return;
    }
    let (alice, bob) = users();
    let d = SystemDaemon::start(BIN, &gpus(8), &[]);
    let (_, err) = d.fails(Some(&alice), &["admin", "limits", "--default", "--gpus", "8"]);
    assert!(err.contains("only an admin"), "{err}");
    d.ok(None, &["admin", "limits", "--default", "--gpus", "2", "--queued", "50"]);
    let shown = d.ok(Some(&bob), &["admin", "limits"]);
    assert!(shown.contains("(default)") && shown.contains(" 2 "), "{shown}");

    let mut mine = vec![];
    for _ in 0..5 {
        mine.push(d.submit(&alice, &["--gpus", "1", "--", "sleep", "1.5"]));
    }
    let theirs: Vec<i64> = (0..2).map(|_| d.submit(&bob, &["--gpus", "1", "--", "sleep", "1.5"])).collect();
    for id in &theirs {
        d.wait_state(*id, "running");
    }
    let limited = d.show(mine[4]);
    let reason = limited["pending_reason"].as_str().unwrap_or_default();
    assert_eq!(reason, format!("User limit: {ALICE} uses 2 of 2 GPUs"), "{limited:#}");
    // Sample while alice's jobs flow: never more than 2 of hers hold GPUs.
    let mut max_seen = 0;
    eventually(Duration::from_secs(30), || {
        let jobs: serde_json::Value = serde_json::from_str(&d.ok(None, &["queue", "--json"])).unwrap();
        let running = jobs
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["spec"]["user"] == ALICE && matches!(j["state"].as_str(), Some("running" | "allocated")))
            .count();
        max_seen = max_seen.max(running);
        mine.iter().all(|id| d.show(*id)["state"] == "succeeded")
    });
    for id in &mine {
        let v = d.show(*id);
        assert_eq!(v["state"], "succeeded", "every job of alice's ran in the end: {v:#}");
    }
    assert!(max_seen <= 2, "alice held {max_seen} GPUs at once");

    // The queued limit: 100 more from one user are refused whole, with a clear line.
    let (code, err) = d.fails(Some(&bob), &["run", "--array", "0-99", "--", "true"]);
    assert_eq!(code, 1);
    assert!(err.contains("User limit") && err.contains("of 50 jobs waiting"), "{err}");
    // A higher limit for one user lifts it for them alone.
    d.ok(None, &["admin", "limits", BOB, "--queued", "200"]);
    d.ok(Some(&bob), &["run", "--array", "0-99", "--", "true"]);
    let (_, err) = d.fails(Some(&alice), &["run", "--array", "0-99", "--", "true"]);
    assert!(err.contains("User limit"), "{err}");
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.state_dir().join("limits.json")).unwrap()).unwrap();
    assert_eq!(cfg["users"][BOB]["queued"], 200, "limits are kept in the daemon's limits file");
}

#[test]
fn a_job_past_its_memory_limit_is_killed_and_its_neighbour_lives_on() {
    if !root_or_skip("a_job_past_its_memory_limit") {
        return;
    }
    let (alice, bob) = users();
    let d = SystemDaemon::start(BIN, &gpus(1), &[]);
    let status = d.ok(None, &["daemon", "status", "--json"]);
    assert!(status.contains("cgroup v"), "this machine kind has writable cgroups: {status}");
    let hog = d.submit(&bob, &["--mem", "64M", "--", "sh", "-c", "head -c 400M /dev/zero | tail"]);
    let calm = d.submit(&alice, &["--mem", "64M", "--", "sh", "-c", "sleep 1; echo fine"]);
    let v = d.wait_state(hog, "failed");
    assert_eq!(v["reason"], "out of memory", "{v:#}");
    d.wait_state(calm, "succeeded");
    assert_eq!(d.ok(Some(&alice), &["logs", &calm.to_string()]).trim(), "fine");
    let shown = d.ok(None, &["show", &hog.to_string()]);
    assert!(shown.contains("memory limit:  64 MiB"), "{shown}");
    // The daemon lives on.
    d.ok(None, &["daemon", "status"]);
}

#[test]
fn a_job_on_a_gpu_it_was_not_given_and_an_idle_gpu_are_flagged() {
    let d = TestDaemon::builder(BIN)
        .gpus(ravel_test_support::FakeGpus::File(gpus(2)))
        .arg("--idle-gpu-after")
        .arg("1s")
        .start();
    let dir = d.scratch("truth");
    let pid_file = dir.join("pid");
    let id = d.submit(&[
        "--gpus",
        "1",
        "--cwd",
        dir.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "echo $$ > pid.tmp; mv pid.tmp pid; exec sleep 60",
    ]);
    d.wait_state(id, "running");
    let pid: u32 = read_when_written(&pid_file, Duration::from_secs(10)).unwrap().trim().parse().unwrap();
    let v = d.show(id);
    assert_eq!(v["gpus_assigned"], serde_json::json!([0]));
    // The job shows up on GPU 1, which it was not given (GPU 0 stays idle).
    d.set_gpus(&[
        FakeGpu::idle(),
        FakeGpu { memory_used_mib: 1000, utilization_pct: 50, processes: vec![(pid, 1000)] },
    ]);
    let flagged = eventually(Duration::from_secs(15), || {
        let shown = d.ok(&["show", &id.to_string()]);
        shown.contains("uses GPU 1, which it was not given") && shown.contains("holds GPU 0 at 0% utilization")
    });
    assert!(flagged, "{}", d.ok(&["show", &id.to_string()]));
    let gpus_out = d.ok(&["gpus"]);
    assert!(gpus_out.contains("! GPU 1: job") && gpus_out.contains("which it was not given"), "{gpus_out}");
    let events = d.show(id)["events"].clone();
    let kinds: Vec<&str> = events.as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"gpu_not_allocated") && kinds.contains(&"gpu_idle"), "{events:#}");
    assert_eq!(kinds.len(), 2, "each problem is flagged once: {events:#}");
}

#[test]
fn an_admin_group_a_private_queue_and_a_group_socket() {
    if !root_or_skip("an_admin_group_a_private_queue_and_a_group_socket") {
        return;
    }
    let (alice, bob) = users();
    let lab = group_gid(LAB_GROUP).unwrap();
    let d = SystemDaemon::start(
        BIN,
        &gpus(1),
        &["--admin-group", LAB_GROUP, "--private-queue", "--socket-group", LAB_GROUP],
    );
    let meta = std::fs::metadata(d.socket()).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, lab), "the socket is the group's alone");
    // Bob is not in the group: he cannot even connect.
    let (_, err) = d.fails(Some(&bob), &["queue"]);
    assert!(err.contains("ermission denied") || err.contains("cannot connect"), "{err}");

    // Let bob in (0666 again), keeping the admin group and the private queue.
    std::fs::set_permissions(d.socket(), std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let bobs = d.submit(&bob, &["--hold", "--", "true"]);
    let alices = d.submit(&alice, &["--hold", "--", "true"]);
    let seen: serde_json::Value = serde_json::from_str(&d.ok(Some(&bob), &["queue", "--json"])).unwrap();
    let ids: Vec<i64> = seen.as_array().unwrap().iter().map(|j| j["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, vec![bobs], "bob sees only his own jobs");
    let (_, err) = d.fails(Some(&bob), &["show", &alices.to_string()]);
    assert!(err.contains("another user's"), "{err}");
    // Nor in the event feed.
    let events = d.ok(Some(&bob), &["events", "--json"]);
    let jobs: Vec<i64> = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["job"].as_i64().unwrap())
        .collect();
    assert!(jobs.contains(&bobs) && !jobs.contains(&alices), "bob's feed: {events}");
    // Alice is in the admin group: she sees and may act on bob's job.
    let status = d.ok(Some(&alice), &["daemon", "status"]);
    assert!(status.contains(&format!("you:      {ALICE} (admin)")), "{status}");
    let seen: serde_json::Value = serde_json::from_str(&d.ok(Some(&alice), &["queue", "--json"])).unwrap();
    assert_eq!(seen.as_array().unwrap().len(), 2);
    d.ok(Some(&alice), &["cancel", &bobs.to_string()]);
    assert_eq!(d.show(bobs)["state"], "canceled");
}
