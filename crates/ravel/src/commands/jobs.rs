//! `ravel queue`, `show`, `cancel`, `wait`.

use super::{code, print_json};
use crate::cli::{QueueArgs, WaitArgs};
use crate::home::Home;
use crate::output::{command_line, duration, table, timestamp, truncate};
use ravel_client::encode_query_value;
use ravel_controller::now_ms;
use ravel_core::{Job, JobId, JobState};
use ravel_proto::{CancelOutcome, CancelRequest, CancelResponse, JobView, QueueResponse, WaitResponse};
use std::process::ExitCode;
use std::time::{Duration, Instant};

pub fn queue(home: &Home, args: QueueArgs) -> anyhow::Result<ExitCode> {
    let path = if args.all { "/v1/jobs?all=true".to_string() } else { format!("/v1/jobs?recent={}", args.recent) };
    let resp: QueueResponse = home.client().get(&path)?;
    if args.json {
        print_json(&resp.jobs)?;
        return Ok(ExitCode::SUCCESS);
    }
    let now = now_ms();
    let rows: Vec<Vec<String>> = resp
        .jobs
        .iter()
        .map(|v| {
            let j = &v.job;
            vec![
                j.id.to_string(),
                truncate(j.spec.name.as_deref().unwrap_or("-"), 20),
                j.state.to_string(),
                gpus_cell(j),
                time_cell(j, now),
                truncate(&command_line(&j.spec.command), 48),
                info_cell(v),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no jobs (submit one with `ravel run -- COMMAND`)");
    } else {
        print!("{}", table(&["ID", "NAME", "STATE", "GPUS", "TIME", "COMMAND", "INFO"], &rows));
    }
    Ok(ExitCode::SUCCESS)
}

fn gpus_cell(j: &Job) -> String {
    if !j.gpus_assigned.is_empty() && !matches!(j.state, JobState::Queued | JobState::Blocked) {
        j.gpus_assigned.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(",")
    } else if j.spec.gpus > 0 {
        format!("({})", j.spec.gpus)
    } else {
        "-".into()
    }
}

/// Age while waiting, runtime once started.
fn time_cell(j: &Job, now: i64) -> String {
    match (j.started_at, j.finished_at) {
        (Some(s), Some(f)) => duration(f - s),
        (Some(s), None) => duration(now - s),
        (None, Some(_)) => "-".into(),
        (None, None) => format!("{} ago", duration(now - j.submitted_at)),
    }
}

fn info_cell(v: &JobView) -> String {
    let j = &v.job;
    if let Some(r) = &v.pending_reason {
        return r.clone();
    }
    match j.state {
        JobState::Succeeded | JobState::Failed => match (j.exit_code, j.signal, &j.reason) {
            (_, _, Some(r)) if j.exit_code.is_none_or(|c| c == 127 || c == 126) => r.clone(),
            (Some(c), _, _) => format!("exit {c}"),
            (None, Some(s), _) => format!("signal {s}"),
            _ => String::new(),
        },
        _ => j.reason.clone().unwrap_or_default(),
    }
}

pub fn show(home: &Home, id: JobId, json: bool) -> anyhow::Result<ExitCode> {
    let v: JobView = home.client().get(&format!("/v1/jobs/{id}"))?;
    if json {
        print_json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    let j = &v.job;
    let mut lines: Vec<(&str, String)> = vec![
        ("id", j.id.to_string()),
        ("name", j.spec.name.clone().unwrap_or_else(|| "-".into())),
        ("state", j.state.to_string()),
        ("command", command_line(&j.spec.command)),
        ("cwd", j.spec.cwd.clone()),
        ("user", j.spec.user.clone().unwrap_or_else(|| "-".into())),
        ("priority", j.spec.priority.to_string()),
        ("gpus", j.spec.gpus.to_string()),
        ("cpus", j.spec.cpus.to_string()),
        ("submitted", timestamp(j.submitted_at)),
    ];
    if let Some(r) = &v.pending_reason {
        lines.push(("pending", r.clone()));
    }
    if let Some(s) = j.started_at {
        lines.push(("started", timestamp(s)));
    }
    if let Some(f) = j.finished_at {
        lines.push(("finished", timestamp(f)));
    }
    if let (Some(s), Some(f)) = (j.started_at, j.finished_at) {
        lines.push(("runtime", duration(f - s)));
    }
    if !j.gpus_assigned.is_empty() {
        lines.push(("gpus assigned", j.gpus_assigned.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(",")));
    }
    if let Some(n) = &j.node {
        lines.push(("node", n.clone()));
    }
    if let Some(c) = j.exit_code {
        lines.push(("exit code", c.to_string()));
    }
    if let Some(s) = j.signal {
        lines.push(("signal", s.to_string()));
    }
    if let Some(r) = &j.reason {
        lines.push(("reason", r.clone()));
    }
    if j.cancel_requested && !j.state.is_terminal() {
        lines.push(("cancel", "requested".into()));
    }
    if let Some(d) = &v.run_dir {
        lines.push(("run dir", d.clone()));
    }
    for (k, val) in lines {
        println!("{:<15}{val}", format!("{k}:"));
    }
    if !v.attempts.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = v
            .attempts
            .iter()
            .map(|a| {
                vec![
                    a.n.to_string(),
                    a.state.to_string(),
                    a.node.clone(),
                    if a.gpus.is_empty() {
                        "-".into()
                    } else {
                        a.gpus.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(",")
                    },
                    a.started_at.map(timestamp).unwrap_or_else(|| "-".into()),
                    match (a.started_at, a.finished_at) {
                        (Some(s), Some(f)) => duration(f - s),
                        _ => "-".into(),
                    },
                    a.exit_code
                        .map(|c| c.to_string())
                        .or(a.signal.map(|s| format!("signal {s}")))
                        .unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        print!("{}", table(&["ATTEMPT", "STATE", "NODE", "GPUS", "STARTED", "RUNTIME", "EXIT"], &rows));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn cancel(home: &Home, ids: Vec<JobId>, json: bool) -> anyhow::Result<ExitCode> {
    let resp: CancelResponse = home.client().post("/v1/jobs/cancel", &CancelRequest { ids })?;
    if json {
        print_json(&resp)?;
    }
    let mut missing = false;
    for r in &resp.results {
        let state = r.state.map(|s| s.to_string()).unwrap_or_default();
        let line = match r.outcome {
            CancelOutcome::Canceled => format!("job {}: canceled", r.id),
            CancelOutcome::Terminating => {
                format!("job {}: terminating (SIGTERM to its process group, SIGKILL after the grace period)", r.id)
            }
            CancelOutcome::AlreadyFinished => {
                format!("job {}: already finished ({state}); nothing to do", r.id)
            }
            CancelOutcome::NotFound => {
                missing = true;
                format!("job {}: no such job", r.id)
            }
        };
        if !json {
            if r.outcome == CancelOutcome::NotFound {
                eprintln!("ravel: {line}");
            } else {
                println!("{line}");
            }
        }
    }
    Ok(if missing { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

pub fn wait(home: &Home, args: WaitArgs) -> anyhow::Result<ExitCode> {
    if args.ids.is_empty() && !args.all {
        super::usage!("give job ids to wait for, or --all");
    }
    let ids = args.ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    let deadline = args.timeout.map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let client = home.client();
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let poll_ms = left.map(|l| l.as_millis() as u64).unwrap_or(25_000).min(25_000);
        let path = format!("/v1/wait?ids={}&all={}&timeout_ms={poll_ms}", encode_query_value(&ids), args.all);
        let resp: WaitResponse = client.get(&path)?;
        if resp.done {
            if args.json {
                print_json(&resp)?;
            } else {
                for j in &resp.jobs {
                    let how = match (j.exit_code, j.signal) {
                        (Some(c), _) => format!(" (exit {c})"),
                        (None, Some(s)) => format!(" (signal {s})"),
                        _ => String::new(),
                    };
                    println!("job {}: {}{how}", j.id, j.state);
                }
            }
            let ok = resp.jobs.iter().all(|j| j.state == JobState::Succeeded);
            return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        if left.is_some_and(|l| l.is_zero()) {
            if args.json {
                print_json(&resp)?;
            } else {
                eprintln!("ravel: timed out waiting");
            }
            return Ok(code(124));
        }
    }
}
