//! The controller's in-memory view of what waits and what holds resources.
//!
//! The store is the truth that survives; this is the fast index the scheduler reads. Finished
//! jobs are not kept here: memory grows with the active queue only.

use ravel_core::Millis;
use ravel_core::policy::{
    GpuSlot, Leftover, NodeView, PendingReason, Placement, QueueKey, QueuedJob, RunningJob, UserId, UserLimits,
    UserShare,
};
use ravel_core::{Job, JobId};
use ravel_gpu::{GpuInfo, Thresholds};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Instant;

/// Ends logged while a pass runs, past which the pass's leftover is dropped instead of credited.
pub const ENDED_DURING_PASS: usize = 256;

/// A node jobs run on: the local daemon's own, or one whose agent syncs with this controller.
#[derive(Debug, Clone)]
pub struct NodeState {
    pub name: String,
    pub cpus_total: u32,
    pub inventory: Vec<GpuInfo>,
    /// Per inventory entry: MiB used by processes that are not Ravel jobs.
    pub foreign_used_mib: Vec<u64>,
    /// `ready`, `draining` or `cordoned` (an admin's choice, kept in the store).
    pub admin: String,
    /// Set for a node run by an agent (cluster mode).
    pub remote: Option<crate::cluster::Remote>,
}

impl NodeState {
    pub fn local(name: String, cpus_total: u32) -> NodeState {
        NodeState {
            name,
            cpus_total,
            inventory: Vec::new(),
            foreign_used_mib: Vec::new(),
            admin: "ready".into(),
            remote: None,
        }
    }

    /// Its GPUs as the store keeps them.
    pub fn gpu_records(&self) -> Vec<ravel_store::GpuRecord> {
        self.inventory
            .iter()
            .map(|g| ravel_store::GpuRecord {
                index: g.index,
                name: g.name.clone(),
                uuid: g.uuid.clone(),
                memory_total_mib: g.memory_total_mib,
            })
            .collect()
    }

    /// Whether new jobs may be placed here.
    pub fn schedulable(&self) -> bool {
        self.admin == "ready" && self.remote.as_ref().is_none_or(|r| r.connected())
    }
}

/// A job that holds an attempt on a node.
#[derive(Debug, Clone)]
pub struct Active {
    /// Index of its node in `State::nodes`.
    pub node: usize,
    pub attempt: u32,
    pub gpus: Vec<u32>,
    pub gpu_mem_mib: Option<u64>,
    pub cpus: u32,
    pub run_dir: PathBuf,
    /// Known once the supervisor started.
    pub supervisor: Option<(i32, u64)>,
    pub cancel_requested: bool,
    pub user: UserId,
    /// Start + time limit, once started with a limit.
    pub ends_by: Option<Millis>,
    pub array: Option<JobId>,
    pub started_at: Millis,
    /// A gang's other ranks (rank 1, 2, ...): node index and GPUs each. Rank 0 is `node`/`gpus`.
    pub ranks: Vec<(usize, Vec<u32>)>,
    /// Ranks whose end was reported (a gang succeeds once all of them did).
    pub ranks_ended: Vec<usize>,
    /// Local mode, while `start_attempt` records the attempt: closed (its sender dropped) once
    /// it has recorded it running or given up. A fast job's end may be reported before that;
    /// it is recorded after, so the attempt's `running` is never skipped.
    pub starting: Option<tokio::sync::watch::Receiver<()>>,
}

