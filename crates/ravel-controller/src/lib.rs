//! The Ravel controller: the API server, the scheduler loop and the bookkeeping between the
//! store (what must survive) and the agent (what is running).
//!
//! In local mode the daemon is this controller with one in-process [`LocalAgent`]. Entry point:
//! [`Controller::start`] then [`serve`] on a listener until the shutdown future resolves.

mod admission;
mod api;
mod auth;
mod clock;
pub mod cluster;
mod display;
mod events;
mod feed;
mod gputruth;
mod limits;
mod metrics;
mod notify;
mod recovery;
mod runjson;
mod scheduler;
mod state;
pub mod tls;
mod tokens;
mod ui;

use ravel_agent::{AgentEvent, LocalAgent};
use ravel_gpu::Thresholds;
use ravel_store::Store;
use state::State;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};

pub use auth::group_id;
pub use clock::now_ms;
pub use display::{timestamp, truncate};
pub use notify::Rule as AlertRule;

/// Everything the controller is told at start; clap flags in the binary turn into this.
#[derive(Clone, Debug)]
pub struct Config {
    pub home: PathBuf,
    pub db_path: PathBuf,
    pub node_name: String,
    /// CPU slots of the node.
    pub cpus: u32,
    pub thresholds: Thresholds,
    /// Time a canceled job gets between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// How often GPUs are re-probed (the safety-net pass).
    pub probe_interval: Duration,
    /// The binary that runs supervisors (`ravel __supervise`).
    pub exe: PathBuf,
    /// Full durability: run-dir records are fsynced too (the store has its own setting).
    pub durable: bool,
    /// Memory tags for `--memory-tag` (`RAVEL_MEMORY_LIMITS`): (tag, MiB).
    pub memory_limits: Vec<(String, u64)>,
    /// Fair-share weights per user (default 1.0).
    pub fair_share_weights: Vec<(String, f64)>,
    /// Half-life of recorded GPU usage for fair share.
    pub fair_share_half_life: Duration,
    /// Crash-test hook: abort the process at this named point (`after_allocate`, `after_launch`).
    /// Set from `RAVEL_FAILPOINT` by the daemon; tests use it to prove recovery from each point.
    pub failpoint: Option<String>,
    /// A shared box's daemon (root): every job runs as its submitter, in its own cgroup.
    pub system: bool,
    /// The socket the API is served on (shown by `ravel daemon status`).
    pub socket: PathBuf,
    /// Members of this group are admins (besides root and the daemon's own user).
    pub admin_group: Option<String>,
    /// Non-admins see only their own jobs.
    pub private_queue: bool,
    /// System mode: root may submit jobs (refused by default).
    pub allow_root_jobs: bool,
    /// Per-user limits, read at start and rewritten by `ravel admin limits`. None: kept in memory.
    pub limits_file: Option<PathBuf>,
    /// What the host lets jobs be contained in.
    pub cgroups: ravel_exec::cgroup::CgroupSupport,
    /// A GPU a running job holds at 0% utilization for this long is flagged. None: never.
    pub idle_gpu_after: Option<Duration>,
    /// Webhooks every notification goes to (`--webhook`).
    pub webhooks: Vec<String>,
    /// Daemon-wide alert rules (`--alert`).
    pub alerts: Vec<notify::Rule>,
    /// Cluster mode (`ravel controller`): jobs run on agents' nodes, none on this host.
    pub cluster: Option<cluster::ClusterConfig>,
}

impl Config {
    pub fn runs_dir(&self) -> PathBuf {
        self.home.join("runs")
    }

    /// Where job `id`'s attempts go: `runs/<id/1000>k/<id>/<attempt>`. `runs/` spreads its
    /// subdirectories over the disk (`spread_subdirectories`), which on ext4 costs a scan of every
    /// block group per directory made in it; a group of a thousand jobs pays it once, and each
    /// job's directories are then made beside their group's (ARCHITECTURE.md, "Run dirs").
    pub fn run_dir_template(&self, id: ravel_core::JobId) -> PathBuf {
        self.runs_dir().join(format!("{}k", id / 1000)).join(id.to_string()).join("{attempt}")
    }
}

