//! `ravel run`: build the spec from the command line and the caller's environment, submit it
//! (starting the local daemon if none answers; never for a controller), print the id; with
//! `--wait`, stream and exit like the job.

use super::{print_json, usage};
use crate::cli::RunArgs;
use crate::daemon;
use crate::home::Home;
use crate::when;
use anyhow::{anyhow, bail};
use ravel_controller::now_ms;
use ravel_core::JobSpec;
use ravel_core::units::{parse_array, parse_duration_ms, parse_size_mib};
use ravel_proto::{ArrayRequest, SubmitRequest, SubmitResponse};
use std::process::ExitCode;

pub fn run(home: &Home, args: RunArgs) -> anyhow::Result<ExitCode> {
    if args.command.is_empty() {
        usage!("no command given: put it after `--`, e.g. `ravel run --gpus 1 -- python train.py`");
    }
    // The command takes words that look like flags, so clap hands an unknown flag over as the
    // command's first word (`ravel run --bogus -- x` would run `--bogus -- x`). A command may
    // start with '-' only when it was given after `--`.
    if let Some(flag) = args.command.first().filter(|w| w.starts_with('-'))
        && !given_after_dashes(&args.command)
    {
        usage!(
            "unknown option {flag} for `ravel run` (see `ravel run --help`); give the command after `--`, \
             e.g. `ravel run --gpus 1 -- python train.py`"
        );
    }
    let cwd = match &args.cwd {
        Some(dir) => {
            let dir = if dir.is_absolute() { dir.clone() } else { std::env::current_dir()?.join(dir) };
            // What we cannot look at ourselves (permission) is the daemon's to judge and explain;
            // a controller's job runs on a node, where the directory must exist, not here.
            if home.remote.is_none() {
                match std::fs::metadata(&dir) {
                    Ok(m) if !m.is_dir() => bail!("working directory {} is not a directory", dir.display()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        bail!("working directory {} does not exist", dir.display())
                    }
                    _ => {}
                }
            }
            dir
        }
        None => std::env::current_dir().map_err(|e| anyhow!("cannot read the current directory ({e}): pass --cwd"))?,
    };
    // The job gets the caller's environment, but not the caller's controller token (`--env
    // RAVEL_TOKEN=...` passes one on purpose): it would be kept with the job for anyone who can
    // read the job to see.
    let mut env: Vec<(String, String)> = std::env::vars_os()
        .filter(|(k, _)| k != "RAVEL_TOKEN")
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    for kv in &args.env {
        let Some((k, v)) = kv.split_once('=') else {
            usage!("--env {kv:?} is not KEY=VALUE");
        };
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_string(), v.to_string()));
    }
    let duration = |flag: &str, v: &Option<String>| -> anyhow::Result<Option<u64>> {
        match v {
            Some(d) => match parse_duration_ms(d) {
                Ok(ms) => Ok(Some(ms)),
                Err(e) => usage!("{flag}: {e}"),
            },
            None => Ok(None),
        }
    };
    let gpu_mem_mib = match &args.gpu_mem {
        Some(s) => match parse_size_mib(s) {
            Ok(m) => Some(m),
            Err(e) => usage!("--gpu-mem: {e}"),
        },
        None => None,
    };
    let mem_mib = match &args.mem {
        Some(s) => match parse_size_mib(s) {
            Ok(m) => Some(m),
            Err(e) => usage!("--mem: {e}"),
        },
        None => None,
    };
    let begin_at = match &args.begin {
        Some(w) => match when::parse_begin(w, now_ms()) {
            Ok(t) => Some(t),
            Err(e) => usage!("--begin: {e}"),
        },
        None => None,
    };
    let array = match &args.array {
        Some(a) => match parse_array(a) {
            Ok((indices, limit)) => Some(ArrayRequest { indices, limit }),
            Err(e) => usage!("{e}"),
        },
        None => None,
    };
    // A memory reservation without --gpus means one GPU.
    let gpus = if (gpu_mem_mib.is_some() || args.memory_tag.is_some()) && args.gpus == 0 { 1 } else { args.gpus };
    let spec = JobSpec {
        command: args.command.clone(),
        name: args.name.clone(),
        cwd: cwd.to_string_lossy().into_owned(),
        env,
        gpus,
        cpus: args.cpus,
        priority: args.priority,
        // Who submits is what the kernel says of our connection, filled in by the daemon.
        user: None,
        uid: None,
        gid: None,
        umask: Some(current_umask()),
        mem_mib,
        notify: args.notify.map(|n| match n {
            crate::cli::NotifyArg::Failure => ravel_core::NotifyOn::Failure,
            crate::cli::NotifyArg::Success => ravel_core::NotifyOn::Success,
            crate::cli::NotifyArg::Always => ravel_core::NotifyOn::Always,
        }),
        notify_url: args.notify_url.clone(),
        node: args.node.clone(),
        tags: args.tags.iter().filter(|t| !t.is_empty()).cloned().collect(),
        nodes: args.nodes.unwrap_or(0),
        gpu_mem_mib,
        memory_tag: args.memory_tag.clone(),
        after: args.after.clone(),
        after_any: args.after_any.clone(),
        retries: args.retries,
        retry_delay_ms: duration("--retry-delay", &args.retry_delay)?,
        timeout_ms: duration("--timeout", &args.timeout)?,
        hold: args.hold,
        begin_at,
        array_index: None,
        array_limit: None,
    };
    spec.validate().map_err(|e| anyhow!(e.0))?;
    let req = SubmitRequest { spec, array };
    let client = home.client();
    let resp: SubmitResponse = match client.post("/v1/jobs", &req) {
        // Only a user's own daemon is started on demand; a system daemon is the admin's, and a
        // controller never reports "not running" (it is unreachable, an error as it is).
        Err(e) if e.is_not_running() && !home.system && home.remote.is_none() => {
            daemon::ensure_running(home)?;
            client.post("/v1/jobs", &req)?
        }
        Err(e) if e.is_not_running() => bail!(
            "the system daemon at {} does not answer ({e}); ask an admin to start it, or set RAVEL_HOME to use a daemon of your own",
            home.socket.display()
        ),
        other => other?,
    };
    if args.json {
        print_json(&resp)?;
    } else if !(args.quiet && args.wait) {
        println!("{}", resp.id);
    }
    if args.wait {
        return super::logs::follow_to_end(home, resp.id, true, true);
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether `command` is exactly what followed the first `--` on our command line.
fn given_after_dashes(command: &[String]) -> bool {
    let mut raw = std::env::args_os().skip(1).skip_while(|a| a != "--").skip(1);
    command.iter().all(|word| raw.next().is_some_and(|a| a == word.as_str())) && raw.next().is_none()
}

/// This process's umask (read by setting it, then putting it back).
fn current_umask() -> u32 {
    // SAFETY: umask cannot fail; the CLI is single-threaded here, so nothing sees the moment it is 0.
    unsafe {
        let m = libc::umask(0);
        libc::umask(m);
        m as u32
    }
}
