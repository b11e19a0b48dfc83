//! `run.json` in each attempt's run dir: the spec, state, times, node, GPUs and exit, written
//! atomically so a reader never sees half of it.

use ravel_core::{Attempt, Job};
use serde::Serialize;
use std::path::Path;

#[derive(Serialize)]
struct RunJson<'a> {
    job: &'a Job,
    attempt: &'a Attempt,
}

/// Writes run.json; a failure is logged, never fatal to the job. `durable` adds an fsync (the
/// daemon's full durability mode), which waits for the disk: that write goes to a blocking
/// thread. Otherwise it is one small file and a rename, written in place.
pub fn write(job: Job, attempt: Attempt, durable: bool) {
    let write = move || {
        let path = Path::new(&attempt.run_dir).join("run.json");
        let durability = if durable { ravel_exec::Durability::Synced } else { ravel_exec::Durability::Unsynced };
        if let Err(e) = ravel_exec::write_json(&path, &RunJson { job: &job, attempt: &attempt }, durability) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write run.json");
        }
    };
    if durable {
        tokio::task::spawn_blocking(write);
    } else {
        write();
    }
}
