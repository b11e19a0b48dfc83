//! Cluster mode: the controller's side of its agents. Each node's agent dials in
//! (`POST /v1/agent/sync`, a long poll): it reports its inventory and the attempts it runs or
//! has ended, and is answered with every attempt the controller wants on the node (launch
//! orders until the agent reports them; kill orders for canceled jobs). Anything else the node
//! runs, it kills. The controller never dials an agent.
//!
//! Leases: each agent session holds the node's epoch. A node silent for the node timeout is
//! `lost`: its epoch is bumped (persisted), its attempts end `lost` (and are retried if they
//! have retries), and whatever the old session reports afterwards is refused as stale. The
//! agent, for its part, kills its jobs when it has been cut off for most of the timeout (the
//! supervisors' lease file), so that a job never runs on two nodes at once. A restarted
//! controller counts the timeout from its own start: no node is lost for the controller's
//! absence.

use crate::api::ApiError;
use crate::state::NodeState;
use crate::{Controller, events, now_ms};
use ravel_core::{JobId, JobState, Outcome};
use ravel_gpu::{GpuInfo, GpuProcess};
use ravel_proto::{AgentSyncRequest, AgentSyncResponse, AttemptEnd, DesiredAttempt, NodeInfo};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// What a controller of agents is told at start.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// A node silent this long is lost (its agent fences itself somewhat earlier).
    pub node_timeout: Duration,
    /// Spread jobs over the nodes instead of packing them (packing keeps whole nodes free).
    pub spread: bool,
}

/// A node run by an agent, as the controller knows it.
#[derive(Debug, Clone)]
pub struct Remote {
    pub epoch: u64,
    /// When its agent was last in contact; None: not since this controller started.
    pub last_seen: Option<Instant>,
    pub last_seen_ms: Option<i64>,
    /// Declared lost: nothing is placed on it until its agent registers again.
    pub lost: bool,
    pub version: String,
    pub tags: Vec<String>,
    pub max_jobs: Option<u32>,
    /// Wakes the agent's pending sync (a placement or a kill for it).
    pub wake: Arc<Notify>,
    /// Launch orders not yet taken up: (job, attempt) → what to run.
    pub launches: HashMap<(JobId, u32), serde_json::Value>,
    /// Launch orders handed to the agent (the attempt is then `starting`).
    pub offered: HashSet<(JobId, u32)>,
    /// Ends being recorded (acknowledged by the first sync after).
    pub ending: HashSet<(JobId, u32)>,
    /// Attempts whose `starting` is being recorded.
    pub marking: HashSet<(JobId, u32)>,
    /// What the last answer wanted on the node (`answer_key`): a sync that would be told the same
    /// again is held until something changes.
    pub last_answer: u64,
    /// Removed by an admin: kept (empty) so that node indices stay valid, but not shown.
    pub removed: bool,
    /// The address its agent connects from (a gang's MASTER_ADDR when it runs rank 0).
    pub addr: Option<std::net::IpAddr>,
}

impl Remote {
    pub fn connected(&self) -> bool {
        !self.lost && !self.removed && self.last_seen.is_some()
    }

    fn new(epoch: u64) -> Remote {
        Remote {
            epoch,
            last_seen: None,
            last_seen_ms: None,
            lost: false,
            version: String::new(),
            tags: vec![],
            max_jobs: None,
            wake: Arc::new(Notify::new()),
            launches: HashMap::new(),
            offered: HashSet::new(),
            ending: HashSet::new(),
            marking: HashSet::new(),
            last_answer: 0,
            removed: false,
            addr: None,
        }
    }
}

/// Longest a sync is held open when there is nothing new to say.
const MAX_HOLD: Duration = Duration::from_secs(10);

