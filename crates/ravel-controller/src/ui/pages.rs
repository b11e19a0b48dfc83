//! The pages, rendered on the server as plain HTML (escaped by `esc`), readable without
//! JavaScript; `app.js` adds live updates, log tails and the buttons' actions.

use crate::Controller;
use crate::auth::Caller;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use ravel_core::{Job, JobId, JobState};
use ravel_store::JobPage;
use serde::Deserialize;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Instant;

/// HTML-escapes text for element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn layout(title: &str, current: &str, body: &str) -> String {
    let nav = |href: &str, label: &str| {
        let aria = if current == label { " aria-current=\"page\"" } else { "" };
        format!("<a href=\"{href}\"{aria}>{label}</a>")
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{} · ravel</title><link rel=\"stylesheet\" href=\"/static/app.css\"></head>\
<body><a class=\"skip\" href=\"#main\">Skip to content</a>\
<header><strong>ravel</strong><nav aria-label=\"Sections\">{}{}</nav></header>\
<main id=\"main\" tabindex=\"-1\">{body}</main>\
<div id=\"status\" role=\"status\" aria-live=\"polite\"></div>\
<script src=\"/static/app.js\" defer></script></body></html>\n",
        esc(title),
        nav("/", "Jobs"),
        nav("/gpus", "GPUs"),
    )
}

pub fn message_page(title: &str, text: &str) -> String {
    layout(title, "", &format!("<h1>{}</h1><p>{}</p>", esc(title), esc(text)))
}

/// A page, with the time it took to render (`Server-Timing`).
fn page(started: Instant, html: String) -> Response {
    let mut resp = Html(html).into_response();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if let Ok(v) = HeaderValue::from_str(&format!("render;dur={ms:.1}")) {
        resp.headers_mut().insert("server-timing", v);
    }
    resp
}

#[derive(Deserialize, Default)]
pub struct JobsQuery {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    page: Option<u64>,
    #[serde(default)]
    per: Option<u32>,
    #[serde(default)]
    order: Option<String>,
}

/// The state filters of the jobs page: (value, label, states).
const FILTERS: [(&str, &str, &[JobState]); 6] = [
    ("all", "All", &[]),
    (
        "active",
        "Active",
        &[JobState::Blocked, JobState::Queued, JobState::Allocated, JobState::Starting, JobState::Running],
    ),
    ("waiting", "Waiting", &[JobState::Blocked, JobState::Queued]),
    ("running", "Running", &[JobState::Allocated, JobState::Starting, JobState::Running]),
    ("finished", "Finished", &[JobState::Succeeded, JobState::Failed, JobState::Canceled, JobState::Lost]),
    ("failed", "Failed", &[JobState::Failed, JobState::Lost]),
];

