//! End to end: the CLI's output and its answers to bad input (one clear line, non-zero exit,
//! nothing changed).

use ravel_test_support::{FakeGpus, TestDaemon};

const BIN: &str = env!("CARGO_BIN_EXE_ravel");

#[test]
fn run_wait_streams_output_and_exits_like_the_job() {
    let d = TestDaemon::builder(BIN).start();
    let out = d.run(&["run", "--wait", "--", "sh", "-c", "echo out; echo err >&2; exit 5"]);
    assert_eq!(out.status.code(), Some(5));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    let id: i64 = lines.next().unwrap().parse().unwrap();
    assert_eq!(lines.next(), Some("out"));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!(d.ok(&["logs", &id.to_string(), "--stdout"]), "out\n");
    let out = d.run(&["logs", &id.to_string(), "--stderr"]);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
}

#[test]
fn logs_tail_and_follow() {
    let d = TestDaemon::builder(BIN).start();
    let id = d.submit(&["--", "sh", "-c", "seq 1 1000; sleep 0.3; echo last"]);
    let followed = d.ok(&["logs", "-f", "--stdout", &id.to_string()]);
    assert!(followed.ends_with("1000\nlast\n"), "{followed}");
    assert_eq!(followed.lines().count(), 1001);
    assert_eq!(d.ok(&["logs", "--tail", "3", &id.to_string()]), "999\n1000\nlast\n");
}

#[test]
fn queue_show_and_json() {
    let d = TestDaemon::builder(BIN).gpus(FakeGpus::Count(2)).start();
    let id = d.submit(&["--name", "train", "--gpus", "2", "--wait", "--", "true"]);
    let q = d.ok(&["queue"]);
    assert!(q.starts_with("ID"), "{q}");
    assert!(q.contains("train") && q.contains("succeeded") && q.contains("0,1"), "{q}");
    let jobs: serde_json::Value = serde_json::from_str(&d.ok(&["queue", "--json"])).unwrap();
    assert_eq!(jobs[0]["id"], id);
    assert_eq!(jobs[0]["spec"]["command"], serde_json::json!(["true"]));
    let show = d.ok(&["show", &id.to_string()]);
    assert!(show.contains("state:") && show.contains("succeeded") && show.contains("ATTEMPT"), "{show}");
    let status: serde_json::Value = serde_json::from_str(&d.ok(&["daemon", "status", "--json"])).unwrap();
    assert_eq!(status["gpus_total"], 2);
    let gpus: serde_json::Value = serde_json::from_str(&d.ok(&["gpus", "--json"])).unwrap();
    assert_eq!(gpus["probe"], "fake");
    assert_eq!(gpus["gpus"].as_array().unwrap().len(), 2);
}

#[test]
fn bad_input_gets_one_clear_line_and_changes_nothing() {
    let d = TestDaemon::builder(BIN).gpus(FakeGpus::Count(2)).start();
    let before = d.ok(&["queue", "--all", "--json"]);
    let mut errors = vec![];

    let (code, err) = d.fails(&["show", "999"]);
    assert_eq!(code, 1);
    assert!(err.contains("no job 999"), "{err}");
    errors.push(err);

    let (code, err) = d.fails(&["run", "--gpus", "-1", "--", "true"]);
    assert_eq!(code, 2, "a usage error");
    assert!(err.contains("--gpus"), "{err}");

    let (_, err) = d.fails(&["run", "--gpus", "3", "--", "true"]);
    assert!(err.contains("has 2 GPUs") && err.contains("asks for 3"), "{err}");
    errors.push(err);

    let (_, err) = d.fails(&["run", "--cwd", "/no/such/dir", "--", "true"]);
    assert!(err.contains("/no/such/dir") && err.contains("does not exist"), "{err}");
    errors.push(err);

    let (code, err) = d.fails(&["run", "--"]);
    assert_eq!(code, 2, "a usage error");
    assert!(err.contains("no command"), "{err}");
    errors.push(err);

    // An unknown flag is not taken for the command (which accepts words that look like flags).
    for args in [&["run", "--bogus", "--", "true"][..], &["run", "--bogus", "true"]] {
        let (code, err) = d.fails(args);
        assert_eq!(code, 2, "a usage error: {args:?}");
        assert!(err.contains("unknown option --bogus"), "{err}");
        errors.push(err);
    }

    let (_, err) = d.fails(&["run", "--env", "NOEQUALS", "--", "true"]);
    assert!(err.contains("KEY=VALUE"), "{err}");
    errors.push(err);

    let (code, err) = d.fails(&["cancel", "4242"]);
    assert_eq!(code, 1);
    assert!(err.contains("no such job"), "{err}");
    errors.push(err);

    for e in &errors {
        assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
    }
    assert_eq!(d.ok(&["queue", "--all", "--json"]), before, "bad input changed the queue");
}

