//! One scheduling pass: fair-share order, placement, reservations with backfill, and a reason
//! for every job left waiting.
//!
//! Jobs are considered in [`FairOrder`]. Each goes to the first node where it fits. On each
//! node, the first job that fits nowhere *reserves* what is free there of what it needs (see
//! [`Node::reserve`]), so no job behind it takes those resources and it cannot starve; only that
//! one job per node reserves, since if every waiting GPU job held back a CPU, a long queue of GPU
//! jobs would idle the CPUs. A job behind it may still use what it holds when it provably ends
//! before the holder could start (backfill, see [`shadow`]).
//!
//! The pass ends by working out what it left that a job submitted after it may take at once
//! (see [`leftover`]), and what it needs to know to add to that what a job that ends frees (see
//! [`credit`]).

mod credit;
mod fair_share;
mod leftover;
mod pool;
mod shadow;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub(super) use credit::Credits;
pub use credit::credit_end;
pub use leftover::place_fast;

use super::{Decisions, NodeView, PendingReason, Placement, QueuedJob, Snapshot, UserId, UserLimits};
use crate::job::{JobId, Millis};
use fair_share::FairOrder;
use pool::{Need, Node, Reservation};
use std::cmp::Reverse;
use std::collections::HashMap;

/// Decides which queued jobs start now and where, and why each of the others waits.
pub fn schedule(snap: &Snapshot) -> Decisions {
    let mut pass = run(snap);
    pass.out.leftover = pass.leftover();
    if pass.constrained_waiting || snap.rules.is_some_and(|r| r.spread || r.max_jobs.iter().any(Option::is_some)) {
        // The fast path knows nothing of node choices, spreading or per-node job limits.
        pass.out.leftover.fast_path_ok = false;
    }
    pass.out
}

/// The pass, before its leftover is worked out.
fn run<'s>(snap: &Snapshot<'s>) -> Pass<'s> {
    let mut pass = Pass::new(snap);
    let mut order = FairOrder::new(snap);
    while let Some(qi) = order.next() {
        if let Some(gpus) = pass.consider(&snap.queue[qi]) {
            order.placed(gpus);
        }
    }
    pass
}

/// When a job with this time limit, started now, ends at the latest.
fn end_of(now: Millis, timeout_ms: Option<u64>) -> Option<Millis> {
    timeout_ms.map(|t| now.saturating_add(Millis::try_from(t).unwrap_or(Millis::MAX)))
}

struct Pass<'s> {
    now: Millis,
    views: &'s [NodeView],
    nodes: Vec<Node>,
    out: Decisions,
    /// Elements of each array running or placed by this pass.
    arrays: HashMap<JobId, u32>,
    misfits: Misfits,
    /// Why a need fits nowhere, as of a generation. Long queues repeat a handful of shapes, and
    /// once the nodes are full nothing changes any more: each shape is explained once. Its keys
    /// are the shapes of all jobs left waiting for resources.
    explained: HashMap<Need, Shape>,
    /// The shape `block` last explained or looked up, at which generation, and its explanation:
    /// a long queue of one shape is explained without hashing it for every job.
    last_explained: Option<(Need, u64, Explained)>,
    /// Jobs left waiting behind a reservation, per array.
    behind_arrays: HashMap<JobId, u32>,
    /// Per array, the highest limit of the elements left waiting on that limit.
    limited_arrays: HashMap<JobId, u32>,
    /// Bumped whenever a placement or a reservation changes what is free.
    generation: u64,
    limits: &'s [UserLimits],
    /// GPUs and jobs each limited user holds, running or placed by this pass.
    user_use: HashMap<UserId, (u32, u32)>,
    rules: Option<&'s super::Rules>,
    /// Some job that chose its nodes was left waiting: it reserves nothing, so the leftover
    /// cannot be trusted to be what a full pass would give a newcomer.
    constrained_waiting: bool,
}

