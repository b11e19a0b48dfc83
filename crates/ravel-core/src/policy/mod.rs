//! The scheduling policy, second version: GPU-memory packing, fair share between users,
//! backfill under time limits, array concurrency limits, pending reasons with queue positions and
//! estimated start times. A pure function from a [`Snapshot`] to [`Decisions`].
//!
//! Eligibility that does not depend on resources (held, begin time, dependencies) is decided by
//! [`eligibility`]; only eligible jobs reach [`schedule`].

mod eligibility;
mod schedule;

pub use eligibility::{DepState, Eligibility, eligibility};
pub use schedule::{credit_end, place_fast, schedule};

use crate::job::{JobId, Millis};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Users are interned to small integers by the caller; `Snapshot::users[u]` describes user `u`.
pub type UserId = u32;

/// One GPU as the scheduler sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuSlot {
    pub index: u32,
    pub memory_total_mib: u64,
    /// Memory used by processes that are not Ravel jobs.
    pub foreign_used_mib: u64,
    /// Someone outside Ravel keeps it busy (utilization or memory above the thresholds). The
    /// caller sets this only for GPUs no Ravel job is on: with a Ravel job on it, activity cannot
    /// be told apart, and memory is accounted exactly through `foreign_used_mib` instead.
    pub foreign_busy: bool,
    /// A whole-GPU Ravel job holds it.
    pub whole: Option<JobId>,
    /// Memory reservations of Ravel jobs sharing it: (job, MiB).
    pub shared: Vec<(JobId, u64)>,
}

impl GpuSlot {
    /// MiB a new memory reservation may still take.
    pub fn free_mib(&self) -> u64 {
        let reserved: u64 = self.shared.iter().map(|(_, m)| m).sum();
        self.memory_total_mib.saturating_sub(self.foreign_used_mib).saturating_sub(reserved)
    }

    /// Free for a whole-GPU job: no Ravel job of any kind on it, and not busy with foreign use.
    pub fn is_free_whole(&self) -> bool {
        self.whole.is_none() && self.shared.is_empty() && !self.foreign_busy
    }

    /// Can take a reservation of `mib`: no whole-GPU job, not foreign-busy, and the memory fits.
    pub fn fits_mib(&self, mib: u64) -> bool {
        self.whole.is_none() && !self.foreign_busy && self.free_mib() >= mib
    }
}

/// A job holding resources on a node.
#[derive(Clone, Debug, PartialEq)]
pub struct RunningJob {
    pub job: JobId,
    pub user: UserId,
    pub gpus: Vec<u32>,
    /// Per-GPU reservation, if it shares GPUs.
    pub gpu_mem_mib: Option<u64>,
    pub cpus: u32,
    /// `started_at + timeout`, when it has a time limit; `None` means it may run forever.
    pub ends_by: Option<Millis>,
    pub array: Option<JobId>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NodeView {
    pub name: String,
    pub gpus: Vec<GpuSlot>,
    pub cpus_total: u32,
    /// Must equal the sum of `running[].cpus`.
    pub cpus_used: u32,
    pub running: Vec<RunningJob>,
}

/// What the scheduler needs to know about an eligible queued job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedJob {
    pub id: JobId,
    pub priority: i32,
    pub submitted_at: Millis,
    pub user: UserId,
    pub gpus: u32,
    /// Per-GPU memory reservation: the job shares GPUs instead of taking whole ones.
    pub gpu_mem_mib: Option<u64>,
    pub cpus: u32,
    pub timeout_ms: Option<u64>,
    /// Array id and the most elements of that array that may run at once.
    pub array: Option<(JobId, u32)>,
}

impl QueuedJob {
    /// Priority desc, then submit time, then id. Fair share reorders within a priority level.
    pub fn order_key(&self) -> QueueKey {
        QueueKey { neg_priority: -(self.priority as i64), submitted_at: self.submitted_at, id: self.id }
    }
}

/// Total order of the queue before fair share; `BTreeMap<QueueKey, _>` iterates in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueKey {
    pub neg_priority: i64,
    pub submitted_at: Millis,
    pub id: JobId,
}

/// A user's standing for fair share.
#[derive(Clone, Debug, PartialEq)]
pub struct UserShare {
    /// Relative weight (default 1.0): a user with weight 2 is entitled to twice the share.
    pub weight: f64,
    /// Decayed recent usage in GPU-seconds (see docs/scheduling.md for the decay).
    pub usage: f64,
}

/// The most a user may hold at once (a shared box's per-user limits). `None`: no limit.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserLimits {
    /// GPUs held by the user's running jobs (a memory-sharing job counts each GPU it uses).
    pub max_gpus: Option<u32>,
    /// Jobs of the user holding an attempt.
    pub max_running: Option<u32>,
}

impl UserLimits {
    pub fn is_none(&self) -> bool {
        self.max_gpus.is_none() && self.max_running.is_none()
    }