impl Active {
    /// Each rank's node and GPUs, rank 0 first (one rank for all but gangs).
    pub fn all_ranks(&self) -> impl Iterator<Item = (usize, &[u32])> + '_ {
        std::iter::once((self.node, &self.gpus[..])).chain(self.ranks.iter().map(|(n, g)| (*n, &g[..])))
    }

    /// What it holds on `node`: the GPUs of each of its ranks there.
    pub fn on(&self, node: usize) -> impl Iterator<Item = &[u32]> + '_ {
        self.all_ranks().filter(move |(n, _)| *n == node).map(|(_, g)| g)
    }

    /// The rank it runs on `node`, if any.
    pub fn rank_on(&self, node: usize) -> Option<usize> {
        if self.node == node {
            return Some(0);
        }
        self.ranks.iter().position(|(n, _)| *n == node).map(|i| i + 1)
    }

    /// The scheduler's view of it.
    pub fn running(&self, id: JobId) -> RunningJob {
        RunningJob {
            job: id,
            user: self.user,
            gpus: self.gpus.clone(),
            gpu_mem_mib: self.gpu_mem_mib,
            cpus: self.cpus,
            ends_by: self.ends_by,
            array: self.array,
        }
    }

    /// What a job holds once placed (`p.node` is the state's node index), before its attempt is
    /// recorded.
    pub fn placed(p: &Placement, q: &QueuedJob, now: Millis) -> Active {
        Active {
            node: p.node,
            attempt: 0,
            gpus: p.gpus.clone(),
            gpu_mem_mib: p.gpu_mem_mib,
            cpus: p.cpus,
            run_dir: PathBuf::new(),
            supervisor: None,
            cancel_requested: false,
            user: q.user,
            ends_by: q.timeout_ms.map(|t| now + t as i64),
            array: q.array.map(|(a, _)| a),
            started_at: now,
            ranks: Vec::new(),
            ranks_ended: Vec::new(),
            starting: None,
        }
    }
}

/// A queued or blocked job that is not eligible yet, and what it waits for.
#[derive(Debug, Clone)]
pub struct Parked {
    pub job: QueuedJob,
    pub after: Vec<JobId>,
    pub after_any: Vec<JobId>,
    pub held: bool,
    pub not_before: Option<Millis>,
    pub reason: PendingReason,
}

/// Users interned to small ids, with their fair-share standing and limits.
#[derive(Default)]
pub struct Users {
    names: Vec<String>,
    ids: HashMap<String, UserId>,
    pub shares: Vec<UserShare>,
    /// Time the usages were last decayed to.
    decayed_to: Millis,
    /// The limits as configured (`limits.json`, `ravel admin limits`).
    pub limits_cfg: ravel_proto::LimitsConfig,
    /// What the policy enforces, per user id.
    pub limits: Vec<UserLimits>,
}

impl Users {
    pub fn id(&mut self, name: Option<&str>, weight: impl Fn(&str) -> f64) -> UserId {
        let name = name.unwrap_or("-");
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = self.names.len() as UserId;
        self.names.push(name.to_string());
        self.ids.insert(name.to_string(), id);
        self.shares.push(UserShare { weight: weight(name), usage: 0.0 });
        self.limits.push(crate::limits::policy_limits(self.limits_cfg.for_user(name)));
        id
    }

    pub fn lookup(&self, name: &str) -> Option<UserId> {
        self.ids.get(name).copied()
    }

    pub fn name(&self, id: UserId) -> &str {
        self.names.get(id as usize).map_or("-", |n| n.as_str())
    }

    /// Applies changed limits to every known user.
    pub fn set_limits(&mut self, cfg: ravel_proto::LimitsConfig) {
        self.limits = self.names.iter().map(|n| crate::limits::policy_limits(cfg.for_user(n))).collect();
        self.limits_cfg = cfg;
    }

    /// The limits the policy enforces for `id`, if it has any.
    pub fn limits_of(&self, id: UserId) -> Option<UserLimits> {
        self.limits.get(id as usize).copied().filter(|l| !l.is_none())
    }

    /// Decays every usage to `now` with half-life `half_life_ms`.
    pub fn decay(&mut self, now: Millis, half_life_ms: f64) {
        let dt = (now - self.decayed_to).max(0) as f64;
        if dt > 0.0 && half_life_ms > 0.0 {
            let f = 0.5f64.powf(dt / half_life_ms);
            for s in &mut self.shares {
                s.usage *= f;
            }
        }
        self.decayed_to = self.decayed_to.max(now);
    }

    /// Adds `gpu_seconds` of use that ended at `at` (decayed from then to now).
    pub fn charge(&mut self, user: UserId, gpu_seconds: f64, at: Millis, half_life_ms: f64) {
        let age = (self.decayed_to - at).max(0) as f64;
        let f = if half_life_ms > 0.0 { 0.5f64.powf(age / half_life_ms) } else { 1.0 };
        if let Some(s) = self.shares.get_mut(user as usize) {
            s.usage += gpu_seconds * f;
        }
    }
}

/// A node's GPUs by how they stand (`State::gpu_counts`).
pub struct GpuCounts {
    pub allocated: usize,
    pub free: usize,
    pub foreign_busy: usize,
}

