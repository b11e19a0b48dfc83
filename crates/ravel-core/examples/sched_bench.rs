//! How long one scheduling pass takes on a big cluster with a long queue. The daemon runs a
//! pass on every submit and exit, so this bounds how fast it can react.
//!
//! `cargo run --release -p ravel-core --example sched_bench` prints one JSON line.

use ravel_core::policy::{GpuSlot, NodeView, QueuedJob, RunningJob, Snapshot, UserShare, schedule};
use ravel_core::{JobId, Millis};
use std::time::Instant;

const NODES: usize = 64;
const GPUS: u32 = 8;
const CPUS: u32 = 64;
const QUEUED: usize = 100_000;
const USERS: u32 = 50;
const RUNS: usize = 15;
const GIB: u64 = 1024;
const MIN: u64 = 60_000;
const NOW: Millis = 1_700_000_000_000;

/// A fixed-seed generator, so every run measures the same snapshot.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// Half of each node's GPUs busy: two whole-GPU jobs, three memory jobs on two GPUs; some with a
/// time limit, some without.
fn node(k: usize, rng: &mut Rng) -> NodeView {
    let mut n = NodeView {
        name: format!("gpu{k:02}"),
        gpus: (0..GPUS)
            .map(|index| GpuSlot {
                index,
                memory_total_mib: 80 * GIB,
                foreign_used_mib: 0,
                foreign_busy: false,
                whole: None,
                shared: vec![],
            })
            .collect(),
        cpus_total: CPUS,
        cpus_used: 0,
        running: vec![],
    };
    let jobs: [(u32, Option<u64>); 5] =
        [(0, None), (1, None), (2, Some(20 * GIB)), (2, Some(30 * GIB)), (3, Some(40 * GIB))];
    for (r, (gpu, mib)) in jobs.into_iter().enumerate() {
        let job = 1_000_000 + (k * 10 + r) as JobId;
        match mib {
            None => n.gpus[gpu as usize].whole = Some(job),
            Some(m) => n.gpus[gpu as usize].shared.push((job, m)),
        }
        let ends_by = (rng.below(3) > 0).then(|| NOW + (rng.below(240) as Millis + 1) * MIN as Millis);
        n.cpus_used += 4;
        n.running.push(RunningJob {
            job,
            user: rng.below(USERS as u64) as u32,
            gpus: vec![gpu],
            gpu_mem_mib: mib,
            cpus: 4,
            ends_by,
            array: None,
        });
    }
    n
}

/// Whole-GPU, memory and CPU-only jobs; mostly priority 0; most with a time limit; some arrays.
fn queue(rng: &mut Rng) -> Vec<QueuedJob> {
    let mut q: Vec<QueuedJob> = (0..QUEUED)
        .map(|i| {
            let (gpus, gpu_mem_mib, cpus) = match rng.below(10) {
                0..=3 => (rng.pick(&[1, 1, 1, 2, 2, 4, 8]), None, 2 + rng.below(7) as u32),
                4..=6 => (rng.pick(&[1, 1, 2]), Some(rng.pick(&[10, 20, 40]) * GIB), 2 + rng.below(7) as u32),
                _ => (0, None, 1 + rng.below(16) as u32),
            };
            let priority = match rng.below(10) {
                0 => 10,
                1 => -5,
                _ => 0,
            };
            let timeout_ms = (rng.below(10) < 6).then(|| rng.pick(&[10 * MIN, 60 * MIN, 240 * MIN, 1440 * MIN]));
            let array = (rng.below(10) == 0).then(|| (2_000_000 + (i / 100) as JobId, 4));
            QueuedJob {
                id: i as JobId + 1,
                priority,
                submitted_at: NOW - QUEUED as Millis + i as Millis,
                user: rng.below(USERS as u64) as u32,
                gpus,
                gpu_mem_mib,
                cpus,
                timeout_ms,
                array,
            }
        })
        .collect();
    q.sort_by_key(|j| j.order_key());
    q
}

fn main() {
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    let nodes: Vec<NodeView> = (0..NODES).map(|k| node(k, &mut rng)).collect();
    let queue = queue(&mut rng);
    let users: Vec<UserShare> = (0..USERS)
        .map(|_| UserShare { weight: rng.pick(&[1.0, 1.0, 2.0]), usage: rng.below(100_000) as f64 })
        .collect();
    let snap = Snapshot { now: NOW, nodes: &nodes, queue: &queue, users: &users, limits: &[], rules: None };

    let first = schedule(&snap);
    let mut ms: Vec<f64> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            let d = schedule(&snap);
            let elapsed = t.elapsed().as_secs_f64() * 1000.0;
            assert_eq!(d, first, "a pass is a function of its snapshot");
            elapsed
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    println!(
        "{{\"queued\":{QUEUED},\"nodes\":{NODES},\"gpus_per_node\":{GPUS},\"pass_ms_p50\":{:.2},\"pass_ms_max\":{:.2},\"placements\":{},\"pending\":{}}}",
        ms[RUNS / 2],
        ms[RUNS - 1],
        first.placements.len(),
        first.pending.len()
    );
}
