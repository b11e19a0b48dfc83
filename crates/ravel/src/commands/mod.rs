//! One module per group of subcommands. Each returns the process exit code.
//!
//! Exit codes: 0 success; 1 an error (or, for `wait`, a job that did not succeed); 2 bad usage;
//! 3 `daemon status` found no daemon; 124 `wait --timeout` ran out; `run --wait` exits with the
//! job's own code (128+N if a signal N killed it, 130 if it was canceled).

mod admin;
mod cluster;
pub(crate) mod cluster_cli;
mod daemon;
mod dash;
mod doctor;
mod events;
mod gpus;
mod jobs;
mod logs;
mod run;

use crate::cli::{Cli, Command};
use crate::home::Home;
use std::process::ExitCode;

pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    // Starting and stopping concern the user's own daemon unless --system says otherwise; every
    // other command talks to the controller or daemon `Home::resolve` finds.
    if let Command::Daemon(cmd) = cli.command {
        crate::target::note_daemon_is_local(cli.globals.context.as_deref());
        return daemon::daemon(cmd);
    }
    // Contexts are this machine's settings: no daemon or controller is involved.
    if let Command::Context(cmd) = cli.command {
        return cluster_cli::context(cmd, cli.globals.context.as_deref());
    }
    match cli.command {
        Command::Controller(args) => return cluster::controller(args),
        Command::Agent(args) => return cluster::agent(args),
        _ => {}
    }
    let home = Home::resolve(cli.globals.context.as_deref())?;
    let result = match cli.command {
        Command::Run(args) => run::run(&home, args),
        Command::Queue(args) => jobs::queue(&home, args),
        Command::Show { id, json } => jobs::show(&home, id, json),
        Command::Logs(args) => logs::logs(&home, args),
        Command::Cancel { ids, json } => jobs::cancel(&home, ids, json),
        Command::Wait(args) => jobs::wait(&home, args),
        Command::Hold { ids } => jobs::act(&home, ids, "hold"),
        Command::Release { ids } => jobs::act(&home, ids, "release"),
        Command::Retry { ids } => jobs::act(&home, ids, "retry"),
        Command::Priority { id, priority } => jobs::priority(&home, id, priority),
        Command::Gpus { json } => gpus::gpus(&home, json),
        Command::Events(args) => events::events(&home, args),
        Command::Doctor { json } => doctor::doctor(&home, json),
        Command::Dash => dash::dash(&home),
        Command::Ui { .. } if home.remote.is_some() => Err(anyhow::anyhow!(
            "`ravel ui` opens the local daemon's web UI on this machine; it cannot be opened through a controller \
(commands talk to {}: use `--context local` for the local daemon)",
            home.client().target()
        )),
        Command::Ui { port, json } => {
            let v: serde_json::Value = home.client().post("/v1/ui/session", &serde_json::json!({ "port": port }))?;
            if json {
                print_json(&v)?;
            } else {
                println!("Open this link in a browser on this machine (it works once, for 5 minutes):");
                println!("  {}", v["url"].as_str().unwrap_or_default());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Admin(crate::cli::AdminCommand::Limits(args)) => admin::limits(&home, args),
        Command::Token(cmd) => cluster_cli::token(&home, cmd),
        Command::Nodes { json } => cluster_cli::nodes(&home, json),
        Command::Node(cmd) => cluster_cli::node(&home, cmd),
        Command::Daemon(_) | Command::Context(_) | Command::Controller(_) | Command::Agent(_) => {
            unreachable!("handled above")
        }
    };
    result.map_err(|e| crate::target::explain(e, home.remote.as_ref()))
}

/// A mistake in how ravel was called (exit code 2, like clap's own usage errors).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Returns early with a usage error.
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err($crate::commands::UsageError(format!($($arg)*)).into())
    };
}
pub(crate) use usage;

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn code(c: u8) -> ExitCode {
    ExitCode::from(c)
}
