//! The scheduling policy: a pure function from a snapshot of nodes and queued jobs to placements.
//!
//! Order is priority (higher first), then submit time, then id. The order is strict without
//! being wasteful: on each node, the first job that does not fit *reserves* what is free of the
//! resources it needs (up to its request), so no job behind it can take them, while jobs behind
//! it may still use what is left over. A big job at the head therefore is never starved by small
//! ones. Only that first blocked job reserves: if every waiting GPU job held back a CPU slot, a
//! long queue of GPU jobs would idle the CPUs. The next blocked job reserves once the head starts.

use crate::job::{JobId, Millis};
use serde::{Deserialize, Serialize};
use std::fmt;

/// One GPU as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuSlot {
    pub index: u32,
    /// The Ravel job holding it, if any.
    pub allocated_to: Option<JobId>,
    /// Set when someone outside Ravel is using it above the thresholds.
    pub foreign_busy: Option<String>,
}

impl GpuSlot {
    pub fn is_free(&self) -> bool {
        self.allocated_to.is_none() && self.foreign_busy.is_none()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub gpus: Vec<GpuSlot>,
    pub cpus_total: u32,
    pub cpus_used: u32,
}

/// What the scheduler needs to know about a queued job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedJob {
    pub id: JobId,
    pub priority: i32,
    pub submitted_at: Millis,
    pub gpus: u32,
    pub cpus: u32,
}

impl QueuedJob {
    /// Sort key: higher priority first, then older, then lower id.
    pub fn order_key(&self) -> QueueKey {
        QueueKey { neg_priority: -(self.priority as i64), submitted_at: self.submitted_at, id: self.id }
    }
}

/// Total order of the queue; `BTreeMap<QueueKey, _>` iterates in scheduling order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueKey {
    pub neg_priority: i64,
    pub submitted_at: Millis,
    pub id: JobId,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub job: JobId,
    /// Index into the snapshot's nodes.
    pub node: usize,
    pub gpus: Vec<u32>,
    pub cpus: u32,
}

/// Why a queued job is not running yet.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PendingReason {
    /// The resources it needs are held back for an earlier job in the queue.
    Priority { behind: JobId },
    /// Not enough free resources right now.
    Resources { need_gpus: u32, free_gpus: u32, need_cpus: u32, free_cpus: u32 },
    /// Not enough GPUs, and some are kept out of use by processes outside Ravel.
    GpuBusy { index: u32, why: String, need_gpus: u32, free_gpus: u32 },
    /// The scheduler has not looked at it since it was queued.
    NotYetScheduled,
}

impl fmt::Display for PendingReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PendingReason::Priority { behind } => {
                write!(f, "Priority: resources held for job {behind}")
            }
            PendingReason::Resources { need_gpus, free_gpus, need_cpus, free_cpus } => {
                if need_gpus > free_gpus {
                    write!(f, "Resources: needs {need_gpus} GPU{}, {free_gpus} free", plural(*need_gpus))
                } else {
                    write!(f, "Resources: needs {need_cpus} CPU{}, {free_cpus} free", plural(*need_cpus))
                }
            }
            PendingReason::GpuBusy { index, why, need_gpus, free_gpus } => {
                write!(f, "GPU {index} busy: {why} (needs {need_gpus} GPU{}, {free_gpus} free)", plural(*need_gpus))
            }
            PendingReason::NotYetScheduled => f.write_str("Queued"),
        }
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decisions {
    pub placements: Vec<Placement>,
    /// A reason for every job examined and not placed, in queue order.
    pub pending: Vec<(JobId, PendingReason)>,
    /// True when the pass stopped early because nothing was left to give; jobs after the
    /// last one in `pending` wait for resources too.
    pub exhausted: bool,
}

/// Per-node resources still available during one pass, after placements and reservations.
struct Pool {
    free_gpus: Vec<u32>,
    free_cpus: u32,
    /// GPUs that exist but are kept out by a foreign process (index, why).
    busy: Vec<(u32, String)>,
}

