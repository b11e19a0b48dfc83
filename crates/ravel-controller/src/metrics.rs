//! Prometheus metrics: counters and histograms kept with atomics as work flows, gauges read from
//! the controller's state when scraped. `GET /metrics` renders them in the text exposition
//! format (version 0.0.4).

use crate::Controller;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms: API requests, store writes, passes.
const FAST_BUCKETS: [f64; 12] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];
/// Upper bounds (seconds) of the queue-wait histogram: from milliseconds to a day.
const WAIT_BUCKETS: [f64; 12] =
    [0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4.0 * 3600.0, 12.0 * 3600.0, 86400.0, 7.0 * 86400.0];

/// A histogram with fixed buckets; sums are kept in microseconds.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(d.as_micros().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// Appends the histogram's lines; `labels` is `a="b",` or empty.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
        let labels = labels.trim_end_matches(',');
        let braces = |l: &str| if l.is_empty() { String::new() } else { format!("{{{l}}}") };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum_us.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{} {count}", braces(labels));
    }
}

/// Everything counted as it happens.
pub struct Metrics {
    pub submitted: AtomicU64,
    pub started: AtomicU64,
    /// Indexed like `FINAL_STATES`.
    finished: [AtomicU64; 4],
    pub queue_wait: Histogram,
    pub pass: Histogram,
    pub store_write: Histogram,
    /// API latency per (method, route); few routes, so a locked list is cheap.
    api: Mutex<Vec<(String, String, Histogram)>>,
}

const FINAL_STATES: [&str; 4] = ["succeeded", "failed", "canceled", "lost"];

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            submitted: AtomicU64::new(0),
            started: AtomicU64::new(0),
            finished: Default::default(),
            queue_wait: Histogram::new(&WAIT_BUCKETS),
            pass: Histogram::new(&FAST_BUCKETS),
            store_write: Histogram::new(&FAST_BUCKETS),
            api: Mutex::new(Vec::new()),
        }
    }
}

impl Metrics {
    pub fn finished(&self, state: ravel_core::JobState) {
        if let Some(i) = FINAL_STATES.iter().position(|s| *s == state.as_str()) {
            self.finished[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn api(&self, method: &str, route: &str, d: Duration) {
        let mut api = self.api.lock().unwrap_or_else(|p| p.into_inner());
        match api.iter().find(|(m, r, _)| m == method && r == route) {
            Some((_, _, h)) => h.observe(d),
            None => {
                let h = Histogram::new(&FAST_BUCKETS);
                h.observe(d);
                api.push((method.to_string(), route.to_string(), h));
            }
        }
    }
}

/// Label values escaped as the exposition format asks.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The whole exposition.
pub fn render(ctl: &Controller) -> String {
    let m = &ctl.metrics;
    let mut out = String::with_capacity(8192);
    {
        let st = ctl.lock();
        head(
            &mut out,
            "ravel_jobs",
            "gauge",
            "Jobs not yet finished, by state (waiting = held, blocked or before its begin time).",
        );
        let _ = writeln!(out, "ravel_jobs{{state=\"queued\"}} {}", st.queue.len());
        let _ = writeln!(out, "ravel_jobs{{state=\"waiting\"}} {}", st.parked.len());
        let _ = writeln!(out, "ravel_jobs{{state=\"running\"}} {}", st.active.len());
        head(
            &mut out,
            "ravel_gpus",
            "gauge",
            "GPUs of each node: allocated to jobs, free, or busy with use outside Ravel.",
        );
        for (i, n) in st.nodes.iter().enumerate() {
            let node = esc(&n.name);
            let c = st.gpu_counts(i, &ctl.cfg.thresholds);
            for (state, n) in [("allocated", c.allocated), ("free", c.free), ("foreign_busy", c.foreign_busy)] {
                let _ = writeln!(out, "ravel_gpus{{node=\"{node}\",state=\"{state}\"}} {n}");
            }
        }
        head(&mut out, "ravel_cpus", "gauge", "CPU slots of each node, and how many jobs hold.");
        for (i, n) in st.nodes.iter().enumerate() {
            let node = esc(&n.name);
            let _ = writeln!(out, "ravel_cpus{{node=\"{node}\",state=\"total\"}} {}", n.cpus_total);
            let _ = writeln!(out, "ravel_cpus{{node=\"{node}\",state=\"used\"}} {}", st.cpus_used(i));
        }
        head(
            &mut out,
            "ravel_agent_last_seen_seconds",
            "gauge",
            "Seconds since each node's agent last reported (its last GPU probe).",
        );
        for n in &st.nodes {
            let node = esc(&n.name);
            let seen = match &n.remote {
                None => st.last_probe.map_or(f64::INFINITY, |t| t.elapsed().as_secs_f64()),
                Some(r) => r.last_seen.map_or(f64::INFINITY, |t| t.elapsed().as_secs_f64()),
            };
            let _ = writeln!(out, "ravel_agent_last_seen_seconds{{node=\"{node}\"}} {}", fmt_f64(seen));
        }
    }
    head(&mut out, "ravel_jobs_submitted_total", "counter", "Jobs accepted.");
    let _ = writeln!(out, "ravel_jobs_submitted_total {}", m.submitted.load(Ordering::Relaxed));
    head(&mut out, "ravel_jobs_started_total", "counter", "Attempts started (their supervisor launched).");
    let _ = writeln!(out, "ravel_jobs_started_total {}", m.started.load(Ordering::Relaxed));
    head(&mut out, "ravel_jobs_finished_total", "counter", "Jobs that reached a final state, by state.");
    for (s, c) in FINAL_STATES.iter().zip(&m.finished) {
        let _ = writeln!(out, "ravel_jobs_finished_total{{state=\"{s}\"}} {}", c.load(Ordering::Relaxed));
    }
    head(&mut out, "ravel_queue_wait_seconds", "histogram", "Time from submit to start of each started attempt.");
    m.queue_wait.render(&mut out, "ravel_queue_wait_seconds", "");
    head(&mut out, "ravel_scheduler_pass_seconds", "histogram", "Duration of each full scheduling pass.");
    m.pass.render(&mut out, "ravel_scheduler_pass_seconds", "");
    head(
        &mut out,
        "ravel_store_write_seconds",
        "histogram",
        "Latency of store writes (submit, place, start, finish), commit included.",
    );
    m.store_write.render(&mut out, "ravel_store_write_seconds", "");
    head(&mut out, "ravel_api_request_seconds", "histogram", "API request latency by method and route.");
    for (method, route, h) in m.api.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let labels = format!("method=\"{}\",route=\"{}\",", esc(method), esc(route));
        h.render(&mut out, "ravel_api_request_seconds", &labels);
    }
    head(&mut out, "ravel_up_seconds", "gauge", "Seconds since the daemon started.");
    let _ = writeln!(out, "ravel_up_seconds {}", (crate::now_ms() - ctl.started_at) as f64 / 1000.0);
    out
}

fn fmt_f64(v: f64) -> String {
    if v.is_infinite() { "+Inf".into() } else { v.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_end_with_inf() {
        let h = Histogram::new(&FAST_BUCKETS);
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(5));
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\",");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.0001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 3\n"), "{out}");
        assert!(out.contains("x_sum{a=\"b\"} 5.00305\n"), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
