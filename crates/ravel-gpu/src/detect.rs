//! Choosing the probe for this node, once, at daemon start.

use crate::{FakeProbe, GpuProbe, NoGpus, NvmlProbe, SmiProbe};

/// Fake GPUs a node reports under `RAVEL_NO_GPU=1`: enough for multi-GPU
/// jobs in tests on GPU-less machines.
const NO_GPU_FAKE_COUNT: u32 = 8;

/// Picks the probe from the process environment. See [`detect_with`].
pub fn detect() -> Box<dyn GpuProbe> {
    detect_with(&|name| std::env::var(name).ok())
}

/// Picks the probe, reading variables through `env` (so tests need not mutate
/// the process environment). In order of preference:
///
/// - `RAVEL_FAKE_GPUS=N` (an integer): N idle fake GPUs.
/// - `RAVEL_FAKE_GPUS=<path>`: fake GPUs from a JSON file re-read on every probe.
/// - `RAVEL_NO_GPU=1`: 8 idle fake GPUs, without touching hardware.
/// - NVML, if the driver library loads.
/// - `nvidia-smi` from `PATH`, if it is there and a first probe succeeds.
/// - No GPUs.
pub fn detect_with(env: &dyn Fn(&str) -> Option<String>) -> Box<dyn GpuProbe> {
    let probe = choose(env);
    tracing::info!(kind = probe.kind(), "GPU probe selected");
    probe
}

fn choose(env: &dyn Fn(&str) -> Option<String>) -> Box<dyn GpuProbe> {
    // An empty value counts as unset, so `RAVEL_FAKE_GPUS= ravel ...` can
    // switch the fake off without unsetting it.
    if let Some(value) = env("RAVEL_FAKE_GPUS").filter(|v| !v.trim().is_empty()) {
        let value = value.trim();
        return match value.parse::<u32>() {
            Ok(n) => Box::new(FakeProbe::idle(n)),
            Err(_) => {
                tracing::info!(path = value, "fake GPUs read from file");
                Box::new(FakeProbe::from_file(value))
            }
        };
    }
    if env("RAVEL_NO_GPU").is_some_and(|v| matches!(v.trim(), "1" | "true")) {
        return Box::new(FakeProbe::idle(NO_GPU_FAKE_COUNT));
    }
    match NvmlProbe::init() {
        Ok(nvml) => return Box::new(nvml),
        // Expected on every machine without the NVIDIA driver, hence debug.
        Err(e) => tracing::debug!(error = %e, "NVML unavailable"),
    }
    if let Some(smi) = env("PATH").as_deref().and_then(SmiProbe::locate) {
        // Being on PATH is not enough: without a working driver nvidia-smi
        // exists but fails, and every later probe would fail the same way.
        match smi.probe() {
            Ok(_) => return Box::new(smi),
            Err(e) => tracing::debug!(error = %e, "nvidia-smi unusable"),
        }
    }
    Box::new(NoGpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn integer_gives_that_many_fake_gpus() {
        let probe = detect_with(&env_of(&[("RAVEL_FAKE_GPUS", "3")]));
        assert_eq!(probe.kind(), "fake");
        assert_eq!(probe.probe().unwrap().len(), 3);
    }

    #[test]
    fn no_gpu_gives_eight_fake_gpus() {
        let probe = detect_with(&env_of(&[("RAVEL_NO_GPU", "1")]));
        assert_eq!(probe.kind(), "fake");
        assert_eq!(probe.probe().unwrap().len(), 8);
    }

    #[test]
    fn fake_gpus_take_precedence_over_no_gpu() {
        let probe = detect_with(&env_of(&[("RAVEL_NO_GPU", "1"), ("RAVEL_FAKE_GPUS", " 2 ")]));
        assert_eq!(probe.probe().unwrap().len(), 2);
    }

    #[test]
    fn path_gives_a_file_probe() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpus.json");
        let probe = detect_with(&env_of(&[("RAVEL_FAKE_GPUS", path.to_str().unwrap())]));
        assert_eq!(probe.kind(), "fake");
        // Read at probe time, not at detection: the file may appear later.
        assert!(probe.probe().is_err());
        std::fs::write(
            &path,
            r#"[{"index":0,"name":"From file","memory_total_mib":100,"memory_used_mib":5,"utilization_pct":1}]"#,
        )
        .unwrap();
        let gpus = probe.probe().unwrap();
        assert_eq!(gpus.len(), 1);
        assert_eq!(gpus[0].name, "From file");
    }

    #[test]
    fn nothing_set_falls_back_to_hardware_without_panicking() {
        // The real PATH, but none of Ravel's variables. On GPU-less machines
        // this is "none" (or "nvidia-smi" if a working one is installed).
        let real_path = std::env::var("PATH").ok();
        let env = move |name: &str| {
            if name == "PATH" { real_path.clone() } else { None }
        };
        let probe = detect_with(&env);
        assert!(matches!(probe.kind(), "none" | "nvidia-smi" | "nvml"), "{}", probe.kind());
        let _ = probe.probe();
    }

    #[test]
    fn without_path_or_driver_there_are_no_gpus() {
        let probe = detect_with(&env_of(&[("RAVEL_FAKE_GPUS", ""), ("RAVEL_NO_GPU", "0")]));
        if probe.kind() != "nvml" {
            assert_eq!(probe.kind(), "none");
            assert_eq!(probe.probe().unwrap(), vec![]);
        }
    }
}
