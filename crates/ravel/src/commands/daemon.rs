//! `ravel daemon start|stop|status|restart`.

use super::{code, print_json};
use crate::cli::DaemonCommand;
use crate::daemon;
use crate::home::Home;
use crate::output::{duration, timestamp};
use ravel_controller::now_ms;
use std::process::ExitCode;

fn home_for(system: bool) -> anyhow::Result<Home> {
    if system { Ok(Home::system()) } else { Home::from_env() }
}

pub fn daemon(cmd: DaemonCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DaemonCommand::Start(opts) if opts.foreground => {
            daemon::run_foreground(&home_for(opts.system)?, &opts)?;
            Ok(ExitCode::SUCCESS)
        }
        DaemonCommand::Start(opts) => {
            let home = &home_for(opts.system)?;
            if let Some(s) = daemon::status(home) {
                println!("ravel daemon is already running (pid {}); `ravel daemon restart` applies new options", s.pid);
                return Ok(ExitCode::SUCCESS);
            }
            let s = daemon::start_detached(home, &opts)?;
            println!(
                "ravel {} daemon started (pid {}, {} CPU slots, {} GPUs via {}; socket {})",
                s.mode, s.pid, s.cpus_total, s.gpus_total, s.gpu_probe, s.socket
            );
            Ok(ExitCode::SUCCESS)
        }
        DaemonCommand::Stop { kill_jobs, system } => {
            let home = &home_for(system)?;
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
        DaemonCommand::Status { json } => match daemon::status(&Home::target()?) {
            Some(s) => {
                let home = Home::target()?;
                if json {
                    print_json(&s)?;
                } else {
                    println!(
                        "ravel {} daemon is running (pid {}, up {})",
                        s.mode,
                        s.pid,
                        duration(now_ms() - s.started_at)
                    );
                    println!("  talking:  {} ({})", s.socket, home.why);
                    println!("  you:      {}{}", s.you, if s.you_are_admin { " (admin)" } else { "" });
                    println!("  since:    {}", timestamp(s.started_at));
                    println!("  home:     {}", s.home);
                    println!("  database: {}", s.db_path);
                    println!("  cpus:     {}/{} slots in use", s.cpus_used, s.cpus_total);
                    println!("  gpus:     {}/{} allocated (probe: {})", s.gpus_allocated, s.gpus_total, s.gpu_probe);
                    println!("  jobs:     {} queued, {} running", s.queued, s.running);
                    println!("  cgroups:  {}", s.cgroups);
                }
                Ok(ExitCode::SUCCESS)
            }
            None => {
                let home = &Home::target()?;
                if let Some(pid) = daemon::running_pid(home) {
                    eprintln!("ravel daemon (pid {pid}) holds {} but does not answer", home.pid_file().display());
                    return Ok(ExitCode::FAILURE);
                }
                if json {
                    print_json(&serde_json::json!({ "running": false, "socket": home.socket }))?;
                } else {
                    println!("ravel daemon is not running (looked for {}: {})", home.socket.display(), home.why);
                }
                Ok(code(3))
            }
        },
        DaemonCommand::Restart(opts) => {
            let home = &home_for(opts.system)?;
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
