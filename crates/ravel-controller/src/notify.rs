//! Notifications: a job's `--notify` and the daemon's alert rules (`--alert job-failed`,
//! `--alert queue-wait>30m`), delivered to webhooks (Slack- and Discord-compatible JSON: `text`
//! and `content` carry the message) with retries, and, for a user's own daemon, to the desktop
//! through `notify-send` when it exists. Every delivery attempt is logged: in memory for
//! `GET /v1/notifications` and appended to `notifications.log` in the daemon's home.

use crate::{Controller, now_ms};
use ravel_core::{Job, JobId, JobState, Millis};
use serde::{Deserialize, Serialize};
use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc;

/// A daemon-wide rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Every job that fails or is lost.
    JobFailed,
    /// A job waiting longer than this (once per job).
    QueueWait(Duration),
}

impl Rule {
    /// `job-failed` or `queue-wait>30m`.
    pub fn parse(s: &str) -> Result<Rule, String> {
        let s = s.trim();
        if s == "job-failed" {
            return Ok(Rule::JobFailed);
        }
        if let Some(d) = s.strip_prefix("queue-wait>") {
            let ms = ravel_core::units::parse_duration_ms(d).map_err(|e| format!("--alert {s:?}: {e}"))?;
            return Ok(Rule::QueueWait(Duration::from_millis(ms)));
        }
        Err(format!("--alert {s:?}: expected job-failed or queue-wait>DURATION (e.g. queue-wait>30m)"))
    }
}

/// One delivery attempt, as logged.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct Delivery {
    pub at: Millis,
    /// A webhook URL, or `desktop`.
    pub target: String,
    pub job: Option<JobId>,
    pub message: String,
    pub attempt: u32,
    /// `delivered`, `retrying` or `failed`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub struct Note {
    targets: Vec<String>,
    job: Option<JobId>,
    message: String,
    details: serde_json::Value,
}

pub struct Notifier {
    tx: mpsc::UnboundedSender<Note>,
    log: Mutex<VecDeque<Delivery>>,
    log_file: Option<PathBuf>,
    /// Jobs already alerted for waiting too long.
    waited: Mutex<HashSet<JobId>>,
}

/// Attempts per delivery, and the pause before each retry (doubling).
const ATTEMPTS: u32 = 4;
const FIRST_RETRY: Duration = Duration::from_millis(500);

impl Notifier {
    /// The notifier, and the queue `run` delivers from.
    pub fn start(log_file: Option<PathBuf>) -> (std::sync::Arc<Notifier>, mpsc::UnboundedReceiver<Note>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let n = std::sync::Arc::new(Notifier {
            tx,
            log: Mutex::new(VecDeque::new()),
            log_file,
            waited: Default::default(),
        });
        (n, rx)
    }

    fn send(&self, targets: Vec<String>, job: Option<JobId>, message: String, details: serde_json::Value) {
        if !targets.is_empty() {
            let _ = self.tx.send(Note { targets, job, message, details });
        }
    }

    pub fn recent(&self) -> Vec<Delivery> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    fn record(&self, d: Delivery) {
        if let Some(path) = &self.log_file
            && let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path)
        {
            let _ = writeln!(f, "{}", serde_json::to_string(&d).unwrap_or_default());
        }
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.push_back(d);
        while log.len() > 1000 {
            log.pop_front();
        }
    }
}

/// Delivers notes as they come (each target on its own, with its retries), until the daemon stops.
pub async fn run(ctl: std::sync::Arc<Controller>, mut rx: mpsc::UnboundedReceiver<Note>) {
    // Made at the first notification: loading the system's certificates costs a few MiB that a
    // daemon without webhooks should not carry.
    let mut http: Option<reqwest::Client> = None;
    while let Some(note) = rx.recv().await {
        let client = match &http {
            Some(c) => c.clone(),
            None => {
                let _ = rustls::crypto::ring::default_provider().install_default();
                match reqwest::Client::builder().timeout(Duration::from_secs(10)).build() {
                    Ok(c) => {
                        http = Some(c.clone());
                        c
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot make an HTTP client: webhooks are off");
                        continue;
                    }
                }
            }
        };
        for target in &note.targets {
            let ctl = ctl.clone();
            let (client, target) = (client.clone(), target.clone());
            let (job, message, details) = (note.job, note.message.clone(), note.details.clone());
            // Targets are independent: a slow one does not hold up the others.
            tokio::spawn(async move { deliver(&ctl, &client, &target, job, &message, &details).await });
        }
    }
}

