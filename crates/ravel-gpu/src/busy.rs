//! Deciding whether a GPU is busy with work Ravel did not start.

use crate::GpuInfo;

/// How much use of an unallocated GPU makes the scheduler keep off it.
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    /// Busy at or above this utilization percentage.
    pub util_pct: u32,
    /// Busy when used memory is at or above this percentage of total.
    pub mem_pct: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { util_pct: 20, mem_pct: 10 }
    }
}

impl GpuInfo {
    /// Memory in use: max(memory_used_mib, sum of processes' used_memory_mib).
    ///
    /// Both are taken because backends disagree: some report per-process
    /// memory but a stale or zero device total, others the reverse.
    pub fn used_memory_mib(&self) -> u64 {
        let by_processes = self.processes.iter().map(|p| p.used_memory_mib).fold(0u64, u64::saturating_add);
        self.memory_used_mib.max(by_processes)
    }

    /// Some(human reason) when the GPU is busy with use outside Ravel:
    /// utilization >= util_pct, or used memory >= mem_pct% of total.
    ///
    /// The reason names the biggest process when there is one ("foreign
    /// process pid 4242 using 40000 MiB"), else "utilization 35%" or
    /// "memory 12000/81920 MiB in use". The caller only asks this for GPUs
    /// Ravel has not allocated, so all use counts as foreign.
    ///
    /// A GPU with no utilization and no memory in use is never busy, even with
    /// zero thresholds: there is nothing foreign on it to report.
    pub fn foreign_busy(&self, t: &Thresholds) -> Option<String> {
        let used = self.used_memory_mib();
        let util_busy = self.utilization_pct > 0 && self.utilization_pct >= t.util_pct;
        // Integer cross-multiplication so 9.9% stays below a 10% threshold
        // without float rounding; u128 so no input can overflow.
        let mem_busy = used > 0 && u128::from(used) * 100 >= u128::from(t.mem_pct) * u128::from(self.memory_total_mib);
        if !util_busy && !mem_busy {
            return None;
        }
        let biggest = self.processes.iter().max_by_key(|p| p.used_memory_mib);
        Some(match biggest {
            Some(p) => format!("foreign process pid {} using {} MiB", p.pid, p.used_memory_mib),
            None if util_busy => format!("utilization {}%", self.utilization_pct),
            None => format!("memory {used}/{} MiB in use", self.memory_total_mib),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GpuProcess;

    fn gpu(total: u64, used: u64, util: u32) -> GpuInfo {
        GpuInfo {
            index: 0,
            name: "Test GPU".into(),
            uuid: None,
            memory_total_mib: total,
            memory_used_mib: used,
            utilization_pct: util,
            processes: Vec::new(),
        }
    }

    #[test]
    fn default_thresholds_are_20_util_and_10_mem() {
        let t = Thresholds::default();
        assert_eq!((t.util_pct, t.mem_pct), (20, 10));
    }

    #[test]
    fn utilization_threshold_is_inclusive() {
        let t = Thresholds::default();
        assert_eq!(gpu(81920, 0, 19).foreign_busy(&t), None);
        assert_eq!(gpu(81920, 0, 20).foreign_busy(&t).as_deref(), Some("utilization 20%"));
    }

    #[test]
    fn memory_threshold_is_inclusive() {
        let t = Thresholds::default();
        assert_eq!(gpu(1000, 99, 0).foreign_busy(&t), None);
        assert_eq!(gpu(1000, 100, 0).foreign_busy(&t).as_deref(), Some("memory 100/1000 MiB in use"));
    }

    #[test]
    fn process_memory_counts_when_device_reports_none() {
        let mut g = gpu(81920, 0, 0);
        g.processes = vec![GpuProcess { pid: 7, used_memory_mib: 5000 }, GpuProcess { pid: 8, used_memory_mib: 4000 }];
        assert_eq!(g.used_memory_mib(), 9000);
        // 9000 of 81920 is 11%: busy, and the reason names the bigger process.
        assert_eq!(g.foreign_busy(&Thresholds::default()).as_deref(), Some("foreign process pid 7 using 5000 MiB"));
    }

    #[test]
    fn device_memory_wins_when_larger_than_processes() {
        let mut g = gpu(81920, 12000, 0);
        g.processes = vec![GpuProcess { pid: 7, used_memory_mib: 100 }];
        assert_eq!(g.used_memory_mib(), 12000);
    }

    #[test]
    fn idle_gpu_is_free_even_with_zero_thresholds() {
        let t = Thresholds { util_pct: 0, mem_pct: 0 };
        assert_eq!(gpu(81920, 0, 0).foreign_busy(&t), None);
        assert_eq!(gpu(0, 0, 0).foreign_busy(&t), None);
        assert!(gpu(81920, 1, 0).foreign_busy(&t).is_some());
    }

    #[test]
    fn utilization_reason_wins_over_memory_without_processes() {
        let g = gpu(1000, 500, 50);
        assert_eq!(g.foreign_busy(&Thresholds::default()).as_deref(), Some("utilization 50%"));
    }
}
