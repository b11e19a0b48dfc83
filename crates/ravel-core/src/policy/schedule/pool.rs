//! One node's resources as a pass hands them out: what this pass placed there, and what a
//! reservation holds back for the job at the head of the line.
//!
//! A job sees a node in one of two views. Ordinarily, held resources are out of its reach. A job
//! that may *backfill* (it provably ends before the holder could start) sees everything free,
//! and takes held resources first, so what nobody holds stays for jobs that cannot backfill.

use crate::job::{JobId, Millis};
use crate::policy::{GpuSlot, NodeView, QueuedJob};

/// What a job asks of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Need {
    pub gpus: u32,
    /// Per-GPU MiB for a job that shares GPUs; `None` for whole GPUs, and always `None` when
    /// `gpus == 0` (a CPU-only job has nothing to share).
    pub mib: Option<u64>,
    pub cpus: u32,
}

impl Need {
    pub fn of(job: &QueuedJob) -> Need {
        Need { gpus: job.gpus, mib: if job.gpus == 0 { None } else { job.gpu_mem_mib }, cpus: job.cpus }
    }
}

/// What a reservation holds on one GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hold {
    Free,
    /// For a whole-GPU job: nothing new may start here, whole or shared.
    Whole,
    /// For a memory job: this many of the free MiB.
    Mib(u64),
}

#[derive(Clone, Debug)]
pub(super) struct Gpu {
    pub index: u32,
    hardware_mib: u64,
    /// What Ravel reservations may take in all: the total less foreign use.
    capacity_mib: u64,
    used_mib: u64,
    sharers: u32,
    whole: bool,
    foreign_busy: bool,
    hold: Hold,
}

impl Gpu {
    fn from_slot(s: &GpuSlot) -> Gpu {
        Gpu {
            index: s.index,
            hardware_mib: s.memory_total_mib,
            capacity_mib: s.memory_total_mib.saturating_sub(s.foreign_used_mib),
            used_mib: s.shared.iter().map(|(_, m)| m).sum(),
            sharers: s.shared.len() as u32,
            whole: s.whole.is_some(),
            foreign_busy: s.foreign_busy,
            hold: Hold::Free,
        }
    }

    /// Same as [`GpuSlot::free_mib`], kept up to date through the pass.
    pub fn free_mib(&self) -> u64 {
        self.capacity_mib.saturating_sub(self.used_mib)
    }

    pub fn is_free_whole(&self) -> bool {
        !self.whole && self.sharers == 0 && !self.foreign_busy
    }

    pub fn shareable(&self) -> bool {
        !self.whole && !self.foreign_busy
    }

    /// A reservation holds it, whole or some of its memory.
    pub fn held(&self) -> bool {
        self.hold != Hold::Free
    }

    /// MiB a memory job may take here, or `None` if it may not share this GPU at all.
    fn room_mib(&self, backfill: bool) -> Option<u64> {
        if !self.shareable() {
            return None;
        }
        match (backfill, self.hold) {
            (true, _) | (false, Hold::Free) => Some(self.free_mib()),
            (false, Hold::Mib(held)) => Some(self.free_mib().saturating_sub(held)),
            (false, Hold::Whole) => None,
        }
    }

    fn takes(&self, mib: Option<u64>, backfill: bool) -> bool {
        match mib {
            None => self.is_free_whole() && (backfill || self.hold == Hold::Free),
            Some(m) => self.room_mib(backfill).is_some_and(|room| room >= m),
        }
    }

    /// MiB of a backfill's `mib` that would come out of what nobody holds.
    fn unheld_cost(&self, mib: u64) -> u64 {
        let held = match self.hold {
            Hold::Free => 0,
            Hold::Whole => self.free_mib(),
            Hold::Mib(h) => h,
        };
        mib - mib.min(held)
    }
}

/// The job whose reservation is on a node.
#[derive(Clone, Copy, Debug)]
pub(super) struct Reservation {
    pub job: JobId,
    pub priority: i32,
    /// When the holder can start at the latest, given the time limits of the jobs in its way;
    /// `None` when one of them has no limit, and then nothing may backfill here.
    pub shadow: Option<Millis>,
}

pub(super) struct Node {
    /// Sorted by index.
    pub gpus: Vec<Gpu>,
    cpus_total: u32,
    cpus_free: u32,
    /// Part of `cpus_free` held by the reservation.
    cpus_held: u32,
    /// The lowest GPU kept busy by processes outside Ravel (and by no Ravel job).
    pub first_foreign_busy: Option<u32>,
    pub reservation: Option<Reservation>,
    /// This pass's placements here, for the shadow walk: (index into `Decisions::placements`,
    /// when it ends at the latest).
    pub placed: Vec<(usize, Option<Millis>)>,
    /// Summaries, indexed by `backfill as usize`, so most nodes reject a job without looking at
    /// their GPUs: free whole GPUs, and the most MiB any one GPU offers.
    whole_free: [u32; 2],
    max_room: [Option<u64>; 2],
    /// Jobs it may still take (its `max_jobs` less what runs); None: no limit.
    jobs_left: Option<u32>,
}

