//! Jobs, attempts and the one state machine every mode shares.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Job ids are small integers, unique for the life of a store (never reused).
pub type JobId = i64;
/// UTC milliseconds since the Unix epoch. The core never reads the clock: callers pass `now`.
pub type Millis = i64;

/// What the user asked for. Stored as submitted; never changed by scheduling.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct JobSpec {
    /// argv; no shell is involved unless the user runs one.
    pub command: Vec<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// Absolute working directory.
    pub cwd: String,
    /// The full environment the job starts with (the caller's, plus `--env` overrides).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Vec<String>>))]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub gpus: u32,
    #[serde(default = "one")]
    pub cpus: u32,
    #[serde(default)]
    pub priority: i32,
    /// Submitting user's name: for display, and the unit of fair share.
    #[serde(default)]
    pub user: Option<String>,
    /// Per-GPU memory reservation in MiB: the job shares GPUs instead of taking whole ones.
    #[serde(default)]
    pub gpu_mem_mib: Option<u64>,
    /// The memory tag the reservation came from (`--memory-tag small`), for display.
    #[serde(default)]
    pub memory_tag: Option<String>,
    /// Start only after these jobs succeeded.
    #[serde(default)]
    pub after: Vec<JobId>,
    /// Start only after these jobs ended, however they ended.
    #[serde(default)]
    pub after_any: Vec<JobId>,
    /// Automatic retries after a failure (a new attempt each).
    #[serde(default)]
    pub retries: u32,
    /// First retry's delay; each further retry doubles it (capped at an hour).
    #[serde(default)]
    pub retry_delay_ms: Option<u64>,
    /// Kill the job's process tree after this long; it ends `failed` with reason `timeout`.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Submit held: it waits until `ravel release`.
    #[serde(default)]
    pub hold: bool,
    /// Not eligible before this time.
    #[serde(default)]
    pub begin_at: Option<Millis>,
    /// Element of a job array: its index (`RAVEL_ARRAY_INDEX`).
    #[serde(default)]
    pub array_index: Option<u32>,
    /// Most elements of its array that may run at once.
    #[serde(default)]
    pub array_limit: Option<u32>,
    /// The submitter's uid and gid, from the kernel (the socket peer's credentials), never from
    /// the request: a shared box's daemon runs the job as them.
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
    /// The submitter's umask, applied to the job.
    #[serde(default)]
    pub umask: Option<u32>,
    /// Hard memory limit for the job's processes in MiB (`--mem`), enforced with a cgroup.
    #[serde(default)]
    pub mem_mib: Option<u64>,
    /// Send a notification when the job ends this way (`--notify`).
    #[serde(default)]
    pub notify: Option<NotifyOn>,
    /// A webhook of the job's own for it, besides the daemon's (`--notify-url`).
    #[serde(default)]
    pub notify_url: Option<String>,
    /// Cluster mode: run only on this node (`--node`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Cluster mode: run only on nodes with all of these tags (`--tags a,b`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Cluster mode: one rank on each of this many nodes, started together (`--nodes N`, a gang);
    /// each rank gets `gpus` GPUs and `cpus` CPUs. 0 or 1: one node.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub nodes: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// When a job's end is worth a notification.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NotifyOn {
    /// Failed, lost, or canceled because a dependency failed.
    Failure,
    Success,
    Always,
}

impl NotifyOn {
    pub fn wants(self, state: JobState) -> bool {
        match self {
            NotifyOn::Always => state.is_terminal(),
            NotifyOn::Success => state == JobState::Succeeded,
            NotifyOn::Failure => matches!(state, JobState::Failed | JobState::Lost),
        }
    }
}

