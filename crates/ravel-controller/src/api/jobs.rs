//! Jobs: submit, list, show, cancel, wait.

use super::{ApiError, Json, Path, Query};
use crate::scheduler::queued_job;
use crate::{Controller, now_ms};
use axum::extract::State;
use ravel_core::{Job, JobId, PendingReason};
use ravel_proto::{
    CancelOutcome, CancelRequest, CancelResponse, CancelResult, JobBrief, JobView, QueueQuery, QueueResponse,
    SubmitRequest, SubmitResponse, WaitQuery, WaitResponse,
};
use ravel_store::{CancelEffect, JobFilter};
use std::sync::Arc;
use std::time::Duration;

/// Finished jobs `ravel queue` shows without `--all`.
const DEFAULT_RECENT: u32 = 10;
/// Longest a `wait` request is held open.
const MAX_WAIT: Duration = Duration::from_secs(30);

pub async fn submit(
    State(ctl): State<Arc<Controller>>,
    Json(req): Json<SubmitRequest>,
) -> Result<axum::Json<SubmitResponse>, ApiError> {
    let spec = req.spec;
    spec.validate().map_err(|e| ApiError::bad_request(e.0))?;
    match std::fs::metadata(&spec.cwd) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(ApiError::bad_request(format!("working directory {} is not a directory", spec.cwd)));
        }
        Err(_) => {
            return Err(ApiError::bad_request(format!("working directory {} does not exist", spec.cwd)));
        }
    }
    {
        let st = ctl.lock();
        if !st.accepting {
            return Err(ApiError::unavailable("the daemon is shutting down; submit again after `ravel daemon start`"));
        }
        let have = st.inventory.len() as u32;
        if spec.gpus > have {
            return Err(ApiError::bad_request(format!(
                "this node has {have} GPU{}; the job asks for {} (see `ravel gpus`)",
                if have == 1 { "" } else { "s" },
                spec.gpus
            )));
        }
        if spec.cpus > st.cpus_total {
            return Err(ApiError::bad_request(format!(
                "this node has {} CPU slots; the job asks for {} (start the daemon with --cpus to change the slots)",
                st.cpus_total, spec.cpus
            )));
        }
    }
    let job = ctl.store.submit(spec, now_ms()).await?;
    ctl.lock().enqueue(queued_job(&job));
    ctl.wake.notify_one();
    Ok(axum::Json(SubmitResponse { id: job.id }))
}

pub async fn list(
    State(ctl): State<Arc<Controller>>,
    Query(q): Query<QueueQuery>,
) -> Result<axum::Json<QueueResponse>, ApiError> {
    let filter = JobFilter { all: q.all, recent_finished: q.recent.unwrap_or(DEFAULT_RECENT) };
    let jobs = ctl.store.list(filter).await?;
    let jobs = jobs.into_iter().map(|job| view(&ctl, job)).collect();
    Ok(axum::Json(QueueResponse { jobs }))
}

pub async fn show(State(ctl): State<Arc<Controller>>, Path(id): Path<JobId>) -> Result<axum::Json<JobView>, ApiError> {
    let job = ctl.store.job(id).await?.ok_or(ravel_store::StoreError::NotFound(id))?;
    let attempts = ctl.store.attempts(id).await?;
    let mut v = view(&ctl, job);
    v.run_dir = attempts.last().map(|a| a.run_dir.clone());
    v.attempts = attempts;
    Ok(axum::Json(v))
}

fn view(ctl: &Controller, job: Job) -> JobView {
    let pending_reason = if job.state == ravel_core::JobState::Queued {
        let st = ctl.lock();
        Some(match st.reasons.get(&job.id) {
            Some(PendingReason::NotYetScheduled) | None if st.exhausted => {
                "Resources: waiting for CPU slots".to_string()
            }
            Some(r) => r.to_string(),
            None => PendingReason::NotYetScheduled.to_string(),
        })
    } else {
        None
    };
    JobView { job, pending_reason, run_dir: None, attempts: vec![] }
}

pub async fn cancel(
    State(ctl): State<Arc<Controller>>,
    Json(req): Json<CancelRequest>,
) -> Result<axum::Json<CancelResponse>, ApiError> {
    if req.ids.is_empty() {
        return Err(ApiError::bad_request("no job ids given"));
    }
    let mut results = Vec::with_capacity(req.ids.len());
    for id in req.ids {
        results.push(match cancel_one(&ctl, id).await {
            Ok(r) => r,
            Err(ravel_store::StoreError::NotFound(_)) => {
                CancelResult { id, outcome: CancelOutcome::NotFound, state: None }
            }
            Err(e) => return Err(e.into()),
        });
    }
    Ok(axum::Json(CancelResponse { results }))
}

pub async fn cancel_one(ctl: &Arc<Controller>, id: JobId) -> Result<CancelResult, ravel_store::StoreError> {
    let effect = ctl.store.request_cancel(id, now_ms()).await?;
    Ok(match effect {
        CancelEffect::Canceled(job) => {
            ctl.lock().dequeue(id);
            ctl.finished.send_modify(|c| *c += 1);
            ctl.wake.notify_one();
            CancelResult { id, outcome: CancelOutcome::Canceled, state: Some(job.state) }
        }
        CancelEffect::MustStop(job, _attempt) => {
            let supervisor = {
                let mut st = ctl.lock();
                st.active.get_mut(&id).and_then(|a| {
                    a.cancel_requested = true;
                    a.supervisor
                })
            };
            // Without a supervisor yet, the launch path sees `cancel_requested` and stops it.
            if let Some((pid, start)) = supervisor {
                ctl.agent.stop(pid, start);
            }
            CancelResult { id, outcome: CancelOutcome::Terminating, state: Some(job.state) }
        }
        CancelEffect::AlreadyFinished(job) => {
            CancelResult { id, outcome: CancelOutcome::AlreadyFinished, state: Some(job.state) }
        }
    })
}

/// Long-polls until the jobs asked for are all finished, or the timeout passes.
pub async fn wait(
    State(ctl): State<Arc<Controller>>,
    Query(q): Query<WaitQuery>,
) -> Result<axum::Json<WaitResponse>, ApiError> {
    let ids: Vec<JobId> = q
        .ids
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().map_err(|_| ApiError::bad_request(format!("bad job id {s:?}"))))
        .collect::<Result<_, _>>()?;
    if ids.is_empty() && !q.all {
        return Err(ApiError::bad_request("give job ids or all=true"));
    }
    for &id in &ids {
        if ctl.store.job(id).await?.is_none() {
            return Err(ravel_store::StoreError::NotFound(id).into());
        }
    }
    let timeout = q.timeout_ms.map(Duration::from_millis).unwrap_or(MAX_WAIT).min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut rx = ctl.finished.subscribe();
    let mut stopping = ctl.shutdown.subscribe();
    let done = loop {
        rx.borrow_and_update();
        let done = {
            let st = ctl.lock();
            if ids.is_empty() { st.is_idle() } else { ids.iter().all(|id| !st.is_live(*id)) }
        };
        if done {
            break true;
        }
        if *stopping.borrow_and_update() {
            break false;
        }
        tokio::select! {
            changed = tokio::time::timeout_at(deadline, rx.changed()) => match changed {
                Ok(Ok(())) => continue,
                _ => break false,
            },
            _ = stopping.changed() => break false,
        }
    };
    let mut jobs = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(j) = ctl.store.job(id).await? {
            jobs.push(JobBrief { id, state: j.state, exit_code: j.exit_code, signal: j.signal });
        }
    }
    Ok(axum::Json(WaitResponse { done, jobs }))
}
