//! The event feed: every change of a job (state, hold, priority, cancel requested) becomes an
//! event with an increasing id, kept in memory for a retention window and sent to subscribers of
//! `GET /v1/events` (Server-Sent Events) as it happens.
//!
//! Events are produced in one place, [`FeedStore`], a `Store` wrapper that publishes the job as
//! every successful write returns it: no transition can be forgotten by a call site. Ids start
//! at the wall clock in microseconds when the daemon starts, so they keep increasing across
//! restarts; a subscriber asking to resume from an id older than the window (or from before a
//! restart) gets a `reset` event first: it must reload what it shows, then it follows.

use ravel_core::{Attempt, Job, JobId, JobSpec, JobState, Millis, Outcome};
use ravel_proto::EventView;
use ravel_store::{
    CancelEffect, JobEvent, JobFilter, NewAttempt, NodeRecord, Store, StoreFuture, Submitted, TokenRecord, UsageRecord,
};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Most events kept; older ones fall out of the window.
const KEEP_EVENTS: usize = 100_000;
/// Oldest event kept, in ms.
const KEEP_MS: i64 = 3_600_000;

pub struct Feed {
    inner: Mutex<Window>,
    tx: broadcast::Sender<Arc<EventView>>,
}

struct Window {
    next_id: u64,
    events: VecDeque<Arc<EventView>>,
}

/// What a subscriber gets after asking for events after an id.
pub enum Backlog {
    /// The events after it, in order.
    Events(Vec<Arc<EventView>>),
    /// The id is older than the window: the subscriber must start over from `oldest`.
    Reset { oldest: u64, events: Vec<Arc<EventView>> },
}

