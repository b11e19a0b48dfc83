//! The scheduler loop: woken by submits, exits and cancels, with a slow periodic pass that
//! re-probes GPUs. Each pass asks the pure policy (`ravel_core::schedule`) for placements and
//! starts them.

use crate::admission;
use crate::state::Active;
use crate::{Controller, now_ms};
use ravel_core::policy::{Placement, QueuedJob, Snapshot};
use ravel_core::{Attempt, Job, JobState, Outcome};
use ravel_exec::{LaunchSpec, Standby};
use ravel_store::{NewAttempt, StoreError};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

pub async fn run(ctl: Arc<Controller>) {
    // The queue's copy each pass works on, kept between passes: with 100,000 waiting that is
    // 9 MB, which allocated anew each time is mostly page faults, under the state's lock.
    let mut queue = Vec::new();
    loop {
        *ctl.scheduler_tick.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        // Sleep until woken, the next probe, or the next parked job's time, whichever is first.
        let next_timer = ctl.lock().timers.first().map(|(t, _)| *t);
        let mut sleep = ctl.cfg.probe_interval;
        if let Some(t) = next_timer {
            sleep = sleep.min(std::time::Duration::from_millis((t - now_ms()).max(0) as u64));
        }
        let woken = tokio::select! {
            _ = ctl.wake.notified() => true,
            _ = tokio::time::sleep(sleep) => false,
        };
        admission::wake_due(&ctl).await;
        ctl.check_queue_wait();
        let started = Instant::now();
        pass(&ctl, woken, &mut queue).await;
        if queue.capacity() > 4096 && queue.capacity() > 4 * queue.len() {
            queue.shrink_to(2 * queue.len());
        }
        // A pass over a long queue is not free: while job ends keep waking the loop, it rests
        // twice as long as the pass took (at most 25 ms) before the next, so that passes take at
        // most a third of a core, the API keeps the rest, and each pass places what several ends
        // freed. Short passes (a short queue) do not rest.
        let took = started.elapsed();
        if took > std::time::Duration::from_millis(1) {
            tokio::time::sleep((took * 2).min(std::time::Duration::from_millis(25))).await;
        }
    }
}

/// Reads the GPU inventory into the state, and which part of each GPU's memory is used by
/// processes outside Ravel. A failed probe keeps the last good inventory.
pub async fn probe_now(ctl: &Controller) {
    // A controller of agents has no GPUs of its own: its nodes report theirs.
    let Some(agent) = &ctl.agent else { return };
    let result = agent.inventory().await;
    let (sessions, in_use) = {
        let st = ctl.lock();
        let sessions: Vec<i32> = st.active.values().filter_map(|a| a.supervisor.map(|s| s.0)).collect();
        (sessions, st.gpu_use(0))
    };
    // Each GPU process's session, read once from /proc and outside the lock: it tells our jobs'
    // processes from foreign ones, and which job a process belongs to (the GPU checks).
    let session_of: HashMap<u32, i32> = result
        .iter()
        .flatten()
        .flat_map(|g| &g.processes)
        .filter_map(|p| Some((p.pid, ravel_exec::procfs::read_stat(p.pid as i32)?.session)))
        .collect();
    let foreign: Option<Vec<u64>> = result.as_ref().ok().map(|gpus| {
        gpus.iter()
            .map(|g| {
                if g.processes.is_empty() {
                    // No per-process view: all use counts as foreign unless a Ravel job is on
                    // it, in which case it cannot be told apart (and thresholds do not apply).
                    if in_use.contains_key(&g.index) { 0 } else { g.memory_used_mib }
                } else {
                    // A process whose /proc entry is gone counts as foreign.
                    let ours = |pid: u32| session_of.get(&pid).is_some_and(|s| sessions.contains(s));
                    g.processes.iter().filter(|p| !ours(p.pid)).map(|p| p.used_memory_mib).sum()
                }
            })
            .collect()
    });
    let mut st = ctl.lock();
    st.last_probe = Some(Instant::now());
    st.released_since_probe = false;
    match result {
        Ok(gpus) => {
            let foreign = foreign.unwrap_or_default();
            if st.nodes[0].inventory != gpus || st.nodes[0].foreign_used_mib != foreign {
                st.nodes_changed();
            }
            // Five minutes of samples at the usual probe interval.
            let sample: Vec<u32> = gpus.iter().map(|g| g.utilization_pct).collect();
            st.gpu_history.push_back((now_ms(), sample));
            while st.gpu_history.len() > 300 {
                st.gpu_history.pop_front();
            }
            st.nodes[0].inventory = gpus;
            st.nodes[0].foreign_used_mib = foreign;
            st.probe_error = None;
            let raised = crate::gputruth::check(&mut st, &session_of, ctl.cfg.idle_gpu_after);
            drop(st);
            crate::gputruth::record(ctl, raised);
        }
        Err(e) => {
            if st.probe_error.as_deref() != Some(e.as_str()) {
                tracing::warn!(error = %e, "GPU probe failed; keeping the last inventory");
            }
            st.probe_error = Some(e);
        }
    }
}

