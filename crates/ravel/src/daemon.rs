//! The local daemon's life: start (detached or in the foreground), stop, status, restart, and
//! the auto-start that `ravel run` does when no daemon answers.
//!
//! One daemon per `$RAVEL_HOME` is guaranteed by an exclusive `flock` on the pid file, held
//! for the daemon's whole life: the kernel drops it when the process dies, so a stale pid file
//! (or socket) of a crashed daemon is recognised and replaced, never trusted.

use crate::cli::{DaemonOpts, DurabilityArg};
use crate::home::Home;
use anyhow::{Context, anyhow, bail};
use ravel_proto::{ShutdownRequest, StatusResponse};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The options a daemon runs with, saved in `daemon.json`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Saved {
    pub cpus: Option<u32>,
    pub gpu_util_threshold: Option<u32>,
    pub gpu_mem_threshold: Option<u32>,
    pub kill_grace: Option<f64>,
    pub durability: Option<DurabilityArg>,
    #[serde(default)]
    pub memory_limits: Option<String>,
    #[serde(default)]
    pub fair_share_weights: Option<String>,
    #[serde(default)]
    pub fair_share_half_life: Option<String>,
    #[serde(default)]
    pub admin_group: Option<String>,
    #[serde(default)]
    pub socket_group: Option<String>,
    #[serde(default)]
    pub private_queue: bool,
    #[serde(default)]
    pub allow_root_jobs: bool,
    #[serde(default)]
    pub idle_gpu_after: Option<String>,
    #[serde(default)]
    pub webhooks: Vec<String>,
    #[serde(default)]
    pub alerts: Vec<String>,
}

type Policy = (Vec<(String, u64)>, Vec<(String, f64)>, Duration);

impl Saved {
    /// Memory tags, fair-share weights and half-life, checked.
    fn policy(&self) -> anyhow::Result<Policy> {
        let limits = match &self.memory_limits {
            Some(s) => ravel_core::units::parse_memory_limits(s).map_err(|e| anyhow!("--memory-limits: {e}"))?,
            None => vec![],
        };
        let mut weights = vec![];
        for part in self.fair_share_weights.iter().flat_map(|s| s.split(',')).map(str::trim).filter(|p| !p.is_empty()) {
            let (user, w) =
                part.split_once('=').ok_or_else(|| anyhow!("--fair-share-weights: {part:?} is not USER=WEIGHT"))?;
            let w: f64 = w
                .trim()
                .parse()
                .ok()
                .filter(|w: &f64| w.is_finite() && *w > 0.0)
                .ok_or_else(|| anyhow!("--fair-share-weights: the weight of {user} must be a number above 0"))?;
            weights.push((user.trim().to_string(), w));
        }
        let half_life = match &self.fair_share_half_life {
            Some(s) => ravel_core::units::parse_duration_ms(s).map_err(|e| anyhow!("--fair-share-half-life: {e}"))?,
            None => 24 * 3_600_000,
        };
        Ok((limits, weights, Duration::from_millis(half_life.max(1))))
    }

