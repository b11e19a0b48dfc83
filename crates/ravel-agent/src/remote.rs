//! `ravel agent`: a node of a controller. It dials the controller (`POST /v1/agent/sync`, a
//! long poll), reports its GPUs and the attempts it runs or has ended, and runs what it is
//! answered with through the same supervisors as local mode ([`LocalAgent`]). It decides
//! nothing: an attempt it runs that the controller no longer wants, it kills.
//!
//! Fencing: after each successful sync the agent pushes the deadline in its lease file
//! (`<home>/lease`) forward by two thirds of the node timeout; every supervisor it starts
//! checks that file and kills its job at once when the deadline passes. So an agent cut off
//! from its controller (or stopped, or killed) has its jobs killed before the controller
//! declares the node lost and runs them elsewhere. A sync refused as stale (the controller
//! already declared the node lost) kills everything at once and registers anew.
//!
//! Logs: the agent ships each attempt's stdout and stderr to the controller as they grow
//! (`POST /v1/agent/logs`), and all of them before it reports the attempt's end, so `ravel logs
//! -f` works for a job on any node, from any client, through the controller.

use crate::{AgentEvent, LocalAgent};
use ravel_client::{Client, ClientError};
use ravel_core::JobId;
use ravel_exec::{ExitRecord, LaunchSpec};
use ravel_gpu::GpuProbe;
use ravel_proto::{AgentGpu, AgentSyncRequest, AgentSyncResponse, AttemptEnd, LogStream, ObservedAttempt};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};

/// What `ravel agent` is told.
pub struct AgentConfig {
    pub name: String,
    pub home: PathBuf,
    pub client: Client,
    pub cpus: u32,
    pub memory_mib: u64,
    pub tags: Vec<String>,
    pub max_jobs: Option<u32>,
    /// The `ravel` binary (for supervisors).
    pub exe: PathBuf,
    pub version: String,
}

/// One attempt on this node.
struct Attempt {
    run_dir: PathBuf,
    supervisor: Option<(i32, u64)>,
    ended: Option<AttemptEnd>,
    /// A kill was sent (a cancel, or it is no longer wanted).
    stopping: bool,
    /// Bytes of stdout and stderr the controller has.
    shipped: [u64; 2],
}

impl Attempt {
    /// Known to this agent, with nothing yet seen of its supervisor or shipped of its logs.
    fn new(run_dir: PathBuf) -> Attempt {
        Attempt { run_dir, supervisor: None, ended: None, stopping: false, shipped: [0, 0] }
    }
}

#[derive(Default)]
struct Shared {
    epoch: u64,
    attempts: HashMap<(JobId, u32), Attempt>,
    /// Fence after this long without a successful sync.
    fence_after: Option<Duration>,
    last_ok: Option<Instant>,
}

struct Agent {
    cfg: AgentConfig,
    /// What this node can contain jobs in (detected once).
    cgroups: ravel_exec::cgroup::CgroupSupport,
    local: LocalAgent,
    shared: Mutex<Shared>,
    /// Something to report at once (an attempt ended).
    urgent: Notify,
}