async fn pass(ctl: &Arc<Controller>, woken: bool, queue: &mut Vec<QueuedJob>) {
    let stale = {
        let st = ctl.lock();
        let old = st.last_probe.is_none_or(|t| t.elapsed() >= ctl.cfg.probe_interval);
        old || (st.released_since_probe && !st.queue.is_empty())
    };
    if stale {
        probe_now(ctl).await;
    }
    // The policy runs without the lock, on a copy, so submits and queries are not held up by a
    // long queue; its placements are applied only if nothing held changed meanwhile (a new
    // submit changes nothing held: it is simply considered by the next pass).
    let placed: Vec<(Placement, QueuedJob)> = loop {
        let now = now_ms();
        let (nodes, ids, users, limits, generation, released, rules) = {
            let mut st = ctl.lock();
            // The periodic pass only looks again when something changed (probes included).
            if !st.accepting || st.queue.is_empty() || !(woken || st.dirty) {
                st.ended_during_pass = None;
                return;
            }
            st.dirty = false;
            st.users.decay(now, ctl.half_life_ms());
            let (nodes, ids) = st.node_views(&ctl.cfg.thresholds);
            queue.clear();
            queue.extend(st.queue.values().cloned());
            st.arrived.clear();
            let rules = ctl.cfg.cluster.as_ref().map(|cluster| ravel_core::policy::Rules {
                node_tags: ids
                    .iter()
                    .map(|i| st.nodes[*i].remote.as_ref().map(|r| r.tags.clone()).unwrap_or_default())
                    .collect(),
                max_jobs: ids.iter().map(|i| st.nodes[*i].remote.as_ref().and_then(|r| r.max_jobs)).collect(),
                spread: cluster.spread,
                jobs: st.job_rules.clone(),
            });
            let (generation, released) = (st.generation, st.released);
            st.ended_during_pass = Some(Vec::new());
            (nodes, ids, st.users.shares.clone(), st.users.limits.clone(), generation, released, rules)
        };
        let snap = Snapshot { now, nodes: &nodes, queue, users: &users, limits: &limits, rules: rules.as_ref() };
        let started = Instant::now();
        let mut d = ravel_core::policy::schedule(&snap);
        ctl.metrics.pass.observe(started.elapsed());
        tracing::debug!(
            queued = queue.len(),
            placed = d.placements.len(),
            woken,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "pass"
        );
        let mut st = ctl.lock();
        if st.generation != generation {
            // Something was placed or changed while the pass ran. With a leftover still standing
            // (every change since the pass that left it was a placement from it or an end
            // credited to it), a pass now would start no waiting job either (`policy::credit_end`):
            // going again would only refresh reasons, and under a steady stream of submits placed
            // from the leftover, each pass over a long queue would be overtaken by the next
            // submit and start over, back to back. The periodic pass refreshes them later.
            if st.leftover.is_some() {
                st.dirty = true;
                st.ended_during_pass = None;
                return;
            }
            continue;
        }
        st.set_pending(d.pending);
        st.estimates = d.estimated_start.into_iter().collect();
        let mut placed: Vec<(Placement, QueuedJob)> = Vec::with_capacity(d.placements.len());
        for mut p in d.placements {
            p.node = ids[p.node];
            // A gang's further ranks follow its first placement.
            if let Some((first, _)) = placed.last().filter(|(f, _)| f.job == p.job) {
                let id = first.job;
                if let Some(a) = st.active.get_mut(&id) {
                    a.ranks.push((p.node, p.gpus));
                }
                continue;
            }
            let Some(q) = st.dequeue(p.job) else { continue };
            st.hold(p.job, Active::placed(&p, &q, now));
            placed.push((p, q));
        }
        // Jobs ended while the pass ran: its placements stand (they took only what was free
        // before); its leftover is kept if what each freed can be credited to it, as if the end
        // came just after the pass. Otherwise the next pass looks again: with a long queue and
        // steady ends, dropping it every time kept passes running back to back.
        let ended = st.ended_during_pass.take();
        if st.released != released && !st.credit_ended_during_pass(ended, &mut d.leftover, &ids, released) {
            st.leftover = None;
            st.dirty = true;
            ctl.wake.notify_one();
            break placed;
        }
        // Set after the placements: the leftover already accounts for them.
        st.leftover = Some(d.leftover);
        st.leftover_nodes = ids;
        // Jobs submitted while this pass ran are new to it: its leftover may take them now,
        // in arrival order, up to the first that does not fit (which then waits for a pass).
        for id in std::mem::take(&mut st.arrived) {
            let Some(q) = st.queued_keys.get(&id).and_then(|k| st.queue.get(k)).cloned() else { continue };
            match st.place_fast(&q) {
                Some(p) => {
                    st.dequeue(id);
                    st.hold(id, Active::placed(&p, &q, now));
                    placed.push((p, q));
                }
                None => {
                    st.leftover = None;
                    ctl.wake.notify_one();
                    break;
                }
            }
        }
        break placed;
    };
    for (p, q) in placed {
        tokio::spawn(start_attempt(ctl.clone(), p, q));
    }
}