impl<'s> Pass<'s> {
    fn new(snap: &Snapshot<'s>) -> Pass<'s> {
        // Only looked up, never iterated: hash order cannot leak into the decisions.
        let mut arrays = HashMap::new();
        for a in snap.nodes.iter().flat_map(|n| &n.running).filter_map(|r| r.array) {
            *arrays.entry(a).or_insert(0u32) += 1;
        }
        let mut user_use = HashMap::new();
        for r in snap.nodes.iter().flat_map(|n| &n.running) {
            if snap.limits.get(r.user as usize).is_some_and(|l| !l.is_none()) {
                let u = user_use.entry(r.user).or_insert((0u32, 0u32));
                u.0 += r.gpus.len() as u32;
                u.1 += 1;
            }
        }
        let mut nodes: Vec<Node> = snap.nodes.iter().map(Node::new).collect();
        if let Some(r) = snap.rules {
            for (i, n) in nodes.iter_mut().enumerate() {
                if let Some(Some(max)) = r.max_jobs.get(i) {
                    n.set_jobs_left(max.saturating_sub(snap.nodes[i].running.len() as u32));
                }
            }
        }
        Pass {
            rules: snap.rules,
            constrained_waiting: false,
            limits: snap.limits,
            user_use,
            now: snap.now,
            views: snap.nodes,
            nodes,
            out: Decisions::default(),
            arrays,
            misfits: Misfits::default(),
            explained: HashMap::new(),
            last_explained: None,
            behind_arrays: HashMap::new(),
            limited_arrays: HashMap::new(),
            generation: 0,
        }
    }

    /// Places the job or records why not; returns the GPUs it took if placed.
    fn consider(&mut self, job: &QueuedJob) -> Option<u32> {
        let chosen = self.rules.and_then(|r| r.jobs.get(&job.id));
        if let Some(limits) = self.limits.get(job.user as usize).filter(|l| !l.is_none()) {
            let (gpus, jobs) = self.user_use.get(&job.user).copied().unwrap_or((0, 0));
            if let Some(hit) = limits.exceeded_by(gpus, jobs, job.gpus) {
                self.constrained_waiting |= chosen.is_some();
                // Like an array limit: it waits on its own user's jobs and reserves nothing.
                self.out.pending.push((job.id, PendingReason::UserLimit { user: job.user, hit }));
                return None;
            }
        }
        // An array without a limit (`u32::MAX`) is never at it: no lookup for each of its jobs.
        if let Some((array, limit)) = job.array
            && limit != u32::MAX
            && self.arrays.get(&array).copied().unwrap_or(0) >= limit
        {
            // Waiting on its own siblings, not on resources: it reserves nothing.
            self.constrained_waiting |= chosen.is_some();
            let floor = self.limited_arrays.entry(array).or_insert(0);
            *floor = (*floor).max(limit);
            self.out.pending.push((job.id, PendingReason::ArrayLimit { array, limit }));
            return None;
        }
        if let Some(rule) = chosen {
            return self.consider_chosen(job, rule);
        }
        let need = Need::of(job);
        let end = end_of(self.now, job.timeout_ms);
        if !self.misfits.rules_out(need, end) {
            let spread = self.rules.is_some_and(|r| r.spread);
            let fitting = self.nodes.iter().enumerate().filter_map(|(i, n)| {
                let backfill = n.may_backfill(end);
                n.fits(need, backfill).then_some((i, backfill))
            });
            let found = if spread {
                fitting.max_by_key(|&(i, _)| (self.nodes[i].room(), Reverse(i)))
            } else {
                fitting.into_iter().next()
            };
            if let Some((i, backfill)) = found {
                self.place(job, need, end, i, backfill);
                return Some(need.gpus);
            }
            self.misfits.add(need, end);
        }
        self.block(job, need);
        None
    }

    /// A job that chose its nodes: placed on nodes that match, never backfilled, all its ranks
    /// at once; it reserves nothing (so it cannot hold up others, and may wait behind them).
    fn consider_chosen(&mut self, job: &QueuedJob, rule: &super::JobRule) -> Option<u32> {
        let need = Need::of(job);
        let end = end_of(self.now, job.timeout_ms);
        let want = rule.nodes.max(1);
        let tags = self.rules.map(|r| &r.node_tags);
        let matching: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| rule.node.as_ref().is_none_or(|n| *n == self.views[i].name))
            .filter(|&i| {
                let have = tags.and_then(|t| t.get(i)).map_or(&[][..], |t| &t[..]);
                rule.tags.iter().all(|t| have.contains(t))
            })
            .collect();
        let mut fitting: Vec<usize> = matching.iter().copied().filter(|&i| self.nodes[i].fits(need, false)).collect();
        if self.rules.is_some_and(|r| r.spread) {
            fitting.sort_by_key(|&i| (Reverse(self.nodes[i].room()), i));
        }
        if fitting.len() as u32 >= want {
            for &i in fitting.iter().take(want as usize) {
                self.place(job, need, end, i, false);
            }
            return Some(need.gpus * want);
        }
        self.constrained_waiting = true;
        let reason = if want == 1 && !matching.is_empty() {
            let best = matching.iter().max_by_key(|&&i| {
                (self.nodes[i].count_fitting(need, false).min(need.gpus), self.nodes[i].cpus_avail(false))
            });
            let n = &self.nodes[*best.unwrap_or(&matching[0])];
            PendingReason::Resources {
                need_gpus: need.gpus,
                free_gpus: n.count_fitting(need, false),
                need_cpus: need.cpus,
                free_cpus: n.cpus_avail(false),
            }
        } else {
            PendingReason::Nodes { need_nodes: want, matching: matching.len() as u32, fitting: fitting.len() as u32 }
        };
        self.out.pending.push((job.id, reason));
        None
    }

