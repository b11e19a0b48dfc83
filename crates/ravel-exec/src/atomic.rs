//! Replacing a JSON file atomically: readers see either the old or the new content, never a
//! torn write, because the new content goes to a temp file in the same directory first and is
//! then renamed over the target.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

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

/// Writes `value` as JSON to `path` atomically, fsynced if `durability` says so.
///
/// Safe in a directory another user owns (a run dir on a shared box): the temp file is created
/// with O_EXCL, which never follows a symlink, under a name that is hard to guess and retried if
/// taken; and rename replaces whatever is at `path`, a planted symlink included, instead of
/// writing through it. That user can still replace the file afterwards, as with anything in their
/// directory: they can lie about their own job, never write elsewhere as root.
pub fn write_json<T: Serialize>(path: &Path, value: &T, durability: Durability) -> io::Result<()> {
    write_json_mode(path, value, durability, 0o666)
}

/// [`write_json`] durably, for a file that holds secrets: readable and writable by its owner
/// only (mode 0600), from the moment it is created.
pub fn write_json_private<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    write_json_mode(path, value, Durability::Synced, 0o600)
}

/// `mode` is the new file's, before the umask.
fn write_json_mode<T: Serialize>(path: &Path, value: &T, durability: Durability, mode: u32) -> io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    bytes.push(b'\n');
    let dir = parent_dir(path);
    let (temp, file) = create_temp(path, dir, mode)?;
    let written = write_temp(file, &bytes, durability).and_then(|()| fs::rename(&temp, path));
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

/// Tries this many temp names before giving up (each taken one was planted or left by a crash).
const TEMP_TRIES: u32 = 16;

fn create_temp(path: &Path, dir: &Path, mode: u32) -> io::Result<(PathBuf, File)> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut tries = 0;
    loop {
        let temp = temp_path(path, dir)?;
        // create_new is O_CREAT|O_EXCL: fails on any existing entry, symlinks included.
        match OpenOptions::new().write(true).create_new(true).mode(mode).open(&temp) {
            Ok(file) => return Ok((temp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries + 1 < TEMP_TRIES => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

fn write_temp(mut file: File, bytes: &[u8], durability: Durability) -> io::Result<()> {
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

/// A fresh name in `dir` for a temp file (or directory) that will become `path`:
/// `.<name>.<pid>.<seq>.<nanos>.tmp`.
pub(crate) fn temp_path(path: &Path, dir: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{} has no file name", path.display())))?;
    let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
    // The clock's nanoseconds make the name hard to plant in advance; pid and seq make it unique.
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{}.{seq}.{nanos:08x}.tmp", std::process::id()));
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
    fn a_symlink_in_place_of_the_file_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, "precious").unwrap();
        let path = dir.path().join("exit.json");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        write_json(&path, &7, Durability::Synced).unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious");
        assert!(!fs::symlink_metadata(&path).unwrap().file_type().is_symlink());
        assert_eq!(fs::read_to_string(&path).unwrap(), "7\n");
    }

    #[test]
    fn missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope").join("run.json");
        assert!(write_json_atomic(&path, &1).is_err());
    }
}