/// The nodes a controller kept, as nodes of its state (none connected yet).
pub fn nodes_from(records: Vec<ravel_store::NodeRecord>) -> Vec<NodeState> {
    records
        .into_iter()
        .filter(|r| r.remote)
        .map(|r| {
            let mut remote = Remote::new(r.epoch);
            remote.version = r.version;
            remote.tags = r.tags;
            remote.max_jobs = r.max_jobs;
            remote.last_seen_ms = Some(r.last_seen);
            remote.last_seen = None;
            NodeState {
                name: r.name,
                cpus_total: r.cpus,
                inventory: r
                    .gpus
                    .into_iter()
                    .map(|g| GpuInfo {
                        index: g.index,
                        name: g.name,
                        uuid: g.uuid,
                        memory_total_mib: g.memory_total_mib,
                        memory_used_mib: 0,
                        utilization_pct: 0,
                        processes: vec![],
                    })
                    .collect(),
                foreign_used_mib: vec![],
                admin: r.admin,
                remote: Some(remote),
            }
        })
        .collect()
}

/// A node of an agent the controller did not know: a new agent, or one named by an attempt but
/// not recorded (should not happen; then it is lost if no agent of that name comes back).
/// Known from now on, as not connected until its agent syncs; returns its index.
pub fn add_remote_node(st: &mut crate::state::State, name: &str) -> usize {
    let mut node = NodeState::local(name.to_string(), 0);
    node.remote = Some(Remote::new(0));
    st.nodes.push(node);
    st.nodes.len() - 1
}

/// A placement on agents' nodes was recorded (or, after a restart, an attempt recorded but not
/// yet seen running): each rank's agent gets its launch order with its next sync (woken now).
/// An agent that has the attempt already ignores the order.
pub fn placed(ctl: &Arc<Controller>, job: &ravel_core::Job, attempt: &ravel_core::Attempt) {
    let (id, n) = (job.id, attempt.n);
    let base = PathBuf::from(&attempt.run_dir);
    let mut st = ctl.lock();
    let Some(a) = st.active.get_mut(&id) else { return };
    a.attempt = n;
    a.run_dir = base.clone();
    let ranks: Vec<(usize, Vec<u32>)> = a.all_ranks().map(|(node, gpus)| (node, gpus.to_vec())).collect();
    let names: Vec<String> = ranks.iter().map(|(i, _)| st.nodes[*i].name.clone()).collect();
    let master = {
        let first = &st.nodes[ranks[0].0];
        first.remote.as_ref().and_then(|r| r.addr).map_or(first.name.clone(), |ip| ip.to_string())
    };
    for (rank, (node, gpus)) in ranks.iter().enumerate() {
        // The controller's run dir of a remote attempt holds the copy of its logs (a gang's
        // further ranks: in rank<r>/) and its run.json.
        let dir = rank_dir(&base, rank);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!(job = id, error = %e, dir = %dir.display(), "cannot create the run dir for the logs");
        }
        let mut spec = crate::scheduler::launch_spec(ctl, job, gpus, n, &dir);
        if ranks.len() > 1 {
            spec.env.retain(|(k, _)| !GANG_VARS.contains(&k.as_str()));
            spec.env.extend([
                ("MASTER_ADDR".to_string(), master.clone()),
                ("MASTER_PORT".to_string(), (29_500 + id % 10_000).to_string()),
                ("WORLD_SIZE".to_string(), ranks.len().to_string()),
                ("NODE_RANK".to_string(), rank.to_string()),
                ("RAVEL_NODELIST".to_string(), names.join(",")),
            ]);
        }
        let order = serde_json::to_value(&spec).unwrap_or_default();
        if let Some(remote) = st.nodes[*node].remote.as_mut() {
            remote.launches.insert((id, n), order);
            remote.wake.notify_one();
        }
    }
}

