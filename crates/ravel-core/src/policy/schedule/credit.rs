//! Adding what a job that ended freed to a pass's leftover ([`credit_end`]), when a full pass run
//! now would leave waiting every job the pass left waiting, so that jobs submitted after an end
//! can still be placed at once, without a full pass.
//!
//! # The claim
//!
//! Pass A runs on a snapshot, places `P` and leaves the jobs `Q` waiting, none of them behind a
//! reservation. Since then `place_fast` placed `F`, and `credit_end` credited the ends of the jobs
//! `E` (each running in the snapshot, placed by A, or fast-placed), in any interleaving. Let B be
//! a full pass on the nodes as they are now (`P` and `F` running, `E` gone), with `Q` queued,
//! plus maybe a new job `J`. Then:
//!
//! 1. B leaves every job of `Q` waiting, whatever its order.
//! 2. The leftover is what `schedule/leftover.rs` claims it is for this state: when `place_fast`
//!    places `J`, B places `J` too, and `J` over-commits nothing and takes nothing that A's
//!    reservation holds.
//!
//! # Why
//!
//! Let `R` be the nodes as A left them, holds ignored. B starts from `R`, less `F`, plus what `E`
//! freed. The end of a job on node `n` is credited only when:
//!
//! - (GPU) it holds no GPU, or no waiting shape that needs GPUs fits `n`'s hardware;
//! - (CPU) it holds no CPU, or no waiting shape fits `n`'s GPUs in `R` (holds ignored) with no
//!   more CPUs than `n` has in all, i.e. none could start on `n` given CPUs alone;
//! - (array) it is in no array, or its array keeps running at least as many elements as the
//!   highest limit of any of its elements left waiting on that limit.
//!
//! `F` only takes and credits of CPUs add no GPU, so both node conditions, worked out on `R`,
//! stay true as long as the leftover lives.
//!
//! 1. *No job of `Q` starts in B.* Each waits in A for one of three reasons:
//!    - its array limit: B counts the elements running, at least the highest limit of any element
//!      left waiting on it (the array condition; `F` only adds), so it waits on its limit again.
//!    - resources: it fits no node of `R`, holds ignored (`leftover.rs`, point 1). Take a node
//!      `n`. If no credited end freed CPUs there, a CPU-only job fits `n` in B no better than in
//!      `R`; if one did, (CPU) says its CPUs exceed `n`'s. A job needing GPUs: if a credited end
//!      freed GPUs on `n`, (GPU) says it does not fit `n`'s hardware; if none did, `n`'s GPUs in
//!      B are those of `R` less `F`'s, and then either no CPUs were credited there either (`n` is
//!      no better than in `R`), or (CPU) says its GPUs do not fit `R`'s.
//!    - behind a reservation: none is (otherwise nothing is credited: B may place such a job even
//!      when nothing ended, as its fair-share order and reservations may differ from A's).
//!
//!    Holds and placements only narrow what fits, so each job of `Q` fits nowhere when B
//!    considers it, in either view, whatever B considered before.
//! 2. *The leftover's bounds still hold.* Before `J`, B only reserves: at most one reservation on
//!    a node `n`, by a waiting job that is not array-limited and fits `n`'s hardware.
//!    - CPUs: it holds at most the most CPUs any such job needs, and the leftover keeps that back
//!      (and at least what A's reservation holds): the leftover's CPUs on `n` are what is free
//!      less that, and what a credited end frees first pays off what is still owed (when less
//!      was free than is kept back), then adds to the leftover.
//!    - GPUs: after the end of a job without GPUs, the GPUs of `n` are as they were, and
//!      `leftover.rs`, points 2 and 3, applies as is. After the end of a job with GPUs, no
//!      waiting job needing GPUs fits `n`'s hardware: whatever reserves on `n` (in A or B) holds
//!      no GPU; the GPUs the end freed are left out of the leftover (it only under-states them),
//!      and those it hands out are free.
//!    - arrays: with no job behind a reservation, `Leftover::arrays` counts just the elements
//!      running, and a credited end takes its own off, as B counts them.
//!
//!    So `leftover.rs`, point 4, goes through: `J` fits when B considers it on the node
//!    `place_fast` chose, in the view of a job that may not backfill.
//!
//! Not claimed: that B reserves where A did, or gives the same reasons and estimated starts (with
//! more CPUs free a reservation may move, a reason shows more CPUs free, an estimated start may
//! come earlier). Those are for display, and stay as the last full pass left them.

use super::Pass;
use super::leftover::SHAPES;
use super::pool::Need;
use crate::job::JobId;
use crate::policy::{Leftover, RunningJob};
use std::collections::BTreeMap;

