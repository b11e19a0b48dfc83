//! The SQLite store: WAL, one writer thread that batches concurrent writes into one
//! transaction (group commit), and one reader thread with its own connection.
//!
//! Each write runs inside a savepoint of the batch's transaction, so a refused compare-and-set
//! rolls back only itself. Its caller hears the result only after the whole batch committed.
//!
//! With `Durability::Normal` (no fsync per commit) a write that finds the writer idle commits
//! on the caller's own thread instead: a hand-off to the writer thread and back costs two
//! thread wake-ups, more than the commit itself, and on a small VM each wake-up of an idle CPU
//! can take a millisecond. Under load the writer thread is busy and writes queue to it as
//! before.
//!
//! Checkpoints run on a thread and connection of their own (PASSIVE: writers keep appending to
//! the WAL meanwhile), so no commit waits for the copy. SQLite restarts the WAL only after a
//! checkpoint that copied every frame, which a storm's writes never leave time for: so each
//! checkpoint ends by copying what was appended meanwhile with writes held off (a millisecond or
//! two). A WAL that still grows past `MAX_WAL_FRAMES` (a reader's snapshot held the copy back),
//! or goes unmeasured for long, is checkpointed by the writer thread, holding writes back.

use crate::migrations;
use crate::{
    CancelEffect, GpuRecord, JobEvent, JobFilter, JobPage, NewAttempt, NodeRecord, Store, StoreError, StoreFuture,
    Submitted, TokenRecord, UsageRecord,
};
use ravel_core::{Attempt, Job, JobId, JobSpec, JobState, Millis, Outcome};
use rusqlite::{Connection, OptionalExtension, Row, params};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;
use tokio::sync::oneshot;

/// How hard a commit is pushed to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=NORMAL`: a committed write survives any crash of a process; the last
    /// commits before a power loss may be rolled back.
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is fsynced; survives power loss too.
    Full,
}

type Reply = Box<dyn FnOnce(Option<StoreError>) + Send>;
type WriteOp = Box<dyn FnOnce(&Connection) -> Reply + Send>;
type ReadOp = Box<dyn FnOnce(&Connection) + Send>;

/// Most writes folded into one transaction.
const MAX_BATCH: usize = 512;

/// Writes between two checkpoints (each adds a few pages to the WAL; SQLite's own
/// auto-checkpoint, which is off, would run at 1,000 pages).
const WRITES_PER_CHECKPOINT: u32 = 200;

/// A WAL longer than this (frames of one 4 KiB page), as the last checkpoint found it, is
/// checkpointed by the writer thread, which then holds writes back until it is done.
const MAX_WAL_FRAMES: u32 = 2048;

/// When the WAL is checkpointed.
struct Wal {
    /// Writes since the checkpointer was last woken.
    writes: AtomicU32,
    /// Writes since the WAL's length was last measured: a checkpointer that falls behind (a
    /// starved thread on a busy machine) must not let the WAL grow unchecked meanwhile.
    unmeasured: Arc<AtomicU32>,
    /// The WAL's length in frames after the last checkpoint: 0 when it copied every frame back
    /// (the next write restarts the WAL).
    frames: Arc<AtomicU32>,
    checkpointer: mpsc::SyncSender<()>,
}

impl Wal {
    /// Counts `n` committed writes, waking the checkpointer every `WRITES_PER_CHECKPOINT`.
    fn wrote(&self, n: u32) {
        self.unmeasured.fetch_add(n, Ordering::Relaxed);
        if self.writes.fetch_add(n, Ordering::Relaxed) + n >= WRITES_PER_CHECKPOINT {
            self.writes.store(0, Ordering::Relaxed);
            // Full: it is already due to run.
            let _ = self.checkpointer.try_send(());
        }
    }

    /// Too long as last measured, or unmeasured for two checkpoints' worth of writes.
    fn too_long(&self) -> bool {
        self.frames.load(Ordering::Relaxed) > MAX_WAL_FRAMES
            || self.unmeasured.load(Ordering::Relaxed) > 2 * WRITES_PER_CHECKPOINT
    }

    /// The WAL was checkpointed and left `length` frames long.
    fn measured(frames: &AtomicU32, unmeasured: &AtomicU32, length: u32) {
        frames.store(length, Ordering::Relaxed);
        unmeasured.store(0, Ordering::Relaxed);
    }
}

/// PASSIVE never waits for readers or writers. Returns the WAL's length in frames as the
/// checkpoint began, and whether it copied all of them back (the WAL then restarts at the next
/// write, unless writes were appended meanwhile).
fn checkpoint(conn: &Connection) -> Option<(u32, bool)> {
    let (log, copied) = conn
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)))
        .ok()?;
    Some((log.max(0) as u32, copied >= log))
}

pub struct SqliteStore {
    path: PathBuf,
    writer: mpsc::Sender<WriteOp>,
    reader: mpsc::Sender<ReadOp>,
    /// The write connection: the writer thread holds it for each batch; a caller that finds it
    /// free commits on its own thread (only with `Durability::Normal`).
    write_conn: Arc<Mutex<Connection>>,
    inline_writes: bool,
    wal: Arc<Wal>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and runs pending migrations.
    /// Writes commit only on the writer thread, in batches (no commit on the caller's thread
    /// when the writer is idle): for a server with many concurrent writers (a controller of
    /// many agents), where batching saves more than the thread hop costs.
    pub fn batched_only(mut self) -> SqliteStore {
        self.inline_writes = false;
        self
    }

    pub fn open(path: &Path, durability: Durability) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Db(format!("cannot create {}: {e}", dir.display())))?;
        }
        let write_conn = connect(path, durability)?;
        migrate(&write_conn)?;
        // Checkpoints are the checkpointer's (and, for a WAL grown too long, the writer
        // thread's), never a caller's commit.
        write_conn.execute_batch("PRAGMA wal_autocheckpoint=0").map_err(db)?;
        let write_conn = Arc::new(Mutex::new(write_conn));
        let read_conn = connect(path, durability)?;

        let (due, due_rx) = mpsc::sync_channel::<()>(1);
        let (frames, unmeasured) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let (ckpt_conn, measured, since) = (connect(path, durability)?, frames.clone(), unmeasured.clone());
        let writes = write_conn.clone();
        std::thread::Builder::new()
            .name("ravel-store-checkpoint".into())
            .spawn(move || {
                // Ends when the store and its writer thread are gone (the senders with them).
                for () in due_rx {
                    let started = std::time::Instant::now();
                    let Some((mut frames, _)) = checkpoint(&ckpt_conn) else { continue };
                    // Writes went on meanwhile, so the WAL cannot restart yet: the few frames they
                    // added are copied back with writes held off (a millisecond or so, where the
                    // writer thread's own checkpoint of a WAL grown too long held them for the
                    // whole copy), and the next write starts the WAL over. A reader's snapshot can
                    // still hold the copy back; then the WAL's length stands.
                    let copied = started.elapsed();
                    {
                        let _held = writes.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some((log, all)) = checkpoint(&ckpt_conn) {
                            frames = if all { 0 } else { log };
                        }
                    }
                    Wal::measured(&measured, &since, frames);
                    tracing::debug!(
                        frames,
                        ms = copied.as_secs_f64() * 1e3,
                        held_ms = (started.elapsed() - copied).as_secs_f64() * 1e3,
                        "checkpoint"
                    );
                }
            })
            .map_err(|e| StoreError::Db(format!("cannot start checkpoint thread: {e}")))?;
        let wal = Arc::new(Wal { writes: AtomicU32::new(0), unmeasured, frames, checkpointer: due });

        let (writer, write_rx) = mpsc::channel::<WriteOp>();
        let (conn, counted) = (write_conn.clone(), wal.clone());
        std::thread::Builder::new()
            .name("ravel-store-writer".into())
            .spawn(move || write_loop(&conn, write_rx, &counted))
            .map_err(|e| StoreError::Db(format!("cannot start writer thread: {e}")))?;
        let (reader, read_rx) = mpsc::channel::<ReadOp>();
        std::thread::Builder::new()
            .name("ravel-store-reader".into())
            .spawn(move || {
                for op in read_rx {
                    // One read transaction per operation: its statements see one snapshot, so a
                    // job changing state between two of them is never missed or seen twice.
                    let began = read_conn.execute_batch("BEGIN DEFERRED").is_ok();
                    op(&read_conn);
                    if began {
                        let _ = read_conn.execute_batch("COMMIT");
                    }
                }
            })
            .map_err(|e| StoreError::Db(format!("cannot start reader thread: {e}")))?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            writer,
            reader,
            write_conn,
            inline_writes: durability == Durability::Normal,
            wal,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<'_, T> {
        self.write_rows(1, f)
    }

    /// Commits `f` on the caller's thread, counted as `rows` writes, when that can be done now
    /// without waiting (see the module docs); otherwise gives `f` back. Once the WAL is too long,
    /// writes go to the writer thread, which checkpoints after its next batch: the WAL stays
    /// bounded however fast callers commit.
    fn try_inline<T, F: FnOnce(&Connection) -> Result<T, StoreError>>(
        &self,
        rows: u32,
        f: F,
    ) -> Result<Result<T, StoreError>, F> {
        if !self.inline_writes || self.wal.too_long() {
            return Err(f);
        }
        let Ok(conn) = self.write_conn.try_lock() else { return Err(f) };
        let result = commit_one(&conn, f);
        drop(conn);
        self.wal.wrote(rows);
        Ok(result)
    }

    /// A write of about `rows` rows (a submit of an array writes one per job), counted as that
    /// many writes towards the next checkpoint.
    fn write_rows<T: Send + 'static>(
        &self,
        rows: u32,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<'_, T> {
        let f = match self.try_inline(rows, f) {
            Ok(result) => return Box::pin(async move { result }),
            Err(f) => f,
        };
        let (tx, rx) = oneshot::channel();
        let op: WriteOp = Box::new(move |conn| {
            let result = in_savepoint(conn, f);
            Box::new(move |commit_error| {
                let _ = tx.send(match commit_error {
                    Some(e) => Err(e),
                    None => result,
                });
            })
        });
        let sent = self.writer.send(op).is_ok();
        Box::pin(async move {
            if !sent {
                return Err(StoreError::Closed);
            }
            let result = rx.await.map_err(|_| StoreError::Closed)?;
            self.wal.wrote(rows);
            result
        })
    }

    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<'_, T> {
        let (tx, rx) = oneshot::channel();
        let sent = self
            .reader
            .send(Box::new(move |conn| {
                let _ = tx.send(f(conn));
            }))
            .is_ok();
        Box::pin(async move {
            if !sent {
                return Err(StoreError::Closed);
            }
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }
}

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Db(e.to_string())
}

