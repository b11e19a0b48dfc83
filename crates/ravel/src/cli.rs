//! Command-line flags. Each subcommand's help says what it does and what it prints.

use clap::{Args, Parser, Subcommand, ValueEnum};
use ravel_core::JobId;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "ravel",
    version,
    about = "Queue commands and run them on free GPUs and CPU slots",
    long_about = "Ravel queues commands from any terminal; a background daemon starts each one as soon as the \
GPUs and CPU slots it needs are free, sets CUDA_VISIBLE_DEVICES, and keeps its logs and exit code.\n\n\
State lives in $RAVEL_HOME (default ~/.local/share/ravel): the database ravel.db, the socket ravel.sock, \
the daemon's log daemon.log, and each attempt's run dir under runs/<group>/<job>/<attempt>/.",
    after_help = "Examples:\n  ravel run --gpus 2 -- python train.py --lr 3e-4\n  ravel queue\n  ravel logs -f 12\n  ravel cancel 12 13"
)]
pub struct Cli {
    #[command(flatten)]
    pub globals: Globals,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand takes.
#[derive(Args, Debug)]
pub struct Globals {
    /// Talk to the controller of this context (`ravel context ls`); `local`: the local daemon
    #[arg(long, global = true, env = "RAVEL_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,
}

impl Cli {
    /// Parses the command line. `ravel run`, the command scripts call in loops, is parsed by a
    /// parser built for it alone (building every subcommand's flags is a fifth of the CLI's
    /// start-up); help, versions and every error go through the whole parser, so what they
    /// print does not depend on the path taken.
    pub fn parse_args() -> Cli {
        let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        Self::parse_run(&args).unwrap_or_else(|| Cli::parse_from(args))
    }

    fn parse_run(args: &[std::ffi::OsString]) -> Option<Cli> {
        use clap::FromArgMatches as _;
        if args.get(1).is_none_or(|a| a != "run") {
            return None;
        }
        let run = RunArgs::augment_args(clap::Command::new("run"));
        let matches = Cli::command_root().subcommand(run).try_get_matches_from(args).ok()?;
        Cli::from_arg_matches(&matches).ok()
    }