/// What a pass knew that [`credit_end`] needs; `ok` is false by default, when nothing may be
/// credited.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Credits {
    /// No job waits behind a reservation, and the waiting shapes were few enough to check.
    ok: bool,
    /// Indexed like the snapshot's nodes.
    nodes: Vec<NodeCredit>,
    /// Per array, the highest limit of the elements left waiting on that limit: the elements
    /// running must not fall below it.
    floors: BTreeMap<JobId, u32>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct NodeCredit {
    /// A waiting job could start here given CPUs alone: its GPUs fit as the pass left the node,
    /// holds ignored, and the node has as many CPUs as it needs in all.
    cpu_bound: bool,
    /// A waiting job that needs GPUs fits the node's hardware.
    gpu_bound: bool,
    /// CPUs that must be freed here before the leftover's CPUs grow: how far what is free falls
    /// short of what is kept back for a reservation.
    cpus_owed: u32,
}

impl Pass<'_> {
    /// What [`credit_end`] needs, given the shapes of the jobs left waiting for resources (none
    /// behind a reservation) and the CPUs owed on each node.
    pub(super) fn credits(&self, waiting: &[Need], owed: Vec<u32>) -> Credits {
        let Some(shapes) = minimal(waiting) else { return Credits::default() };
        let nodes = self
            .nodes
            .iter()
            .zip(owed)
            .map(|(node, cpus_owed)| NodeCredit {
                cpu_bound: shapes
                    .iter()
                    .any(|&w| w.cpus <= node.cpus_total() && node.fits(Need { cpus: 0, ..w }, true)),
                gpu_bound: shapes.iter().any(|&w| w.gpus > 0 && node.fits_hardware(w)),
                cpus_owed,
            })
            .collect();
        let floors = self.limited_arrays.iter().map(|(&a, &l)| (a, l)).collect();
        Credits { ok: true, nodes, floors }
    }
}

/// The shapes no other one is smaller than (of the same kind, needing no more of anything), or
/// `None` past [`SHAPES`] of them. A shape's GPUs fit a node, or the shape fits a node's hardware,
/// only if some minimal shape's do; a shape needing GPUs has a minimal shape needing GPUs.
fn minimal(waiting: &[Need]) -> Option<Vec<Need>> {
    let mut sorted = waiting.to_vec();
    // Smaller shapes first (this order extends `smaller`), so that none is ever dropped again:
    // the result, and whether it is `None`, do not depend on the order of `waiting`.
    sorted.sort_unstable_by_key(|w| (w.gpus == 0, w.mib.is_some(), w.gpus, w.mib, w.cpus));
    let mut out: Vec<Need> = Vec::new();
    for w in sorted {
        if !out.iter().any(|&s| smaller(s, w)) {
            out.push(w);
            if out.len() > SHAPES {
                return None;
            }
        }
    }
    Some(out)
}

fn smaller(s: Need, n: Need) -> bool {
    (s.gpus == 0) == (n.gpus == 0)
        && s.mib.is_some() == n.mib.is_some()
        && s.gpus <= n.gpus
        && s.mib <= n.mib
        && s.cpus <= n.cpus
}

/// Adds what `ended` freed on node `node` (an index into the snapshot's nodes) to the leftover,
/// when a full pass run now, with it gone, would still leave waiting every job the pass left
/// waiting, and the leftover so credited is still what [`place_fast`](crate::policy::place_fast)
/// may hand out. `ended` must have been running in the snapshot the pass ran on, or placed by the
/// pass, or placed by `place_fast` since, and not credited already. It credits:
///
/// - nothing, and returns false, when the pass left a job waiting behind a reservation, or a
///   waiting job could start on that node given CPUs alone while `ended` held CPUs there, or
///   `ended` held GPUs and a waiting job needing GPUs fits the node's hardware, or `ended` was an
///   element of an array with elements waiting on its limit that its end would lift, or the
///   leftover has no fast path. The caller then drops the leftover and runs a full pass.
/// - otherwise its CPUs, less what the node still owes a reservation that could be made there
///   (when less was free than it could hold), and its array element; it returns true. GPUs it
///   freed are not credited (the leftover just under-states them until the next full pass).
///
/// The argument is in `schedule/credit.rs`.
pub fn credit_end(leftover: &mut Leftover, ended: &RunningJob, node: usize) -> bool {
    let credits = &leftover.credits;
    let Some(&nc) = credits.nodes.get(node) else { return false };
    if !leftover.fast_path_ok || !credits.ok || node >= leftover.nodes.len() {
        return false;
    }
    if (!ended.gpus.is_empty() && nc.gpu_bound) || (ended.cpus > 0 && nc.cpu_bound) {
        return false;
    }
    if let Some(a) = ended.array {
        let running = leftover.arrays.get(&a).copied().unwrap_or(0);
        if running == 0 || running - 1 < credits.floors.get(&a).copied().unwrap_or(0) {
            return false;
        }
        if running == 1 {
            leftover.arrays.remove(&a);
        } else {
            leftover.arrays.insert(a, running - 1);
        }
    }
    let paid = ended.cpus.min(nc.cpus_owed);
    leftover.credits.nodes[node].cpus_owed -= paid;
    let cpus = &mut leftover.nodes[node].cpus;
    *cpus = cpus.saturating_add(ended.cpus - paid);
    true
}
