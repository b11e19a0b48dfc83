//! `ravel controller` and `ravel agent`: the two halves of cluster mode, each run in the
//! foreground (systemd units in deploy/ keep them running).

use crate::cli::{AgentArgs, ControllerArgs};
use crate::daemon::{flock, hostname, log_level, set_mode};
use crate::home::state_dir;
use anyhow::{Context, anyhow, bail};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Holds `<home>/<name>.lock` for the process's life: one controller (or agent) per home.
fn lock_home(home: &std::path::Path, name: &str) -> anyhow::Result<std::fs::File> {
    let path = home.join(format!("{name}.lock"));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if !flock(&f, true, false) {
        bail!("another ravel {name} already uses {} (see {})", home.display(), path.display());
    }
    Ok(f)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

pub fn controller(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    let home = state_dir(args.home.clone(), "ravel-controller")?;
    std::fs::create_dir_all(&home).with_context(|| format!("cannot create {}", home.display()))?;
    set_mode(&home, 0o700)?;
    if home.join("ravel.pid").exists() && crate::daemon::running_pid(&crate::home::Home::own(home.clone())).is_some() {
        bail!("{} is a running local daemon's home: give the controller its own (--home)", home.display());
    }
    let _lock = lock_home(&home, "controller")?;
    let db_path = match args.db.as_deref() {
        None => home.join("ravel.db"),
        Some(url) => match url.strip_prefix("sqlite://") {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ => bail!("--db {url:?}: use sqlite:///path/to/ravel.db (PostgreSQL is not supported yet)"),
        },
    };
    let node_timeout = Duration::from_millis(
        ravel_core::units::parse_duration_ms(&args.node_timeout).map_err(|e| anyhow!("--node-timeout: {e}"))?,
    );
    if node_timeout < Duration::from_secs(1) {
        bail!("--node-timeout must be at least 1s");
    }
    let source = match (&args.tls_cert, &args.tls_key, args.tls_self_signed) {
        (Some(cert), Some(key), _) => ravel_controller::tls::TlsSource::Files { cert: cert.clone(), key: key.clone() },
        (None, None, true) => ravel_controller::tls::TlsSource::SelfSigned { extra_names: args.tls_san.clone() },
        _ => bail!("give --tls-cert and --tls-key, or --tls-self-signed: the controller speaks HTTPS only"),
    };
    let tls = ravel_controller::tls::load(&source, &home).map_err(|e| anyhow!(e))?;
    tracing_subscriber::fmt().with_max_level(log_level()).with_ansi(false).with_writer(std::io::stderr).init();
    let rt = runtime()?;
    rt.block_on(async move {
        let tcp = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = tcp.local_addr()?;
        {
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&db_path);
        }
        let store = ravel_store::SqliteStore::open(&db_path, ravel_store::Durability::Normal)
            .map_err(|e| anyhow!("{e}"))?
            .batched_only();
        let cfg = ravel_controller::Config {
            home: home.clone(),
            db_path: db_path.clone(),
            node_name: hostname(),
            cpus: 0,
            thresholds: ravel_gpu::Thresholds::default(),
            kill_grace: Duration::from_secs_f64(args.kill_grace.unwrap_or(10.0).max(0.0)),
            probe_interval: Duration::from_secs(1),
            exe: std::env::current_exe().context("cannot find the ravel binary")?,
            durable: false,
            failpoint: None,
            memory_limits: match std::env::var("RAVEL_MEMORY_LIMITS") {
                Ok(v) if !v.is_empty() => {
                    ravel_core::units::parse_memory_limits(&v).map_err(|e| anyhow!("RAVEL_MEMORY_LIMITS: {e}"))?
                }
                _ => vec![],
            },
            fair_share_weights: vec![],
            fair_share_half_life: Duration::from_secs(24 * 3600),
            system: false,
            socket: PathBuf::from(format!("https://{addr}")),
            admin_group: None,
            private_queue: false,
            allow_root_jobs: true,
            limits_file: Some(home.join("limits.json")),
            cgroups: ravel_exec::cgroup::detect(),
            idle_gpu_after: None,
            webhooks: vec![],
            alerts: vec![],
            cluster: Some(ravel_controller::cluster::ClusterConfig {
                node_timeout,
                spread: args.placement == crate::cli::PlacementArg::Spread,
            }),
        };
        let ctl = ravel_controller::Controller::start(cfg, Arc::new(store), Box::new(ravel_gpu::NoGpus))
            .await
            .map_err(|e| anyhow!(e))?;
        let admin = std::env::var("RAVEL_ADMIN_TOKEN").ok();
        if let Some(secret) = ctl.init_tokens(admin).await.map_err(|e| anyhow!(e))? {
            println!("admin token (shown once; keep it): {secret}");
        }
        println!("listening on https://{addr}");
        println!("certificate {} fingerprint SHA256 {}", tls.cert_path.display(), tls.fingerprint);
        use std::io::Write;
        let _ = std::io::stdout().flush();
        tracing::info!(%addr, "ravel controller ready");
        let listener = ravel_controller::tls::TlsListener::new(tcp, tls.config.clone())?;
        let stop = {
            let ctl = ctl.clone();
            async move {
                tokio::select! {
                    _ = stop_signal() => tracing::info!("stopping; jobs keep running on their nodes"),
                    _ = ctl.shutdown_requested() => tracing::info!("shutdown requested"),
                }
                ctl.request_shutdown();
            }
        };
        ravel_controller::serve_tls(ctl, listener, stop).await?;
        tracing::info!("ravel controller stopped");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn agent(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let home = state_dir(args.home.clone(), "ravel-agent")?;
    std::fs::create_dir_all(&home).with_context(|| format!("cannot create {}", home.display()))?;
    set_mode(&home, 0o700)?;
    let _lock = lock_home(&home, "agent")?;
    let token = crate::target::read_token_file(&args.token_file)?;
    let trust = match (&args.fingerprint, &args.ca_cert) {
        (Some(f), _) => ravel_client::tls::Trust::Fingerprint(
            ravel_client::tls::normalize_fingerprint(f).map_err(|e| anyhow!("--fingerprint: {e}"))?,
        ),
        (None, Some(ca)) => ravel_client::tls::Trust::CaFile(ca.clone()),
        (None, None) => bail!("give --fingerprint (as `ravel controller` prints it) or --ca-cert"),
    };
    let client = ravel_client::Client::remote(&args.controller, Some(token), trust).map_err(|e| anyhow!("{e}"))?;
    let name = args.name.clone().unwrap_or_else(hostname);
    let cpus = args.cpus.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1));
    if cpus == 0 || args.max_jobs == Some(0) {
        bail!("--cpus and --max-jobs must be at least 1");
    }
    let cfg = ravel_agent::remote::AgentConfig {
        name,
        home: home.clone(),
        client,
        cpus,
        memory_mib: memory_mib(),
        tags: args.tags.iter().filter(|t| !t.is_empty()).cloned().collect(),
        max_jobs: args.max_jobs,
        exe: std::env::current_exe().context("cannot find the ravel binary")?,
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    tracing_subscriber::fmt().with_max_level(log_level()).with_ansi(false).with_writer(std::io::stderr).init();
    tracing::info!(node = %cfg.name, controller = %args.controller, "ravel agent starting");
    let rt = runtime()?;
    rt.block_on(ravel_agent::remote::run(cfg, ravel_gpu::detect(), stop_signal())).map_err(|e| anyhow!(e))?;
    Ok(ExitCode::SUCCESS)
}

fn memory_mib() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}
