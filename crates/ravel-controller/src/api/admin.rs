//! `GET/POST /v1/admin/limits`: per-user limits (`ravel admin limits`).

use super::{ApiError, Json};
use crate::Controller;
use crate::auth::Caller;
use axum::extract::State;
use ravel_proto::{Limits, LimitsConfig, SetLimitsRequest};
use std::sync::Arc;

#[utoipa::path(get, path = "/v1/admin/limits", tag = "admin", responses((status = 200, description = "Per-user limits", body = ravel_proto::LimitsConfig)))]
pub async fn limits(State(ctl): State<Arc<Controller>>) -> axum::Json<LimitsConfig> {
    axum::Json(ctl.lock().users.limits_cfg.clone())
}

#[utoipa::path(post, path = "/v1/admin/limits", tag = "admin", request_body = ravel_proto::SetLimitsRequest, responses((status = 200, description = "The new limits", body = ravel_proto::LimitsConfig), (status = 403, description = "Not an admin", body = ravel_proto::ErrorBody)))]
/// Changes the default's or a user's limits (admins only), keeps them in the limits file, and
/// applies them at once: lower limits stop new starts (running jobs are not stopped), higher ones
/// let waiting jobs start.
pub async fn set_limits(
    State(ctl): State<Arc<Controller>>,
    caller: Caller,
    Json(req): Json<SetLimitsRequest>,
) -> Result<axum::Json<LimitsConfig>, ApiError> {
    if !caller.admin {
        return Err(ApiError::forbidden(format!("only an admin may change limits (you are {})", caller.name)));
    }
    if let Some(u) = req.user.as_deref().filter(|u| u.is_empty() || u.len() > 64 || u.contains(char::is_whitespace)) {
        return Err(ApiError::bad_request(format!("{u:?} is not a user name")));
    }
    let _one_at_a_time = ctl.limits_write.lock().await;
    let mut cfg = ctl.lock().users.limits_cfg.clone();
    let entry = match &req.user {
        Some(u) => cfg.users.entry(u.clone()).or_default(),
        None => &mut cfg.default,
    };
    let base = if req.clear { Limits::default() } else { *entry };
    *entry = req.limits.or(base);
    if let Some(u) = &req.user
        && cfg.users.get(u) == Some(&Limits::default())
    {
        cfg.users.remove(u);
    }
    if let Some(path) = &ctl.cfg.limits_file {
        crate::limits::save(path, &cfg)
            .map_err(|e| ApiError::internal(format!("cannot write {}: {e}; nothing changed", path.display())))?;
    }
    {
        let mut st = ctl.lock();
        st.users.set_limits(cfg.clone());
        // Everything the last pass decided may change.
        st.generation += 1;
        st.leftover = None;
        st.dirty = true;
    }
    ctl.wake.notify_one();
    tracing::info!(by = caller.name, user = req.user.as_deref().unwrap_or("(default)"), "limits changed");
    Ok(axum::Json(cfg))
}
