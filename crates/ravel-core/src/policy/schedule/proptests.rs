//! Properties of a pass over random, self-consistent snapshots.

use super::fair_share::FairOrder;
use super::{credit_end, place_fast, run, schedule};
use crate::job::{JobId, Millis};
use crate::policy::{
    Decisions, GpuSlot, NodeView, PendingReason, Placement, QueuedJob, RunningJob, Snapshot, UserLimits, UserShare,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use std::collections::BTreeMap;

const GIB: u64 = 1024;
const NOW: Millis = 1_000_000_000;
const MIN: u64 = 60_000;

/// A running job before it is put on a node: (user, kind 0 whole / 1 memory / 2 CPU only,
/// gpus, MiB, cpus, ends_by, array).
type Candidate = (u32, u8, u32, u64, u32, Option<Millis>, Option<JobId>);

fn arb_candidate() -> impl Strategy<Value = Candidate> {
    let ends = prop_oneof![
        Just(None),
        Just(Some(NOW - 1000)),
        Just(Some(NOW + MIN as Millis)),
        Just(Some(NOW + 60 * MIN as Millis)),
        Just(Some(NOW + 300 * MIN as Millis)),
    ];
    let mib = prop::sample::select(vec![8 * GIB, 16 * GIB, 24 * GIB, 40 * GIB]);
    let array = prop::option::weighted(0.3, 900i64..902);
    (0u32..4, 0u8..3, 1u32..3, mib, 1u32..5, ends, array)
}

fn arb_node(k: usize) -> impl Strategy<Value = NodeView> {
    arb_node_sized(k, 1..17)
}

fn arb_node_sized(k: usize, cpus: std::ops::Range<u32>) -> impl Strategy<Value = NodeView> {
    let gpu = (prop::sample::select(vec![40 * GIB, 80 * GIB]), prop::sample::select(vec![0, 4 * GIB, 30 * GIB]));
    (prop::collection::vec(gpu, 0..5), cpus, prop::collection::vec(arb_candidate(), 0..8), any::<[bool; 5]>()).prop_map(
        move |(gpus, cpus_total, running, busy)| {
            let mut n = NodeView {
                name: format!("n{k}"),
                gpus: gpus
                    .iter()
                    .enumerate()
                    .map(|(i, &(total, foreign))| GpuSlot {
                        index: i as u32,
                        memory_total_mib: total,
                        foreign_used_mib: foreign,
                        foreign_busy: false,
                        whole: None,
                        shared: vec![],
                    })
                    .collect(),
                cpus_total,
                cpus_used: 0,
                running: vec![],
            };
            for (r, (user, kind, gpus, mib, cpus, ends_by, array)) in running.into_iter().enumerate() {
                let job = 10_000 + (k * 100 + r) as JobId;
                if n.cpus_used + cpus > n.cpus_total {
                    continue;
                }
                let (gpus, mib) = match kind {
                    0 => (gpus, None),
                    1 => (gpus, Some(mib)),
                    _ => (0, None),
                };
                let picks: Vec<u32> = n
                    .gpus
                    .iter()
                    .filter(|g| mib.map_or(g.is_free_whole(), |m| g.fits_mib(m)))
                    .map(|g| g.index)
                    .take(gpus as usize)
                    .collect();
                if picks.len() < gpus as usize {
                    continue;
                }
                for &g in &picks {
                    let slot = &mut n.gpus[g as usize];
                    match mib {
                        None => slot.whole = Some(job),
                        Some(m) => slot.shared.push((job, m)),
                    }
                }
                n.cpus_used += cpus;
                n.running.push(RunningJob { job, user, gpus: picks, gpu_mem_mib: mib, cpus, ends_by, array });
            }
            // Only GPUs no Ravel job is on can be seen busy from outside.
            for (slot, b) in n.gpus.iter_mut().zip(busy) {
                slot.foreign_busy = b && slot.whole.is_none() && slot.shared.is_empty();
            }
            n
        },
    )
}

fn arb_queue() -> impl Strategy<Value = Vec<QueuedJob>> {
    arb_queue_sized(1..5, 0..30)
}

fn arb_queue_sized(cpus: std::ops::Range<u32>, len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<QueuedJob>> {
    let mib = prop::option::weighted(0.5, prop::sample::select(vec![10 * GIB, 20 * GIB, 40 * GIB, 70 * GIB]));
    let timeout = prop::option::weighted(0.6, prop::sample::select(vec![MIN, 30 * MIN, 120 * MIN, 600 * MIN]));
    let array = prop::option::weighted(0.25, (900i64..902, 1u32..3));
    let job = (-1i32..2, 0u32..4, 0u32..4, mib, cpus, timeout, array, 0i64..50);
    prop::collection::vec(job, len).prop_map(|jobs| {
        let mut q: Vec<QueuedJob> = jobs
            .into_iter()
            .enumerate()
            .map(|(i, (priority, user, gpus, gpu_mem_mib, cpus, timeout_ms, array, submitted_at))| QueuedJob {
                id: i as JobId + 1,
                priority,
                submitted_at,
                user,
                gpus,
                gpu_mem_mib,
                cpus,
                timeout_ms,
                array,
            })
            .collect();
        q.sort_by_key(|j| j.order_key());
        q
    })
}

fn arb_users() -> impl Strategy<Value = Vec<UserShare>> {
    let weight = prop::sample::select(vec![1.0, 2.0, 0.5, 0.0, f64::NAN]);
    let usage = prop::sample::select(vec![0.0, 10.0, 100.0]);
    prop::collection::vec((weight, usage).prop_map(|(weight, usage)| UserShare { weight, usage }), 4)
}

#[derive(Clone, Debug)]
struct World {
    nodes: Vec<NodeView>,
    queue: Vec<QueuedJob>,
    users: Vec<UserShare>,
    /// Per-user limits; empty in the worlds the fast-path properties use (the caller keeps
    /// limited users off the fast path).
    limits: Vec<UserLimits>,
}

fn arb_world() -> impl Strategy<Value = World> {
    let nodes = (1usize..4).prop_flat_map(|n| (0..n).map(arb_node).collect::<Vec<_>>());
    (nodes, arb_queue(), arb_users()).prop_map(|(nodes, queue, users)| World { nodes, queue, users, limits: vec![] })
}

/// Tighter worlds: more, smaller nodes, and jobs that may need no CPU, so that reservations,
/// backfill and fair share come into play more often.
fn arb_tight_world() -> impl Strategy<Value = World> {
    let nodes = (2usize..5).prop_flat_map(|n| (0..n).map(|k| arb_node_sized(k, 1..6)).collect::<Vec<_>>());
    (nodes, arb_queue_sized(0..3, 0..40), arb_users()).prop_map(|(nodes, queue, users)| World {
        nodes,
        queue,
        users,
        limits: vec![],
    })
}

impl World {
    fn snapshot(&self) -> Snapshot<'_> {
        Snapshot {
            now: NOW,
            nodes: &self.nodes,
            queue: &self.queue,
            users: &self.users,
            limits: &self.limits,
            rules: None,
        }
    }

    fn job(&self, id: JobId) -> &QueuedJob {
        self.queue.iter().find(|j| j.id == id).expect("a queued job")
    }

    /// The order the pass considered the queue in, replayed from its decisions.
    fn considered(&self, d: &Decisions) -> Vec<JobId> {
        let mut order = FairOrder::new(&self.snapshot());
        let mut ids = vec![];
        while let Some(qi) = order.next() {
            let id = self.queue[qi].id;
            if let Some(p) = d.placements.iter().find(|p| p.job == id) {
                order.placed(p.gpus.len() as u32);
            }
            ids.push(id);
        }
        ids
    }
}

/// The order fair share defines (`fair_share.rs`), worked out the slow way: priority levels one
/// after the other; within one, of the users with a job left there, the one holding the fewest
/// GPUs for their weight (running, plus what the jobs considered so far took: `took`), then the
/// lowest decayed usage for the weight, then the older head job, then the lower id; a user's
/// jobs in queue order.
fn fair_order_by_definition(snap: &Snapshot, took: impl Fn(JobId) -> f64) -> Vec<JobId> {
    let queue = snap.queue;
    let weight = |u: u32| {
        let w = snap.users.get(u as usize).map_or(1.0, |s| s.weight);
        if w > 0.0 { w } else { 1.0 }
    };
    let usage = |u: u32| snap.users.get(u as usize).map_or(0.0, |s| if s.usage.is_nan() { 0.0 } else { s.usage });
    let mut gpus: BTreeMap<u32, f64> = BTreeMap::new();
    for r in snap.nodes.iter().flat_map(|n| &n.running) {
        *gpus.entry(r.user).or_default() += r.gpus.len() as f64;
    }
    let mut out = Vec::new();
    let mut lo = 0;
    while lo < queue.len() {
        let hi = lo + queue[lo..].iter().take_while(|j| j.priority == queue[lo].priority).count();
        let mut left: Vec<usize> = (lo..hi).collect();
        while !left.is_empty() {
            // Each user's head: their first job left in the level.
            let mut heads: BTreeMap<u32, usize> = BTreeMap::new();
            for &qi in &left {
                heads.entry(queue[qi].user).or_insert(qi);
            }
            let (_, qi) = heads
                .iter()
                .map(|(&u, &qi)| (u, qi))
                .min_by(|&(a, qa), &(b, qb)| {
                    let share = |u: u32| gpus.get(&u).copied().unwrap_or(0.0) / weight(u);
                    share(a)
                        .total_cmp(&share(b))
                        .then((usage(a) / weight(a)).total_cmp(&(usage(b) / weight(b))))
                        .then(queue[qa].submitted_at.cmp(&queue[qb].submitted_at))
                        .then(queue[qa].id.cmp(&queue[qb].id))
                        .then(a.cmp(&b))
                })
                .expect("a user with a job left");
            left.retain(|&k| k != qi);
            out.push(queue[qi].id);
            *gpus.entry(queue[qi].user).or_default() += took(queue[qi].id);
        }
        lo = hi;
    }
    out
}

/// Applies placements to a copy of the nodes, checking each against what was free.
fn apply(
    nodes: &[NodeView],
    w: &World,
    placements: &[&crate::policy::Placement],
) -> Result<Vec<NodeView>, TestCaseError> {
    let mut nodes = nodes.to_vec();
    for p in placements {
        let j = w.job(p.job);
        prop_assert_eq!(p.gpus.len() as u32, j.gpus);
        prop_assert_eq!(p.cpus, j.cpus);
        prop_assert_eq!(p.gpu_mem_mib, if j.gpus == 0 { None } else { j.gpu_mem_mib });
        let n = &mut nodes[p.node];
        for (k, g) in p.gpus.iter().enumerate() {
            prop_assert!(!p.gpus[..k].contains(g), "GPU {} given twice to job {}", g, p.job);
            let slot = n.gpus.iter_mut().find(|s| s.index == *g).expect("GPU exists");
            match p.gpu_mem_mib {
                None => {
                    prop_assert!(slot.is_free_whole(), "job {} took GPU {} whole, which was not free", p.job, g);
                    slot.whole = Some(p.job);
                }
                Some(m) => {
                    prop_assert!(slot.fits_mib(m), "job {} does not fit on GPU {}", p.job, g);
                    slot.shared.push((p.job, m));
                }
            }
        }
        n.cpus_used += p.cpus;
        prop_assert!(n.cpus_used <= n.cpus_total, "CPUs over-committed");
        n.running.push(RunningJob {
            job: p.job,
            user: j.user,
            gpus: p.gpus.clone(),
            gpu_mem_mib: p.gpu_mem_mib,
            cpus: p.cpus,
            ends_by: j.timeout_ms.map(|t| NOW + t as Millis),
            array: j.array.map(|(a, _)| a),
        });
    }
    Ok(nodes)
}

/// Removes the jobs `gone` selects from the nodes.
fn release(nodes: &mut [NodeView], gone: impl Fn(&RunningJob) -> bool) {
    for n in nodes {
        let (leaving, staying): (Vec<RunningJob>, Vec<RunningJob>) = n.running.drain(..).partition(|r| gone(r));
        n.running = staying;
        for r in leaving {
            n.cpus_used -= r.cpus;
            for slot in &mut n.gpus {
                if slot.whole == Some(r.job) {
                    slot.whole = None;
                }
                slot.shared.retain(|(j, _)| *j != r.job);
            }
        }
    }
}

fn fits(n: &NodeView, j: &QueuedJob) -> bool {
    let gpus = match (j.gpus, j.gpu_mem_mib) {
        (0, _) => 0,
        (_, None) => n.gpus.iter().filter(|g| g.is_free_whole()).count() as u32,
        (_, Some(m)) => n.gpus.iter().filter(|g| g.fits_mib(m)).count() as u32,
    };
    n.cpus_total - n.cpus_used >= j.cpus && gpus >= j.gpus
}

fn fits_somewhere(nodes: &[NodeView], j: &QueuedJob) -> bool {
    nodes.iter().any(|n| fits(n, j))
}

fn is_short(r: &PendingReason) -> bool {
    matches!(r, PendingReason::Resources { .. } | PendingReason::GpuMemory { .. } | PendingReason::GpuBusy { .. })
}

fn check(w: &World) -> Result<(), TestCaseError> {
    let d = schedule(&w.snapshot());

    // (c) Determinism.
    prop_assert_eq!(&schedule(&w.snapshot()), &d);

    // (a) Nothing over-committed: each placement fits what was left, in order.
    let all: Vec<_> = d.placements.iter().collect();
    let after = apply(&w.nodes, w, &all)?;
    for n in &after {
        for g in &n.gpus {
            let shared: u64 = g.shared.iter().map(|(_, m)| m).sum();
            prop_assert!(g.whole.is_none() || g.shared.is_empty(), "whole and shared on GPU {}", g.index);
            prop_assert!(g.foreign_used_mib + shared <= g.memory_total_mib, "GPU {} memory over-committed", g.index);
        }
    }

    // (b) Every job placed or pending, exactly once, and in the order the pass considered them.
    let mut seen: BTreeMap<JobId, u32> = BTreeMap::new();
    for id in d.placements.iter().map(|p| p.job).chain(d.pending.iter().map(|(j, _)| *j)) {
        *seen.entry(id).or_default() += 1;
    }
    prop_assert_eq!(seen.len(), w.queue.len());
    prop_assert!(seen.values().all(|&c| c == 1));
    let considered = w.considered(&d);
    let pending: Vec<JobId> = d.pending.iter().map(|(j, _)| *j).collect();
    let placed: Vec<JobId> = d.placements.iter().map(|p| p.job).collect();
    let pos = |id: JobId| considered.iter().position(|&j| j == id).expect("considered");
    prop_assert!(pending.windows(2).all(|p| pos(p[0]) < pos(p[1])));
    prop_assert!(placed.windows(2).all(|p| pos(p[0]) < pos(p[1])));

    // (e) Arrays never run more elements than their limit.
    let mut running: BTreeMap<JobId, u32> = BTreeMap::new();
    for a in w.nodes.iter().flat_map(|n| &n.running).filter_map(|r| r.array) {
        *running.entry(a).or_default() += 1;
    }
    for p in &d.placements {
        if let Some((a, limit)) = w.job(p.job).array {
            let c = running.entry(a).or_default();
            prop_assert!(*c < limit, "array {} over its limit", a);
            *c += 1;
        }
    }

    // Reasons are true. A job short of resources fits nowhere even after the pass (resources
    // only shrink); one held back by a reservation is behind a job considered before it, of
    // higher priority (`Priority`) or the same (`FairShare`).
    for (id, r) in &d.pending {
        let j = w.job(*id);
        match r {
            r if is_short(r) => prop_assert!(!fits_somewhere(&after, j), "job {} would fit: {}", id, r),
            PendingReason::Priority { behind } | PendingReason::FairShare { behind } => {
                prop_assert!(pending.contains(behind) && pos(*behind) < pos(*id));
                let b = w.job(*behind);
                // Had it ended before that job could start, it would have backfilled.
                if let Some(&(_, at)) = d.estimated_start.iter().find(|(e, _)| e == behind) {
                    prop_assert!(j.timeout_ms.is_none_or(|t| NOW + t as Millis > at), "job {} could backfill", id);
                }
                if matches!(r, PendingReason::Priority { .. }) {
                    prop_assert!(b.priority > j.priority);
                } else {
                    prop_assert_eq!(b.priority, j.priority);
                }
            }
            PendingReason::ArrayLimit { array, limit } => prop_assert_eq!(j.array, Some((*array, *limit))),
            other => prop_assert!(false, "unexpected reason {:?}", other),
        }
    }

    // (d) Priority, as reservations make it: nothing placed after a blocked job takes what it
    // waits for, unless it ends before that job could start (backfill). So an estimated start is
    // honest: once the jobs in the way end by their limits (this pass's included), the job fits,
    // whatever else this pass placed.
    for &(id, at) in &d.estimated_start {
        prop_assert!(pending.contains(&id));
        let mut then = after.clone();
        release(&mut then, |r| r.ends_by.is_some_and(|e| e <= at));
        prop_assert!(fits_somewhere(&then, w.job(id)), "job {} does not fit at its estimated start {}", id, at);
    }
    // And the first job that fit nowhere, when nothing bounds its start: once every job from
    // before it ended, it fits beside all that this pass placed after it (none of which
    // backfilled, having no shadow time to end before), as long as foreign use allows at all.
    if let Some((id, _)) = d.pending.iter().find(|(_, r)| is_short(r))
        && !d.estimated_start.iter().any(|(j, _)| j == id)
    {
        let j = w.job(*id);
        let mut idle = w.nodes.clone();
        release(&mut idle, |_| true);
        if fits_somewhere(&idle, j) {
            let later: Vec<_> = d.placements.iter().filter(|p| pos(p.job) > pos(*id)).collect();
            let then = apply(&idle, w, &later)?;
            prop_assert!(fits_somewhere(&then, j), "jobs placed after {} took what it waits for", id);
        }
    }
    Ok(())
}

/// Jobs submitted after the pass, in this order: any priority, user (user 4 has no share), shape,
/// array and time limit; submitted last, with the highest ids.
fn arb_new_jobs() -> impl Strategy<Value = Vec<QueuedJob>> {
    let mib = prop::option::weighted(0.5, prop::sample::select(vec![0, GIB, 10 * GIB, 20 * GIB, 40 * GIB, 70 * GIB]));
    let timeout = prop::option::weighted(0.6, prop::sample::select(vec![MIN, 30 * MIN, 120 * MIN, 600 * MIN]));
    let array = prop::option::weighted(0.3, (900i64..902, 1u32..4));
    let job = (-2i32..3, 0u32..5, 0u32..4, mib, 0u32..5, timeout, array);
    prop::collection::vec(job, 1..4).prop_map(|jobs| {
        jobs.into_iter()
            .enumerate()
            .map(|(i, (priority, user, gpus, gpu_mem_mib, cpus, timeout_ms, array))| QueuedJob {
                id: 1000 + i as JobId,
                priority,
                submitted_at: 100 + i as Millis,
                user,
                gpus,
                gpu_mem_mib,
                cpus,
                timeout_ms,
                array,
            })
            .collect()
    })
}

/// Runs a pass, then offers `new` one by one to [`place_fast`] on its leftover. Each job it
/// places must (b) fit beside everything placed so far, take no GPU or CPU the pass's reservation
/// holds and respect its array's limit, and (a) be placed as well by a full pass over the same
/// nodes with everything placed so far running and the jobs left waiting plus it queued, a pass
/// that over-commits nothing either. Returns how many it placed.
fn check_fast(w: &World, new: &[QueuedJob]) -> Result<usize, TestCaseError> {
    let d = schedule(&w.snapshot());
    let pass = run(&w.snapshot());
    let mut left = d.leftover.clone();
    prop_assert!(left.fast_path_ok);
    let all: Vec<&Placement> = d.placements.iter().collect();
    let mut nodes = apply(&w.nodes, w, &all)?;
    let waiting: Vec<QueuedJob> =
        w.queue.iter().filter(|j| !d.placements.iter().any(|p| p.job == j.id)).cloned().collect();
    let mut count = 0;
    for j in new {
        let Some(p) = place_fast(&mut left, j) else { continue };
        count += 1;
        let mut queue = waiting.clone();
        queue.push(j.clone());
        queue.sort_by_key(|j| j.order_key());
        let next = World { nodes: nodes.clone(), queue, users: w.users.clone(), limits: vec![] };

        // (b) Safe on top of what was placed before.
        let held = &pass.nodes[p.node];
        for g in &p.gpus {
            let at = held.position(*g).expect("the GPU exists");
            prop_assert!(!held.gpus[at].held(), "job {} took GPU {}, which a reservation holds", j.id, g);
        }
        if let Some((a, limit)) = j.array {
            let running = nodes.iter().flat_map(|n| &n.running).filter(|r| r.array == Some(a)).count() as u32;
            prop_assert!(running < limit, "job {} puts array {} over its limit", j.id, a);
        }
        let after = apply(&nodes, &next, &[&p])?;
        let n = &after[p.node];
        prop_assert!(n.cpus_used + held.cpus_held() <= n.cpus_total, "job {} took CPUs a reservation holds", j.id);

        // (a) A full pass places it too, and over-commits nothing.
        let full = schedule(&next.snapshot());
        prop_assert!(
            full.placements.iter().any(|q| q.job == j.id),
            "job {} was placed fast at {:?} but a full pass leaves it waiting: {:?}",
            j.id,
            p,
            full.pending.iter().find(|(id, _)| *id == j.id)
        );
        let all: Vec<&Placement> = full.placements.iter().collect();
        apply(&next.nodes, &next, &all)?;
        nodes = after;
    }
    Ok(count)
}

#[test]
fn the_fast_path_places_jobs_often_enough_to_test_it() {
    use proptest::test_runner::{Config, TestRunner};
    use std::cell::Cell;
    let (cases, placing) = (Cell::new(0), Cell::new(0));
    let mut runner = TestRunner::new_with_rng(
        Config::with_cases(1000),
        proptest::test_runner::TestRng::deterministic_rng(Default::default()),
    );
    runner
        .run(&(arb_world(), arb_new_jobs()), |(w, new)| {
            cases.set(cases.get() + 1);
            if check_fast(&w, &new)? > 0 {
                placing.set(placing.get() + 1);
            }
            Ok(())
        })
        .expect("fast placements are sound");
    assert!(placing.get() * 10 >= cases.get(), "only {} of {} cases placed a job fast", placing.get(), cases.get());
}

fn arb_limits() -> impl Strategy<Value = Vec<UserLimits>> {
    let one = (prop::option::of(0u32..4), prop::option::of(0u32..3))
        .prop_map(|(max_gpus, max_running)| UserLimits { max_gpus, max_running });
    prop::collection::vec(one, 0..5)
}

/// Worlds where users have limits.
fn arb_limited_world() -> impl Strategy<Value = World> {
    (arb_tight_world(), arb_limits()).prop_map(|(mut w, limits)| {
        w.limits = limits;
        w
    })
}

/// No user ends a pass holding more than its limits allow (unless it already did before the
/// pass: limits lowered while jobs run stop new starts only), and a job waits on its user's
/// limit exactly when starting it would pass the limit.
fn check_user_limits(w: &World) -> Result<(), TestCaseError> {
    let d = schedule(&w.snapshot());
    let mut before: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
    for r in w.nodes.iter().flat_map(|n| &n.running) {
        let e = before.entry(r.user).or_default();
        e.0 += r.gpus.len() as u32;
        e.1 += 1;
    }
    let mut after = before.clone();
    for p in &d.placements {
        let e = after.entry(w.job(p.job).user).or_default();
        e.0 += p.gpus.len() as u32;
        e.1 += 1;
        // Each placement, at its turn, was within the limits.
        let l = w.limits.get(w.job(p.job).user as usize).copied().unwrap_or_default();
        if let Some(max) = l.max_gpus.filter(|_| !p.gpus.is_empty()) {
            prop_assert!(e.0 <= max, "job {} took its user past {} GPUs", p.job, max);
        }
        if let Some(max) = l.max_running {
            prop_assert!(e.1 <= max, "job {} took its user past {} running jobs", p.job, max);
        }
    }
    for (id, r) in &d.pending {
        if let PendingReason::UserLimit { user, hit } = r {
            prop_assert_eq!(*user, w.job(*id).user);
            prop_assert!(hit.used >= hit.limit || w.job(*id).gpus + hit.used > hit.limit);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn user_limits_hold(w in arb_limited_world()) {
        check_user_limits(&w)?;
    }

    #[test]
    fn credited_ends_keep_the_waiting_jobs_waiting_and_fast_placements_sound(w in arb_world(), steps in arb_steps()) {
        check_credit(&w, &steps)?;
    }

    #[test]
    fn credited_ends_are_sound_in_tight_worlds(w in arb_tight_world(), steps in arb_steps()) {
        check_credit(&w, &steps)?;
    }

    #[test]
    fn credited_ends_are_sound_beside_a_gpu_queue(w in arb_gpu_queue_world(), steps in arb_steps()) {
        check_credit(&w, &steps)?;
    }

    #[test]
    fn fast_placements_are_safe_and_a_full_pass_would_place_them_too(w in arb_world(), new in arb_new_jobs()) {
        check_fast(&w, &new)?;
    }

    #[test]
    fn fast_placements_are_safe_in_tight_worlds(w in arb_tight_world(), new in arb_new_jobs()) {
        check_fast(&w, &new)?;
    }

    #[test]
    fn passes_are_safe_complete_deterministic_and_honest(w in arb_world()) {
        check(&w)?;
    }

    #[test]
    fn fair_order_is_the_one_defined(w in arb_world()) {
        let d = schedule(&w.snapshot());
        let took = |id: JobId| d.placements.iter().filter(|p| p.job == id).map(|p| p.gpus.len() as f64).sum();
        prop_assert_eq!(w.considered(&d), fair_order_by_definition(&w.snapshot(), took));
    }

    #[test]
    fn one_user_is_queue_order(mut w in arb_world()) {
        for j in &mut w.queue {
            j.user = 0;
        }
        let d = schedule(&w.snapshot());
        let ids: Vec<JobId> = w.queue.iter().map(|j| j.id).collect();
        prop_assert_eq!(w.considered(&d), ids);
    }

    #[test]
    fn a_lone_job_that_fits_is_placed(mut w in arb_world()) {
        w.queue.truncate(1);
        if let Some(j) = w.queue.first_mut() {
            // An array may already run its limit; that is not this property's business.
            j.array = None;
        }
        let d = schedule(&w.snapshot());
        if let Some(j) = w.queue.first() {
            prop_assert_eq!(d.placements.len() == 1, fits_somewhere(&w.nodes, j));
        }
    }
}

/// One step after a pass: a running job ends (picked among all running now, the pass's placements
/// and fast placements included), or a job is submitted.
#[derive(Clone, Debug)]
enum Step {
    End(Index),
    New(QueuedJob),
}

fn arb_steps() -> impl Strategy<Value = Vec<Step>> {
    let mib = prop::option::weighted(0.5, prop::sample::select(vec![0, GIB, 10 * GIB, 20 * GIB, 40 * GIB, 70 * GIB]));
    let timeout = prop::option::weighted(0.6, prop::sample::select(vec![MIN, 30 * MIN, 120 * MIN, 600 * MIN]));
    let array = prop::option::weighted(0.3, (900i64..902, 1u32..4));
    // Half of them CPU-only: after the end of a CPU job, what it freed is mostly CPUs.
    let gpus = prop_oneof![Just(0u32), 0u32..4];
    let job = (-2i32..3, 0u32..5, gpus, mib, 0u32..5, timeout, array);
    let step = prop_oneof![any::<Index>().prop_map(|i| (Some(i), None)), job.prop_map(|j| (None, Some(j)))];
    prop::collection::vec(step, 1..10).prop_map(|steps| {
        steps
            .into_iter()
            .enumerate()
            .map(|(i, step)| match step {
                (Some(ix), _) => Step::End(ix),
                (_, Some((priority, user, gpus, gpu_mem_mib, cpus, timeout_ms, array))) => Step::New(QueuedJob {
                    id: 1000 + i as JobId,
                    priority,
                    submitted_at: 100 + i as Millis,
                    user,
                    gpus,
                    gpu_mem_mib,
                    cpus,
                    timeout_ms,
                    array,
                }),
                _ => unreachable!("one or the other"),
            })
            .collect()
    })
}

/// What [`check_credit`] saw: ends credited, and jobs fast-placed after one.
#[derive(Default)]
struct Credited {
    ends: usize,
    placed_after: usize,
}

/// Runs a pass, then plays `steps` on its leftover, until [`credit_end`] refuses an end (the
/// caller would run a full pass then). A submitted job goes to [`place_fast`] (and is dropped if
/// it does not fit). Whenever `credit_end` credits an end: (b) a full pass over the nodes as they
/// are now, with the jobs left waiting queued, places none of them; the array counts are those
/// of the elements running; what the leftover hands out is free. Whenever `place_fast` places a
/// job: (a) a full pass over the nodes as they are, with the jobs left waiting plus it queued,
/// places it too (and, once an end was credited, none of the others); the placement fits and
/// takes nothing the pass's reservation held.
fn check_credit(w: &World, steps: &[Step]) -> Result<Credited, TestCaseError> {
    let d = schedule(&w.snapshot());
    let pass = run(&w.snapshot());
    let mut left = d.leftover.clone();
    let all: Vec<&Placement> = d.placements.iter().collect();
    let mut nodes = apply(&w.nodes, w, &all)?;
    let waiting: Vec<QueuedJob> =
        w.queue.iter().filter(|j| !d.placements.iter().any(|p| p.job == j.id)).cloned().collect();
    let mut seen = Credited::default();
    for step in steps {
        match step {
            Step::End(ix) => {
                let running: Vec<(usize, &RunningJob)> =
                    nodes.iter().enumerate().flat_map(|(i, n)| n.running.iter().map(move |r| (i, r))).collect();
                if running.is_empty() {
                    continue;
                }
                let (at, ended) = running[ix.index(running.len())];
                let ended = ended.clone();
                let before = left.clone();
                if !credit_end(&mut left, &ended, at) {
                    prop_assert_eq!(&left, &before, "a refused end changed the leftover");
                    break;
                }
                seen.ends += 1;
                release(&mut nodes, |r| r.job == ended.job);

                // (b) A full pass now leaves waiting exactly the jobs the pass left waiting.
                let next =
                    World { nodes: nodes.clone(), queue: waiting.clone(), users: w.users.clone(), limits: vec![] };
                let full = schedule(&next.snapshot());
                prop_assert!(
                    full.placements.is_empty(),
                    "the end of {:?} on node {} was credited, but a full pass places {:?}",
                    ended,
                    at,
                    full.placements
                );
                prop_assert_eq!(full.pending.len(), waiting.len());

                // The array counts are those of the elements running.
                let mut arrays: BTreeMap<JobId, u32> = BTreeMap::new();
                for a in nodes.iter().flat_map(|n| &n.running).filter_map(|r| r.array) {
                    *arrays.entry(a).or_default() += 1;
                }
                prop_assert_eq!(&left.arrays, &arrays);

                // What the leftover hands out is free.
                for (n, l) in nodes.iter().zip(&left.nodes) {
                    prop_assert!(l.cpus <= n.cpus_total - n.cpus_used, "leftover CPUs on {} are not free", n.name);
                    for g in &l.gpus {
                        let slot = n.gpus.iter().find(|s| s.index == g.index).expect("the GPU exists");
                        prop_assert!(!g.whole || slot.is_free_whole(), "GPU {} is not free whole", g.index);
                        prop_assert!(g.mib == 0 || slot.fits_mib(g.mib), "GPU {} has no {} MiB", g.index, g.mib);
                    }
                }
            }
            Step::New(j) => {
                let Some(p) = place_fast(&mut left, j) else { continue };
                if seen.ends > 0 {
                    seen.placed_after += 1;
                }
                let mut queue = waiting.clone();
                queue.push(j.clone());
                queue.sort_by_key(|j| j.order_key());
                let next = World { nodes: nodes.clone(), queue, users: w.users.clone(), limits: vec![] };

                // Safe: it fits, and takes nothing the pass's reservation held.
                let held = &pass.nodes[p.node];
                for g in &p.gpus {
                    let at = held.position(*g).expect("the GPU exists");
                    prop_assert!(!held.gpus[at].held(), "job {} took GPU {}, which a reservation holds", j.id, g);
                }
                let after = apply(&nodes, &next, &[&p])?;
                let n = &after[p.node];
                prop_assert!(n.cpus_used + held.cpus_held() <= n.cpus_total, "job {} took held CPUs", j.id);

                // (a) A full pass places it too, and no job left waiting once an end was credited.
                let full = schedule(&next.snapshot());
                prop_assert!(
                    full.placements.iter().any(|q| q.job == j.id),
                    "job {} was placed fast at {:?} after {} credited ends, but a full pass leaves it waiting: {:?}",
                    j.id,
                    p,
                    seen.ends,
                    full.pending.iter().find(|(id, _)| *id == j.id)
                );
                if seen.ends > 0 {
                    prop_assert!(full.placements.iter().all(|q| q.job == j.id), "a full pass places {:?}", full);
                }
                let all: Vec<&Placement> = full.placements.iter().collect();
                apply(&next.nodes, &next, &all)?;
                nodes = after;
            }
        }
    }
    Ok(seen)
}

/// The pattern credits are for: every queued job needs GPUs, which are mostly busy, while jobs
/// come and go.
fn arb_gpu_queue_world() -> impl Strategy<Value = World> {
    arb_world().prop_map(|mut w| {
        for j in &mut w.queue {
            j.gpus = j.gpus.max(1);
        }
        w
    })
}

#[test]
fn credited_ends_happen_often_enough_to_test_them() {
    use proptest::test_runner::{Config, TestRng, TestRunner};
    use std::cell::Cell;
    // Most refusals are right: a job waits behind a reservation, or for what the job that ended
    // freed. Enough cases credit an end, and place a job after one, to test them.
    let worlds = [
        ("loose", arb_world().boxed()),
        ("tight", arb_tight_world().boxed()),
        ("GPU queue", arb_gpu_queue_world().boxed()),
    ];
    for (name, world) in worlds {
        let (cases, credited, placed) = (Cell::new(0), Cell::new(0), Cell::new(0));
        let mut runner =
            TestRunner::new_with_rng(Config::with_cases(1000), TestRng::deterministic_rng(Default::default()));
        runner
            .run(&(world, arb_steps()), |(w, steps)| {
                cases.set(cases.get() + 1);
                let seen = check_credit(&w, &steps)?;
                credited.set(credited.get() + (seen.ends > 0) as u32);
                placed.set(placed.get() + (seen.placed_after > 0) as u32);
                Ok(())
            })
            .expect("credited ends are sound");
        let (cases, credited, placed) = (cases.get(), credited.get(), placed.get());
        eprintln!("{name}: {credited} of {cases} cases credited an end, {placed} placed a job after one");
        assert!(credited * 100 >= cases * 15, "{name}: only {credited} of {cases} cases credited an end");
        assert!(placed * 100 >= cases * 5, "{name}: only {placed} of {cases} cases placed after a credit");
    }
}

/// Random node rules for a world: tags per node, per-node job limits, spreading, and choices
/// (a node, tags, or a gang) for some of the jobs.
fn arb_rules(w: &World) -> impl Strategy<Value = crate::policy::Rules> + use<> {
    let n = w.nodes.len();
    let ids: Vec<JobId> = w.queue.iter().map(|j| j.id).collect();
    let tag = prop::sample::select(vec!["a", "b"]);
    let node_tags = prop::collection::vec(prop::collection::vec(tag.clone(), 0..3), n);
    let max_jobs = prop::collection::vec(prop::option::weighted(0.4, 0u32..3), n);
    let choice = (prop::option::weighted(0.3, 0..n), prop::collection::vec(tag, 0..2), 0u32..4);
    let choices = prop::collection::vec(prop::option::weighted(0.5, choice), ids.len());
    (node_tags, max_jobs, any::<bool>(), choices).prop_map(move |(node_tags, max_jobs, spread, choices)| {
        let mut jobs = std::collections::HashMap::new();
        for (id, c) in ids.iter().zip(choices) {
            if let Some((node, tags, nodes)) = c {
                let node = node.filter(|_| nodes <= 1).map(|k| format!("n{k}"));
                let tags = tags.iter().map(|t| t.to_string()).collect();
                jobs.insert(*id, crate::policy::JobRule { node, tags, nodes });
            }
        }
        let node_tags = node_tags.into_iter().map(|t| t.into_iter().map(str::to_string).collect()).collect();
        crate::policy::Rules { node_tags, max_jobs, spread, jobs }
    })
}

fn check_rules(w: &World, rules: &crate::policy::Rules) -> Result<(), TestCaseError> {
    let snap = Snapshot { rules: Some(rules), ..w.snapshot() };
    let d = schedule(&snap);
    prop_assert_eq!(&d, &schedule(&snap), "not deterministic");
    // Each rank against what was free: no GPU or CPU is over-committed.
    let placements: Vec<&Placement> = d.placements.iter().collect();
    let mut by_job: BTreeMap<JobId, Vec<usize>> = BTreeMap::new();
    for p in &placements {
        by_job.entry(p.job).or_default().push(p.node);
    }
    let after = apply(&w.nodes, w, &placements)?;
    for (i, n) in after.iter().enumerate() {
        if let Some(Some(max)) = rules.max_jobs.get(i) {
            let before = w.nodes[i].running.len() as u32;
            let added = n.running.len() as u32 - before;
            prop_assert!(added == 0 || before + added <= *max, "node {} past its max_jobs", i);
        }
    }
    for (job, nodes) in &by_job {
        let want = rules.jobs.get(job).map_or(1, |r| r.nodes.max(1)) as usize;
        prop_assert_eq!(nodes.len(), want, "job {} placed on {:?}: all its ranks or none", job, nodes);
        let mut distinct = nodes.clone();
        distinct.sort_unstable();
        distinct.dedup();
        prop_assert_eq!(distinct.len(), nodes.len(), "job {}'s ranks share a node", job);
        if let Some(r) = rules.jobs.get(job) {
            for &k in nodes {
                prop_assert!(r.node.as_ref().is_none_or(|name| *name == w.nodes[k].name), "job {} off its node", job);
                prop_assert!(
                    r.tags.iter().all(|t| rules.node_tags[k].contains(t)),
                    "job {} on a node without its tags",
                    job
                );
            }
        }
    }
    // Every job is placed or told why not, once.
    let pending: Vec<JobId> = d.pending.iter().map(|(j, _)| *j).collect();
    for j in &w.queue {
        prop_assert_eq!(by_job.contains_key(&j.id) as usize + pending.iter().filter(|p| **p == j.id).count(), 1);
    }
    if !rules.jobs.is_empty() && d.pending.iter().any(|(j, _)| rules.jobs.contains_key(j)) {
        prop_assert!(!d.leftover.fast_path_ok, "a waiting job with a node choice leaves no fast path");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn node_rules_hold(
        (w, rules) in arb_tight_world().prop_flat_map(|w| { let r = arb_rules(&w); (Just(w), r) })
    ) {
        check_rules(&w, &rules)?;
    }
}
