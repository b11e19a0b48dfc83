//! `ravel doctor`: checks that ravel can do its work here, each with a fix when it cannot.

use super::print_json;
use crate::home::Home;
use ravel_client::ClientError;
use ravel_controller::now_ms;
use ravel_proto::{GpusResponse, StatusResponse};
use serde::Serialize;
use std::os::unix::fs::MetadataExt;
use std::process::ExitCode;

#[derive(Serialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Serialize, Debug)]
struct Check {
    check: &'static str,
    level: Level,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

fn check(check: &'static str, level: Level, detail: impl Into<String>, fix: Option<&str>) -> Check {
    Check { check, level, detail: detail.into(), fix: fix.map(String::from) }
}

pub fn doctor(home: &Home, json: bool) -> anyhow::Result<ExitCode> {
    let checks = run_checks(home);
    if json {
        print_json(&checks)?;
    } else {
        for c in &checks {
            let level = match c.level {
                Level::Ok => "ok  ",
                Level::Warn => "warn",
                Level::Fail => "FAIL",
            };
            println!("{level}  {:<10} {}", c.check, c.detail);
            if let Some(f) = &c.fix {
                println!("      {:<10} fix: {f}", "");
            }
        }
    }
    let failed = checks.iter().any(|c| c.level == Level::Fail);
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn run_checks(home: &Home) -> Vec<Check> {
    let mut out = vec![];
    let client = home.client().with_timeout(std::time::Duration::from_secs(5));
    let status: Result<StatusResponse, ClientError> = client.get("/v1/status");
    if let Some(remote) = &home.remote {
        return remote_checks(&client, &remote.why, status);
    }
    let Ok(s) = status else {
        let (level, fix) = if home.system {
            (
                Level::Fail,
                "ask an admin to start it (`sudo systemctl start ravel`), or set RAVEL_HOME to use a daemon of your own",
            )
        } else {
            (Level::Warn, "`ravel run` starts it on demand, or start it now with `ravel daemon start`")
        };
        out.push(check(
            "daemon",
            level,
            format!("no daemon answers on {} ({})", home.socket.display(), home.why),
            Some(fix),
        ));
        out.extend(socket_check(home));
        return out;
    };
    out.push(check(
        "daemon",
        Level::Ok,
        format!("ravel {} daemon (pid {}) on {} ({})", s.mode, s.pid, s.socket, home.why),
        None,
    ));
    out.extend(version_and_clock(&s, false));
    out.extend(socket_check(home));
    out.extend(service_checks(&client, &s));
    out.extend(store_check(home, &s));
    out.extend(disk_check(home));
    out
}

/// A controller: only what its API says (its socket, store and disk are on another machine).
fn remote_checks(client: &ravel_client::Client, why: &str, status: Result<StatusResponse, ClientError>) -> Vec<Check> {
    match status {
        Ok(s) => {
            let mut out =
                vec![check("controller", Level::Ok, format!("ravel {} at {} ({why})", s.mode, client.target()), None)];
            out.extend(version_and_clock(&s, true));
            out.extend(service_checks(client, &s));
            out
        }
        Err(e) => vec![check(
            "controller",
            Level::Fail,
            format!("{e} (commands talk to it: {why})"),
            Some("check the context (`ravel context ls`), or use `--context local` for the local daemon"),
        )],
    }
}

fn version_and_clock(s: &StatusResponse, remote: bool) -> Vec<Check> {
    let mut out = vec![];
    let mine = env!("CARGO_PKG_VERSION");
    out.push(if s.version == mine {
        check("version", Level::Ok, format!("{mine} here and in the daemon"), None)
    } else {
        check(
            "version",
            Level::Warn,
            format!("this ravel is {mine}, the daemon runs {}", s.version),
            Some(if remote {
                "ask the controller's admin which version to use, or upgrade it"
            } else if s.mode == "system" {
                "ask an admin to restart the system daemon after upgrading"
            } else {
                "restart it with the new binary: `ravel daemon restart` (running jobs keep running)"
            }),
        )
    });
    let skew = (s.now - now_ms()).abs();
    out.push(if s.now == 0 || skew <= 2000 {
        check("clock", Level::Ok, format!("the daemon's clock is within {skew} ms of this one"), None)
    } else {
        check(
            "clock",
            Level::Warn,
            format!("the daemon's clock differs from this one by {:.1} s", skew as f64 / 1000.0),
            Some("synchronise clocks (e.g. `timedatectl set-ntp true`): begin times and durations depend on them"),
        )
    });
    out
}

/// Readiness, GPUs and cgroups, as the API tells them.
fn service_checks(client: &ravel_client::Client, s: &StatusResponse) -> Vec<Check> {
    let mut out = vec![];
    match client.raw("GET", "/readyz", None) {
        Ok(_) => out.push(check("ready", Level::Ok, "store, scheduler and GPU probe answer", None)),
        Err(e) => out.push(check(
            "ready",
            Level::Fail,
            format!("the daemon is not ready: {e}"),
            Some("see the daemon's log (`daemon.log` in its home) and restart it"),
        )),
    }
    match client.get::<GpusResponse>("/v1/gpus") {
        Ok(g) if g.probe_error.is_some() => out.push(check(
            "gpus",
            Level::Fail,
            format!("the GPU probe ({}) failed: {}", g.probe, g.probe_error.unwrap_or_default()),
            Some("check that `nvidia-smi` works for the daemon's user; jobs needing GPUs wait until it does"),
        )),
        Ok(g) if g.gpus.is_empty() => out.push(check(
            "gpus",
            Level::Warn,
            format!("no GPUs found (probe: {})", g.probe),
            Some("jobs asking for GPUs will wait; install the NVIDIA driver, or try ravel with RAVEL_FAKE_GPUS=4"),
        )),
        Ok(g) => out.push(check("gpus", Level::Ok, format!("{} GPUs via {}", g.gpus.len(), g.probe), None)),
        Err(e) => out.push(check("gpus", Level::Fail, format!("cannot list GPUs: {e}"), None)),
    }
    out.push(if s.cgroups.starts_with("cgroup") {
        check("cgroups", Level::Ok, format!("jobs are contained with {}", s.cgroups), None)
    } else {
        check(
            "cgroups",
            if s.mode == "system" { Level::Warn } else { Level::Ok },
            format!("no cgroups ({}): `--mem` is refused", s.cgroups.trim_start_matches("none: ")),
            (s.mode == "system").then_some("give the system daemon a writable cgroup hierarchy (it runs as root)"),
        )
    });
    out
}

/// A user's socket must be theirs alone; the system socket is open to (a group of) users.
fn socket_check(home: &Home) -> Option<Check> {
    let m = std::fs::symlink_metadata(&home.socket).ok()?;
    let mode = m.mode() & 0o777;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    Some(if home.system {
        check("socket", Level::Ok, format!("{} is {mode:o}", home.socket.display()), None)
    } else if m.uid() != me || mode & 0o077 != 0 {
        check(
            "socket",
            Level::Fail,
            format!("{} is {mode:o}, owned by uid {}: others could run jobs as you", home.socket.display(), m.uid()),
            Some("stop the daemon (`ravel daemon stop`) and start it again; it makes the socket 600"),
        )
    } else {
        check("socket", Level::Ok, format!("{} is {mode:o} and yours", home.socket.display()), None)
    })
}

fn store_check(home: &Home, s: &StatusResponse) -> Option<Check> {
    let m = std::fs::metadata(&s.db_path).ok()?;
    let mode = m.mode() & 0o777;
    Some(if mode & 0o077 != 0 {
        Check {
            check: "store",
            level: Level::Warn,
            detail: format!("{} is {mode:o}: jobs' environments in it are readable by others", s.db_path),
            fix: Some(format!("chmod 600 {0} {0}-wal {0}-shm", s.db_path)),
        }
    } else {
        check("store", Level::Ok, format!("{} ({mode:o}) in {}", s.db_path, home.dir.display()), None)
    })
}

fn disk_check(home: &Home) -> Option<Check> {
    let c = std::ffi::CString::new(home.dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs fills the struct for a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let free_mib = (st.f_bavail as u64 * st.f_frsize as u64) >> 20;
    Some(if free_mib < 1024 {
        check(
            "disk",
            Level::Warn,
            format!("{free_mib} MiB free for {}", home.dir.display()),
            Some("free space: jobs' logs and the database grow there"),
        )
    } else {
        check("disk", Level::Ok, format!("{} GiB free for {}", free_mib >> 10, home.dir.display()), None)
    })
}