impl Default for JobSpec {
    fn default() -> JobSpec {
        JobSpec {
            command: vec![],
            name: None,
            cwd: "/".into(),
            env: vec![],
            gpus: 0,
            cpus: 1,
            priority: 0,
            user: None,
            gpu_mem_mib: None,
            memory_tag: None,
            after: vec![],
            after_any: vec![],
            retries: 0,
            retry_delay_ms: None,
            timeout_ms: None,
            hold: false,
            begin_at: None,
            array_index: None,
            array_limit: None,
            uid: None,
            gid: None,
            umask: None,
            mem_mib: None,
            notify: None,
            notify_url: None,
            node: None,
            tags: Vec::new(),
            nodes: 0,
        }
    }
}

/// Default first retry delay.
pub const DEFAULT_RETRY_DELAY_MS: u64 = 10_000;
/// Longest retry backoff.
pub const MAX_RETRY_DELAY_MS: u64 = 3_600_000;

impl JobSpec {
    /// Backoff before retry number `n` (1-based): delay × 2^(n-1), capped.
    pub fn retry_backoff_ms(&self, n: u32) -> u64 {
        let base = self.retry_delay_ms.unwrap_or(DEFAULT_RETRY_DELAY_MS);
        base.saturating_mul(1u64 << (n.saturating_sub(1)).min(30)).min(MAX_RETRY_DELAY_MS)
    }
}

fn one() -> u32 {
    1
}

/// Limits that keep one request from exhausting the daemon.
pub const MAX_COMMAND_BYTES: usize = 128 * 1024;
pub const MAX_ENV_BYTES: usize = 1024 * 1024;
pub const MAX_NAME_BYTES: usize = 256;

/// Why a spec was refused. Every message names the bad value and says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError(pub String);

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SpecError {}

impl JobSpec {
    /// Checks what can be checked without I/O or knowing the node.
    pub fn validate(&self) -> Result<(), SpecError> {
        let err = |m: String| Err(SpecError(m));
        if self.command.is_empty() || self.command[0].is_empty() {
            return err("empty command: give the program to run after `--`, e.g. `ravel run -- python train.py`".into());
        }
        if self.command.iter().any(|a| a.contains('\0')) {
            return err("command contains a NUL byte".into());
        }
        let cmd_bytes: usize = self.command.iter().map(|a| a.len() + 1).sum();
        if cmd_bytes > MAX_COMMAND_BYTES {
            return err(format!("command is {cmd_bytes} bytes; the limit is {MAX_COMMAND_BYTES}"));
        }
        let env_bytes: usize = self.env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        if env_bytes > MAX_ENV_BYTES {
            return err(format!("environment is {env_bytes} bytes; the limit is {MAX_ENV_BYTES}"));
        }
        if let Some((k, _)) =
            self.env.iter().find(|(k, v)| k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0'))
        {
            return err(format!("bad environment variable name {k:?}: use --env KEY=VALUE"));
        }
        if let Some(n) = self.name.as_ref().filter(|n| n.len() > MAX_NAME_BYTES) {
            return err(format!("name is {} bytes; the limit is {MAX_NAME_BYTES}", n.len()));
        }
        if !self.cwd.starts_with('/') {
            return err(format!("working directory {:?} is not an absolute path", self.cwd));
        }
        if self.cpus == 0 {
            return err("--cpus must be at least 1".into());
        }
        if self.gpu_mem_mib == Some(0) {
            return err("--gpu-mem must be more than 0".into());
        }
        if self.gpu_mem_mib.is_some() && self.gpus == 0 {
            return err("--gpu-mem needs --gpus N (the memory is reserved on each of the N GPUs)".into());
        }
        if self.timeout_ms == Some(0) {
            return err("--timeout must be more than 0".into());
        }
        if self.nodes > 1024 {
            return err(format!("--nodes {} is more than 1024", self.nodes));
        }
        if self.tags.len() > 64 || self.tags.iter().any(|t| t.is_empty() || t.len() > 64 || t.contains(',')) {
            return err("--tags takes up to 64 comma-separated tags of 1 to 64 characters".into());
        }
        if self.node.as_ref().is_some_and(|n| n.is_empty() || n.len() > 64) {
            return err("--node takes a node name (see `ravel nodes`)".into());
        }
        if self.nodes > 1 && self.node.is_some() {
            return err("--nodes N spans N nodes: it cannot be pinned to one --node (use --tags)".into());
        }
        if let Some(u) = &self.notify_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return err(format!("--notify-url {u:?} is not an http:// or https:// URL"));
        }
        if self.mem_mib.is_some_and(|m| m < 4) {
            return err("--mem must be at least 4M (a process needs some memory to start)".into());
        }
        if self.umask.is_some_and(|m| m > 0o777) {
            return err(format!("umask {:o} is not a permission mask (0 to 777 octal)", self.umask.unwrap_or(0)));
        }
        if self.array_limit == Some(0) {
            return err("an array's running limit (%N) must be at least 1".into());
        }
        Ok(())
    }

