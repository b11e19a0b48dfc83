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

/// Writes run.json off the async threads; a failure is logged, never fatal to the job.
pub fn write(job: Job, attempt: Attempt) {
    tokio::task::spawn_blocking(move || {
        let path = Path::new(&attempt.run_dir).join("run.json");
        if let Err(e) = ravel_exec::write_json_atomic(&path, &RunJson { job: &job, attempt: &attempt }) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write run.json");
        }
    });
}
