//! What a pass leaves for jobs submitted after it ([`Leftover`]), and placing such a job on it at
//! once ([`place_fast`]), in O(nodes × GPUs), without a full pass.
//!
//! # The claim
//!
//! Pass A runs on a snapshot, places `P` and leaves the jobs `Q` waiting. Since then `place_fast`
//! placed `F` (in that order) on A's leftover, and now places a new job `J`. Then a full pass B on
//! the same nodes with `P` and `F` running and `Q` plus `J` queued places `J` as well (maybe
//! elsewhere), whatever `J`'s priority, user or shape, and whatever B's order; and `J`'s fast
//! placement over-commits nothing (GPU, memory, CPU, array limit) and takes nothing that A's
//! reservation holds.
//!
//! # Why
//!
//! 1. *What B may place before `J`.* Resources only shrink during a pass, and B starts from what
//!    A left (plus `F`, less still). Each job of `Q` waits for one of three reasons:
//!    - its array limit: B counts every element A counted, and more, so it stays at its limit; it
//!      neither runs nor reserves.
//!    - resources (`Resources`, `GpuMemory`, `GpuBusy`): when A considered it, it fitted on no
//!      node even ignoring what reservations hold (it was tried on every node without a
//!      reservation, or ruled out by a smaller shape that was, and `explain` found no reserved
//!      node where it fits ignoring holds). It fits in B even less.
//!    - behind a reservation (`Priority`, `FairShare`): B may place it, but only on a node where
//!      it fits in A's final state ignoring holds. Such nodes are *tainted* and leave nothing; its
//!      array may gain an element before `J`, so [`Leftover::arrays`] counts it.
//!
//!    So on an untainted node `n`, at most one thing changes before B considers `J`: one
//!    reservation, by a waiting job `X` that is not array-limited and whose shape fits `n`'s
//!    hardware (no job reserves elsewhere). Which one depends on B's order; the leftover allows
//!    for any.
//! 2. *What such a reservation holds.* `X` reserves on `n` as it is in B: as A left it, less
//!    `F`, holding nothing yet. It holds `min(cpus, free)` CPUs; for `k` whole GPUs, the `k`
//!    lowest-index of the `f` free whole GPUs when `k <= f` (the plan takes what is free first),
//!    else all of those and busy GPUs that will free up; for `k` shares of `m` MiB, at most `m`
//!    MiB on each of up to `k` shareable GPUs, which then no longer count as free whole. So `n`
//!    leaves: CPUs free less the most any such `X` needs (and less what A's reservation holds);
//!    whole GPUs only if no such `X` shares, and not among the `K` lowest-index free whole ones
//!    (`K` the most whole GPUs such an `X` needs); memory less the most MiB such an `X` shares;
//!    nothing on any GPU when `K > f`; nothing on a GPU that A's reservation holds.
//! 3. *Fast placements keep it so.* `place_fast` subtracts what it gives, and with `F` running
//!    the bounds still hold: a reservation holds `min(cpus, free)`, less than before; whole GPUs
//!    given out lie above the `K` lowest free ones, which stay the `K` lowest, with `f >= K`; a
//!    share's hold stays below the largest `m`. And with less free, a job waiting behind a
//!    reservation fits on fewer nodes, not more.
//! 4. *So `J` fits when B considers it*, in the view of a job that may not backfill, on the node
//!    `place_fast` chose (B's cache of shapes that fit nowhere never rules out a job that fits).
//!    B places it there or on an earlier node. And the leftover is part of what is free and held
//!    by no reservation, so `J` over-commits nothing.
//!
//! Nothing here depends on when B runs; but a job ending (unless [`credit_end`] credits its end,
//! see `schedule/credit.rs`), becoming eligible or changing priority, or a change in foreign GPU
//! use, voids the leftover.
//!
//! The bounds are worked out per distinct shape of waiting job: past [`SHAPES`] shapes, the
//! maxima are taken over all of them whatever the hardware (still sound); past [`SHAPES`] shapes
//! waiting behind a reservation, `fast_path_ok` is false.
//!
//! [`credit_end`]: crate::policy::credit_end

use super::pool::{Need, Node};
use super::{Credits, Pass};
use crate::job::JobId;
use crate::policy::{GpuLeftover, Leftover, NodeLeftover, Placement, QueuedJob};
use std::collections::BTreeMap;

/// Shapes of waiting jobs looked at one by one against every node.
pub(super) const SHAPES: usize = 64;

/// The most any one waiting job could hold on a node, were it to reserve there.
#[derive(Clone, Copy, Default)]
struct Bound {
    cpus: u32,
    /// Whole GPUs.
    gpus: u32,
    /// MiB of a share.
    mib: u64,
    shares: bool,
}

impl Bound {
    fn over<'a>(needs: impl Iterator<Item = &'a Need>) -> Bound {
        needs.fold(Bound::default(), |b, n| Bound {
            cpus: b.cpus.max(n.cpus),
            gpus: if n.mib.is_none() { b.gpus.max(n.gpus) } else { b.gpus },
            mib: b.mib.max(n.mib.unwrap_or(0)),
            shares: b.shares || (n.gpus > 0 && n.mib.is_some()),
        })
    }
}