/// What a gang's ranks are told of each other (a submitter's values are replaced).
const GANG_VARS: [&str; 5] = ["MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "NODE_RANK", "RAVEL_NODELIST"];

/// Where the controller keeps a rank's copy of its logs (rank 0: the attempt's run dir).
pub(crate) fn rank_dir(base: &std::path::Path, rank: usize) -> PathBuf {
    if rank == 0 { base.to_path_buf() } else { base.join(format!("rank{rank}")) }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !name.starts_with('.')
}

/// `POST /v1/agent/sync`.
pub async fn sync(
    ctl: &Arc<Controller>,
    req: AgentSyncRequest,
    addr: Option<std::net::IpAddr>,
    token_name: &str,
) -> Result<AgentSyncResponse, ApiError> {
    let cfg = ctl.cfg.cluster.as_ref().ok_or_else(|| ApiError::not_found("this daemon runs no agents"))?;
    // An agent token named after a node is that node's alone; one named "agent" (the default)
    // may sync as any node.
    if token_name != "agent" && token_name != req.name {
        return Err(ApiError::forbidden(format!(
            "this agent token belongs to node {token_name}: it cannot sync as {} (give each node its own token, \
             `ravel token create --role agent --name NODE`)",
            req.name
        )));
    }
    if !valid_name(&req.name) {
        return Err(ApiError::bad_request(format!(
            "bad node name {:?}: use 1 to 64 letters, digits, '.', '_' or '-'",
            req.name
        )));
    }
    if req.gpus.len() > 1024 || req.attempts.len() > 100_000 || req.tags.len() > 64 {
        return Err(ApiError::bad_request("too many GPUs, attempts or tags in one sync"));
    }
    let node = session(ctl, &req).await?;
    if let Some(r) = ctl.lock().nodes[node].remote.as_mut() {
        r.addr = addr.or(r.addr);
    }
    let mut acked = Vec::new();
    let mut reported: HashSet<(JobId, u32)> = HashSet::new();
    // What each report means, decided under one lock; the writes then run side by side, so
    // that a sync's ends and starts share the store's group commits.
    let mut ends = Vec::new();
    let mut starts = Vec::new();
    {
        let st = ctl.lock();
        for o in &req.attempts {
            reported.insert((o.job, o.attempt));
            let a = st.active.get(&o.job).filter(|a| a.attempt == o.attempt && a.rank_on(node).is_some());
            match (&o.ended, a.map(|a| a.cancel_requested)) {
                (Some(end), Some(requested)) => ends.push((o.job, o.attempt, end, requested)),
                // Recorded before, or not this node's any more: nothing to do but let it go.
                (Some(_), None) => acked.push((o.job, o.attempt)),
                (None, Some(_)) => {
                    if let Some((pid, start)) = o.supervisor {
                        starts.push((o.job, o.attempt, pid, start));
                    }
                }
                // Not wanted here: left out of the desired set, so the agent kills it.
                (None, None) => {}
            }
        }
    }
    // Recorded in the background: the answer does not wait for their commits. An end is
    // acknowledged by a later sync, once recorded (the agent reports it until then); one being
    // recorded is not started again.
    for (job, n, pid, start) in starts {
        let ctl = ctl.clone();
        tokio::spawn(async move { started(&ctl, node, job, n, pid, start).await });
    }
    for (job, n, end, requested) in ends {
        let fresh = ctl.lock().nodes[node].remote.as_mut().is_some_and(|r| r.ending.insert((job, n)));
        if !fresh {
            continue;
        }
        let (ctl, end) = (ctl.clone(), end.clone());
        tokio::spawn(async move {
            ended(&ctl, node, job, n, &end, requested).await;
            if let Some(r) = ctl.lock().nodes[node].remote.as_mut() {
                r.ending.remove(&(job, n));
            }
        });
    }
    // An attempt the node reported running before but no longer reports is gone from it (its
    // supervisor ended unseen, or the agent lost its state): lost, and retried if it may be.
    let vanished: Vec<(JobId, u32)> = {
        let st = ctl.lock();
        st.active
            .iter()
            .filter(|(id, a)| {
                a.node == node
                    && a.ranks.is_empty()
                    && a.attempt > 0
                    && a.supervisor.is_some()
                    && !reported.contains(&(**id, a.attempt))
            })
            .map(|(id, a)| (*id, a.attempt))
            .collect()
    };
    for (id, n) in vanished {
        let name = ctl.lock().nodes[node].name.clone();
        events::record_end(ctl, id, n, lost(format!("node {name} no longer runs it"))).await;
    }
    let wake = ctl.lock().nodes[node].remote.as_ref().map(|r| r.wake.clone());
    let hold = Duration::from_millis(req.wait_ms).min(MAX_HOLD).min(cfg.node_timeout / 3);
    let mut resp = desired(ctl, node, &reported);
    // Nothing new to say: no ack, no launch order, and the same desired set (kill flags included)
    // as the last answer, which the agent acts on (it kills what is not in it, once).
    let last = ctl.lock().nodes[node].remote.as_ref().map_or(0, |r| r.last_answer);
    let settled = acked.is_empty() && resp.desired.iter().all(|d| d.launch.is_none()) && answer_key(&resp) == last;
    if settled
        && !hold.is_zero()
        && let Some(wake) = wake
    {
        let mut shutdown = ctl.shutdown.subscribe();
        tokio::select! {
            _ = tokio::time::timeout(hold, wake.notified()) => {}
            _ = shutdown.wait_for(|s| *s) => {}
        }
        resp = desired(ctl, node, &reported);
    }
    resp.acked = acked;
    // The answer is contact too: the agent renews its lease when it gets it.
    let handed: Vec<(JobId, u32)> = {
        let mut st = ctl.lock();
        let Some(r) = st.nodes[node].remote.as_mut() else { return Err(ApiError::internal("node is not remote")) };
        if (r.epoch != req.epoch && req.epoch != 0) || r.lost || r.removed {
            return Err(stale(req.epoch, r.epoch, &st.nodes[node].name));
        }
        r.last_seen = Some(Instant::now());
        r.last_seen_ms = Some(now_ms());
        resp.epoch = r.epoch;
        r.last_answer = answer_key(&resp);
        let handed: Vec<(JobId, u32)> = resp
            .desired
            .iter()
            .filter(|d| d.launch.is_some())
            .map(|d| (d.job, d.attempt))
            .filter(|k| !r.offered.contains(k))
            .collect();
        r.offered.extend(handed.iter().copied());
        handed
    };
    // Handed to its agent: `starting` (a gang: once its first rank's order goes out). Recorded
    // in the background, so that the answer never waits for a commit (or a WAL checkpoint):
    // the job's `running` comes from a later sync, and the job's writes are made in order.
    if !handed.is_empty() {
        let ctl = ctl.clone();
        if let Some(r) = ctl.lock().nodes[node].remote.as_mut() {
            r.marking.extend(handed.iter().copied());
        }
        tokio::spawn(async move {
            let marked = futures_util::future::join_all(handed.iter().map(|(id, n)| mark_starting(&ctl, *id, *n)));
            marked.await;
            if let Some(r) = ctl.lock().nodes[node].remote.as_mut() {
                for k in &handed {
                    r.marking.remove(k);
                }
            }
        });
    }
    Ok(resp)
}

/// A digest of the desired set of an answer: its attempts and their kill flags.
fn answer_key(resp: &AgentSyncResponse) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for d in &resp.desired {
        (d.job, d.attempt, d.kill).hash(&mut h);
    }
    // Never 0, which means "nothing answered yet".
    h.finish() | 1
}