    /// Short human label: the name, else the command line.
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.command.join(" "))
    }
}

/// The job state machine (see ARCHITECTURE.md).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Blocked,
    Queued,
    Allocated,
    Starting,
    Running,
    Succeeded,
    Failed,
    Canceled,
    Lost,
}

impl JobState {
    pub const ALL: [JobState; 9] = [
        JobState::Blocked,
        JobState::Queued,
        JobState::Allocated,
        JobState::Starting,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Canceled,
        JobState::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Blocked => "blocked",
            JobState::Queued => "queued",
            JobState::Allocated => "allocated",
            JobState::Starting => "starting",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Canceled => "canceled",
            JobState::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Canceled | JobState::Lost)
    }

    /// Holds resources on a node (an attempt exists and may be alive).
    pub fn is_active(self) -> bool {
        matches!(self, JobState::Allocated | JobState::Starting | JobState::Running)
    }

    /// Legal edges of the state machine. Stores check these as compare-and-set.
    pub fn can_become(self, to: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, to),
            (Blocked, Queued)
                | (Blocked, Canceled)
                | (Queued, Allocated)
                // Placed on a supervisor already running (a local standby): one write.
                | (Queued, Running)
                | (Queued, Canceled)
                | (Allocated, Starting)
                | (Allocated, Running)
                | (Allocated, Queued)
                | (Allocated, Canceled)
                | (Allocated, Lost)
                | (Allocated, Succeeded)
                | (Allocated, Failed)
                | (Starting, Running)
                | (Starting, Queued)
                | (Running, Queued)
                | (Starting, Succeeded)
                | (Starting, Failed)
                | (Starting, Canceled)
                | (Starting, Lost)
                | (Running, Succeeded)
                | (Running, Failed)
                | (Running, Canceled)
                | (Running, Lost)
                // A retry, automatic (failed, lost) or asked for (`ravel retry`, any end).
                | (Failed, Queued)
                | (Lost, Queued)
                | (Succeeded, Queued)
                | (Canceled, Queued)
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The stored record of a job.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Job {
    pub id: JobId,
    pub spec: JobSpec,
    pub state: JobState,
    pub submitted_at: Millis,
    /// Start of the current attempt, if any.
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    /// Number of the current (latest) attempt; 0 before the first start.
    pub attempt: u32,
    /// GPUs held by the current attempt (or that it held, once finished).
    pub gpus_assigned: Vec<u32>,
    pub node: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Why the job ended as it did, when the exit code alone does not say.
    pub reason: Option<String>,
    pub cancel_requested: bool,
    /// Held by the user: not scheduled until released.
    #[serde(default)]
    pub held: bool,
    /// Not eligible before this time (`--begin`, or a retry's backoff).
    #[serde(default)]
    pub not_before: Option<Millis>,
    /// The array this job is an element of (the id of its first element).
    #[serde(default)]
    pub array_id: Option<JobId>,
    /// Automatic retries used so far.
    #[serde(default)]
    pub retries_used: u32,
}

impl Job {
    /// A job record as first made: in `state`, no attempt yet, held and begin time from its spec.
    pub fn new(id: JobId, spec: JobSpec, state: JobState, submitted_at: Millis) -> Job {
        Job {
            id,
            state,
            submitted_at,
            started_at: None,
            finished_at: None,
            attempt: 0,
            gpus_assigned: vec![],
            node: None,
            exit_code: None,
            signal: None,
            reason: None,
            cancel_requested: false,
            held: spec.hold,
            not_before: spec.begin_at,
            array_id: None,
            retries_used: 0,
            spec,
        }
    }
}