/// Who is on a GPU: the job holding it whole, and the jobs sharing it with their reservations (MiB).
pub type GpuUse = (Option<JobId>, Vec<(JobId, u64)>);

pub struct State {
    /// Eligible jobs in queue order.
    pub queue: BTreeMap<QueueKey, QueuedJob>,
    pub queued_keys: HashMap<JobId, QueueKey>,
    /// Jobs waiting for a release, a time, or dependencies.
    pub parked: HashMap<JobId, Parked>,
    /// Parked jobs with a time to wake at.
    pub timers: BTreeSet<(Millis, JobId)>,
    /// Dependency → parked jobs that wait for it.
    pub waiting_on: HashMap<JobId, Vec<JobId>>,
    /// Reasons from the last pass, in the order it considered the jobs (position = index + 1).
    /// Indexed lazily: passes are frequent, questions about one job rare.
    pub pending_list: Vec<(JobId, PendingReason)>,
    pending_index: std::sync::OnceLock<HashMap<JobId, u32>>,
    /// Bumped whenever something is taken or the nodes change (placements, inventory, limits):
    /// a pass computed without the lock is applied only if nothing was meanwhile.
    pub generation: u64,
    /// Bumped on every release. A pass is still sound after releases (it used only what was
    /// free before them: as if they had come just after it), but its leftover misses what they
    /// freed, so it is not kept.
    pub released: u64,
    /// What the last pass left neither placed nor reserved, for placing a newly eligible job at
    /// once (`policy::place_fast`). Gone when anything else changes: a job ends and its end
    /// cannot be credited (`policy::credit_end`), a job enters or leaves the queue without being
    /// placed, the inventory or the limits change. While it stands, a pass would start no
    /// waiting job (`scheduler::pass` relies on it).
    pub leftover: Option<Leftover>,
    /// The state's node index of each node of the leftover (the pass saw schedulable nodes only).
    pub leftover_nodes: Vec<usize>,
    /// Jobs that entered the queue since the running pass took its snapshot: to that pass they
    /// are new jobs, which its leftover may place at once when it ends.
    pub arrived: Vec<JobId>,
    /// While a pass runs (from its snapshot on): the jobs released since, each with the node it
    /// ran on (the state's index), or `None` for a gang's (never credited); at most
    /// [`ENDED_DURING_PASS`]. The pass's leftover is kept if each can be credited to it, as ends
    /// that came just after the pass ([`State::credit_ended_during_pass`]).
    pub ended_during_pass: Option<Vec<Option<(usize, RunningJob)>>>,
    /// Something changed since the last pass took its snapshot; the periodic pass is skipped
    /// when nothing did (a pass over a long queue is not free).
    pub dirty: bool,
    pub estimates: HashMap<JobId, Millis>,
    pub active: HashMap<JobId, Active>,
    /// Node choices of waiting jobs that made one (`--node`, `--tags`, `--nodes`).
    pub job_rules: HashMap<JobId, ravel_core::policy::JobRule>,
    /// The nodes: in local mode just the daemon's own (index 0); in cluster mode the agents'.
    /// Never shrinks while the controller runs (a removed node stays, empty and unschedulable).
    pub nodes: Vec<NodeState>,
    pub probe_error: Option<String>,
    pub last_probe: Option<Instant>,
    /// A GPU was released since the last probe: its last reading may show the finished job's
    /// own use as if it were foreign, so re-probe before trusting it.
    pub released_since_probe: bool,
    /// False once a shutdown started: no new submissions, no new launches.
    pub accepting: bool,
    pub users: Users,
    /// Users with jobs the last pass left waiting on their user limit: when one of their jobs
    /// ends, those may start, so what it frees cannot go to the leftover.
    pub limited_users: std::collections::HashSet<UserId>,
    /// Problems seen per running job (GPU checks), already reported once each.
    pub flags: HashMap<JobId, Vec<crate::gputruth::Flag>>,
    pub idle_since: crate::gputruth::IdleSince,
    /// Recent utilization samples per inventory entry (the web UI's GPU page), oldest first.
    pub gpu_history: std::collections::VecDeque<(Millis, Vec<u32>)>,
}

