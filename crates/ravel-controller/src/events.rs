//! Turns the agent's reports into recorded outcomes, frees resources and wakes the scheduler.

use crate::{Controller, now_ms, runjson};
use ravel_agent::AgentEvent;
use ravel_core::{JobId, JobState, Outcome};
use ravel_exec::ExitRecord;
use std::sync::Arc;
use tokio::sync::mpsc;

pub async fn run(ctl: Arc<Controller>, mut rx: mpsc::UnboundedReceiver<AgentEvent>) {
    while let Some(event) = rx.recv().await {
        match event {
            AgentEvent::Ended { job, attempt, exit } => {
                let ctl = ctl.clone();
                tokio::spawn(async move {
                    let requested = ctl.lock().active.get(&job).is_some_and(|a| a.cancel_requested);
                    let outcome = outcome(exit.as_ref(), requested);
                    record_end(&ctl, job, attempt, outcome).await;
                });
            }
        }
    }
}

/// What an exit record means for the job.
fn outcome(exit: Option<&ExitRecord>, cancel_requested: bool) -> Outcome {
    let Some(e) = exit else {
        return Outcome {
            state: JobState::Failed,
            exit_code: None,
            signal: None,
            reason: Some("its supervisor vanished without recording an exit status (killed with SIGKILL?)".into()),
            started_at: None,
        };
    };
    let canceled = e.canceled && cancel_requested;
    let mut o = Outcome::from_exit(e.exit_code, e.signal, canceled);
    if let Some(err) = &e.error {
        o.reason = Some(err.clone());
    } else if e.canceled && !cancel_requested {
        o.reason = Some("terminated: its supervisor got SIGTERM from outside ravel".into());
    }
    o.started_at = e.started_at_ms;
    o
}

/// Records the end of attempt `n`, then frees what it held and tells the scheduler and waiters.
pub async fn record_end(ctl: &Arc<Controller>, id: JobId, n: u32, outcome: Outcome) {
    match ctl.store.finish(id, n, outcome, now_ms()).await {
        Ok(job) => {
            let store = ctl.store.clone();
            let durable = ctl.cfg.durable;
            tokio::spawn(async move {
                if let Ok(attempts) = store.attempts(job.id).await
                    && let Some(a) = attempts.into_iter().find(|a| a.n == n)
                {
                    runjson::write(job, a, durable);
                }
            });
        }
        Err(e) => {
            tracing::warn!(job = id, attempt = n, error = %e, "cannot record the end of an attempt")
        }
    }
    {
        let mut st = ctl.lock();
        if st.active.get(&id).is_some_and(|a| a.attempt == n) {
            st.release(id);
        }
    }
    ctl.wake.notify_one();
    ctl.finished.send_modify(|c| *c += 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: Option<i32>, signal: Option<i32>, canceled: bool) -> ExitRecord {
        ExitRecord { exit_code: code, signal, canceled, error: None, started_at_ms: Some(5), finished_at_ms: 9 }
    }

    #[test]
    fn outcomes() {
        assert_eq!(outcome(Some(&exit(Some(0), None, false)), false).state, JobState::Succeeded);
        assert_eq!(outcome(Some(&exit(None, Some(15), true)), true).state, JobState::Canceled);
        let o = outcome(Some(&exit(None, Some(15), true)), false);
        assert_eq!(o.state, JobState::Failed);
        assert!(o.reason.unwrap().contains("outside ravel"));
        assert!(outcome(None, false).reason.unwrap().contains("vanished"));
    }
}
