//! Turns the agent's reports into recorded outcomes, frees resources and wakes the scheduler.

use crate::{Controller, admission, now_ms, runjson};
use ravel_agent::AgentEvent;
use ravel_core::{JobId, JobState, Outcome};
use ravel_exec::ExitRecord;
use std::sync::Arc;
use tokio::sync::mpsc;

pub async fn run(ctl: Arc<Controller>, mut rx: mpsc::UnboundedReceiver<AgentEvent>) {
    while let Some(event) = rx.recv().await {
        match event {
            AgentEvent::Ended { job, attempt, exit, spawned } => {
                let ctl = ctl.clone();
                tokio::spawn(async move {
                    // Its start is recorded first (a job may end before `start_attempt` is done).
                    let starting = ctl.lock().active.get(&job).and_then(|a| a.starting.clone());
                    if let Some(mut starting) = starting {
                        let _ = starting.changed().await;
                    }
                    let requested = ctl.lock().active.get(&job).is_some_and(|a| a.cancel_requested);
                    if exit.is_none() && !spawned && !requested {
                        never_started(&ctl, job, attempt).await;
                        return;
                    }
                    let outcome = outcome(exit.as_ref(), requested);
                    record_end(&ctl, job, attempt, outcome).await;
                });
            }
        }
    }
}

/// The attempt's supervisor ended before starting the job and without a status (its launcher
/// died handing it the spec): nothing ran, so the job goes back to the queue as a new attempt.
pub(crate) async fn never_started(ctl: &Arc<Controller>, id: JobId, n: u32) {
    let reason = "the attempt ended before its job was started".to_string();
    match ctl.store.requeue(id, n, reason, now_ms()).await {
        Ok(job) => {
            ctl.lock().release(id);
            admission::admit(ctl, &job).await;
            ctl.wake.notify_one();
        }
        Err(e) => {
            tracing::warn!(job = id, attempt = n, error = %e, "cannot requeue an attempt that never started");
            let outcome = outcome(None, false);
            record_end(ctl, id, n, outcome).await;
        }
    }
}

/// What an exit record means for the job.
pub(crate) fn outcome(exit: Option<&ExitRecord>, cancel_requested: bool) -> Outcome {
    let Some(e) = exit else {
        // Its process is gone and nothing says how it ended (supervisor killed, machine
        // rebooted while the daemon was down): lost, and retried if it has retries.
        return Outcome {
            state: JobState::Lost,
            exit_code: None,
            signal: None,
            reason: Some("its supervisor vanished without recording an exit status".into()),
            started_at: None,
        };
    };
    let canceled = e.canceled && cancel_requested;
    let mut o = Outcome::from_exit(e.exit_code, e.signal, canceled);
    if e.timed_out {
        o.state = JobState::Failed;
        o.reason = Some("timeout".into());
    } else if e.oom_killed && !canceled {
        o.state = JobState::Failed;
        o.reason = Some("out of memory".into());
    } else if let Some(err) = &e.error {
        o.reason = Some(err.clone());
    } else if e.canceled && !cancel_requested {
        o.reason = Some("terminated: its supervisor got SIGTERM from outside ravel".into());
    }
    o.started_at = e.started_at_ms;
    o
}

/// Records the end of attempt `n`, then frees what it held and tells the scheduler and waiters.
pub async fn record_end(ctl: &Arc<Controller>, id: JobId, n: u32, outcome: Outcome) {
    let now = now_ms();
    let mut ended = None;
    let t = std::time::Instant::now();
    let finished = ctl.store.finish(id, n, outcome, now, true).await;
    ctl.metrics.store_write.observe(t.elapsed());
    match finished {
        Ok((job, attempt)) => {
            if job.state.is_terminal() {
                ctl.job_final(&job);
            }
            // Fair share: charge the user for the GPU time this attempt held.
            let half_life = ctl.half_life_ms();
            let mut st = ctl.lock();
            let held = st.active.get(&id).filter(|a| a.attempt == n && !a.gpus.is_empty());
            if let Some((user, gpu_secs)) = held.map(|a| {
                (a.user, (a.gpus.len() * (1 + a.ranks.len())) as f64 * (now - a.started_at).max(0) as f64 / 1000.0)
            }) {
                st.users.charge(user, gpu_secs, now, half_life);
            }
            drop(st);
            ended = Some(job.clone());
            crate::scheduler::failpoint(ctl, "before_run_json");
            runjson::write(job, attempt, ctl.cfg.durable);
        }
        Err(e) => {
            tracing::warn!(job = id, attempt = n, error = %e, "cannot record the end of an attempt")
        }
    }
    // A credited release needs no pass: the job's CPUs went back to the leftover, and the
    // periodic pass refreshes reasons. Otherwise the scheduler must look again.
    let needs_pass = {
        let mut st = ctl.lock();
        if st.active.get(&id).is_some_and(|a| a.attempt == n) {
            st.release(id);
        }
        st.leftover.is_none()
    };
    tracing::debug!(job = id, needs_pass, "attempt ended");
    match ended {
        // Retried: it waits for its backoff like any parked job.
        Some(job) if job.state == JobState::Queued => admission::admit(ctl, &job).await,
        Some(job) if job.state.is_terminal() => admission::job_ended(ctl.clone(), job.id).await,
        _ => {}
    }
    if needs_pass {
        ctl.wake.notify_one();
    }
    ctl.finished.send_modify(|c| *c += 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: Option<i32>, signal: Option<i32>, canceled: bool) -> ExitRecord {
        ExitRecord {
            exit_code: code,
            signal,
            canceled,
            timed_out: false,
            error: None,
            started_at_ms: Some(5),
            finished_at_ms: 9,
            oom_killed: false,
            fenced: false,
        }
    }

    #[test]
    fn outcomes() {
        assert_eq!(outcome(Some(&exit(Some(0), None, false)), false).state, JobState::Succeeded);
        assert_eq!(outcome(Some(&exit(None, Some(15), true)), true).state, JobState::Canceled);
        let o = outcome(Some(&exit(None, Some(15), true)), false);
        assert_eq!(o.state, JobState::Failed);
        assert!(o.reason.unwrap().contains("outside ravel"));
        let lost = outcome(None, false);
        assert_eq!(lost.state, JobState::Lost);
        assert!(lost.reason.unwrap().contains("vanished"));
        let mut timed = exit(None, Some(15), false);
        timed.timed_out = true;
        assert_eq!(outcome(Some(&timed), false).reason.as_deref(), Some("timeout"));
        let mut oom = exit(None, Some(9), false);
        oom.oom_killed = true;
        let o = outcome(Some(&oom), false);
        assert_eq!((o.state, o.reason.as_deref()), (JobState::Failed, Some("out of memory")));
    }
}
