//! Persistence for Ravel: the [`Store`] trait and its SQLite implementation.
//!
//! This is the only crate with SQL. Every state transition is one transaction that checks the
//! from-state (compare-and-set), and a write's future resolves only after its commit.
//! The trait speaks in domain types and says nothing of SQLite, so a PostgreSQL store can
//! implement it without changing callers.

mod migrations;
mod sqlite;

use ravel_core::{Attempt, Job, JobId, JobSpec, JobState, Millis, Outcome};
use std::future::Future;
use std::pin::Pin;

pub use sqlite::{Durability, SqliteStore};

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    #[error("job {0} not found")]
    NotFound(JobId),
    /// A compare-and-set found the job in another state: someone else moved it first.
    #[error("job {id} is {found}, expected {expected}")]
    Conflict { id: JobId, expected: String, found: JobState },
    #[error("database error: {0}")]
    Db(String),
    #[error("the store is closed")]
    Closed,
}

/// A new attempt to record when a queued job is placed.
#[derive(Clone, Debug, PartialEq)]
pub struct NewAttempt {
    pub node: String,
    pub gpus: Vec<u32>,
    pub cpus: u32,
    /// Run dir of the attempt; `{attempt}` is replaced by the attempt number.
    pub run_dir_template: String,
    /// The supervisor's pid and start time when it is known before the attempt is handed to
    /// it (a standby supervisor): recorded with the placement, so that a restart finds it, and
    /// the attempt is then recorded as running at once (one write, not two: a restart that
    /// finds the supervisor never got the attempt queues the job again, whatever its state).
    pub supervisor: Option<(i32, u64)>,
    /// A gang's other ranks: (node, GPUs) each.
    pub ranks: Vec<(String, Vec<u32>)>,
}

/// What [`Store::submit_placed_now`] recorded.
#[derive(Clone, Debug)]
pub struct Submitted {
    /// The job as inserted, queued.
    pub queued: Job,
    /// The job and its first attempt, when it was placed in the same write.
    pub placed: Option<(Job, Attempt)>,
}

/// A node and its GPUs as last seen, for the `nodes` and `gpus` tables.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct NodeRecord {
    pub name: String,
    pub cpus: u32,
    pub gpus: Vec<GpuRecord>,
    /// Its current lease epoch (cluster mode): reports of an older one are stale.
    pub epoch: u64,
    /// `ready`, `draining` or `cordoned`, as an admin set it.
    pub admin: String,
    pub tags: Vec<String>,
    pub max_jobs: Option<u32>,
    pub version: String,
    /// Run by an agent of a controller (not the local daemon's own node).
    pub remote: bool,
    /// When it was last recorded (UTC ms).
    pub last_seen: Millis,
}

/// A bearer token as kept: its SHA-256 (hex), never the secret.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenRecord {
    /// Assigned by the store.
    pub id: u64,
    pub name: String,
    /// `admin`, `user` or `agent`.
    pub role: String,
    pub hash: String,
    pub created_at: Millis,
    pub expires_at: Option<Millis>,
    pub revoked_at: Option<Millis>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct GpuRecord {
    pub index: u32,
    pub name: String,
    pub uuid: Option<String>,
    pub memory_total_mib: u64,
}

/// What `request_cancel` did, in the same transaction that looked.
#[derive(Clone, Debug, PartialEq)]
pub enum CancelEffect {
    /// It had not started and is now canceled.
    Canceled(Job),
    /// It holds an attempt; `cancel_requested` is now set and the caller must stop the attempt.
    MustStop(Job, Box<Attempt>),
    AlreadyFinished(Job),
}

/// Which jobs a listing returns, newest activity first within each group.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct JobFilter {
    /// Active jobs plus this many finished ones (the whole history is read with
    /// `Store::jobs_after`, a batch at a time).
    pub recent_finished: u32,
    /// At most this many waiting (queued or blocked) jobs, oldest first. Jobs
    /// holding resources are always listed (there are few: at most the node's slots).
    pub waiting_limit: Option<u32>,
}

/// One page of jobs, newest first, for browsing a long history (the web UI).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobPage {
    /// Only jobs in these states (empty: any).
    pub states: Vec<JobState>,
    /// Only jobs whose command, name or user contains this text.
    pub search: Option<String>,
    /// Oldest first instead of newest first.
    pub oldest_first: bool,
    pub offset: u64,
    pub limit: u32,
}

/// One finished attempt, for rebuilding fair-share usage after a restart.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageRecord {
    pub user: Option<String>,
    pub gpus: u32,
    pub started_at: Millis,
    pub finished_at: Millis,
}

/// Something seen about a job while it ran (see `ravel_proto::JobEventView`).
#[derive(Clone, Debug, PartialEq)]
pub struct JobEvent {
    /// Assigned by the store, increasing.
    pub id: i64,
    pub job: JobId,
    pub attempt: u32,
    pub at: Millis,
    pub kind: String,
    pub message: String,
}

