//! Where a waiting job goes: the eligible queue, or parked until a release, a time, or its
//! dependencies. The decision is `ravel_core::policy::eligibility`; this module gathers what it
//! needs (dependency states) and applies it to the store and the in-memory state.

use crate::state::{Active, Parked, queued_job};
use crate::{Controller, now_ms, scheduler};
use ravel_core::policy::{DepState, Eligibility, PendingReason, eligibility};
use ravel_core::{Job, JobId, JobSpec, JobState};
use ravel_exec::Standby;
use ravel_store::{CancelEffect, NewAttempt, StoreError};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Puts a queued or blocked job where it belongs (at submit, at start-up, after a release or a retry).
pub async fn admit(ctl: &Arc<Controller>, job: &Job) {
    // A hold or priority change can race with a placement: once placed, the job is not waiting.
    if ctl.lock().active.contains_key(&job.id) {
        return;
    }
    let user = ctl.user_id(job.spec.user.as_deref());
    let spec = &job.spec;
    if has_placement_rule(spec) {
        let rule = ravel_core::policy::JobRule { node: spec.node.clone(), tags: spec.tags.clone(), nodes: spec.nodes };
        ctl.lock().job_rules.insert(job.id, rule);
    }
    let parked = Parked {
        job: queued_job(job, user),
        after: job.spec.after.clone(),
        after_any: job.spec.after_any.clone(),
        held: job.held,
        not_before: job.not_before,
        reason: PendingReason::NotYetScheduled,
    };
    evaluate(ctl.clone(), parked, job.state == JobState::Blocked).await;
}

/// Submits a job that may start the moment it arrives, placing it in the submit's own write when
/// the last pass's leftover and a ready standby supervisor allow it (one commit instead of two,
/// and no hop through a spawned task before the hand-over). `None` when it is not such a job or
/// the store cannot write in place now: the caller submits and admits as usual.
///
/// Eligible: no dependencies, hold, begin time, node rule or gang, a local agent. The placement
/// is exactly `place_fast`'s, taken under the controller's lock with the job's id known, so no
/// pass sees the resources free in between.
pub async fn submit_now(ctl: &Arc<Controller>, spec: &JobSpec) -> Option<Result<Job, StoreError>> {
    let agent = ctl.agent.as_ref()?;
    if ctl.cfg.cluster.is_some()
        || spec.hold
        || spec.begin_at.is_some()
        || !spec.after.is_empty()
        || !spec.after_any.is_empty()
        || has_placement_rule(spec)
    {
        return None;
    }
    let user = ctl.user_id(spec.user.as_deref());
    let now = now_ms();
    let mut taken: Option<(JobId, Standby, tokio::sync::watch::Sender<()>)> = None;
    let submitted = {
        let mut st = ctl.lock();
        if !st.accepting {
            return None;
        }
        let result = ctl.store.submit_placed_now(spec.clone(), now, &mut |job| {
            let q = queued_job(job, user);
            let standby = agent.take_ready()?;
            let Some(placement) = st.place_fast(&q).filter(|p| st.nodes[p.node].remote.is_none()) else {
                agent.put_back(Some(standby));
                return None;
            };
            let new = NewAttempt {
                node: st.nodes[placement.node].name.clone(),
                gpus: placement.gpus.clone(),
                cpus: placement.cpus,
                run_dir_template: ctl.cfg.run_dir_template(job.id).to_string_lossy().into_owned(),
                supervisor: Some((standby.launched().pid, standby.launched().start_time)),
                ranks: Vec::new(),
            };
            let mut active = Active::placed(&placement, &q, now);
            // Its end, if reported before the hand-over is recorded, waits for it.
            let (starting_tx, starting) = tokio::sync::watch::channel(());
            active.starting = Some(starting);
            st.hold(job.id, active);
            taken = Some((job.id, standby, starting_tx));
            Some(new)
        });
        // Nothing was recorded: what the placement took goes back.
        if let (Some(Err(_)), Some((id, _, _))) = (&result, &taken) {
            st.release(*id);
        }
        result?
    };
    match submitted {
        Ok(s) => match s.placed {
            Some((job, attempt)) => {
                let (_, standby, starting) = taken.expect("a placed job took a standby");
                tracing::debug!(job = job.id, "placed in its submit's write");
                let ctl = ctl.clone();
                tokio::spawn(async move {
                    scheduler::launch_placed(&ctl, job, attempt, Some(standby)).await;
                    drop(starting);
                });
                Some(Ok(s.queued))
            }
            None => {
                admit(ctl, &s.queued).await;
                Some(Ok(s.queued))
            }
        },
        Err(e) => {
            if let Some((_, standby, _)) = taken {
                agent.put_back(Some(standby));
            }
            Some(Err(e))
        }
    }
}

/// A node, tags or a gang: the job is placed by a full pass, under its rule (`job_rules`).
fn has_placement_rule(spec: &JobSpec) -> bool {
    spec.node.is_some() || !spec.tags.is_empty() || spec.nodes > 1
}

