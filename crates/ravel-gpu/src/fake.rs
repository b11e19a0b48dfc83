//! Fake GPU inventories: a fixed set of idle GPUs, or a JSON file that tests
//! rewrite while the daemon runs.

use std::path::{Path, PathBuf};

use crate::{GpuInfo, GpuProbe, ProbeError};

/// Memory of each idle fake GPU: an 80 GiB card, so memory-sized requests in
/// tests behave as on a typical training node.
const IDLE_MEMORY_MIB: u64 = 81920;

/// A probe that never touches hardware.
#[derive(Clone, Debug)]
pub struct FakeProbe {
    source: Source,
}

#[derive(Clone, Debug)]
enum Source {
    Fixed(Vec<GpuInfo>),
    /// Re-read on every probe so a test can change the world under a running
    /// daemon (e.g. make a foreign process appear).
    File(PathBuf),
}

impl FakeProbe {
    /// `n` idle GPUs with indices 0..n, named "Fake GPU", 81920 MiB each.
    pub fn idle(n: u32) -> Self {
        let gpus = (0..n)
            .map(|index| GpuInfo {
                index,
                name: "Fake GPU".to_owned(),
                uuid: None,
                memory_total_mib: IDLE_MEMORY_MIB,
                memory_used_mib: 0,
                utilization_pct: 0,
                processes: Vec::new(),
            })
            .collect();
        FakeProbe { source: Source::Fixed(gpus) }
    }

    /// GPUs read from a JSON list of [`GpuInfo`] at `path` on every probe.
    /// The file need not exist yet; a missing or malformed file is an error
    /// from [`GpuProbe::probe`], not here.
    pub fn from_file(path: impl Into<PathBuf>) -> Self {
        FakeProbe { source: Source::File(path.into()) }
    }
}

fn read_file(path: &Path) -> Result<Vec<GpuInfo>, ProbeError> {
    let text =
        std::fs::read_to_string(path).map_err(|error| ProbeError::FakeFileRead { path: path.to_owned(), error })?;
    serde_json::from_str(&text).map_err(|error| ProbeError::FakeFileParse { path: path.to_owned(), error })
}

impl GpuProbe for FakeProbe {
    fn kind(&self) -> &'static str {
        "fake"
    }

    fn probe(&self) -> Result<Vec<GpuInfo>, ProbeError> {
        match &self.source {
            Source::Fixed(gpus) => Ok(gpus.clone()),
            Source::File(path) => read_file(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GpuProcess, Thresholds};

    /// Writes via temp file + rename, as tests must, so a concurrent probe
    /// never sees a half-written file.
    fn write_atomically(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn idle_gives_n_free_gpus_in_index_order() {
        let gpus = FakeProbe::idle(4).probe().unwrap();
        assert_eq!(gpus.iter().map(|g| g.index).collect::<Vec<_>>(), [0, 1, 2, 3]);
        for g in &gpus {
            assert_eq!(g.name, "Fake GPU");
            assert_eq!(g.memory_total_mib, 81920);
            assert_eq!(g.used_memory_mib(), 0);
            assert_eq!(g.foreign_busy(&Thresholds::default()), None);
        }
        assert!(FakeProbe::idle(0).probe().unwrap().is_empty());
    }

    #[test]
    fn file_is_reread_on_every_probe() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpus.json");
        write_atomically(
            &path,
            r#"[{"index":0,"name":"A","memory_total_mib":81920,"memory_used_mib":0,"utilization_pct":0},
                {"index":1,"name":"B","memory_total_mib":81920,"memory_used_mib":0,"utilization_pct":0}]"#,
        );
        let probe = FakeProbe::from_file(&path);
        assert_eq!(probe.kind(), "fake");
        let before = probe.probe().unwrap();
        assert_eq!(before.len(), 2);
        assert!(before.iter().all(|g| g.processes.is_empty() && g.uuid.is_none()));
        assert_eq!(before[1].foreign_busy(&Thresholds::default()), None);

        write_atomically(
            &path,
            r#"[{"index":0,"name":"A","memory_total_mib":81920,"memory_used_mib":0,"utilization_pct":0},
                {"index":1,"name":"B","uuid":"GPU-b","memory_total_mib":81920,"memory_used_mib":0,
                 "utilization_pct":0,"processes":[{"pid":4242,"used_memory_mib":40000}]}]"#,
        );
        let after = probe.probe().unwrap();
        assert_eq!(after[1].uuid.as_deref(), Some("GPU-b"));
        assert_eq!(after[1].processes, [GpuProcess { pid: 4242, used_memory_mib: 40000 }]);
        let reason = after[1].foreign_busy(&Thresholds::default()).unwrap();
        assert!(reason.contains("4242"), "{reason}");
        assert_eq!(after[0].foreign_busy(&Thresholds::default()), None);
    }

    #[test]
    fn malformed_file_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.json");
        write_atomically(&path, r#"[{"index":0,"name":"A"}"#);
        let err = FakeProbe::from_file(&path).probe().unwrap_err();
        assert!(matches!(err, ProbeError::FakeFileParse { .. }), "{err:?}");
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    }

    #[test]
    fn missing_file_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.json");
        let err = FakeProbe::from_file(&path).probe().unwrap_err();
        assert!(matches!(err, ProbeError::FakeFileRead { .. }), "{err:?}");
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    }
}