/// `/`: jobs, newest first, filtered, searched and paginated in the store (each page is one
/// bounded query, however long the history).
pub async fn jobs(State(ctl): State<Arc<Controller>>, caller: Caller, Query(q): Query<JobsQuery>) -> Response {
    let started = Instant::now();
    let filter = FILTERS.iter().find(|f| Some(f.0) == q.state.as_deref()).unwrap_or(&FILTERS[0]);
    let per = q.per.unwrap_or(50).clamp(10, 200);
    let page_no = q.page.unwrap_or(1).max(1);
    let oldest_first = q.order.as_deref() == Some("old");
    let search = q.q.clone().filter(|s| !s.trim().is_empty());
    let query = JobPage {
        states: filter.2.to_vec(),
        search: search.clone(),
        oldest_first,
        offset: (page_no - 1) * per as u64,
        limit: per,
    };
    let (list, total) = match ctl.store.page(query).await {
        Ok(r) => r,
        Err(e) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, Html(message_page("Error", &e.to_string()))).into_response();
        }
    };
    let pages = total.div_ceil(per as u64).max(1);
    let mut b = String::with_capacity(64 * 1024);
    let live = page_no == 1 && !oldest_first && filter.0 == "all" && search.is_none();
    let _ = write!(b, "<h1>Jobs</h1><form class=\"filters\" method=\"get\" action=\"/\" role=\"search\">");
    let _ = write!(b, "<label for=\"state\">State</label><select id=\"state\" name=\"state\">");
    for (value, label, _) in FILTERS {
        let sel = if value == filter.0 { " selected" } else { "" };
        let _ = write!(b, "<option value=\"{value}\"{sel}>{label}</option>");
    }
    let _ = write!(
        b,
        "</select><label for=\"q\">Search</label><input id=\"q\" name=\"q\" type=\"search\" value=\"{}\" \
         placeholder=\"command, name or user\"><label for=\"order\">Order</label><select id=\"order\" name=\"order\">\
         <option value=\"new\"{}>Newest first</option><option value=\"old\"{}>Oldest first</option></select>\
         <button type=\"submit\">Show</button></form>",
        esc(search.as_deref().unwrap_or("")),
        if oldest_first { "" } else { " selected" },
        if oldest_first { " selected" } else { "" },
    );
    let _ = write!(
        b,
        "<p class=\"summary\">{total} job{} · page {page_no} of {pages}</p>",
        if total == 1 { "" } else { "s" }
    );
    let _ = write!(
        b,
        "<div class=\"scroll\"><table id=\"jobs\" data-live=\"{live}\"><caption class=\"sr\">Jobs</caption><thead><tr>\
         <th scope=\"col\">ID</th><th scope=\"col\">User</th><th scope=\"col\">Job</th><th scope=\"col\">State</th>\
         <th scope=\"col\" class=\"opt\">GPUs</th><th scope=\"col\" class=\"opt\">Submitted</th><th scope=\"col\" class=\"opt\">Info</th>\
         </tr></thead><tbody>"
    );
    let visible: Vec<&Job> = list.iter().filter(|j| ctl.may_see(&caller, j)).collect();
    {
        let st = ctl.lock();
        for j in visible {
            let reason = st.pending(j.id).map(|(r, _)| st.describe(&r, &ctl.cfg.thresholds));
            row(&mut b, j, reason.as_deref());
        }
    }
    let _ = write!(b, "</tbody></table></div><nav class=\"pages\" aria-label=\"Pages\">");
    let link = |p: u64| {
        format!(
            "/?state={}&q={}&order={}&per={per}&page={p}",
            filter.0,
            url_encode(search.as_deref().unwrap_or("")),
            if oldest_first { "old" } else { "new" }
        )
    };
    if page_no > 1 {
        let _ = write!(b, "<a rel=\"prev\" href=\"{}\">← Newer</a>", esc(&link(page_no - 1)));
    }
    if page_no < pages {
        let _ = write!(b, "<a rel=\"next\" href=\"{}\">Older →</a>", esc(&link(page_no + 1)));
    }
    b.push_str("</nav>");
    page(started, layout("Jobs", "Jobs", &b))
}

/// One table row; `app.js` builds the same shape for jobs that arrive live.
fn row(b: &mut String, j: &Job, reason: Option<&str>) {
    let what = j.spec.name.clone().unwrap_or_else(|| j.spec.command.join(" "));
    let gpus = if j.gpus_assigned.is_empty() {
        if j.spec.gpus > 0 { format!("({})", j.spec.gpus) } else { "-".into() }
    } else {
        j.gpus_assigned.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(",")
    };
    let info =
        reason.map(String::from).or(j.reason.clone()).or(j.exit_code.map(|c| format!("exit {c}"))).unwrap_or_default();
    let state = if j.held && !j.state.is_terminal() { "held".to_string() } else { j.state.to_string() };
    let _ = write!(
        b,
        "<tr id=\"job-{id}\"><td><a href=\"/jobs/{id}\">{id}</a></td><td>{}</td><td class=\"what\">{}</td>\
         <td><span class=\"state s-{state}\" data-state=\"{state}\">{state}</span></td><td class=\"opt\">{}</td>\
         <td class=\"opt\"><time data-ms=\"{}\">{}</time></td><td class=\"opt info\">{}</td></tr>",
        esc(j.spec.user.as_deref().unwrap_or("-")),
        esc(&crate::truncate(&what, 80)),
        esc(&gpus),
        j.submitted_at,
        crate::timestamp(j.submitted_at),
        esc(&info),
        id = j.id,
    );
}