fn stale(got: u64, current: u64, name: &str) -> ApiError {
    ApiError::conflict_code(
        "stale_epoch",
        format!(
            "lease epoch {got} of node {name} is stale (current {current}): the node was declared lost and its \
             attempts ran elsewhere; kill its jobs and register again with epoch 0"
        ),
    )
}

/// Finds or makes the node, checks the agent's epoch (a new session gets a new one, and ends
/// whatever an earlier session left), and takes in what it reports of itself.
async fn session(ctl: &Arc<Controller>, req: &AgentSyncRequest) -> Result<usize, ApiError> {
    let (node, fresh, orphans) = {
        let mut st = ctl.lock();
        let node = match st.node_index(&req.name) {
            Some(i) => i,
            None => add_remote_node(&mut st, &req.name),
        };
        let Some(r) = st.nodes[node].remote.as_mut() else {
            return Err(ApiError::conflict(format!("node {} is this daemon's own", req.name)));
        };
        if req.epoch != 0 && (req.epoch != r.epoch || r.lost || r.removed) {
            return Err(stale(req.epoch, r.epoch, &req.name));
        }
        let fresh = req.epoch == 0;
        if fresh {
            r.epoch += 1;
            r.lost = false;
            r.removed = false;
            r.launches.clear();
            r.offered.clear();
        }
        let was_connected = r.last_seen.is_some();
        r.last_seen = Some(Instant::now());
        r.last_seen_ms = Some(now_ms());
        r.version = req.version.clone();
        r.tags = req.tags.clone();
        r.max_jobs = req.max_jobs;
        let inventory: Vec<GpuInfo> = req
            .gpus
            .iter()
            .map(|g| GpuInfo {
                index: g.index,
                name: g.name.clone(),
                uuid: g.uuid.clone(),
                memory_total_mib: g.memory_total_mib,
                memory_used_mib: g.memory_used_mib,
                utilization_pct: g.utilization_pct,
                processes: g
                    .foreign_processes
                    .iter()
                    .map(|(pid, mib)| GpuProcess { pid: *pid, used_memory_mib: *mib })
                    .collect(),
            })
            .collect();
        let foreign: Vec<u64> = req.gpus.iter().map(|g| g.foreign_used_mib).collect();
        let n = &mut st.nodes[node];
        let changed = !was_connected
            || fresh
            || n.cpus_total != req.cpus
            || n.inventory.len() != inventory.len()
            || n.foreign_used_mib != foreign
            || n.inventory.iter().zip(&inventory).any(|(a, b)| {
                a.memory_total_mib != b.memory_total_mib
                    || a.foreign_busy(&ctl.cfg.thresholds) != b.foreign_busy(&ctl.cfg.thresholds)
            });
        n.cpus_total = req.cpus;
        n.inventory = inventory;
        n.foreign_used_mib = foreign;
        let orphans = if fresh { st.attempts_on(node) } else { vec![] };
        if changed {
            st.nodes_changed();
            ctl.wake.notify_one();
        }
        (node, fresh || !was_connected, orphans)
    };
    for (id, n) in orphans {
        let reason = format!("node {} registered again: the attempt of its earlier session is lost", req.name);
        events::record_end(ctl, id, n, lost(reason)).await;
    }
    if fresh {
        persist(ctl, node).await;
        tracing::info!(node = %req.name, epoch = ctl.lock().nodes[node].remote.as_ref().map_or(0, |r| r.epoch), "agent registered");
    }
    Ok(node)
}

