//! Wire types of the Ravel REST API (`/v1/...`), shared by the CLI, the client and the controller.
//!
//! Bodies are JSON. Errors are `ErrorBody` with a stable `code` and a human `error` line.

use ravel_core::{Attempt, Job, JobId, JobSpec, JobState};
use serde::{Deserialize, Serialize};

pub const API_VERSION: &str = "v1";

/// Largest request body the API accepts.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    pub spec: JobSpec,
    /// Submit a job array: one job per index, at most `limit` running at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array: Option<ArrayRequest>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct ArrayRequest {
    pub indices: Vec<u32>,
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Largest job array.
pub const MAX_ARRAY_SIZE: usize = 100_000;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct SubmitResponse {
    /// The job's id (for an array: the array's id, which is its first element's).
    pub id: JobId,
    /// Every job created (one, or the array's elements in index order).
    #[serde(default)]
    pub ids: Vec<JobId>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct PriorityRequest {
    pub priority: i32,
}

/// A job as the API shows it: the record plus what the scheduler knows now.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct JobView {
    #[serde(flatten)]
    pub job: Job,
    /// For queued and blocked jobs: why it is not running yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<String>,
    /// For eligible queued jobs: 1 = next to be considered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u32>,
    /// When it is expected to start, if running jobs' time limits bound it (UTC ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_start: Option<i64>,
    /// Run dir of the current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_dir: Option<String>,
    /// Every attempt, oldest first (filled by `GET /v1/jobs/{id}` only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// Notable things seen while it ran, oldest first (filled by `GET /v1/jobs/{id}` only): a
    /// process on a GPU it was not given, a GPU it holds idle.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<JobEventView>,
}

/// Something seen about a job, kept with it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct JobEventView {
    /// Monotonically increasing over the store.
    pub id: i64,
    pub attempt: u32,
    /// UTC ms.
    pub at: i64,
    /// Stable kind: `gpu_not_allocated`, `gpu_idle`.
    pub kind: String,
    pub message: String,
}

