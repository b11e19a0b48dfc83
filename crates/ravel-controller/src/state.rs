//! The controller's in-memory view of what is queued and what holds resources.
//!
//! The store is the truth that survives; this is the fast index the scheduler reads. Finished
//! jobs are not kept here: memory grows with the active queue only.

use ravel_core::{GpuSlot, JobId, NodeView, PendingReason, QueueKey, QueuedJob};
use ravel_gpu::{GpuInfo, Thresholds};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

/// A job that holds an attempt on the node.
#[derive(Debug, Clone)]
pub struct Active {
    pub attempt: u32,
    pub gpus: Vec<u32>,
    pub cpus: u32,
    pub run_dir: PathBuf,
    /// Known once the supervisor started.
    pub supervisor: Option<(i32, u64)>,
    pub cancel_requested: bool,
}

pub struct State {
    pub queue: BTreeMap<QueueKey, QueuedJob>,
    pub queued_keys: HashMap<JobId, QueueKey>,
    pub reasons: HashMap<JobId, PendingReason>,
    pub active: HashMap<JobId, Active>,
    pub gpu_owner: HashMap<u32, JobId>,
    pub cpus_total: u32,
    pub cpus_used: u32,
    pub inventory: Vec<GpuInfo>,
    pub probe_error: Option<String>,
    pub last_probe: Option<Instant>,
    /// A GPU was released since the last probe: its last reading may show the finished job's
    /// own use as if it were foreign, so re-probe before trusting it.
    pub released_since_probe: bool,
    /// False once a shutdown started: no new submissions, no new launches.
    pub accepting: bool,
    /// The last pass stopped early: every queued job it did not look at waits for resources.
    pub exhausted: bool,
}

impl State {
    pub fn new(cpus_total: u32) -> State {
        State {
            queue: BTreeMap::new(),
            queued_keys: HashMap::new(),
            reasons: HashMap::new(),
            active: HashMap::new(),
            gpu_owner: HashMap::new(),
            cpus_total,
            cpus_used: 0,
            inventory: Vec::new(),
            probe_error: None,
            last_probe: None,
            released_since_probe: false,
            accepting: true,
            exhausted: false,
        }
    }

    pub fn enqueue(&mut self, job: QueuedJob) {
        let key = job.order_key();
        self.queued_keys.insert(job.id, key);
        self.reasons.insert(job.id, PendingReason::NotYetScheduled);
        self.queue.insert(key, job);
    }

    pub fn dequeue(&mut self, id: JobId) -> Option<QueuedJob> {
        self.reasons.remove(&id);
        let key = self.queued_keys.remove(&id)?;
        self.queue.remove(&key)
    }

    /// Marks resources as held by `id` (a placement, or an attempt re-adopted at start).
    pub fn hold(&mut self, id: JobId, active: Active) {
        for g in &active.gpus {
            self.gpu_owner.insert(*g, id);
        }
        self.cpus_used += active.cpus;
        self.active.insert(id, active);
    }

    pub fn release(&mut self, id: JobId) -> Option<Active> {
        let a = self.active.remove(&id)?;
        for g in &a.gpus {
            if self.gpu_owner.get(g) == Some(&id) {
                self.gpu_owner.remove(g);
            }
        }
        if !a.gpus.is_empty() {
            self.released_since_probe = true;
        }
        self.cpus_used = self.cpus_used.saturating_sub(a.cpus);
        Some(a)
    }

    /// The node as the scheduler sees it.
    pub fn node_view(&self, name: &str, t: &Thresholds) -> NodeView {
        NodeView {
            name: name.to_string(),
            gpus: self
                .inventory
                .iter()
                .map(|g| {
                    let allocated_to = self.gpu_owner.get(&g.index).copied();
                    GpuSlot {
                        index: g.index,
                        allocated_to,
                        foreign_busy: if allocated_to.is_none() { g.foreign_busy(t) } else { None },
                    }
                })
                .collect(),
            cpus_total: self.cpus_total,
            cpus_used: self.cpus_used,
        }
    }

    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.active.is_empty()
    }

    /// True if `id` is queued or holds an attempt.
    pub fn is_live(&self, id: JobId) -> bool {
        self.queued_keys.contains_key(&id) || self.active.contains_key(&id)
    }
}