fn lost(reason: String) -> Outcome {
    Outcome { state: JobState::Lost, exit_code: None, signal: None, reason: Some(reason), started_at: None }
}

/// Writes what the controller keeps of a node (epoch, admin state, inventory) to the store.
pub async fn persist(ctl: &Arc<Controller>, node: usize) {
    let record = {
        let st = ctl.lock();
        let n = &st.nodes[node];
        let Some(r) = n.remote.as_ref() else { return };
        ravel_store::NodeRecord {
            name: n.name.clone(),
            cpus: n.cpus_total,
            gpus: n.gpu_records(),
            epoch: r.epoch,
            admin: n.admin.clone(),
            tags: r.tags.clone(),
            max_jobs: r.max_jobs,
            version: r.version.clone(),
            remote: true,
            last_seen: r.last_seen_ms.unwrap_or(0),
        }
    };
    if let Err(e) = ctl.store.register_node(record, now_ms()).await {
        tracing::warn!(error = %e, "cannot record a node");
    }
}

/// The attempts the controller wants on `node`; launch orders for those the agent has not
/// reported yet.
fn desired(ctl: &Controller, node: usize, reported: &HashSet<(JobId, u32)>) -> AgentSyncResponse {
    let st = ctl.lock();
    let remote = st.nodes[node].remote.as_ref();
    let mut desired: Vec<DesiredAttempt> = st
        .active
        .iter()
        .filter(|(_, a)| a.attempt > 0 && a.rank_on(node).is_some())
        .map(|(id, a)| {
            let key = (*id, a.attempt);
            let launch =
                if reported.contains(&key) { None } else { remote.and_then(|r| r.launches.get(&key).cloned()) };
            DesiredAttempt { job: *id, attempt: a.attempt, launch, kill: a.cancel_requested }
        })
        .collect();
    desired.sort_by_key(|d| (d.job, d.attempt));
    let timeout = ctl.cfg.cluster.as_ref().map_or(0, |c| c.node_timeout.as_millis() as u64);
    AgentSyncResponse { epoch: remote.map_or(0, |r| r.epoch), desired, acked: vec![], node_timeout_ms: timeout }
}