impl Node {
    pub fn new(view: &NodeView) -> Node {
        let mut gpus: Vec<Gpu> = view.gpus.iter().map(Gpu::from_slot).collect();
        gpus.sort_by_key(|g| g.index);
        let first_foreign_busy = gpus.iter().find(|g| g.foreign_busy && !g.whole && g.sharers == 0).map(|g| g.index);
        let mut node = Node {
            gpus,
            cpus_total: view.cpus_total,
            cpus_free: view.cpus_total.saturating_sub(view.cpus_used),
            cpus_held: 0,
            first_foreign_busy,
            reservation: None,
            placed: Vec::new(),
            whole_free: [0; 2],
            max_room: [None; 2],
            jobs_left: None,
        };
        node.refresh();
        node
    }

    fn refresh(&mut self) {
        for backfill in [false, true] {
            let v = backfill as usize;
            self.whole_free[v] = self.gpus.iter().filter(|g| g.takes(None, backfill)).count() as u32;
            self.max_room[v] = self.gpus.iter().filter_map(|g| g.room_mib(backfill)).max();
        }
    }

    /// Position of GPU `index` in `gpus`.
    pub fn position(&self, index: u32) -> Option<usize> {
        self.gpus.binary_search_by_key(&index, |g| g.index).ok()
    }

    pub fn cpus_free(&self) -> u32 {
        self.cpus_free
    }

    pub fn cpus_total(&self) -> u32 {
        self.cpus_total
    }

    /// CPUs the reservation here holds.
    pub fn cpus_held(&self) -> u32 {
        self.cpus_held
    }

    pub fn cpus_avail(&self, backfill: bool) -> u32 {
        if backfill { self.cpus_free } else { self.cpus_free.saturating_sub(self.cpus_held) }
    }

    /// Whether a job ending by `end` may use what the reservation here holds.
    pub fn may_backfill(&self, end: Option<Millis>) -> bool {
        matches!((end, self.reservation.and_then(|r| r.shadow)), (Some(e), Some(s)) if e <= s)
    }

    /// GPUs that could each take a share of the job (or be taken whole by it).
    pub fn count_fitting(&self, need: Need, backfill: bool) -> u32 {
        if need.gpus == 0 {
            return 0;
        }
        match need.mib {
            None => self.whole_free[backfill as usize],
            Some(m) => self.gpus.iter().filter(|g| g.takes(Some(m), backfill)).count() as u32,
        }
    }

    pub fn set_jobs_left(&mut self, n: u32) {
        self.jobs_left = Some(n);
    }

    /// How much is free, for spreading: whole GPUs, then CPUs.
    pub fn room(&self) -> (u32, u32) {
        (self.whole_free[0], self.cpus_avail(false))
    }

    pub fn fits(&self, need: Need, backfill: bool) -> bool {
        if self.cpus_avail(backfill) < need.cpus || self.jobs_left == Some(0) {
            return false;
        }
        let v = backfill as usize;
        match need.mib {
            _ if need.gpus == 0 => true,
            None => self.whole_free[v] >= need.gpus,
            Some(m) => {
                self.max_room[v].is_some_and(|room| room >= m)
                    && (need.gpus == 1 || self.count_fitting(need, backfill) >= need.gpus)
            }
        }
    }

    /// Could the job fit here once every Ravel job has ended, with foreign use as it is now?
    pub fn fits_when_idle(&self, need: Need) -> bool {
        let usable = |g: &&Gpu| !g.foreign_busy && need.mib.is_none_or(|m| g.capacity_mib >= m);
        self.cpus_total >= need.cpus && self.gpus.iter().filter(usable).count() as u32 >= need.gpus
    }

    /// Could the job ever fit here, whatever runs?
    pub fn fits_hardware(&self, need: Need) -> bool {
        let usable = |g: &&Gpu| need.mib.is_none_or(|m| g.hardware_mib >= m);
        self.cpus_total >= need.cpus && self.gpus.iter().filter(usable).count() as u32 >= need.gpus
    }

