//! `ravel daemon start|stop|status|restart`.

use super::{code, print_json};
use crate::cli::DaemonCommand;
use crate::daemon;
use crate::home::Home;
use crate::output::{duration, timestamp};
use ravel_controller::now_ms;
use std::process::ExitCode;

pub fn daemon(home: &Home, cmd: DaemonCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DaemonCommand::Start(opts) if opts.foreground => {
            daemon::run_foreground(home, &opts)?;
            Ok(ExitCode::SUCCESS)
        }
        DaemonCommand::Start(opts) => {
            if let Some(s) = daemon::status(home) {
                println!("ravel daemon is already running (pid {}); `ravel daemon restart` applies new options", s.pid);
                return Ok(ExitCode::SUCCESS);
            }
            let s = daemon::start_detached(home, &opts)?;
            println!(
                "ravel daemon started (pid {}, {} CPU slots, {} GPUs via {})",
                s.pid, s.cpus_total, s.gpus_total, s.gpu_probe
            );
            Ok(ExitCode::SUCCESS)
        }
        DaemonCommand::Stop { kill_jobs } => {
            let running = daemon::status(home).map(|s| s.running).unwrap_or(0);
            if daemon::stop(home, kill_jobs)? {
                if kill_jobs || running == 0 {
                    println!("ravel daemon stopped");
                } else {
                    println!(
                        "ravel daemon stopped; {running} running job(s) keep running and are re-adopted on the next start"
                    );
                }
            } else {
                println!("ravel daemon is not running");
            }
            Ok(ExitCode::SUCCESS)
        }
        DaemonCommand::Status { json } => match daemon::status(home) {
            Some(s) => {
                if json {
                    print_json(&s)?;
                } else {
                    println!("ravel daemon is running (pid {}, up {})", s.pid, duration(now_ms() - s.started_at));
                    println!("  since:    {}", timestamp(s.started_at));
                    println!("  home:     {}", s.home);
                    println!("  database: {}", s.db_path);
                    println!("  cpus:     {}/{} slots in use", s.cpus_used, s.cpus_total);
                    println!("  gpus:     {}/{} allocated (probe: {})", s.gpus_allocated, s.gpus_total, s.gpu_probe);
                    println!("  jobs:     {} queued, {} running", s.queued, s.running);
                }
                Ok(ExitCode::SUCCESS)
            }
            None => {
                if let Some(pid) = daemon::running_pid(home) {
                    eprintln!("ravel daemon (pid {pid}) holds {} but does not answer", home.pid_file().display());
                    return Ok(ExitCode::FAILURE);
                }
                if json {
                    print_json(&serde_json::json!({ "running": false }))?;
                } else {
                    println!("ravel daemon is not running");
                }
                Ok(code(3))
            }
        },
        DaemonCommand::Restart(opts) => {
            if opts.foreground {
                super::usage!(
                    "restart always detaches; use `ravel daemon stop` then `ravel daemon start --foreground`"
                );
            }
            daemon::stop(home, false)?;
            let s = daemon::start_detached(home, &opts)?;
            println!(
                "ravel daemon restarted (pid {}, {} CPU slots, {} GPUs via {})",
                s.pid, s.cpus_total, s.gpus_total, s.gpu_probe
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