    fn load(home: &Home) -> Saved {
        std::fs::read(home.daemon_config()).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    /// Flags given now win over the saved ones.
    fn merge(self, o: &DaemonOpts) -> Saved {
        Saved {
            cpus: o.cpus.or(self.cpus),
            gpu_util_threshold: o.gpu_util_threshold.or(self.gpu_util_threshold),
            gpu_mem_threshold: o.gpu_mem_threshold.or(self.gpu_mem_threshold),
            kill_grace: o.kill_grace.or(self.kill_grace),
            durability: o.durability.or(self.durability),
            memory_limits: o.memory_limits.clone().or(self.memory_limits),
            fair_share_weights: o.fair_share_weights.clone().or(self.fair_share_weights),
            fair_share_half_life: o.fair_share_half_life.clone().or(self.fair_share_half_life),
            admin_group: o.admin_group.clone().or(self.admin_group),
            socket_group: o.socket_group.clone().or(self.socket_group),
            private_queue: o.private_queue || self.private_queue,
            allow_root_jobs: o.allow_root_jobs || self.allow_root_jobs,
            idle_gpu_after: o.idle_gpu_after.clone().or(self.idle_gpu_after),
            webhooks: if o.webhook.is_empty() { self.webhooks } else { o.webhook.clone() },
            alerts: if o.alert.is_empty() { self.alerts } else { o.alert.clone() },
        }
    }

    fn args(&self) -> Vec<String> {
        let mut a = vec![];
        let mut push = |flag: &str, v: Option<String>| {
            if let Some(v) = v {
                a.push(flag.to_string());
                a.push(v);
            }
        };
        push("--cpus", self.cpus.map(|v| v.to_string()));
        push("--gpu-util-threshold", self.gpu_util_threshold.map(|v| v.to_string()));
        push("--gpu-mem-threshold", self.gpu_mem_threshold.map(|v| v.to_string()));
        push("--kill-grace", self.kill_grace.map(|v| v.to_string()));
        push(
            "--durability",
            self.durability.map(|d| if d == DurabilityArg::Full { "full" } else { "normal" }.to_string()),
        );
        push("--memory-limits", self.memory_limits.clone());
        push("--fair-share-weights", self.fair_share_weights.clone());
        push("--fair-share-half-life", self.fair_share_half_life.clone());
        push("--admin-group", self.admin_group.clone());
        push("--socket-group", self.socket_group.clone());
        push("--idle-gpu-after", self.idle_gpu_after.clone());
        if self.private_queue {
            a.push("--private-queue".into());
        }
        if self.allow_root_jobs {
            a.push("--allow-root-jobs".into());
        }
        for w in &self.webhooks {
            a.extend(["--webhook".to_string(), w.clone()]);
        }
        for r in &self.alerts {
            a.extend(["--alert".to_string(), r.clone()]);
        }
        a
    }

    fn alert_rules(&self) -> anyhow::Result<Vec<ravel_controller::AlertRule>> {
        for w in &self.webhooks {
            if !(w.starts_with("http://") || w.starts_with("https://")) {
                bail!("--webhook {w:?} is not an http:// or https:// URL");
            }
        }
        self.alerts.iter().map(|r| ravel_controller::AlertRule::parse(r).map_err(|e| anyhow!(e))).collect()
    }

    /// `--idle-gpu-after`: None = never flag.
    fn idle_gpu_after(&self) -> anyhow::Result<Option<Duration>> {
        let Some(s) = &self.idle_gpu_after else { return Ok(Some(Duration::from_secs(30 * 60))) };
        if s.trim() == "0" {
            return Ok(None);
        }
        let ms = ravel_core::units::parse_duration_ms(s).map_err(|e| anyhow!("--idle-gpu-after: {e}"))?;
        Ok(Some(Duration::from_millis(ms)))
    }
}

/// `flock` on a file; `try_lock` does not wait.
pub(crate) fn flock(f: &File, exclusive: bool, wait: bool) -> bool {
    let mut op = if exclusive { libc::LOCK_EX } else { libc::LOCK_SH };
    if !wait {
        op |= libc::LOCK_NB;
    }
    // SAFETY: flock on a valid open fd.
    unsafe { libc::flock(f.as_raw_fd(), op) == 0 }
}

/// The pid of the daemon holding the pid file's lock, if one is alive.
pub fn running_pid(home: &Home) -> Option<u32> {
    let mut f = File::open(home.pid_file()).ok()?;
    if flock(&f, false, false) {
        // We could lock it: nobody holds it, the file is stale.
        return None;
    }
    let mut s = String::new();
    f.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

pub fn status(home: &Home) -> Option<StatusResponse> {
    home.client().with_timeout(Duration::from_secs(5)).get::<StatusResponse>("/v1/status").ok()
}

/// Starts a detached daemon and waits until it answers. Returns its status.
pub fn start_detached(home: &Home, opts: &DaemonOpts) -> anyhow::Result<StatusResponse> {
    home.ensure()?;
    let saved = Saved::load(home).merge(opts);
    let exe = std::env::current_exe().context("cannot find the ravel binary")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(home.log_file())
        .with_context(|| format!("cannot open {}", home.log_file().display()))?;
    let spawn = || -> anyhow::Result<std::process::Child> {
        let mut cmd = Command::new(&exe);
        cmd.args(["daemon", "start", "--foreground"]).args(saved.args());
        if home.system {
            cmd.arg("--system").env("RAVEL_SYSTEM_HOME", &home.dir).env("RAVEL_SYSTEM_SOCKET", &home.socket);
        } else {
            cmd.env("RAVEL_HOME", &home.dir);
        }
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log.try_clone()?);
        // SAFETY: setsid is async-signal-safe; the child detaches from our terminal and session.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        cmd.spawn().context("cannot start the daemon")
    };
    let mut child = spawn()?;
    // A daemon killed a moment ago may still hold the lock while the kernel tears it down: our
    // child then exits ("already running"), and once the lock is free we start another.
    let mut respawns = 3;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = status(home) {
            // Reap our child if it exited because another daemon won the race.
            let _ = child.try_wait();
            return Ok(s);
        }
        if let Some(code) = child.try_wait()? {
            if let Some(s) = status(home) {
                return Ok(s);
            }
            if running_pid(home).is_some() {
                // Another daemon holds the lock (starting, or dying): wait and see.
            } else if respawns > 0 {
                respawns -= 1;
                child = spawn()?;
            } else {
                bail!(
                    "the daemon exited ({code}) before it answered; see {}:\n{}",
                    home.log_file().display(),
                    log_tail(home)
                );
            }
        }
        if Instant::now() > deadline {
            bail!("the daemon did not answer within 30 s; see {}", home.log_file().display());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn log_tail(home: &Home) -> String {
    let text = std::fs::read_to_string(home.log_file()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

/// Makes sure a daemon answers, starting one if needed. Many callers at once start one daemon.
pub fn ensure_running(home: &Home) -> anyhow::Result<()> {
    home.ensure()?;
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(home.start_lock())?;
    flock(&lock, true, true);
    if status(home).is_some() {
        return Ok(());
    }
    start_detached(home, &DaemonOpts::default()).map(|_| ())
}

/// Asks the daemon to stop and waits until its process is gone.
pub fn stop(home: &Home, kill_jobs: bool) -> anyhow::Result<bool> {
    let Some(pid) = running_pid(home) else {
        return Ok(false);
    };
    let client = home.client().with_timeout(Duration::from_secs(120));
    let asked = client.post::<_, serde_json::Value>("/v1/daemon/shutdown", &ShutdownRequest { kill_jobs });
    if let Err(e) = asked {
        // It holds the lock but does not answer: fall back to SIGTERM (also a graceful stop).
        eprintln!("ravel: the daemon did not answer ({e}); sending SIGTERM to pid {pid}");
        if kill_jobs {
            eprintln!("ravel: running jobs were not stopped; cancel them after the next start");
        }
        // SAFETY: plain kill(2).
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while running_pid(home).is_some() {
        if Instant::now() > deadline {
            bail!("the daemon (pid {pid}) is still running after 60 s; see {}", home.log_file().display());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(true)
}

/// Runs the daemon in this process until it is told to stop.
pub fn run_foreground(home: &Home, opts: &DaemonOpts) -> anyhow::Result<()> {
    // SAFETY: geteuid cannot fail.
    if home.system && unsafe { libc::geteuid() } != 0 {
        bail!(
            "the system daemon must run as root (it runs each job as its submitter); use sudo, or run your own daemon without --system"
        );
    }
    if home.system {
        // Files the daemon creates for everyone (run dirs, the socket's dir) get exactly the
        // modes it asks for, whatever umask the service manager left.
        // SAFETY: umask cannot fail.
        unsafe { libc::umask(0o022) };
    }
    home.ensure()?;
    let saved = Saved::load(home).merge(opts);
    // Checked before anything is saved, so a bad value never sticks in daemon.json.
    if saved.cpus == Some(0) {
        bail!("--cpus must be at least 1");
    }
    if let Some(g) = saved.kill_grace.filter(|g| !g.is_finite() || *g < 0.0) {
        bail!("--kill-grace must be a number of seconds >= 0, not {g}");
    }
    saved.policy()?;
    saved.idle_gpu_after()?;
    saved.alert_rules()?;
    let mut pid_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(home.pid_file())
        .with_context(|| format!("cannot open {}", home.pid_file().display()))?;
    if !flock(&pid_file, true, false) {
        let mut s = String::new();
        let _ = pid_file.read_to_string(&mut s);
        bail!("a ravel daemon is already running (pid {}) for {}", s.trim(), home.dir.display());
    }
    pid_file.set_len(0)?;
    pid_file.rewind()?;
    writeln!(pid_file, "{}", std::process::id())?;
    let _ = std::fs::write(home.daemon_config(), serde_json::to_vec_pretty(&saved)?);

    tracing_subscriber::fmt().with_max_level(log_level()).with_ansi(false).with_writer(std::io::stderr).init();

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    // Everything runs on the workers, the accept loop included: a connection it accepts is
    // then served by the same worker, without waking another thread for it.
    let result = rt.block_on(async {
        let (home, saved) = (home.clone(), saved.clone());
        tokio::spawn(async move { serve(&home, &saved).await }).await.unwrap_or_else(|e| Err(anyhow!("{e}")))
    });
    let _ = std::fs::remove_file(&home.socket);
    let _ = std::fs::remove_file(home.pid_file());
    drop(pid_file);
    result
}

pub fn log_level() -> tracing::Level {
    match std::env::var("RAVEL_LOG").unwrap_or_default().to_ascii_lowercase().as_str() {
        "trace" => tracing::Level::TRACE,
        "debug" => tracing::Level::DEBUG,
        "warn" => tracing::Level::WARN,
        "error" => tracing::Level::ERROR,
        _ => tracing::Level::INFO,
    }
}

async fn serve(home: &Home, saved: &Saved) -> anyhow::Result<()> {
    let cpus = saved.cpus.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1));
    let durability = match saved.durability {
        Some(DurabilityArg::Full) => ravel_store::Durability::Full,
        _ => ravel_store::Durability::Normal,
    };
    let defaults = ravel_gpu::Thresholds::default();
    let policy = saved.policy()?;
    let cfg = ravel_controller::Config {
        home: home.dir.clone(),
        db_path: home.db(),
        node_name: hostname(),
        cpus,
        thresholds: ravel_gpu::Thresholds {
            util_pct: saved.gpu_util_threshold.unwrap_or(defaults.util_pct),
            mem_pct: saved.gpu_mem_threshold.unwrap_or(defaults.mem_pct),
        },
        kill_grace: Duration::from_secs_f64(saved.kill_grace.unwrap_or(10.0).max(0.0)),
        probe_interval: Duration::from_secs(1),
        exe: std::env::current_exe().context("cannot find the ravel binary")?,
        durable: durability == ravel_store::Durability::Full,
        failpoint: std::env::var("RAVEL_FAILPOINT").ok().filter(|f| !f.is_empty()),
        memory_limits: policy.0,
        fair_share_weights: policy.1,
        fair_share_half_life: policy.2,
        system: home.system,
        socket: home.socket.clone(),
        admin_group: saved.admin_group.clone(),
        private_queue: saved.private_queue,
        allow_root_jobs: saved.allow_root_jobs,
        limits_file: Some(home.limits_file()),
        cgroups: ravel_exec::cgroup::detect(),
        idle_gpu_after: saved.idle_gpu_after()?,
        webhooks: saved.webhooks.clone(),
        alerts: saved.alert_rules()?,
        cluster: None,
    };
    match &cfg.cgroups {
        ravel_exec::cgroup::CgroupSupport::Unavailable(why) => tracing::warn!(
            "jobs run without cgroups ({why}): --mem is refused{}",
            if home.system { ", and jobs are not contained" } else { "" }
        ),
        c => tracing::info!(cgroups = ?c, "jobs get their own cgroups"),
    }
    // Bind first: if the socket cannot be had, fail before any job is touched. Clients that
    // connect during recovery wait in the backlog until the API serves.
    let socket = home.socket.clone();
    // The lock is ours, so any socket file left here belongs to a dead daemon.
    let _ = std::fs::remove_file(&socket);
    let listener =
        tokio::net::UnixListener::bind(&socket).with_context(|| format!("cannot listen on {}", socket.display()))?;
    // A user's daemon is theirs alone. The system daemon is for everyone (or one group): who
    // asks is told by the kernel on each connection, so the socket itself need not be private.
    match (home.system, &saved.socket_group) {
        (false, _) => set_mode(&socket, 0o600)?,
        (true, None) => set_mode(&socket, 0o666)?,
        (true, Some(group)) => {
            let gid =
                ravel_controller::group_id(group).ok_or_else(|| anyhow!("--socket-group: no group {group:?} here"))?;
            let c = std::ffi::CString::new(socket.as_os_str().as_encoded_bytes())?;
            // SAFETY: chown on a NUL-terminated path we own; -1 keeps the owner.
            if unsafe { libc::chown(c.as_ptr(), u32::MAX, gid) } != 0 {
                bail!("cannot give {} to group {group}: {}", socket.display(), std::io::Error::last_os_error());
            }
            set_mode(&socket, 0o660)?;
        }
    }

    // Jobs' environments are stored in the database: keep it to the daemon's user. SQLite gives
    // its -wal and -shm files the database file's mode, so the file is made 0600 before SQLite
    // first opens it (the system daemon's home is readable by everyone).
    {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&cfg.db_path);
        for suffix in ["", "-wal", "-shm"] {
            let mut p = cfg.db_path.clone().into_os_string();
            p.push(suffix);
            let _ = set_mode(Path::new(&p), 0o600);
        }
    }
    let store = ravel_store::SqliteStore::open(&cfg.db_path, durability).map_err(|e| anyhow!("{e}"))?;
    let probe = ravel_gpu::detect();
    let runs = cfg.runs_dir();
    let ctl = ravel_controller::Controller::start(cfg, Arc::new(store), probe).await.map_err(|e| anyhow!(e))?;
    // Users reach their own run dirs (each 0700 and theirs) through it on a shared box.
    let _ = set_mode(&runs, if home.system { 0o755 } else { 0o700 });
    tracing::info!(socket = %socket.display(), pid = std::process::id(), "ravel daemon ready");

    let stop = {
        let ctl = ctl.clone();
        async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            let mut int =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).expect("SIGINT handler");
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: stopping; running jobs keep running"),
                _ = int.recv() => tracing::info!("SIGINT: stopping; running jobs keep running"),
                _ = ctl.shutdown_requested() => tracing::info!("shutdown requested"),
            }
            ctl.request_shutdown();
        }
    };
    ravel_controller::serve(ctl, listener, stop).await?;
    tracing::info!("ravel daemon stopped");
    Ok(())
}

pub fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "local".into())
}