fn connect(path: &Path, durability: Durability) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|e| StoreError::Db(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(db)?;
    let sync = match durability {
        Durability::Normal => "NORMAL",
        Durability::Full => "FULL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA foreign_keys=ON; PRAGMA temp_store=MEMORY;"
    ))
    .map_err(db)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let done: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(db)?;
    let known = migrations::SQLITE.len() as i64;
    if done > known {
        return Err(StoreError::Db(format!(
            "the database schema is version {done}, newer than this ravel knows ({known}): upgrade ravel"
        )));
    }
    for (i, sql) in migrations::SQLITE.iter().enumerate().skip(done as usize) {
        conn.execute_batch(&format!("BEGIN IMMEDIATE; {sql}; PRAGMA user_version = {}; COMMIT;", i + 1))
            .map_err(|e| StoreError::Db(format!("migration {} failed: {e}", i + 1)))?;
    }
    Ok(())
}

/// Runs one statement without arguments, prepared once per connection: the transaction
/// statements run several times per write, and parsing them each time showed in profiles.
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn in_savepoint<T>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
    exec(conn, "SAVEPOINT op").map_err(db)?;
    let result = f(conn);
    if result.is_err() {
        exec(conn, "ROLLBACK TO op").map_err(db)?;
    }
    exec(conn, "RELEASE op").map_err(db)?;
    result
}

/// Runs `body` in one `BEGIN IMMEDIATE` transaction and commits it. `Err` if the transaction
/// could not begin (then `body` never ran); otherwise what `body` returned, with the commit's
/// error if the commit failed (everything was then rolled back).
fn in_transaction<R>(
    conn: &Connection,
    body: impl FnOnce(&Connection) -> R,
) -> Result<(R, Option<StoreError>), StoreError> {
    exec(conn, "BEGIN IMMEDIATE").map_err(db)?;
    let value = body(conn);
    let commit_error = exec(conn, "COMMIT").err().map(|e| {
        let _ = exec(conn, "ROLLBACK");
        tracing::error!(error = %e, "commit failed");
        db(e)
    });
    Ok((value, commit_error))
}

/// One write in a transaction of its own, on the caller's thread: no savepoint, since a write
/// that fails rolls back the whole transaction, which is its alone.
fn commit_one<T>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
    exec(conn, "BEGIN IMMEDIATE").map_err(db)?;
    let result = f(conn);
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    if let Err(e) = exec(conn, end) {
        let _ = exec(conn, "ROLLBACK");
        tracing::error!(error = %e, "{end} failed");
        return Err(db(e));
    }
    result
}

/// Takes every write waiting (up to `MAX_BATCH`), runs them in one transaction, commits,
/// and only then answers their callers; then checkpoints the WAL if it grew too long.
fn write_loop(conn: &Mutex<Connection>, rx: mpsc::Receiver<WriteOp>, wal: &Wal) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
        let writes = batch.len();
        match in_transaction(&conn, |conn| batch.into_iter().map(|op| op(conn)).collect::<Vec<Reply>>()) {
            Ok((replies, commit_error)) => {
                for reply in replies {
                    reply(commit_error.clone());
                }
            }
            // The writes never ran; dropped with the closure, their callers hear so.
            Err(e) => {
                tracing::error!(error = %e, writes, "cannot begin a transaction");
                continue;
            }
        }
        // With the write connection held, nothing appends meanwhile: the checkpoint reaches the
        // WAL's end (unless a reader's snapshot holds it back), and the next write restarts it.
        if wal.too_long() {
            let _ = checkpoint(&conn);
            // Restarted by the next write; until the checkpointer measures it again.
            Wal::measured(&wal.frames, &wal.unmeasured, 0);
        }
    }
}

/// The three parts of `ravel queue`, each answered from an index without walking the history
/// or the waiting queue: the last jobs to finish (partial index on `finished_at`), the jobs
/// holding resources (by state), and the oldest waiting jobs (the partial index of unfinished
/// jobs in id order, which the query names by repeating its condition; it stops at the limit).
const LIST_RECENT: &str = "FROM jobs INDEXED BY jobs_finished WHERE state IN ('succeeded','failed','canceled','lost') \
     ORDER BY finished_at DESC LIMIT ?1";
const LIST_HOLDING: &str =
    "FROM jobs INDEXED BY jobs_state WHERE state IN ('allocated','starting','running') ORDER BY id";
const LIST_WAITING: &str = "FROM jobs INDEXED BY jobs_active \
     WHERE state IN ('blocked','queued','allocated','starting','running') AND state IN ('blocked','queued') \
     ORDER BY id LIMIT ?1";

const JOB_COLUMNS: &str = "id, spec, state, submitted_at, started_at, finished_at, attempt, gpus_assigned, node, \
                           exit_code, signal, reason, cancel_requested, held, not_before, array_id, retries_used";

fn row_to_job(r: &Row<'_>) -> rusqlite::Result<Job> {
    let spec: String = r.get(1)?;
    let state: String = r.get(2)?;
    let gpus: String = r.get(7)?;
    Ok(Job {
        id: r.get(0)?,
        spec: serde_json::from_str(&spec)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, Box::new(e)))?,
        state: parse_state(&state)?,
        submitted_at: r.get(3)?,
        started_at: r.get(4)?,
        finished_at: r.get(5)?,
        attempt: r.get(6)?,
        gpus_assigned: serde_json::from_str(&gpus).unwrap_or_default(),
        node: r.get(8)?,
        exit_code: r.get(9)?,
        signal: r.get(10)?,
        reason: r.get(11)?,
        cancel_requested: r.get(12)?,
        held: r.get(13)?,
        not_before: r.get(14)?,
        array_id: r.get(15)?,
        retries_used: r.get(16)?,
    })
}

const ATTEMPT_COLUMNS: &str = "job_id, n, node, gpus, cpus, state, run_dir, supervisor_pid, supervisor_start, \
                               created_at, started_at, finished_at, exit_code, signal, reason, ranks";

fn row_to_attempt(r: &Row<'_>) -> rusqlite::Result<Attempt> {
    let gpus: String = r.get(3)?;
    let state: String = r.get(5)?;
    let start: Option<i64> = r.get(8)?;
    Ok(Attempt {
        job_id: r.get(0)?,
        n: r.get(1)?,
        node: r.get(2)?,
        gpus: serde_json::from_str(&gpus).unwrap_or_default(),
        cpus: r.get(4)?,
        state: parse_state(&state)?,
        run_dir: r.get(6)?,
        supervisor_pid: r.get(7)?,
        supervisor_start: start.map(|s| s as u64),
        created_at: r.get(9)?,
        started_at: r.get(10)?,
        finished_at: r.get(11)?,
        exit_code: r.get(12)?,
        signal: r.get(13)?,
        reason: r.get(14)?,
        ranks: serde_json::from_str(&r.get::<_, String>(15)?).unwrap_or_default(),
    })
}

