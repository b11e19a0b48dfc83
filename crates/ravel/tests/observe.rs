//! Observability of a real daemon: Prometheus metrics that parse and move as jobs flow, and the
//! health endpoints.

use ravel_test_support::TestDaemon;
use std::collections::BTreeMap;

const BIN: &str = env!("CARGO_BIN_EXE_ravel");

fn get(d: &TestDaemon, path: &str) -> (u16, String) {
    let sock = d.home().join("ravel.sock");
    let out = std::process::Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "--unix-socket", sock.to_str().unwrap()])
        .arg(format!("http://ravel{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("status"), body.to_string())
}

/// Parses the Prometheus text format (0.0.4) strictly enough to catch what a scraper would
/// refuse: every sample belongs to a family announced by HELP and TYPE, names and labels are
/// well formed, values are numbers, histogram buckets are cumulative and end at `+Inf` with
/// the count. Returns each sample (name with labels) and its value.
fn parse_exposition(text: &str) -> BTreeMap<String, f64> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helped = std::collections::BTreeSet::new();
    let mut samples = BTreeMap::new();
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split_whitespace().next().unwrap();
            assert!(name_ok(name), "bad name in {line:?}");
            helped.insert(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut f = rest.split_whitespace();
            let (name, kind) = (f.next().unwrap(), f.next().unwrap());
            assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "{line:?}");
            assert!(helped.contains(name), "TYPE before HELP: {line:?}");
            assert!(types.insert(name.to_string(), kind.to_string()).is_none(), "family twice: {line:?}");
            continue;
        }
        assert!(!line.starts_with('#') && !line.trim().is_empty(), "stray line {line:?}");
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(name_ok(name), "bad sample name in {line:?}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "bad labels in {line:?}");
            for pair in labels[1..labels.len() - 1].split("\",").filter(|p| !p.is_empty()) {
                let (k, _) = pair.split_once("=\"").unwrap_or_else(|| panic!("bad label in {line:?}"));
                assert!(name_ok(k), "bad label name in {line:?}");
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.get(*f).is_some_and(|t| t == "histogram")))
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample of an undeclared family: {line:?}");
        assert!(samples.insert(series.to_string(), value).is_none(), "sample twice: {line:?}");
    }
    // Histograms: cumulative buckets, +Inf last and equal to the count.
    for (family, _) in types.iter().filter(|(_, t)| *t == "histogram") {
        let mut per_series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for (series, v) in samples.iter().filter(|(s, _)| s.starts_with(&format!("{family}_bucket{{"))) {
            let le_at = series.find("le=\"").unwrap() + 4;
            let le_end = le_at + series[le_at..].find('"').unwrap();
            let le: f64 = match &series[le_at..le_end] {
                "+Inf" => f64::INFINITY,
                s => s.parse().unwrap(),
            };
            let key = format!("{}{}", &series[..le_at - 4], &series[le_end + 1..]);
            per_series.entry(key).or_default().push((le, *v));
        }
        for (key, mut buckets) in per_series {
            buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
            assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{key}: buckets not cumulative");
            assert_eq!(buckets.last().unwrap().0, f64::INFINITY, "{key}: no +Inf bucket");
            let labels = key.trim_start_matches(&format!("{family}_bucket")).replace("{,", "{").replace(",}", "}");
            let labels = if labels == "{}" { String::new() } else { labels };
            let count = samples[&format!("{family}_count{labels}")];
            assert_eq!(buckets.last().unwrap().1, count, "{key}: +Inf bucket is not the count");
        }
    }
    samples
}

