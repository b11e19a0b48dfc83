use super::{credit_end, place_fast, schedule};
use crate::job::{JobId, Millis};
use crate::policy::{
    Decisions, GpuSlot, Leftover, NodeView, PendingReason, Placement, QueuedJob, RunningJob, Snapshot, UserLimits,
    UserShare,
};

const GIB: u64 = 1024;
const NOW: Millis = 1_000_000;
const MIN: u64 = 60_000;
const HOUR: Millis = 3_600_000;

fn node(gpus: u32, cpus: u32) -> NodeView {
    NodeView {
        name: "n".into(),
        gpus: (0..gpus)
            .map(|index| GpuSlot {
                index,
                memory_total_mib: 80 * GIB,
                foreign_used_mib: 0,
                foreign_busy: false,
                whole: None,
                shared: vec![],
            })
            .collect(),
        cpus_total: cpus,
        cpus_used: 0,
        running: vec![],
    }
}

/// Puts a running job on `n`, keeping the GPU slots and CPU count consistent with it.
fn run_on(n: &mut NodeView, job: JobId, user: u32, gpus: &[u32], mib: Option<u64>, ends_by: Option<Millis>) {
    for &g in gpus {
        let slot = &mut n.gpus[g as usize];
        match mib {
            None => slot.whole = Some(job),
            Some(m) => slot.shared.push((job, m)),
        }
    }
    n.cpus_used += 1;
    n.running.push(RunningJob { job, user, gpus: gpus.to_vec(), gpu_mem_mib: mib, cpus: 1, ends_by, array: None });
}

fn job(id: JobId, gpus: u32, cpus: u32) -> QueuedJob {
    QueuedJob {
        id,
        priority: 0,
        submitted_at: id,
        user: 0,
        gpus,
        gpu_mem_mib: None,
        cpus,
        timeout_ms: None,
        array: None,
    }
}

fn mem(id: JobId, gpus: u32, mib: u64) -> QueuedJob {
    QueuedJob { gpu_mem_mib: Some(mib), ..job(id, gpus, 1) }
}

fn users(n: usize) -> Vec<UserShare> {
    vec![UserShare { weight: 1.0, usage: 0.0 }; n]
}

fn run_users(nodes: &[NodeView], mut queue: Vec<QueuedJob>, users: &[UserShare]) -> Decisions {
    queue.sort_by_key(|j| j.order_key());
    schedule(&Snapshot { now: NOW, nodes, queue: &queue, users, limits: &[], rules: None })
}

fn run(nodes: &[NodeView], queue: Vec<QueuedJob>) -> Decisions {
    run_users(nodes, queue, &users(4))
}

fn placed(d: &Decisions) -> Vec<JobId> {
    d.placements.iter().map(|p| p.job).collect()
}

fn gpus_of(d: &Decisions, id: JobId) -> Vec<u32> {
    d.placements.iter().find(|p| p.job == id).map(|p| p.gpus.clone()).expect("placed")
}

fn reason(d: &Decisions, id: JobId) -> &PendingReason {
    &d.pending.iter().find(|(j, _)| *j == id).expect("pending").1
}

#[test]
fn whole_jobs_take_distinct_lowest_free_gpus() {
    let mut n = node(4, 8);
    run_on(&mut n, 99, 0, &[0], None, None);
    let d = run(&[n], vec![job(1, 2, 1), job(2, 1, 1), job(3, 1, 1)]);
    assert_eq!(gpus_of(&d, 1), vec![1, 2]);
    assert_eq!(gpus_of(&d, 2), vec![3]);
    assert_eq!(
        d.pending,
        vec![(3, PendingReason::Resources { need_gpus: 1, free_gpus: 0, need_cpus: 1, free_cpus: 5 })]
    );
}

#[test]
fn memory_jobs_pack_onto_one_gpu_while_their_reservations_fit() {
    // 80 GiB, 10 GiB used outside Ravel: three 20 GiB jobs fit on GPU 0, the fourth goes on.
    let mut n = node(2, 8);
    n.gpus[0].foreign_used_mib = 10 * GIB;
    let d = run(&[n], (1..=4).map(|i| mem(i, 1, 20 * GIB)).collect());
    let on: Vec<Vec<u32>> = (1..=4).map(|i| gpus_of(&d, i)).collect();
    assert_eq!(on, vec![vec![0], vec![0], vec![0], vec![1]]);
    assert_eq!(d.placements[0].gpu_mem_mib, Some(20 * GIB));
}

#[test]
fn best_fit_prefers_the_fuller_gpu() {
    let mut n = node(3, 8);
    run_on(&mut n, 90, 0, &[2], Some(40 * GIB), None);
    run_on(&mut n, 91, 0, &[1], Some(20 * GIB), None);
    // GPU 2 has 40 GiB free, GPU 1 60 GiB, GPU 0 is whole: 30 GiB fits best on GPU 2, and a
    // two-GPU 30 GiB job takes GPUs 1 and 0, leaving nothing whole.
    let d = run(&[n], vec![mem(1, 1, 30 * GIB), mem(2, 2, 30 * GIB), job(3, 1, 1)]);
    assert_eq!(gpus_of(&d, 1), vec![2]);
    assert_eq!(gpus_of(&d, 2), vec![0, 1]);
    assert_eq!(reason(&d, 3).to_string(), "Resources: needs 1 GPU, 0 free");
}

#[test]
fn whole_and_shared_jobs_never_share_a_gpu() {
    let mut n = node(2, 8);
    run_on(&mut n, 90, 0, &[0], Some(10 * GIB), None);
    let d = run(&[n], vec![job(1, 1, 1), mem(2, 1, 10 * GIB), job(3, 1, 1)]);
    assert_eq!(gpus_of(&d, 1), vec![1], "GPU 0 is shared");
    assert_eq!(gpus_of(&d, 2), vec![0], "GPU 1 is taken whole");
    assert!(reason(&d, 3).to_string().starts_with("Resources: needs 1 GPU, 0 free"));
}