/// Shared by the API handlers, the scheduler loop and the event loop.
pub struct Controller {
    pub(crate) cfg: Config,
    pub(crate) store: Arc<dyn Store>,
    /// The local daemon's own agent; a controller of agents has none.
    pub(crate) agent: Option<LocalAgent>,
    /// This daemon's part of its attempts' cgroup names.
    pub(crate) instance: String,
    pub(crate) tokens: tokens::Tokens,
    pub(crate) state: Mutex<State>,
    /// Wakes the scheduler loop (submit, exit, cancel).
    pub(crate) wake: Notify,
    /// Bumped whenever a job reaches a terminal state; `wait` long-polls on it.
    pub(crate) finished: watch::Sender<u64>,
    /// Set when a shutdown was asked for through the API.
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) started_at: i64,
    pub(crate) probe_kind: &'static str,
    /// User names by uid (the passwd file is read once per uid).
    pub(crate) names: Mutex<std::collections::HashMap<u32, String>>,
    /// The daemon's own effective uid: its user is an admin, and owns jobs recorded without one.
    pub(crate) own_uid: u32,
    pub(crate) admin_gid: Option<u32>,
    /// Serialises changes of the limits (and their file).
    pub(crate) limits_write: tokio::sync::Mutex<()>,
    pub(crate) metrics: metrics::Metrics,
    /// Every change of a job, for `GET /v1/events`.
    pub(crate) feed: Arc<feed::Feed>,
    /// The web UI's listener and sessions (opened by `ravel ui`).
    pub(crate) ui: ui::Ui,
    pub(crate) notifier: Arc<notify::Notifier>,
    /// When the scheduler loop last went round (it does at least every `probe_interval`).
    pub(crate) scheduler_tick: Mutex<std::time::Instant>,
}

