//! `ravel gpus`: the node's GPUs and who uses them.

use super::print_json;
use crate::home::Home;
use crate::output::table;
use ravel_proto::GpusResponse;
use std::process::ExitCode;

pub fn gpus(home: &Home, json: bool) -> anyhow::Result<ExitCode> {
    let resp: GpusResponse = home.client().get("/v1/gpus")?;
    if json {
        print_json(&resp)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(e) = &resp.probe_error {
        eprintln!("ravel: the last GPU probe failed ({e}); showing the last good inventory");
    }
    if resp.gpus.is_empty() {
        println!("no GPUs found (probe: {}). Set RAVEL_FAKE_GPUS=N to try ravel with fake GPUs.", resp.probe);
        return Ok(ExitCode::SUCCESS);
    }
    // A controller's GPUs are on its nodes: a NODE column first.
    let on_nodes = resp.gpus.iter().any(|g| g.node.is_some());
    let rows: Vec<Vec<String>> = resp
        .gpus
        .iter()
        .map(|g| {
            let who = match (&g.allocated_to, &g.foreign_busy) {
                (Some(job), _) => format!("job {job}"),
                (None, _) if !g.shared.is_empty() => {
                    let jobs = g.shared.iter().map(|(j, m)| format!("job {j} ({m}M)")).collect::<Vec<_>>().join(", ");
                    format!("shared: {jobs}")
                }
                (None, Some(why)) => format!("busy: {why}"),
                (None, None) if !g.processes.is_empty() => "free (light foreign use)".into(),
                _ => "free".into(),
            };
            let procs = g
                .processes
                .iter()
                .map(|p| format!("{}({}, {} MiB)", p.pid, p.user.as_deref().unwrap_or("?"), p.used_memory_mib))
                .collect::<Vec<_>>()
                .join(" ");
            let mut row = vec![
                g.index.to_string(),
                g.name.clone(),
                format!("{}/{} MiB", g.memory_used_mib, g.memory_total_mib),
                format!("{}%", g.utilization_pct),
                who,
                if procs.is_empty() { "-".into() } else { procs },
            ];
            if on_nodes {
                row.insert(0, g.node.clone().unwrap_or_default());
            }
            row
        })
        .collect();
    let mut head = vec!["GPU", "NAME", "MEMORY", "UTIL", "STATUS", "PROCESSES"];
    if on_nodes {
        head.insert(0, "NODE");
    }
    print!("{}", table(&head, &rows));
    let flags: Vec<(u32, &String)> = resp.gpus.iter().flat_map(|g| g.flags.iter().map(move |f| (g.index, f))).collect();
    if !flags.is_empty() {
        println!();
        for (gpu, f) in flags {
            println!("! GPU {gpu}: {f}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