fn parse_state(s: &str) -> rusqlite::Result<JobState> {
    JobState::parse(s)
        .ok_or_else(|| rusqlite::Error::InvalidColumnType(0, format!("state {s:?}"), rusqlite::types::Type::Text))
}

fn get_job(conn: &Connection, id: JobId) -> Result<Option<Job>, StoreError> {
    conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))
        .map_err(db)?
        .query_row([id], row_to_job)
        .optional()
        .map_err(db)
}

fn get_attempt(conn: &Connection, id: JobId, n: u32) -> Result<Option<Attempt>, StoreError> {
    conn.prepare_cached(&format!("SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE job_id = ?1 AND n = ?2"))
        .map_err(db)?
        .query_row(params![id, n], row_to_attempt)
        .optional()
        .map_err(db)
}

/// `job` with its attempt `n` as just recorded (for `finish`: run.json shows both).
fn finished_attempt(conn: &Connection, job: Job, n: u32) -> Result<(Job, Attempt), StoreError> {
    let attempt = get_attempt(conn, job.id, n)?.ok_or(StoreError::NotFound(job.id))?;
    Ok((job, attempt))
}

/// Inserts one job in state `initial`. For an element of an array, `array_id` is the array's (the
/// first element's id, set by the first).
fn insert_job(
    conn: &Connection,
    spec: JobSpec,
    initial: JobState,
    array: bool,
    array_id: &mut Option<JobId>,
    now: Millis,
) -> Result<Job, StoreError> {
    let spec_json = to_json(&spec);
    let id: JobId = conn
        .prepare_cached(
            "INSERT INTO jobs (spec, state, priority, submitted_at, held, not_before, array_id, user, label) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) RETURNING id",
        )
        .map_err(db)?
        .query_row(
            params![
                spec_json,
                initial.as_str(),
                spec.priority,
                now,
                spec.hold,
                spec.begin_at,
                *array_id,
                spec.user,
                label(&spec)
            ],
            |r| r.get(0),
        )
        .map_err(db)?;
    if array {
        let aid = *array_id.get_or_insert(id);
        if aid == id {
            conn.prepare_cached("UPDATE jobs SET array_id = ?1 WHERE id = ?1")
                .map_err(db)?
                .execute([id])
                .map_err(db)?;
        }
    }
    let mut dep =
        conn.prepare_cached("INSERT OR IGNORE INTO job_deps (job_id, depends_on) VALUES (?1, ?2)").map_err(db)?;
    for d in spec.after.iter().chain(&spec.after_any) {
        dep.execute(params![id, d]).map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                StoreError::NotFound(*d)
            }
            e => db(e),
        })?;
    }
    Ok(Job { array_id: *array_id, ..Job::new(id, spec, initial, now) })
}

/// queued → allocated (running, when its supervisor is known): attempt n+1 of `job`, as read.
fn allocate_job(conn: &Connection, mut job: Job, new: NewAttempt, now: Millis) -> Result<(Job, Attempt), StoreError> {
    let id = job.id;
    let n = job.attempt + 1;
    let run_dir = new.run_dir_template.replace("{attempt}", &n.to_string());
    let gpus = to_json(&new.gpus);
    // A supervisor known already starts the attempt now (see NewAttempt::supervisor).
    let (state, started_at) =
        if new.supervisor.is_some() { (JobState::Running, Some(now)) } else { (JobState::Allocated, None) };
    conn.prepare_cached(
        "UPDATE jobs SET state = ?5, attempt = ?2, gpus_assigned = ?3, node = ?4, \
         started_at = ?6, finished_at = NULL, exit_code = NULL, signal = NULL, reason = NULL WHERE id = ?1",
    )
    .map_err(db)?
    .execute(params![id, n, gpus, new.node, state.as_str(), started_at])
    .map_err(db)?;
    conn.prepare_cached(
        "INSERT INTO attempts (job_id, n, node, gpus, cpus, state, run_dir, created_at, supervisor_pid, \
         supervisor_start, ranks, started_at) VALUES (?1, ?2, ?3, ?4, ?5, ?11, ?6, ?7, ?8, ?9, ?10, ?12)",
    )
    .map_err(db)?
    .execute(params![
        id,
        n,
        new.node,
        gpus,
        new.cpus,
        run_dir,
        now,
        new.supervisor.map(|s| s.0),
        new.supervisor.map(|s| s.1 as i64),
        to_json(&new.ranks),
        state.as_str(),
        started_at
    ])
    .map_err(db)?;
    job.state = state;
    job.attempt = n;
    job.gpus_assigned = new.gpus.clone();
    job.node = Some(new.node.clone());
    job.started_at = started_at;
    job.finished_at = None;
    job.exit_code = None;
    job.signal = None;
    job.reason = None;
    let attempt = Attempt {
        job_id: id,
        n,
        node: new.node,
        gpus: new.gpus,
        cpus: new.cpus,
        state,
        run_dir,
        supervisor_pid: new.supervisor.map(|s| s.0),
        supervisor_start: new.supervisor.map(|s| s.1),
        created_at: now,
        started_at,
        finished_at: None,
        exit_code: None,
        signal: None,
        reason: None,
        ranks: new.ranks,
    };
    Ok((job, attempt))
}

/// Loads the job and checks its state is one of `from` (the compare half of compare-and-set).
fn job_in(conn: &Connection, id: JobId, from: &[JobState]) -> Result<Job, StoreError> {
    let job = get_job(conn, id)?.ok_or(StoreError::NotFound(id))?;
    if !from.contains(&job.state) {
        let expected = from.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("|");
        return Err(StoreError::Conflict { id, expected, found: job.state });
    }
    Ok(job)
}

fn check_attempt(job: &Job, n: u32) -> Result<(), StoreError> {
    if job.attempt != n {
        return Err(StoreError::Conflict { id: job.id, expected: format!("attempt {n}"), found: job.state });
    }
    Ok(())
}

fn to_json<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).expect("domain types serialize")
}

/// What a search of the job list looks in: the name and the command line.
fn label(spec: &JobSpec) -> String {
    let mut l = spec.name.clone().unwrap_or_default();
    for a in &spec.command {
        l.push(' ');
        l.push_str(a);
    }
    l
}