/// `/jobs/{id}`: everything about one job, its output live, and its actions.
pub async fn job(State(ctl): State<Arc<Controller>>, caller: Caller, Path(id): Path<JobId>) -> Response {
    let started = Instant::now();
    let job = match ctl.store.job(id).await {
        Ok(Some(j)) if ctl.may_see(&caller, &j) => j,
        Ok(_) => {
            return (StatusCode::NOT_FOUND, Html(message_page("No such job", &format!("There is no job {id}."))))
                .into_response();
        }
        Err(e) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, Html(message_page("Error", &e.to_string()))).into_response();
        }
    };
    let attempts = ctl.store.attempts(id).await.unwrap_or_default();
    let events = ctl.store.events(id).await.unwrap_or_default();
    let reason = {
        let st = ctl.lock();
        st.pending(id).map(|(r, pos)| {
            let r = st.describe(&r, &ctl.cfg.thresholds);
            match pos {
                Some(p) => format!("#{p} {r}"),
                None => r,
            }
        })
    };
    let mine = caller.admin || ctl.owns(&caller, &job);
    let mut b = String::with_capacity(16 * 1024);
    let state = job.state.to_string();
    let _ = write!(
        b,
        "<h1>Job {id}{}</h1><div class=\"actions\" data-job=\"{id}\">",
        job.spec.name.as_deref().map(|n| format!(" · {}", esc(n))).unwrap_or_default()
    );
    if mine {
        let _ = write!(
            b,
            "<button type=\"button\" data-action=\"cancel\"{}>Cancel</button>\
             <button type=\"button\" data-action=\"retry\"{}>Retry</button>",
            if job.state.is_terminal() { " disabled" } else { "" },
            if job.state.is_terminal() { "" } else { " disabled" },
        );
    }
    b.push_str("</div><dl class=\"fields\">");
    let mut field = |k: &str, v: String, id_attr: &str| {
        let _ = write!(b, "<dt>{k}</dt><dd{id_attr}>{}</dd>", esc(&v));
    };
    field("State", state.clone(), " id=\"state\"");
    field("User", job.spec.user.clone().unwrap_or_else(|| "-".into()), "");
    field("Command", job.spec.command.join(" "), "");
    field("Working directory", job.spec.cwd.clone(), "");
    field("Submitted", crate::timestamp(job.submitted_at), "");
    if let Some(r) = &reason {
        field("Waiting", r.clone(), " id=\"reason\"");
    }
    if let Some(r) = &job.reason {
        field("Reason", r.clone(), "");
    }
    if let Some(c) = job.exit_code {
        field("Exit code", c.to_string(), "");
    }
    field(
        "GPUs",
        format!(
            "{} requested; {}",
            job.spec.gpus,
            if job.gpus_assigned.is_empty() {
                "none assigned".into()
            } else {
                format!("assigned {:?}", job.gpus_assigned)
            }
        ),
        "",
    );
    b.push_str("</dl>");
    if !attempts.is_empty() {
        b.push_str("<h2>Attempts</h2><div class=\"scroll\"><table><thead><tr><th scope=\"col\">#</th><th scope=\"col\">State</th><th scope=\"col\">GPUs</th><th scope=\"col\">Started</th><th scope=\"col\">Exit</th><th scope=\"col\" class=\"opt\">Run dir</th></tr></thead><tbody>");
        for a in &attempts {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"opt\">{}</td></tr>",
                a.n,
                a.state,
                esc(&format!("{:?}", a.gpus)),
                a.started_at.map(crate::timestamp).unwrap_or_else(|| "-".into()),
                a.exit_code
                    .map(|c| c.to_string())
                    .or(a.signal.map(|s| format!("signal {s}")))
                    .unwrap_or_else(|| "-".into()),
                esc(&a.run_dir)
            );
        }
        b.push_str("</tbody></table></div>");
    }
    if let Some(a) = attempts.last() {
        let owner = ctl.cfg.system.then(|| ctl.owner_of(&job));
        let path = std::path::Path::new(&a.run_dir).join("metrics.json");
        let series = tokio::task::spawn_blocking(move || read_metrics(&path, owner)).await.unwrap_or_default();
        if !series.is_empty() {
            b.push_str("<h2>Metrics</h2><div class=\"charts\">");
            for (name, points) in &series {
                b.push_str(&chart(name, points));
            }
            b.push_str("</div>");
        }
    }
    if !events.is_empty() {
        b.push_str("<h2>Events</h2><ul>");
        for e in &events {
            let _ = write!(b, "<li><time>{}</time> {}</li>", crate::timestamp(e.at), esc(&e.message));
        }
        b.push_str("</ul>");
    }
    if mine {
        let _ = write!(
            b,
            "<h2 id=\"output\">Output</h2><pre id=\"log\" data-job=\"{id}\" tabindex=\"0\" aria-labelledby=\"output\" aria-live=\"off\"></pre>"
        );
    }
    page(started, layout(&format!("Job {id}"), "", &b))
}