    /// The top-level command with its settings and global flags but no subcommands.
    fn command_root() -> clap::Command {
        Globals::augment_args(clap::Command::new("ravel"))
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Queue a command. Prints the job id; starts the daemon if none is running
    Run(RunArgs),
    /// List active jobs and the most recently finished ones
    Queue(QueueArgs),
    /// Show everything about one job: spec, state, pending reason, attempts
    Show {
        id: JobId,
        #[arg(long)]
        json: bool,
    },
    /// Print a job's output (stdout and stderr unless one is chosen)
    Logs(LogsArgs),
    /// Cancel jobs: queued ones are dropped, running ones get SIGTERM then SIGKILL
    Cancel {
        #[arg(required = true)]
        ids: Vec<JobId>,
        #[arg(long)]
        json: bool,
    },
    /// Wait until jobs finish. Exits 0 if all of them succeeded, 1 otherwise
    Wait(WaitArgs),
    /// Hold queued jobs: they wait until released
    Hold {
        #[arg(required = true)]
        ids: Vec<JobId>,
    },
    /// Release held jobs
    Release {
        #[arg(required = true)]
        ids: Vec<JobId>,
    },
    /// Run finished jobs again, each as a new attempt
    Retry {
        #[arg(required = true)]
        ids: Vec<JobId>,
    },
    /// Change the priority of a queued job (higher runs first)
    Priority {
        id: JobId,
        #[arg(allow_negative_numbers = true)]
        priority: i32,
    },
    /// Print job events (every change of state, hold, priority); with -f, follow them live
    #[command(after_help = "Examples:\n  ravel events            every event the daemon keeps (the last hour)\n  \
ravel events -f         new events as they happen\n  ravel events -f --since 1795907327898908   resume after an event id")]
    Events(EventsArgs),
    /// Show the GPUs of this node: memory, utilization, and who uses each
    Gpus {
        #[arg(long)]
        json: bool,
    },
    /// Start, stop or inspect the background daemon
    #[command(subcommand)]
    Daemon(DaemonCommand),
    /// Open the web UI: prints a one-time login link for a browser on this machine
    #[command(
        long_about = "Opens the daemon's web UI on 127.0.0.1 (only) if it is not open yet, and prints a one-time \
login link, valid 5 minutes, that signs your browser in as you. Nothing listens on TCP until this is run."
    )]
    Ui {
        /// Port to listen on when the UI is not open yet (default: any free port)
        #[arg(long)]
        port: Option<u16>,
        #[arg(long)]
        json: bool,
    },
    /// A live terminal dashboard: GPUs, queue with reasons, running and recent jobs; keys to
    /// follow logs, cancel, hold/release and change priority
    Dash,
    /// Check that ravel can work here, with a fix for each problem. Exits 1 if something fails
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// Administer a shared daemon: per-user limits
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Name cluster controllers and choose the one commands talk to
    #[command(subcommand)]
    Context(crate::commands::cluster_cli::ContextCommand),
    /// Create, list and revoke a controller's bearer tokens (admins)
    #[command(subcommand)]
    Token(crate::commands::cluster_cli::TokenCommand),
    /// List a controller's nodes: state, free GPUs, CPU slots in use, jobs, last contact
    Nodes {
        #[arg(long)]
        json: bool,
    },
    /// Drain, undrain, cordon or remove a controller's node (admins)
    #[command(subcommand)]
    Node(crate::commands::cluster_cli::NodeCommand),
    /// Run a cluster controller: the API over HTTPS with bearer tokens; jobs run on agents' nodes
    #[command(
        long_about = "Runs the controller of a cluster in this terminal (use the systemd unit in deploy/ to keep it \
running). It serves the same API as a local daemon over HTTPS, with bearer tokens, and places jobs on the nodes whose \
agents (`ravel agent`) sync with it. Its first start prints a one-time admin token (or takes RAVEL_ADMIN_TOKEN).",
        after_help = "Examples:\n  ravel controller --listen 0.0.0.0:8443 --tls-self-signed\n  \
ravel controller --listen 0.0.0.0:8443 --tls-cert /etc/ravel/cert.pem --tls-key /etc/ravel/key.pem\n\nSee docs/cluster.md."
    )]
    Controller(ControllerArgs),
    /// Run a node's agent: reports its GPUs to a controller and runs the jobs it is given
    #[command(
        after_help = "Example:\n  ravel agent --controller https://ctl:8443 --token-file /etc/ravel/agent.token \\\n    \
--fingerprint AB:CD:... --tags a100,nvlink\n\nSee docs/cluster.md."
    )]
    Agent(AgentArgs),
}

#[derive(Args, Debug)]
pub struct ControllerArgs {
    /// Address to serve HTTPS on
    #[arg(long, default_value = "0.0.0.0:8443", value_name = "ADDR")]
    pub listen: String,
    /// The store: sqlite:///path/to/ravel.db (default: ravel.db in the controller's home)
    #[arg(long, value_name = "URL")]
    pub db: Option<String>,
    /// The controller's state directory (default: $RAVEL_HOME, else ~/.local/share/ravel-controller)
    #[arg(long, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// TLS certificate (PEM); with --tls-key
    #[arg(long, value_name = "FILE", requires = "tls_key", conflicts_with = "tls_self_signed")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM)
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Make (on first start) and keep a self-signed certificate in the home's tls/ dir, and print
    /// its SHA-256 fingerprint for `ravel context add --fingerprint`
    #[arg(long)]
    pub tls_self_signed: bool,
    /// Extra names (DNS or IP) for the self-signed certificate (repeatable)
    #[arg(long, value_name = "NAME")]
    pub tls_san: Vec<String>,
    /// A node silent this long is lost: its jobs end `lost` and are retried elsewhere if they have
    /// retries. Its agent kills its jobs after two thirds of it without contact
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub node_timeout: String,
    /// Time a canceled job gets between SIGTERM and SIGKILL, in seconds
    #[arg(long, value_name = "SECONDS")]
    pub kill_grace: Option<f64>,
    /// Where jobs go among the nodes that fit: pack (the first, keeping whole nodes free for big
    /// jobs) or spread (the one with the most free GPUs)
    #[arg(long, value_enum, default_value = "pack")]
    pub placement: PlacementArg,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlacementArg {
    Pack,
    Spread,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The controller's URL
    #[arg(long, env = "RAVEL_CONTROLLER", value_name = "URL")]
    pub controller: String,
    /// File holding an agent token (`ravel token create --role agent`)
    #[arg(long, value_name = "FILE")]
    pub token_file: PathBuf,
    /// The controller certificate's SHA-256 fingerprint (as `ravel controller` prints it)
    #[arg(long, env = "RAVEL_FINGERPRINT", value_name = "SHA256", conflicts_with = "ca_cert")]
    pub fingerprint: Option<String>,
    /// Trust the controller's certificate through this CA (PEM) instead of a fingerprint
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// This node's name (default: the host name)
    #[arg(long)]
    pub name: Option<String>,
    /// Node tags jobs can ask for (comma-separated)
    #[arg(long, value_delimiter = ',')]
    pub tags: Vec<String>,
    /// CPU slots of this node (default: the number of cores)
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Most jobs at once on this node
    #[arg(long, value_name = "N")]
    pub max_jobs: Option<u32>,
    /// The agent's state directory: run dirs, its lease (default: $RAVEL_HOME, else
    /// ~/.local/share/ravel-agent)
    #[arg(long, value_name = "DIR")]
    pub home: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Show or set per-user limits. Without USER or --default it shows them all
    #[command(
        after_help = "Examples:\n  ravel admin limits\n  ravel admin limits --default --gpus 4 --queued 1000\n  \
ravel admin limits alice --gpus 8\n  ravel admin limits alice --clear"
    )]
    Limits(LimitsArgs),
}

