//! `ravel events [-f]`: the daemon's event feed, printed as it comes.

use crate::cli::EventsArgs;
use crate::home::Home;
use crate::output::timestamp;
use ravel_proto::EventView;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

pub fn events(home: &Home, args: EventsArgs) -> anyhow::Result<ExitCode> {
    // Without -f: everything kept (or after --since), then stop. With -f: from --since, or only
    // what happens from now on.
    let path = match (args.follow, args.since) {
        (false, since) => format!("/v1/events?follow=false&since={}", since.unwrap_or(0)),
        (true, Some(since)) => format!("/v1/events?since={since}"),
        (true, None) => "/v1/events".to_string(),
    };
    let stdout = std::io::stdout();
    let mut failed = None;
    home.client().events(&path, None, Duration::from_secs(60), |ev| {
        let mut out = stdout.lock();
        let ok = match ev.event.as_str() {
            "job" => match serde_json::from_str::<EventView>(&ev.data) {
                Ok(_) if args.json => writeln!(out, "{}", ev.data),
                Ok(e) => writeln!(out, "{}", line(&e)),
                Err(err) => {
                    failed = Some(format!("bad event from the daemon: {err}"));
                    return false;
                }
            },
            "reset" => {
                eprintln!(
                    "ravel: earlier events are gone (older than the daemon keeps, or from before it restarted); \
                     showing what it has"
                );
                Ok(())
            }
            _ => Ok(()),
        };
        // A closed pipe (`ravel events -f | head`) ends quietly.
        ok.and_then(|_| out.flush()).is_ok()
    })?;
    if let Some(e) = failed {
        anyhow::bail!(e);
    }
    Ok(ExitCode::SUCCESS)
}

/// `2026-11-28T23:30:01Z  1795907327898908  job 12  running  attempt 1  alice  GPUs 0,1`.
fn line(e: &EventView) -> String {
    let mut extra = vec![];
    if let Some(u) = &e.user {
        extra.push(u.clone());
    }
    if let Some(g) = &e.gpus {
        extra.push(format!("GPUs {}", g.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(",")));
    }
    if e.held {
        extra.push("held".into());
    }
    if e.priority != 0 {
        extra.push(format!("priority {}", e.priority));
    }
    if e.cancel_requested && !e.state.is_terminal() {
        extra.push("cancel requested".into());
    }
    if let Some(c) = e.exit_code {
        extra.push(format!("exit {c}"));
    }
    if let Some(r) = &e.reason {
        extra.push(r.clone());
    }
    format!(
        "{}  {}  job {:<6} {:<10} attempt {}  {}",
        timestamp(e.at),
        e.id,
        e.job,
        e.state.to_string(),
        e.attempt,
        extra.join("  ")
    )
    .trim_end()
    .to_string()
}
