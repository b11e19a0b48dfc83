//! Jobs: submit, list, show, cancel, wait, hold, release, retry, priority.

use super::{ApiError, Json, Path, Query};
use crate::auth::{Caller, owned_job};
use crate::{Controller, admission, now_ms};
use axum::extract::State;
use ravel_core::policy::{DepState, PendingReason};
use ravel_core::{Job, JobId, JobState};
use ravel_proto::{
    CancelOutcome, CancelRequest, CancelResponse, CancelResult, JobBrief, JobView, MAX_ARRAY_SIZE, PriorityRequest,
    QueueQuery, QueueResponse, SubmitRequest, SubmitResponse, WaitQuery, WaitResponse,
};
use ravel_store::{CancelEffect, JobFilter};
use std::sync::Arc;
use std::time::Duration;

/// Finished jobs `ravel queue` shows without `--all`.
const DEFAULT_RECENT: u32 = 10;
/// Longest a `wait` request is held open.
const MAX_WAIT: Duration = Duration::from_secs(30);

#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body = ravel_proto::SubmitRequest, responses((status = 200, description = "Accepted", body = ravel_proto::SubmitResponse), (status = 400, description = "Bad request", body = ravel_proto::ErrorBody), (status = 403, description = "Not the job's owner nor an admin", body = ravel_proto::ErrorBody), (status = 404, description = "No such job", body = ravel_proto::ErrorBody), (status = 429, description = "Past the user's queued-jobs limit", body = ravel_proto::ErrorBody), (status = 503, description = "Shutting down", body = ravel_proto::ErrorBody)))]
pub async fn submit(
    State(ctl): State<Arc<Controller>>,
    caller: Caller,
    Json(req): Json<SubmitRequest>,
) -> Result<axum::Json<SubmitResponse>, ApiError> {
    let mut spec = req.spec;
    identify(&ctl, &caller, &mut spec)?;
    if let Some(tag) = &spec.memory_tag {
        let limits = &ctl.cfg.memory_limits;
        let Some((_, mib)) = limits.iter().find(|(t, _)| t == tag) else {
            let known = limits.iter().map(|(t, m)| format!("{t}={m}M")).collect::<Vec<_>>().join(", ");
            return Err(ApiError::bad_request(if known.is_empty() {
                format!(
                    "unknown memory tag {tag:?}: no tags are set (start the daemon with RAVEL_MEMORY_LIMITS=small=8G,...)"
                )
            } else {
                format!("unknown memory tag {tag:?}; known tags: {known}")
            }));
        };
        if spec.gpu_mem_mib.is_some_and(|m| m != *mib) {
            return Err(ApiError::bad_request("give --gpu-mem or --memory-tag, not both"));
        }
        spec.gpu_mem_mib = Some(*mib);
        if spec.gpus == 0 {
            spec.gpus = 1;
        }
    }
    spec.validate().map_err(|e| ApiError::bad_request(e.0))?;
    let missing = || ApiError::bad_request(format!("working directory {} does not exist", spec.cwd));
    // On a shared box, as the user first: the daemon (root) must not tell them whether a path
    // beyond a directory they cannot search exists.
    if ctl.cfg.system {
        let groups = crate::auth::groups_of(&caller.name, caller.gid);
        crate::auth::can_enter(&spec.cwd, caller.uid, &groups).map_err(|e| match e {
            crate::auth::NoEntry::Missing => missing(),
            crate::auth::NoEntry::Denied(e) => {
                ApiError::forbidden(format!("working directory {}: {} cannot enter {e}", spec.cwd, caller.name))
            }
        })?;
    }
    // A controller's jobs run on its nodes: the node checks the directory there.
    match std::fs::metadata(&spec.cwd) {
        _ if ctl.cfg.cluster.is_some() => {}
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(ApiError::bad_request(format!("working directory {} is not a directory", spec.cwd))),
        Err(_) => return Err(missing()),
    }
    // A controller's jobs are contained by their nodes, which refuse --mem if they cannot.
    if spec.mem_mib.is_some()
        && ctl.cfg.cluster.is_none()
        && let ravel_exec::cgroup::CgroupSupport::Unavailable(why) = &ctl.cfg.cgroups
    {
        return Err(ApiError::bad_request(format!(
            "--mem needs a cgroup to enforce it, and this daemon has none ({why}); run without --mem"
        )));
    }
    check_resources(&ctl, &spec)?;
    let mut blocked = false;
    for d in spec.after.iter().chain(&spec.after_any) {
        match admission::dep_state(&ctl, *d).await? {
            DepState::Missing => {
                return Err(ApiError::bad_request(format!("no job {d} to depend on (see `ravel queue --all`)")));
            }
            DepState::Pending => blocked = true,
            DepState::Ended(_) => {}
        }
    }
    let specs = match &req.array {
        None => vec![spec],
        Some(a) => {
            if a.indices.is_empty() || a.indices.len() > MAX_ARRAY_SIZE {
                return Err(ApiError::bad_request(format!(
                    "an array needs 1 to {MAX_ARRAY_SIZE} indices, not {}",
                    a.indices.len()
                )));
            }
            if a.limit == Some(0) {
                return Err(ApiError::bad_request("an array's running limit (%N) must be at least 1"));
            }
            a.indices
                .iter()
                .map(|i| {
                    let mut s = spec.clone();
                    s.array_index = Some(*i);
                    s.array_limit = a.limit;
                    s
                })
                .collect()
        }
    };
    if !ctl.lock().accepting {
        return Err(ApiError::unavailable("the daemon is shutting down; submit again after `ravel daemon start`"));
    }
    ctl.check_queued_limit(&caller.name, specs.len())?;
    let initial = if blocked { JobState::Blocked } else { JobState::Queued };
    let t = std::time::Instant::now();
    // One job that can start at once is placed in its submit's own write.
    if let [spec] = specs.as_slice()
        && req.array.is_none()
        && !blocked
        && let Some(submitted) = admission::submit_now(&ctl, spec).await
    {
        let job = submitted?;
        ctl.metrics.store_write.observe(t.elapsed());
        ctl.metrics.submitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Ok(axum::Json(SubmitResponse { id: job.id, ids: vec![job.id] }));
    }
    let jobs = ctl.store.submit(specs, initial, req.array.is_some(), now_ms()).await?;
    ctl.metrics.store_write.observe(t.elapsed());
    ctl.metrics.submitted.fetch_add(jobs.len() as u64, std::sync::atomic::Ordering::Relaxed);
    // Admission places each job at once when it can, and wakes the scheduler when it cannot.
    for job in &jobs {
        admission::admit(&ctl, job).await;
    }
    let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    Ok(axum::Json(SubmitResponse { id: ids[0], ids }))
}