#[test]
fn metrics_parse_and_move_as_jobs_flow() {
    let d = TestDaemon::builder(BIN).start();
    let (code, before) = get(&d, "/metrics");
    assert_eq!(code, 200);
    let before = parse_exposition(&before);
    let ids: Vec<i64> = (0..3).map(|_| d.submit(&["--gpus", "1", "--", "true"])).collect();
    let failing = d.submit(&["--", "false"]);
    let held = d.submit(&["--hold", "--", "true"]);
    for id in &ids {
        d.wait_state(*id, "succeeded");
    }
    d.wait_state(failing, "failed");
    let (_, after) = get(&d, "/metrics");
    let after = parse_exposition(&after);
    let delta = |k: &str| after[k] - before.get(k).copied().unwrap_or(0.0);
    assert_eq!(delta("ravel_jobs_submitted_total"), 5.0);
    assert_eq!(delta("ravel_jobs_started_total"), 4.0);
    assert_eq!(delta("ravel_jobs_finished_total{state=\"succeeded\"}"), 3.0);
    assert_eq!(delta("ravel_jobs_finished_total{state=\"failed\"}"), 1.0);
    assert_eq!(after["ravel_jobs{state=\"waiting\"}"], 1.0, "the held job waits");
    assert_eq!(delta("ravel_queue_wait_seconds_count"), 4.0);
    assert!(after["ravel_scheduler_pass_seconds_count"] >= 0.0);
    // A job that starts the moment it arrives is placed in its submit's own write.
    assert!(delta("ravel_store_write_seconds_count") >= 5.0 + 4.0, "submits (with or before placements) and ends");
    assert!(after["ravel_api_request_seconds_count{method=\"POST\",route=\"/v1/jobs\"}"] >= 5.0);
    assert!(after.keys().any(|k| k.contains("route=\"/v1/jobs/{id}\"")), "routes by pattern, not by path");
    let gpus = |state: &str| -> f64 {
        let suffix = format!("state=\"{state}\"}}");
        after.iter().filter(|(k, _)| k.starts_with("ravel_gpus{") && k.ends_with(&suffix)).map(|(_, v)| *v).sum()
    };
    assert_eq!((gpus("free"), gpus("allocated"), gpus("foreign_busy")), (4.0, 0.0, 0.0));
    d.ok(&["cancel", &held.to_string()]);
    let (_, last) = get(&d, "/metrics");
    let last = parse_exposition(&last);
    assert_eq!(last["ravel_jobs_finished_total{state=\"canceled\"}"], 1.0);
    assert_eq!(last["ravel_jobs{state=\"waiting\"}"], 0.0);
}

#[test]
fn health_and_readiness() {
    let d = TestDaemon::builder(BIN).start();
    assert_eq!(get(&d, "/healthz"), (200, "ok\n".to_string()));
    let (code, body) = get(&d, "/readyz");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ready"], true);
    for check in ["store", "scheduler", "agent", "accepting"] {
        assert_eq!(v["checks"][check], "ok", "{body}");
    }
}

/// Complete events (ended by a blank line) in an SSE transcript: (id, event name, data).
fn sse_events(text: &str) -> Vec<(u64, String, String)> {
    let mut out = vec![];
    for block in text.split("\n\n") {
        if !text.contains(&format!("{block}\n\n")) {
            continue;
        }
        let (mut id, mut name, mut data) = (0, String::new(), String::new());
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id: ") {
                id = v.parse().unwrap();
            } else if let Some(v) = line.strip_prefix("event: ") {
                name = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = v.to_string();
            }
        }
        if !name.is_empty() {
            out.push((id, name, data));
        }
    }
    out
}

