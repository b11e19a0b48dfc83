//! Checking what jobs really do with GPUs, after they started: a job's process found on a GPU it
//! was not given (it ignored or overrode `CUDA_VISIBLE_DEVICES`), or a GPU a job holds at 0%
//! utilization for a long time. Each problem is flagged once per job: logged, kept as an event
//! of the job (`ravel show`), and shown on the GPU (`ravel gpus`) while the job runs.

use crate::state::State;
use crate::{Controller, now_ms};
use ravel_core::JobId;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq)]
pub struct Flag {
    /// `gpu_not_allocated` or `gpu_idle`.
    pub kind: &'static str,
    pub gpu: u32,
    pub message: String,
}

/// When each (job, GPU) was first seen idle, while it stays idle.
#[derive(Default)]
pub struct IdleSince(HashMap<(JobId, u32), Instant>);

/// Looks at the latest inventory and returns the flags raised now (each also added to
/// `st.flags`, so it is raised once). `session_of` gives the session of each GPU process, read
/// from /proc by the probe (a process is a job's when its session is the job's supervisor's).
pub fn check(st: &mut State, session_of: &HashMap<u32, i32>, idle_after: Option<Duration>) -> Vec<(JobId, u32, Flag)> {
    let State { nodes, active, idle_since, flags, .. } = st;
    // The local daemon's node (GPU checks need the processes' sessions, read here).
    let Some(inventory) = nodes.first().map(|n| &n.inventory) else { return vec![] };
    let job_of_session: HashMap<i32, JobId> =
        active.iter().filter_map(|(id, a)| a.supervisor.map(|(pid, _)| (pid, *id))).collect();
    let mut seen = vec![];
    for g in inventory.iter() {
        for p in &g.processes {
            let Some(job) = session_of.get(&p.pid).and_then(|s| job_of_session.get(s)) else { continue };
            let Some(a) = active.get(job) else { continue };
            if !a.gpus.contains(&g.index) {
                let given = if a.gpus.is_empty() {
                    "no GPU".to_string()
                } else {
                    format!("GPU {}", a.gpus.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(","))
                };
                let message = format!(
                    "job {job}'s process {} uses GPU {}, which it was not given (it has {given})",
                    p.pid, g.index
                );
                seen.push((*job, a.attempt, Flag { kind: "gpu_not_allocated", gpu: g.index, message }));
            }
        }
    }
    let now = Instant::now();
    let util: HashMap<u32, u32> = inventory.iter().map(|g| (g.index, g.utilization_pct)).collect();
    let mut still_idle = HashMap::new();
    if let Some(after) = idle_after {
        for (job, a) in active.iter().filter(|(_, a)| a.supervisor.is_some()) {
            for gpu in &a.gpus {
                if util.get(gpu) != Some(&0) {
                    continue;
                }
                let since = *idle_since.0.get(&(*job, *gpu)).unwrap_or(&now);
                still_idle.insert((*job, *gpu), since);
                if now.duration_since(since) >= after {
                    let message = format!(
                        "job {job} holds GPU {gpu} at 0% utilization for {} or more",
                        humantime::format_duration(Duration::from_secs(after.as_secs().max(1)))
                    );
                    seen.push((*job, a.attempt, Flag { kind: "gpu_idle", gpu: *gpu, message }));
                }
            }
        }
    }
    idle_since.0 = still_idle;
    let mut raised = vec![];
    for (job, attempt, flag) in seen {
        let list = flags.entry(job).or_default();
        if !list.iter().any(|f| f.kind == flag.kind && f.gpu == flag.gpu) {
            list.push(flag.clone());
            raised.push((job, attempt, flag));
        }
    }
    raised
}

/// Logs and records flags raised by a probe.
pub fn record(ctl: &Controller, raised: Vec<(JobId, u32, Flag)>) {
    for (job, attempt, flag) in raised {
        tracing::warn!(job, gpu = flag.gpu, kind = flag.kind, "{}", flag.message);
        let store = ctl.store.clone();
        let event = ravel_store::JobEvent {
            id: 0,
            job,
            attempt,
            at: now_ms(),
            kind: flag.kind.to_string(),
            message: flag.message,
        };
        tokio::spawn(async move {
            if let Err(e) = store.add_event(event).await {
                tracing::warn!(job, error = %e, "cannot record a job event");
            }
        });
    }
}
