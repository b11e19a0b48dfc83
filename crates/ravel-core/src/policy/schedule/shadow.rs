//! The shadow time of a reservation: the latest a blocked job can start on a node, if the jobs in
//! its way end by their time limits and nothing new lands on what it holds. Jobs that end before
//! it may use the held resources meanwhile (backfill) without delaying it.

use super::pool::{Need, Node};
use crate::job::Millis;
use crate::policy::{NodeView, Placement};

pub(super) struct Plan {
    /// Positions in `Node::gpus` of the GPUs the job will start on.
    pub gpus: Vec<usize>,
    /// `None` if a job that has to end first has no time limit.
    pub shadow: Option<Millis>,
}

/// Walks the node's jobs (running, and placed by this pass) in the order they end, releasing
/// their resources until `need` fits. `None` if it does not fit even once all of them ended
/// (foreign use is in the way).
pub(super) fn plan(node: &Node, view: &NodeView, placements: &[Placement], need: Need, now: Millis) -> Option<Plan> {
    struct Leaving<'a> {
        end: Option<Millis>,
        gpus: &'a [u32],
        mib: Option<u64>,
        cpus: u32,
    }
    let running =
        view.running.iter().map(|r| Leaving { end: r.ends_by, gpus: &r.gpus, mib: r.gpu_mem_mib, cpus: r.cpus });
    let placed = node.placed.iter().map(|&(k, end)| {
        let p = &placements[k];
        Leaving { end, gpus: &p.gpus, mib: p.gpu_mem_mib, cpus: p.cpus }
    });
    let mut leaving: Vec<Leaving> = running.chain(placed).collect();
    // Unlimited jobs last: they may never end.
    leaving.sort_by_key(|l| (l.end.is_none(), l.end));

    let mut occ = node.occupancy();
    let mut cpus = node.cpus_free();
    let mut shadow = Some(now);
    let mut next = leaving.iter();
    while !node.fits_occupancy(&occ, cpus, need) {
        let l = next.next()?;
        shadow = shadow.and(l.end);
        cpus = cpus.saturating_add(l.cpus).min(node.cpus_total());
        for &index in l.gpus {
            let Some(p) = node.position(index) else { continue };
            let o = &mut occ[p];
            match l.mib {
                None => o.whole = false,
                Some(m) => {
                    o.used_mib = o.used_mib.saturating_sub(m);
                    o.sharers = o.sharers.saturating_sub(1);
                }
            }
        }
    }
    let mut gpus: Vec<usize> = node.candidates(&occ, need).collect();
    gpus.sort_by_key(node.plan_order(need));
    gpus.truncate(need.gpus as usize);
    Some(Plan { gpus, shadow })
}