/// Makes the job the caller's: user, uid and gid come from the socket's peer credentials. A body
/// that claims someone else is refused, as is root on a shared box (unless allowed).
fn identify(ctl: &Controller, caller: &Caller, spec: &mut ravel_core::JobSpec) -> Result<(), ApiError> {
    if caller.role.is_some() {
        // Known by token: the job is theirs by name; there is no local uid to run it as.
        if let Some(claimed) = spec.user.as_deref().filter(|u| *u != caller.name) {
            return Err(ApiError::forbidden(format!(
                "you are {}: a job cannot be submitted as another user ({claimed})",
                caller.name
            )));
        }
        if spec.uid.is_some() || spec.gid.is_some() {
            return Err(ApiError::bad_request("uid and gid are not given by clients of a controller"));
        }
        spec.user = Some(caller.name.clone());
        return Ok(());
    }
    if let Some(claimed) = spec.user.as_deref().filter(|u| *u != caller.name) {
        return Err(ApiError::forbidden(format!(
            "you are {}: a job cannot be submitted as another user ({claimed})",
            caller.name
        )));
    }
    if spec.uid.is_some_and(|u| u != caller.uid) || spec.gid.is_some_and(|g| g != caller.gid) {
        return Err(ApiError::forbidden(format!(
            "you are {} (uid {}, gid {}): a job cannot claim another uid or gid",
            caller.name, caller.uid, caller.gid
        )));
    }
    if ctl.cfg.system && caller.uid == 0 && !ctl.cfg.allow_root_jobs {
        return Err(ApiError::forbidden(
            "jobs as root are refused on this shared daemon: submit as your own user \
             (or start the daemon with --allow-root-jobs)",
        ));
    }
    spec.user = Some(caller.name.clone());
    spec.uid = Some(caller.uid);
    spec.gid = Some(caller.gid);
    Ok(())
}

