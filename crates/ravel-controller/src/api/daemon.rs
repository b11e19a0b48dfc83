//! `GET /v1/status` and `POST /v1/daemon/shutdown`.

use super::{ApiError, Json};
use crate::Controller;
use crate::auth::Caller;
use axum::extract::State;
use ravel_proto::{ShutdownRequest, StatusResponse};
use std::sync::Arc;
use std::time::Duration;

#[utoipa::path(get, path = "/v1/status", tag = "daemon", responses((status = 200, description = "Daemon status", body = ravel_proto::StatusResponse)))]
pub async fn status(
    State(ctl): State<Arc<Controller>>,
    caller: Caller,
) -> Result<axum::Json<StatusResponse>, ApiError> {
    let st = ctl.lock();
    let running = st.active.len() as u64;
    Ok(axum::Json(StatusResponse {
        version: env!("CARGO_PKG_VERSION").to_string(),
        api: ravel_proto::API_VERSION.to_string(),
        pid: std::process::id(),
        started_at: ctl.started_at,
        home: ctl.cfg.home.display().to_string(),
        db_path: ctl.cfg.db_path.display().to_string(),
        node: ctl.cfg.node_name.clone(),
        cpus_total: st.nodes.iter().map(|n| n.cpus_total).sum(),
        cpus_used: st.active.values().map(|a| a.cpus).sum(),
        gpus_total: st.nodes.iter().map(|n| n.inventory.len() as u32).sum(),
        gpus_allocated: st.gpus_in_use() as u32,
        gpu_probe: ctl.probe_kind.to_string(),
        queued: st.queue.len() as u64,
        running,
        mode: ctl.mode().to_string(),
        socket: ctl.cfg.socket.display().to_string(),
        you: caller.name,
        you_are_admin: caller.admin,
        cgroups: match &ctl.cfg.cgroups {
            ravel_exec::cgroup::CgroupSupport::V1 { .. } => "cgroup v1".into(),
            ravel_exec::cgroup::CgroupSupport::V2 { .. } => "cgroup v2".into(),
            ravel_exec::cgroup::CgroupSupport::Unavailable(why) => format!("none: {why}"),
        },
        now: crate::now_ms(),
    }))
}

#[utoipa::path(post, path = "/v1/daemon/shutdown", tag = "daemon", request_body = ravel_proto::ShutdownRequest, responses((status = 200, description = "Stopping"), (status = 403, description = "Not an admin", body = ravel_proto::ErrorBody)))]
/// Stops taking work and asks the daemon to exit. Running jobs keep running (and are re-adopted
/// by the next start) unless `kill_jobs` is set, in which case they are canceled first.
pub async fn shutdown(
    State(ctl): State<Arc<Controller>>,
    caller: Caller,
    Json(req): Json<ShutdownRequest>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    if !caller.admin {
        return Err(ApiError::forbidden(format!("only an admin may stop the daemon (you are {})", caller.name)));
    }
    ctl.lock().accepting = false;
    let mut stopped = 0;
    if req.kill_jobs {
        let ids: Vec<_> = ctl.lock().active.keys().copied().collect();
        for id in ids {
            if super::jobs::cancel_one(&ctl, id).await.is_ok() {
                stopped += 1;
            }
        }
        // Wait (bounded) for their ends to be recorded, so none is left running or unrecorded.
        let deadline = tokio::time::Instant::now() + ctl.cfg.kill_grace + Duration::from_secs(10);
        let mut rx = ctl.finished.subscribe();
        while !ctl.lock().active.is_empty() && tokio::time::Instant::now() < deadline {
            let _ = tokio::time::timeout_at(deadline, rx.changed()).await;
        }
    }
    ctl.shutdown.send_replace(true);
    Ok(axum::Json(serde_json::json!({ "stopping": true, "jobs_stopped": stopped })))
}