/// Decides which queued jobs start now and where. `queue` must be in scheduling order
/// (see [`QueuedJob::order_key`]); the pass stops once every node is fully handed out.
pub fn schedule<'a>(nodes: &[NodeView], queue: impl IntoIterator<Item = &'a QueuedJob>) -> Decisions {
    let mut pools: Vec<Pool> = nodes
        .iter()
        .map(|n| Pool {
            free_gpus: n.gpus.iter().filter(|g| g.is_free()).map(|g| g.index).collect(),
            free_cpus: n.cpus_total.saturating_sub(n.cpus_used),
            busy: n
                .gpus
                .iter()
                .filter(|g| g.allocated_to.is_none())
                .filter_map(|g| g.foreign_busy.clone().map(|w| (g.index, w)))
                .collect(),
        })
        .collect();
    // Per node: the job holding a reservation in this pass, and what it holds.
    let mut reserved_by: Vec<Option<JobId>> = vec![None; nodes.len()];
    let mut held: Vec<(u32, u32)> = vec![(0, 0); nodes.len()];
    let mut out = Decisions::default();

    for job in queue {
        if pools.iter().all(|p| p.free_cpus == 0) {
            out.exhausted = true;
            break;
        }
        if let Some(i) = pools.iter().position(|p| p.free_gpus.len() as u32 >= job.gpus && p.free_cpus >= job.cpus) {
            let p = &mut pools[i];
            let gpus: Vec<u32> = p.free_gpus.drain(..job.gpus as usize).collect();
            p.free_cpus -= job.cpus;
            out.placements.push(Placement { job: job.id, node: i, gpus, cpus: job.cpus });
            continue;
        }
        // It does not fit anywhere. Explain why against the node that comes closest.
        let (i, _) = pools
            .iter()
            .enumerate()
            .map(|(i, p)| (i, p.free_gpus.len().min(job.gpus as usize) + p.free_cpus.min(job.cpus) as usize))
            .max_by_key(|&(i, score)| (score, std::cmp::Reverse(i)))
            .expect("schedule needs at least one node");
        let p = &mut pools[i];
        let free_gpus = p.free_gpus.len() as u32;
        let (held_gpus, held_cpus) = held[i];
        let fits_without_reservation = free_gpus + held_gpus >= job.gpus && p.free_cpus + held_cpus >= job.cpus;
        let reason = match reserved_by[i] {
            Some(behind) if fits_without_reservation => PendingReason::Priority { behind },
            _ if free_gpus < job.gpus && !p.busy.is_empty() => {
                let (index, why) = p.busy[0].clone();
                PendingReason::GpuBusy { index, why, need_gpus: job.gpus, free_gpus }
            }
            _ => {
                PendingReason::Resources { need_gpus: job.gpus, free_gpus, need_cpus: job.cpus, free_cpus: p.free_cpus }
            }
        };
        if reserved_by[i].is_none() {
            reserved_by[i] = Some(job.id);
            let hold_gpus = job.gpus.min(free_gpus);
            let hold_cpus = job.cpus.min(p.free_cpus);
            p.free_gpus.drain(..hold_gpus as usize);
            p.free_cpus -= hold_cpus;
            held[i] = (hold_gpus, hold_cpus);
        }
        out.pending.push((job.id, reason));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(gpus: u32, cpus: u32) -> NodeView {
        NodeView {
            name: "local".into(),
            gpus: (0..gpus).map(|index| GpuSlot { index, allocated_to: None, foreign_busy: None }).collect(),
            cpus_total: cpus,
            cpus_used: 0,
        }
    }

    fn job(id: JobId, priority: i32, gpus: u32, cpus: u32) -> QueuedJob {
        QueuedJob { id, priority, submitted_at: id, gpus, cpus }
    }

    fn ordered(mut q: Vec<QueuedJob>) -> Vec<QueuedJob> {
        q.sort_by_key(|j| j.order_key());
        q
    }

    #[test]
    fn places_on_distinct_lowest_free_gpus() {
        let mut n = node(4, 8);
        n.gpus[0].allocated_to = Some(99);
        n.cpus_used = 1;
        let q = ordered(vec![job(1, 0, 2, 1), job(2, 0, 1, 1)]);
        let d = schedule(&[n], &q);
        assert_eq!(d.placements[0].gpus, vec![1, 2]);
        assert_eq!(d.placements[1].gpus, vec![3]);
        assert!(d.pending.is_empty());
    }

    #[test]
    fn higher_priority_goes_first() {
        let q = ordered(vec![job(1, 0, 1, 1), job(2, 5, 1, 1)]);
        let d = schedule(&[node(1, 8)], &q);
        assert_eq!(d.placements.len(), 1);
        assert_eq!(d.placements[0].job, 2);
        assert!(matches!(d.pending[0], (1, PendingReason::Resources { need_gpus: 1, free_gpus: 0, .. })));
    }

    #[test]
    fn big_head_is_not_starved_by_small_jobs_behind_it() {
        // Two of four GPUs free; the head needs three. The one-GPU job behind must not take them.
        let mut n = node(4, 8);
        n.gpus[0].allocated_to = Some(50);
        n.gpus[1].allocated_to = Some(51);
        let q = ordered(vec![job(1, 0, 3, 1), job(2, 0, 1, 1)]);
        let d = schedule(&[n], &q);
        assert!(d.placements.is_empty());
        assert_eq!(d.pending[1], (2, PendingReason::Priority { behind: 1 }));
        assert_eq!(d.pending[0].1.to_string(), "Resources: needs 3 GPUs, 2 free");
    }

    #[test]
    fn jobs_behind_a_blocked_head_use_what_it_does_not_need() {
        // The head waits for GPUs; CPU-only work behind it runs on the spare CPUs.
        let mut n = node(1, 4);
        n.gpus[0].allocated_to = Some(50);
        n.cpus_used = 1;
        let q = ordered(vec![job(1, 0, 1, 1), job(2, 0, 0, 1), job(3, 0, 0, 1), job(4, 0, 0, 1)]);
        let d = schedule(&[n], &q);
        let placed: Vec<JobId> = d.placements.iter().map(|p| p.job).collect();
        assert_eq!(placed, vec![2, 3], "one CPU stays reserved for the head");
    }

    #[test]
    fn a_long_queue_of_waiting_gpu_jobs_does_not_idle_the_cpus() {
        let mut n = node(1, 8);
        n.gpus[0].allocated_to = Some(50);
        n.cpus_used = 1;
        let mut q: Vec<QueuedJob> = (1..=20).map(|i| job(i, 0, 1, 1)).collect();
        q.extend((21..=30).map(|i| job(i, 0, 0, 1)));
        let d = schedule(&[n], &ordered(q));
        let placed: Vec<JobId> = d.placements.iter().map(|p| p.job).collect();
        assert_eq!(placed, (21..=26).collect::<Vec<_>>(), "7 free CPUs, one held for the head");
        assert_eq!(d.pending[1].1.to_string(), "Resources: needs 1 GPU, 0 free");
    }

    #[test]
    fn foreign_use_is_the_reason_when_it_blocks() {
        let mut n = node(2, 8);
        n.gpus[1].foreign_busy = Some("foreign process".into());
        let q = ordered(vec![job(1, 0, 2, 1)]);
        let d = schedule(&[n], &q);
        assert_eq!(d.pending[0].1.to_string(), "GPU 1 busy: foreign process (needs 2 GPUs, 1 free)");
    }

    #[test]
    fn stops_when_nothing_is_left() {
        let q: Vec<QueuedJob> = (1..=1000).map(|i| job(i, 0, 0, 1)).collect();
        let d = schedule(&[node(0, 2)], &q);
        assert_eq!(d.placements.len(), 2);
        assert!(d.exhausted);
        assert!(d.pending.is_empty());
    }

    fn arb_node() -> impl Strategy<Value = NodeView> {
        (0u32..9, 1u32..9, proptest::collection::vec(0u8..3, 8)).prop_map(|(g, c, marks)| {
            let mut n = node(g, c);
            for (gpu, m) in n.gpus.iter_mut().zip(marks) {
                match m {
                    1 => gpu.allocated_to = Some(1000),
                    2 => gpu.foreign_busy = Some("foreign process".into()),
                    _ => {}
                }
            }
            n
        })
    }

    proptest! {
        #[test]
        fn never_overcommits_and_respects_strict_order(
            nodes in proptest::collection::vec(arb_node(), 1..4),
            jobs in proptest::collection::vec((-2i32..3, 0u32..4, 1u32..4), 0..40),
        ) {
            let q = ordered(jobs.iter().enumerate().map(|(i, &(p, g, c))| job(i as JobId + 1, p, g, c)).collect());
            let d = schedule(&nodes, &q);
            let mut used_cpus = vec![0u32; nodes.len()];
            let mut used_gpus: Vec<Vec<u32>> = vec![vec![]; nodes.len()];
            for pl in &d.placements {
                let j = q.iter().find(|j| j.id == pl.job).unwrap();
                prop_assert_eq!(pl.gpus.len() as u32, j.gpus);
                prop_assert_eq!(pl.cpus, j.cpus);
                for g in &pl.gpus {
                    let slot = nodes[pl.node].gpus.iter().find(|s| s.index == *g).unwrap();
                    prop_assert!(slot.is_free(), "placed on a GPU that was not free");
                    prop_assert!(!used_gpus[pl.node].contains(g), "GPU given twice");
                    used_gpus[pl.node].push(*g);
                }
                used_cpus[pl.node] += pl.cpus;
            }
            for (i, n) in nodes.iter().enumerate() {
                prop_assert!(used_cpus[i] + n.cpus_used <= n.cpus_total);
            }
            // Every job is either placed, pending with a reason, or after the point of exhaustion.
            let seen = d.placements.len() + d.pending.len();
            prop_assert!(seen == q.len() || d.exhausted);
            // Strict order on one node: jobs placed behind the first blocked job never take
            // what that job needs from what was free when it was examined.
            if nodes.len() == 1
                && let Some((first, _)) = d.pending.first()
            {
                    let pos = |id: JobId| q.iter().position(|j| j.id == id).unwrap();
                    let head = &q[pos(*first)];
                    let (mut before_g, mut before_c, mut after_g, mut after_c) = (0u32, 0u32, 0u32, 0u32);
                    for pl in &d.placements {
                        if pos(pl.job) < pos(*first) {
                            before_g += pl.gpus.len() as u32;
                            before_c += pl.cpus;
                        } else {
                            after_g += pl.gpus.len() as u32;
                            after_c += pl.cpus;
                        }
                    }
                    let n = &nodes[0];
                    let free_g = n.gpus.iter().filter(|s| s.is_free()).count() as u32 - before_g;
                    let free_c = n.cpus_total - n.cpus_used - before_c;
                    prop_assert!(free_g < head.gpus || free_c < head.cpus, "head was left pending although it fit");
                    prop_assert!(after_g <= free_g - head.gpus.min(free_g), "a later job took GPUs the head needs");
                    prop_assert!(after_c <= free_c - head.cpus.min(free_c), "a later job took CPUs the head needs");
            }
        }

        #[test]
        fn a_lone_job_that_fits_is_always_placed(node in arb_node(), g in 0u32..4, c in 1u32..4) {
            let q = vec![job(1, 0, g, c)];
            let free = node.gpus.iter().filter(|s| s.is_free()).count() as u32;
            let d = schedule(std::slice::from_ref(&node), &q);
            let fits = free >= g && node.cpus_total >= c;
            prop_assert_eq!(d.placements.len() == 1, fits);
        }
    }
}
