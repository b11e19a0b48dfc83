//! `GET /metrics` (Prometheus), `GET /healthz` (the process answers) and `GET /readyz` (it can do
//! its work: store reachable, scheduler loop turning, GPU inventory fresh, taking submissions).

use crate::Controller;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String)))]
pub async fn metrics(State(ctl): State<Arc<Controller>>) -> Response {
    let body = crate::metrics::render(&ctl);
    ([("content-type", "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "The process answers", body = String)))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, description = "Ready: every check ok"), (status = 503, description = "Not ready; the checks say why")))]
/// Each check is "ok" or why not; 200 when all are ok, else 503.
pub async fn readyz(State(ctl): State<Arc<Controller>>) -> Response {
    // The scheduler loop wakes at least once per probe interval; the probe runs with it.
    let allowed = ctl.cfg.probe_interval * 3 + Duration::from_secs(10);
    let store = match tokio::time::timeout(Duration::from_secs(5), ctl.store.job(0)).await {
        Ok(Ok(_)) => "ok".to_string(),
        Ok(Err(e)) => format!("store error: {e}"),
        Err(_) => "store did not answer within 5 s".into(),
    };
    let tick = *ctl.scheduler_tick.lock().unwrap_or_else(|e| e.into_inner());
    let scheduler = age_check("scheduler loop last ran", Some(tick), allowed);
    let (agent, accepting) = {
        let st = ctl.lock();
        // A controller of agents reads no GPUs itself: its nodes report theirs (`ravel nodes`).
        let agent = if ctl.cfg.cluster.is_some() {
            "ok".to_string()
        } else {
            age_check("GPU inventory last read", st.last_probe, allowed)
        };
        (agent, st.accepting)
    };
    let accepting = if accepting { "ok".to_string() } else { "shutting down".to_string() };
    let checks = [("store", store), ("scheduler", scheduler), ("agent", agent), ("accepting", accepting)];
    let ready = checks.iter().all(|(_, v)| v == "ok");
    let body = serde_json::json!({
        "ready": ready,
        "checks": checks.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(v.clone()))).collect::<serde_json::Map<_, _>>(),
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body)).into_response()
}

fn age_check(what: &str, at: Option<Instant>, allowed: Duration) -> String {
    match at {
        Some(t) if t.elapsed() <= allowed => "ok".into(),
        Some(t) => format!("{what} {:.0} s ago", t.elapsed().as_secs_f64()),
        None => format!("{what}: never"),
    }
}

/// Times every request, labelled by its route pattern (not the raw path, so ids do not
/// multiply the series).
pub async fn track(State(ctl): State<Arc<Controller>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let method = req.method().as_str().to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    ctl.metrics.api(&method, &route, started.elapsed());
    resp
}

#[utoipa::path(get, path = "/v1/notifications", tag = "events", responses((status = 200, description = "The last 1,000 delivery attempts, oldest first", body = Vec<crate::notify::Delivery>)))]
/// `GET /v1/notifications`: the delivery log.
pub async fn notifications(State(ctl): State<Arc<Controller>>) -> axum::Json<Vec<crate::notify::Delivery>> {
    axum::Json(ctl.notifier.recent())
}