/// Refuses what no node can ever run (a controller that knows no node yet takes the job: it
/// waits for one).
fn check_resources(ctl: &Controller, spec: &ravel_core::JobSpec) -> Result<(), ApiError> {
    let st = ctl.lock();
    if ctl.cfg.cluster.is_none() {
        let here = &ctl.cfg.node_name;
        if spec.nodes > 1 || !spec.tags.is_empty() || spec.node.as_ref().is_some_and(|n| n != here) {
            return Err(ApiError::bad_request(format!(
                "--nodes, --tags and --node choose among a controller's nodes; this daemon is the single node {here} \
                 (see docs/cluster.md)"
            )));
        }
    }
    if st.nodes.is_empty() {
        return Ok(());
    }
    let (here, see) =
        if ctl.cfg.cluster.is_some() { ("the largest node", "ravel nodes") } else { ("this node", "ravel gpus") };
    let have = st.nodes.iter().map(|n| n.inventory.len() as u32).max().unwrap_or(0);
    if spec.gpus > have {
        return Err(ApiError::bad_request(format!(
            "{here} has {have} GPU{}; the job asks for {} (see `{see}`)",
            if have == 1 { "" } else { "s" },
            spec.gpus
        )));
    }
    if let Some(mib) = spec.gpu_mem_mib {
        let biggest = st.nodes.iter().flat_map(|n| &n.inventory).map(|g| g.memory_total_mib).max().unwrap_or(0);
        if mib > biggest {
            return Err(ApiError::bad_request(format!(
                "--gpu-mem {mib} MiB is more than any GPU here has ({biggest} MiB)"
            )));
        }
    }
    let cpus_total = st.nodes.iter().map(|n| n.cpus_total).max().unwrap_or(0);
    if spec.cpus > cpus_total {
        return Err(ApiError::bad_request(format!(
            "{here} has {cpus_total} CPU slots; the job asks for {} (start the daemon with --cpus to change the slots)",
            spec.cpus
        )));
    }
    Ok(())
}

#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", operation_id = "list_jobs", params(ravel_proto::QueueQuery), responses((status = 200, description = "Active jobs and recent finishes", body = ravel_proto::QueueResponse)))]
pub async fn list(
    State(ctl): State<Arc<Controller>>,
    caller: Caller,
    Query(q): Query<QueueQuery>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    if q.all {
        let ndjson = match q.format.as_deref() {
            None | Some("json") => false,
            Some("ndjson") => true,
            Some(other) => return Err(ApiError::bad_request(format!("format {other:?}: use json or ndjson"))),
        };
        return Ok(whole_history(ctl, caller, ndjson));
    }
    let filter = JobFilter { recent_finished: q.recent.unwrap_or(DEFAULT_RECENT), waiting_limit: q.limit };
    let mut jobs = ctl.store.list(filter).await?;
    jobs.retain(|j| ctl.may_see(&caller, j));
    let waiting_listed = jobs.iter().filter(|j| matches!(j.state, JobState::Queued | JobState::Blocked)).count() as u64;
    let waiting = {
        let st = ctl.lock();
        (st.queue.len() + st.parked.len()) as u64
    };
    let jobs: Vec<JobView> = jobs.into_iter().map(|job| listed(&ctl, job)).collect();
    let more_waiting = waiting.saturating_sub(waiting_listed);
    Ok(axum::Json(QueueResponse { jobs, more_waiting }).into_response())
}

/// A job as listings show it: without its environment, which is most of a job's size.
fn listed(ctl: &Controller, mut job: Job) -> JobView {
    job.spec.env = Vec::new();
    view(ctl, job)
}

/// Jobs read from the store per batch of a whole-history listing.
const HISTORY_BATCH: u32 = 1000;