#[test]
fn foreign_busy_gpus_are_not_used() {
    let mut n = node(2, 8);
    n.gpus[0].foreign_busy = true;
    let d = run(std::slice::from_ref(&n), vec![job(1, 1, 1), mem(2, 1, GIB)]);
    assert_eq!(gpus_of(&d, 1), vec![1]);
    assert_eq!(reason(&d, 2).to_string(), "Resources: needs 1024 MiB on 1 GPU, 0 GPUs with room");
    let d = run(&[n], vec![job(1, 2, 1)]);
    assert_eq!(reason(&d, 1).to_string(), "GPU 0 busy (needs 2 GPUs, 1 free)");
}

#[test]
fn higher_priority_goes_first() {
    let d = run(&[node(1, 8)], vec![job(1, 1, 1), QueuedJob { priority: 5, ..job(2, 1, 1) }]);
    assert_eq!(placed(&d), vec![2]);
    assert_eq!(reason(&d, 1).to_string(), "Resources: needs 1 GPU, 0 free");
}

#[test]
fn fair_share_prefers_the_user_holding_fewer_gpus() {
    // User 0 holds 4 GPUs and queued 100 jobs first; user 1 queued one job last.
    let mut n = node(5, 64);
    for g in 0..4 {
        run_on(&mut n, 900 + g as JobId, 0, &[g], None, None);
    }
    let mut q: Vec<QueuedJob> = (1..=100).map(|i| job(i, 1, 1)).collect();
    q.push(QueuedJob { user: 1, ..job(101, 1, 1) });
    let d = run(&[n], q);
    assert_eq!(placed(&d), vec![101]);
    assert_eq!(d.pending[0].0, 1, "user 0's jobs follow in queue order");
    assert_eq!(d.pending.len(), 100);
}

#[test]
fn equal_standing_keeps_queue_order() {
    for (first, second) in [(0, 1), (1, 0)] {
        let q = vec![QueuedJob { user: first, ..job(1, 1, 1) }, QueuedJob { user: second, ..job(2, 1, 1) }];
        let d = run(&[node(1, 8)], q);
        assert_eq!(placed(&d), vec![1]);
    }
}

#[test]
fn fair_share_interleaves_users_and_then_uses_decayed_usage() {
    let q: Vec<QueuedJob> =
        (1..=3).map(|i| job(i, 1, 1)).chain((4..=6).map(|i| QueuedJob { user: 1, ..job(i, 1, 1) })).collect();
    let d = run(&[node(4, 8)], q.clone());
    assert_eq!(placed(&d), vec![1, 4, 2, 5]);
    // Same GPUs held: the user with less recent usage goes first.
    let shares = [UserShare { weight: 1.0, usage: 100.0 }, UserShare { weight: 1.0, usage: 10.0 }];
    let d = run_users(&[node(4, 8)], q, &shares);
    assert_eq!(placed(&d), vec![4, 1, 5, 2]);
}

#[test]
fn weights_scale_the_share() {
    let mut n = node(4, 8);
    run_on(&mut n, 900, 0, &[0], None, None);
    run_on(&mut n, 901, 0, &[1], None, None);
    run_on(&mut n, 902, 1, &[2], None, None);
    // User 1 queued first, but user 0 holds 2 GPUs at weight 3 (0.67) against 1 at weight 1.
    let q = vec![QueuedJob { user: 1, ..job(1, 1, 1) }, QueuedJob { user: 0, ..job(2, 1, 1) }];
    let shares = [UserShare { weight: 3.0, usage: 0.0 }, UserShare { weight: 1.0, usage: 0.0 }];
    assert_eq!(placed(&run_users(std::slice::from_ref(&n), q.clone(), &shares)), vec![2]);
    // A weight of 0 or NaN counts as 1: 2 GPUs against 1.
    for w in [0.0, -1.0, f64::NAN] {
        let shares = [UserShare { weight: w, usage: 0.0 }, UserShare { weight: 1.0, usage: 0.0 }];
        assert_eq!(placed(&run_users(std::slice::from_ref(&n), q.clone(), &shares)), vec![1]);
    }
}

#[test]
fn priority_levels_come_before_fair_share() {
    let mut n = node(2, 8);
    run_on(&mut n, 900, 0, &[0], None, None);
    let q = vec![QueuedJob { user: 1, ..job(1, 1, 1) }, QueuedJob { user: 0, priority: 1, ..job(2, 1, 1) }];
    assert_eq!(placed(&run(&[n], q)), vec![2]);
}

#[test]
fn array_limit_caps_running_elements_without_reserving() {
    let mut n = node(0, 8);
    n.running.push(RunningJob {
        job: 900,
        user: 0,
        gpus: vec![],
        gpu_mem_mib: None,
        cpus: 1,
        ends_by: None,
        array: Some(7),
    });
    n.cpus_used = 1;
    let element = |id| QueuedJob { array: Some((7, 2)), ..job(id, 0, 1) };
    let d = run(&[n], vec![element(1), element(2), element(3), job(4, 0, 6)]);
    assert_eq!(placed(&d), vec![1, 4], "the limited elements hold nothing back");
    assert_eq!(reason(&d, 2), &PendingReason::ArrayLimit { array: 7, limit: 2 });
    assert_eq!(reason(&d, 3).to_string(), "Array limit: 2 of array 7 running");
}

#[test]
fn user_limits_cap_gpus_and_running_jobs_without_reserving() {
    let mut n = node(8, 16);
    run_on(&mut n, 900, 0, &[0, 1], None, None);
    let limits = [UserLimits { max_gpus: Some(4), max_running: None }, UserLimits::default()];
    let alice = |id, gpus| job(id, gpus, 1);
    let bob = |id, gpus| QueuedJob { user: 1, ..job(id, gpus, 1) };
    let mut q = vec![alice(1, 1), alice(2, 2), alice(3, 1), alice(4, 0), bob(5, 3)];
    q.sort_by_key(|j| j.order_key());
    let d = schedule(&Snapshot {
        now: NOW,
        nodes: &[n.clone()],
        queue: &q,
        users: &users(2),
        limits: &limits,
        rules: None,
    });
    let mut ids = placed(&d);
    ids.sort();
    assert_eq!(ids, vec![1, 3, 4, 5], "alice stops at 4 GPUs; her CPU job and bob's run");
    let PendingReason::UserLimit { user: 0, hit } = reason(&d, 2) else { panic!("{:?}", reason(&d, 2)) };
    assert_eq!((hit.gpus, hit.used, hit.limit), (true, 3, 4));
    assert_eq!(reason(&d, 2).to_string(), "User limit: uses 3 of 4 GPUs");

    let limits = [UserLimits { max_gpus: None, max_running: Some(2) }];
    let q = vec![alice(1, 1), alice(2, 1), alice(3, 1)];
    let d = schedule(&Snapshot { now: NOW, nodes: &[n], queue: &q, users: &users(1), limits: &limits, rules: None });
    assert_eq!(placed(&d), vec![1]);
    assert_eq!(reason(&d, 2).to_string(), "User limit: runs 2 of 2 jobs");
}