/// What is known of each dependency: live ones are pending; others are read from the store.
pub async fn dep_state(ctl: &Controller, dep: JobId) -> Result<DepState, StoreError> {
    if ctl.lock().is_live(dep) {
        return Ok(DepState::Pending);
    }
    Ok(match ctl.store.job(dep).await? {
        Some(j) if j.state.is_terminal() => DepState::Ended(j.state),
        Some(_) => DepState::Pending,
        None => DepState::Missing,
    })
}

type Boxed = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Decides and applies. Boxed: a failed dependency cancels this job, which re-evaluates its own
/// dependents in turn.
pub fn evaluate(ctl: Arc<Controller>, mut p: Parked, blocked_in_store: bool) -> Boxed {
    Box::pin(async move {
        let id = p.job.id;
        let mut states = Vec::with_capacity(p.after.len() + p.after_any.len());
        for d in p.after.iter().chain(&p.after_any) {
            match dep_state(&ctl, *d).await {
                Ok(s) => states.push((*d, s)),
                Err(e) => {
                    tracing::error!(job = id, dep = d, error = %e, "cannot read a dependency; the job stays parked");
                    p.reason = PendingReason::Dependency { job: *d };
                    ctl.lock().park(p);
                    return;
                }
            }
        }
        let lookup = |d: JobId| states.iter().find(|(j, _)| *j == d).map(|(_, s)| *s).unwrap_or(DepState::Missing);
        let spec = JobSpec { after: p.after.clone(), after_any: p.after_any.clone(), ..JobSpec::default() };
        let decision = eligibility(&spec, p.held, p.not_before, now_ms(), lookup);
        let deps_done = !matches!(decision, Eligibility::WaitingOn(_) | Eligibility::DependencyFailed { .. });
        // `blocked` in the store means "waits for dependencies"; once they are done it is queued
        // (possibly held or waiting for its begin time).
        if blocked_in_store
            && deps_done
            && let Err(e) = ctl.store.unblock(id).await
            && !matches!(e, StoreError::Conflict { .. })
        {
            tracing::error!(job = id, error = %e, "cannot unblock; the job stays parked");
            p.reason = PendingReason::NotYetScheduled;
            ctl.lock().park(p);
            return;
        }
        match decision {
            Eligibility::Ready => {
                let mut st = ctl.lock();
                st.unpark(id);
                // Fast path: what the last pass left over may take it at once, exactly when a
                // full pass would; otherwise it waits for the next pass.
                if st.accepting
                    && let Some(placement) = st.place_fast(&p.job)
                {
                    st.hold(id, Active::placed(&placement, &p.job, now_ms()));
                    drop(st);
                    tracing::debug!(job = id, "placed without a pass");
                    tokio::spawn(scheduler::start_attempt(ctl.clone(), placement, p.job));
                    return;
                }
                st.enqueue(p.job);
                drop(st);
                ctl.wake.notify_one();
            }
            Eligibility::WaitingOn(d) => {
                p.reason = PendingReason::Dependency { job: d };
                ctl.lock().park(p);
            }
            Eligibility::Held => {
                p.reason = PendingReason::Held;
                ctl.lock().park(p);
            }
            Eligibility::NotBefore(at) => {
                p.reason = PendingReason::BeginTime { at };
                ctl.lock().park(p);
                // The loop's sleep may need to end sooner now.
                ctl.wake.notify_one();
            }
            Eligibility::DependencyFailed { job, state } => {
                ctl.lock().unpark(id);
                let reason = match state {
                    Some(JobState::Failed) => format!("dependency {job} failed"),
                    Some(JobState::Canceled) => format!("dependency {job} was canceled"),
                    Some(JobState::Lost) => format!("dependency {job} was lost"),
                    Some(s) => format!("dependency {job} ended {s}"),
                    None => format!("dependency {job} does not exist"),
                };
                match ctl.store.request_cancel(id, reason, now_ms()).await {
                    Ok(CancelEffect::Canceled(job)) => {
                        ctl.job_final(&job);
                        ctl.finished.send_modify(|c| *c += 1);
                        job_ended(ctl.clone(), id).await;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(job = id, error = %e, "cannot cancel a job whose dependency failed"),
                }
            }
        }
    })
}

/// A job reached a terminal state: re-evaluate the jobs that waited for it.
pub fn job_ended(ctl: Arc<Controller>, id: JobId) -> Boxed {
    Box::pin(async move {
        let waiting: Vec<Parked> = {
            let mut st = ctl.lock();
            let ids = st.waiting_on.remove(&id).unwrap_or_default();
            ids.into_iter().filter_map(|d| st.unpark(d)).collect()
        };
        for p in waiting {
            evaluate(ctl.clone(), p, true).await;
        }
    })
}

/// Wakes parked jobs whose time has come.
pub async fn wake_due(ctl: &Arc<Controller>) {
    let now = now_ms();
    let due: Vec<Parked> = {
        let mut st = ctl.lock();
        let ids: Vec<JobId> = st.timers.range(..=(now, JobId::MAX)).map(|(_, id)| *id).collect();
        ids.into_iter().filter_map(|id| st.unpark(id)).collect()
    };
    for p in due {
        evaluate(ctl.clone(), p, false).await;
    }
}
