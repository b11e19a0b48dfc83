//! Start-up: take back what an earlier run of the controller left. Queued jobs return to the
//! queue; attempts with a live supervisor are watched again; attempts that ended while no one
//! watched are recorded from their exit files; placements never launched go back to the queue.

use crate::state::Active;
use crate::{Controller, admission, now_ms, runjson};
use ravel_agent::Adoption;
use ravel_core::JobState;
use std::path::PathBuf;
use std::sync::Arc;

pub async fn recover(ctl: &Arc<Controller>) -> Result<(), String> {
    let active = ctl.store.active().await.map_err(|e| format!("cannot read active jobs: {e}"))?;
    let (mut queued, mut adopted, mut requeued) = (0, 0, 0);
    rebuild_usage(ctl).await;
    let mut waiting = vec![];
    for (job, attempt) in active {
        if matches!(job.state, JobState::Queued | JobState::Blocked) {
            // Admitted after every active job is known, so dependencies read as live.
            waiting.push(job);
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
        let user = ctl.user_id(job.spec.user.as_deref());
        let started_at = a.started_at.unwrap_or(a.created_at);
        let (node, ranks) = {
            let mut st = ctl.lock();
            let mut index = |name: &str| match st.node_index(name) {
                Some(i) => i,
                None if ctl.cfg.cluster.is_some() => crate::cluster::add_remote_node(&mut st, name),
                // The local daemon's node was renamed: its attempts are still its own.
                None => 0,
            };
            let node = index(&a.node);
            let ranks: Vec<(usize, Vec<u32>)> = a.ranks.iter().map(|(n, g)| (index(n), g.clone())).collect();
            (node, ranks)
        };
        ctl.lock().hold(
            job.id,
            Active {
                node,
                attempt: a.n,
                gpus: a.gpus.clone(),
                gpu_mem_mib: job.spec.gpu_mem_mib,
                cpus: a.cpus,
                run_dir: run_dir.clone(),
                supervisor: known,
                cancel_requested: job.cancel_requested,
                user,
                ends_by: job.spec.timeout_ms.map(|t| started_at + t as i64),
                array: job.array_id,
                started_at,
                ranks,
                ranks_ended: Vec::new(),
                starting: None,
            },
        );
        // An agent's attempt is the agent's to report: it keeps running while the node syncs
        // within the node timeout, which starts now. One never seen running may never have
        // reached its node: its launch order is sent again (an agent that has it ignores it).
        let Some(agent) = ctl.agent.as_ref() else {
            if matches!(a.state, JobState::Allocated | JobState::Starting) {
                crate::cluster::placed(ctl, &job, &a);
            }
            adopted += 1;
            continue;
        };
        match agent.adopt(job.id, a.n, &run_dir, known) {
            Adoption::Watching { pid, start_time } => {
                adopted += 1;
                if let Some(act) = ctl.lock().active.get_mut(&job.id) {
                    act.supervisor = Some((pid, start_time));
                }
                if job.state != JobState::Running {
                    let _ = ctl.store.mark_running(job.id, a.n, pid, start_time, now_ms()).await;
                }
                if job.cancel_requested {
                    agent.stop(pid, start_time, job.id, a.n);
                }
            }
            Adoption::Ended => {}
            Adoption::NeverLaunched => {
                let reason = "the controller stopped before this attempt was launched".to_string();
                match ctl.store.requeue(job.id, a.n, reason, now_ms()).await {
                    Ok(job) => {
                        ctl.lock().release(job.id);
                        waiting.push(job);
                        requeued += 1;
                    }
                    Err(e) => {
                        tracing::error!(job = job.id, error = %e, "cannot requeue an unlaunched attempt")
                    }
                }
            }
        }
    }
    for job in &waiting {
        admission::admit(ctl, job).await;
    }
    tracing::info!(queued, adopted, requeued, "recovered state from the store");
    write_missing_run_json(ctl).await;
    Ok(())
}

/// run.json of the attempts that ended last, where it is missing: a daemon killed with SIGKILL
/// may have left them queued for its writer (see [`runjson`]), which never holds more than
/// [`runjson::BACKLOG`] of them.
async fn write_missing_run_json(ctl: &Arc<Controller>) {
    let ends = match ctl.store.last_ended(2 * runjson::BACKLOG as u32).await {
        Ok(ends) => ends,
        Err(e) => return tracing::warn!(error = %e, "cannot read the last ended attempts; not checking their run.json"),
    };
    let mut written = 0;
    for (id, n, run_dir) in ends {
        let dir = std::path::Path::new(&run_dir);
        if !dir.is_dir() || dir.join("run.json").exists() {
            continue;
        }
        let (Ok(Some(job)), Ok(attempts)) = (ctl.store.job(id).await, ctl.store.attempts(id).await) else { continue };
        if let Some(attempt) = attempts.into_iter().find(|a| a.n == n) {
            runjson::write(job, attempt, ctl.cfg.durable);
            written += 1;
        }
    }
    if written > 0 {
        tracing::info!(written, "wrote the run.json a stopped daemon left unwritten");
    }
}

/// Fair-share usage from the attempts that finished within a few half-lives.
async fn rebuild_usage(ctl: &Arc<Controller>) {
    let now = now_ms();
    let half_life = ctl.half_life_ms();
    let since = now - (half_life * 8.0) as i64;
    match ctl.store.usage_since(since).await {
        Ok(records) => {
            ctl.lock().users.decay(now, half_life);
            for r in records {
                let user = ctl.user_id(r.user.as_deref());
                let gpu_secs = r.gpus as f64 * (r.finished_at - r.started_at).max(0) as f64 / 1000.0;
                ctl.lock().users.charge(user, gpu_secs, r.finished_at, half_life);
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read recent usage; fair share starts from zero"),
    }
}