/// `/gpus`: the node's GPUs, who uses them, and their utilization over the last minutes.
pub async fn gpus(State(ctl): State<Arc<Controller>>) -> Response {
    let started = Instant::now();
    let st = ctl.lock();
    let mut in_use = st.gpu_use(0);
    let mut b = String::from(
        "<h1>GPUs</h1><div class=\"scroll\"><table><thead><tr><th scope=\"col\">GPU</th><th scope=\"col\">Name</th><th scope=\"col\">Utilization</th><th scope=\"col\">Memory</th><th scope=\"col\">Used by</th><th scope=\"col\" class=\"opt\">Last minutes</th></tr></thead><tbody>",
    );
    let local: &[ravel_gpu::GpuInfo] = st.nodes.first().map_or(&[], |n| &n.inventory);
    for (i, g) in local.iter().enumerate() {
        let (whole, shared) = in_use.remove(&g.index).unwrap_or_default();
        let who = match (whole, shared.first(), g.foreign_busy(&ctl.cfg.thresholds)) {
            (Some(j), _, _) => format!("<a href=\"/jobs/{j}\">job {j}</a>"),
            (None, Some((j, m)), _) => format!("<a href=\"/jobs/{j}\">job {j}</a> ({m} MiB shared)"),
            (None, None, Some(why)) => format!("busy: {}", esc(&why)),
            _ => "free".into(),
        };
        let history: Vec<u32> = st.gpu_history.iter().filter_map(|s| s.1.get(i).copied()).collect();
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}%</td><td>{}/{} MiB</td><td>{who}</td><td class=\"opt\">{}</td></tr>",
            g.index,
            esc(&g.name),
            g.utilization_pct,
            g.used_memory_mib(),
            g.memory_total_mib,
            sparkline(&history),
        );
    }
    b.push_str("</tbody></table></div>");
    drop(st);
    let mut resp = page(started, layout("GPUs", "GPUs", &b));
    resp.headers_mut().insert("refresh", HeaderValue::from_static("5"));
    resp
}