    /// Takes what the job needs; the caller has checked that it [`fits`](Self::fits). Whole
    /// GPUs go lowest index first; shares go to the GPUs with the least room that still fits
    /// (best fit), so other GPUs stay whole. A backfill takes held resources first.
    pub fn take(&mut self, need: Need, backfill: bool) -> Vec<u32> {
        let mut picks: Vec<usize> = (0..self.gpus.len()).filter(|&p| self.gpus[p].takes(need.mib, backfill)).collect();
        match need.mib {
            None if backfill => picks.sort_by_key(|&p| (self.gpus[p].hold == Hold::Free, self.gpus[p].index)),
            None => {}
            Some(m) => picks.sort_by_key(|&p| {
                let g = &self.gpus[p];
                let cost = if backfill { g.unheld_cost(m) } else { 0 };
                (cost, g.room_mib(backfill), g.index)
            }),
        }
        picks.truncate(need.gpus as usize);
        debug_assert_eq!(picks.len(), need.gpus as usize, "take() without fits()");
        for &p in &picks {
            let g = &mut self.gpus[p];
            match need.mib {
                None => g.whole = true,
                Some(m) => {
                    if backfill && let Hold::Mib(held) = g.hold {
                        g.hold = Hold::Mib(held - held.min(m));
                    }
                    g.used_mib += m;
                    g.sharers += 1;
                }
            }
        }
        if backfill {
            self.cpus_held -= self.cpus_held.min(need.cpus);
        }
        self.cpus_free -= need.cpus;
        if let Some(n) = self.jobs_left.as_mut() {
            *n = n.saturating_sub(1);
        }
        self.refresh();
        let mut indices: Vec<u32> = picks.iter().map(|&p| self.gpus[p].index).collect();
        indices.sort_unstable();
        indices
    }

    /// Holds for `res.job` what is free here of what it needs, up to its request: CPUs, and on
    /// each GPU of `plan` (positions, from the shadow walk) its share of what is free now. A
    /// GPU busy now is held too, so nothing new lands on it before the holder can start.
    /// Without a plan (it cannot fit here before foreign use ends), it holds the free GPUs that
    /// it could use now.
    pub fn reserve(&mut self, res: Reservation, need: Need, plan: Option<&[usize]>) {
        self.cpus_held = need.cpus.min(self.cpus_free);
        let fallback;
        let gpus = match plan {
            Some(p) => p,
            None => {
                fallback = self.fitting_now(need);
                &fallback
            }
        };
        for &p in gpus {
            let g = &mut self.gpus[p];
            g.hold = match need.mib {
                None => Hold::Whole,
                Some(m) => Hold::Mib(m.min(g.free_mib())),
            };
        }
        self.reservation = Some(res);
        self.refresh();
    }

    /// Up to `need.gpus` GPUs the job could use now, in the order it would take them.
    pub fn fitting_now(&self, need: Need) -> Vec<usize> {
        let mut picks: Vec<usize> = (0..self.gpus.len()).filter(|&p| self.gpus[p].takes(need.mib, false)).collect();
        if need.mib.is_some() {
            picks.sort_by_key(|&p| (self.gpus[p].free_mib(), self.gpus[p].index));
        }
        picks.truncate(need.gpus as usize);
        picks
    }

    /// The state the shadow walk starts from: every GPU as placements left it, holds ignored
    /// (the walk only runs on a node without a reservation).
    pub fn occupancy(&self) -> Vec<Occupancy> {
        self.gpus.iter().map(|g| Occupancy { whole: g.whole, used_mib: g.used_mib, sharers: g.sharers }).collect()
    }

    /// Would `need` fit with the GPUs occupied as in `occ` and `cpus` free?
    pub fn fits_occupancy(&self, occ: &[Occupancy], cpus: u32, need: Need) -> bool {
        cpus >= need.cpus && self.candidates(occ, need).count() as u32 >= need.gpus
    }

    /// Positions of the GPUs that could serve `need` with the GPUs occupied as in `occ`.
    pub fn candidates<'s>(&'s self, occ: &'s [Occupancy], need: Need) -> impl Iterator<Item = usize> + 's {
        (0..self.gpus.len()).filter(move |&p| {
            let (g, o) = (&self.gpus[p], &occ[p]);
            match need.mib {
                _ if need.gpus == 0 => false,
                None => !o.whole && o.sharers == 0 && !g.foreign_busy,
                Some(m) => !o.whole && !g.foreign_busy && g.capacity_mib.saturating_sub(o.used_mib) >= m,
            }
        })
    }

    /// Orders plan candidates: GPUs the job could use right now first (so the plan holds what
    /// is free, as little else as possible), best fit among shares, then by index.
    pub fn plan_order(&self, need: Need) -> impl Fn(&usize) -> (bool, u64, u32) + '_ {
        move |&p| {
            let g = &self.gpus[p];
            let room = if need.mib.is_some() { g.free_mib() } else { 0 };
            (!g.takes(need.mib, false), room, g.index)
        }
    }
}

/// A GPU's occupancy during the shadow walk.
#[derive(Clone, Copy, Debug)]
pub(super) struct Occupancy {
    pub whole: bool,
    pub used_mib: u64,
    pub sharers: u32,
}
