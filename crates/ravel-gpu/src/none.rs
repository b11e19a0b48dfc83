//! The probe for machines with no usable GPU backend.

use crate::{GpuInfo, GpuProbe, ProbeError};

/// Reports no GPUs. Chosen last by [`crate::detect`], so a CPU-only node still
/// runs jobs that ask for zero GPUs.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoGpus;

impl GpuProbe for NoGpus {
    fn kind(&self) -> &'static str {
        "none"
    }

    fn probe(&self) -> Result<Vec<GpuInfo>, ProbeError> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_an_empty_inventory() {
        assert_eq!(NoGpus.kind(), "none");
        assert_eq!(NoGpus.probe().unwrap(), Vec::new());
    }
}