fn curl_sse(d: &TestDaemon, path: &str, last_id: Option<u64>, max_secs: f64) -> String {
    let sock = d.home().join("ravel.sock");
    let mut c = std::process::Command::new("curl");
    c.args(["-s", "-N", "--max-time", &max_secs.to_string(), "--unix-socket", sock.to_str().unwrap()]);
    if let Some(id) = last_id {
        c.args(["-H", &format!("Last-Event-ID: {id}")]);
    }
    let out = c.arg(format!("http://ravel{path}")).output().expect("run curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_event_stream_resumes_after_a_forced_disconnect_without_losing_an_event() {
    let d = TestDaemon::builder(BIN).start();
    let first = d.submit(&["--", "true"]);
    d.wait_state(first, "succeeded");
    // A follower that is cut off (curl gives up) while jobs keep changing state.
    let submitter = std::thread::scope(|s| {
        let h = s.spawn(|| {
            (0..20)
                .map(|_| {
                    std::thread::sleep(std::time::Duration::from_millis(40));
                    d.submit(&["--", "true"])
                })
                .collect::<Vec<i64>>()
        });
        let cut = curl_sse(&d, "/v1/events?since=0", None, 0.5);
        (h.join().unwrap(), cut)
    });
    let (ids, cut) = submitter;
    for id in &ids {
        d.wait_state(*id, "succeeded");
    }
    let before = sse_events(&cut);
    assert!(before.len() >= 4, "the follower saw events before it was cut off: {cut}");
    let last = before.last().unwrap().0;
    // Resume with Last-Event-ID, as a browser's EventSource does.
    let resumed = sse_events(&curl_sse(&d, "/v1/events?follow=false", Some(last), 5.0));
    let got: Vec<u64> = before.iter().chain(&resumed).map(|e| e.0).collect();
    let all: Vec<u64> = d
        .ok(&["events", "--json"])
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_u64().unwrap())
        .collect();
    assert_eq!(got, all, "cut-off stream + resumed stream = every event, once, in order");
    assert!(all.windows(2).all(|w| w[0] < w[1]), "ids increase");
    // Every job's life is in the feed: queued, (allocated,) running, succeeded.
    let lines = d.ok(&["events", "--json"]);
    for id in ids.iter().chain([&first]) {
        let states: Vec<String> = lines
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|e| e["job"] == *id)
            .map(|e| e["state"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(states.first().map(String::as_str), Some("queued"), "job {id}: {states:?}");
        assert_eq!(states.last().map(String::as_str), Some("succeeded"), "job {id}: {states:?}");
        assert!(states.contains(&"running".to_string()), "job {id}: {states:?}");
    }
}

#[test]
fn resuming_from_before_the_window_says_reset_and_bad_ids_are_refused() {
    let d = TestDaemon::builder(BIN).start();
    let id = d.submit(&["--", "true"]);
    d.wait_state(id, "succeeded");
    let events = sse_events(&curl_sse(&d, "/v1/events?follow=false&since=5", None, 5.0));
    assert_eq!(events[0].1, "reset", "{events:?}");
    assert!(events[1..].iter().all(|e| e.1 == "job"), "{events:?}");
    // Then everything kept: the job's whole life.
    let states: Vec<String> = events[1..]
        .iter()
        .map(|e| serde_json::from_str::<serde_json::Value>(&e.2).unwrap()["state"].as_str().unwrap().to_string())
        .filter(|s| s != "allocated")
        .collect();
    assert_eq!(states, ["queued", "running", "succeeded"], "{events:?}");
    let sock = d.home().join("ravel.sock");
    let out = std::process::Command::new("curl")
        .args(["-s", "-H", "Last-Event-ID: abc", "--unix-socket", sock.to_str().unwrap(), "http://ravel/v1/events"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Last-Event-ID must be an event id"));
    // `ravel events -f` prints what happens next, and stops with the daemon.
    let follower = d.cmd().args(["events", "-f"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let next = d.submit(&["--", "true"]);
    d.wait_state(next, "succeeded");
    d.ok(&["daemon", "stop"]);
    let out = follower.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("job {next:<6} succeeded")), "{text}");
    assert!(!text.contains(&format!("job {id:<6} ")), "only new events: {text}");
}

#[test]
fn doctor_passes_on_a_healthy_daemon_and_names_the_fix_for_a_broken_one() {
    let d = TestDaemon::builder(BIN).prepare();
    let out = d.run(&["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "no daemon yet is a warning, not a failure: {text}");
    assert!(text.contains("warn  daemon") && text.contains("ravel daemon start"), "{text}");
    d.start_daemon();
    let text = d.ok(&["doctor"]);
    for name in ["daemon", "version", "clock", "socket", "ready", "gpus", "store", "disk"] {
        assert!(text.contains(&format!("ok    {name}")), "{name}: {text}");
    }
    assert!(text.contains("4 GPUs via fake"), "{text}");
    // A socket others may use is a failure, with its fix.
    let sock = d.home().join("ravel.sock");
    std::fs::set_permissions(&sock, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let out = d.run(&["doctor", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let socket = checks.as_array().unwrap().iter().find(|c| c["check"] == "socket").unwrap();
    assert_eq!(socket["level"], "fail");
    assert!(socket["fix"].as_str().unwrap().contains("ravel daemon stop"), "{socket}");
}

#[test]
fn logs_follow_streams_output_as_it_is_written() {
    use std::io::BufRead;
    let d = TestDaemon::builder(BIN).start();
    let id = d.submit(&["--", "sh", "-c", "echo first; sleep 2; echo second; echo oops >&2"]);
    let started = std::time::Instant::now();
    let mut follower = d
        .cmd()
        .args(["logs", "-f", &id.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(follower.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "first");
    assert!(started.elapsed() < std::time::Duration::from_millis(1500), "streamed, not at the end");
    assert_eq!(lines.next().unwrap().unwrap(), "second");
    assert!(lines.next().is_none(), "the stream ends with the job");
    let out = follower.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    // The API streams from the offset asked for.
    let sock = d.home().join("ravel.sock");
    let out = std::process::Command::new("curl")
        .args(["-s", "--unix-socket", sock.to_str().unwrap()])
        .arg(format!("http://ravel/v1/jobs/{id}/logs?follow=true&offset=2"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "rst\nsecond\n");
}