/// The series of a job's `metrics.json` (at `$RAVEL_RUN_DIR/metrics.json`, written by the job):
/// either a list of records, `[{"step": 1, "loss": 0.9, "acc": 0.3}, ...]` (x is `step`, else
/// the record's index; every other numeric field is a series), or an object of series,
/// `{"loss": [0.9, 0.5], "acc": [[1, 0.3], [2, 0.6]]}` (values, or [x, y] pairs). Anything
/// else, a file over 1 MiB, or one that is not the job user's, shows nothing.
pub fn read_metrics(path: &std::path::Path, owner: Option<u32>) -> Vec<(String, Vec<(f64, f64)>)> {
    use std::io::Read;
    let Ok(f) = ravel_exec::open_log_for_reading(path, owner) else { return vec![] };
    let mut text = String::new();
    if f.take(1 << 20).read_to_string(&mut text).is_err() {
        return vec![];
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { return vec![] };
    let mut series: Vec<(String, Vec<(f64, f64)>)> = vec![];
    let mut push = |name: &str, x: f64, y: f64| {
        if let Some(i) = series.iter().position(|(n, _)| n == name) {
            series[i].1.push((x, y));
        } else if series.len() < 8 {
            series.push((name.to_string(), vec![(x, y)]));
        }
    };
    match &v {
        serde_json::Value::Array(records) => {
            for (i, r) in records.iter().enumerate().take(10_000) {
                let Some(obj) = r.as_object() else { continue };
                let x = obj.get("step").and_then(|s| s.as_f64()).unwrap_or(i as f64);
                for (k, val) in obj {
                    if let (true, Some(y)) = (k != "step", val.as_f64()) {
                        push(k, x, y);
                    }
                }
            }
        }
        serde_json::Value::Object(map) => {
            for (k, vals) in map {
                for (i, p) in vals.as_array().into_iter().flatten().enumerate().take(10_000) {
                    match (p.as_f64(), p.as_array()) {
                        (Some(y), _) => push(k, i as f64, y),
                        (None, Some(xy)) if xy.len() == 2 => {
                            if let (Some(x), Some(y)) = (xy[0].as_f64(), xy[1].as_f64()) {
                                push(k, x, y);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        _ => {}
    }
    series.retain(|(_, pts)| pts.len() >= 2);
    series
}

/// One metric as an SVG line chart with its range, labelled for screen readers.
fn chart(name: &str, pts: &[(f64, f64)]) -> String {
    let (w, h) = (320.0, 120.0);
    let (x0, x1) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let sx = |x: f64| if x1 > x0 { (x - x0) / (x1 - x0) * w } else { 0.0 };
    let sy = |y: f64| if y1 > y0 { h - (y - y0) / (y1 - y0) * h } else { h / 2.0 };
    let points: Vec<String> = pts.iter().map(|p| format!("{:.1},{:.1}", sx(p.0), sy(p.1))).collect();
    let last = pts.last().map_or(0.0, |p| p.1);
    format!(
        "<figure><figcaption>{} · last {last} (min {y0}, max {y1})</figcaption>         <svg viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"{} over {} points, last {last}\">         <polyline fill=\"none\" stroke=\"currentColor\" stroke-width=\"1.5\" points=\"{}\"/></svg></figure>",
        esc(name),
        esc(name),
        pts.len(),
        points.join(" ")
    )
}

/// Utilization samples (0-100) as a small inline SVG line.
fn sparkline(samples: &[u32]) -> String {
    if samples.len() < 2 {
        return "-".into();
    }
    let (w, h) = (120.0, 24.0);
    let step = w / (samples.len() - 1) as f64;
    let points: Vec<String> = samples
        .iter()
        .enumerate()
        .map(|(i, u)| format!("{:.1},{:.1}", i as f64 * step, h - (*u).min(100) as f64 / 100.0 * h))
        .collect();
    format!(
        "<svg width=\"120\" height=\"24\" role=\"img\" aria-label=\"utilization over time, last {}%\">\
         <polyline fill=\"none\" stroke=\"currentColor\" points=\"{}\"/></svg>",
        samples.last().copied().unwrap_or(0),
        points.join(" ")
    )
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(esc("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
        assert_eq!(url_encode("a b&c"), "a%20b%26c");
        assert_eq!(sparkline(&[0]), "-");
        assert!(sparkline(&[0, 100]).contains("0.0,24.0 120.0,0.0"));
    }

    #[test]
    fn metrics_files_of_both_shapes_become_series() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.json");
        std::fs::write(
            &path,
            r#"[{"step": 10, "loss": 0.9, "acc": 0.1}, {"step": 20, "loss": 0.5, "acc": 0.4, "tag": "x"}]"#,
        )
        .unwrap();
        let s = read_metrics(&path, None);
        assert_eq!(
            s,
            vec![
                ("acc".to_string(), vec![(10.0, 0.1), (20.0, 0.4)]),
                ("loss".to_string(), vec![(10.0, 0.9), (20.0, 0.5)])
            ]
        );
        std::fs::write(&path, r#"{"loss": [3, 2, 1], "lr": [[0, 0.1], [5, 0.01]], "bad": "x"}"#).unwrap();
        let s = read_metrics(&path, None);
        assert_eq!(s.len(), 2);
        assert!(chart("loss", &s[0].1).contains("aria-label=\"loss over 3 points, last 1\""));
        std::fs::write(&path, "not json").unwrap();
        assert!(read_metrics(&path, None).is_empty());
        assert!(read_metrics(&dir.path().join("missing"), None).is_empty());
    }
}
