//! `GET /v1/gpus`: the inventory with who uses each GPU.

use crate::Controller;
use axum::extract::State;
use ravel_proto::{GpuProcessView, GpuView, GpusResponse};
use std::sync::Arc;

#[utoipa::path(get, path = "/v1/gpus", tag = "gpus", operation_id = "list_gpus", responses((status = 200, description = "GPUs and who uses them", body = ravel_proto::GpusResponse)))]
pub async fn list(State(ctl): State<Arc<Controller>>) -> axum::Json<GpusResponse> {
    let st = ctl.lock();
    let mut gpus = vec![];
    for (i, node) in st.nodes.iter().enumerate() {
        let mut in_use = st.gpu_use(i);
        let remote = node.remote.is_some();
        if node.remote.as_ref().is_some_and(|r| r.removed) {
            continue;
        }
        gpus.extend(node.inventory.iter().map(|g| {
            let (allocated_to, shared) = in_use.remove(&g.index).unwrap_or_default();
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
                        // A node's processes are its own to name; it sends only foreign ones.
                        user: if remote {
                            None
                        } else {
                            ravel_exec::users::process_uid(p.pid).map(ravel_exec::users::user_name)
                        },
                        job: if remote { None } else { st.job_of_process(p.pid) },
                    })
                    .collect(),
                flags: st
                    .flags
                    .values()
                    .flatten()
                    .filter(|f| f.gpu == g.index && !remote)
                    .map(|f| f.message.clone())
                    .collect(),
                node: remote.then(|| node.name.clone()),
            }
        }));
    }
    axum::Json(GpusResponse { probe: ctl.probe_kind.to_string(), gpus, probe_error: st.probe_error.clone() })
}