async fn mark_starting(ctl: &Controller, id: JobId, n: u32) {
    match ctl.store.mark_starting(id, n).await {
        Ok(_) | Err(ravel_store::StoreError::Conflict { .. }) => {}
        Err(e) => tracing::warn!(job = id, error = %e, "cannot record the start of a launch"),
    }
}

/// The agent started the attempt's supervisor.
async fn started(ctl: &Arc<Controller>, node: usize, id: JobId, n: u32, pid: i32, start: u64) {
    // Its `starting` first, should the agent's report have overtaken it (it is refused once
    // recorded, so it is never recorded twice).
    if ctl.lock().nodes[node].remote.as_ref().is_some_and(|r| r.marking.contains(&(id, n))) {
        mark_starting(ctl, id, n).await;
    }
    let first = {
        let mut st = ctl.lock();
        if let Some(r) = st.nodes[node].remote.as_mut() {
            r.launches.remove(&(id, n));
            r.offered.remove(&(id, n));
        }
        match st.active.get_mut(&id) {
            Some(a) if a.supervisor.is_none() => {
                a.supervisor = Some((pid, start));
                true
            }
            _ => false,
        }
    };
    if !first {
        return;
    }
    ctl.metrics.started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match ctl.store.mark_running(id, n, pid, start, now_ms()).await {
        Ok(job) => {
            let waited = (now_ms() - job.submitted_at).max(0) as u64;
            ctl.metrics.queue_wait.observe(Duration::from_millis(waited));
        }
        Err(ravel_store::StoreError::Conflict { .. }) => {}
        Err(e) => tracing::error!(job = id, error = %e, "cannot record start"),
    }
}

/// The agent reports the end of an attempt the controller holds on that node.
async fn ended(ctl: &Arc<Controller>, node: usize, id: JobId, n: u32, end: &AttemptEnd, requested: bool) {
    let gang_waits = {
        let mut st = ctl.lock();
        if let Some(r) = st.nodes[node].remote.as_mut() {
            r.launches.remove(&(id, n));
            r.offered.remove(&(id, n));
        }
        // A gang succeeds once every rank did; the first rank to end otherwise ends it (and
        // its other ranks are then killed: they are no longer wanted on their nodes).
        let ok = end.exit_code == Some(0) && !end.fenced && !end.vanished && !end.never_started && !requested;
        match st.active.get_mut(&id) {
            Some(a) if !a.ranks.is_empty() && ok => {
                if let Some(rank) = a.rank_on(node).filter(|r| !a.ranks_ended.contains(r)) {
                    a.ranks_ended.push(rank);
                }
                a.ranks_ended.len() <= a.ranks.len()
            }
            _ => false,
        }
    };
    if gang_waits {
        return;
    }
    if end.never_started && !requested {
        events::never_started(ctl, id, n).await;
        return;
    }
    let name = ctl.lock().nodes[node].name.clone();
    let outcome = if end.vanished {
        events::outcome(None, requested)
    } else if end.fenced {
        lost(format!("node {name} lost contact with the controller and killed the job (fenced)"))
    } else {
        let record = ravel_exec::ExitRecord {
            exit_code: end.exit_code,
            signal: end.signal,
            canceled: end.canceled,
            timed_out: end.timed_out,
            error: end.error.clone(),
            started_at_ms: end.started_at,
            finished_at_ms: now_ms(),
            oom_killed: end.oom_killed,
            fenced: false,
        };
        events::outcome(Some(&record), requested)
    };
    events::record_end(ctl, id, n, outcome).await;
}

