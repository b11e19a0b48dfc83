//! `ravel queue`, `show`, `cancel`, `wait`.

use super::{code, print_json};
use crate::cli::{QueueArgs, WaitArgs};
use crate::home::Home;
use crate::output::{command_line, duration, table, timestamp, truncate};
use ravel_client::encode_query_value;
use ravel_controller::now_ms;
use ravel_core::{Job, JobId, JobState};
use ravel_proto::{
    CancelOutcome, CancelRequest, CancelResponse, JobView, PriorityRequest, QueueResponse, WaitResponse,
};
use std::process::ExitCode;
use std::time::{Duration, Instant};

pub fn queue(home: &Home, args: QueueArgs) -> anyhow::Result<ExitCode> {
    let resp = if args.all {
        let mut out = args.json.then(|| JsonArray::new(std::io::stdout().lock()));
        let mut jobs = Vec::new();
        // For --json each line is re-laid out as it comes, without being parsed into a job.
        each_job_ever(home, |line| match out.as_mut() {
            Some(out) => out.push_compact(line),
            None => {
                jobs.push(serde_json::from_slice::<JobView>(line)?);
                Ok(())
            }
        })?;
        if let Some(out) = out {
            out.end()?;
            return Ok(ExitCode::SUCCESS);
        }
        QueueResponse { jobs, more_waiting: 0 }
    } else {
        home.client().get(&format!("/v1/jobs?recent={}&limit={}", args.recent, args.limit))?
    };
    if args.json {
        print_json(&resp.jobs)?;
        return Ok(ExitCode::SUCCESS);
    }
    let now = now_ms();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut i = 0;
    while i < resp.jobs.len() {
        let v = &resp.jobs[i];
        let j = &v.job;
        if let (Some(aid), false) = (j.array_id, args.expand) {
            // One line per array: its elements are consecutive in id order.
            let n = resp.jobs[i..].iter().take_while(|e| e.job.array_id == Some(aid)).count();
            rows.push(array_row(&resp.jobs[i..i + n], aid));
            i += n;
            continue;
        }
        let id = match (j.array_id, j.spec.array_index) {
            (Some(aid), Some(ix)) => format!("{}[{aid}:{ix}]", j.id),
            _ => j.id.to_string(),
        };
        rows.push(vec![
            id,
            truncate(j.spec.user.as_deref().unwrap_or("-"), 12),
            truncate(j.spec.name.as_deref().unwrap_or("-"), 20),
            j.state.to_string(),
            gpus_cell(j),
            time_cell(j, now),
            truncate(&command_line(&j.spec.command), 48),
            info_cell(v),
        ]);
        i += 1;
    }
    if rows.is_empty() {
        println!("no jobs (submit one with `ravel run -- COMMAND`)");
    } else {
        print!("{}", table(&["ID", "USER", "NAME", "STATE", "GPUS", "TIME", "COMMAND", "INFO"], &rows));
    }
    if resp.more_waiting > 0 {
        println!("… and {} more waiting jobs (`ravel queue --limit N`, or `--all`)", resp.more_waiting);
    }
    Ok(ExitCode::SUCCESS)
}

/// Every job the daemon has, in id order, as it streams them: one compact JSON object (a
/// `JobView`) per line.
fn each_job_ever(home: &Home, mut each: impl FnMut(&[u8]) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let mut failed = None;
    // The daemon sends batches as it reads them; a pause longer than this is a stuck daemon.
    let idle = Duration::from_secs(60);
    home.client().stream_lines("/v1/jobs?all=true&format=ndjson", idle, |line| {
        each(line).map_err(|e| failed = Some(e)).is_ok()
    })?;
    failed.map_or(Ok(()), Err)
}

/// A JSON array printed one element at a time, laid out as `serde_json::to_string_pretty`
/// lays out the whole array.
struct JsonArray<W: std::io::Write> {
    out: std::io::BufWriter<W>,
    any: bool,
}

impl<W: std::io::Write> JsonArray<W> {
    fn new(out: W) -> Self {
        JsonArray { out: std::io::BufWriter::new(out), any: false }
    }