/// Records the placement (queued → allocated), launches the supervisor, records it running.
/// On an agent's node, the launch is the agent's: it gets the attempt with its next sync.
pub(crate) async fn start_attempt(ctl: Arc<Controller>, p: Placement, q: QueuedJob) {
    let id = p.job;
    // Dropped when this returns: the attempt's end, if reported meanwhile, is recorded then.
    let (_starting, starting) = tokio::sync::watch::channel(());
    let (node, remote, ranks) = {
        let mut st = ctl.lock();
        if let Some(a) = st.active.get_mut(&id) {
            a.starting = Some(starting);
        }
        let n = &st.nodes[p.node];
        let ranks: Vec<(String, Vec<u32>)> = st
            .active
            .get(&id)
            .map(|a| a.ranks.iter().map(|(i, g)| (st.nodes[*i].name.clone(), g.clone())).collect())
            .unwrap_or_default();
        (n.name.clone(), n.remote.is_some(), ranks)
    };
    let template = ctl.cfg.run_dir_template(id);
    // A supervisor started ahead takes the attempt (one forked now if none is ready); who it is
    // goes into the store with the placement, before it is handed anything, and the attempt is
    // recorded as running in the same write.
    let standby = match (&ctl.agent, remote) {
        (Some(agent), false) => agent.take_standby().await,
        _ => None,
    };
    let new = NewAttempt {
        node,
        gpus: p.gpus.clone(),
        cpus: p.cpus,
        run_dir_template: template.to_string_lossy().into_owned(),
        supervisor: standby.as_ref().map(|s| (s.launched().pid, s.launched().start_time)),
        ranks,
    };
    let t = Instant::now();
    let allocated = ctl.store.allocate(id, new, now_ms()).await;
    ctl.metrics.store_write.observe(t.elapsed());
    let (job, attempt) = match allocated {
        Ok(r) => r,
        Err(e) => {
            if let Some(agent) = &ctl.agent {
                agent.put_back(standby);
            }
            let mut st = ctl.lock();
            st.release(id);
            if !matches!(e, StoreError::Conflict { .. } | StoreError::NotFound(_)) {
                // The job is still queued in the store: keep it queued here too.
                tracing::error!(job = id, error = %e, "cannot record placement");
                st.enqueue(q);
            }
            drop(st);
            ctl.wake.notify_one();
            return;
        }
    };
    if remote {
        crate::cluster::placed(&ctl, &job, &attempt);
        return;
    }
    launch_placed(&ctl, job, attempt, standby).await;
}

/// Hands an attempt just recorded to the local agent and records how that went. The caller keeps
/// the attempt's `starting` channel open until this returns.
pub(crate) async fn launch_placed(ctl: &Arc<Controller>, job: Job, attempt: Attempt, standby: Option<Standby>) {
    let id = job.id;
    let Some(agent) = ctl.agent.as_ref() else { return };
    failpoint(ctl, "after_allocate");
    let run_dir = PathBuf::from(&attempt.run_dir);
    if let Some(a) = ctl.lock().active.get_mut(&id) {
        a.attempt = attempt.n;
        a.run_dir = run_dir.clone();
    }
    let spec = launch_spec(ctl, &job, &attempt.gpus, attempt.n, &run_dir);
    match agent.launch(id, attempt.n, run_dir, spec, standby).await {
        Ok(l) => {
            failpoint(ctl, "after_launch");
            ctl.metrics.started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let waited = (now_ms() - job.submitted_at).max(0) as u64;
            ctl.metrics.queue_wait.observe(std::time::Duration::from_millis(waited));
            let cancel = {
                let mut st = ctl.lock();
                st.active.get_mut(&id).map(|a| {
                    a.supervisor = Some((l.pid, l.start_time));
                    a.cancel_requested
                })
            };
            if cancel == Some(true) {
                agent.stop(l.pid, l.start_time, id, attempt.n);
            }
            // Placed on a standby, the attempt was recorded running with its placement.
            if attempt.state == JobState::Running {
                return;
            }
            // run.json is written once, when the attempt ends: each file created on the
            // dispatch path costs an inode allocation, and the store answers `ravel show` now.
            match ctl.store.mark_running(id, attempt.n, l.pid, l.start_time, now_ms()).await {
                Ok(_) => {}
                // Its exit was recorded first; nothing is lost.
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => tracing::error!(job = id, error = %e, "cannot record start"),
            }
        }
        Err(e) => {
            tracing::error!(job = id, error = %e, "cannot start supervisor");
            let outcome = Outcome {
                state: JobState::Failed,
                exit_code: None,
                signal: None,
                reason: Some(format!("cannot start the job's supervisor: {e}")),
                started_at: None,
            };
            crate::events::record_end(ctl, id, attempt.n, outcome).await;
        }
    }
}