    /// The limit a user holding `gpus` GPUs in `jobs` jobs would pass by also starting a job of
    /// `more_gpus` GPUs, if any.
    pub fn exceeded_by(&self, gpus: u32, jobs: u32, more_gpus: u32) -> Option<LimitHit> {
        if let Some(max) = self.max_gpus
            && more_gpus > 0
            && gpus + more_gpus > max
        {
            return Some(LimitHit { gpus: true, used: gpus, limit: max });
        }
        if let Some(max) = self.max_running
            && jobs >= max
        {
            return Some(LimitHit { gpus: false, used: jobs, limit: max });
        }
        None
    }
}

/// Which user limit a job waits on: GPUs (`gpus`) or running jobs, with the user's use.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitHit {
    pub gpus: bool,
    pub used: u32,
    pub limit: u32,
}

#[derive(Clone, Debug)]
pub struct Snapshot<'a> {
    pub now: Millis,
    pub nodes: &'a [NodeView],
    /// Eligible queued jobs in `QueueKey` order.
    pub queue: &'a [QueuedJob],
    /// Indexed by `UserId`.
    pub users: &'a [UserShare],
    /// Per-user limits, indexed by `UserId`; a user past the end has none.
    pub limits: &'a [UserLimits],
    /// Node selection (cluster mode); None: any job may go on any node, first fit.
    pub rules: Option<&'a Rules>,
}

/// Where jobs may go, beyond resources (cluster mode).
#[derive(Clone, Debug, Default)]
pub struct Rules {
    /// Per node of the snapshot, in its order: the node's tags.
    pub node_tags: Vec<Vec<String>>,
    /// Per node of the snapshot: the most jobs it runs at once.
    pub max_jobs: Vec<Option<u32>>,
    /// Put each job on the fitting node with the most free GPUs (then CPUs) instead of the first
    /// that fits (packing keeps whole nodes free for big jobs).
    pub spread: bool,
    /// Jobs that choose their nodes, or span several (gangs).
    pub jobs: std::collections::HashMap<JobId, JobRule>,
}

/// A job's choice of nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobRule {
    /// Only this node.
    pub node: Option<String>,
    /// Only nodes with all of these tags.
    pub tags: Vec<String>,
    /// Ranks on this many distinct nodes, placed all at once or not at all (a gang); each rank
    /// gets the job's GPUs and CPUs. 0 or 1: one node.
    pub nodes: u32,
}

impl Rules {
    /// Whether anything here changes where jobs go (if not, the fast path may place jobs).
    pub fn is_plain(&self) -> bool {
        !self.spread && self.max_jobs.iter().all(Option::is_none) && self.jobs.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub job: JobId,
    /// Index into the snapshot's nodes.
    pub node: usize,
    pub gpus: Vec<u32>,
    pub gpu_mem_mib: Option<u64>,
    pub cpus: u32,
}

/// Why a queued job is not running yet. No heap data, so a pass over 100,000 jobs stays cheap;
/// the caller adds detail (e.g. what makes a GPU busy) when it displays a reason.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PendingReason {
    /// Resources it needs are held for a higher-priority job.
    Priority { behind: JobId },
    /// Resources it needs are held for a job of equal priority ahead of it in the queue (earlier,
    /// or of a user with a smaller fair share).
    FairShare { behind: JobId },
    /// Not enough free resources now.
    Resources { need_gpus: u32, free_gpus: u32, need_cpus: u32, free_cpus: u32 },
    /// Not enough GPU memory free on enough GPUs for its reservation.
    GpuMemory { need_gpus: u32, need_mib: u64, fitting_gpus: u32 },
    /// Not enough GPUs, and GPU `index` is kept out of use by processes outside Ravel.
    GpuBusy { index: u32, need_gpus: u32, free_gpus: u32 },
    /// Its array already runs as many elements as its limit allows.
    ArrayLimit { array: JobId, limit: u32 },
    /// Its user already holds as many GPUs (or running jobs) as the user's limit allows. It
    /// reserves nothing: it waits for its own user's jobs, not for resources.
    UserLimit { user: UserId, hit: LimitHit },
    /// Held by the user (`ravel hold`, `--hold`).
    Held,
    /// Not eligible before this time (`--begin`, or a retry's backoff).
    BeginTime { at: Millis },
    /// Waiting for this dependency to end (successfully, for `--after`).
    Dependency { job: JobId },
    /// The scheduler has not looked at it yet.
    NotYetScheduled,
    /// It chose its nodes (`--node`, `--tags`, `--nodes`): `matching` nodes may take it, `fitting`
    /// of them have room now, and it needs `need_nodes` of them at once.
    Nodes { need_nodes: u32, matching: u32, fitting: u32 },
}