impl State {
    pub fn new(nodes: Vec<NodeState>) -> State {
        State {
            queue: BTreeMap::new(),
            queued_keys: HashMap::new(),
            parked: HashMap::new(),
            timers: BTreeSet::new(),
            waiting_on: HashMap::new(),
            pending_list: Vec::new(),
            pending_index: std::sync::OnceLock::new(),
            generation: 0,
            released: 0,
            leftover: None,
            leftover_nodes: Vec::new(),
            arrived: Vec::new(),
            ended_during_pass: None,
            dirty: false,
            estimates: HashMap::new(),
            active: HashMap::new(),
            job_rules: HashMap::new(),
            nodes,
            probe_error: None,
            last_probe: None,
            released_since_probe: false,
            accepting: true,
            users: Users::default(),
            limited_users: Default::default(),
            flags: HashMap::new(),
            idle_since: Default::default(),
            gpu_history: Default::default(),
        }
    }

    pub fn enqueue(&mut self, job: QueuedJob) {
        let key = job.order_key();
        self.queued_keys.insert(job.id, key);
        self.arrived.push(job.id);
        self.dirty = true;
        self.queue.insert(key, job);
        // The next pass may give it what the last one left over.
        self.leftover = None;
    }

    /// Takes a job out of the eligible queue.
    pub fn dequeue(&mut self, id: JobId) -> Option<QueuedJob> {
        self.estimates.remove(&id);
        let key = self.queued_keys.remove(&id)?;
        self.queue.remove(&key)
    }

    pub fn park(&mut self, p: Parked) {
        let id = p.job.id;
        self.unpark(id);
        if let Some(t) = p.not_before.filter(|_| matches!(p.reason, PendingReason::BeginTime { .. })) {
            self.timers.insert((t, id));
        }
        if let PendingReason::Dependency { job } = p.reason {
            self.waiting_on.entry(job).or_default().push(id);
        }
        self.parked.insert(id, p);
    }

    pub fn unpark(&mut self, id: JobId) -> Option<Parked> {
        let p = self.parked.remove(&id)?;
        if let Some(t) = p.not_before {
            self.timers.remove(&(t, id));
        }
        if let PendingReason::Dependency { job } = p.reason
            && let Some(list) = self.waiting_on.get_mut(&job)
        {
            list.retain(|j| *j != id);
            if list.is_empty() {
                self.waiting_on.remove(&job);
            }
        }
        Some(p)
    }

    /// Takes a job out of wherever it waits (eligible queue or parked).
    pub fn forget_waiting(&mut self, id: JobId) -> Option<QueuedJob> {
        self.job_rules.remove(&id);
        if let Some(q) = self.dequeue(id) {
            // It may have held resources for itself, or been in the way of a job that waits for
            // them: a pass may now start jobs the leftover knows nothing of.
            self.leftover = None;
            self.dirty = true;
            return Some(q);
        }
        self.unpark(id).map(|p| p.job)
    }

    /// Marks resources as held by `id` (a placement, or an attempt re-adopted at start).
    pub fn hold(&mut self, id: JobId, active: Active) {
        self.generation += 1;
        self.active.insert(id, active);
    }

    pub fn release(&mut self, id: JobId) -> Option<Active> {
        let a = self.active.remove(&id)?;
        self.released += 1;
        self.dirty = true;
        // What it frees may go straight back to the leftover when provably no waiting job
        // could use it (`policy::credit_end`); otherwise the next pass decides.
        // A job of a user with jobs waiting on that user's limit: those may start now.
        self.job_rules.remove(&id);
        // A gang's ranks are not credited: the next pass looks again.
        let credited = a.ranks.is_empty()
            && self
                .leftover
                .as_mut()
                .is_some_and(|l| credit(l, &self.leftover_nodes, &self.limited_users, a.node, &a.running(id)));
        if let Some(log) = self.ended_during_pass.as_mut().filter(|l| l.len() < ENDED_DURING_PASS) {
            log.push(a.ranks.is_empty().then(|| (a.node, a.running(id))));
        }
        if !credited {
            self.leftover = None;
        }
        if !a.gpus.is_empty() && a.node == 0 {
            self.released_since_probe = true;
        }
        self.flags.remove(&id);
        Some(a)
    }

    pub fn cpus_used(&self, node: usize) -> u32 {
        self.active.values().map(|a| a.on(node).count() as u32 * a.cpus).sum()
    }

