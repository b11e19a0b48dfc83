//! Start-up: take back what an earlier run of the controller left. Queued jobs return to the
//! queue; attempts with a live supervisor are watched again; attempts that ended while no one
//! watched are recorded from their exit files; placements never launched go back to the queue.

use crate::scheduler::queued_job;
use crate::state::Active;
use crate::{Controller, now_ms};
use ravel_agent::Adoption;
use ravel_core::JobState;
use std::path::PathBuf;
use std::sync::Arc;

pub async fn recover(ctl: &Arc<Controller>) -> Result<(), String> {
    let active = ctl.store.active().await.map_err(|e| format!("cannot read active jobs: {e}"))?;
    let (mut queued, mut adopted, mut requeued) = (0, 0, 0);
    for (job, attempt) in active {
        if job.state == JobState::Queued {
            ctl.lock().enqueue(queued_job(&job));
            queued += 1;
            continue;
        }
        if !job.state.is_active() {
            continue;
        }
        let Some(a) = attempt else {
            tracing::error!(job = job.id, attempt = job.attempt, "active job has no attempt record");
            continue;
        };
        let run_dir = PathBuf::from(&a.run_dir);
        let known = a.supervisor_pid.zip(a.supervisor_start);
        ctl.lock().hold(
            job.id,
            Active {
                attempt: a.n,
                gpus: a.gpus.clone(),
                cpus: a.cpus,
                run_dir: run_dir.clone(),
                supervisor: known,
                cancel_requested: job.cancel_requested,
            },
        );
        match ctl.agent.adopt(job.id, a.n, &run_dir, known) {
            Adoption::Watching { pid, start_time } => {
                adopted += 1;
                if let Some(act) = ctl.lock().active.get_mut(&job.id) {
                    act.supervisor = Some((pid, start_time));
                }
                if job.state != JobState::Running {
                    let _ = ctl.store.mark_running(job.id, a.n, pid, start_time, now_ms()).await;
                }
                if job.cancel_requested {
                    ctl.agent.stop(pid, start_time);
                }
            }
            Adoption::Ended => {}
            Adoption::NeverLaunched => {
                let reason = "the controller stopped before this attempt was launched".to_string();
                match ctl.store.requeue(job.id, a.n, reason, now_ms()).await {
                    Ok(job) => {
                        let mut st = ctl.lock();
                        st.release(job.id);
                        st.enqueue(queued_job(&job));
                        requeued += 1;
                    }
                    Err(e) => {
                        tracing::error!(job = job.id, error = %e, "cannot requeue an unlaunched attempt")
                    }
                }
            }
        }
    }
    tracing::info!(queued, adopted, requeued, "recovered state from the store");
    Ok(())
}