impl Store for SqliteStore {
    fn submit(&self, specs: Vec<JobSpec>, initial: JobState, array: bool, now: Millis) -> StoreFuture<'_, Vec<Job>> {
        self.write_rows(specs.len().try_into().unwrap_or(u32::MAX), move |conn| {
            let mut jobs = Vec::with_capacity(specs.len());
            let mut array_id = None;
            for spec in specs {
                jobs.push(insert_job(conn, spec, initial, array, &mut array_id, now)?);
            }
            Ok(jobs)
        })
    }

    fn job(&self, id: JobId) -> StoreFuture<'_, Option<Job>> {
        self.read(move |conn| get_job(conn, id))
    }

    fn attempts(&self, id: JobId) -> StoreFuture<'_, Vec<Attempt>> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!("SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE job_id = ?1 ORDER BY n"))
                .map_err(db)?;
            let rows = stmt.query_map([id], row_to_attempt).map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)
        })
    }

    fn active(&self) -> StoreFuture<'_, Vec<(Job, Option<Attempt>)>> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs \
                     WHERE state IN ('blocked','queued','allocated','starting','running') ORDER BY id"
                ))
                .map_err(db)?;
            let jobs = stmt.query_map([], row_to_job).map_err(db)?.collect::<Result<Vec<_>, _>>().map_err(db)?;
            jobs.into_iter()
                .map(|job| {
                    let attempt = if job.state.is_active() { get_attempt(conn, job.id, job.attempt)? } else { None };
                    Ok((job, attempt))
                })
                .collect()
        })
    }

    fn jobs_after(&self, after: JobId, limit: u32) -> StoreFuture<'_, Vec<Job>> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id > ?1 ORDER BY id LIMIT ?2"))
                .map_err(db)?;
            let rows = stmt.query_map(params![after, limit], row_to_job).map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)
        })
    }

    fn list(&self, filter: JobFilter) -> StoreFuture<'_, Vec<Job>> {
        self.read(move |conn| {
            let collect = |sql: &str, args: &[&dyn rusqlite::ToSql]| -> Result<Vec<Job>, StoreError> {
                let mut stmt = conn.prepare_cached(sql).map_err(db)?;
                let rows = stmt.query_map(args, row_to_job).map_err(db)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(db)
            };
            let mut jobs = collect(&format!("SELECT {JOB_COLUMNS} {LIST_RECENT}"), &[&filter.recent_finished])?;
            jobs.extend(collect(&format!("SELECT {JOB_COLUMNS} {LIST_HOLDING}"), &[])?);
            jobs.extend(collect(
                &format!("SELECT {JOB_COLUMNS} {LIST_WAITING}"),
                &[&filter.waiting_limit.map(i64::from).unwrap_or(-1)],
            )?);
            jobs.sort_by_key(|j| j.id);
            Ok(jobs)
        })
    }

    fn page(&self, q: JobPage) -> StoreFuture<'_, (Vec<Job>, u64)> {
        self.read(move |conn| {
            let mut wh = vec![];
            let mut args: Vec<Box<dyn rusqlite::ToSql>> = vec![];
            if !q.states.is_empty() {
                let list = q.states.iter().map(|s| format!("'{}'", s.as_str())).collect::<Vec<_>>().join(",");
                wh.push(format!("state IN ({list})"));
            }
            if let Some(text) = q.search.as_deref().filter(|t| !t.is_empty()) {
                let escaped = text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
                let n = args.len() + 1;
                wh.push(format!("(label LIKE ?{n} ESCAPE '\\' OR user LIKE ?{n} ESCAPE '\\')"));
                args.push(Box::new(format!("%{escaped}%")));
            }
            let where_sql = if wh.is_empty() { String::new() } else { format!("WHERE {}", wh.join(" AND ")) };
            let params: Vec<&dyn rusqlite::ToSql> = args.iter().map(|a| a.as_ref()).collect();
            let order = if q.oldest_first { "ASC" } else { "DESC" };
            // The page's ids come from walking `jobs_browse` (id, state, label, user) in id order:
            // a covering index, a few dozen bytes a job, where the table rows carry whole specs.
            let ids: Vec<JobId> = conn
                .prepare_cached(&format!(
                    "SELECT id FROM jobs INDEXED BY jobs_browse {where_sql} ORDER BY id {order} LIMIT {} OFFSET {}",
                    q.limit.min(1000),
                    q.offset
                ))
                .map_err(db)?
                .query_map(params.as_slice(), |r| r.get(0))
                .map_err(db)?
                .collect::<Result<_, _>>()
                .map_err(db)?;
            let mut jobs = Vec::with_capacity(ids.len());
            {
                let mut stmt =
                    conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1")).map_err(db)?;
                for id in &ids {
                    jobs.push(stmt.query_row([id], row_to_job).map_err(db)?);
                }
            }
            // A short page that is not past the end tells the total without counting.
            let total = if (ids.len() as u32) < q.limit && (!ids.is_empty() || q.offset == 0) {
                q.offset + ids.len() as u64
            } else {
                conn.prepare_cached(&format!("SELECT COUNT(*) FROM jobs INDEXED BY jobs_browse {where_sql}"))
                    .map_err(db)?
                    .query_row(params.as_slice(), |r| r.get::<_, i64>(0))
                    .map_err(db)? as u64
            };
            Ok((jobs, total))
        })
    }

    fn counts(&self) -> StoreFuture<'_, Vec<(JobState, u64)>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state").map_err(db)?;
            let rows = stmt
                .query_map([], |r| Ok((parse_state(&r.get::<_, String>(0)?)?, r.get::<_, i64>(1)? as u64)))
                .map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)
        })
    }

    fn allocate(&self, id: JobId, new: NewAttempt, now: Millis) -> StoreFuture<'_, (Job, Attempt)> {
        self.write(move |conn| {
            let job = job_in(conn, id, &[JobState::Queued])?;
            allocate_job(conn, job, new, now)
        })
    }

    fn submit_placed_now(
        &self,
        spec: JobSpec,
        now: Millis,
        place: &mut dyn FnMut(&Job) -> Option<NewAttempt>,
    ) -> Option<Result<Submitted, StoreError>> {
        self.try_inline(1, |conn| {
            let queued = insert_job(conn, spec, JobState::Queued, false, &mut None, now)?;
            let placed = match place(&queued) {
                Some(new) => Some(allocate_job(conn, queued.clone(), new, now)?),
                None => None,
            };
            Ok(Submitted { queued, placed })
        })
        .ok()
    }

    fn mark_starting(&self, id: JobId, n: u32) -> StoreFuture<'_, Job> {
        self.write(move |conn| {
            let mut job = job_in(conn, id, &[JobState::Allocated])?;
            check_attempt(&job, n)?;
            conn.prepare_cached("UPDATE jobs SET state = 'starting' WHERE id = ?1")
                .map_err(db)?
                .execute([id])
                .map_err(db)?;
            conn.prepare_cached("UPDATE attempts SET state = 'starting' WHERE job_id = ?1 AND n = ?2")
                .map_err(db)?
                .execute(params![id, n])
                .map_err(db)?;
            job.state = JobState::Starting;
            Ok(job)
        })
    }

    fn mark_running(&self, id: JobId, n: u32, pid: i32, start: u64, now: Millis) -> StoreFuture<'_, Job> {
        self.write(move |conn| {
            let mut job = job_in(conn, id, &[JobState::Allocated, JobState::Starting])?;
            check_attempt(&job, n)?;
            conn.prepare_cached("UPDATE jobs SET state = 'running', started_at = ?2 WHERE id = ?1")
                .map_err(db)?
                .execute(params![id, now])
                .map_err(db)?;
            conn.prepare_cached(
                "UPDATE attempts SET state = 'running', started_at = ?3, supervisor_pid = ?4, supervisor_start = ?5 \
                 WHERE job_id = ?1 AND n = ?2",
            )
            .map_err(db)?
            .execute(params![id, n, now, pid, start as i64])
            .map_err(db)?;
            job.state = JobState::Running;
            job.started_at = Some(now);
            Ok(job)
        })
    }

    fn finish(
        &self,
        id: JobId,
        n: u32,
        outcome: Outcome,
        now: Millis,
        allow_retry: bool,
    ) -> StoreFuture<'_, (Job, Attempt)> {
        self.write(move |conn| {
            let mut job = job_in(conn, id, &[JobState::Allocated, JobState::Starting, JobState::Running])?;
            check_attempt(&job, n)?;
            if !outcome.state.is_terminal() || !job.state.can_become(outcome.state) {
                return Err(StoreError::Conflict { id, expected: format!("a way to {}", outcome.state), found: job.state });
            }
            let state = outcome.state.as_str();
            conn.prepare_cached(
                "UPDATE attempts SET state = ?3, finished_at = ?4, exit_code = ?5, signal = ?6, reason = ?7, \
                 started_at = COALESCE(started_at, ?8) WHERE job_id = ?1 AND n = ?2",
            )
            .map_err(db)?
            .execute(params![id, n, state, now, outcome.exit_code, outcome.signal, outcome.reason, outcome.started_at])
            .map_err(db)?;
            let retry = allow_retry
                && matches!(outcome.state, JobState::Failed | JobState::Lost)
                && !job.cancel_requested
                && job.retries_used < job.spec.retries;
            job.exit_code = outcome.exit_code;
            job.signal = outcome.signal;
            job.started_at = job.started_at.or(outcome.started_at);
            if retry {
                let used = job.retries_used + 1;
                let at = now + job.spec.retry_backoff_ms(used) as i64;
                let reason = format!("retry {used} of {}: attempt {n} {}", job.spec.retries, outcome.reason.as_deref().unwrap_or(state));
                conn.prepare_cached(
                    "UPDATE jobs SET state = 'queued', retries_used = ?2, not_before = ?3, exit_code = ?4, signal = ?5, \
                     reason = ?6, gpus_assigned = '[]', node = NULL, finished_at = NULL WHERE id = ?1",
                )
                .map_err(db)?
                .execute(params![id, used, at, outcome.exit_code, outcome.signal, reason])
                .map_err(db)?;
                job.state = JobState::Queued;
                job.retries_used = used;
                job.not_before = Some(at);
                job.reason = Some(reason);
                job.gpus_assigned.clear();
                job.node = None;
                return finished_attempt(conn, job, n);
            }
            conn.prepare_cached(
                "UPDATE jobs SET state = ?2, finished_at = ?3, exit_code = ?4, signal = ?5, reason = ?6, \
                 started_at = COALESCE(started_at, ?7) WHERE id = ?1",
            )
            .map_err(db)?
            .execute(params![id, state, now, outcome.exit_code, outcome.signal, outcome.reason, outcome.started_at])
            .map_err(db)?;
            job.state = outcome.state;
            job.finished_at = Some(now);
            job.reason = outcome.reason;
            finished_attempt(conn, job, n)
        })
    }

    fn requeue(&self, id: JobId, n: u32, reason: String, now: Millis) -> StoreFuture<'_, Job> {
        self.write(move |conn| {
            // Running too: its supervisor may have been recorded before it turned out that the
            // job itself never started.
            let mut job = job_in(conn, id, &[JobState::Allocated, JobState::Starting, JobState::Running])?;
            check_attempt(&job, n)?;
            // A placement on a known supervisor recorded a start; nothing started after all.
            conn.prepare_cached(
                "UPDATE jobs SET state = 'queued', gpus_assigned = '[]', node = NULL, started_at = NULL WHERE id = ?1",
            )
            .map_err(db)?
            .execute([id])
            .map_err(db)?;
            conn.prepare_cached(
                "UPDATE attempts SET state = 'lost', finished_at = ?3, reason = ?4, started_at = NULL \
                 WHERE job_id = ?1 AND n = ?2",
            )
            .map_err(db)?
            .execute(params![id, n, now, reason])
            .map_err(db)?;
            job.state = JobState::Queued;
            job.gpus_assigned.clear();
            job.node = None;
            job.started_at = None;
            Ok(job)
        })
    }

    fn request_cancel(&self, id: JobId, reason: String, now: Millis) -> StoreFuture<'_, CancelEffect> {
        self.write(move |conn| {
            let mut job = get_job(conn, id)?.ok_or(StoreError::NotFound(id))?;
            match job.state {
                s if s.is_terminal() => Ok(CancelEffect::AlreadyFinished(job)),
                JobState::Blocked | JobState::Queued => {
                    conn.prepare_cached(
                        "UPDATE jobs SET state = 'canceled', finished_at = ?2, reason = ?3, cancel_requested = 1 WHERE id = ?1",
                    )
                    .map_err(db)?
                    .execute(params![id, now, reason])
                    .map_err(db)?;
                    job.state = JobState::Canceled;
                    job.finished_at = Some(now);
                    job.reason = Some(reason);
                    job.cancel_requested = true;
                    Ok(CancelEffect::Canceled(job))
                }
                _ => {
                    conn.prepare_cached("UPDATE jobs SET cancel_requested = 1 WHERE id = ?1")
                        .map_err(db)?
                        .execute([id])
                        .map_err(db)?;
                    job.cancel_requested = true;
                    let attempt = get_attempt(conn, id, job.attempt)?
                        .ok_or_else(|| StoreError::Db(format!("job {id} has no attempt {}", job.attempt)))?;
                    Ok(CancelEffect::MustStop(job, Box::new(attempt)))
                }
            }
        })
    }

    fn set_held(&self, id: JobId, held: bool) -> StoreFuture<'_, Job> {
        self.write(move |conn| {
            let mut job = job_in(conn, id, &[JobState::Queued, JobState::Blocked])?;
            conn.prepare_cached("UPDATE jobs SET held = ?2 WHERE id = ?1")
                .map_err(db)?
                .execute(params![id, held])
                .map_err(db)?;
            job.held = held;
            Ok(job)
        })
    }

    fn set_priority(&self, id: JobId, priority: i32) -> StoreFuture<'_, Job> {
        self.write(move |conn| {
            let mut job = job_in(conn, id, &[JobState::Queued, JobState::Blocked])?;
            job.spec.priority = priority;
            conn.prepare_cached("UPDATE jobs SET priority = ?2, spec = ?3 WHERE id = ?1")
                .map_err(db)?
                .execute(params![id, priority, to_json(&job.spec)])
                .map_err(db)?;
            Ok(job)
        })
    }

    fn unblock(&self, id: JobId) -> StoreFuture<'_, Job> {
        self.write(move |conn| {
            let mut job = job_in(conn, id, &[JobState::Blocked])?;
            conn.prepare_cached("UPDATE jobs SET state = 'queued' WHERE id = ?1")
                .map_err(db)?
                .execute([id])
                .map_err(db)?;
            job.state = JobState::Queued;
            Ok(job)
        })
    }

    fn retry(&self, id: JobId, _now: Millis) -> StoreFuture<'_, Job> {
        self.write(move |conn| {
            let mut job = job_in(conn, id, &[JobState::Succeeded, JobState::Failed, JobState::Canceled, JobState::Lost])?;
            conn.prepare_cached(
                "UPDATE jobs SET state = 'queued', held = 0, not_before = NULL, cancel_requested = 0, exit_code = NULL, \
                 signal = NULL, reason = NULL, started_at = NULL, finished_at = NULL, gpus_assigned = '[]', node = NULL \
                 WHERE id = ?1",
            )
            .map_err(db)?
            .execute([id])
            .map_err(db)?;
            job.state = JobState::Queued;
            job.held = false;
            job.not_before = None;
            job.cancel_requested = false;
            job.exit_code = None;
            job.signal = None;
            job.reason = None;
            job.started_at = None;
            job.finished_at = None;
            job.gpus_assigned.clear();
            job.node = None;
            Ok(job)
        })
    }

    fn dependents(&self, id: JobId) -> StoreFuture<'_, Vec<JobId>> {
        self.read(move |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT job_id FROM job_deps WHERE depends_on = ?1 ORDER BY job_id").map_err(db)?;
            let rows = stmt.query_map([id], |r| r.get(0)).map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)
        })
    }

    fn usage_since(&self, since: Millis) -> StoreFuture<'_, Vec<UsageRecord>> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT j.user, a.gpus, a.started_at, a.finished_at FROM attempts a JOIN jobs j ON j.id = a.job_id \
                     WHERE a.finished_at >= ?1 AND a.started_at IS NOT NULL AND a.gpus != '[]'",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map([since], |r| {
                    let gpus: String = r.get(1)?;
                    Ok(UsageRecord {
                        user: r.get(0)?,
                        gpus: serde_json::from_str::<Vec<u32>>(&gpus).map(|g| g.len() as u32).unwrap_or(0),
                        started_at: r.get(2)?,
                        finished_at: r.get(3)?,
                    })
                })
                .map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)
        })
    }

    fn last_ended(&self, limit: u32) -> StoreFuture<'_, Vec<(JobId, u32, String)>> {
        self.read(move |conn| {
            // attempts_finished (finished_at, partial on ended attempts) read backwards.
            let mut stmt = conn
                .prepare_cached(
                    "SELECT job_id, n, run_dir FROM attempts WHERE finished_at IS NOT NULL \
                     ORDER BY finished_at DESC LIMIT ?1",
                )
                .map_err(db)?;
            let rows = stmt.query_map([limit], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)
        })
    }

    fn register_node(&self, node: NodeRecord, now: Millis) -> StoreFuture<'_, ()> {
        self.write(move |conn| {
            let tags = serde_json::to_string(&node.tags).map_err(|e| StoreError::Db(e.to_string()))?;
            let admin = if node.admin.is_empty() { "ready" } else { node.admin.as_str() };
            conn.prepare_cached(
                "INSERT INTO nodes (name, cpus, first_seen, last_seen, epoch, admin, tags, max_jobs, version, remote) \
                 VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
                 ON CONFLICT (name) DO UPDATE SET cpus = excluded.cpus, last_seen = excluded.last_seen, \
                 epoch = excluded.epoch, admin = excluded.admin, tags = excluded.tags, \
                 max_jobs = excluded.max_jobs, version = excluded.version, remote = excluded.remote",
            )
            .map_err(db)?
            .execute(params![
                node.name,
                node.cpus,
                now,
                node.epoch as i64,
                admin,
                tags,
                node.max_jobs,
                node.version,
                node.remote
            ])
            .map_err(db)?;
            conn.prepare_cached("DELETE FROM gpus WHERE node = ?1").map_err(db)?.execute([&node.name]).map_err(db)?;
            let mut insert = conn
                .prepare_cached(
                    "INSERT INTO gpus (node, idx, name, uuid, memory_total_mib) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(db)?;
            for g in &node.gpus {
                insert.execute(params![node.name, g.index, g.name, g.uuid, g.memory_total_mib as i64]).map_err(db)?;
            }
            Ok(())
        })
    }

    fn nodes(&self) -> StoreFuture<'_, Vec<NodeRecord>> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT name, cpus, epoch, admin, tags, max_jobs, version, remote, last_seen \
                     FROM nodes ORDER BY name",
                )
                .map_err(db)?;
            let nodes: Vec<NodeRecord> = stmt
                .query_map([], |r| {
                    let tags: String = r.get(4)?;
                    Ok(NodeRecord {
                        name: r.get(0)?,
                        cpus: r.get(1)?,
                        gpus: vec![],
                        epoch: r.get::<_, i64>(2)? as u64,
                        admin: r.get(3)?,
                        tags: serde_json::from_str(&tags).unwrap_or_default(),
                        max_jobs: r.get(5)?,
                        version: r.get(6)?,
                        remote: r.get(7)?,
                        last_seen: r.get(8)?,
                    })
                })
                .map_err(db)?
                .collect::<Result<_, _>>()
                .map_err(db)?;
            let mut gpus = conn
                .prepare_cached("SELECT idx, name, uuid, memory_total_mib FROM gpus WHERE node = ?1 ORDER BY idx")
                .map_err(db)?;
            nodes
                .into_iter()
                .map(|mut node| {
                    node.gpus = gpus
                        .query_map([&node.name], |r| {
                            Ok(GpuRecord {
                                index: r.get(0)?,
                                name: r.get(1)?,
                                uuid: r.get(2)?,
                                memory_total_mib: r.get::<_, i64>(3)? as u64,
                            })
                        })
                        .map_err(db)?
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(db)?;
                    Ok(node)
                })
                .collect()
        })
    }

    fn remove_node(&self, name: String) -> StoreFuture<'_, bool> {
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM gpus WHERE node = ?1").map_err(db)?.execute([&name]).map_err(db)?;
            let n =
                conn.prepare_cached("DELETE FROM nodes WHERE name = ?1").map_err(db)?.execute([&name]).map_err(db)?;
            Ok(n > 0)
        })
    }

    fn add_token(&self, t: TokenRecord) -> StoreFuture<'_, TokenRecord> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO tokens (name, role, hash, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(db)?
            .execute(params![t.name, t.role, t.hash, t.created_at, t.expires_at])
            .map_err(db)?;
            Ok(TokenRecord { id: conn.last_insert_rowid() as u64, revoked_at: None, ..t })
        })
    }

    fn tokens(&self) -> StoreFuture<'_, Vec<TokenRecord>> {
        self.read(move |conn| {
            let mut stmt =
                conn.prepare_cached(&format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY id")).map_err(db)?;
            stmt.query_map([], token_row).map_err(db)?.collect::<Result<_, _>>().map_err(db)
        })
    }

    fn revoke_token(&self, id: u64, now: Millis) -> StoreFuture<'_, Option<TokenRecord>> {
        self.write(move |conn| {
            conn.prepare_cached("UPDATE tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL")
                .map_err(db)?
                .execute(params![id as i64, now])
                .map_err(db)?;
            conn.prepare_cached(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?1"))
                .map_err(db)?
                .query_row([id as i64], token_row)
                .optional()
                .map_err(db)
        })
    }

    fn add_event(&self, e: JobEvent) -> StoreFuture<'_, i64> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO job_events (job_id, attempt, at, kind, message) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(db)?
            .execute(params![e.job, e.attempt, e.at, e.kind, e.message])
            .map_err(db)?;
            Ok(conn.last_insert_rowid())
        })
    }

    fn events(&self, job: JobId) -> StoreFuture<'_, Vec<JobEvent>> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT id, attempt, at, kind, message FROM job_events WHERE job_id = ?1 ORDER BY id")
                .map_err(db)?;
            let rows = stmt
                .query_map([job], |r| {
                    Ok(JobEvent {
                        id: r.get(0)?,
                        job,
                        attempt: r.get(1)?,
                        at: r.get(2)?,
                        kind: r.get(3)?,
                        message: r.get(4)?,
                    })
                })
                .map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)
        })
    }
}

