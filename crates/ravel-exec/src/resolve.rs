//! Finding the job's program the way a shell started with the job's environment would.
//!
//! The lookup is done here rather than left to `execvp` after `env_clear`: it must use the
//! job's `PATH`, not the supervisor's, and doing it before fork tells "not found" (127) from
//! "not executable" (126) without depending on how std searches.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Search path when the job's environment has no `PATH` (glibc's `execvp` default).
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// Resolves `program` against the `PATH` in `env` (the last definition wins, as with
/// `Command::envs`). Names containing `/` are used as they are, relative to the job's
/// working directory (made explicit here: std leaves relative programs combined with
/// `current_dir` platform-specific). Relative `PATH` entries (including the empty one, meaning `.`) are
/// relative to `cwd` too, since that is where the job runs.
pub(crate) fn find_program(program: &str, env: &[(String, String)], cwd: &Path) -> io::Result<PathBuf> {
    if program.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    if program.contains('/') {
        return Ok(cwd.join(program));
    }
    let path_var = env.iter().rev().find(|(k, _)| k == "PATH").map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    let mut found_unexecutable = false;
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = cwd.join(dir).join(program);
        if !candidate.is_file() {
            continue;
        }
        if is_executable(&candidate) {
            return Ok(candidate);
        }
        found_unexecutable = true;
    }
    let errno = if found_unexecutable { libc::EACCES } else { libc::ENOENT };
    Err(io::Error::from_raw_os_error(errno))
}

fn is_executable(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c_path` is a valid NUL-terminated string for the duration of the call.
    unsafe { libc::access(c_path.as_ptr(), libc::X_OK) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn env_path(path: &str) -> Vec<(String, String)> {
        vec![("PATH".to_owned(), path.to_owned())]
    }

    fn make_file(path: &Path, mode: u32) {
        fs::write(path, "#!/bin/sh\n").unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn uses_the_jobs_path_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        make_file(&a.join("tool"), 0o644);
        make_file(&b.join("tool"), 0o755);
        let path = format!("{}:{}", a.display(), b.display());
        let found = find_program("tool", &env_path(&path), Path::new("/")).unwrap();
        assert_eq!(found, b.join("tool"));
    }

    #[test]
    fn last_path_definition_wins() {
        let dir = tempfile::tempdir().unwrap();
        make_file(&dir.path().join("tool"), 0o755);
        let mut env = env_path("/nonexistent");
        env.extend(env_path(&dir.path().display().to_string()));
        assert!(find_program("tool", &env, Path::new("/")).is_ok());
    }

    #[test]
    fn not_found_and_not_executable_differ() {
        let dir = tempfile::tempdir().unwrap();
        make_file(&dir.path().join("plain"), 0o644);
        let env = env_path(&dir.path().display().to_string());
        let missing = find_program("missing", &env, Path::new("/")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        // Root may execute anything with an x bit, but not a file with none at all.
        let plain = find_program("plain", &env, Path::new("/")).unwrap_err();
        assert_eq!(plain.raw_os_error(), Some(libc::EACCES));
    }

    #[test]
    fn relative_entries_are_relative_to_cwd() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("bin")).unwrap();
        make_file(&dir.path().join("bin").join("tool"), 0o755);
        let found = find_program("tool", &env_path("bin"), dir.path()).unwrap();
        assert_eq!(found, dir.path().join("bin").join("tool"));
        make_file(&dir.path().join("here"), 0o755);
        assert!(find_program("here", &env_path(":/nonexistent"), dir.path()).is_ok());
    }

    #[test]
    fn names_with_a_slash_are_not_searched() {
        let found = find_program("./x", &env_path("/nonexistent"), Path::new("/w")).unwrap();
        assert_eq!(found, PathBuf::from("/w/./x"));
        let found = find_program("/bin/x", &env_path("/nonexistent"), Path::new("/w")).unwrap();
        assert_eq!(found, PathBuf::from("/bin/x"));
    }

    #[test]
    fn directories_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("tool")).unwrap();
        let env = env_path(&dir.path().display().to_string());
        assert!(find_program("tool", &env, Path::new("/")).is_err());
    }
}