impl Controller {
    /// Opens the controller over `store`: re-adopts attempts left by an earlier run, loads the
    /// queue, and starts the scheduler and event loops.
    pub async fn start(
        cfg: Config,
        store: Arc<dyn Store>,
        probe: Box<dyn ravel_gpu::GpuProbe>,
    ) -> Result<Arc<Controller>, String> {
        let (tx, rx) = mpsc::unbounded_channel::<AgentEvent>();
        let probe_kind = probe.kind();
        let admin_gid = match &cfg.admin_group {
            Some(g) => Some(auth::group_id(g).ok_or_else(|| format!("--admin-group: no group {g:?} here"))?),
            None => None,
        };
        let limits = limits::load(cfg.limits_file.as_deref())?;
        let instance = ravel_agent::instance_of(&cfg.home);
        let agent = cfg.cluster.is_none().then(|| LocalAgent::new(cfg.exe.clone(), instance.clone(), probe, tx));
        let nodes = match &cfg.cluster {
            None => vec![state::NodeState::local(cfg.node_name.clone(), cfg.cpus)],
            Some(_) => cluster::nodes_from(store.nodes().await.map_err(|e| format!("cannot read the nodes: {e}"))?),
        };
        std::fs::create_dir_all(cfg.runs_dir())
            .map_err(|e| format!("cannot create {}: {e}", cfg.runs_dir().display()))?;
        ravel_exec::spread_subdirectories(&cfg.runs_dir());
        // Event ids start at the clock in µs: they keep increasing across restarts.
        let start_id =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_micros() as u64);
        let feed = Arc::new(feed::Feed::new(start_id));
        let store: Arc<dyn Store> = Arc::new(feed::FeedStore::new(store, feed.clone()));
        let (notifier, notes) = notify::Notifier::start(Some(cfg.home.join("notifications.log")));
        let mut state = State::new(nodes);
        state.users.limits_cfg = limits;
        let ctl = Arc::new(Controller {
            state: Mutex::new(state),
            cfg,
            store,
            agent,
            instance,
            tokens: Default::default(),
            wake: Notify::new(),
            finished: watch::channel(0).0,
            shutdown: watch::channel(false).0,
            started_at: now_ms(),
            probe_kind,
            names: Mutex::new(Default::default()),
            // SAFETY: geteuid cannot fail.
            own_uid: unsafe { libc::geteuid() },
            admin_gid,
            limits_write: tokio::sync::Mutex::new(()),
            metrics: Default::default(),
            feed,
            ui: Default::default(),
            notifier,
            scheduler_tick: Mutex::new(std::time::Instant::now()),
        });
        scheduler::probe_now(&ctl).await;
        if ctl.agent.is_some() {
            ctl.register_node().await;
        }
        recovery::recover(&ctl).await?;
        // The first attempt need not wait for a supervisor to start.
        if let Some(agent) = &ctl.agent {
            agent.start_standby();
        }
        if ctl.cfg.cluster.is_some() {
            tokio::spawn(cluster::monitor(ctl.clone()));
        }
        tokio::spawn(events::run(ctl.clone(), rx));
        tokio::spawn(notify::run(ctl.clone(), notes));
        tokio::spawn(scheduler::run(ctl.clone()));
        Ok(ctl)
    }

    /// Starts a shutdown: no new work is taken and long polls answer at once.
    pub fn request_shutdown(&self) {
        self.lock().accepting = false;
        self.shutdown.send_replace(true);
    }

    /// Resolves when a shutdown was requested (through the API or `request_shutdown`).
    pub async fn shutdown_requested(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Stops a running attempt: the local agent signals its supervisor; an agent's node is told
    /// with its next sync (the job's `cancel_requested` is already set).
    pub(crate) fn stop_attempt(&self, id: ravel_core::JobId, supervisor: Option<((i32, u64), u32)>) {
        let remote = {
            let st = self.lock();
            st.active
                .get(&id)
                .and_then(|a| st.nodes.get(a.node))
                .and_then(|n| n.remote.as_ref().map(|r| r.wake.clone()))
        };
        match (remote, &self.agent, supervisor) {
            (Some(wake), _, _) => wake.notify_one(),
            (None, Some(agent), Some(((pid, start), attempt))) => {
                agent.stop(pid, start, id, attempt);
            }
            _ => {}
        }
    }

    /// Records this node and its GPUs in the store.
    async fn register_node(&self) {
        let node = {
            let st = self.lock();
            ravel_store::NodeRecord {
                name: self.cfg.node_name.clone(),
                cpus: st.nodes[0].cpus_total,
                gpus: st.nodes[0].gpu_records(),
                ..Default::default()
            }
        };
        if let Err(e) = self.store.register_node(node, now_ms()).await {
            tracing::warn!(error = %e, "cannot record the node");
        }
    }

    /// The interned id of a user (by name; `None` is the anonymous user `-`).
    pub(crate) fn user_id(&self, name: Option<&str>) -> ravel_core::policy::UserId {
        let weights = &self.cfg.fair_share_weights;
        self.lock().users.id(name, |n| weights.iter().find(|(u, _)| u == n).map(|(_, w)| *w).unwrap_or(1.0))
    }

    /// A job reached a final state (on any path: an attempt's end, a cancel, a failed
    /// dependency): count it and send its notifications.
    pub(crate) fn job_final(&self, job: &ravel_core::Job) {
        self.metrics.finished(job.state);
        self.notify_end(job);
    }

    /// The daemon's mode, as `ravel daemon status` shows it.
    pub(crate) fn mode(&self) -> &'static str {
        match (self.cfg.cluster.is_some(), self.cfg.system) {
            (true, _) => "controller",
            (false, true) => "system",
            (false, false) => "user",
        }
    }

    pub(crate) fn half_life_ms(&self) -> f64 {
        self.cfg.fair_share_half_life.as_millis() as f64
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Serves the API on `listener` until `shutdown` resolves; in-flight requests finish first.
pub async fn serve(
    ctl: Arc<Controller>,
    listener: tokio::net::UnixListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = api::router(ctl);
    let served = axum::serve(listener, app.into_make_service_with_connect_info::<auth::Peer>())
        .with_graceful_shutdown(shutdown)
        .await;
    flush_behind().await;
    served
}

/// What the daemon writes behind (run.json) is written before it exits.
async fn flush_behind() {
    let _ = tokio::task::spawn_blocking(runjson::flush).await;
}

/// Serves the API over HTTPS (cluster mode): every request needs a bearer token; bodies are
/// capped at 1 MiB.
pub async fn serve_tls(
    ctl: Arc<Controller>,
    listener: tls::TlsListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = api::tls_router(ctl);
    let served = axum::serve(listener, app.into_make_service_with_connect_info::<tls::RemoteAddr>())
        .with_graceful_shutdown(shutdown)
        .await;
    flush_behind().await;
    served
}