#[derive(Args, Debug)]
pub struct LimitsArgs {
    /// The user whose limits to set (their entry wins over the default, field by field)
    pub user: Option<String>,
    /// Set the default that applies to every user
    #[arg(long, conflicts_with = "user")]
    pub default: bool,
    /// Most GPUs the user's running jobs may hold at once
    #[arg(long, value_name = "N")]
    pub gpus: Option<u32>,
    /// Most jobs the user may have running at once
    #[arg(long, value_name = "N")]
    pub running: Option<u32>,
    /// Most jobs the user may have waiting; further submits are refused
    #[arg(long, value_name = "N")]
    pub queued: Option<u32>,
    /// Remove the user's limits (or the default's) first
    #[arg(long)]
    pub clear: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Number of whole GPUs the job needs
    #[arg(long, default_value_t = 0)]
    pub gpus: u32,
    /// CPU slots the job takes (the node has --cpus slots, default: its core count)
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Higher runs first; equal priorities run in submit order
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// A name to show instead of the command
    #[arg(long)]
    pub name: Option<String>,
    /// Set an environment variable for the job (repeatable). The job also gets your current environment
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory of the job (default: the current directory)
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// Reserve this much memory on each of its GPUs and share them with other such jobs (e.g. 12G)
    #[arg(long, value_name = "SIZE", help_heading = "GPU memory")]
    pub gpu_mem: Option<String>,
    /// Hard limit on the job's memory (e.g. 32G), enforced with a cgroup: past it the job is
    /// killed and recorded failed: out of memory
    #[arg(long, value_name = "SIZE")]
    pub mem: Option<String>,
    /// Notify when the job ends: failure, success or always (to the daemon's webhooks, the job's
    /// --notify-url, and the desktop for your own daemon when notify-send exists)
    #[arg(long, value_name = "WHEN", help_heading = "Failures")]
    pub notify: Option<NotifyArg>,
    /// A webhook (Slack- or Discord-compatible) for this job's notification
    #[arg(long, value_name = "URL", requires = "notify", help_heading = "Failures")]
    pub notify_url: Option<String>,
    /// Reserve the memory of a tag from the daemon's --memory-limits (e.g. small)
    #[arg(long, value_name = "TAG", conflicts_with = "gpu_mem", help_heading = "GPU memory")]
    pub memory_tag: Option<String>,
    /// Cluster: run only on this node (see `ravel nodes`)
    #[arg(long, value_name = "NAME", help_heading = "Cluster")]
    pub node: Option<String>,
    /// Cluster: run only on nodes with all of these tags (comma-separated)
    #[arg(long, value_name = "TAG,...", value_delimiter = ',', help_heading = "Cluster")]
    pub tags: Vec<String>,
    /// Cluster: one rank on each of N nodes, all started together or none (torchrun-style); each
    /// rank gets --gpus GPUs and sees MASTER_ADDR, MASTER_PORT, WORLD_SIZE, NODE_RANK, RAVEL_NODELIST
    #[arg(long, value_name = "N", help_heading = "Cluster")]
    pub nodes: Option<u32>,
    /// Start only after these jobs succeeded (ids, comma-separated or repeated)
    #[arg(long, value_name = "ID,...", value_delimiter = ',', help_heading = "Ordering")]
    pub after: Vec<JobId>,
    /// Start only after these jobs ended, however they ended
    #[arg(long, value_name = "ID,...", value_delimiter = ',', help_heading = "Ordering")]
    pub after_any: Vec<JobId>,
    /// Submit held: it waits until `ravel release`
    #[arg(long, help_heading = "Ordering")]
    pub hold: bool,
    /// Not before this time: `+30m`, or a local time like 2026-12-01T02:00
    #[arg(long, value_name = "WHEN", help_heading = "Ordering")]
    pub begin: Option<String>,
    /// Retry a failed attempt up to N times
    #[arg(long, value_name = "N", default_value_t = 0, help_heading = "Failures")]
    pub retries: u32,
    /// Delay before the first retry, doubled for each further one (default 10s)
    #[arg(long, value_name = "DURATION", help_heading = "Failures")]
    pub retry_delay: Option<String>,
    /// Kill the job's process tree after this long (e.g. 2h, 30m); it ends failed with reason timeout
    #[arg(long, value_name = "DURATION", help_heading = "Failures")]
    pub timeout: Option<String>,
    /// Submit a job array: 0-99%8 runs indices 0..99, at most 8 at once (index in RAVEL_ARRAY_INDEX)
    #[arg(long, value_name = "SPEC")]
    pub array: Option<String>,
    /// Stream the job's output and exit with its exit code
    #[arg(long)]
    pub wait: bool,
    /// Print only the id (for `--after $(ravel run -q ...)`); with --wait, only the job's output
    #[arg(short, long)]
    pub quiet: bool,
    /// Print {"id": N, "ids": [...]} instead of the bare id
    #[arg(long)]
    pub json: bool,
    /// The command and its arguments, after `--`
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct QueueArgs {
    /// Include every finished job, not only recent ones
    #[arg(long)]
    pub all: bool,
    /// How many recently finished jobs to show
    #[arg(long, default_value_t = 10)]
    pub recent: u32,
    /// Show each element of job arrays on its own line
    #[arg(long)]
    pub expand: bool,
    /// List at most N waiting jobs (the oldest); running ones are always listed
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub limit: u32,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    pub id: JobId,
    /// Keep printing new output until the job ends
    #[arg(short, long)]
    pub follow: bool,
    /// Only stdout
    #[arg(long, conflicts_with = "stderr")]
    pub stdout: bool,
    /// Only stderr
    #[arg(long)]
    pub stderr: bool,
    /// Start with the last N lines
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
    /// Which attempt (default: the latest)
    #[arg(long)]
    pub attempt: Option<u32>,
    /// A gang's rank (`--nodes N`): its output on its own node (default: rank 0)
    #[arg(long, value_name = "N")]
    pub rank: Option<u32>,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Keep printing new events until interrupted
    #[arg(short, long)]
    pub follow: bool,
    /// Start after this event id (as printed, or `id` in --json); 0: everything kept
    #[arg(long, value_name = "ID")]
    pub since: Option<u64>,
    /// One JSON object per line
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct WaitArgs {
    /// Job ids to wait for
    pub ids: Vec<JobId>,
    /// Wait until no job is queued or running
    #[arg(long, conflicts_with = "ids")]
    pub all: bool,
    /// Give up after this many seconds (exit 124)
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum DaemonCommand {
    /// Start the daemon in the background (or in the foreground with --foreground)
    Start(DaemonOpts),
    /// Stop the daemon. Running jobs keep running and are re-adopted on the next start
    Stop {
        /// Terminate running jobs first
        #[arg(long)]
        kill_jobs: bool,
        /// Stop the shared box's system daemon (as root)
        #[arg(long)]
        system: bool,
    },
    /// Is the daemon running, and which one do commands talk to? Exits 0 if it runs, 3 if not
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Stop the daemon (leaving jobs running) and start it again
    Restart(DaemonOpts),
}

#[derive(Args, Debug, Clone, Default)]
pub struct DaemonOpts {
    /// Run in this terminal instead of detaching
    #[arg(long)]
    pub foreground: bool,
    /// The shared box's daemon (as root): one for every user, jobs run as their submitters, state in
    /// /var/lib/ravel, socket /run/ravel/ravel.sock
    #[arg(long)]
    pub system: bool,
    /// System mode: members of this group are admins (besides root)
    #[arg(long, value_name = "GROUP", help_heading = "Shared box")]
    pub admin_group: Option<String>,
    /// System mode: the socket is 0660 for this group instead of 0666 for everyone
    #[arg(long, value_name = "GROUP", help_heading = "Shared box")]
    pub socket_group: Option<String>,
    /// System mode: users see only their own jobs (admins see all)
    #[arg(long, help_heading = "Shared box")]
    pub private_queue: bool,
    /// System mode: let root submit jobs (refused by default)
    #[arg(long, help_heading = "Shared box")]
    pub allow_root_jobs: bool,
    /// Flag a job that holds a GPU at 0% utilization this long (default 30m; 0 = never)
    #[arg(long, value_name = "DURATION")]
    pub idle_gpu_after: Option<String>,
    /// Send every notification to this webhook (Slack- or Discord-compatible; repeatable)
    #[arg(long, value_name = "URL", help_heading = "Alerts")]
    pub webhook: Vec<String>,
    /// A daemon-wide alert to the webhooks: job-failed, or queue-wait>DURATION (repeatable)
    #[arg(long, value_name = "RULE", help_heading = "Alerts")]
    pub alert: Vec<String>,
    /// CPU slots of this node (default: the number of cores)
    #[arg(long)]
    pub cpus: Option<u32>,
    /// A GPU with utilization at or above this percentage is busy (default 20)
    #[arg(long, value_name = "PCT")]
    pub gpu_util_threshold: Option<u32>,
    /// A GPU with this percentage of its memory in use is busy (default 10)
    #[arg(long, value_name = "PCT")]
    pub gpu_mem_threshold: Option<u32>,
    /// Seconds a canceled job gets between SIGTERM and SIGKILL (default 10)
    #[arg(long, value_name = "SECS")]
    pub kill_grace: Option<f64>,
    /// normal: commits survive any process crash; full: also power loss (fsync per commit)
    #[arg(long)]
    pub durability: Option<DurabilityArg>,
    /// Memory tags for `run --memory-tag`, e.g. small=8G,medium=20G,large=40G
    #[arg(long, env = "RAVEL_MEMORY_LIMITS", value_name = "TAG=SIZE,...")]
    pub memory_limits: Option<String>,
    /// Fair-share weights per user, e.g. alice=2,bob=1 (default 1 each)
    #[arg(long, env = "RAVEL_FAIRSHARE_WEIGHTS", value_name = "USER=W,...")]
    pub fair_share_weights: Option<String>,
    /// Half-life of past GPU usage in fair share (default 24h)
    #[arg(long, env = "RAVEL_FAIRSHARE_HALF_LIFE", value_name = "DURATION")]
    pub fair_share_half_life: Option<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifyArg {
    Failure,
    Success,
    Always,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityArg {
    Normal,
    Full,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    fn argv(line: &[&str]) -> Vec<std::ffi::OsString> {
        std::iter::once("ravel").chain(line.iter().copied()).map(Into::into).collect()
    }

    #[test]
    fn the_run_parser_agrees_with_the_whole_one() {
        Cli::command().debug_assert();
        let lines: &[&[&str]] = &[
            &["run", "--", "true"],
            &["run", "--gpus", "2", "--", "python", "train.py", "--lr", "3e-4"],
            &["run", "-q", "--hold", "--gpus", "0", "--", "sh", "-c", "date > f"],
            &["run", "--priority", "-3", "--name", "x", "--", "echo", "--gpus"],
            &["run", "--context", "lab", "--cpus", "4", "--after", "3", "echo", "hi"],
            &["run", "--help"],
            &["run", "--gpus", "x", "--", "true"],
            &["run", "--no-such-flag", "true"],
            &["run"],
        ];
        for line in lines {
            let args = argv(line);
            match (Cli::parse_run(&args), Cli::try_parse_from(&args)) {
                (Some(narrow), Ok(whole)) => assert_eq!(format!("{narrow:?}"), format!("{whole:?}"), "{line:?}"),
                (None, Err(_)) => {}
                (narrow, whole) => panic!("{line:?}: run parser {narrow:?}, whole parser {whole:?}"),
            }
        }
        // Other subcommands, and flags before `run`, are the whole parser's.
        for line in [&["queue"][..], &["--version"], &["--context", "lab", "run", "--", "true"]] {
            assert!(Cli::parse_run(&argv(line)).is_none(), "{line:?} taken by the run parser");
        }
    }
}
