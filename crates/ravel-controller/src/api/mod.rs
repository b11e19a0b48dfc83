//! HTTP/JSON API, one file per resource. Every error is an `ErrorBody` with a stable code.

mod admin;
mod agent;
mod daemon;
mod feed;
mod gpus;
mod health;
mod jobs;
mod logs;
mod nodes;
mod openapi;
mod tokens;

use crate::Controller;
use axum::Router;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ravel_proto::{ErrorBody, MAX_BODY_BYTES};
use ravel_store::StoreError;
use std::sync::Arc;

/// The API on the daemon's socket.
pub fn router(ctl: Arc<Controller>) -> Router {
    routes(&ctl).with_state(ctl)
}

/// Largest request body a controller takes over HTTPS.
pub const MAX_REMOTE_BODY_BYTES: usize = 1 << 20;

/// The API over HTTPS: the same routes behind the bearer-token check.
pub fn tls_router(ctl: Arc<Controller>) -> Router {
    routes_limited(&ctl, MAX_REMOTE_BODY_BYTES)
        .layer(axum::middleware::from_fn_with_state(ctl.clone(), crate::auth::require_token))
        .with_state(ctl)
}

/// The API's routes, without state: the socket serves them, and so does the web UI's listener
/// (behind its session check).
pub fn routes(ctl: &Arc<Controller>) -> Router<Arc<Controller>> {
    routes_limited(ctl, MAX_BODY_BYTES)
}

fn routes_limited(ctl: &Arc<Controller>, body_limit: usize) -> Router<Arc<Controller>> {
    Router::new()
        .route("/v1/status", get(daemon::status))
        .route("/v1/daemon/shutdown", post(daemon::shutdown))
        .route("/v1/jobs", post(jobs::submit).get(jobs::list))
        .route("/v1/jobs/cancel", post(jobs::cancel))
        .route("/v1/jobs/{id}", get(jobs::show))
        .route("/v1/jobs/{id}/logs", get(logs::read))
        .route("/v1/jobs/{id}/hold", post(jobs::hold))
        .route("/v1/jobs/{id}/release", post(jobs::release))
        .route("/v1/jobs/{id}/retry", post(jobs::retry))
        .route("/v1/jobs/{id}/priority", post(jobs::priority))
        .route("/v1/wait", get(jobs::wait))
        .route("/v1/gpus", get(gpus::list))
        .route("/v1/events", get(feed::stream))
        .route("/v1/notifications", get(health::notifications))
        .route("/v1/openapi.json", get(openapi::document))
        .route("/v1/ui/session", post(crate::ui::session))
        .route("/v1/admin/limits", get(admin::limits).post(admin::set_limits))
        .route("/v1/agent/sync", post(agent::sync))
        .route("/v1/agent/logs", post(agent::logs))
        .route("/v1/tokens", post(tokens::create).get(tokens::list))
        .route("/v1/tokens/{id}/revoke", post(tokens::revoke))
        .route("/v1/nodes", get(nodes::list))
        .route("/v1/nodes/{name}", axum::routing::delete(nodes::remove))
        .route("/v1/nodes/{name}/{action}", post(nodes::act))
        .route("/metrics", get(health::metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(|| async { ApiError::not_found("no such API route") })
        .method_not_allowed_fallback(|| async {
            ApiError {
                status: StatusCode::METHOD_NOT_ALLOWED,
                code: "bad_request",
                message: "method not allowed on this route".into(),
            }
        })
        .layer(axum::middleware::from_fn_with_state(ctl.clone(), health::track))
        .layer(DefaultBodyLimit::max(body_limit))
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, code: "bad_request", message: message.into() }
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::NOT_FOUND, code: "not_found", message: message.into() }
    }
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::SERVICE_UNAVAILABLE, code: "unavailable", message: message.into() }
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::FORBIDDEN, code: "forbidden", message: message.into() }
    }
    /// A per-user limit refuses the request.
    pub fn limit(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::TOO_MANY_REQUESTS, code: "limit", message: message.into() }
    }
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::CONFLICT, code: "conflict", message: message.into() }
    }
    /// A conflict with its own code (`stale_epoch`, `stale_attempt`, `log_gap`) for agents to act on.
    pub fn conflict_code(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::CONFLICT, code, message: message.into() }
    }
    pub fn too_large() -> ApiError {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "too_large",
            message: format!(
                "request body is larger than the server's limit ({} MiB on a socket, {} MiB over HTTPS)",
                MAX_BODY_BYTES >> 20,
                MAX_REMOTE_BODY_BYTES >> 20
            ),
        }
    }
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::UNAUTHORIZED, code: "unauthorized", message: message.into() }
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, code: "internal", message: message.into() }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound(id) => {
                ApiError::not_found(format!("no job {id}: see `ravel queue --all` for the jobs there are"))
            }
            StoreError::Conflict { .. } => {
                ApiError { status: StatusCode::CONFLICT, code: "conflict", message: e.to_string() }
            }
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { code: self.code.to_string(), error: self.message };
        (self.status, axum::Json(body)).into_response()
    }
}

/// `axum::Json` whose rejections are `ApiError`s (a malformed or oversized body says so in JSON).
pub struct Json<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // A body that says it is JSON and parses (every submit) is read with plain serde_json:
        // axum's extractor tracks the path through the document for its error message, which
        // was a few percent of a submit's CPU. A body that does not parse goes through axum's
        // for that message, so the answer is the same either way.
        if req.headers().get(axum::http::header::CONTENT_TYPE).is_some_and(|v| v == "application/json") {
            let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|_| ApiError::too_large())?;
            return match serde_json::from_slice(&bytes) {
                Ok(v) => Ok(Json(v)),
                Err(_) => axum::Json::<T>::from_bytes(&bytes).map(|axum::Json(v)| Json(v)).map_err(rejected),
            };
        }
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(e) => Err(rejected(e)),
        }
    }
}

fn rejected(e: JsonRejection) -> ApiError {
    match e {
        JsonRejection::BytesRejection(_) => ApiError::too_large(),
        e => ApiError::bad_request(format!("bad request body: {}", e.body_text())),
    }
}

/// `axum::extract::Path` with `ApiError` rejections (`/v1/jobs/abc` says the id is bad, in JSON).
pub struct Path<T>(pub T);

impl<T: serde::de::DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e: PathRejection| ApiError::bad_request(format!("bad path: {}", e.body_text())))
    }
}

/// `axum::extract::Query` with `ApiError` rejections.
pub struct Query<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e: QueryRejection| ApiError::bad_request(e.body_text()))
    }
}
