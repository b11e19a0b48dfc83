//! `run.json` in each attempt's run dir: the spec, state, times, node, GPUs and exit, written
//! atomically so a reader never sees half of it.
//!
//! It is a copy of what the database holds, for people and tools browsing run dirs, and no
//! part of the daemon reads it back. So it is written behind: a thread of its own, at idle
//! priority (`SCHED_IDLE`), takes the writes from a bounded queue, and the submits, launches
//! and ends that a busy queue is made of never wait for it or compete with it for a CPU. When
//! the machine never idles and the queue fills, the caller writes its own: the backlog, and
//! the memory it holds, stay bounded. A daemon that stops writes what is queued first
//! ([`flush`]); one killed with SIGKILL can leave the last few unwritten, and recovery writes
//! those (see [`crate::recovery`]).

use ravel_core::{Attempt, Job};
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{OnceLock, mpsc};

#[derive(Serialize)]
struct RunJson<'a> {
    job: &'a Job,
    attempt: &'a Attempt,
}

/// Most writes waiting for the writer thread.
pub(crate) const BACKLOG: usize = 256;

enum Order {
    Write(Box<(Job, Attempt)>),
    /// Answered once everything queued before it is written.
    Flush(mpsc::SyncSender<()>),
}

/// The writer thread's queue; None if the thread could not be started (callers write their own).
static WRITER: OnceLock<Option<mpsc::SyncSender<Order>>> = OnceLock::new();

/// Set by [`flush`]: the writer leaves idle priority, so a stop does not wait on a busy machine.
static HURRY: AtomicBool = AtomicBool::new(false);

/// Writes run.json; a failure is logged, never fatal to the job. `durable` (the daemon's full
/// durability mode) adds an fsync, which waits for the disk: that write goes to a blocking
/// thread at once. Otherwise the write is queued for the writer thread (see the module docs).
pub fn write(job: Job, attempt: Attempt, durable: bool) {
    if durable {
        tokio::task::spawn_blocking(move || write_now(&job, &attempt, true));
        return;
    }
    let order = Order::Write(Box::new((job, attempt)));
    let Some(queue) = writer() else { return run_here(order) };
    if let Err(mpsc::TrySendError::Full(order) | mpsc::TrySendError::Disconnected(order)) = queue.try_send(order) {
        run_here(order);
    }
}

/// Returns once every run.json queued so far is written (before the daemon exits).
pub fn flush() {
    let Some(Some(queue)) = WRITER.get() else { return };
    HURRY.store(true, Ordering::Relaxed);
    let (done, written) = mpsc::sync_channel(1);
    if queue.send(Order::Flush(done)).is_ok() {
        let _ = written.recv();
    }
}

fn run_here(order: Order) {
    if let Order::Write(w) = order {
        write_now(&w.0, &w.1, false);
    }
}

fn writer() -> Option<&'static mpsc::SyncSender<Order>> {
    WRITER
        .get_or_init(|| {
            let (queue, orders) = mpsc::sync_channel(BACKLOG);
            let thread = std::thread::Builder::new().name("ravel-runjson".into()).spawn(move || {
                let mut idle = set_policy(libc::SCHED_IDLE);
                for order in orders {
                    if idle && HURRY.load(Ordering::Relaxed) {
                        idle = !set_policy(libc::SCHED_OTHER);
                    }
                    match order {
                        Order::Write(w) => write_now(&w.0, &w.1, false),
                        Order::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            });
            thread.ok().map(|_| queue)
        })
        .as_ref()
}

/// Sets the calling thread's scheduling policy (Linux applies it per thread); true if it took.
fn set_policy(policy: libc::c_int) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; param is a valid sched_param.
    unsafe { libc::sched_setscheduler(0, policy, &param) == 0 }
}

fn write_now(job: &Job, attempt: &Attempt, durable: bool) {
    let path = Path::new(&attempt.run_dir).join("run.json");
    let durability = if durable { ravel_exec::Durability::Synced } else { ravel_exec::Durability::Unsynced };
    if let Err(e) = ravel_exec::write_json(&path, &RunJson { job, attempt }, durability) {
        tracing::warn!(path = %path.display(), error = %e, "cannot write run.json");
    }
}
