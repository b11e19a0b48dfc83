//! The NVML backend: the driver's own library, loaded at run time.
//!
//! Not exercised by tests (the build machines have no GPU); kept to a direct
//! mapping of NVML calls onto [`GpuInfo`].

use nvml_wrapper::Nvml;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;

use crate::{GpuInfo, GpuProbe, GpuProcess, ProbeError};

const MIB: u64 = 1024 * 1024;

/// Probes GPUs through NVML. Holds the library open for the daemon's life,
/// since loading and initialising it is far slower than a probe.
pub struct NvmlProbe {
    nvml: Nvml,
}

impl std::fmt::Debug for NvmlProbe {
    // `Nvml` has no Debug of its own.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NvmlProbe")
    }
}

fn nvml_error(call: impl Into<String>) -> impl FnOnce(NvmlError) -> ProbeError {
    move |e| ProbeError::Nvml { call: call.into(), message: e.to_string() }
}

impl NvmlProbe {
    /// Loads libnvidia-ml and initialises it. Fails (without side effects) on
    /// machines without the NVIDIA driver.
    pub fn init() -> Result<Self, ProbeError> {
        let nvml = Nvml::init().map_err(nvml_error("init"))?;
        Ok(NvmlProbe { nvml })
    }

    fn device(&self, index: u32) -> Result<GpuInfo, ProbeError> {
        let device = self.nvml.device_by_index(index).map_err(nvml_error(format!("device_by_index({index})")))?;
        let name = device.name().map_err(nvml_error(format!("name of GPU {index}")))?;
        let memory = device.memory_info().map_err(nvml_error(format!("memory_info of GPU {index}")))?;
        // Some GPUs (e.g. with MIG enabled) do not support these queries. Losing
        // the whole inventory over them would be worse than reporting zero:
        // device memory above still reveals foreign use.
        let utilization_pct = device.utilization_rates().map_or_else(
            |e| {
                tracing::warn!(gpu = index, error = %e, "NVML utilization_rates failed; reporting 0%");
                0
            },
            |u| u.gpu,
        );
        let processes = device.running_compute_processes().map_or_else(
            |e| {
                tracing::warn!(gpu = index, error = %e, "NVML running_compute_processes failed; reporting none");
                Vec::new()
            },
            |ps| {
                ps.into_iter()
                    .map(|p| GpuProcess {
                        pid: p.pid,
                        used_memory_mib: match p.used_gpu_memory {
                            UsedGpuMemory::Used(bytes) => bytes / MIB,
                            UsedGpuMemory::Unavailable => 0,
                        },
                    })
                    .collect()
            },
        );
        Ok(GpuInfo {
            index,
            name,
            uuid: device.uuid().ok(),
            memory_total_mib: memory.total / MIB,
            memory_used_mib: memory.used / MIB,
            utilization_pct,
            processes,
        })
    }
}

impl GpuProbe for NvmlProbe {
    fn kind(&self) -> &'static str {
        "nvml"
    }

    fn probe(&self) -> Result<Vec<GpuInfo>, ProbeError> {
        let count = self.nvml.device_count().map_err(nvml_error("device_count"))?;
        (0..count).map(|index| self.device(index)).collect()
    }
}