#[test]
fn a_blocked_head_is_not_starved_by_small_jobs_behind_it() {
    let mut n = node(4, 8);
    run_on(&mut n, 900, 0, &[0], None, None);
    run_on(&mut n, 901, 0, &[1], None, None);
    let d = run(std::slice::from_ref(&n), vec![job(1, 3, 1), job(2, 1, 1)]);
    assert!(d.placements.is_empty());
    assert_eq!(reason(&d, 1).to_string(), "Resources: needs 3 GPUs, 2 free");
    assert_eq!(reason(&d, 2), &PendingReason::FairShare { behind: 1 });
    assert!(d.estimated_start.is_empty(), "jobs in its way have no time limit");
    let d = run(&[n], vec![QueuedJob { priority: 1, ..job(1, 3, 1) }, job(2, 1, 1)]);
    assert_eq!(reason(&d, 2).to_string(), "Priority: resources held for job 1");
}

#[test]
fn only_the_first_blocked_job_reserves() {
    // The head waits for GPUs and holds one CPU; the next GPU job holds nothing, so CPU-only work
    // behind them runs on all the other CPUs.
    let mut n = node(1, 8);
    run_on(&mut n, 900, 0, &[0], None, None);
    let mut q: Vec<QueuedJob> = (1..=20).map(|i| job(i, 1, 1)).collect();
    q.extend((21..=30).map(|i| job(i, 0, 1)));
    let d = run(&[n], q);
    assert_eq!(placed(&d), (21..=26).collect::<Vec<_>>(), "7 free CPUs, one held for the head");
    assert_eq!(reason(&d, 2).to_string(), "Resources: needs 1 GPU, 0 free");
    assert_eq!(reason(&d, 27), &PendingReason::FairShare { behind: 1 });
    let positions: Vec<JobId> = d.pending.iter().map(|(j, _)| *j).collect();
    assert_eq!(positions[..3], [1, 2, 3]);
}

#[test]
fn a_job_no_node_could_ever_hold_reserves_nothing() {
    let d = run(&[node(2, 8)], vec![job(1, 4, 1), job(2, 1, 1)]);
    assert_eq!(placed(&d), vec![2]);
    assert_eq!(reason(&d, 1).to_string(), "Resources: needs 4 GPUs, 2 free");
}

/// Four GPUs: 0 and 1 free, 2 held until +1 h, 3 held by `unlimited_3` (no limit) or until +2 h.
fn backfill_node(unlimited_3: bool) -> NodeView {
    let mut n = node(4, 16);
    run_on(&mut n, 900, 0, &[2], None, Some(NOW + HOUR));
    run_on(&mut n, 901, 0, &[3], None, if unlimited_3 { None } else { Some(NOW + 2 * HOUR) });
    n
}

#[test]
fn backfill_uses_held_gpus_when_it_ends_before_the_shadow_time() {
    let short = QueuedJob { timeout_ms: Some(30 * MIN), ..job(2, 1, 1) };
    let long = QueuedJob { timeout_ms: Some(90 * MIN), ..job(3, 1, 1) };
    let d = run(&[backfill_node(false)], vec![job(1, 3, 1), short, long, job(4, 1, 1)]);
    // The head needs GPU 2 as well: it can start at +1 h at the latest.
    assert_eq!(d.estimated_start, vec![(1, NOW + HOUR)]);
    assert_eq!(placed(&d), vec![2]);
    assert_eq!(gpus_of(&d, 2), vec![0]);
    assert_eq!(reason(&d, 3), &PendingReason::FairShare { behind: 1 });
    assert_eq!(reason(&d, 4), &PendingReason::FairShare { behind: 1 });
}

#[test]
fn backfill_ignores_unlimited_jobs_the_head_does_not_wait_for() {
    // GPU 3's job has no limit, but three GPUs are free once GPU 2's ends.
    let short = QueuedJob { timeout_ms: Some(30 * MIN), ..job(2, 1, 1) };
    let d = run(&[backfill_node(true)], vec![job(1, 3, 1), short]);
    assert_eq!(d.estimated_start, vec![(1, NOW + HOUR)]);
    assert_eq!(placed(&d), vec![2]);
}

#[test]
fn no_backfill_when_the_head_waits_for_an_unlimited_job() {
    let short = QueuedJob { timeout_ms: Some(MIN), ..job(2, 1, 1) };
    let d = run(&[backfill_node(true)], vec![job(1, 4, 1), short.clone()]);
    assert!(d.estimated_start.is_empty());
    assert!(d.placements.is_empty());
    assert_eq!(reason(&d, 2), &PendingReason::FairShare { behind: 1 });
    // With a limit on GPU 3's job, the head starts at +2 h and the short job fits before.
    let d = run(&[backfill_node(false)], vec![job(1, 4, 1), short]);
    assert_eq!(d.estimated_start, vec![(1, NOW + 2 * HOUR)]);
    assert_eq!(placed(&d), vec![2]);
}

#[test]
fn the_shadow_time_counts_jobs_placed_in_the_same_pass() {
    let first = QueuedJob { timeout_ms: Some(60 * MIN), ..job(1, 1, 1) };
    let d = run(&[node(2, 8)], vec![first, job(2, 2, 1)]);
    assert_eq!(placed(&d), vec![1]);
    assert_eq!(d.estimated_start, vec![(2, NOW + HOUR)]);
}

#[test]
fn a_memory_reservation_holds_memory_that_frees_later() {
    // 30 GiB free now; the head needs 60 GiB, which the 50 GiB job frees at +1 h.
    let mut n = node(1, 8);
    run_on(&mut n, 900, 0, &[0], Some(50 * GIB), Some(NOW + HOUR));
    let short = QueuedJob { timeout_ms: Some(10 * MIN), ..mem(3, 1, 20 * GIB) };
    let d = run(&[n], vec![mem(1, 1, 60 * GIB), mem(2, 1, 20 * GIB), short]);
    assert_eq!(reason(&d, 1).to_string(), "Resources: needs 61440 MiB on 1 GPU, 0 GPUs with room");
    assert_eq!(reason(&d, 2), &PendingReason::FairShare { behind: 1 });
    assert_eq!(placed(&d), vec![3], "the short one backfills");
    assert_eq!(d.estimated_start, vec![(1, NOW + HOUR)]);
}