    /// The attempts (job, attempt) holding something on `node` (a gang's ranks included).
    pub fn attempts_on(&self, node: usize) -> Vec<(JobId, u32)> {
        self.active
            .iter()
            .filter(|(_, a)| a.attempt > 0 && a.rank_on(node).is_some())
            .map(|(id, a)| (*id, a.attempt))
            .collect()
    }

    /// How `node`'s GPUs stand: held by Ravel jobs, free, and kept busy by use outside Ravel.
    pub fn gpu_counts(&self, node: usize, t: &Thresholds) -> GpuCounts {
        let n = &self.nodes[node];
        let used = self.gpu_use(node);
        let allocated = used.len().min(n.inventory.len());
        let foreign_busy =
            n.inventory.iter().filter(|g| !used.contains_key(&g.index) && g.foreign_busy(t).is_some()).count();
        GpuCounts { allocated, free: n.inventory.len() - allocated - foreign_busy, foreign_busy }
    }

    /// Jobs (ranks) holding something on `node`.
    pub fn jobs_on(&self, node: usize) -> usize {
        self.active.values().map(|a| a.on(node).count()).sum()
    }

    /// Jobs on each GPU index of `node` (GPUs without any are absent).
    pub fn gpu_use(&self, node: usize) -> HashMap<u32, GpuUse> {
        let mut m: HashMap<u32, GpuUse> = HashMap::new();
        for (id, a) in &self.active {
            for g in a.on(node).flatten() {
                let e = m.entry(*g).or_default();
                match a.gpu_mem_mib {
                    Some(mib) => e.1.push((*id, mib)),
                    None => e.0 = Some(*id),
                }
            }
        }
        for e in m.values_mut() {
            e.1.sort();
        }
        m
    }

    /// The schedulable nodes as the scheduler sees them, and each one's index in `nodes`. One
    /// sweep over the jobs for all nodes: with hundreds of nodes, a sweep per node was most of a
    /// pass's time under the lock.
    pub fn node_views(&self, t: &Thresholds) -> (Vec<NodeView>, Vec<usize>) {
        let ids: Vec<usize> = (0..self.nodes.len()).filter(|i| self.nodes[*i].schedulable()).collect();
        let mut slot = vec![usize::MAX; self.nodes.len()];
        for (k, i) in ids.iter().enumerate() {
            slot[*i] = k;
        }
        let mut running: Vec<Vec<RunningJob>> = vec![Vec::new(); ids.len()];
        let mut cpus: Vec<u32> = vec![0; ids.len()];
        for (id, a) in &self.active {
            for (node, gpus) in a.all_ranks() {
                let Some(&k) = slot.get(node).filter(|k| **k != usize::MAX) else { continue };
                cpus[k] += a.cpus;
                running[k].push(RunningJob { gpus: gpus.to_vec(), ..a.running(*id) });
            }
        }
        let views = ids
            .iter()
            .zip(running.into_iter().zip(cpus))
            .map(|(&i, (mut running, cpus_used))| {
                running.sort_by_key(|r| r.job);
                self.view_of(i, t, running, cpus_used)
            })
            .collect();
        (views, ids)
    }