async fn deliver(
    ctl: &Controller,
    client: &reqwest::Client,
    target: &str,
    job: Option<JobId>,
    message: &str,
    details: &serde_json::Value,
) {
    let mut pause = FIRST_RETRY;
    for attempt in 1..=ATTEMPTS {
        let result =
            if target == "desktop" { desktop(message).await } else { post(client, target, message, details).await };
        let last = attempt == ATTEMPTS;
        let (outcome, error) = match &result {
            Ok(()) => ("delivered", None),
            Err(e) if last => ("failed", Some(e.clone())),
            Err(e) => ("retrying", Some(e.clone())),
        };
        ctl.notifier.record(Delivery {
            at: now_ms(),
            target: target.to_string(),
            job,
            message: message.to_string(),
            attempt,
            outcome: outcome.into(),
            error,
        });
        if result.is_ok() || last {
            if let Err(e) = result {
                tracing::warn!(target, error = %e, "notification not delivered");
            }
            return;
        }
        tokio::time::sleep(pause).await;
        pause *= 2;
    }
}

async fn post(client: &reqwest::Client, url: &str, message: &str, details: &serde_json::Value) -> Result<(), String> {
    // Slack reads `text`, Discord `content`; the rest is for anything else.
    let body = serde_json::json!({ "text": message, "content": message, "ravel": details });
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| format!("{e}"))?;
    if resp.status().is_success() { Ok(()) } else { Err(format!("HTTP {}", resp.status().as_u16())) }
}

async fn desktop(message: &str) -> Result<(), String> {
    let message = message.to_string();
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new("notify-send")
            .args(["--app-name=ravel", "ravel", &message])
            .stdin(std::process::Stdio::null())
            .status()
    })
    .await
    .map_err(|e| format!("notify-send: {e}"))?
    .map_err(|e| format!("notify-send: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("notify-send exited {status}")) }
}

fn has_notify_send() -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("notify-send").is_file()))
}

impl Controller {
    /// A job ended: its own `--notify`, and the `job-failed` rule.
    pub(crate) fn notify_end(&self, job: &Job) {
        let wants = job.spec.notify.is_some_and(|n| n.wants(job.state));
        let rule = matches!(job.state, JobState::Failed | JobState::Lost) && self.cfg.alerts.contains(&Rule::JobFailed);
        if !wants && !rule {
            return;
        }
        let mut targets = self.cfg.webhooks.clone();
        if wants {
            // A job's own URL may be one of the daemon's webhooks already: one delivery each.
            if let Some(url) = job.spec.notify_url.clone().filter(|u| !targets.contains(u)) {
                targets.push(url);
            }
            if !self.cfg.system && has_notify_send() {
                targets.push("desktop".into());
            }
        }
        let what = job.spec.name.clone().unwrap_or_else(|| job.spec.command.join(" "));
        let how = match (job.state, job.exit_code, &job.reason) {
            (_, _, Some(r)) => format!("{} ({r})", job.state),
            (_, Some(c), _) if job.state != JobState::Succeeded => format!("{} (exit {c})", job.state),
            _ => job.state.to_string(),
        };
        let message = format!(
            "ravel job {} {how}: {what} (user {}, node {})",
            job.id,
            job.spec.user.as_deref().unwrap_or("-"),
            self.cfg.node_name
        );
        let details = serde_json::json!({
            "kind": "job_ended", "job": job.id, "state": job.state, "exit_code": job.exit_code,
            "reason": job.reason, "user": job.spec.user, "name": job.spec.name, "node": self.cfg.node_name,
        });
        self.notifier.send(targets, Some(job.id), message, details);
    }

    /// The `queue-wait>X` rules: jobs waiting longer, once each.
    pub(crate) fn check_queue_wait(&self) {
        let Some(limit) = self.cfg.alerts.iter().find_map(|r| match r {
            Rule::QueueWait(d) => Some(*d),
            _ => None,
        }) else {
            return;
        };
        let now = now_ms();
        let over: Vec<(JobId, Millis)> = {
            let st = self.lock();
            st.queue
                .values()
                .chain(st.parked.values().map(|p| &p.job))
                .filter(|q| now - q.submitted_at > limit.as_millis() as i64)
                .map(|q| (q.id, q.submitted_at))
                .collect()
        };
        let mut waited = self.notifier.waited.lock().unwrap_or_else(|p| p.into_inner());
        for (id, since) in over {
            if waited.insert(id) {
                let mins = (now - since) as f64 / 60_000.0;
                let message = format!(
                    "ravel job {id} has waited {mins:.1} min (alert: queue wait over {})",
                    humantime::format_duration(limit)
                );
                let details = serde_json::json!({ "kind": "queue_wait", "job": id, "waited_ms": now - since });
                self.notifier.send(self.cfg.webhooks.clone(), Some(id), message, details);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_with_clear_errors() {
        assert_eq!(Rule::parse("job-failed"), Ok(Rule::JobFailed));
        assert_eq!(Rule::parse("queue-wait>30m"), Ok(Rule::QueueWait(Duration::from_secs(1800))));
        assert!(Rule::parse("queue-wait>soon").unwrap_err().contains("queue-wait>soon"));
        assert!(Rule::parse("node-down").unwrap_err().contains("expected job-failed"));
    }
}