impl Pass<'_> {
    /// What this pass leaves; see the module's documentation.
    pub(super) fn leftover(&self) -> Leftover {
        // Hash order cannot leak: only maxima and `any` are taken over these.
        let waiting: Vec<Need> = self.explained.keys().copied().collect();
        let behind: Vec<Need> = self.explained.iter().filter(|(_, s)| s.behind).map(|(n, _)| *n).collect();
        let duplicate_gpus = self.nodes.iter().any(|n| n.gpus.windows(2).any(|w| w[0].index == w[1].index));
        if behind.len() > SHAPES || duplicate_gpus {
            return Leftover::default();
        }
        let everywhere = Bound::over(waiting.iter());
        let (nodes, owed): (Vec<NodeLeftover>, Vec<u32>) = self
            .nodes
            .iter()
            .map(|node| {
                if behind.iter().any(|&b| node.fits(b, true)) {
                    return (nothing(node), 0);
                }
                let bound = if waiting.len() > SHAPES {
                    everywhere
                } else {
                    Bound::over(waiting.iter().filter(|&&w| node.fits_hardware(w)))
                };
                node_leftover(node, bound)
            })
            .unzip();
        let mut arrays: BTreeMap<JobId, u32> = self.arrays.iter().map(|(&a, &c)| (a, c)).collect();
        for (&a, &c) in &self.behind_arrays {
            *arrays.entry(a).or_insert(0) += c;
        }
        // Ends are credited only when no job waits behind a reservation (see `credit.rs`).
        let credits = if behind.is_empty() { self.credits(&waiting, owed) } else { Credits::default() };
        Leftover { fast_path_ok: true, nodes, arrays, credits }
    }
}

fn nothing(node: &Node) -> NodeLeftover {
    let gpus = node.gpus.iter().map(|g| GpuLeftover { index: g.index, whole: false, mib: 0 }).collect();
    NodeLeftover { gpus, cpus: 0 }
}

/// What the node leaves, and how many CPUs must be freed on it before it leaves any: how far what
/// is free falls short of what is kept back for a reservation.
fn node_leftover(node: &Node, bound: Bound) -> (NodeLeftover, u32) {
    let kept = bound.cpus.max(node.cpus_held());
    let cpus = node.cpus_free().saturating_sub(kept);
    let owed = kept.saturating_sub(node.cpus_free());
    let free_whole = node.gpus.iter().filter(|g| g.is_free_whole()).count() as u32;
    if bound.gpus > free_whole {
        // A reservation for whole GPUs could hold any GPU here, busy ones included.
        return (NodeLeftover { cpus, ..nothing(node) }, owed);
    }
    // The lowest-index free whole GPUs a reservation for whole GPUs could hold.
    let mut spared = bound.gpus;
    let gpus = node
        .gpus
        .iter()
        .map(|g| {
            let kept = g.is_free_whole() && spared > 0;
            if kept {
                spared -= 1;
            }
            if kept || g.held() || !g.shareable() {
                return GpuLeftover { index: g.index, whole: false, mib: 0 };
            }
            GpuLeftover {
                index: g.index,
                whole: g.is_free_whole() && !bound.shares,
                mib: g.free_mib().saturating_sub(bound.mib),
            }
        })
        .collect();
    (NodeLeftover { gpus, cpus }, owed)
}

/// Places a job submitted after a pass on what the pass left, if it fits there, by the pass's
/// rules: first node where it fits, lowest-index whole GPUs, best fit for memory shares, array
/// limits; then takes the placement out of `leftover`, so that more jobs can follow. `None` when
/// it does not fit there, or `fast_path_ok` is false: the caller then runs a full pass.
///
/// Whenever it places a job, a full pass on the same snapshot, with this pass's placements and
/// every fast placement since running, would place that job too, and the placement over-commits
/// nothing and takes nothing that a reservation holds (the argument is in `schedule/leftover.rs`).
/// The placement should start right away, like those of a full pass.
pub fn place_fast(leftover: &mut Leftover, job: &QueuedJob) -> Option<Placement> {
    if !leftover.fast_path_ok {
        return None;
    }
    if let Some((array, limit)) = job.array
        && leftover.arrays.get(&array).copied().unwrap_or(0) >= limit
    {
        return None;
    }
    let need = Need::of(job);
    let (node, picks) = leftover.nodes.iter().enumerate().find_map(|(i, n)| pick(n, need).map(|p| (i, p)))?;
    let n = &mut leftover.nodes[node];
    n.cpus -= need.cpus;
    for &p in &picks {
        let g = &mut n.gpus[p];
        g.whole = false;
        g.mib = match need.mib {
            None => 0,
            Some(m) => g.mib - m,
        };
    }
    if let Some((array, _)) = job.array {
        *leftover.arrays.entry(array).or_insert(0) += 1;
    }
    let mut gpus: Vec<u32> = picks.iter().map(|&p| n.gpus[p].index).collect();
    gpus.sort_unstable();
    Some(Placement { job: job.id, node, gpus, gpu_mem_mib: need.mib, cpus: need.cpus })
}

/// Positions of the GPUs the job would take on this node, if it fits there.
fn pick(n: &NodeLeftover, need: Need) -> Option<Vec<usize>> {
    if n.cpus < need.cpus {
        return None;
    }
    let mut picks: Vec<usize> = match need.mib {
        _ if need.gpus == 0 => return Some(vec![]),
        None => (0..n.gpus.len()).filter(|&p| n.gpus[p].whole).collect(),
        // 0 MiB left means the GPU may not be shared at all, even for a reservation of 0 MiB.
        Some(m) => (0..n.gpus.len()).filter(|&p| n.gpus[p].mib >= m.max(1)).collect(),
    };
    if picks.len() < need.gpus as usize {
        return None;
    }
    if need.mib.is_some() {
        picks.sort_by_key(|&p| (n.gpus[p].mib, n.gpus[p].index));
    } else {
        picks.sort_by_key(|&p| n.gpus[p].index);
    }
    picks.truncate(need.gpus as usize);
    Some(picks)
}