#[test]
fn a_whole_gpu_reservation_keeps_shared_jobs_off_it() {
    let mut n = node(2, 8);
    run_on(&mut n, 900, 0, &[1], None, None);
    let d = run(&[n], vec![job(1, 2, 1), mem(2, 1, GIB)]);
    assert!(d.placements.is_empty());
    assert_eq!(reason(&d, 2), &PendingReason::FairShare { behind: 1 });
}

#[test]
fn shared_memory_beyond_the_reservation_stays_usable() {
    // The head needs two 30 GiB shares and holds 30 GiB of GPU 0; 50 GiB there remain for others.
    let mut n = node(2, 8);
    run_on(&mut n, 900, 0, &[1], None, None);
    let d = run(&[n], vec![mem(1, 2, 30 * GIB), mem(2, 1, 50 * GIB), mem(3, 1, 10 * GIB)]);
    assert_eq!(placed(&d), vec![2]);
    assert_eq!(reason(&d, 3), &PendingReason::FairShare { behind: 1 });
}

#[test]
fn cpu_only_jobs_ignore_a_memory_request_and_nodes_may_be_missing() {
    let d = run(&[node(0, 2)], vec![QueuedJob { gpu_mem_mib: Some(GIB), ..job(1, 0, 2) }]);
    assert_eq!(d.placements[0].gpu_mem_mib, None);
    assert_eq!(d.placements[0].gpus, Vec::<u32>::new());
    let d = run(&[], vec![job(1, 0, 2)]);
    assert_eq!(reason(&d, 1).to_string(), "Resources: needs 2 CPUs, 0 free");
}

#[test]
fn jobs_go_to_the_first_node_where_they_fit() {
    let mut a = node(1, 8);
    run_on(&mut a, 900, 0, &[0], None, None);
    let d = run(&[a, node(2, 8)], vec![job(1, 1, 1), job(2, 0, 1)]);
    assert_eq!((d.placements[0].node, d.placements[1].node), (1, 0));
}

#[test]
fn a_backfill_takes_held_resources_first() {
    // The head is short of CPUs only; its 50 GiB are held on GPU 2 (best fit). The backfill goes
    // there too, so GPUs 0 and 1 stay for jobs that cannot backfill.
    let mut n = node(3, 4);
    n.gpus[2].foreign_used_mib = 20 * GIB;
    n.running.push(RunningJob {
        job: 900,
        user: 0,
        gpus: vec![],
        gpu_mem_mib: None,
        cpus: 3,
        ends_by: Some(NOW + HOUR),
        array: None,
    });
    n.cpus_used = 3;
    let head = QueuedJob { cpus: 2, ..mem(1, 1, 50 * GIB) };
    let short = QueuedJob { timeout_ms: Some(30 * MIN), ..job(2, 1, 1) };
    let d = run(&[n], vec![head, short]);
    assert_eq!(reason(&d, 1).to_string(), "Resources: needs 2 CPUs, 1 free");
    assert_eq!(d.estimated_start, vec![(1, NOW + HOUR)]);
    assert_eq!(gpus_of(&d, 2), vec![2]);
}

