//! Replacing a JSON file atomically: readers see either the old or the new content, never a
//! torn write, because the new content goes to a temp file in the same directory first and is
//! then renamed over the target.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Distinguishes temp files of concurrent writers within one process (pid covers the rest).
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Writes `value` as JSON to `path` durably: temp file, fsync, rename, fsync of the directory
/// (so the rename itself survives a crash).
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    write_json(path, value, Durability::Synced)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Durability {
    /// Survives a machine crash.
    Synced,
    /// Atomic for readers but not flushed: for files that are worthless after a crash anyway
    /// and sit on a latency-sensitive path (launch.json).
    Unsynced,
}

pub fn write_json<T: Serialize>(path: &Path, value: &T, durability: Durability) -> io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    bytes.push(b'\n');
    let dir = parent_dir(path);
    let temp = temp_path(path, dir)?;
    let written = write_temp(&temp, &bytes, durability).and_then(|()| fs::rename(&temp, path));
    if let Err(e) = written {
        // Best effort: a leftover temp file is harmless but clutters the run dir.
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    if durability == Durability::Synced {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn write_temp(temp: &Path, bytes: &[u8], durability: Durability) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(temp)?;
    file.write_all(bytes)?;
    if durability == Durability::Synced {
        file.sync_all()?;
    }
    Ok(())
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn temp_path(path: &Path, dir: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{} has no file name", path.display())))?;
    let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{}.{seq}.tmp", std::process::id()));
    Ok(dir.join(temp_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.json");
        write_json_atomic(&path, &vec![1, 2, 3]).unwrap();
        write_json(&path, &vec![4], Durability::Unsynced).unwrap();
        let back: Vec<i32> = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, vec![4]);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("run.json")]);
    }

    #[test]
    fn missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope").join("run.json");
        assert!(write_json_atomic(&path, &1).is_err());
    }
}
