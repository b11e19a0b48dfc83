//! `GET /v1/openapi.json`: the API described by the handlers themselves (`#[utoipa::path]` on
//! each, schemas derived from the wire types), so the document cannot drift from the code.

use super::{admin, agent, daemon, feed, gpus, health, jobs, logs, nodes, tokens};
use ravel_core::{Attempt, Job, JobSpec, JobState, NotifyOn};
use ravel_proto::*;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Ravel API",
        description = "The API of a Ravel daemon: on its Unix socket (who asks is the socket peer), or behind the web UI's session; of a controller, over HTTPS with bearer tokens. See docs/api.md and docs/cluster.md."
    ),
    paths(
        daemon::status,
        daemon::shutdown,
        jobs::submit,
        jobs::list,
        jobs::show,
        jobs::cancel,
        jobs::wait,
        jobs::hold,
        jobs::release,
        jobs::priority,
        jobs::retry,
        logs::read,
        gpus::list,
        feed::stream,
        admin::limits,
        admin::set_limits,
        health::metrics,
        health::healthz,
        health::readyz,
        health::notifications,
        crate::ui::session,
        agent::sync,
        agent::logs,
        tokens::create,
        tokens::list,
        tokens::revoke,
        nodes::list,
        nodes::act,
        nodes::remove,
    ),
    components(schemas(
        Job,
        JobSpec,
        JobState,
        Attempt,
        NotifyOn,
        SubmitRequest,
        ArrayRequest,
        SubmitResponse,
        PriorityRequest,
        JobView,
        JobEventView,
        EventView,
        Limits,
        LimitsConfig,
        SetLimitsRequest,
        QueueResponse,
        CancelRequest,
        CancelOutcome,
        CancelResult,
        CancelResponse,
        JobBrief,
        WaitResponse,
        LogStream,
        GpuProcessView,
        GpuView,
        GpusResponse,
        StatusResponse,
        ShutdownRequest,
        ErrorBody,
        crate::notify::Delivery,
        crate::ui::SessionRequest,
        crate::ui::SessionResponse,
        Role,
        TokenCreateRequest,
        TokenInfo,
        TokenCreated,
        TokensResponse,
        NodeInfo,
        NodesResponse,
        NodeResponse,
        AgentGpu,
        ObservedAttempt,
        AttemptEnd,
        AgentSyncRequest,
        DesiredAttempt,
        AgentSyncResponse,
    ))
)]
struct Doc;

pub async fn document() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(Doc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_of_the_router_is_documented() {
        let doc = serde_json::to_value(Doc::openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/v1/status",
            "/v1/jobs",
            "/v1/jobs/{id}",
            "/v1/jobs/cancel",
            "/v1/wait",
            "/v1/jobs/{id}/logs",
            "/v1/jobs/{id}/hold",
            "/v1/jobs/{id}/release",
            "/v1/jobs/{id}/retry",
            "/v1/jobs/{id}/priority",
            "/v1/gpus",
            "/v1/events",
            "/v1/admin/limits",
            "/v1/daemon/shutdown",
            "/metrics",
            "/healthz",
            "/readyz",
            "/v1/notifications",
            "/v1/ui/session",
        ] {
            assert!(paths.contains_key(p), "{p} is not in the document");
        }
        let src = include_str!("mod.rs");
        let routed = src.matches(".route(\"").count();
        // Every route but the document itself.
        assert_eq!(paths.len(), routed - 1, "routes and documented paths differ");
        assert!(doc["components"]["schemas"]["JobSpec"]["properties"]["env"].is_object());
        let mut ids: Vec<&str> = paths
            .values()
            .flat_map(|p| p.as_object().unwrap().values())
            .filter_map(|op| op["operationId"].as_str())
            .collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "operation ids are unique");
    }
}