/// The nodes with `d`'s placements running.
fn after(nodes: &[NodeView], queue: &[QueuedJob], placements: &[Placement]) -> Vec<NodeView> {
    let mut nodes = nodes.to_vec();
    for p in placements {
        let j = queue.iter().find(|j| j.id == p.job).expect("a queued job");
        let n = &mut nodes[p.node];
        for &g in &p.gpus {
            let slot = n.gpus.iter_mut().find(|s| s.index == g).expect("the GPU exists");
            match p.gpu_mem_mib {
                None => slot.whole = Some(p.job),
                Some(m) => slot.shared.push((p.job, m)),
            }
        }
        n.cpus_used += p.cpus;
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
    nodes
}

/// Whether a full pass places `new`, on `nodes` with `d`'s placements running and the jobs `d`
/// left waiting, plus `new`, queued.
fn full_pass_places(nodes: &[NodeView], queue: &[QueuedJob], d: &Decisions, new: &QueuedJob) -> bool {
    let nodes = after(nodes, queue, &d.placements);
    let mut waiting: Vec<QueuedJob> =
        queue.iter().filter(|j| d.pending.iter().any(|(id, _)| *id == j.id)).cloned().collect();
    waiting.push(new.clone());
    placed(&run(&nodes, waiting)).contains(&new.id)
}

fn cpu_job(id: JobId, cpus: u32) -> QueuedJob {
    QueuedJob { submitted_at: 1_000_000 + id, ..job(id, 0, cpus) }
}

#[test]
fn a_cpu_job_starts_at_once_beside_a_long_queue_of_gpu_jobs() {
    // Every GPU busy, 10,000 GPU jobs waiting; the first reserves 2 CPUs, the others nothing.
    let mut n = node(4, 32);
    for g in 0..4 {
        run_on(&mut n, 900 + g as JobId, 0, &[g], None, None);
    }
    let queue: Vec<QueuedJob> = (1..=10_000).map(|i| job(i, 1, 2)).collect();
    let nodes = [n];
    let d = run(&nodes, queue.clone());
    assert!(d.placements.is_empty());
    let mut left = d.leftover.clone();
    assert!(left.fast_path_ok);
    assert_eq!(left.nodes[0].cpus, 26, "28 free, 2 held for the head");
    assert!(left.nodes[0].gpus.iter().all(|g| !g.whole && g.mib == 0));

    let new = cpu_job(20_000, 1);
    let p = place_fast(&mut left, &new).expect("fits beside the queue");
    assert_eq!(p, Placement { job: 20_000, node: 0, gpus: vec![], gpu_mem_mib: None, cpus: 1 });
    assert!(full_pass_places(&nodes, &queue, &d, &new));
    // 25 more fit, not one more; nor a GPU job.
    for i in 1..=25 {
        assert!(place_fast(&mut left, &cpu_job(20_000 + i, 1)).is_some());
    }
    assert_eq!(place_fast(&mut left, &cpu_job(20_100, 1)), None);
    assert_eq!(place_fast(&mut d.leftover.clone(), &job(20_101, 1, 1)), None);
}

#[test]
fn a_gpu_held_for_the_blocked_head_is_not_handed_out() {
    // GPUs 0 and 1 busy; the head needs 3 GPUs and holds 2 and 3 (and one CPU).
    let mut n = node(4, 8);
    run_on(&mut n, 900, 0, &[0], None, None);
    run_on(&mut n, 901, 0, &[1], None, None);
    let queue = vec![QueuedJob { priority: 1, ..job(1, 3, 1) }];
    let nodes = [n];
    let d = run(&nodes, queue.clone());
    assert_eq!(reason(&d, 1).to_string(), "Resources: needs 3 GPUs, 2 free");
    let mut left = d.leftover.clone();
    assert!(left.nodes[0].gpus.iter().all(|g| !g.whole && g.mib == 0));
    for new in [job(10, 1, 1), mem(11, 1, GIB), QueuedJob { priority: 5, ..job(12, 1, 1) }] {
        assert_eq!(place_fast(&mut left, &new), None, "job {}", new.id);
    }
    assert_eq!(left.nodes[0].cpus, 5);
    let new = cpu_job(13, 5);
    assert!(place_fast(&mut left, &new).is_some());
    assert!(full_pass_places(&nodes, &queue, &d, &new));
}

#[test]
fn fast_placements_honor_array_limits() {
    let mut n = node(0, 8);
    n.running.push(RunningJob {
        job: 900,
        user: 0,
        gpus: vec![],
        gpu_mem_mib: None,
        cpus: 1,
        ends_by: None,
        array: Some(7),
    });
    n.cpus_used = 1;
    let d = run(&[n], vec![]);
    let mut left = d.leftover.clone();
    assert_eq!(left.arrays.get(&7), Some(&1));
    let element = |id| QueuedJob { array: Some((7, 2)), ..cpu_job(id, 1) };
    assert!(place_fast(&mut left, &element(1)).is_some());
    assert_eq!(place_fast(&mut left, &element(2)), None, "two of array 7 run");
    assert!(place_fast(&mut left, &QueuedJob { array: Some((8, 1)), ..cpu_job(3, 1) }).is_some());
    assert_eq!(left.arrays.get(&7), Some(&2));
}

#[test]
fn fast_memory_shares_go_to_the_best_fit_like_a_pass() {
    let mut n = node(3, 8);
    run_on(&mut n, 90, 0, &[2], Some(40 * GIB), None);
    run_on(&mut n, 91, 0, &[1], Some(20 * GIB), None);
    let nodes = [n];
    let mut left = run(&nodes, vec![]).leftover;
    assert_eq!(
        left.nodes[0].gpus.iter().map(|g| (g.whole, g.mib / GIB)).collect::<Vec<_>>(),
        [(true, 80), (false, 60), (false, 40)]
    );
    let (one, two) = (mem(1, 1, 30 * GIB), mem(2, 2, 30 * GIB));
    let full = run(&nodes, vec![one.clone(), two.clone()]);
    assert_eq!(place_fast(&mut left, &one).expect("fits").gpus, gpus_of(&full, 1));
    assert_eq!(place_fast(&mut left, &two).expect("fits").gpus, gpus_of(&full, 2));
    assert_eq!(
        left.nodes[0].gpus.iter().map(|g| (g.whole, g.mib / GIB)).collect::<Vec<_>>(),
        [(false, 50), (false, 30), (false, 10)]
    );
}

#[test]
fn fast_placements_in_a_row_do_not_overlap() {
    let mut left = run(&[node(2, 3), node(1, 8)], vec![]).leftover;
    let p: Vec<Placement> = (1..=3).map(|i| place_fast(&mut left, &job(i, 1, 1)).expect("fits")).collect();
    let at: Vec<(usize, Vec<u32>)> = p.iter().map(|p| (p.node, p.gpus.clone())).collect();
    assert_eq!(at, [(0, vec![0]), (0, vec![1]), (1, vec![0])]);
    assert_eq!(place_fast(&mut left, &job(4, 1, 1)), None);
    assert_eq!(place_fast(&mut left, &cpu_job(5, 2)).map(|p| p.node), Some(1), "one CPU left on node 0");
    let mut left = run(&[node(2, 8)], vec![]).leftover;
    let first = place_fast(&mut left, &mem(1, 1, 50 * GIB)).expect("fits");
    let second = place_fast(&mut left, &mem(2, 1, 50 * GIB)).expect("fits");
    assert_eq!((first.gpus, second.gpus), (vec![0], vec![1]));
    assert_eq!(place_fast(&mut left, &mem(3, 1, 50 * GIB)), None, "30 GiB left on each");
    assert_eq!(place_fast(&mut left, &job(4, 1, 1)), None, "neither is whole any more");
}

/// The head (2 GPUs, 1 CPU) waits for CPUs on both nodes; on node 0 they free up at +1 h, so it
/// reserves there, and two short jobs backfill onto the GPUs it holds. The next pass would find
/// node 0's GPUs taken and reserve node 1's instead.
fn moving_reservation(head: QueuedJob, short: QueuedJob) -> (Vec<NodeView>, Vec<QueuedJob>, Decisions) {
    let gpus = head.gpus;
    let mut a = node(gpus, 1);
    run_on(&mut a, 900, 0, &[], None, Some(NOW + HOUR));
    let mut b = node(gpus, 1);
    run_on(&mut b, 901, 0, &[], None, None);
    let nodes = vec![a, b];
    let short = QueuedJob { priority: 1, cpus: 0, timeout_ms: Some(30 * MIN), ..short };
    let queue = vec![QueuedJob { priority: 1, ..head }, short.clone(), QueuedJob { id: 3, submitted_at: 3, ..short }];
    let queue = if gpus == 1 { queue[..2].to_vec() } else { queue };
    let d = run(&nodes, queue.clone());
    assert_eq!(d.estimated_start, vec![(1, NOW + HOUR)]);
    assert_eq!(d.placements.iter().map(|p| p.node).collect::<Vec<_>>(), vec![0; queue.len() - 1], "backfilled");
    (nodes, queue, d)
}

#[test]
fn gpus_a_waiting_job_could_reserve_in_the_next_pass_are_not_handed_out() {
    let (nodes, queue, d) = moving_reservation(job(1, 2, 1), job(2, 1, 0));
    // Nothing on node 1 is held now, but the head would hold both its GPUs in the next pass.
    let new = QueuedJob { cpus: 0, ..job(10, 1, 0) };
    assert_eq!(place_fast(&mut d.leftover.clone(), &new), None);
    assert!(!full_pass_places(&nodes, &queue, &d, &new));
}

#[test]
fn memory_a_waiting_job_could_reserve_in_the_next_pass_is_not_handed_out() {
    let (nodes, queue, d) = moving_reservation(mem(1, 1, 60 * GIB), mem(2, 1, 60 * GIB));
    // On node 1 the head could hold 60 GiB in the next pass: 20 GiB are left, and nothing whole.
    let left = &d.leftover.nodes[1].gpus[0];
    assert_eq!((left.whole, left.mib), (false, 20 * GIB));
    for new in [job(10, 1, 0), QueuedJob { cpus: 0, ..mem(11, 1, 30 * GIB) }] {
        assert_eq!(place_fast(&mut d.leftover.clone(), &new), None);
        assert!(!full_pass_places(&nodes, &queue, &d, &new), "job {}", new.id);
    }
    let new = QueuedJob { cpus: 0, ..mem(12, 1, 20 * GIB) };
    assert_eq!(place_fast(&mut d.leftover.clone(), &new).map(|p| p.node), Some(1));
    assert!(full_pass_places(&nodes, &queue, &d, &new));
}

/// Node 0: GPU 0 busy for good, 7 CPUs free; node 1: one GPU, 2 CPUs. The head (user 0, 2 GPUs,
/// 4 CPUs) reserves node 0 and 4 CPUs there; job 2 (user 0) takes node 1's GPU; jobs 3 and 4
/// (user 1, 4 CPUs, job 3 in array 7) wait behind the head. In the next pass user 0 holds a GPU,
/// so user 1 goes first: job 3 starts on node 0 and job 4 reserves what is left there.
fn behind_the_head() -> (Vec<NodeView>, Vec<QueuedJob>, Decisions) {
    let mut a = node(2, 8);
    run_on(&mut a, 900, 2, &[0], None, None);
    let nodes = vec![a, node(1, 2)];
    let queue = vec![
        job(1, 2, 4),
        job(2, 1, 1),
        QueuedJob { user: 1, array: Some((7, 1)), ..job(3, 0, 4) },
        QueuedJob { user: 1, ..job(4, 0, 4) },
    ];
    let d = run(&nodes, queue.clone());
    assert_eq!(placed(&d), vec![2]);
    assert_eq!(reason(&d, 3), &PendingReason::FairShare { behind: 1 });
    (nodes, queue, d)
}

#[test]
fn a_node_where_a_job_waits_behind_a_reservation_leaves_nothing() {
    let (nodes, queue, d) = behind_the_head();
    // 7 CPUs free on node 0, 4 held, but jobs 3 and 4 might take them all in the next pass.
    assert_eq!(d.leftover.nodes[0].cpus, 0);
    let new = QueuedJob { user: 3, ..cpu_job(10, 2) };
    assert_eq!(place_fast(&mut d.leftover.clone(), &new), None);
    assert!(!full_pass_places(&nodes, &queue, &d, &new));
    // Node 1 has a CPU no waiting job could use.
    let new = QueuedJob { user: 3, ..cpu_job(11, 1) };
    assert_eq!(place_fast(&mut d.leftover.clone(), &new).map(|p| p.node), Some(1));
    assert!(full_pass_places(&nodes, &queue, &d, &new));
}

#[test]
fn array_elements_waiting_behind_a_reservation_count_against_the_limit() {
    let (nodes, queue, d) = behind_the_head();
    assert_eq!(d.leftover.arrays.get(&7), Some(&1));
    let new = QueuedJob { user: 3, array: Some((7, 1)), ..cpu_job(10, 1) };
    assert_eq!(place_fast(&mut d.leftover.clone(), &new), None);
    assert!(!full_pass_places(&nodes, &queue, &d, &new));
    let new = QueuedJob { array: Some((7, 2)), ..new };
    assert!(place_fast(&mut d.leftover.clone(), &new).is_some());
    assert!(full_pass_places(&nodes, &queue, &d, &new));
}

#[test]
fn no_fast_path_without_a_pass() {
    let mut left = Leftover::default();
    assert!(!left.fast_path_ok);
    assert_eq!(place_fast(&mut left, &job(1, 0, 0)), None);
}

/// A CPU-only job running on `n`.
fn run_cpus(n: &mut NodeView, job: JobId, cpus: u32, array: Option<JobId>) -> RunningJob {
    let r = RunningJob { job, user: 0, gpus: vec![], gpu_mem_mib: None, cpus, ends_by: None, array };
    n.cpus_used += cpus;
    n.running.push(r.clone());
    r
}

/// The nodes without job `id`.
fn without(nodes: &[NodeView], id: JobId) -> Vec<NodeView> {
    let mut nodes = nodes.to_vec();
    for n in &mut nodes {
        if let Some(at) = n.running.iter().position(|r| r.job == id) {
            let r = n.running.remove(at);
            n.cpus_used -= r.cpus;
            for slot in &mut n.gpus {
                if slot.whole == Some(id) {
                    slot.whole = None;
                }
                slot.shared.retain(|(j, _)| *j != id);
            }
        }
    }
    nodes
}

#[test]
fn a_cpu_job_that_ends_beside_a_long_queue_of_gpu_jobs_is_credited() {
    // Every GPU busy, 10,000 GPU jobs waiting (the first holds 2 CPUs), and a 4-CPU job running.
    let mut n = node(4, 32);
    for g in 0..4 {
        run_on(&mut n, 900 + g as JobId, 0, &[g], None, None);
    }
    let cpu = run_cpus(&mut n, 950, 4, None);
    let queue: Vec<QueuedJob> = (1..=10_000).map(|i| job(i, 1, 2)).collect();
    let nodes = [n];
    let d = run(&nodes, queue.clone());
    let mut left = d.leftover.clone();
    assert_eq!(left.nodes[0].cpus, 22, "24 free, 2 held for the head");
    // New CPU jobs take all of it.
    let first = cpu_job(20_000, 22);
    let p_first = place_fast(&mut left, &first).expect("fits");
    assert_eq!(place_fast(&mut left, &cpu_job(20_001, 1)), None);

    // The CPU job ends: its CPUs are credited, and the next CPU job starts at once.
    assert!(credit_end(&mut left, &cpu, 0));
    assert_eq!(left.nodes[0].cpus, 4);
    let next = cpu_job(20_002, 3);
    let p = place_fast(&mut left, &next).expect("fits on what the ended job freed");
    assert_eq!((p.node, p.cpus), (0, 3));

    // A full pass, with it gone and the first CPU job running, would leave the queue waiting
    // and place the new job too.
    let now = after(&without(&nodes, 950), std::slice::from_ref(&first), &[p_first]);
    let full = run(&now, queue.clone());
    assert!(full.placements.is_empty());
    assert_eq!(full.pending.len(), 10_000);
    let d_now = Decisions { placements: vec![], ..d.clone() };
    assert!(full_pass_places(&now, &queue, &d_now, &next));
}

#[test]
fn a_cpu_job_that_ends_while_a_job_waits_for_cpus_is_not_credited() {
    // Node 0 has 4 CPUs free of 8 and the head needs 6; node 1 has 4 CPUs in all.
    let mut a = node(0, 8);
    let on_a = run_cpus(&mut a, 950, 4, None);
    let mut b = node(0, 4);
    let on_b = run_cpus(&mut b, 951, 2, None);
    let nodes = [a, b];
    let queue = vec![cpu_job(1, 6)];
    let d = run(&nodes, queue.clone());
    assert_eq!(reason(&d, 1).to_string(), "Resources: needs 6 CPUs, 4 free");
    let mut left = d.leftover.clone();
    assert!(!credit_end(&mut left, &on_a, 0));
    assert_eq!(left, d.leftover, "a refused end changes nothing");
    assert_eq!(placed(&run(&without(&nodes, 950), queue.clone())), vec![1], "rightly: the head starts");
    // On node 1 the head can never run: that end is credited.
    assert!(credit_end(&mut left, &on_b, 1));
    assert_eq!(left.nodes[1].cpus, 4);
    assert!(run(&without(&nodes, 951), queue).placements.is_empty());
}

#[test]
fn a_gpu_job_that_ends_while_gpu_jobs_wait_is_not_credited() {
    // Node 0: four GPUs, all busy; node 1: one GPU, busy. The queue needs 2 GPUs a job.
    let mut a = node(4, 8);
    for g in 0..4 {
        run_on(&mut a, 900 + g as JobId, 0, &[g], None, None);
    }
    let mut b = node(1, 8);
    run_on(&mut b, 910, 0, &[0], None, None);
    let nodes = [a, b];
    let queue: Vec<QueuedJob> = (1..=3).map(|i| job(i, 2, 1)).collect();
    let d = run(&nodes, queue.clone());
    let mut left = d.leftover.clone();
    let on_a = nodes[0].running[0].clone();
    assert!(!credit_end(&mut left, &on_a, 0));
    assert_eq!(left, d.leftover);
    // Node 1 can never take a 2-GPU job: its job's end is credited, CPUs only.
    let on_b = nodes[1].running[0].clone();
    assert!(credit_end(&mut left, &on_b, 1));
    assert_eq!(left.nodes[1].cpus, 8);
    assert!(!left.nodes[1].gpus[0].whole, "the GPU it freed is not credited");
    assert!(run(&without(&nodes, 910), queue).placements.is_empty());
}

#[test]
fn an_array_element_that_ends_lowers_its_array_count() {
    let mut n = node(0, 8);
    let element = run_cpus(&mut n, 900, 1, Some(7));
    let nodes = [n];
    let d = run(&nodes, vec![]);
    let mut left = d.leftover.clone();
    let next = QueuedJob { array: Some((7, 1)), ..cpu_job(1, 1) };
    assert_eq!(place_fast(&mut left.clone(), &next), None, "one of array 7 runs");
    assert!(credit_end(&mut left, &element, 0));
    assert_eq!(left.arrays.get(&7), None);
    assert_eq!(left.nodes[0].cpus, 8);
    assert!(place_fast(&mut left, &next).is_some());
    assert_eq!(left.arrays.get(&7), Some(&1));

    // With an element waiting on the limit, its end would let that one start.
    let d = run(&nodes, vec![next.clone()]);
    assert_eq!(reason(&d, 1), &PendingReason::ArrayLimit { array: 7, limit: 1 });
    let mut left = d.leftover.clone();
    assert!(!credit_end(&mut left, &element, 0));
    assert_eq!(left.arrays.get(&7), Some(&1));
}

#[test]
fn ends_first_make_up_the_cpus_a_reservation_could_hold() {
    // The GPU is busy; the head needs it and 4 CPUs, and holds the 2 free.
    let mut n = node(1, 8);
    run_on(&mut n, 900, 0, &[0], None, None);
    let small = run_cpus(&mut n, 950, 1, None);
    let big = run_cpus(&mut n, 951, 4, None);
    let nodes = [n];
    let queue = vec![job(1, 1, 4), job(2, 1, 4)];
    let d = run(&nodes, queue.clone());
    let mut left = d.leftover.clone();
    assert_eq!(left.nodes[0].cpus, 0);
    assert!(credit_end(&mut left, &small, 0));
    assert_eq!(left.nodes[0].cpus, 0, "3 free, the head could hold 4");
    assert!(credit_end(&mut left, &big, 0));
    assert_eq!(left.nodes[0].cpus, 3);
    let now = without(&without(&nodes, 950), 951);
    assert!(run(&now, queue.clone()).placements.is_empty());
    let fits = cpu_job(10, 3);
    assert!(place_fast(&mut left.clone(), &fits).is_some());
    assert!(full_pass_places(&now, &queue, &Decisions { placements: vec![], ..d.clone() }, &fits));
    assert_eq!(place_fast(&mut left, &cpu_job(11, 4)), None);
}

#[test]
fn nothing_is_credited_while_a_job_waits_behind_a_reservation() {
    // The head holds a CPU; CPU jobs wait behind it, which a pass might place in another order.
    let mut n = node(1, 4);
    run_on(&mut n, 900, 0, &[0], None, None);
    let cpu = run_cpus(&mut n, 950, 1, None);
    let queue = vec![job(1, 1, 1), cpu_job(2, 2)];
    let d = run(&[n], queue);
    assert_eq!(reason(&d, 2), &PendingReason::FairShare { behind: 1 });
    assert!(!credit_end(&mut d.leftover.clone(), &cpu, 0));
}

#[test]
fn no_credit_without_a_pass() {
    let r = RunningJob { job: 1, user: 0, gpus: vec![], gpu_mem_mib: None, cpus: 1, ends_by: None, array: None };
    assert!(!credit_end(&mut Leftover::default(), &r, 0));
    assert!(!credit_end(&mut run(&[node(0, 4)], vec![]).leftover, &r, 1), "no such node");
}

fn run_rules(nodes: &[NodeView], mut queue: Vec<QueuedJob>, rules: &crate::policy::Rules) -> Decisions {
    queue.sort_by_key(|j| j.order_key());
    schedule(&Snapshot { now: NOW, nodes, queue: &queue, users: &users(4), limits: &[], rules: Some(rules) })
}

fn named(name: &str, gpus: u32) -> NodeView {
    NodeView { name: name.into(), ..node(gpus, 8) }
}

fn rule(node: Option<&str>, tags: &[&str], nodes: u32) -> crate::policy::JobRule {
    crate::policy::JobRule { node: node.map(str::to_string), tags: tags.iter().map(|t| t.to_string()).collect(), nodes }
}

#[test]
fn jobs_that_choose_their_nodes_go_only_there() {
    let nodes = [named("a", 2), named("b", 2), named("c", 2)];
    let mut rules = crate::policy::Rules {
        node_tags: vec![vec![], vec!["a100".into()], vec!["a100".into(), "nvlink".into()]],
        ..Default::default()
    };
    rules.jobs.insert(1, rule(Some("c"), &[], 1));
    rules.jobs.insert(2, rule(None, &["a100", "nvlink"], 1));
    rules.jobs.insert(3, rule(None, &["a100"], 1));
    rules.jobs.insert(4, rule(None, &["h100"], 1));
    let d = run_rules(&nodes, vec![job(1, 1, 1), job(2, 1, 1), job(3, 2, 1), job(4, 1, 1)], &rules);
    let on = |id| d.placements.iter().find(|p| p.job == id).map(|p| p.node);
    assert_eq!((on(1), on(2), on(3), on(4)), (Some(2), Some(2), Some(1), None));
    let (_, why) = d.pending.iter().find(|(j, _)| *j == 4).unwrap();
    assert_eq!(*why, PendingReason::Nodes { need_nodes: 1, matching: 0, fitting: 0 });
    assert!(why.to_string().contains("no node matches"), "{why}");
    assert!(!d.leftover.fast_path_ok, "a chosen-node job waits: no fast path");
}

#[test]
fn a_gang_is_placed_on_distinct_nodes_all_at_once_or_not_at_all() {
    let nodes = [named("a", 2), named("b", 1), named("c", 2)];
    let mut rules = crate::policy::Rules { node_tags: vec![vec![]; 3], ..Default::default() };
    rules.jobs.insert(1, rule(None, &[], 2));
    rules.jobs.insert(2, rule(None, &[], 3));
    let d = run_rules(&nodes, vec![job(1, 2, 1), job(2, 1, 1)], &rules);
    let ranks: Vec<(usize, Vec<u32>)> =
        d.placements.iter().filter(|p| p.job == 1).map(|p| (p.node, p.gpus.clone())).collect();
    assert_eq!(ranks, vec![(0, vec![0, 1]), (2, vec![0, 1])], "two ranks with 2 GPUs each, on a and c");
    // Three nodes with a GPU each are needed; only b has one left.
    assert!(d.placements.iter().all(|p| p.job != 2), "no partial gang: {:?}", d.placements);
    let (_, why) = d.pending.iter().find(|(j, _)| *j == 2).unwrap();
    assert_eq!(*why, PendingReason::Nodes { need_nodes: 3, matching: 3, fitting: 1 });
}

#[test]
fn per_node_job_limits_and_spreading() {
    let nodes = [named("a", 4), named("b", 4)];
    let rules = crate::policy::Rules {
        node_tags: vec![vec![]; 2],
        max_jobs: vec![Some(1), None],
        spread: false,
        jobs: Default::default(),
    };
    let d = run_rules(&nodes, vec![job(1, 1, 1), job(2, 1, 1), job(3, 1, 1)], &rules);
    let on: Vec<usize> = d.placements.iter().map(|p| p.node).collect();
    assert_eq!(on, vec![0, 1, 1], "node a takes one job at most");
    assert!(!d.leftover.fast_path_ok);
    let spread = crate::policy::Rules { node_tags: vec![vec![]; 2], spread: true, ..Default::default() };
    let d = run_rules(&nodes, vec![job(1, 1, 1), job(2, 1, 1), job(3, 1, 1), job(4, 1, 1)], &spread);
    let on: Vec<usize> = d.placements.iter().map(|p| p.node).collect();
    assert_eq!(on, vec![0, 1, 0, 1], "spread: each job to the node with the most free GPUs");
    let d = run(&nodes, vec![job(1, 1, 1), job(2, 1, 1)]);
    assert_eq!(d.placements.iter().map(|p| p.node).collect::<Vec<_>>(), vec![0, 0], "pack by default");
}

/// Jobs of one shape share an explanation only while nothing changed in between: after the first
/// reserves the free GPUs, the next of the same shape is told they are not free to it.
#[test]
fn a_shape_is_explained_again_after_a_reservation() {
    let mut n = node(4, 8);
    run_on(&mut n, 1, 0, &[0, 1], None, None);
    let d = run(&[n], vec![job(10, 3, 1), job(11, 3, 1)]);
    assert!(
        matches!(reason(&d, 10), PendingReason::Resources { need_gpus: 3, free_gpus: 2, .. }),
        "{:?}",
        reason(&d, 10)
    );
    assert!(
        matches!(reason(&d, 11), PendingReason::Resources { need_gpus: 3, free_gpus: 0, .. }),
        "{:?}",
        reason(&d, 11)
    );
}