/// Every job the caller may see, in id order, streamed as it is read from the store a batch at
/// a time: the daemon never holds the whole history, and the client sees the first jobs at once.
/// As JSON it is a `QueueResponse`; as NDJSON, one `JobView` per line.
fn whole_history(ctl: Arc<Controller>, caller: Caller, ndjson: bool) -> axum::response::Response {
    use axum::response::IntoResponse;
    struct Cursor {
        ctl: Arc<Controller>,
        caller: Caller,
        after: JobId,
        opened: bool,
        /// A job was written (the next one needs a separator).
        any: bool,
        done: bool,
    }
    // NDJSON ends each line (below) rather than separating them.
    let (open, sep, close): (&[u8], &[u8], &[u8]) =
        if ndjson { (b"", b"", b"") } else { (b"{\"jobs\":[", b",", b"],\"more_waiting\":0}") };
    let start = Cursor { ctl, caller, after: 0, opened: false, any: false, done: false };
    let body = futures_util::stream::unfold(start, move |mut c| async move {
        if c.done {
            return None;
        }
        let mut chunk = Vec::new();
        if !c.opened {
            chunk.extend_from_slice(open);
            c.opened = true;
        }
        let batch = match c.ctl.store.jobs_after(c.after, HISTORY_BATCH).await {
            Ok(b) => b,
            // Cut short: the client sees a truncated body, not a complete-looking one.
            Err(e) => return Some((Err(std::io::Error::other(e.to_string())), Cursor { done: true, ..c })),
        };
        match batch.last() {
            Some(last) => c.after = last.id,
            None => {
                chunk.extend_from_slice(close);
                c.done = true;
            }
        }
        for job in batch.into_iter().filter(|j| c.ctl.may_see(&c.caller, j)) {
            if c.any {
                chunk.extend_from_slice(sep);
            }
            c.any = true;
            if serde_json::to_writer(&mut chunk, &listed(&c.ctl, job)).is_err() {
                return None;
            }
            if ndjson {
                chunk.push(b'\n');
            }
        }
        Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(chunk)), c))
    });
    let content_type = if ndjson { "application/x-ndjson" } else { "application/json" };
    let mut resp = axum::body::Body::from_stream(body).into_response();
    resp.headers_mut().insert("content-type", axum::http::HeaderValue::from_static(content_type));
    resp
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = i64, Path, description = "Job id")), responses((status = 200, description = "The job, its attempts and events", body = ravel_proto::JobView), (status = 400, description = "Bad request", body = ravel_proto::ErrorBody), (status = 403, description = "Not the job's owner nor an admin", body = ravel_proto::ErrorBody), (status = 404, description = "No such job", body = ravel_proto::ErrorBody)))]
pub async fn show(
    State(ctl): State<Arc<Controller>>,
    caller: Caller,
    Path(id): Path<JobId>,
) -> Result<axum::Json<JobView>, ApiError> {
    let mut job = ctl.store.job(id).await?.ok_or(ravel_store::StoreError::NotFound(id))?;
    if !ctl.may_see(&caller, &job) {
        return Err(ApiError::forbidden(format!(
            "job {id} is another user's (this daemon shows users their own jobs)"
        )));
    }
    if !caller.admin && !ctl.owns(&caller, &job) {
        // Another user's environment may hold their secrets.
        job.spec.env = Vec::new();
    }
    let attempts = ctl.store.attempts(id).await?;
    let events = ctl.store.events(id).await?;
    let mut v = view(&ctl, job);
    v.run_dir = attempts.last().map(|a| a.run_dir.clone());
    v.attempts = attempts;
    v.events = events
        .into_iter()
        .map(|e| ravel_proto::JobEventView { id: e.id, attempt: e.attempt, at: e.at, kind: e.kind, message: e.message })
        .collect();
    Ok(axum::Json(v))
}

pub(super) fn view(ctl: &Controller, job: Job) -> JobView {
    let st = ctl.lock();
    let (pending_reason, position) = match st.pending(job.id) {
        Some((r, pos)) => (Some(st.describe(&r, &ctl.cfg.thresholds)), pos),
        None if matches!(job.state, JobState::Queued | JobState::Blocked) => {
            (Some(PendingReason::NotYetScheduled.to_string()), None)
        }
        None => (None, None),
    };
    let estimated_start = st.estimates.get(&job.id).copied();
    drop(st);
    JobView { job, pending_reason, position, estimated_start, run_dir: None, attempts: vec![], events: vec![] }
}