    /// A node's view from its running jobs (sorted by id) and the CPUs they hold.
    fn view_of(&self, node: usize, t: &Thresholds, running: Vec<RunningJob>, cpus_used: u32) -> NodeView {
        let n = &self.nodes[node];
        let mut used: HashMap<u32, GpuUse> = HashMap::new();
        for r in &running {
            for g in &r.gpus {
                let e = used.entry(*g).or_default();
                match r.gpu_mem_mib {
                    Some(mib) => e.1.push((r.job, mib)),
                    None => e.0 = Some(r.job),
                }
            }
        }
        let gpus = n
            .inventory
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let (whole, shared) = used.remove(&g.index).unwrap_or_default();
                let ours = whole.is_some() || !shared.is_empty();
                GpuSlot {
                    index: g.index,
                    memory_total_mib: g.memory_total_mib,
                    foreign_used_mib: n.foreign_used_mib.get(i).copied().unwrap_or(0),
                    foreign_busy: !ours && g.foreign_busy(t).is_some(),
                    whole,
                    shared,
                }
            })
            .collect();
        NodeView { name: n.name.clone(), gpus, cpus_total: n.cpus_total, cpus_used, running }
    }

    /// The index of the node called `name`.
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Something about the nodes changed (one joined, left, was drained, or its inventory
    /// changed): placements computed before are void.
    pub fn nodes_changed(&mut self) {
        self.generation += 1;
        self.leftover = None;
        self.dirty = true;
    }

    /// The Ravel job a GPU process belongs to: the one whose supervisor leads its session.
    pub fn job_of_process(&self, pid: u32) -> Option<JobId> {
        let session = ravel_exec::procfs::read_stat(pid as i32)?.session;
        self.active.iter().find(|(_, a)| a.supervisor.is_some_and(|(s, _)| s == session)).map(|(id, _)| *id)
    }

    /// GPUs with at least one Ravel job on them, over all nodes.
    pub fn gpus_in_use(&self) -> usize {
        (0..self.nodes.len()).map(|n| self.gpu_use(n).len()).sum()
    }

    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.active.is_empty() && self.parked.is_empty()
    }

    /// True if `id` waits or holds an attempt.
    pub fn is_live(&self, id: JobId) -> bool {
        self.queued_keys.contains_key(&id) || self.active.contains_key(&id) || self.parked.contains_key(&id)
    }

    /// Why `id` waits, and its position, if it waits.
    pub fn pending(&self, id: JobId) -> Option<(PendingReason, Option<u32>)> {
        if let Some(p) = self.parked.get(&id) {
            return Some((p.reason.clone(), None));
        }
        if !self.queued_keys.contains_key(&id) {
            return None;
        }
        let index = self
            .pending_index
            .get_or_init(|| self.pending_list.iter().enumerate().map(|(i, (id, _))| (*id, i as u32)).collect());
        Some(match index.get(&id) {
            Some(i) => (self.pending_list[*i as usize].1.clone(), Some(i + 1)),
            // Submitted after the last pass.
            None => (PendingReason::NotYetScheduled, None),
        })
    }

    /// A reason as people read it: GPU-busy reasons say who keeps the GPU busy, user limits name
    /// the user, times are dates.
    pub fn describe(&self, r: &PendingReason, thresholds: &Thresholds) -> String {
        match r {
            PendingReason::BeginTime { at } => format!("Begin time: not before {}", crate::timestamp(*at)),
            PendingReason::UserLimit { user, hit } => format!("User limit: {} {hit}", self.users.name(*user)),
            PendingReason::GpuBusy { index, need_gpus, free_gpus } => {
                let why = self
                    .nodes
                    .iter()
                    .flat_map(|n| &n.inventory)
                    .find(|g| g.index == *index)
                    .and_then(|g| g.foreign_busy(thresholds).or(Some("foreign use".into())))
                    .unwrap_or_default();
                let s = if *need_gpus == 1 { "" } else { "s" };
                format!("GPU {index} busy: {why} (needs {need_gpus} GPU{s}, {free_gpus} free)")
            }
            r => r.to_string(),
        }
    }

    /// Places a newly eligible job without a pass when the last pass's leftover allows it
    /// exactly as a full pass would (see `policy::place_fast`).
    pub fn place_fast(&mut self, q: &QueuedJob) -> Option<Placement> {
        // A limited user's job may start without a pass only within the user's limits; a full
        // pass, seeing the same use, would then place it too (the leftover keeps anything an
        // older waiting job could take).
        if self.job_rules.contains_key(&q.id) {
            return None;
        }
        if let Some(limits) = self.users.limits_of(q.user) {
            let mine = self.active.values().filter(|a| a.user == q.user);
            let (gpus, jobs) = mine.fold((0, 0), |(g, j), a| (g + a.gpus.len() as u32, j + 1));
            if limits.exceeded_by(gpus, jobs, q.gpus).is_some() {
                return None;
            }
        }
        let mut p = ravel_core::policy::place_fast(self.leftover.as_mut()?, q)?;
        p.node = self.leftover_nodes[p.node];
        Some(p)
    }

    /// Credits to `leftover` (a pass's, whose nodes are the state's `ids`) the jobs released
    /// while that pass ran, as if they had ended just after it: true if each could be, and the
    /// leftover may then be kept. Called after the pass's placements are held and its
    /// [`set_pending`](Self::set_pending): whether a user's jobs wait on their limit is the
    /// pass's view. A job released during the pass was running in its snapshot: a placement
    /// made meanwhile would have voided the pass (`generation`).
    /// `ended` is [`ended_during_pass`](Self::ended_during_pass), taken; `released` the count
    /// at the snapshot.
    pub fn credit_ended_during_pass(
        &self,
        ended: Option<Vec<Option<(usize, RunningJob)>>>,
        leftover: &mut Leftover,
        ids: &[usize],
        released: u64,
    ) -> bool {
        let Some(log) = ended else { return false };
        // Every release since the snapshot is in the log, unless there were too many.
        if log.len() as u64 != self.released - released {
            return false;
        }
        log.into_iter()
            .all(|ended| ended.is_some_and(|(node, job)| credit(leftover, ids, &self.limited_users, node, &job)))
    }

    /// Records a pass's reasons.
    pub fn set_pending(&mut self, list: Vec<(JobId, PendingReason)>) {
        self.limited_users.clear();
        if self.users.limits.iter().any(|l| !l.is_none()) {
            for (_, r) in &list {
                if let PendingReason::UserLimit { user, .. } = r {
                    self.limited_users.insert(*user);
                }
            }
        }
        self.pending_list = list;
        self.pending_index = std::sync::OnceLock::new();
    }
}

