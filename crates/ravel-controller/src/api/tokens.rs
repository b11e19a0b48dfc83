//! Tokens (cluster mode, admins only): create (the secret is shown once), list, revoke.

use super::{ApiError, Json, Path};
use crate::auth::Caller;
use crate::{Controller, now_ms, tokens};
use axum::extract::State;
use ravel_proto::{TokenCreateRequest, TokenCreated, TokenInfo, TokensResponse};
use std::sync::Arc;

fn admin_only(ctl: &Controller, caller: &Caller) -> Result<(), ApiError> {
    if ctl.cfg.cluster.is_none() {
        return Err(ApiError::not_found(
            "tokens belong to a controller (`ravel controller`); this daemon uses its socket's peer credentials",
        ));
    }
    if !caller.admin {
        return Err(ApiError::forbidden("tokens are managed by admins"));
    }
    Ok(())
}

#[utoipa::path(post, path = "/v1/tokens", tag = "cluster", operation_id = "create_token", request_body = ravel_proto::TokenCreateRequest, responses((status = 200, description = "The new token; its secret is not shown again", body = ravel_proto::TokenCreated), (status = 400, description = "Bad request", body = ravel_proto::ErrorBody), (status = 403, description = "Not an admin", body = ravel_proto::ErrorBody)))]
pub async fn create(
    State(ctl): State<Arc<Controller>>,
    caller: Caller,
    Json(req): Json<TokenCreateRequest>,
) -> Result<axum::Json<TokenCreated>, ApiError> {
    admin_only(&ctl, &caller)?;
    if let Some(name) = &req.name
        && (name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control() || c.is_whitespace()))
    {
        return Err(ApiError::bad_request("a token's name is 1 to 64 characters, without spaces"));
    }
    let expires_at = match req.expires_in_ms {
        Some(0) => return Err(ApiError::bad_request("a token cannot expire at once: give --expires of 1s or more")),
        Some(ms) => Some(now_ms().saturating_add(i64::try_from(ms).unwrap_or(i64::MAX))),
        None => None,
    };
    let secret = tokens::new_secret().map_err(ApiError::internal)?;
    let name = req.name.clone().unwrap_or_else(|| req.role.as_str().to_string());
    let kept = ctl.add_token(name, req.role, expires_at, &secret).await.map_err(ApiError::internal)?;
    tracing::info!(id = kept.id, name = %kept.name, role = %kept.role, by = %caller.name, "token created");
    Ok(axum::Json(TokenCreated { info: tokens::info(&kept), token: secret }))
}

#[utoipa::path(get, path = "/v1/tokens", tag = "cluster", operation_id = "list_tokens", responses((status = 200, description = "Every token (never their secrets)", body = ravel_proto::TokensResponse), (status = 403, description = "Not an admin", body = ravel_proto::ErrorBody)))]
pub async fn list(State(ctl): State<Arc<Controller>>, caller: Caller) -> Result<axum::Json<TokensResponse>, ApiError> {
    admin_only(&ctl, &caller)?;
    let all = ctl.store.tokens().await?;
    Ok(axum::Json(TokensResponse { tokens: all.iter().map(tokens::info).collect() }))
}

#[utoipa::path(post, path = "/v1/tokens/{id}/revoke", tag = "cluster", params(("id" = u64, Path, description = "Token id")), responses((status = 200, description = "The token, revoked", body = ravel_proto::TokenInfo), (status = 404, description = "No such token", body = ravel_proto::ErrorBody)))]
pub async fn revoke(
    State(ctl): State<Arc<Controller>>,
    caller: Caller,
    Path(id): Path<u64>,
) -> Result<axum::Json<TokenInfo>, ApiError> {
    admin_only(&ctl, &caller)?;
    let t = ctl
        .store
        .revoke_token(id, now_ms())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no token {id}: see `ravel token ls`")))?;
    ctl.tokens.put(t.clone());
    tracing::info!(id, by = %caller.name, "token revoked");
    Ok(axum::Json(tokens::info(&t)))
}