    fn place(&mut self, job: &QueuedJob, need: Need, end: Option<Millis>, i: usize, backfill: bool) {
        let node = &mut self.nodes[i];
        let gpus = node.take(need, backfill);
        node.placed.push((self.out.placements.len(), end));
        self.out.placements.push(Placement { job: job.id, node: i, gpus, gpu_mem_mib: need.mib, cpus: need.cpus });
        if let Some((array, _)) = job.array {
            *self.arrays.entry(array).or_insert(0) += 1;
        }
        if self.limits.get(job.user as usize).is_some_and(|l| !l.is_none()) {
            let u = self.user_use.entry(job.user).or_insert((0, 0));
            u.0 += need.gpus;
            u.1 += 1;
        }
        self.generation += 1;
    }

    /// Records why a job that fits nowhere waits, and lets it reserve if it is the first to
    /// choose its node.
    fn block(&mut self, job: &QueuedJob, need: Need) {
        let ex = match &self.last_explained {
            Some((n, g, ex)) if *n == need && *g == self.generation => ex.clone(),
            _ => {
                let ex = self.explanation(need);
                self.last_explained = Some((need, self.generation, ex.clone()));
                ex
            }
        };
        let reason = match ex.why {
            Why::Behind { job: behind, priority } => {
                if let Some((array, _)) = job.array {
                    *self.behind_arrays.entry(array).or_insert(0) += 1;
                }
                if priority > job.priority {
                    PendingReason::Priority { behind }
                } else {
                    PendingReason::FairShare { behind }
                }
            }
            Why::Short(reason) => reason,
        };
        self.out.pending.push((job.id, reason));
        if let Some(c) = ex.reserve_on
            && self.nodes[c].reservation.is_none()
        {
            self.reserve(c, job, need);
        }
    }

    /// `need`'s explanation at this generation, from `explained` or worked out (and kept).
    fn explanation(&mut self, need: Need) -> Explained {
        if let Some(s) = self.explained.get(&need).filter(|s| s.generation == self.generation) {
            return s.ex.clone();
        }
        let ex = self.explain(need);
        let behind = matches!(ex.why, Why::Behind { .. }) || self.explained.get(&need).is_some_and(|s| s.behind);
        self.explained.insert(need, Shape { generation: self.generation, ex: ex.clone(), behind });
        ex
    }

