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

#[utoipa::path(get, path = "/v1/jobs/{id}/logs", tag = "jobs", params(("id" = i64, Path, description = "Job id"), ravel_proto::LogsQuery), responses((status = 200, description = "Raw bytes of the log (streamed with follow=true)", content_type = "application/octet-stream", body = Vec<u8>), (status = 400, description = "Bad request", body = ravel_proto::ErrorBody), (status = 403, description = "Not the job's owner nor an admin", body = ravel_proto::ErrorBody), (status = 404, description = "No such job", body = ravel_proto::ErrorBody)))]
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
    // A gang's other ranks: the controller keeps their copies in rank<N>/ of the run dir.
    let rank = q.rank.unwrap_or(0) as usize;
    if let Some(a) = attempt
        && rank > a.ranks.len()
    {
        let n = a.ranks.len() + 1;
        return Err(ApiError::not_found(format!(
            "job {id} attempt {} has {n} rank{}",
            a.n,
            if n == 1 { "" } else { "s" }
        )));
    }
    let path =
        attempt.map(|a| crate::cluster::rank_dir(std::path::Path::new(&a.run_dir), rank).join(q.stream.file_name()));
    if q.follow {
        // An attempt other than the current one no longer grows.
        let current = q.attempt.is_none_or(|n| attempts.last().is_some_and(|a| a.n == n));
        let file = q.stream.file_name();
        return Ok(follow(Tail {
            id,
            path,
            file,
            offset: q.offset,
            owner,
            growing: current,
            stopping: ctl.shutdown.subscribe(),
            ctl,
        }));
    }
    let (bytes, next, size) = match path {
        None => (Vec::new(), q.offset, 0),
        Some(path) => {
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

/// Where a followed log is.
struct Tail {
    ctl: Arc<Controller>,
    id: JobId,
    /// Known once the job has an attempt.
    path: Option<std::path::PathBuf>,
    file: &'static str,
    offset: u64,
    owner: Option<u32>,
    /// The job may still write more.
    growing: bool,
    stopping: tokio::sync::watch::Receiver<bool>,
}

/// Streams the log from `offset` as it grows: new bytes are looked for every 50 ms, or at once
/// when a job ends; the stream ends after the last bytes of an ended job (or when the daemon
/// stops, so that followers never hold up a shutdown).
fn follow(tail: Tail) -> Response {
    let body = futures_util::stream::unfold(tail, |mut t| async move {
        loop {
            if t.path.is_none() {
                // Not started when asked: its first attempt's log, once it has one.
                if let Ok(attempts) = t.ctl.store.attempts(t.id).await {
                    t.path = attempts.last().map(|a| std::path::Path::new(&a.run_dir).join(t.file));
                }
            }
            // Whether it still runs is read before the file: bytes written before its end are
            // then surely in the read that follows.
            let live = t.growing && t.ctl.lock().is_live(t.id) && !*t.stopping.borrow();
            if let Some(path) = t.path.clone() {
                let (offset, owner) = (t.offset, t.owner);
                let read = tokio::task::spawn_blocking(move || read_range(&path, offset, MAX_LOG_READ, owner)).await;
                match read {
                    Ok(Ok((bytes, next, _))) if !bytes.is_empty() => {
                        t.offset = next;
                        return Some((Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(bytes)), t));
                    }
                    Ok(Ok(_)) => {}
                    _ => return None,
                }
            }
            if !live {
                return None;
            }
            let mut finished = t.ctl.finished.subscribe();
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
                _ = finished.changed() => {}
                _ = t.stopping.changed() => {}
            }
        }
    });
    let mut resp = axum::body::Body::from_stream(body).into_response();
    resp.headers_mut().insert("content-type", HeaderValue::from_static("application/octet-stream"));
    resp
}

/// Reads up to `limit` bytes from `offset`; a file not created yet, or not yet handed to the
/// job's user, reads as empty.
fn read_range(
    path: &std::path::Path,
    offset: u64,
    limit: u64,
    owner: Option<u32>,
) -> Result<(Vec<u8>, u64, u64), String> {
    let mut f = match ravel_exec::open_log_for_reading(path, owner) {
        Ok(f) => f,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::WouldBlock) => {
            return Ok((Vec::new(), offset, 0));
        }
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