pub trait Store: Send + Sync + 'static {
    /// Records new jobs in one transaction, each in state `initial` (`queued`, or `blocked` when
    /// it waits for dependencies), held if its spec says so, not before its begin time. With
    /// `array`, they are the elements of one array whose id is the first job's id. Resolves
    /// after commit.
    fn submit(&self, specs: Vec<JobSpec>, initial: JobState, array: bool, now: Millis) -> StoreFuture<'_, Vec<Job>>;
    fn job(&self, id: JobId) -> StoreFuture<'_, Option<Job>>;
    fn attempts(&self, id: JobId) -> StoreFuture<'_, Vec<Attempt>>;
    /// Jobs that are not terminal, with their current attempt if they hold one, in id order.
    fn active(&self) -> StoreFuture<'_, Vec<(Job, Option<Attempt>)>>;
    /// Listing for `ravel queue`, in id order.
    fn list(&self, filter: JobFilter) -> StoreFuture<'_, Vec<Job>>;
    /// Every job with an id above `after`, in id order, at most `limit`: one batch of a listing
    /// of the whole history, read a bounded batch at a time.
    fn jobs_after(&self, after: JobId, limit: u32) -> StoreFuture<'_, Vec<Job>>;
    /// Counts of jobs per state.
    fn counts(&self) -> StoreFuture<'_, Vec<(JobState, u64)>>;
    /// queued → allocated (running, when its supervisor is already known), creating attempt n+1.
    fn allocate(&self, id: JobId, attempt: NewAttempt, now: Millis) -> StoreFuture<'_, (Job, Attempt)>;
    /// Records one new queued job and, in the same write, places it as [`Store::allocate`] would
    /// when `place`, called with the job just inserted (its id known), says where: one commit
    /// instead of two for a job that starts the moment it arrives. Runs on the caller's thread and
    /// never waits: `None` when the store cannot write in place right now (another write holds
    /// it, or this store has no such path), and the caller then submits and places in two writes.
    /// When the write fails after `place` said where, the caller undoes what `place` did.
    fn submit_placed_now(
        &self,
        _spec: JobSpec,
        _now: Millis,
        _place: &mut dyn FnMut(&Job) -> Option<NewAttempt>,
    ) -> Option<Result<Submitted, StoreError>> {
        None
    }
    /// allocated → starting: attempt `n` was handed to its node's agent (cluster mode).
    fn mark_starting(&self, id: JobId, n: u32) -> StoreFuture<'_, Job>;
    /// allocated|starting → running, recording the supervisor that runs attempt `n`.
    fn mark_running(
        &self,
        id: JobId,
        n: u32,
        supervisor_pid: i32,
        supervisor_start: u64,
        now: Millis,
    ) -> StoreFuture<'_, Job>;
    /// Ends attempt `n` (which must be the current one and not yet ended) with `outcome`. With
    /// `allow_retry`, a failed or lost attempt of a job with retries left sends the job back to
    /// `queued`, not before its backoff (`JobSpec::retry_backoff_ms`), instead of ending it.
    /// Returns the job and the attempt as recorded.
    fn finish(
        &self,
        id: JobId,
        n: u32,
        outcome: Outcome,
        now: Millis,
        allow_retry: bool,
    ) -> StoreFuture<'_, (Job, Attempt)>;
    /// allocated|starting|running → queued: attempt `n` never started its job and never will.
    fn requeue(&self, id: JobId, n: u32, reason: String, now: Millis) -> StoreFuture<'_, Job>;
    /// Cancels a job that has not started (recording `reason`), or marks a started one for stopping.
    fn request_cancel(&self, id: JobId, reason: String, now: Millis) -> StoreFuture<'_, CancelEffect>;
    /// Holds or releases a queued or blocked job.
    fn set_held(&self, id: JobId, held: bool) -> StoreFuture<'_, Job>;
    /// Changes the priority of a queued or blocked job.
    fn set_priority(&self, id: JobId, priority: i32) -> StoreFuture<'_, Job>;
    /// blocked → queued: its dependencies are satisfied.
    fn unblock(&self, id: JobId) -> StoreFuture<'_, Job>;
    /// A finished job back to `queued` for a new attempt (`ravel retry`).
    fn retry(&self, id: JobId, now: Millis) -> StoreFuture<'_, Job>;
    /// Jobs that named `id` in `after` or `after_any`.
    fn dependents(&self, id: JobId) -> StoreFuture<'_, Vec<JobId>>;
    /// Attempts that held GPUs and finished at or after `since`.
    fn usage_since(&self, since: Millis) -> StoreFuture<'_, Vec<UsageRecord>>;
    /// The `limit` attempts that finished last, latest first: (job, attempt number, run dir).
    fn last_ended(&self, limit: u32) -> StoreFuture<'_, Vec<(JobId, u32, String)>>;
    /// Records a node's resources (replacing its GPU list) and when it was seen.
    fn register_node(&self, node: NodeRecord, now: Millis) -> StoreFuture<'_, ()>;
    /// Nodes as recorded, with their GPUs.
    fn nodes(&self) -> StoreFuture<'_, Vec<NodeRecord>>;
    /// Forgets a node and its GPUs; false if there was none of that name.
    fn remove_node(&self, name: String) -> StoreFuture<'_, bool>;
    /// Keeps a new token (its `id` is ignored and assigned); returns it as kept.
    fn add_token(&self, token: TokenRecord) -> StoreFuture<'_, TokenRecord>;
    /// Every token, revoked and expired ones included, in id order.
    fn tokens(&self) -> StoreFuture<'_, Vec<TokenRecord>>;
    /// Revokes a token (a second revoke keeps the first time); None if there is no such token.
    fn revoke_token(&self, id: u64, now: Millis) -> StoreFuture<'_, Option<TokenRecord>>;
    /// Keeps an event with its job (its `id` is ignored and assigned); returns the id.
    fn add_event(&self, event: JobEvent) -> StoreFuture<'_, i64>;
    /// A job's events, oldest first.
    fn events(&self, job: JobId) -> StoreFuture<'_, Vec<JobEvent>>;
    /// A page of jobs and how many match in all. Each page costs a bounded query, however long
    /// the history: the listing walks the primary key.
    fn page(&self, q: JobPage) -> StoreFuture<'_, (Vec<Job>, u64)>;
}