    fn explain(&self, need: Need) -> Explained {
        // Closest to fitting: a node where it could run once Ravel's jobs there end, else one
        // whose hardware could take it; then the most GPUs it could use now, then CPUs. GPUs
        // come first because they are what jobs wait for; CPUs free up with them.
        let closest = self.nodes.iter().enumerate().max_by_key(|&(i, n)| {
            (
                n.fits_when_idle(need),
                n.fits_hardware(need),
                n.count_fitting(need, false).min(need.gpus),
                n.cpus_avail(false).min(need.cpus),
                Reverse(i),
            )
        });
        let Some((c, node)) = closest else {
            let reason =
                PendingReason::Resources { need_gpus: need.gpus, free_gpus: 0, need_cpus: need.cpus, free_cpus: 0 };
            return Explained { why: Why::Short(reason), reserve_on: None };
        };
        let behind = self.nodes.iter().find_map(|n| n.reservation.filter(|_| n.fits(need, true)));
        let fitting = node.count_fitting(need, false);
        let free_cpus = node.cpus_avail(false);
        let why = match (behind, need.mib, node.first_foreign_busy) {
            (Some(r), _, _) => Why::Behind { job: r.job, priority: r.priority },
            // A memory job short of CPUs only is told so below, not that memory is short.
            (None, Some(need_mib), _) if fitting < need.gpus => {
                Why::Short(PendingReason::GpuMemory { need_gpus: need.gpus, need_mib, fitting_gpus: fitting })
            }
            (None, None, Some(index)) if fitting < need.gpus => {
                Why::Short(PendingReason::GpuBusy { index, need_gpus: need.gpus, free_gpus: fitting })
            }
            _ => Why::Short(PendingReason::Resources {
                need_gpus: need.gpus,
                free_gpus: fitting,
                need_cpus: need.cpus,
                free_cpus,
            }),
        };
        // Holding resources for a job no node could ever take would only idle them.
        Explained { why, reserve_on: node.fits_hardware(need).then_some(c) }
    }

    fn reserve(&mut self, c: usize, job: &QueuedJob, need: Need) {
        let plan = shadow::plan(&self.nodes[c], &self.views[c], &self.out.placements, need, self.now);
        let shadow = plan.as_ref().and_then(|p| p.shadow);
        let res = Reservation { job: job.id, priority: job.priority, shadow };
        self.nodes[c].reserve(res, need, plan.as_ref().map(|p| &p.gpus[..]));
        if let Some(s) = shadow {
            // A job in its way may be overdue to end; it cannot start before now either way.
            self.out.estimated_start.push((job.id, s.max(self.now)));
        }
        self.generation += 1;
    }
}

/// What the pass knows about one shape of the jobs left waiting for resources.
#[derive(Clone, Debug)]
struct Shape {
    /// The generation `ex` was worked out at.
    generation: u64,
    ex: Explained,
    /// Some job of this shape was left waiting behind a reservation.
    behind: bool,
}

#[derive(Clone, Debug)]
struct Explained {
    why: Why,
    /// The closest node, if the job should reserve there (should it be the first to).
    reserve_on: Option<usize>,
}

#[derive(Clone, Debug)]
enum Why {
    /// It would fit but for the reservation of this job.
    Behind {
        job: JobId,
        priority: i32,
    },
    Short(PendingReason),
}

/// Shapes known to fit nowhere in this pass. Resources only shrink during a pass (placements
/// take, reservations hold), so a job of the same kind that needs at least as much and may
/// backfill no more (it ends no earlier) cannot fit either. A CPU-only shape rules out any job
/// that needs as many CPUs.
#[derive(Default)]
struct Misfits {
    /// Minimal shapes, with their end (`None`, no limit, sorting last).
    shapes: Vec<(Need, (bool, Millis))>,
}

impl Misfits {
    /// Enough to cover the shapes of a real queue; past it, jobs are just checked in full.
    const MAX: usize = 256;

    fn key(end: Option<Millis>) -> (bool, Millis) {
        (end.is_none(), end.unwrap_or(Millis::MAX))
    }

    fn covers(small: (Need, (bool, Millis)), need: Need, end: (bool, Millis)) -> bool {
        let (s, s_end) = small;
        let gpus_too =
            s.gpus == 0 || (s.mib.is_some() == need.mib.is_some() && s.gpus <= need.gpus && s.mib <= need.mib);
        s_end <= end && s.cpus <= need.cpus && gpus_too
    }

    fn rules_out(&self, need: Need, end: Option<Millis>) -> bool {
        let end = Self::key(end);
        self.shapes.iter().any(|&s| Self::covers(s, need, end))
    }

    fn add(&mut self, need: Need, end: Option<Millis>) {
        let new = (need, Self::key(end));
        self.shapes.retain(|&(n, e)| !Self::covers(new, n, e));
        if self.shapes.len() < Self::MAX {
            self.shapes.push(new);
        }
    }
}