/// Dies here if the daemon was started with `RAVEL_FAILPOINT=<name>` (crash tests only).
pub(crate) fn failpoint(ctl: &Controller, name: &str) {
    if ctl.cfg.failpoint.as_deref() == Some(name) {
        tracing::error!(failpoint = name, "failpoint reached: aborting");
        std::process::abort();
    }
}

/// The job's complete environment: the submitter's, then Ravel's own variables. An agent sets
/// the run dir variables, the lease and the cgroup to its own.
pub(crate) fn launch_spec(ctl: &Controller, job: &Job, gpus: &[u32], n: u32, run_dir: &std::path::Path) -> LaunchSpec {
    const OURS: [&str; 6] = [
        "CUDA_VISIBLE_DEVICES",
        "CUDA_DEVICE_ORDER",
        "RAVEL_JOB_ID",
        "RAVEL_ATTEMPT",
        "RAVEL_RUN_DIR",
        "RAVEL_OUTPUT_DIR",
    ];
    let mut env: Vec<(String, String)> =
        job.spec.env.iter().filter(|(k, _)| !OURS.contains(&k.as_str())).cloned().collect();
    let visible = gpus.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(",");
    env.push(("CUDA_VISIBLE_DEVICES".into(), visible));
    // Our indices are NVML's, which follow PCI bus order; CUDA's default order may not.
    env.push(("CUDA_DEVICE_ORDER".into(), "PCI_BUS_ID".into()));
    env.push(("RAVEL_JOB_ID".into(), job.id.to_string()));
    env.push(("RAVEL_ATTEMPT".into(), n.to_string()));
    env.push(("RAVEL_RUN_DIR".into(), run_dir.to_string_lossy().into_owned()));
    env.push(("RAVEL_OUTPUT_DIR".into(), run_dir.join(ravel_exec::OUTPUTS_DIR).to_string_lossy().into_owned()));
    if let Some(mib) = job.spec.gpu_mem_mib {
        env.push(("RAVEL_GPU_MEM_MIB".into(), mib.to_string()));
    }
    if let Some(i) = job.spec.array_index {
        env.push(("RAVEL_ARRAY_INDEX".into(), i.to_string()));
    }
    LaunchSpec {
        command: job.spec.command.clone(),
        cwd: job.spec.cwd.clone(),
        env,
        kill_grace_ms: ctl.cfg.kill_grace.as_millis() as u64,
        sync_records: ctl.cfg.durable,
        timeout_ms: job.spec.timeout_ms,
        run_as: run_as(ctl, job),
        umask: job.spec.umask,
        // A shared box contains every job; elsewhere only a job with a memory limit needs one.
        // An agent's node decides for itself whether it can (`ravel-agent`'s remote launch).
        cgroup: ((ctl.cfg.cluster.is_some() && job.spec.mem_mib.is_some())
            || (ctl.cfg.cgroups.available() && (ctl.cfg.system || job.spec.mem_mib.is_some())))
        .then(|| ravel_exec::CgroupSpec {
            name: ravel_agent::cgroup_name(&ctl.instance, job.id, n),
            memory_max_bytes: job.spec.mem_mib.map(|m| m << 20),
            pids_max: None,
        }),
        lease_file: None,
    }
}

/// On a shared box, the job runs as its submitter. A job recorded without a uid (never the case
/// for jobs submitted to a system daemon) runs as nobody rather than as root.
fn run_as(ctl: &Controller, job: &Job) -> Option<ravel_exec::RunAs> {
    if !ctl.cfg.system {
        return None;
    }
    Some(match (job.spec.uid, job.spec.gid, &job.spec.user) {
        (Some(uid), Some(gid), Some(user)) => ravel_exec::RunAs { uid, gid, user: user.clone() },
        _ => ravel_exec::RunAs { uid: 65534, gid: 65534, user: "nobody".into() },
    })
}
