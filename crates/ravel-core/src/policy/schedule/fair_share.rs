//! Fair share: the order in which a pass considers the queue.
//!
//! Priority levels go strictly one after the other. Within a level, the next job is the next one
//! (in queue order) of the user holding the fewest GPUs for their weight, counting running jobs
//! and what this pass placed; ties go to the lower decayed usage for the weight, then to the
//! older head job. A k-way merge: one heap entry per user, re-keyed after each of their jobs.
//! With a single user this is exactly queue order.
//!
//! A weight that is not positive (or NaN) counts as 1.0, so a misconfigured user neither
//! divides by zero nor jumps the line; a NaN usage counts as 0. Users the snapshot does not
//! describe have weight 1 and no usage.

use crate::job::{JobId, Millis};
use crate::policy::{QueuedJob, Snapshot, UserId};
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

pub(super) struct FairOrder<'a> {
    queue: &'a [QueuedJob],
    users: Vec<User>,
    /// Dense user of each queued job.
    user_of: Vec<u32>,
    /// Queue indices grouped by dense user, in queue order within a user; user `u` owns
    /// `jobs[start[u]..start[u + 1]]`, and `cursor[u]` is its next job there.
    jobs: Vec<u32>,
    start: Vec<u32>,
    cursor: Vec<u32>,
    heap: BinaryHeap<Reverse<Entry>>,
    /// The current level is `queue[..level_end]` less what was handed out.
    level_end: usize,
    /// The user whose job was handed out last, to re-key once the caller said what became of it.
    last: Option<u32>,
}

struct User {
    weight: f64,
    usage_share: f64,
    gpus: f64,
}

impl<'a> FairOrder<'a> {
    pub fn new(snap: &Snapshot<'a>) -> FairOrder<'a> {
        let queue = snap.queue;
        let mut ids: Vec<UserId> = queue.iter().map(|j| j.user).collect();
        ids.sort_unstable();
        ids.dedup();
        let dense = |u: UserId| ids.binary_search(&u).ok().map(|d| d as u32);
        let mut users: Vec<User> = ids
            .iter()
            .map(|&u| {
                let share = snap.users.get(u as usize);
                let weight = share.map_or(1.0, |s| s.weight);
                let weight = if weight > 0.0 { weight } else { 1.0 };
                let usage = share.map_or(0.0, |s| if s.usage.is_nan() { 0.0 } else { s.usage });
                User { weight, usage_share: usage / weight, gpus: 0.0 }
            })
            .collect();
        for r in snap.nodes.iter().flat_map(|n| &n.running) {
            if let Some(d) = dense(r.user) {
                users[d as usize].gpus += r.gpus.len() as f64;
            }
        }
        let user_of: Vec<u32> = queue.iter().map(|j| dense(j.user).expect("every queued user was interned")).collect();
        // Counting sort by user keeps queue order within each user.
        let mut start = vec![0u32; users.len() + 1];
        for &u in &user_of {
            start[u as usize + 1] += 1;
        }
        for u in 0..users.len() {
            start[u + 1] += start[u];
        }
        let mut cursor = start[..users.len()].to_vec();
        let mut jobs = vec![0u32; queue.len()];
        for (qi, &u) in user_of.iter().enumerate() {
            jobs[cursor[u as usize] as usize] = qi as u32;
            cursor[u as usize] += 1;
        }
        cursor.copy_from_slice(&start[..users.len()]);
        FairOrder { queue, users, user_of, jobs, start, cursor, heap: BinaryHeap::new(), level_end: 0, last: None }
    }

    /// The index in the queue of the next job to consider.
    pub fn next(&mut self) -> Option<usize> {
        if let Some(u) = self.last.take() {
            self.cursor[u as usize] += 1;
            if self.heap.is_empty() {
                // No one else waits in this level: the user would be alone in the heap and
                // popped straight back (a single user's queue, or the level's last user).
                if let Some(qi) = self.head(u).filter(|&qi| qi < self.level_end) {
                    self.last = Some(u);
                    return Some(qi);
                }
            } else {
                self.push(u);
            }
        }
        loop {
            if let Some(Reverse(e)) = self.heap.pop() {
                self.last = Some(e.user);
                return Some(self.head(e.user).expect("users in the heap have a job"));
            }
            // A level is a run of equal priority; the queue's order makes it all of them.
            let lo = self.level_end;
            if lo >= self.queue.len() {
                return None;
            }
            let p = self.queue[lo].priority;
            self.level_end = lo + self.queue[lo..].iter().take_while(|j| j.priority == p).count();
            for qi in lo..self.level_end {
                let u = self.user_of[qi];
                if self.head(u) == Some(qi) {
                    self.push(u);
                }
            }
        }
    }

    /// The job last returned by [`next`](Self::next) was placed, taking `gpus` GPUs.
    pub fn placed(&mut self, gpus: u32) {
        let u = self.last.expect("placed() follows next()");
        self.users[u as usize].gpus += gpus as f64;
    }

    fn head(&self, u: u32) -> Option<usize> {
        let c = self.cursor[u as usize];
        (c < self.start[u as usize + 1]).then(|| self.jobs[c as usize] as usize)
    }

    /// Puts the user back in line if it still has a job in the current level.
    fn push(&mut self, u: u32) {
        let Some(qi) = self.head(u).filter(|&qi| qi < self.level_end) else { return };
        let user = &self.users[u as usize];
        let job = &self.queue[qi];
        self.heap.push(Reverse(Entry {
            share: user.gpus / user.weight,
            usage_share: user.usage_share,
            submitted_at: job.submitted_at,
            id: job.id,
            user: u,
        }));
    }
}

/// A user's place in line: lower goes first.
struct Entry {
    share: f64,
    usage_share: f64,
    submitted_at: Millis,
    id: JobId,
    user: u32,
}

impl Ord for Entry {
    fn cmp(&self, o: &Self) -> Ordering {
        self.share
            .total_cmp(&o.share)
            .then(self.usage_share.total_cmp(&o.usage_share))
            .then(self.submitted_at.cmp(&o.submitted_at))
            .then(self.id.cmp(&o.id))
            .then(self.user.cmp(&o.user))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}

impl Eq for Entry {}
