//! Notifications: a job's --notify and the daemon's alert rules reach webhooks (a real HTTP
//! server in the test), with retries, and every attempt is in the delivery log.

use ravel_test_support::{TestDaemon, eventually};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_ravel");

/// A webhook receiver: answers 500 to its first `fail_first` requests, 200 after; keeps bodies.
fn receiver(fail_first: usize) -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        let mut n = 0;
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut len = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            n += 1;
            let status = if n <= fail_first { "500 Internal Server Error" } else { "200 OK" };
            if n > fail_first {
                seen.lock().unwrap().push(serde_json::from_slice(&body).unwrap_or(Value::Null));
            }
            let _ = write!(conn, "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (url, got)
}

fn deliveries(d: &TestDaemon) -> Vec<Value> {
    let sock = d.home().join("ravel.sock");
    let out = std::process::Command::new("curl")
        .args(["-s", "--unix-socket", sock.to_str().unwrap(), "http://ravel/v1/notifications"])
        .output()
        .unwrap();
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

#[test]
fn alerts_and_job_notifications_reach_webhooks_with_retries_and_a_log() {
    let (hook, got) = receiver(1);
    let (own, own_got) = receiver(0);
    let d = TestDaemon::builder(BIN)
        .arg("--webhook")
        .arg(&hook)
        .arg("--alert")
        .arg("job-failed")
        .arg("--alert")
        .arg("queue-wait>1s")
        .start();
    // job-failed: no --notify needed. The first delivery gets a 500 and is retried.
    let failed = d.submit(&["--name", "will-fail", "--", "false"]);
    d.wait_state(failed, "failed");
    assert!(eventually(Duration::from_secs(15), || !got.lock().unwrap().is_empty()), "no webhook call");
    let body = got.lock().unwrap()[0].clone();
    let text = body["text"].as_str().unwrap();
    assert!(text.contains(&format!("job {failed} failed")) && text.contains("will-fail"), "{body}");
    assert_eq!(body["content"], body["text"], "Discord reads content");
    assert_eq!(body["ravel"]["kind"], "job_ended");
    let log = deliveries(&d);
    let attempts: Vec<(u64, String)> = log
        .iter()
        .filter(|e| e["job"] == failed)
        .map(|e| (e["attempt"].as_u64().unwrap(), e["outcome"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(attempts, vec![(1, "retrying".into()), (2, "delivered".into())], "{log:?}");
    assert!(d.home().join("notifications.log").exists(), "the delivery log is kept on disk too");
    // --notify success with a webhook of the job's own.
    let ok = d.submit(&["--notify", "success", "--notify-url", &own, "--", "true"]);
    d.wait_state(ok, "succeeded");
    assert!(eventually(Duration::from_secs(10), || !own_got.lock().unwrap().is_empty()));
    assert!(own_got.lock().unwrap()[0]["text"].as_str().unwrap().contains(&format!("job {ok} succeeded")));
    // queue-wait>1s: a held job waits too long, once.
    let held = d.submit(&["--hold", "--", "true"]);
    assert!(eventually(Duration::from_secs(15), || {
        got.lock().unwrap().iter().any(|b| b["ravel"]["kind"] == "queue_wait" && b["ravel"]["job"] == held)
    }));
    std::thread::sleep(Duration::from_millis(1500));
    let waits = got.lock().unwrap().iter().filter(|b| b["ravel"]["kind"] == "queue_wait").count();
    assert_eq!(waits, 1, "alerted once per job");
    // Bad settings are refused with a clear line.
    let (_, err) = d.fails(&["run", "--notify", "failure", "--notify-url", "ftp://x", "--", "true"]);
    assert!(err.contains("not an http:// or https:// URL"), "{err}");
}
