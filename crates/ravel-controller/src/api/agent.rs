//! The agent protocol (cluster mode, agent tokens only): `POST /v1/agent/sync` and
//! `POST /v1/agent/logs`. See `crate::cluster`.

use super::{ApiError, Json, Query};
use crate::Controller;
use axum::body::Bytes;
use axum::extract::State;
use ravel_proto::{AgentLogsQuery, AgentSyncRequest, AgentSyncResponse};
use std::sync::Arc;

#[utoipa::path(post, path = "/v1/agent/sync", tag = "cluster", request_body = ravel_proto::AgentSyncRequest, responses((status = 200, description = "What the node should run", body = ravel_proto::AgentSyncResponse), (status = 401, description = "No valid token", body = ravel_proto::ErrorBody), (status = 403, description = "Not an agent token", body = ravel_proto::ErrorBody), (status = 409, description = "Stale lease epoch (code stale_epoch): kill every job and register again", body = ravel_proto::ErrorBody)))]
/// Reports the node and its attempts; long-polls for what the controller wants on it.
pub async fn sync(
    State(ctl): State<Arc<Controller>>,
    caller: crate::auth::Caller,
    from: PeerAddr,
    Json(req): Json<AgentSyncRequest>,
) -> Result<axum::Json<AgentSyncResponse>, ApiError> {
    crate::cluster::sync(&ctl, req, from.0, &caller.name).await.map(axum::Json)
}

/// The address an HTTPS request comes from (none on the Unix socket).
pub struct PeerAddr(Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PeerAddr {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<PeerAddr, ApiError> {
        let info = parts.extensions.get::<axum::extract::ConnectInfo<crate::tls::RemoteAddr>>();
        Ok(PeerAddr(info.map(|c| c.0.0.ip())))
    }
}

#[utoipa::path(post, path = "/v1/agent/logs", tag = "cluster", operation_id = "agent_logs", params(ravel_proto::AgentLogsQuery), request_body(content = Vec<u8>, content_type = "application/octet-stream"), responses((status = 200, description = "The size of the controller's copy", body = serde_json::Value), (status = 409, description = "Stale epoch or attempt, or a gap (code log_gap)", body = ravel_proto::ErrorBody)))]
/// A piece of an attempt's output, at its offset in the file.
pub async fn logs(
    State(ctl): State<Arc<Controller>>,
    Query(q): Query<AgentLogsQuery>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let body = body.map_err(|_| ApiError::too_large())?;
    let size = crate::cluster::logs(&ctl, q, body.to_vec()).await?;
    Ok(axum::Json(serde_json::json!({ "size": size })))
}
