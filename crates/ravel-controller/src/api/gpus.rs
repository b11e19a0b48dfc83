//! `GET /v1/gpus`: the inventory with who uses each GPU.

use crate::Controller;
use axum::extract::State;
use ravel_proto::{GpuProcessView, GpuView, GpusResponse};
use std::sync::Arc;

pub async fn list(State(ctl): State<Arc<Controller>>) -> axum::Json<GpusResponse> {
    let st = ctl.lock();
    let gpus = st
        .inventory
        .iter()
        .map(|g| {
            let (allocated_to, shared) = st.jobs_on_gpu(g.index);
            let on_gpu = allocated_to.or(shared.first().map(|(j, _)| *j));
            GpuView {
                index: g.index,
                name: g.name.clone(),
                memory_total_mib: g.memory_total_mib,
                memory_used_mib: g.used_memory_mib(),
                utilization_pct: g.utilization_pct,
                allocated_to,
                reserved_mib: shared.iter().map(|(_, m)| m).sum(),
                foreign_busy: if on_gpu.is_none() { g.foreign_busy(&ctl.cfg.thresholds) } else { None },
                shared,
                processes: g
                    .processes
                    .iter()
                    .map(|p| GpuProcessView {
                        pid: p.pid,
                        used_memory_mib: p.used_memory_mib,
                        user: process_user(p.pid),
                        job: st.job_of_process(p.pid),
                    })
                    .collect(),
            }
        })
        .collect();
    axum::Json(GpusResponse { probe: ctl.probe_kind.to_string(), gpus, probe_error: st.probe_error.clone() })
}

/// The user name owning a process, from /proc and /etc/passwd.
fn process_user(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            (f.nth(1)? == uid).then(|| name.to_string())
        })
        .or(Some(format!("uid {uid}")))
}