fn lock(a: &Agent) -> std::sync::MutexGuard<'_, Shared> {
    a.shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the agent until `shutdown` resolves. Its jobs keep running when it stops (a restarted
/// agent takes them back if the controller still wants them, within the lease).
pub async fn run(
    cfg: AgentConfig,
    probe: Box<dyn GpuProbe>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    std::fs::create_dir_all(cfg.home.join("runs")).map_err(|e| format!("cannot create {}: {e}", cfg.home.display()))?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let local = LocalAgent::new(cfg.exe.clone(), crate::instance_of(&cfg.home), probe, tx);
    let cgroups = ravel_exec::cgroup::detect();
    let agent = Arc::new(Agent { cfg, cgroups, local, shared: Mutex::default(), urgent: Notify::new() });
    agent.adopt();
    {
        let agent = agent.clone();
        tokio::spawn(async move {
            while let Some(AgentEvent::Ended { job, attempt, exit, spawned }) = rx.recv().await {
                agent.ended(job, attempt, exit.as_ref(), spawned);
            }
        });
    }
    tokio::spawn(ship_logs(agent.clone()));
    tokio::spawn(watch_lease(agent.clone()));
    {
        let agent = agent.clone();
        tokio::spawn(async move {
            loop {
                agent.urgent.notified().await;
                // While (re)registering, the main loop's sync is the only one: two registrations
                // would make two sessions.
                if lock(&agent).epoch != 0 {
                    let _ = agent.clone().sync(0).await;
                }
            }
        });
    }
    let main = async {
        // The first answer comes at once: a restarted agent renews its jobs' lease before it
        // runs out.
        let mut wait_ms = 0;
        loop {
            let sent = agent.clone().sync(wait_ms).await;
            wait_ms = 5_000;
            match sent {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "sync with the controller failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    };
    tokio::select! {
        _ = main => {}
        _ = shutdown => tracing::info!("agent stopping; its jobs keep running within their lease"),
    }
    Ok(())
}

const STATE_FILE: &str = "agent.json";

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Saved {
    epoch: u64,
    /// (job, attempt, run dir)
    attempts: Vec<(JobId, u32, PathBuf)>,
}

impl Agent {
    /// The lease of one session (epoch): supervisors started in it watch this file. A new
    /// session writes a new one, so jobs of an earlier session (say, the agent lost its state
    /// file) fence themselves instead of running on unmanaged.
    fn lease_file(&self, epoch: u64) -> PathBuf {
        self.cfg.home.join(format!("lease.{epoch}"))
    }

    /// Ends every lease but the current one's: their jobs die within a moment.
    fn drop_other_leases(&self, epoch: u64) {
        let Ok(dir) = std::fs::read_dir(&self.cfg.home) else { return };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(n) = name.strip_prefix("lease.").and_then(|n| n.parse::<u64>().ok())
                && n != epoch
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Takes back the attempts an earlier run of this agent left (their supervisors outlive
    /// it), with its epoch: the controller decides on the first sync whether they still count.
    fn adopt(&self) {
        let Ok(text) = std::fs::read(self.cfg.home.join(STATE_FILE)) else { return };
        let Ok(saved) = serde_json::from_slice::<Saved>(&text) else { return };
        let mut sh = lock(self);
        sh.epoch = saved.epoch;
        for (job, n, run_dir) in saved.attempts {
            sh.attempts.insert((job, n), Attempt::new(run_dir.clone()));
            match self.local.adopt(job, n, &run_dir, None) {
                crate::Adoption::Watching { pid, start_time } => {
                    if let Some(a) = sh.attempts.get_mut(&(job, n)) {
                        a.supervisor = Some((pid, start_time));
                    }
                }
                // Its end arrives as an event.
                crate::Adoption::Ended => {}
                crate::Adoption::NeverLaunched => {
                    if let Some(a) = sh.attempts.get_mut(&(job, n)) {
                        a.ended = Some(AttemptEnd { never_started: true, ..AttemptEnd::default() });
                    }
                }
            }
        }
        tracing::info!(epoch = sh.epoch, attempts = sh.attempts.len(), "took back the attempts of an earlier run");
    }

    fn save(&self, sh: &Shared) {
        let saved = Saved {
            epoch: sh.epoch,
            attempts: sh.attempts.iter().map(|((j, n), a)| (*j, *n, a.run_dir.clone())).collect(),
        };
        if let Err(e) =
            ravel_exec::write_json(&self.cfg.home.join(STATE_FILE), &saved, ravel_exec::Durability::Unsynced)
        {
            tracing::warn!(error = %e, "cannot save the agent's state");
        }
    }

    fn ended(&self, job: JobId, n: u32, exit: Option<&ExitRecord>, spawned: bool) {
        let end = match exit {
            None if !spawned => AttemptEnd { never_started: true, ..AttemptEnd::default() },
            None => AttemptEnd { vanished: true, ..AttemptEnd::default() },
            Some(e) => AttemptEnd {
                exit_code: e.exit_code,
                signal: e.signal,
                canceled: e.canceled,
                timed_out: e.timed_out,
                oom_killed: e.oom_killed,
                fenced: e.fenced,
                error: e.error.clone(),
                started_at: e.started_at_ms,
                ..AttemptEnd::default()
            },
        };
        if let Some(a) = lock(self).attempts.get_mut(&(job, n)) {
            a.ended = Some(end);
        }
        self.urgent.notify_one();
    }

    /// One sync: report, get the desired set, act on it.
    async fn sync(self: Arc<Self>, wait_ms: u64) -> Result<(), String> {
        let gpus = self.inventory().await;
        // Ended attempts' logs go out in full before their ends are reported: an end is reported
        // only once its logs were shipped (an attempt that ends meanwhile waits for the next sync).
        let ended: Vec<(JobId, u32)> =
            lock(&self).attempts.iter().filter(|(_, a)| a.ended.is_some()).map(|(k, _)| *k).collect();
        let mut shipped = std::collections::HashSet::new();
        for key in ended {
            let me = self.clone();
            if tokio::task::spawn_blocking(move || me.ship(key)).await.unwrap_or(false) {
                shipped.insert(key);
            }
        }
        let (req, sent_epoch) = {
            let sh = lock(&self);
            let attempts = sh
                .attempts
                .iter()
                .map(|(key, a)| ObservedAttempt {
                    job: key.0,
                    attempt: key.1,
                    supervisor: a.supervisor,
                    ended: a.ended.clone().filter(|_| shipped.contains(key)),
                })
                .collect();
            let req = AgentSyncRequest {
                name: self.cfg.name.clone(),
                epoch: sh.epoch,
                version: self.cfg.version.clone(),
                cpus: self.cfg.cpus,
                memory_mib: self.cfg.memory_mib,
                tags: self.cfg.tags.clone(),
                max_jobs: self.cfg.max_jobs,
                gpus: gpus.0,
                probe_error: gpus.1,
                attempts,
                wait_ms,
            };
            (req, sh.epoch)
        };
        let client = self.cfg.client.clone().with_timeout(Duration::from_millis(wait_ms + 15_000));
        let answer = tokio::task::spawn_blocking(move || client.post::<_, AgentSyncResponse>("/v1/agent/sync", &req))
            .await
            .map_err(|e| e.to_string())?;
        match answer {
            Ok(resp) => {
                self.apply(resp, sent_epoch).await;
                Ok(())
            }
            Err(ClientError::Api { body, .. }) if body.code == "stale_epoch" => {
                // Only if it is still the session that sent it: a late answer to a sync of an
                // earlier session says nothing of the current one.
                if lock(&self).epoch == sent_epoch {
                    tracing::warn!(error = %body.error, "the controller declared this node lost: killing its jobs");
                    self.fence_now();
                }
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Kills every job at once (their supervisors see an expired lease) and forgets them: the
    /// controller has ended them already. The next sync registers anew.
    fn fence_now(&self) {
        let mut sh = lock(self);
        let _ = ravel_exec::end_lease(&self.lease_file(sh.epoch));
        for (&(job, attempt), a) in &sh.attempts {
            if let Some((pid, start)) = a.supervisor {
                self.local.stop(pid, start, job, attempt);
            }
        }
        sh.attempts.clear();
        sh.epoch = 0;
        sh.last_ok = None;
        self.save(&sh);
    }

    async fn apply(&self, resp: AgentSyncResponse, sent_epoch: u64) {
        let mut launches = vec![];
        {
            let mut sh = lock(self);
            if sent_epoch != sh.epoch && sent_epoch != 0 {
                // Fenced while this answer was on its way.
                return;
            }
            let new_session = sh.epoch != resp.epoch;
            sh.epoch = resp.epoch;
            sh.last_ok = Some(Instant::now());
            if resp.node_timeout_ms > 0 {
                let fence = Duration::from_millis(resp.node_timeout_ms * 2 / 3);
                sh.fence_after = Some(fence);
                let _ = ravel_exec::renew_lease(&self.lease_file(resp.epoch), fence);
            }
            if new_session {
                self.drop_other_leases(resp.epoch);
            }
            for key in &resp.acked {
                sh.attempts.remove(key);
            }
            let wanted: HashMap<(JobId, u32), bool> =
                resp.desired.iter().map(|d| ((d.job, d.attempt), d.kill)).collect();
            // Not wanted, or to be canceled: stopped once.
            for (key, a) in sh.attempts.iter_mut() {
                let kill = wanted.get(key).copied().unwrap_or(true);
                if kill
                    && !a.stopping
                    && a.ended.is_none()
                    && let Some((pid, start)) = a.supervisor
                {
                    a.stopping = true;
                    self.local.stop(pid, start, key.0, key.1);
                }
            }
            for d in &resp.desired {
                if let (false, Some(order)) = (sh.attempts.contains_key(&(d.job, d.attempt)), &d.launch) {
                    let run_dir = self.cfg.home.join("runs").join(d.job.to_string()).join(d.attempt.to_string());
                    sh.attempts.insert((d.job, d.attempt), Attempt::new(run_dir.clone()));
                    launches.push((d.job, d.attempt, run_dir, order.clone()));
                }
            }
            self.save(&sh);
        }
        for (job, n, run_dir, order) in launches {
            let result = self.launch(job, n, &run_dir, order, resp.epoch).await;
            let mut sh = lock(self);
            match result {
                Ok(sup) => {
                    if let Some(a) = sh.attempts.get_mut(&(job, n)) {
                        a.supervisor = Some(sup);
                    }
                }
                Err(why) => {
                    if let Some(a) = sh.attempts.get_mut(&(job, n)) {
                        a.ended = Some(AttemptEnd { error: Some(why), exit_code: None, ..AttemptEnd::default() });
                    }
                }
            }
            drop(sh);
            self.urgent.notify_one();
        }
    }

    async fn launch(
        &self,
        job: JobId,
        n: u32,
        run_dir: &Path,
        order: serde_json::Value,
        epoch: u64,
    ) -> Result<(i32, u64), String> {
        let mut spec: LaunchSpec = serde_json::from_value(order).map_err(|e| format!("bad launch order: {e}"))?;
        if !Path::new(&spec.cwd).is_dir() {
            return Err(format!("cwd {} not found on node {}", spec.cwd, self.cfg.name));
        }
        std::fs::create_dir_all(run_dir).map_err(|e| format!("cannot create {}: {e}", run_dir.display()))?;
        let dir = run_dir.display().to_string();
        for (k, v) in spec.env.iter_mut() {
            if k == "RAVEL_RUN_DIR" {
                *v = dir.clone();
            } else if k == "RAVEL_OUTPUT_DIR" {
                *v = run_dir.join(ravel_exec::OUTPUTS_DIR).display().to_string();
            }
        }
        spec.lease_file = Some(self.lease_file(epoch).display().to_string());
        if let Some(c) = spec.cgroup.as_mut() {
            c.name = self.local.cgroup_name(job, n);
        }
        if let (Some(c), ravel_exec::cgroup::CgroupSupport::Unavailable(why)) = (&spec.cgroup, &self.cgroups) {
            if c.memory_max_bytes.is_some() {
                return Err(format!("--mem needs a cgroup, and node {} has none ({why})", self.cfg.name));
            }
            spec.cgroup = None;
        }
        let launched = self.local.launch(job, n, run_dir.to_path_buf(), spec, None).await?;
        Ok((launched.pid, launched.start_time))
    }

    /// The GPUs as the controller wants them: processes of this node's jobs left out.
    async fn inventory(&self) -> (Vec<AgentGpu>, Option<String>) {
        let gpus = match self.local.inventory().await {
            Ok(g) => g,
            Err(e) => return (vec![], Some(e)),
        };
        let sessions: Vec<i32> = lock(self).attempts.values().filter_map(|a| a.supervisor.map(|s| s.0)).collect();
        let ours = |pid: u32| ravel_exec::procfs::read_stat(pid as i32).is_some_and(|s| sessions.contains(&s.session));
        let gpus = gpus
            .into_iter()
            .map(|g| {
                let foreign: Vec<(u32, u64)> =
                    g.processes.iter().filter(|p| !ours(p.pid)).map(|p| (p.pid, p.used_memory_mib)).collect();
                let foreign_used_mib = if g.processes.is_empty() {
                    if sessions.is_empty() { g.memory_used_mib } else { 0 }
                } else {
                    foreign.iter().map(|(_, m)| m).sum()
                };
                AgentGpu {
                    index: g.index,
                    name: g.name,
                    uuid: g.uuid,
                    memory_total_mib: g.memory_total_mib,
                    memory_used_mib: g.memory_used_mib,
                    utilization_pct: g.utilization_pct,
                    foreign_used_mib,
                    foreign_processes: foreign,
                }
            })
            .collect();
        (gpus, None)
    }

    /// Sends what the controller lacks of an attempt's logs (blocking); true once it has all
    /// there is now.
    fn ship(&self, key: (JobId, u32)) -> bool {
        let (run_dir, shipped, epoch) = {
            let sh = lock(self);
            let Some(a) = sh.attempts.get(&key) else { return false };
            (a.run_dir.clone(), a.shipped, sh.epoch)
        };
        if epoch == 0 {
            return false;
        }
        for (i, stream) in [LogStream::Stdout, LogStream::Stderr].into_iter().enumerate() {
            let mut offset = shipped[i];
            while let Some(bytes) = read_from(&run_dir.join(stream.file_name()), offset, 512 * 1024) {
                if bytes.is_empty() {
                    break;
                }
                let path = format!(
                    "/v1/agent/logs?name={}&epoch={epoch}&job={}&attempt={}&stream={}&offset={offset}",
                    ravel_client::encode_query_value(&self.cfg.name),
                    key.0,
                    key.1,
                    stream.as_str()
                );
                match self.cfg.client.raw("POST", &path, Some(&bytes)) {
                    Ok(_) => offset += bytes.len() as u64,
                    // The controller no longer holds this attempt here: nothing to ship to.
                    Err(ClientError::Api { body, .. }) if body.code == "stale_attempt" => return true,
                    // Its copy is shorter than what was shipped (restored, or cut): all again.
                    Err(ClientError::Api { body, .. }) if body.code == "log_gap" => {
                        if let Some(a) = lock(self).attempts.get_mut(&key) {
                            a.shipped[i] = 0;
                        }
                        return false;
                    }
                    Err(e) => {
                        tracing::debug!(job = key.0, error = %e, "cannot ship logs");
                        return false;
                    }
                }
            }
            if let Some(a) = lock(self).attempts.get_mut(&key) {
                a.shipped[i] = offset;
            }
        }
        true
    }
}

fn read_from(path: &Path, offset: u64, max: usize) -> Option<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    f.seek(SeekFrom::Start(offset)).ok()?;
    let mut buf = Vec::with_capacity(max.min(64 * 1024));
    f.take(max as u64).read_to_end(&mut buf).ok()?;
    Some(buf)
}

/// Ships running attempts' logs as they grow.
async fn ship_logs(agent: Arc<Agent>) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let keys: Vec<(JobId, u32)> = lock(&agent).attempts.keys().copied().collect();
        for key in keys {
            let a = agent.clone();
            let _ = tokio::task::spawn_blocking(move || a.ship(key)).await;
        }
    }
}

/// Without a successful sync for the fence time, the lease is let run out: the supervisors
/// kill their jobs. (They would anyway: the deadline in the file is not pushed forward; this
/// makes it explicit and logs it.)
async fn watch_lease(agent: Arc<Agent>) {
    let mut fenced = false;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (last_ok, fence_after, running, epoch) = {
            let sh = lock(&agent);
            (sh.last_ok, sh.fence_after, sh.attempts.values().filter(|a| a.ended.is_none()).count(), sh.epoch)
        };
        let cut_off = matches!((last_ok, fence_after), (Some(t), Some(f)) if t.elapsed() >= f);
        if cut_off && !fenced && running > 0 {
            tracing::warn!(jobs = running, "no contact with the controller for the lease time: jobs are being killed");
            let _ = ravel_exec::end_lease(&agent.lease_file(epoch));
        }
        fenced = cut_off;
    }
}
