//! `ravel admin limits`: per-user limits of a (shared) daemon.

use super::print_json;
use crate::cli::LimitsArgs;
use crate::home::Home;
use ravel_proto::{Limits, LimitsConfig, SetLimitsRequest};
use std::process::ExitCode;

pub fn limits(home: &Home, args: LimitsArgs) -> anyhow::Result<ExitCode> {
    let client = home.client();
    let set = Limits { gpus: args.gpus, running: args.running, queued: args.queued };
    let changing = args.default || args.user.is_some();
    if !changing && (set != Limits::default() || args.clear) {
        super::usage!("say whose limits to set: a USER, or --default for everyone");
    }
    let cfg: LimitsConfig = if changing {
        let req = SetLimitsRequest { user: args.user.clone(), limits: set, clear: args.clear };
        client.post("/v1/admin/limits", &req)?
    } else {
        client.get("/v1/admin/limits")?
    };
    if args.json {
        print_json(&cfg)?;
        return Ok(ExitCode::SUCCESS);
    }
    let show = |v: Option<u32>| v.map_or("-".to_string(), |n| n.to_string());
    println!("{:<16} {:>6} {:>8} {:>8}", "USER", "GPUS", "RUNNING", "QUEUED");
    let d = cfg.default;
    println!("{:<16} {:>6} {:>8} {:>8}", "(default)", show(d.gpus), show(d.running), show(d.queued));
    for (user, l) in &cfg.users {
        let l = l.or(d);
        println!("{:<16} {:>6} {:>8} {:>8}", user, show(l.gpus), show(l.running), show(l.queued));
    }
    Ok(ExitCode::SUCCESS)
}