/// `POST /v1/agent/logs`: a piece of an attempt's output, written into the controller's copy at
/// its offset (a piece sent twice is written twice to the same place). Returns the copy's size.
pub async fn logs(ctl: &Arc<Controller>, q: ravel_proto::AgentLogsQuery, bytes: Vec<u8>) -> Result<u64, ApiError> {
    let run_dir = {
        let st = ctl.lock();
        let node = st.node_index(&q.name).ok_or_else(|| ApiError::not_found(format!("no node {}", q.name)))?;
        let r = st.nodes[node].remote.as_ref().ok_or_else(|| ApiError::conflict("not an agent's node"))?;
        if r.epoch != q.epoch || r.lost {
            return Err(stale(q.epoch, r.epoch, &q.name));
        }
        let rank = st.active.get(&q.job).filter(|a| a.attempt == q.attempt).and_then(|a| Some((a, a.rank_on(node)?)));
        match rank {
            Some((a, rank)) => rank_dir(&a.run_dir, rank),
            None => {
                return Err(ApiError::conflict_code(
                    "stale_attempt",
                    format!("job {} attempt {} does not run on node {}", q.job, q.attempt, q.name),
                ));
            }
        }
    };
    let path = run_dir.join(q.stream.file_name());
    let offset = q.offset;
    tokio::task::spawn_blocking(move || write_at(&path, offset, &bytes))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
}

fn write_at(path: &std::path::Path, offset: u64, bytes: &[u8]) -> Result<u64, ApiError> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| ApiError::internal(format!("cannot open {}: {e}", path.display())))?;
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    if offset > size {
        return Err(ApiError::conflict_code(
            "log_gap",
            format!("offset {offset} is past the {size} bytes received: send from {size}"),
        ));
    }
    f.write_all_at(bytes, offset).map_err(|e| ApiError::internal(format!("cannot write {}: {e}", path.display())))?;
    Ok(size.max(offset + bytes.len() as u64))
}

/// Declares lost every node silent for the node timeout (counted from the controller's own
/// start for nodes not heard from since).
pub async fn monitor(ctl: Arc<Controller>) {
    let Some(cfg) = ctl.cfg.cluster.clone() else { return };
    let tick = (cfg.node_timeout / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let started = Instant::now();
    loop {
        tokio::time::sleep(tick).await;
        let due: Vec<usize> = {
            let st = ctl.lock();
            st.nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| {
                    n.remote.as_ref().is_some_and(|r| {
                        !r.lost && !r.removed && r.last_seen.unwrap_or(started).elapsed() >= cfg.node_timeout
                    })
                })
                .map(|(i, _)| i)
                .collect()
        };
        for node in due {
            node_lost(&ctl, node, cfg.node_timeout).await;
        }
    }
}

async fn node_lost(ctl: &Arc<Controller>, node: usize, timeout: Duration) {
    let (name, attempts) = {
        let mut st = ctl.lock();
        let Some(r) = st.nodes[node].remote.as_mut() else { return };
        r.lost = true;
        r.epoch += 1;
        r.launches.clear();
        r.offered.clear();
        r.wake.notify_waiters();
        // Every job with a rank there (a gang ends with any of its nodes).
        let attempts = st.attempts_on(node);
        st.nodes_changed();
        (st.nodes[node].name.clone(), attempts)
    };
    let reason = format!("node {name} lost: no contact for {}", humantime::format_duration(timeout));
    tracing::warn!(node = %name, jobs = attempts.len(), "{reason}");
    persist(ctl, node).await;
    for (id, n) in attempts {
        events::record_end(ctl, id, n, lost(reason.clone())).await;
    }
}