/// One start of a job on a node.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Attempt {
    pub job_id: JobId,
    pub n: u32,
    pub node: String,
    pub gpus: Vec<u32>,
    pub cpus: u32,
    pub state: JobState,
    pub run_dir: String,
    pub supervisor_pid: Option<i32>,
    /// Start time of the supervisor process (clock ticks since boot), to tell a re-used pid apart.
    pub supervisor_start: Option<u64>,
    pub created_at: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: Option<String>,
    /// A gang's other ranks (rank 1, 2, ...): each one's node and GPUs. Rank 0 is `node`/`gpus`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub ranks: Vec<(String, Vec<u32>)>,
}

/// How an attempt ended, as observed by its supervisor.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub state: JobState,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: Option<String>,
    /// When the process started, if the store has not heard it yet (an exit can overtake it).
    #[serde(default)]
    pub started_at: Option<Millis>,
}

impl Outcome {
    /// Classifies a finished process: exit 0 succeeds, anything else fails; a kill we asked for cancels.
    pub fn from_exit(exit_code: Option<i32>, signal: Option<i32>, canceled: bool) -> Outcome {
        let state = if canceled {
            JobState::Canceled
        } else if exit_code == Some(0) {
            JobState::Succeeded
        } else {
            JobState::Failed
        };
        let reason = match (canceled, signal) {
            (true, _) => Some("canceled by user".to_string()),
            (false, Some(s)) => Some(format!("killed by signal {s}")),
            _ => None,
        };
        Outcome { state, exit_code, signal, reason, started_at: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        JobSpec { command: vec!["true".into()], cwd: "/tmp".into(), ..JobSpec::default() }
    }

    #[test]
    fn retry_backoff_doubles_and_is_capped() {
        let mut s = spec();
        s.retry_delay_ms = Some(1000);
        assert_eq!((s.retry_backoff_ms(1), s.retry_backoff_ms(2), s.retry_backoff_ms(3)), (1000, 2000, 4000));
        assert_eq!(s.retry_backoff_ms(40), MAX_RETRY_DELAY_MS);
    }

    #[test]
    fn terminal_states_only_leave_for_a_retry() {
        for from in JobState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in JobState::ALL {
                assert_eq!(from.can_become(to), to == JobState::Queued, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn state_names_round_trip() {
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobState::parse("done"), None);
    }

    #[test]
    fn validate_rejects_bad_specs_with_the_value() {
        assert!(spec().validate().is_ok());
        let mut s = spec();
        s.command.clear();
        assert!(s.validate().unwrap_err().0.contains("empty command"));
        let mut s = spec();
        s.cwd = "rel/dir".into();
        assert!(s.validate().unwrap_err().0.contains("rel/dir"));
        let mut s = spec();
        s.env.push(("A=B".into(), "x".into()));
        assert!(s.validate().unwrap_err().0.contains("A=B"));
        let mut s = spec();
        s.env.push(("BIG".into(), "x".repeat(MAX_ENV_BYTES)));
        assert!(s.validate().unwrap_err().0.contains("limit"));
        let mut s = spec();
        s.cpus = 0;
        assert!(s.validate().is_err());
    }

    #[test]
    fn outcome_classifies_exits() {
        assert_eq!(Outcome::from_exit(Some(0), None, false).state, JobState::Succeeded);
        assert_eq!(Outcome::from_exit(Some(3), None, false).state, JobState::Failed);
        let o = Outcome::from_exit(None, Some(9), false);
        assert_eq!(o.state, JobState::Failed);
        assert_eq!(o.reason.as_deref(), Some("killed by signal 9"));
        assert_eq!(Outcome::from_exit(None, Some(15), true).state, JobState::Canceled);
    }
}