/// One entry of the event feed (`GET /v1/events`): a job changed (state, hold, priority, or
/// cancel requested), as it is after the change.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct EventView {
    /// Increasing; pass the last one seen as `Last-Event-ID` (or `?since=`) to resume.
    pub id: u64,
    /// UTC ms.
    pub at: i64,
    pub job: JobId,
    pub state: JobState,
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub held: bool,
    pub priority: i32,
    pub cancel_requested: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /v1/events` query.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, utoipa::ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Send the events after this id first (as `Last-Event-ID` does); 0: all the daemon keeps.
    /// Without it (and without the header), only new events.
    #[serde(default)]
    pub since: Option<u64>,
    /// Keep the stream open for new events (default true); false ends after those kept.
    #[serde(default)]
    pub follow: Option<bool>,
}

/// One user's limits; `None` is no limit (or, in a user's entry, the default's value).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// GPUs the user's running jobs may hold at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
    /// Jobs the user may have running at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<u32>,
    /// Jobs the user may have waiting (queued, blocked or held) at once; more are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued: Option<u32>,
}

impl Limits {
    /// Each field from `self`, else from `fallback`.
    pub fn or(self, fallback: Limits) -> Limits {
        Limits {
            gpus: self.gpus.or(fallback.gpus),
            running: self.running.or(fallback.running),
            queued: self.queued.or(fallback.queued),
        }
    }
}

/// Per-user limits of a daemon: a default for everyone and per-user entries (field by field,
/// a user's entry wins over the default). Kept in the daemon's `limits.json`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(default)]
    pub default: Limits,
    #[serde(default)]
    pub users: std::collections::BTreeMap<String, Limits>,
}

impl LimitsConfig {
    pub fn for_user(&self, user: &str) -> Limits {
        self.users.get(user).copied().unwrap_or_default().or(self.default)
    }
}

/// `POST /v1/admin/limits`: set (or with `clear`, remove) the default's or one user's limits.
/// Fields left out keep their value.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetLimitsRequest {
    /// None: the default for every user.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub limits: Limits,
    /// Remove these limits (the user's entry, or the default's) before applying `limits`.
    #[serde(default)]
    pub clear: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct QueueResponse {
    /// Listed jobs in id order. Their `spec.env` is left out (see `GET /v1/jobs/{id}`).
    pub jobs: Vec<JobView>,
    /// Waiting jobs not listed because of `limit`.
    #[serde(default)]
    pub more_waiting: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, utoipa::ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct QueueQuery {
    /// Include every finished job, not just recent ones.
    #[serde(default)]
    pub all: bool,
    /// How many recently finished jobs to include when `all` is false.
    #[serde(default)]
    pub recent: Option<u32>,
    /// At most this many waiting (queued or blocked) jobs when `all` is false, oldest first.
    #[serde(default)]
    pub limit: Option<u32>,
    /// With `all`: `ndjson` answers one job per line instead of one JSON object. Either way
    /// the whole history is streamed, read from the store a batch at a time.
    #[serde(default)]
    pub format: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct CancelRequest {
    pub ids: Vec<JobId>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CancelOutcome {
    /// It had not started; it is canceled now.
    Canceled,
    /// It is running; its process group is being terminated.
    Terminating,
    /// It had already finished; nothing changed.
    AlreadyFinished,
    NotFound,
    /// The job belongs to another user, and the caller is not an admin; nothing changed.
    Denied,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct CancelResult {
    pub id: JobId,
    pub outcome: CancelOutcome,
    pub state: Option<JobState>,
    /// Why, when it was denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct CancelResponse {
    pub results: Vec<CancelResult>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, utoipa::ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Comma-separated ids; empty with `all` means every active job.
    #[serde(default)]
    pub ids: String,
    #[serde(default)]
    pub all: bool,
    /// Longest time the server holds the request before answering `done: false`.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct JobBrief {
    pub id: JobId,
    pub state: JobState,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct WaitResponse {
    /// True when every job asked for has reached a terminal state.
    pub done: bool,
    pub jobs: Vec<JobBrief>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    #[default]
    Stdout,
    Stderr,
}

impl LogStream {
    /// Its name in a query (`stream=stdout`).
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }

    pub fn file_name(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout.log",
            LogStream::Stderr => "stderr.log",
        }
    }
}

/// `GET /v1/jobs/{id}/logs`: the body is raw bytes; the headers below say where to read next.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, utoipa::ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    #[serde(default)]
    pub stream: LogStream,
    #[serde(default)]
    pub offset: u64,
    /// Read at most this many bytes (the server caps it too).
    #[serde(default)]
    pub limit: Option<u64>,
    /// Attempt number; the current attempt when absent.
    #[serde(default)]
    pub attempt: Option<u32>,
    /// A gang's rank (cluster mode); rank 0 when absent.
    #[serde(default)]
    pub rank: Option<u32>,
    /// Stream the file from `offset` as it grows (chunked), until the job has ended and all of it
    /// was sent (or the daemon stops). `limit` does not apply.
    #[serde(default)]
    pub follow: bool,
}

pub const HEADER_NEXT_OFFSET: &str = "x-ravel-next-offset";
pub const HEADER_FILE_SIZE: &str = "x-ravel-file-size";
pub const HEADER_JOB_STATE: &str = "x-ravel-job-state";
pub const MAX_LOG_READ: u64 = 4 * 1024 * 1024;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct GpuProcessView {
    pub pid: u32,
    pub used_memory_mib: u64,
    /// Owner of the process, when it can be read from /proc.
    pub user: Option<String>,
    /// The Ravel job this process belongs to, if any.
    pub job: Option<JobId>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct GpuView {
    pub index: u32,
    pub name: String,
    pub memory_total_mib: u64,
    pub memory_used_mib: u64,
    pub utilization_pct: u32,
    /// The Ravel job holding it whole.
    pub allocated_to: Option<JobId>,
    /// Memory reservations of Ravel jobs sharing it: (job, MiB).
    #[serde(default)]
    #[schema(value_type = Vec<Vec<i64>>)]
    pub shared: Vec<(JobId, u64)>,
    /// Sum of the reservations.
    #[serde(default)]
    pub reserved_mib: u64,
    /// Set when use outside Ravel keeps it out of scheduling.
    pub foreign_busy: Option<String>,
    pub processes: Vec<GpuProcessView>,
    /// What looks wrong on it now: a job's process on it that was not given it, a job holding
    /// it idle.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// The node it is on (a controller's GPUs; absent for a local daemon's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct GpusResponse {
    /// Which probe produced the inventory: nvml, nvidia-smi, fake, none.
    pub probe: String,
    pub gpus: Vec<GpuView>,
    /// Set when the last probe failed; the inventory shown is the last good one.
    pub probe_error: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct StatusResponse {
    pub version: String,
    pub api: String,
    pub pid: u32,
    pub started_at: i64,
    pub home: String,
    pub db_path: String,
    pub node: String,
    pub cpus_total: u32,
    pub cpus_used: u32,
    pub gpus_total: u32,
    pub gpus_allocated: u32,
    pub gpu_probe: String,
    pub queued: u64,
    pub running: u64,
    /// `user` (one daemon per user) or `system` (a shared box's daemon; jobs run as their submitters).
    #[serde(default)]
    pub mode: String,
    /// The socket this daemon listens on.
    #[serde(default)]
    pub socket: String,
    /// Who the daemon sees asking (from the socket's peer credentials), and whether they are an admin.
    #[serde(default)]
    pub you: String,
    #[serde(default)]
    pub you_are_admin: bool,
    /// How jobs are contained: `cgroup v1`, `cgroup v2`, or why not.
    #[serde(default)]
    pub cgroups: String,
    /// The daemon's clock when it answered (UTC ms), for `ravel doctor`'s skew check.
    #[serde(default)]
    pub now: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, utoipa::ToSchema)]
pub struct ShutdownRequest {
    /// Terminate running jobs first (otherwise they keep running and are re-adopted on restart).
    #[serde(default)]
    pub kill_jobs: bool,
}

/// Every error the API returns.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code: `bad_request`, `not_found`, `conflict`, `forbidden`, `limit`, `too_large`,
    /// `unavailable`, `internal`.
    pub code: String,
    /// One line for a person: what failed, with which value, and what to do.
    pub error: String,
}

// ---- Cluster mode: tokens, nodes, and the agent protocol ----

/// What a bearer token may do. `admin`: everything users may, plus tokens, nodes and shutdown;
/// `user`: jobs (their own) and read-only views; `agent`: only the agent endpoints.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    User,
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
            Role::Agent => "agent",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "user" => Ok(Role::User),
            "agent" => Ok(Role::Agent),
            _ => Err(format!("unknown role {s:?}: use admin, user or agent")),
        }
    }
}

/// `POST /v1/tokens` (admin).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenCreateRequest {
    pub role: Role,
    /// Who the token is for: a user token's jobs belong to this name; an agent token's node
    /// is named by the agent itself. Default: the role's name.
    #[serde(default)]
    pub name: Option<String>,
    /// Valid for this long from now (ms). None: until revoked.
    #[serde(default)]
    pub expires_in_ms: Option<u64>,
}

/// A token as listed (`GET /v1/tokens`): never the secret, which is only in [`TokenCreated`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct TokenInfo {
    pub id: u64,
    pub name: String,
    pub role: Role,
    pub created_at: i64,
    #[serde(default)]
    pub expires_at: Option<i64>,
    #[serde(default)]
    pub revoked_at: Option<i64>,
}

/// The answer to `POST /v1/tokens`: the secret is shown this once (only its SHA-256 is kept).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct TokenCreated {
    #[serde(flatten)]
    pub info: TokenInfo,
    pub token: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct TokensResponse {
    pub tokens: Vec<TokenInfo>,
}

/// A node as `ravel nodes` shows it (`GET /v1/nodes`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct NodeInfo {
    pub name: String,
    /// `ready`, `draining` (no new jobs; running ones finish), `drained` (draining, none left),
    /// `cordoned` (no new jobs), `lost` (no contact for the node timeout), `unknown` (not heard
    /// from since the controller started), `local` (the local daemon's own node).
    pub state: String,
    pub gpus_total: u32,
    pub gpus_free: u32,
    pub cpus_total: u32,
    pub cpus_used: u32,
    /// Jobs holding an attempt on the node.
    pub jobs: u32,
    /// When the node's agent was last heard from (UTC ms); None: not since the controller started.
    #[serde(default)]
    pub last_seen: Option<i64>,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub max_jobs: Option<u32>,
    /// The node's current lease epoch (bumped each time it is declared lost or re-registers).
    #[serde(default)]
    pub epoch: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct NodesResponse {
    pub nodes: Vec<NodeInfo>,
}

/// `POST /v1/nodes/{name}/{drain|undrain|cordon}` and `DELETE /v1/nodes/{name}` answer with the node
/// as it is now (a removed node: as it was).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct NodeResponse {
    pub node: NodeInfo,
}

/// One GPU as an agent reports it: the probe's reading, with the processes that are the
/// node's own jobs left out and the memory the others use summed up.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentGpu {
    pub index: u32,
    pub name: String,
    #[serde(default)]
    pub uuid: Option<String>,
    pub memory_total_mib: u64,
    pub memory_used_mib: u64,
    pub utilization_pct: u32,
    /// Memory held by processes that are not Ravel jobs of this node.
    pub foreign_used_mib: u64,
    /// Foreign processes: (pid, MiB).
    #[serde(default)]
    #[schema(value_type = Vec<Vec<i64>>)]
    pub foreign_processes: Vec<(u32, u64)>,
}

/// What an agent observed of one attempt.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ObservedAttempt {
    pub job: JobId,
    pub attempt: u32,
    /// The supervisor, once started: (pid, start time in clock ticks since boot).
    #[serde(default)]
    #[schema(value_type = Option<Vec<i64>>)]
    pub supervisor: Option<(i32, u64)>,
    /// Set once the attempt is over: how it ended. Reported until the controller acknowledges it.
    #[serde(default)]
    pub ended: Option<AttemptEnd>,
}

/// The end of an attempt as the node saw it (from the supervisor's `exit.json`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttemptEnd {
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
    /// Ended by a cancel (SIGTERM from the controller's kill order).
    #[serde(default)]
    pub canceled: bool,
    #[serde(default)]
    pub timed_out: bool,
    #[serde(default)]
    pub oom_killed: bool,
    /// Killed by the node itself because it lost its lease (no contact with the controller).
    #[serde(default)]
    pub fenced: bool,
    /// The supervisor vanished without writing an exit status.
    #[serde(default)]
    pub vanished: bool,
    /// The supervisor ended before starting the job (nothing ran).
    #[serde(default)]
    pub never_started: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub started_at: Option<i64>,
}

/// `POST /v1/agent/sync` (agent token): the node's inventory and what it runs; the answer is
/// what the controller wants it to run. Long-polls up to `wait_ms` when nothing changed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentSyncRequest {
    pub name: String,
    /// The lease epoch the controller gave this agent; 0 when it has none (first start, or
    /// after it was fenced): the controller then gives it a new one, and any attempt still
    /// believed to run on the node from an earlier session is lost.
    pub epoch: u64,
    pub version: String,
    pub cpus: u32,
    #[serde(default)]
    pub memory_mib: u64,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub max_jobs: Option<u32>,
    pub gpus: Vec<AgentGpu>,
    /// Set when the GPU probe failed (the GPUs are then the last good reading).
    #[serde(default)]
    pub probe_error: Option<String>,
    /// Every attempt the node runs or has ended and not yet had acknowledged.
    pub attempts: Vec<ObservedAttempt>,
    /// Longest the controller may hold the request when it has nothing new to say.
    #[serde(default)]
    pub wait_ms: u64,
}

/// One attempt the controller wants on the node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct DesiredAttempt {
    pub job: JobId,
    pub attempt: u32,
    /// What to run, sent until the agent reports the attempt (a launch order is idempotent).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub launch: Option<serde_json::Value>,
    /// Stop it (a cancel): SIGTERM to its group, SIGKILL after the grace period.
    #[serde(default)]
    pub kill: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct AgentSyncResponse {
    pub epoch: u64,
    /// Every attempt the node should run. Anything the node runs that is not here is killed.
    pub desired: Vec<DesiredAttempt>,
    /// Ended attempts the controller has recorded: the agent may forget them.
    #[serde(default)]
    #[schema(value_type = Vec<Vec<i64>>)]
    pub acked: Vec<(JobId, u32)>,
    /// The node timeout: an agent out of contact for (a fraction of) it kills its jobs.
    pub node_timeout_ms: u64,
}

/// Query of `POST /v1/agent/logs` (body: the bytes): a piece of an attempt's output at `offset`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AgentLogsQuery {
    pub name: String,
    pub epoch: u64,
    pub job: JobId,
    pub attempt: u32,
    pub stream: LogStream,
    pub offset: u64,
}
