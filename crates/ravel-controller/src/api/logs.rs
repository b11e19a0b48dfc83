//! `GET /v1/jobs/{id}/logs`: a byte range of an attempt's stdout or stderr file.

use super::{ApiError, Path, Query};
use crate::Controller;
use crate::auth::{Caller, owned_job};
use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use ravel_core::JobId;
use ravel_proto::{HEADER_FILE_SIZE, HEADER_JOB_STATE, HEADER_NEXT_OFFSET, LogsQuery, MAX_LOG_READ};
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

pub async fn read(
    State(ctl): State<Arc<Controller>>,
    caller: Caller,
    Path(id): Path<JobId>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let job = owned_job(&ctl, &caller, id, "read the logs of").await?;
    // On a shared box the job's user owns its run dir and could swap its logs for links to
    // files they may not read: open only a regular file of theirs, never through a symlink.
    let owner = ctl.cfg.system.then(|| ctl.owner_of(&job));
    let attempts = ctl.store.attempts(id).await?;
    let attempt = match q.attempt {
        Some(n) => Some(
            attempts
                .iter()
                .find(|a| a.n == n)
                .ok_or_else(|| ApiError::not_found(format!("job {id} has no attempt {n}")))?,
        ),
        None => attempts.last(),
    };
    let limit = q.limit.unwrap_or(MAX_LOG_READ).min(MAX_LOG_READ);
    let (bytes, next, size) = match attempt {
        None => (Vec::new(), q.offset, 0),
        Some(a) => {
            let path = std::path::Path::new(&a.run_dir).join(q.stream.file_name());
            let offset = q.offset;
            tokio::task::spawn_blocking(move || read_range(&path, offset, limit, owner))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?
                .map_err(ApiError::internal)?
        }
    };
    let mut resp = bytes.into_response();
    let h = resp.headers_mut();
    h.insert(HEADER_NEXT_OFFSET, HeaderValue::from(next));
    h.insert(HEADER_FILE_SIZE, HeaderValue::from(size));
    h.insert(HEADER_JOB_STATE, HeaderValue::from_static(job.state.as_str()));
    h.insert("content-type", HeaderValue::from_static("application/octet-stream"));
    Ok(resp)
}

/// Reads up to `limit` bytes from `offset`; a file not created yet reads as empty.
fn read_range(
    path: &std::path::Path,
    offset: u64,
    limit: u64,
    owner: Option<u32>,
) -> Result<(Vec<u8>, u64, u64), String> {
    let mut f = match ravel_exec::open_log_for_reading(path, owner) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), offset, 0)),
        Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
    };
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    if offset >= size {
        return Ok((Vec::new(), offset.min(size).max(offset), size));
    }
    f.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    f.take(limit).read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let next = offset + buf.len() as u64;
    Ok((buf, next, size))
}