#[utoipa::path(post, path = "/v1/jobs/cancel", tag = "jobs", request_body = ravel_proto::CancelRequest, responses((status = 200, description = "One result per id", body = ravel_proto::CancelResponse), (status = 400, description = "No ids", body = ravel_proto::ErrorBody)))]
pub async fn cancel(
    State(ctl): State<Arc<Controller>>,
    caller: Caller,
    Json(req): Json<CancelRequest>,
) -> Result<axum::Json<CancelResponse>, ApiError> {
    if req.ids.is_empty() {
        return Err(ApiError::bad_request("no job ids given"));
    }
    let mut results = Vec::with_capacity(req.ids.len());
    for id in req.ids {
        if let Some(job) = ctl.store.job(id).await?
            && let Err(e) = ctl.check_owner(&caller, &job, "cancel")
        {
            let message = Some(e.message().to_string());
            results.push(CancelResult { id, outcome: CancelOutcome::Denied, state: Some(job.state), message });
            continue;
        }
        results.push(match cancel_one(&ctl, id).await {
            Ok(r) => r,
            Err(ravel_store::StoreError::NotFound(_)) => {
                CancelResult { id, outcome: CancelOutcome::NotFound, state: None, message: None }
            }
            Err(e) => return Err(e.into()),
        });
    }
    Ok(axum::Json(CancelResponse { results }))
}

pub async fn cancel_one(ctl: &Arc<Controller>, id: JobId) -> Result<CancelResult, ravel_store::StoreError> {
    let effect = ctl.store.request_cancel(id, "canceled by user".into(), now_ms()).await?;
    Ok(match effect {
        CancelEffect::Canceled(job) => {
            ctl.job_final(&job);
            ctl.lock().forget_waiting(id);
            ctl.finished.send_modify(|c| *c += 1);
            ctl.wake.notify_one();
            admission::job_ended(ctl.clone(), id).await;
            CancelResult { id, outcome: CancelOutcome::Canceled, state: Some(job.state), message: None }
        }
        CancelEffect::MustStop(job, _attempt) => {
            let supervisor = {
                let mut st = ctl.lock();
                st.active.get_mut(&id).and_then(|a| {
                    a.cancel_requested = true;
                    a.supervisor.map(|s| (s, a.attempt))
                })
            };
            // Without a supervisor yet, the launch path sees `cancel_requested` and stops it;
            // an agent's node is told with its next sync.
            ctl.stop_attempt(id, supervisor);
            CancelResult { id, outcome: CancelOutcome::Terminating, state: Some(job.state), message: None }
        }
        CancelEffect::AlreadyFinished(job) => {
            CancelResult { id, outcome: CancelOutcome::AlreadyFinished, state: Some(job.state), message: None }
        }
    })
}

#[utoipa::path(get, path = "/v1/wait", tag = "jobs", params(ravel_proto::WaitQuery), responses((status = 200, description = "Whether they all ended, and their states", body = ravel_proto::WaitResponse), (status = 404, description = "No such job", body = ravel_proto::ErrorBody)))]
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

#[utoipa::path(post, path = "/v1/jobs/{id}/hold", tag = "jobs", params(("id" = i64, Path, description = "Job id")), responses((status = 200, description = "Held", body = ravel_proto::JobView), (status = 400, description = "Bad request", body = ravel_proto::ErrorBody), (status = 403, description = "Not the job's owner nor an admin", body = ravel_proto::ErrorBody), (status = 404, description = "No such job", body = ravel_proto::ErrorBody), (status = 409, description = "Not waiting", body = ravel_proto::ErrorBody)))]
/// `POST /v1/jobs/{id}/hold`: a queued or blocked job waits until released.
pub async fn hold(
    State(ctl): State<Arc<Controller>>,
    caller: Caller,
    Path(id): Path<JobId>,
) -> Result<axum::Json<JobView>, ApiError> {
    owned_job(&ctl, &caller, id, "hold").await?;
    let job = ctl.store.set_held(id, true).await.map_err(not_waiting("hold"))?;
    ctl.lock().forget_waiting(id);
    admission::admit(&ctl, &job).await;
    Ok(axum::Json(view(&ctl, job)))
}