impl fmt::Display for PendingReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |n: u32| if n == 1 { "" } else { "s" };
        match self {
            PendingReason::Priority { behind } => write!(f, "Priority: resources held for job {behind}"),
            PendingReason::FairShare { behind } => write!(f, "Queue order: resources held for job {behind}"),
            PendingReason::Resources { need_gpus, free_gpus, need_cpus, free_cpus } => {
                if need_gpus > free_gpus {
                    write!(f, "Resources: needs {need_gpus} GPU{}, {free_gpus} free", s(*need_gpus))
                } else {
                    write!(f, "Resources: needs {need_cpus} CPU{}, {free_cpus} free", s(*need_cpus))
                }
            }
            PendingReason::GpuMemory { need_gpus, need_mib, fitting_gpus } => write!(
                f,
                "Resources: needs {need_mib} MiB on {need_gpus} GPU{}, {fitting_gpus} GPU{} with room",
                s(*need_gpus),
                s(*fitting_gpus)
            ),
            PendingReason::GpuBusy { index, need_gpus, free_gpus } => {
                write!(f, "GPU {index} busy (needs {need_gpus} GPU{}, {free_gpus} free)", s(*need_gpus))
            }
            PendingReason::ArrayLimit { array, limit } => write!(f, "Array limit: {limit} of array {array} running"),
            PendingReason::UserLimit { hit, .. } => write!(f, "User limit: {hit}"),
            PendingReason::Held => f.write_str("Held"),
            PendingReason::BeginTime { at } => write!(f, "Begin time: not before {at}"),
            PendingReason::Dependency { job } => write!(f, "Dependency {job}"),
            PendingReason::NotYetScheduled => f.write_str("Queued"),
            PendingReason::Nodes { need_nodes, matching: 0, .. } => {
                write!(f, "Nodes: no node matches its --node/--tags (needs {need_nodes})")
            }
            PendingReason::Nodes { need_nodes, matching, fitting } => write!(
                f,
                "Nodes: needs {need_nodes} node{} with room, {fitting} of {matching} matching have it",
                s(*need_nodes)
            ),
        }
    }
}

impl fmt::Display for LimitHit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.gpus {
            write!(f, "uses {} of {} GPUs", self.used, self.limit)
        } else {
            write!(f, "runs {} of {} jobs", self.used, self.limit)
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decisions {
    pub placements: Vec<Placement>,
    /// Every eligible job not placed, in the order the pass considered them (fair share
    /// applied): its index + 1 is the job's queue position.
    pub pending: Vec<(JobId, PendingReason)>,
    /// Estimated start times, for jobs whose start can be bounded by running jobs' time limits.
    pub estimated_start: Vec<(JobId, Millis)>,
    /// What jobs submitted after the pass may take without another pass, through [`place_fast`].
    pub leftover: Leftover,
}

/// What a pass left that a job submitted after it may take at once, through [`place_fast`],
/// without a full pass: resources that no job pending after the pass could take, or hold for
/// itself, before the new job in the next pass, whatever that pass's order. Conservative: it
/// leaves out everything a reservation holds or could hold (busy GPUs a blocked job will start
/// on included), and whole nodes that a waiting job could be placed on; see `schedule/leftover.rs`
/// for the argument.
///
/// It describes the snapshot the pass ran on plus what `place_fast` placed since, less the jobs
/// whose end [`credit_end`] credited to it; it is void once anything else changes (a job ends
/// and `credit_end` refuses it, a job becomes eligible or changes priority, GPU use seen from
/// outside changes): the caller then runs a full pass. `Leftover::default()` places nothing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Leftover {
    /// False when the leftover must not be handed out without a full pass: for the default value
    /// (no pass made it), when a node lists a GPU index twice, and when the jobs left waiting
    /// behind a reservation have too many different shapes to bound cheaply what the next pass
    /// could place before a new job.
    pub fast_path_ok: bool,
    /// Indexed like the snapshot's nodes.
    pub nodes: Vec<NodeLeftover>,
    /// Per array, the elements running or placed, plus the elements left waiting behind a
    /// reservation (which the next pass might place before a new job): an element of array `a`
    /// with limit `l` may be fast-placed only while this is below `l`. Absent means 0. An element
    /// whose end [`credit_end`] credits is taken off.
    pub arrays: BTreeMap<JobId, u32>,
    /// What [`credit_end`] needs to know of the pass besides the above.
    credits: schedule::Credits,
}

/// What a pass left on one node; see [`Leftover`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeLeftover {
    /// Sorted by index.
    pub gpus: Vec<GpuLeftover>,
    pub cpus: u32,
}

/// What a pass left on one GPU; see [`Leftover`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuLeftover {
    pub index: u32,
    /// A whole-GPU job may take it.
    pub whole: bool,
    /// MiB a memory reservation may still take; 0 when none may (held whole, foreign-busy,
    /// reserved or possibly reserved by a waiting job).
    pub mib: u64,
}