#[test]
fn api_errors_are_json_with_a_code() {
    let d = TestDaemon::builder(BIN).start();
    let client = ravel_client::Client::local(d.home().join("ravel.sock"));
    for (method, path, status, code) in [
        ("GET", "/v1/jobs/abc", 400, "bad_request"),
        ("GET", "/v1/jobs/77", 404, "not_found"),
        ("DELETE", "/v1/jobs", 405, "bad_request"),
        ("GET", "/v1/nope", 404, "not_found"),
    ] {
        match client.raw(method, path, None) {
            Err(ravel_client::ClientError::Api { status: s, body }) => {
                assert_eq!((s, body.code.as_str()), (status, code), "{method} {path}: {}", body.error);
                assert!(!body.error.is_empty());
            }
            other => panic!("{method} {path}: {other:?}"),
        }
    }
    match client.raw("POST", "/v1/jobs", Some(b"{not json")) {
        Err(ravel_client::ClientError::Api { status: 400, body }) => assert!(body.error.contains("bad request body")),
        other => panic!("{other:?}"),
    }
    // A body that does not fit the type names where, through the path inside the document.
    match client.raw("POST", "/v1/jobs", Some(br#"{"spec": {"command": "true", "cwd": "/"}}"#)) {
        Err(ravel_client::ClientError::Api { status: 400, body }) => {
            assert!(body.error.contains("spec.command: invalid type"), "{}", body.error)
        }
        other => panic!("{other:?}"),
    }
    let big = vec![b' '; 5 << 20];
    match client.raw("POST", "/v1/jobs", Some(&big)) {
        Err(ravel_client::ClientError::Api { status: 413, body }) => assert_eq!(body.code, "too_large"),
        Err(ravel_client::ClientError::Io { .. }) => {} // the server may close before reading it all
        other => panic!("{other:?}"),
    }
}

#[test]
fn read_commands_without_a_daemon_say_so_and_do_not_start_one() {
    let d = TestDaemon::builder(BIN).prepare();
    for args in [&["queue"][..], &["show", "1"], &["gpus"], &["logs", "1"]] {
        let (code, err) = d.fails(args);
        assert_eq!(code, 1);
        assert!(err.contains("not running") && err.contains("ravel daemon start"), "{args:?}: {err}");
    }
    let out = d.run(&["daemon", "status"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(d.daemon_pid().is_none(), "a read command started a daemon");
}

#[test]
fn stale_socket_and_pid_file_are_replaced() {
    let d = TestDaemon::builder(BIN).prepare();
    // Leave what a crashed daemon would: a socket nobody listens on, a pid file nobody locks.
    let sock = d.home().join("ravel.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    std::fs::write(d.home().join("ravel.pid"), "999999\n").unwrap();
    let (_, err) = d.fails(&["queue"]);
    assert!(err.contains("not running"), "{err}");
    let id = d.submit(&["--wait", "--", "true"]);
    assert_eq!(d.state(id), "succeeded");
    let pid = std::fs::read_to_string(d.home().join("ravel.pid")).unwrap();
    assert_eq!(pid.trim().parse::<i32>().unwrap(), d.daemon_pid().unwrap());
}

#[test]
fn a_second_daemon_refuses_to_start() {
    let d = TestDaemon::builder(BIN).start();
    let out = d.run(&["daemon", "start", "--foreground"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already running"));
    assert!(d.ok(&["daemon", "start"]).contains("already running"));
}

#[test]
fn a_command_that_cannot_start_fails_with_the_reason() {
    let d = TestDaemon::builder(BIN).start();
    let out = d.run(&["run", "--wait", "--", "no-such-program-xyz"]);
    assert_eq!(out.status.code(), Some(127));
    let id: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let v = d.show(id);
    assert_eq!(v["state"], "failed");
    assert!(v["reason"].as_str().unwrap().contains("no-such-program-xyz"), "{v}");
}

#[test]
fn queue_lists_a_bounded_page_of_waiting_jobs() {
    let d = TestDaemon::builder(BIN).gpus(FakeGpus::Count(0)).start();
    let running = d.submit(&["--", "sleep", "30"]);
    let held: Vec<i64> = (0..4).map(|_| d.submit(&["--hold", "--", "true"])).collect();
    d.wait_state(running, "running");
    let out = d.ok(&["queue", "--limit", "2"]);
    assert!(out.contains(&held[0].to_string()) && out.contains(&held[1].to_string()), "{out}");
    assert!(!out.lines().any(|l| l.starts_with(&format!("{} ", held[3]))), "{out}");
    assert!(out.contains("and 2 more waiting jobs"), "{out}");
    assert!(out.lines().any(|l| l.starts_with(&format!("{running} "))), "running jobs are always listed: {out}");
    // Listings leave the environment out; `show` has it.
    let rows: Vec<serde_json::Value> = serde_json::from_str(&d.ok(&["queue", "--json"])).unwrap();
    assert!(rows.iter().all(|r| r["spec"]["env"].as_array().is_some_and(|e| e.is_empty())));
    assert!(!d.show(running)["spec"]["env"].as_array().unwrap().is_empty());
}