#[utoipa::path(post, path = "/v1/jobs/{id}/release", tag = "jobs", params(("id" = i64, Path, description = "Job id")), responses((status = 200, description = "Released", body = ravel_proto::JobView), (status = 400, description = "Bad request", body = ravel_proto::ErrorBody), (status = 403, description = "Not the job's owner nor an admin", body = ravel_proto::ErrorBody), (status = 404, description = "No such job", body = ravel_proto::ErrorBody), (status = 409, description = "Not waiting", body = ravel_proto::ErrorBody)))]
/// `POST /v1/jobs/{id}/release`.
pub async fn release(
    State(ctl): State<Arc<Controller>>,
    caller: Caller,
    Path(id): Path<JobId>,
) -> Result<axum::Json<JobView>, ApiError> {
    owned_job(&ctl, &caller, id, "release").await?;
    let job = ctl.store.set_held(id, false).await.map_err(not_waiting("release"))?;
    ctl.lock().forget_waiting(id);
    admission::admit(&ctl, &job).await;
    Ok(axum::Json(view(&ctl, job)))
}

#[utoipa::path(post, path = "/v1/jobs/{id}/priority", tag = "jobs", params(("id" = i64, Path, description = "Job id")), request_body = ravel_proto::PriorityRequest, responses((status = 200, description = "Changed", body = ravel_proto::JobView), (status = 400, description = "Bad request", body = ravel_proto::ErrorBody), (status = 403, description = "Not the job's owner nor an admin", body = ravel_proto::ErrorBody), (status = 404, description = "No such job", body = ravel_proto::ErrorBody), (status = 409, description = "Not waiting", body = ravel_proto::ErrorBody)))]
/// `POST /v1/jobs/{id}/priority`.
pub async fn priority(
    State(ctl): State<Arc<Controller>>,
    caller: Caller,
    Path(id): Path<JobId>,
    Json(req): Json<PriorityRequest>,
) -> Result<axum::Json<JobView>, ApiError> {
    let before = owned_job(&ctl, &caller, id, "change the priority of").await?;
    if req.priority > before.spec.priority && !caller.admin && ctl.cfg.system {
        return Err(ApiError::forbidden(format!(
            "only an admin may raise a job's priority on a shared daemon (job {id} has {}; you may lower it)",
            before.spec.priority
        )));
    }
    let job = ctl.store.set_priority(id, req.priority).await.map_err(not_waiting("change the priority of"))?;
    ctl.lock().forget_waiting(id);
    admission::admit(&ctl, &job).await;
    Ok(axum::Json(view(&ctl, job)))
}

#[utoipa::path(post, path = "/v1/jobs/{id}/retry", tag = "jobs", params(("id" = i64, Path, description = "Job id")), responses((status = 200, description = "Queued again", body = ravel_proto::JobView), (status = 400, description = "Bad request", body = ravel_proto::ErrorBody), (status = 403, description = "Not the job's owner nor an admin", body = ravel_proto::ErrorBody), (status = 404, description = "No such job", body = ravel_proto::ErrorBody), (status = 409, description = "Not finished", body = ravel_proto::ErrorBody)))]
/// `POST /v1/jobs/{id}/retry`: a finished job runs again as a new attempt.
pub async fn retry(
    State(ctl): State<Arc<Controller>>,
    caller: Caller,
    Path(id): Path<JobId>,
) -> Result<axum::Json<JobView>, ApiError> {
    owned_job(&ctl, &caller, id, "retry").await?;
    let job = ctl.store.retry(id, now_ms()).await.map_err(|e| match e {
        ravel_store::StoreError::Conflict { found, .. } => {
            ApiError::conflict(format!("job {id} is {found}; only a finished job can be retried"))
        }
        e => e.into(),
    })?;
    admission::admit(&ctl, &job).await;
    Ok(axum::Json(view(&ctl, job)))
}

/// Maps "not in a waiting state" to a clear conflict error.
fn not_waiting(what: &'static str) -> impl Fn(ravel_store::StoreError) -> ApiError {
    move |e| match e {
        ravel_store::StoreError::Conflict { id, found, .. } => {
            ApiError::conflict(format!("cannot {what} job {id}: it is {found}; only queued or blocked jobs can be"))
        }
        e => e.into(),
    }
}
