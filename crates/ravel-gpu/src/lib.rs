//! GPU inventory for the scheduler: what GPUs a node has and how busy they are.
//!
//! This is the only crate that names NVML. Everything else sees [`GpuInfo`]
//! snapshots through the [`GpuProbe`] trait, and picks a probe once with
//! [`detect`]: a fake inventory for tests and GPU-less machines, NVML when the
//! driver library loads, `nvidia-smi` when only the tool is there, or nothing.

mod busy;
mod detect;
mod fake;
mod none;
mod nvml;
mod smi;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use busy::Thresholds;
pub use detect::{detect, detect_with};
pub use fake::FakeProbe;
pub use none::NoGpus;
pub use nvml::NvmlProbe;
pub use smi::{SmiProbe, parse_smi};

/// One GPU as seen at probe time.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct GpuInfo {
    pub index: u32,
    pub name: String,
    /// Absent when the driver would not say (and in hand-written fake files).
    #[serde(default)]
    pub uuid: Option<String>,
    pub memory_total_mib: u64,
    pub memory_used_mib: u64,
    pub utilization_pct: u32,
    /// Compute processes on this GPU. Optional in fake files so that an idle
    /// GPU can be written as just its numbers.
    #[serde(default)]
    pub processes: Vec<GpuProcess>,
}

/// A compute process holding memory on a GPU.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct GpuProcess {
    pub pid: u32,
    pub used_memory_mib: u64,
}

/// Why a probe could not produce an inventory.
///
/// Causes are carried as text in the message (rather than as `source()`), so
/// that logging the error with `%err` already says everything.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot read fake GPU file {}: {error}", path.display())]
    FakeFileRead { path: PathBuf, error: std::io::Error },
    #[error("fake GPU file {} is not a JSON list of GPUs: {error}", path.display())]
    FakeFileParse { path: PathBuf, error: serde_json::Error },
    #[error("NVML {call} failed: {message}")]
    Nvml { call: String, message: String },
    #[error("cannot run {}: {error}", program.display())]
    SmiSpawn { program: PathBuf, error: std::io::Error },
    #[error("{command} failed ({status}): {stderr}")]
    SmiFailed { command: String, status: String, stderr: String },
    #[error("{command} did not finish within {secs}s and was killed")]
    SmiTimeout { command: String, secs: u64 },
    #[error("unexpected nvidia-smi output line {line:?}: {reason}")]
    SmiParse { line: String, reason: String },
}

/// A source of GPU inventory. Implementations are cheap to call repeatedly:
/// the agent probes on every heartbeat.
pub trait GpuProbe: Send + Sync {
    /// Short name of the backend, for logs and the node's status ("fake",
    /// "nvml", "nvidia-smi", "none").
    fn kind(&self) -> &'static str;
    /// A fresh snapshot of every GPU, in index order.
    fn probe(&self) -> Result<Vec<GpuInfo>, ProbeError>;
}