    /// Appends one element given as compact JSON (no whitespace outside strings, as
    /// `serde_json::to_writer` writes it), re-laid out without parsing it.
    fn push_compact(&mut self, compact: &[u8]) -> anyhow::Result<()> {
        use std::io::Write;
        self.out.write_all(if self.any { b",\n  " } else { b"[\n  " })?;
        self.any = true;
        let mut pretty = Vec::with_capacity(compact.len() * 2);
        indent_compact_json(compact, 1, &mut pretty);
        self.out.write_all(&pretty)?;
        Ok(())
    }

    fn end(mut self) -> anyhow::Result<()> {
        use std::io::Write;
        self.out.write_all(if self.any { b"\n]\n" } else { b"[]\n" })?;
        self.out.flush()?;
        Ok(())
    }
}

/// Lays out compact JSON as `serde_json::to_string_pretty` would (two spaces per level, `": "`
/// after keys, empty `{}` and `[]` kept on one line), starting at nesting `depth`.
fn indent_compact_json(input: &[u8], mut depth: usize, out: &mut Vec<u8>) {
    let newline = |out: &mut Vec<u8>, depth: usize| {
        out.push(b'\n');
        out.resize(out.len() + 2 * depth, b' ');
    };
    let (mut in_string, mut escaped) = (false, false);
    let mut i = 0;
    while i < input.len() {
        let c = input[i];
        i += 1;
        if in_string {
            out.push(c);
            match c {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => {
                in_string = true;
                out.push(c);
            }
            b'{' | b'[' => {
                let close = if c == b'{' { b'}' } else { b']' };
                out.push(c);
                if input.get(i) == Some(&close) {
                    out.push(close);
                    i += 1;
                } else {
                    depth += 1;
                    newline(out, depth);
                }
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                newline(out, depth);
                out.push(c);
            }
            b',' => {
                out.push(c);
                newline(out, depth);
            }
            b':' => out.extend_from_slice(b": "),
            _ => out.push(c),
        }
    }
}

/// `12[100]  array  8 running, 80 queued, 12 succeeded`.
fn array_row(elems: &[JobView], aid: JobId) -> Vec<String> {
    let first = &elems[0].job;
    let mut counts: Vec<(JobState, usize)> = vec![];
    for e in elems {
        match counts.iter_mut().find(|(s, _)| *s == e.job.state) {
            Some(c) => c.1 += 1,
            None => counts.push((e.job.state, 1)),
        }
    }
    counts.sort_by_key(|(s, _)| JobState::ALL.iter().position(|x| x == s));
    let summary = counts.iter().map(|(s, n)| format!("{n} {s}")).collect::<Vec<_>>().join(", ");
    let request = match (first.spec.gpus, first.spec.gpu_mem_mib) {
        (0, _) => "-".to_string(),
        (g, Some(m)) => format!("({g}x{m}M)"),
        (g, None) => format!("({g})"),
    };
    vec![
        format!("{aid}[{}]", elems.len()),
        truncate(first.spec.user.as_deref().unwrap_or("-"), 12),
        truncate(first.spec.name.as_deref().unwrap_or("-"), 20),
        "array".into(),
        request,
        "-".into(),
        truncate(&command_line(&first.spec.command), 48),
        format!("{summary} (--expand to list)"),
    ]
}

fn gpus_cell(j: &Job) -> String {
    if !j.gpus_assigned.is_empty() && !matches!(j.state, JobState::Queued | JobState::Blocked) {
        j.gpus_assigned.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(",")
    } else if let Some(m) = j.spec.gpu_mem_mib {
        // Requested, not (yet) assigned.
        format!("({}x{m}M)", j.spec.gpus)
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
        return match v.position {
            Some(p) => format!("#{p} {r}"),
            None => r.clone(),
        };
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
    if let Some(m) = j.spec.gpu_mem_mib {
        let tag = j.spec.memory_tag.as_ref().map(|t| format!(" (tag {t})")).unwrap_or_default();
        lines.push(("gpu memory", format!("{m} MiB per GPU, shared{tag}")));
    }
    if !j.spec.after.is_empty() {
        lines.push(("after", ids_text(&j.spec.after) + " (success)"));
    }
    if !j.spec.after_any.is_empty() {
        lines.push(("after any", ids_text(&j.spec.after_any)));
    }
    if let Some(aid) = j.array_id {
        let limit = j.spec.array_limit.map(|l| format!(", at most {l} running")).unwrap_or_default();
        lines.push(("array", format!("{aid}, index {}{limit}", j.spec.array_index.unwrap_or(0))));
    }
    if j.spec.retries > 0 {
        lines.push(("retries", format!("{} of {} used", j.retries_used, j.spec.retries)));
    }
    if let Some(t) = j.spec.timeout_ms {
        lines.push(("timeout", duration(t as i64)));
    }
    if j.held {
        lines.push(("held", "yes (`ravel release` to let it run)".into()));
    }
    if let Some(t) = j.not_before.filter(|_| !j.state.is_terminal()) {
        lines.push(("not before", timestamp(t)));
    }
    if let Some(r) = &v.pending_reason {
        lines.push(("pending", r.clone()));
    }
    if let Some(p) = v.position {
        lines.push(("position", p.to_string()));
    }
    if let Some(t) = v.estimated_start {
        lines.push(("est. start", timestamp(t)));
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
    if let Some(m) = j.spec.mem_mib {
        lines.push(("memory limit", format!("{m} MiB")));
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
    if !v.events.is_empty() {
        println!();
        println!("events:");
        for e in &v.events {
            println!("  {}  attempt {}  {}", timestamp(e.at), e.attempt, e.message);
        }
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
            CancelOutcome::Denied => {
                missing = true;
                format!(
                    "job {}: {}",
                    r.id,
                    r.message.as_deref().unwrap_or("belongs to another user; only they or an admin may cancel it")
                )
            }
        };
        if !json {
            if matches!(r.outcome, CancelOutcome::NotFound | CancelOutcome::Denied) {
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

fn ids_text(ids: &[JobId]) -> String {
    ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")
}

/// `ravel hold|release|retry ID...`: one line per job; exit 1 if any was refused.
pub fn act(home: &Home, ids: Vec<JobId>, verb: &str) -> anyhow::Result<ExitCode> {
    let client = home.client();
    let mut failed = false;
    for id in ids {
        match client.post::<_, JobView>(&format!("/v1/jobs/{id}/{verb}"), &serde_json::json!({})) {
            Ok(v) => {
                let what = match verb {
                    "hold" => "held".to_string(),
                    "release" => format!("released ({})", v.pending_reason.as_deref().unwrap_or(v.job.state.as_str())),
                    _ => format!("queued again as attempt {}", v.job.attempt + 1),
                };
                println!("job {id}: {what}");
            }
            Err(e) => {
                failed = true;
                eprintln!("ravel: job {id}: {e}");
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

pub fn priority(home: &Home, id: JobId, priority: i32) -> anyhow::Result<ExitCode> {
    let v: JobView = home.client().post(&format!("/v1/jobs/{id}/priority"), &PriorityRequest { priority })?;
    println!("job {id}: priority {}", v.job.spec.priority);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod json_array_tests {
    use super::JsonArray;

    fn streamed(items: &[serde_json::Value]) -> String {
        let mut buf = Vec::new();
        let mut out = JsonArray::new(&mut buf);
        for v in items {
            out.push_compact(&serde_json::to_vec(v).unwrap()).unwrap();
        }
        out.end().unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn an_array_printed_one_element_at_a_time_reads_as_the_whole_array_would() {
        let items = vec![
            serde_json::json!({"id": 1, "spec": {"command": ["sh", "-c", "echo 'a\nb'"], "env": []}}),
            serde_json::json!({"id": 2, "nested": [1, {"x": null}, [], [[]]], "empty": {}, "n": -1.5e-7}),
            serde_json::json!({"tricky": "{\"a\": [1, 2]}, \\\" ,:[]{} é ✓", "k:,{": ["\\", "\"", ""]}),
            serde_json::json!([]),
            serde_json::json!("just a string"),
        ];
        assert_eq!(streamed(&items), format!("{}\n", serde_json::to_string_pretty(&items).unwrap()));
        assert_eq!(streamed(&[]), "[]\n");
    }
}
