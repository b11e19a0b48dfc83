//! Nodes: list (everyone), drain / undrain / cordon / remove (admins).

use super::{ApiError, Path};
use crate::Controller;
use crate::auth::Caller;
use axum::extract::State;
use ravel_proto::{NodeResponse, NodesResponse};
use std::sync::Arc;

#[utoipa::path(get, path = "/v1/nodes", tag = "cluster", operation_id = "list_nodes", responses((status = 200, description = "The nodes", body = ravel_proto::NodesResponse)))]
pub async fn list(State(ctl): State<Arc<Controller>>) -> axum::Json<NodesResponse> {
    axum::Json(NodesResponse { nodes: crate::cluster::node_infos(&ctl) })
}

#[utoipa::path(post, path = "/v1/nodes/{name}/{action}", tag = "cluster", params(("name" = String, Path, description = "Node name"), ("action" = String, Path, description = "drain, undrain or cordon")), responses((status = 200, description = "The node now", body = ravel_proto::NodeResponse), (status = 403, description = "Not an admin", body = ravel_proto::ErrorBody), (status = 404, description = "No such node", body = ravel_proto::ErrorBody)))]
pub async fn act(
    State(ctl): State<Arc<Controller>>,
    caller: Caller,
    Path((name, action)): Path<(String, String)>,
) -> Result<axum::Json<NodeResponse>, ApiError> {
    if !caller.admin {
        return Err(ApiError::forbidden("nodes are managed by admins"));
    }
    if !matches!(action.as_str(), "drain" | "undrain" | "cordon") {
        return Err(ApiError::not_found(format!("no node action {action:?}: use drain, undrain or cordon")));
    }
    let node = crate::cluster::node_admin(&ctl, &name, &action).await?;
    tracing::info!(node = %name, action, by = %caller.name, "node changed");
    Ok(axum::Json(NodeResponse { node }))
}

#[utoipa::path(delete, path = "/v1/nodes/{name}", tag = "cluster", params(("name" = String, Path, description = "Node name")), responses((status = 200, description = "The node as it was", body = ravel_proto::NodeResponse), (status = 409, description = "It still holds jobs or is up and ready", body = ravel_proto::ErrorBody)))]
pub async fn remove(
    State(ctl): State<Arc<Controller>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<axum::Json<NodeResponse>, ApiError> {
    if !caller.admin {
        return Err(ApiError::forbidden("nodes are managed by admins"));
    }
    let node = crate::cluster::node_admin(&ctl, &name, "rm").await?;
    tracing::info!(node = %name, by = %caller.name, "node removed");
    Ok(axum::Json(NodeResponse { node }))
}