/// Credits to `leftover` (whose nodes are the state's `nodes`) what `job`, ended on the state's
/// node `node`, freed: false, crediting nothing, for a user with jobs waiting on their limit
/// (those may start now) or a node the leftover does not cover (`policy::credit_end` decides
/// the rest).
fn credit(
    leftover: &mut Leftover,
    nodes: &[usize],
    limited: &std::collections::HashSet<UserId>,
    node: usize,
    job: &RunningJob,
) -> bool {
    !limited.contains(&job.user)
        && nodes.iter().position(|n| *n == node).is_some_and(|i| ravel_core::policy::credit_end(leftover, job, i))
}

/// The scheduler's view of a job record.
pub fn queued_job(job: &Job, user: UserId) -> QueuedJob {
    QueuedJob {
        id: job.id,
        priority: job.spec.priority,
        submitted_at: job.submitted_at,
        user,
        gpus: job.spec.gpus,
        gpu_mem_mib: job.spec.gpu_mem_mib,
        cpus: job.spec.cpus,
        timeout_ms: job.spec.timeout_ms,
        array: job.array_id.map(|a| (a, job.spec.array_limit.unwrap_or(u32::MAX))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ravel_core::policy::{Snapshot, schedule};

    fn job(id: JobId, gpus: u32) -> QueuedJob {
        QueuedJob {
            id,
            priority: 0,
            submitted_at: id as Millis,
            user: 0,
            gpus,
            gpu_mem_mib: None,
            cpus: 1,
            timeout_ms: None,
            array: None,
        }
    }

    /// One node (1 GPU, 8 CPUs): job 1 holds the GPU, jobs 2 and 3 a CPU each, and GPU jobs 10
    /// and 11 wait for the GPU.
    fn busy_node() -> State {
        let gpu = GpuInfo {
            index: 0,
            name: "fake".into(),
            uuid: None,
            memory_total_mib: 16_000,
            memory_used_mib: 0,
            utilization_pct: 0,
            processes: Vec::new(),
        };
        let node = NodeState {
            name: "local".into(),
            cpus_total: 8,
            inventory: vec![gpu],
            foreign_used_mib: vec![0],
            admin: "ready".into(),
            remote: None,
        };
        let mut st = State::new(vec![node]);
        for (id, gpus) in [(1, vec![0]), (2, vec![]), (3, vec![])] {
            let q = job(id, gpus.len() as u32);
            let p = Placement { job: id, node: 0, gpus, gpu_mem_mib: None, cpus: 1 };
            st.hold(id, Active::placed(&p, &q, 0));
        }
        st.enqueue(job(10, 1));
        st.enqueue(job(11, 1));
        st
    }

    /// A full pass on the state as it is: its leftover and its nodes (the state's indices).
    fn pass(st: &State) -> (Leftover, Vec<usize>) {
        let (nodes, ids) = st.node_views(&Thresholds::default());
        let queue: Vec<QueuedJob> = st.queue.values().cloned().collect();
        let snap = Snapshot {
            now: 0,
            nodes: &nodes,
            queue: &queue,
            users: &st.users.shares,
            limits: &st.users.limits,
            rules: None,
        };
        let d = schedule(&snap);
        assert!(d.placements.is_empty(), "the GPU jobs wait for the held GPU");
        (d.leftover, ids)
    }

    /// Releases `ids` as if while a pass ran; returns the log the pass then takes.
    fn release_during_pass(st: &mut State, ids: &[JobId]) -> Option<Vec<Option<(usize, RunningJob)>>> {
        st.ended_during_pass = Some(Vec::new());
        for id in ids {
            st.release(*id).expect("held");
        }
        st.ended_during_pass.take()
    }

    #[test]
    fn ends_during_a_pass_are_credited_to_its_leftover() {
        let mut st = busy_node();
        let (mut leftover, ids) = pass(&st);
        let before = leftover.nodes[0].cpus;
        let released = st.released;
        let ended = release_during_pass(&mut st, &[2, 3]);
        assert!(st.credit_ended_during_pass(ended, &mut leftover, &ids, released));
        assert_eq!(leftover.nodes[0].cpus, before + 2, "both CPUs go to the leftover");
    }

    #[test]
    fn an_end_that_cannot_be_credited_drops_the_leftover() {
        // The GPU's holder: the GPU jobs waiting could start once it ends.
        let mut st = busy_node();
        let (mut leftover, ids) = pass(&st);
        let released = st.released;
        let ended = release_during_pass(&mut st, &[2, 1]);
        assert!(!st.credit_ended_during_pass(ended, &mut leftover, &ids, released));

        // A gang's end is never credited.
        let mut st = busy_node();
        st.active.get_mut(&3).unwrap().ranks.push((0, Vec::new()));
        let (mut leftover, ids) = pass(&st);
        let released = st.released;
        let ended = release_during_pass(&mut st, &[3]);
        assert_eq!(ended.as_deref().map(|l| l[0].is_none()), Some(true));
        assert!(!st.credit_ended_during_pass(ended, &mut leftover, &ids, released));

        // A user with jobs waiting on their limit (in the pass's view): those may start now.
        let mut st = busy_node();
        let (mut leftover, ids) = pass(&st);
        let released = st.released;
        let ended = release_during_pass(&mut st, &[2]);
        st.limited_users.insert(0);
        assert!(!st.credit_ended_during_pass(ended, &mut leftover, &ids, released));
    }

    #[test]
    fn a_job_leaving_the_queue_unplaced_drops_the_leftover() {
        // Job 10 holds the node's spare CPU for itself; canceled or held, it frees it for others.
        let mut st = busy_node();
        st.leftover = Some(pass(&st).0);
        st.dirty = false;
        assert!(st.forget_waiting(10).is_some());
        assert!(st.leftover.is_none() && st.dirty);
        // A parked job was in no one's way.
        let mut st = busy_node();
        let parked = job(12, 1);
        st.park(Parked {
            job: parked,
            after: Vec::new(),
            after_any: Vec::new(),
            held: true,
            not_before: None,
            reason: PendingReason::Held,
        });
        st.leftover = Some(pass(&st).0);
        st.dirty = false;
        assert!(st.forget_waiting(12).is_some());
        assert!(st.leftover.is_some() && !st.dirty);
    }

    #[test]
    fn a_release_missing_from_the_log_drops_the_leftover() {
        let mut st = busy_node();
        let (mut leftover, ids) = pass(&st);
        let released = st.released;
        // Released before the log started: not as if just after the pass.
        st.release(2).expect("held");
        let ended = release_during_pass(&mut st, &[3]);
        assert!(!st.credit_ended_during_pass(ended, &mut leftover, &ids, released));
        // No log at all.
        let mut st = busy_node();
        let (mut leftover, ids) = pass(&st);
        let released = st.released;
        st.release(2).expect("held");
        assert!(!st.credit_ended_during_pass(None, &mut leftover, &ids, released));
        // Past the log's bound.
        let mut st = busy_node();
        let (mut leftover, ids) = pass(&st);
        let released = st.released;
        st.ended_during_pass = Some(vec![None; ENDED_DURING_PASS]);
        st.release(2).expect("held");
        let ended = st.ended_during_pass.take();
        assert_eq!(ended.as_ref().map(Vec::len), Some(ENDED_DURING_PASS));
        assert!(!st.credit_ended_during_pass(ended, &mut leftover, &ids, released));
    }
}