/// The nodes as `ravel nodes` shows them.
pub fn node_infos(ctl: &Controller) -> Vec<NodeInfo> {
    let st = ctl.lock();
    (0..st.nodes.len()).filter_map(|i| node_info(ctl, &st, i)).collect()
}

pub fn node_info(ctl: &Controller, st: &crate::state::State, i: usize) -> Option<NodeInfo> {
    let n = &st.nodes[i];
    if n.remote.as_ref().is_some_and(|r| r.removed) {
        return None;
    }
    let jobs = st.jobs_on(i) as u32;
    let gpus_free = st.gpu_counts(i, &ctl.cfg.thresholds).free as u32;
    let state = match &n.remote {
        None => "local".to_string(),
        Some(r) if r.lost => "lost".into(),
        Some(r) if r.last_seen.is_none() => "unknown".into(),
        Some(_) if n.admin == "draining" && jobs == 0 => "drained".into(),
        Some(_) => n.admin.clone(),
    };
    let r = n.remote.as_ref();
    Some(NodeInfo {
        name: n.name.clone(),
        state,
        gpus_total: n.inventory.len() as u32,
        gpus_free,
        cpus_total: n.cpus_total,
        cpus_used: st.cpus_used(i),
        jobs,
        last_seen: r.and_then(|r| r.last_seen_ms),
        version: r.map_or(env!("CARGO_PKG_VERSION").to_string(), |r| r.version.clone()),
        tags: r.map(|r| r.tags.clone()).unwrap_or_default(),
        max_jobs: r.and_then(|r| r.max_jobs),
        epoch: r.map_or(0, |r| r.epoch),
    })
}

/// `drain`, `undrain`, `cordon` and `rm` of a node.
pub async fn node_admin(ctl: &Arc<Controller>, name: &str, verb: &str) -> Result<NodeInfo, ApiError> {
    let (node, info) = {
        let mut st = ctl.lock();
        let i = st
            .node_index(name)
            .filter(|i| st.nodes[*i].remote.as_ref().is_some_and(|r| !r.removed))
            .ok_or_else(|| ApiError::not_found(format!("no node {name}: see `ravel nodes`")))?;
        match verb {
            "drain" => st.nodes[i].admin = "draining".into(),
            "cordon" => st.nodes[i].admin = "cordoned".into(),
            "undrain" => st.nodes[i].admin = "ready".into(),
            "rm" => {
                let jobs = st.jobs_on(i);
                if jobs > 0 {
                    return Err(ApiError::conflict(format!(
                        "node {name} still holds {jobs} job(s): drain it and wait, or cancel them, then remove it"
                    )));
                }
                if st.nodes[i].remote.as_ref().is_some_and(|r| r.connected()) && st.nodes[i].admin == "ready" {
                    return Err(ApiError::conflict(format!(
                        "node {name} is up and ready: drain or cordon it first (`ravel node drain {name}`) \
                         and stop its agent, or it comes back"
                    )));
                }
            }
            _ => return Err(ApiError::not_found(format!("no node action {verb:?}"))),
        }
        let info = node_info(ctl, &st, i);
        if verb == "rm"
            && let Some(r) = st.nodes[i].remote.as_mut()
        {
            r.removed = true;
            r.wake.notify_waiters();
        }
        st.nodes_changed();
        (i, info)
    };
    ctl.wake.notify_one();
    if verb == "rm" {
        if let Err(e) = ctl.store.remove_node(name.to_string()).await {
            return Err(ApiError::internal(format!("cannot remove node {name}: {e}")));
        }
    } else {
        persist(ctl, node).await;
    }
    info.ok_or_else(|| ApiError::internal("node vanished"))
}