impl Feed {
    pub fn new(start_id: u64) -> Feed {
        Feed {
            inner: Mutex::new(Window { next_id: start_id.max(1), events: VecDeque::new() }),
            tx: broadcast::channel(4096).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<EventView>> {
        self.tx.subscribe()
    }

    /// Records that `job` is now as given.
    pub fn job(&self, job: &Job, now: Millis) {
        let mut w = self.lock();
        let id = w.next_id;
        w.next_id += 1;
        let ev = Arc::new(EventView {
            id,
            at: now,
            job: job.id,
            state: job.state,
            attempt: job.attempt,
            user: job.spec.user.clone(),
            name: job.spec.name.clone(),
            held: job.held,
            priority: job.spec.priority,
            cancel_requested: job.cancel_requested,
            gpus: (!job.gpus_assigned.is_empty() && !matches!(job.state, JobState::Queued | JobState::Blocked))
                .then(|| job.gpus_assigned.clone()),
            exit_code: job.exit_code,
            reason: job.reason.clone(),
        });
        w.events.push_back(ev.clone());
        while w.events.len() > KEEP_EVENTS || w.events.front().is_some_and(|e| e.at < now - KEEP_MS) {
            w.events.pop_front();
        }
        // Sent under the lock, so subscribers see events in id order.
        let _ = self.tx.send(ev);
    }

    /// The id of the last event published (0 if none).
    pub fn last_id(&self) -> u64 {
        self.lock().next_id - 1
    }

    /// The events after `since`, or a reset if the window no longer reaches back to it.
    pub fn after(&self, since: u64) -> Backlog {
        let w = self.lock();
        let oldest = w.events.front().map_or(w.next_id, |e| e.id);
        let events: Vec<_> = w.events.iter().filter(|e| e.id > since).cloned().collect();
        // Ids are consecutive: `since` is covered if the next one is still kept (or none came).
        if since != 0 && since + 1 < oldest {
            return Backlog::Reset { oldest, events };
        }
        Backlog::Events(events)
    }
}

/// A `Store` that publishes every job it changes to the feed.
///
/// Two writes to one job can be in flight at once (a fast job's end and the record of its start):
/// each job's writes go through one of a few locks, so that its events are published in the
/// order its writes were committed. Writes to different jobs stay concurrent (and share commits).
pub struct FeedStore {
    inner: Arc<dyn Store>,
    feed: Arc<Feed>,
    per_job: Vec<tokio::sync::Mutex<()>>,
}

impl FeedStore {
    pub fn new(inner: Arc<dyn Store>, feed: Arc<Feed>) -> FeedStore {
        FeedStore { inner, feed, per_job: (0..64).map(|_| tokio::sync::Mutex::new(())).collect() }
    }

    fn publish<'a, T: Send + 'a>(
        &'a self,
        id: Option<JobId>,
        // Called under the lock: the store takes a write when it is called, not when awaited.
        f: impl FnOnce() -> StoreFuture<'a, T> + Send + 'a,
        jobs: impl Fn(&T) -> Vec<&Job> + Send + 'a,
    ) -> StoreFuture<'a, T> {
        Box::pin(async move {
            let _in_order = match id {
                Some(id) => Some(self.per_job[id.rem_euclid(self.per_job.len() as i64) as usize].lock().await),
                None => None,
            };
            let r = f().await;
            if let Ok(v) = &r {
                let now = crate::now_ms();
                for j in jobs(v) {
                    self.feed.job(j, now);
                }
            }
            r
        })
    }
}

impl Store for FeedStore {
    fn submit(&self, specs: Vec<JobSpec>, initial: JobState, array: bool, now: Millis) -> StoreFuture<'_, Vec<Job>> {
        self.publish(None, move || self.inner.submit(specs, initial, array, now), |jobs| jobs.iter().collect())
    }
    fn job(&self, id: JobId) -> StoreFuture<'_, Option<Job>> {
        self.inner.job(id)
    }
    fn attempts(&self, id: JobId) -> StoreFuture<'_, Vec<Attempt>> {
        self.inner.attempts(id)
    }
    fn active(&self) -> StoreFuture<'_, Vec<(Job, Option<Attempt>)>> {
        self.inner.active()
    }
    fn list(&self, filter: JobFilter) -> StoreFuture<'_, Vec<Job>> {
        self.inner.list(filter)
    }
    fn jobs_after(&self, after: JobId, limit: u32) -> StoreFuture<'_, Vec<Job>> {
        self.inner.jobs_after(after, limit)
    }
    fn counts(&self) -> StoreFuture<'_, Vec<(JobState, u64)>> {
        self.inner.counts()
    }
    fn allocate(&self, id: JobId, attempt: NewAttempt, now: Millis) -> StoreFuture<'_, (Job, Attempt)> {
        self.publish(Some(id), move || self.inner.allocate(id, attempt, now), |(j, _)| vec![j])
    }
    fn submit_placed_now(
        &self,
        spec: JobSpec,
        now: Millis,
        place: &mut dyn FnMut(&Job) -> Option<NewAttempt>,
    ) -> Option<Result<Submitted, ravel_store::StoreError>> {
        let r = self.inner.submit_placed_now(spec, now, place)?;
        // A new job: no other write to it can be in flight, so no per-job lock to keep order.
        if let Ok(s) = &r {
            let now = crate::now_ms();
            self.feed.job(&s.queued, now);
            if let Some((job, _)) = &s.placed {
                self.feed.job(job, now);
            }
        }
        Some(r)
    }
    fn mark_starting(&self, id: JobId, n: u32) -> StoreFuture<'_, Job> {
        self.publish(Some(id), move || self.inner.mark_starting(id, n), |j| vec![j])
    }
    fn mark_running(&self, id: JobId, n: u32, pid: i32, start: u64, now: Millis) -> StoreFuture<'_, Job> {
        self.publish(Some(id), move || self.inner.mark_running(id, n, pid, start, now), |j| vec![j])
    }
    fn finish(
        &self,
        id: JobId,
        n: u32,
        outcome: Outcome,
        now: Millis,
        allow_retry: bool,
    ) -> StoreFuture<'_, (Job, Attempt)> {
        self.publish(Some(id), move || self.inner.finish(id, n, outcome, now, allow_retry), |(j, _)| vec![j])
    }
    fn requeue(&self, id: JobId, n: u32, reason: String, now: Millis) -> StoreFuture<'_, Job> {
        self.publish(Some(id), move || self.inner.requeue(id, n, reason, now), |j| vec![j])
    }
    fn request_cancel(&self, id: JobId, reason: String, now: Millis) -> StoreFuture<'_, CancelEffect> {
        self.publish(
            Some(id),
            move || self.inner.request_cancel(id, reason, now),
            |e| match e {
                CancelEffect::Canceled(j) | CancelEffect::MustStop(j, _) => vec![j],
                CancelEffect::AlreadyFinished(_) => vec![],
            },
        )
    }
    fn set_held(&self, id: JobId, held: bool) -> StoreFuture<'_, Job> {
        self.publish(Some(id), move || self.inner.set_held(id, held), |j| vec![j])
    }
    fn set_priority(&self, id: JobId, priority: i32) -> StoreFuture<'_, Job> {
        self.publish(Some(id), move || self.inner.set_priority(id, priority), |j| vec![j])
    }
    fn unblock(&self, id: JobId) -> StoreFuture<'_, Job> {
        self.publish(Some(id), move || self.inner.unblock(id), |j| vec![j])
    }
    fn retry(&self, id: JobId, now: Millis) -> StoreFuture<'_, Job> {
        self.publish(Some(id), move || self.inner.retry(id, now), |j| vec![j])
    }
    fn dependents(&self, id: JobId) -> StoreFuture<'_, Vec<JobId>> {
        self.inner.dependents(id)
    }
    fn usage_since(&self, since: Millis) -> StoreFuture<'_, Vec<UsageRecord>> {
        self.inner.usage_since(since)
    }
    fn last_ended(&self, limit: u32) -> StoreFuture<'_, Vec<(JobId, u32, String)>> {
        self.inner.last_ended(limit)
    }
    fn register_node(&self, node: NodeRecord, now: Millis) -> StoreFuture<'_, ()> {
        self.inner.register_node(node, now)
    }
    fn nodes(&self) -> StoreFuture<'_, Vec<NodeRecord>> {
        self.inner.nodes()
    }
    fn remove_node(&self, name: String) -> StoreFuture<'_, bool> {
        self.inner.remove_node(name)
    }
    fn add_token(&self, token: TokenRecord) -> StoreFuture<'_, TokenRecord> {
        self.inner.add_token(token)
    }
    fn tokens(&self) -> StoreFuture<'_, Vec<TokenRecord>> {
        self.inner.tokens()
    }
    fn revoke_token(&self, id: u64, now: Millis) -> StoreFuture<'_, Option<TokenRecord>> {
        self.inner.revoke_token(id, now)
    }
    fn add_event(&self, event: JobEvent) -> StoreFuture<'_, i64> {
        self.inner.add_event(event)
    }
    fn events(&self, job: JobId) -> StoreFuture<'_, Vec<JobEvent>> {
        self.inner.events(job)
    }
    fn page(&self, q: ravel_store::JobPage) -> StoreFuture<'_, (Vec<Job>, u64)> {
        self.inner.page(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: JobId, state: JobState) -> Job {
        Job::new(id, JobSpec::default(), state, 0)
    }

    #[test]
    fn ids_increase_and_resume_finds_what_came_after() {
        let feed = Feed::new(1000);
        let mut rx = feed.subscribe();
        for (i, s) in [JobState::Queued, JobState::Allocated, JobState::Running].into_iter().enumerate() {
            feed.job(&job(1, s), i as i64);
        }
        assert_eq!(rx.try_recv().unwrap().id, 1000);
        let Backlog::Events(after) = feed.after(1000) else { panic!("in the window") };
        assert_eq!(
            after.iter().map(|e| (e.id, e.state)).collect::<Vec<_>>(),
            vec![(1001, JobState::Allocated), (1002, JobState::Running)]
        );
        let Backlog::Events(all) = feed.after(0) else { panic!() };
        assert_eq!(all.len(), 3);
        assert!(matches!(feed.after(5), Backlog::Reset { oldest: 1000, .. }), "from before this daemon");
        assert!(matches!(feed.after(999), Backlog::Events(e) if e.len() == 3), "just before the first");
    }

    #[test]
    fn the_window_drops_old_events() {
        let feed = Feed::new(1);
        feed.job(&job(1, JobState::Queued), 0);
        feed.job(&job(1, JobState::Running), KEEP_MS + 10);
        assert!(matches!(feed.after(0), Backlog::Events(e) if e.len() == 1));
        assert!(matches!(feed.after(1), Backlog::Events(e) if e.len() == 1 && e[0].id == 2));
    }
}
