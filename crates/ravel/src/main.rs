//! The `ravel` binary: the CLI, the daemon's start-up, and the supervisor's entry point.
//!
//! Business logic lives in the library crates; this crate parses flags, talks to the daemon
//! through `ravel-client`, and formats what comes back (tables for people, `--json` for scripts).

mod cli;
mod commands;
mod daemon;
mod home;
mod output;
mod target;
mod when;

use std::process::ExitCode;

fn main() -> ExitCode {
    // The supervisor path is first and lean: no flag parsing, no runtime, no config.
    let mut args = std::env::args_os();
    if args.nth(1).as_deref() == Some(std::ffi::OsStr::new(ravel_exec::SUPERVISE_SUBCOMMAND)) {
        let Some(run_dir) = args.next() else {
            eprintln!("usage: ravel {} RUN_DIR | --standby", ravel_exec::SUPERVISE_SUBCOMMAND);
            return ExitCode::from(2);
        };
        if run_dir == ravel_exec::STANDBY {
            return ExitCode::from(ravel_exec::supervise_standby().clamp(0, 255) as u8);
        }
        if run_dir == ravel_exec::ZYGOTE {
            return ExitCode::from(ravel_exec::zygote_main().clamp(0, 255) as u8);
        }
        let from_stdin = args.next().is_some_and(|a| a == ravel_exec::SPEC_FROM_STDIN);
        let code = ravel_exec::supervise_main(std::path::Path::new(&run_dir), from_stdin);
        return ExitCode::from(code.clamp(0, 255) as u8);
    }
    let cli = cli::Cli::parse_args();
    match commands::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ravel: {e:#}");
            if e.downcast_ref::<commands::UsageError>().is_some() { ExitCode::from(2) } else { ExitCode::FAILURE }
        }
    }
}