const TOKEN_COLUMNS: &str = "id, name, role, hash, created_at, expires_at, revoked_at";

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        id: r.get::<_, i64>(0)? as u64,
        name: r.get(1)?,
        role: r.get(2)?,
        hash: r.get(3)?,
        created_at: r.get(4)?,
        expires_at: r.get(5)?,
        revoked_at: r.get(6)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_is_checkpointed_whether_writes_commit_inline_or_on_the_writer_thread() {
        let (dir, store) = open();
        let store = std::sync::Arc::new(store);
        // Sequential writes find the writer idle and commit on this thread; concurrent ones
        // queue to the writer thread. Each commit adds pages to the WAL.
        for i in 0..1500 {
            submit(&store, spec("x"), i).await;
        }
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0..150 {
                        submit(&store, spec("y"), t * 1000 + i).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let wal = std::fs::metadata(dir.path().join("ravel.db-wal")).map(|m| m.len()).unwrap_or(0);
        // Checkpoints every 200 writes, and the writer's own once the WAL passes 2,048 frames,
        // keep it under ~13 MiB; without checkpoints it holds every page of the 2,700 commits
        // (40-55 MiB).
        assert!(wal < 16 << 20, "WAL grew to {wal} bytes");
        let (_, total) = store.page(JobPage { limit: 1, ..JobPage::default() }).await.unwrap();
        assert_eq!(total, 2700);
    }

    #[tokio::test]
    async fn the_checkpointer_copies_the_wal_back_while_writes_commit_inline() {
        let (dir, store) = open();
        let db_len = || std::fs::metadata(dir.path().join("ravel.db")).map(|m| m.len()).unwrap_or(0);
        let before = db_len();
        for i in 0..(WRITES_PER_CHECKPOINT + 10) as i64 {
            submit(&store, spec("x"), i).await;
        }
        // Far from too long: no write went to the writer thread to checkpoint there, and none
        // checkpointed inline; only the checkpointer copies pages into the database file.
        assert!(!store.wal.too_long());
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while db_len() == before {
            assert!(std::time::Instant::now() < deadline, "the database file never grew: no checkpoint ran");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (_, total) = store.page(JobPage { limit: 1, ..JobPage::default() }).await.unwrap();
        assert_eq!(total, (WRITES_PER_CHECKPOINT + 10) as u64);
    }

    #[tokio::test]
    async fn nodes_and_their_gpus_are_recorded_and_replaced() {
        let (_dir, store) = open();
        let gpu = |index| GpuRecord { index, name: "Fake GPU".into(), uuid: None, memory_total_mib: 81920 };
        let a = |cpus, gpus| NodeRecord { name: "a".into(), cpus, gpus, ..Default::default() };
        store.register_node(a(8, vec![gpu(0), gpu(1)]), 1).await.unwrap();
        let b = NodeRecord {
            epoch: 7,
            admin: "draining".into(),
            tags: vec!["a100".into()],
            max_jobs: Some(3),
            version: "0.1.0".into(),
            remote: true,
            ..a(4, vec![gpu(0)])
        };
        store.register_node(b.clone(), 2).await.unwrap();
        let nodes = store.nodes().await.unwrap();
        assert_eq!(nodes, vec![NodeRecord { last_seen: 2, ..b }]);
        assert!(store.remove_node("a".into()).await.unwrap());
        assert!(!store.remove_node("a".into()).await.unwrap());
        assert!(store.nodes().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_handed_over_attempt_is_starting_then_running_and_gang_ranks_are_kept() {
        let (_dir, store) = open();
        let job = submit(&store, spec("true"), 1).await;
        let ranks = vec![("b".to_string(), vec![0, 1])];
        let (_, a) = store.allocate(job.id, NewAttempt { ranks: ranks.clone(), ..new_attempt() }, 2).await.unwrap();
        assert!(matches!(store.mark_starting(job.id, a.n + 1).await, Err(StoreError::Conflict { .. }) | Err(_)));
        assert_eq!(store.mark_starting(job.id, a.n).await.unwrap().state, JobState::Starting);
        assert!(store.mark_starting(job.id, a.n).await.is_err(), "only from allocated");
        assert_eq!(store.mark_running(job.id, a.n, 10, 20, 3).await.unwrap().state, JobState::Running);
        let kept = store.attempts(job.id).await.unwrap();
        assert_eq!((kept[0].state, &kept[0].ranks), (JobState::Running, &ranks));
    }

    #[tokio::test]
    async fn tokens_are_kept_listed_and_revoked_once() {
        let (_dir, store) = open();
        let t = |name: &str, hash: &str| TokenRecord {
            id: 0,
            name: name.into(),
            role: "user".into(),
            hash: hash.into(),
            created_at: 5,
            expires_at: Some(50),
            revoked_at: None,
        };
        let first = store.add_token(t("alice", "aa")).await.unwrap();
        let second = store.add_token(t("bob", "bb")).await.unwrap();
        assert!(second.id > first.id);
        assert!(store.add_token(t("eve", "aa")).await.is_err(), "hashes are unique");
        let revoked = store.revoke_token(first.id, 9).await.unwrap().unwrap();
        assert_eq!(revoked.revoked_at, Some(9));
        assert_eq!(store.revoke_token(first.id, 11).await.unwrap().unwrap().revoked_at, Some(9));
        assert_eq!(store.revoke_token(999, 11).await.unwrap(), None);
        let all = store.tokens().await.unwrap();
        assert_eq!(
            all.iter().map(|t| (t.name.as_str(), t.revoked_at)).collect::<Vec<_>>(),
            [("alice", Some(9)), ("bob", None)]
        );
    }

    #[tokio::test]
    async fn pages_filter_search_and_count() {
        let (_dir, store) = open();
        let mut specs = vec![];
        for i in 0..25 {
            let mut s = spec(if i % 5 == 0 { "train_50%" } else { "eval" });
            s.name = Some(format!("n{i}"));
            specs.push(s);
        }
        store.submit(specs, JobState::Queued, false, 1).await.unwrap();
        let page = |q: JobPage| store.page(q);
        let (jobs, total) = page(JobPage { limit: 10, ..Default::default() }).await.unwrap();
        assert_eq!((jobs.len(), total), (10, 25));
        assert_eq!(jobs[0].id, 25, "newest first");
        let (jobs, _) = page(JobPage { limit: 10, offset: 20, ..Default::default() }).await.unwrap();
        assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![5, 4, 3, 2, 1]);
        let (jobs, total) =
            page(JobPage { search: Some("50%".into()), limit: 100, ..Default::default() }).await.unwrap();
        assert_eq!(total, 5, "% is matched literally");
        assert!(jobs.iter().all(|j| j.spec.command[0] == "train_50%"));
        let (_, total) = page(JobPage { search: Some("_".into()), limit: 1, ..Default::default() }).await.unwrap();
        assert_eq!(total, 5);
        let (_, total) =
            page(JobPage { states: vec![JobState::Running], limit: 1, ..Default::default() }).await.unwrap();
        assert_eq!(total, 0);
        let (jobs, _) = page(JobPage { oldest_first: true, limit: 1, ..Default::default() }).await.unwrap();
        assert_eq!(jobs[0].id, 1);
    }

    #[tokio::test]
    async fn events_are_kept_per_job_in_order() {
        let (_dir, store) = open();
        let jobs = store.submit(vec![spec("a"), spec("b")], JobState::Queued, false, 1).await.unwrap();
        let ev = |job, kind: &str| JobEvent { id: 0, job, attempt: 1, at: 5, kind: kind.into(), message: "m".into() };
        let first = store.add_event(ev(jobs[0].id, "gpu_idle")).await.unwrap();
        store.add_event(ev(jobs[1].id, "other")).await.unwrap();
        let second = store.add_event(ev(jobs[0].id, "gpu_not_allocated")).await.unwrap();
        assert!(second > first);
        let got = store.events(jobs[0].id).await.unwrap();
        assert_eq!(
            got.iter().map(|e| (e.id, e.kind.as_str())).collect::<Vec<_>>(),
            vec![(first, "gpu_idle"), (second, "gpu_not_allocated")]
        );
    }

    fn spec(cmd: &str) -> JobSpec {
        JobSpec {
            command: vec![cmd.into()],
            cwd: "/tmp".into(),
            env: vec![("A".into(), "1".into())],
            gpus: 1,
            ..JobSpec::default()
        }
    }

    async fn submit(store: &SqliteStore, spec: JobSpec, now: Millis) -> Job {
        store.submit(vec![spec], JobState::Queued, false, now).await.unwrap().remove(0)
    }

    async fn run_attempt(store: &SqliteStore, id: JobId, code: i32, now: Millis) -> Job {
        let (_, a) = store.allocate(id, new_attempt(), now).await.unwrap();
        store.mark_running(id, a.n, 1, 1, now).await.unwrap();
        store.finish(id, a.n, Outcome::from_exit(Some(code), None, false), now + 1000, true).await.unwrap().0
    }

    #[tokio::test]
    async fn a_failed_attempt_is_retried_with_backoff_until_retries_run_out() {
        let (_dir, store) = open();
        let mut s = spec("x");
        s.retries = 2;
        s.retry_delay_ms = Some(100);
        let job = submit(&store, s, 0).await;
        let j = run_attempt(&store, job.id, 1, 10).await;
        assert_eq!((j.state, j.retries_used, j.not_before), (JobState::Queued, 1, Some(1010 + 100)));
        assert!(j.reason.unwrap().contains("retry 1 of 2"));
        let j = run_attempt(&store, job.id, 1, 2000).await;
        assert_eq!((j.state, j.retries_used, j.not_before), (JobState::Queued, 2, Some(3000 + 200)));
        let j = run_attempt(&store, job.id, 1, 4000).await;
        assert_eq!(j.state, JobState::Failed, "no retries left");
        let attempts = store.attempts(job.id).await.unwrap();
        assert_eq!(attempts.iter().map(|a| a.state).collect::<Vec<_>>(), vec![JobState::Failed; 3]);
        // A success is never retried, and `ravel retry` starts a finished job again.
        let j = store.retry(job.id, 5000).await.unwrap();
        assert_eq!(j.state, JobState::Queued);
        let j = run_attempt(&store, job.id, 0, 6000).await;
        assert_eq!((j.state, j.attempt), (JobState::Succeeded, 4));
    }

    #[tokio::test]
    async fn dependencies_holds_priorities_and_arrays() {
        let (_dir, store) = open();
        let first = submit(&store, spec("a"), 1).await;
        let mut s = spec("b");
        s.after = vec![first.id];
        let dep = store.submit(vec![s.clone()], JobState::Blocked, false, 2).await.unwrap().remove(0);
        assert_eq!(dep.state, JobState::Blocked);
        assert_eq!(store.dependents(first.id).await.unwrap(), vec![dep.id]);
        s.after = vec![999];
        assert_eq!(store.submit(vec![s], JobState::Blocked, false, 3).await.unwrap_err(), StoreError::NotFound(999));
        assert_eq!(store.active().await.unwrap().len(), 2, "the refused submit left nothing behind");
        assert_eq!(store.unblock(dep.id).await.unwrap().state, JobState::Queued);
        assert!(store.unblock(dep.id).await.is_err(), "only blocked jobs unblock");
        assert!(store.set_held(dep.id, true).await.unwrap().held);
        assert_eq!(store.set_priority(dep.id, 7).await.unwrap().spec.priority, 7);
        assert_eq!(store.job(dep.id).await.unwrap().unwrap().spec.priority, 7);
        store.request_cancel(first.id, "canceled by user".into(), 4).await.unwrap();
        assert!(store.set_held(first.id, true).await.is_err(), "a finished job cannot be held");
        let elems = store.submit(vec![spec("e"), spec("e"), spec("e")], JobState::Queued, true, 5).await.unwrap();
        assert!(elems.iter().all(|j| j.array_id == Some(elems[0].id)));
        assert_eq!(store.job(elems[2].id).await.unwrap().unwrap().array_id, Some(elems[0].id));
    }

    #[tokio::test]
    async fn usage_counts_finished_gpu_attempts() {
        let (_dir, store) = open();
        let job = submit(&store, spec("a"), 0).await;
        run_attempt(&store, job.id, 0, 100).await;
        let usage = store.usage_since(0).await.unwrap();
        assert_eq!(usage, vec![UsageRecord { user: None, gpus: 1, started_at: 100, finished_at: 1100 }]);
        assert!(store.usage_since(5000).await.unwrap().is_empty());
    }

    fn new_attempt() -> NewAttempt {
        NewAttempt {
            node: "local".into(),
            gpus: vec![2],
            cpus: 1,
            run_dir_template: "/runs/x/{attempt}".into(),
            supervisor: None,
            ranks: vec![],
        }
    }

    fn open() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("ravel.db"), Durability::Normal).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn a_job_walks_the_state_machine_and_survives_reopen() {
        let (dir, store) = open();
        let job = submit(&store, spec("true"), 10).await;
        assert_eq!(job.state, JobState::Queued);
        let (_, a) = store.allocate(job.id, new_attempt(), 11).await.unwrap();
        assert_eq!((a.n, a.run_dir.as_str()), (1, "/runs/x/1"));
        // A second allocation of the same job is refused: compare-and-set.
        let err = store.allocate(job.id, new_attempt(), 12).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict { found: JobState::Allocated, .. }), "{err:?}");
        store.mark_running(job.id, 1, 4242, 99, 13).await.unwrap();
        // A stale attempt number changes nothing.
        assert!(store.finish(job.id, 2, Outcome::from_exit(Some(0), None, false), 14, false).await.is_err());
        let (done, attempt) =
            store.finish(job.id, 1, Outcome::from_exit(Some(3), None, false), 15, false).await.unwrap();
        assert_eq!((attempt.n, attempt.state, attempt.exit_code), (1, JobState::Failed, Some(3)));
        assert_eq!((done.state, done.exit_code), (JobState::Failed, Some(3)));
        drop(store);

        let store = SqliteStore::open(&dir.path().join("ravel.db"), Durability::Full).unwrap();
        let job = store.job(job.id).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Failed);
        assert_eq!(job.gpus_assigned, vec![2]);
        let attempts = store.attempts(job.id).await.unwrap();
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].supervisor_pid, Some(4242));
        assert_eq!(attempts[0].exit_code, Some(3));
        assert!(store.active().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn concurrent_submits_get_distinct_ids_in_few_commits() {
        let (_dir, store) = open();
        let store = std::sync::Arc::new(store);
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let s = store.clone();
                tokio::spawn(async move {
                    s.submit(vec![spec(&format!("job{i}"))], JobState::Queued, false, i).await.unwrap().remove(0).id
                })
            })
            .collect();
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap());
        }
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 200);
        assert_eq!(store.active().await.unwrap().len(), 200);
    }

    #[tokio::test]
    async fn cancel_of_queued_and_running_jobs() {
        let (_dir, store) = open();
        let queued = submit(&store, spec("a"), 1).await;
        let running = submit(&store, spec("b"), 2).await;
        store.allocate(running.id, new_attempt(), 3).await.unwrap();
        store.mark_running(running.id, 1, 7, 8, 4).await.unwrap();

        assert!(
            matches!(store.request_cancel(queued.id, "canceled by user".into(), 5).await.unwrap(), CancelEffect::Canceled(j) if j.state == JobState::Canceled)
        );
        // Once canceled it cannot be allocated.
        assert!(store.allocate(queued.id, new_attempt(), 6).await.is_err());
        match store.request_cancel(running.id, "canceled by user".into(), 5).await.unwrap() {
            CancelEffect::MustStop(job, attempt) => {
                assert!(job.cancel_requested);
                assert_eq!(attempt.supervisor_pid, Some(7));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            store.request_cancel(queued.id, "canceled by user".into(), 7).await.unwrap(),
            CancelEffect::AlreadyFinished(_)
        ));
        assert_eq!(
            store.request_cancel(999, "canceled by user".into(), 7).await.unwrap_err(),
            StoreError::NotFound(999)
        );
    }

    #[tokio::test]
    async fn requeue_returns_an_unstarted_attempt_to_the_queue() {
        let (_dir, store) = open();
        let job = submit(&store, spec("a"), 1).await;
        store.allocate(job.id, new_attempt(), 2).await.unwrap();
        let job = store.requeue(job.id, 1, "daemon restarted before launch".into(), 3).await.unwrap();
        assert_eq!(job.state, JobState::Queued);
        let (_, again) = store.allocate(job.id, new_attempt(), 4).await.unwrap();
        assert_eq!(again.n, 2, "a new attempt, never the same one twice");
    }

    #[tokio::test]
    async fn a_placement_on_a_known_supervisor_is_recorded_running_in_one_write() {
        let (_dir, store) = open();
        let job = submit(&store, spec("a"), 1).await;
        let (placed, a) =
            store.allocate(job.id, NewAttempt { supervisor: Some((4242, 99)), ..new_attempt() }, 2).await.unwrap();
        assert_eq!((placed.state, placed.started_at), (JobState::Running, Some(2)));
        assert_eq!(
            (a.state, a.started_at, a.supervisor_pid, a.supervisor_start),
            (JobState::Running, Some(2), Some(4242), Some(99))
        );
        let stored = store.job(job.id).await.unwrap().unwrap();
        assert_eq!((stored.state, stored.started_at), (JobState::Running, Some(2)));
        // A restart that finds the supervisor never got the attempt queues the job again, and
        // neither it nor the attempt claims a start any more.
        let job = store.requeue(job.id, 1, "never handed over".into(), 3).await.unwrap();
        assert_eq!((job.state, job.started_at), (JobState::Queued, None));
        assert_eq!(store.job(job.id).await.unwrap().unwrap().started_at, None);
        let a = store.attempts(job.id).await.unwrap().remove(0);
        assert_eq!((a.state, a.started_at, a.finished_at), (JobState::Lost, None, Some(3)));
    }

    #[tokio::test]
    async fn a_job_placed_in_its_submits_write_is_recorded_running_with_its_attempt() {
        let (_dir, store) = open();
        let mut seen = None;
        let placed = store
            .submit_placed_now(spec("a"), 7, &mut |job| {
                seen = Some((job.id, job.state));
                Some(NewAttempt {
                    supervisor: Some((4242, 99)),
                    run_dir_template: format!("/runs/{}/{{attempt}}", job.id),
                    ..new_attempt()
                })
            })
            .expect("the write connection is free")
            .unwrap();
        let id = placed.queued.id;
        assert_eq!(seen, Some((id, JobState::Queued)), "place sees the job as inserted, its id known");
        assert_eq!(placed.queued.state, JobState::Queued);
        let (job, a) = placed.placed.expect("placed");
        assert_eq!((job.state, job.attempt, job.started_at), (JobState::Running, 1, Some(7)));
        assert_eq!(
            (a.state, a.supervisor_pid, a.run_dir.as_str()),
            (JobState::Running, Some(4242), &*format!("/runs/{id}/1"))
        );
        // Both are in the store, as one write left them.
        let stored = store.job(id).await.unwrap().unwrap();
        assert_eq!((stored.state, stored.attempt, stored.gpus_assigned), (JobState::Running, 1, vec![2]));
        assert_eq!(store.attempts(id).await.unwrap(), vec![a]);

        // Not placed: the job is recorded queued, with no attempt.
        let queued = store.submit_placed_now(spec("b"), 8, &mut |_| None).unwrap().unwrap();
        assert!(queued.placed.is_none());
        assert_eq!(store.job(queued.queued.id).await.unwrap().unwrap().state, JobState::Queued);
        assert!(store.attempts(queued.queued.id).await.unwrap().is_empty());

        // While another write holds the connection it does not wait, and asks nothing.
        let held = store.write_conn.lock().unwrap();
        let mut asked = false;
        assert!(
            store
                .submit_placed_now(spec("c"), 9, &mut |_| {
                    asked = true;
                    None
                })
                .is_none()
        );
        drop(held);
        assert!(!asked);
        assert_eq!(store.active().await.unwrap().len(), 2, "nothing was recorded for it");
    }

    #[test]
    fn the_queue_listing_reads_indexes_not_the_history() {
        let (_dir, store) = open();
        drop(store);
        let conn = connect(&_dir.path().join("ravel.db"), Durability::Normal).unwrap();
        // Each part through the index that holds just what it lists: an index over every job
        // (by state, or jobs_browse) would make it read the whole history or the whole queue.
        let parts = [
            ("recent", LIST_RECENT, "jobs_finished"),
            ("holding", LIST_HOLDING, "jobs_state"),
            ("waiting", LIST_WAITING, "jobs_active"),
        ];
        for (part, sql, index) in parts {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN SELECT id {sql}")).unwrap();
            let limits = rusqlite::params_from_iter(std::iter::repeat_n(10, stmt.parameter_count()));
            let plan: Vec<String> =
                stmt.query_map(limits, |r| r.get::<_, String>(3)).unwrap().collect::<Result<_, _>>().unwrap();
            let plan = plan.join("; ");
            assert!(plan.contains(&format!("INDEX {index}")), "{part}: {plan}");
        }
    }

    #[tokio::test]
    async fn the_whole_history_is_read_in_batches_after_an_id() {
        let (_dir, store) = open();
        let ids: Vec<JobId> = store
            .submit((0..7).map(|_| spec("x")).collect(), JobState::Queued, false, 1)
            .await
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect();
        let mut seen = vec![];
        let mut after = 0;
        loop {
            let batch = store.jobs_after(after, 3).await.unwrap();
            assert!(batch.len() <= 3);
            let Some(last) = batch.last() else { break };
            after = last.id;
            seen.extend(batch.iter().map(|j| j.id));
        }
        assert_eq!(seen, ids);
    }

    #[tokio::test]
    async fn listing_shows_active_jobs_and_bounded_history() {
        let (_dir, store) = open();
        for i in 0..10 {
            let j = submit(&store, spec("x"), i).await;
            if i < 8 {
                store.request_cancel(j.id, "canceled by user".into(), 100 + i).await.unwrap();
            }
        }
        let recent = store.list(JobFilter { recent_finished: 3, waiting_limit: None }).await.unwrap();
        let ids: Vec<JobId> = recent.iter().map(|j| j.id).collect();
        assert_eq!(ids, vec![6, 7, 8, 9, 10]);
        let page = store.list(JobFilter { recent_finished: 0, waiting_limit: Some(1) }).await.unwrap();
        assert_eq!(page.iter().map(|j| j.id).collect::<Vec<_>>(), vec![9], "the oldest waiting job only");
        assert_eq!(store.jobs_after(0, u32::MAX).await.unwrap().len(), 10);
        let counts = store.counts().await.unwrap();
        assert!(counts.contains(&(JobState::Canceled, 8)) && counts.contains(&(JobState::Queued, 2)));
    }
}
