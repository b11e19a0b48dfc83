//! Starting a supervisor for one job attempt: preparing the run dir and spawning
//! `EXE __supervise RUN_DIR -` detached from the caller's session, or handing it to a supervisor
//! started ahead (`EXE __supervise --standby`).

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use crate::error::ExecError;
use crate::records::{self, LaunchSpec, OUTPUTS_DIR, Order};
use crate::{procfs, signals, spawn};

/// The hidden subcommand of the `ravel` binary that must call [`crate::supervise_main`].
pub const SUPERVISE_SUBCOMMAND: &str = "__supervise";

/// A started supervisor, identified by pid and start time (see [`crate::is_same_process`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launched {
    pub pid: i32,
    pub start_time: u64,
}

/// Creates `outputs/`, spawns `exe __supervise RUN_DIR -` in a new session with stdio on
/// /dev/null but for stdin, a socket that carries the launch spec, and returns the supervisor's
/// pid and start time. The supervisor is the caller's child: the caller reaps it (see
/// [`crate::reap`]). Returns once the supervisor has been exec'd; it does not wait for the job.
///
/// `posix_spawn` (vfork-style in glibc) rather than fork: the daemon is multi-threaded, and
/// fork would copy its page tables and shoot down TLBs on every launch. The spec goes through
/// a socket rather than a file to keep inode creation (costly on ext4) off the dispatch path.
pub fn launch(exe: &Path, run_dir: &Path, spec: &LaunchSpec) -> Result<Launched, ExecError> {
    let run_dir = prepare(run_dir, spec)?;
    let json = serde_json::to_vec(spec)
        .map_err(|e| ExecError::SpawnSupervisor { exe: exe.to_owned(), source: std::io::Error::other(e) })?;
    let (launched, mut channel) =
        spawn_supervisor(exe, &[OsStr::new(SUPERVISE_SUBCOMMAND), run_dir.as_os_str(), OsStr::new(SPEC_FROM_STDIN)])?;
    // A supervisor that died before reading leaves EPIPE here; its end is noticed by the
    // caller's watch like any other. Dropping the channel ends the spec.
    let _ = channel.write_all(&json);
    Ok(launched)
}

/// A supervisor started ahead of its attempt (`exe __supervise --standby`, or forked by the
/// [`crate::Zygote`]), waiting on its stdin, one end of a socket pair, for an order: a run dir
/// and a spec. Handing it an attempt ([`Standby::hand_over`]) takes the start of a process off
/// the dispatch path.
///
/// A supervisor serves attempts one after another: once an attempt's `exit.json` is written it
/// sends one byte back on the socket ([`Standby::finished`]) and waits for the next order, so
/// that a busy queue does not pay for a fork and an exit per job. It exits at the end of its
/// input: dropped before an order, a standby runs nothing; dropped while it supervises, it
/// exits once that attempt is recorded.
#[derive(Debug)]
pub struct Standby {
    launched: Launched,
    channel: UnixStream,
    child: bool,
}

/// What a supervisor's socket said once readable (see [`Standby::finished`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finished {
    /// Its attempt is over and recorded in `exit.json`; it waits for another order.
    Ready,
    /// The end of its side: the supervisor has exited (or is exiting).
    Gone,
}

impl Standby {
    /// Starts a standby by exec, as the caller's child (see also [`crate::Zygote::standby`]).
    pub fn spawn(exe: &Path) -> Result<Standby, ExecError> {
        let (launched, channel) = spawn_supervisor(exe, &[OsStr::new(SUPERVISE_SUBCOMMAND), OsStr::new(STANDBY)])?;
        Ok(Standby { launched, channel, child: true })
    }

    pub(crate) fn from_parts(launched: Launched, channel: OwnedFd, child: bool) -> Standby {
        Standby { launched, channel: UnixStream::from(channel), child }
    }

    /// Whether the standby is the caller's child (which must reap it), or the zygote's.
    pub fn is_child(&self) -> bool {
        self.child
    }

    /// Who the standby is; the attempt it is handed runs under this identity.
    pub fn launched(&self) -> Launched {
        self.launched
    }

    /// Prepares `run_dir` as [`launch`] does and hands the attempt over; returns the standby,
    /// now supervising it. An error means the run dir could not be prepared: the standby was
    /// given nothing and exits. A standby that died before reading gets nothing either, and
    /// its end is noticed by the caller's watch.
    pub fn hand_over(mut self, run_dir: &Path, spec: &LaunchSpec) -> Result<Standby, ExecError> {
        let run_dir = prepare(run_dir, spec)?;
        // Only a path that is not UTF-8 fails to serialise.
        let order = records::order_frame(&Order { run_dir: &run_dir, spec })
            .map_err(|e| ExecError::CreateDir { path: run_dir.clone(), source: std::io::Error::other(e) })?;
        let _ = self.channel.write_all(&order);
        Ok(self)
    }

    /// Reads what the supervisor sent since its last order, without blocking: `WouldBlock`
    /// while its attempt runs. Meant for a caller that polls the socket ([`AsRawFd`]).
    pub fn finished(&self) -> std::io::Result<Finished> {
        let mut byte = [0u8; 1];
        // SAFETY: recv into a valid one-byte buffer on a socket we own.
        let n = unsafe { libc::recv(self.channel.as_raw_fd(), byte.as_mut_ptr().cast(), 1, libc::MSG_DONTWAIT) };
        match n {
            0 => Ok(Finished::Gone),
            n if n > 0 => Ok(Finished::Ready),
            _ => Err(std::io::Error::last_os_error()),
        }
    }
}

impl AsRawFd for Standby {
    /// The daemon's end of the supervisor's socket: readable once its attempt is over.
    fn as_raw_fd(&self) -> RawFd {
        self.channel.as_raw_fd()
    }
}

/// The run dir, absolute, with its `outputs/` made (and both handed to the job's user).
fn prepare(run_dir: &Path, spec: &LaunchSpec) -> Result<PathBuf, ExecError> {
    if spec.command.is_empty() {
        return Err(ExecError::EmptyCommand { run_dir: run_dir.to_owned() });
    }
    // The supervisor inherits our working directory, but callers may change theirs later
    // (and logs should name unambiguous paths).
    let run_dir = absolute(run_dir)?;
    let outputs = run_dir.join(OUTPUTS_DIR);
    make_dirs(&run_dir, &outputs).map_err(|source| ExecError::CreateDir { path: outputs.clone(), source })?;
    if let Some(user) = &spec.run_as {
        give_run_dir(&run_dir, user.uid, user.gid)?;
    }
    Ok(run_dir)
}

/// Makes `outputs` in `run_dir`, and `run_dir` and its parent if missing. The usual case, a new
/// job's first attempt, is three mkdirs from the top down (`create_dir_all` starts at the bottom
/// and fails twice on the way up). A missing grandparent (the first job of a group,
/// `runs/<n>k/`) is made by [`make_group_dir`] when its own parent exists, else with the rest
/// by `create_dir_all`.
fn make_dirs(run_dir: &Path, outputs: &Path) -> std::io::Result<()> {
    let made = |dir: &Path| match fs::create_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        r => r,
    };
    let top_down = || run_dir.parent().map_or(Ok(()), made).and_then(|()| made(run_dir)).and_then(|()| made(outputs));
    match top_down() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let group = run_dir.parent().and_then(Path::parent);
            match group {
                Some(group) if group.parent().is_some_and(Path::is_dir) => {
                    make_group_dir(group).and_then(|()| top_down())
                }
                _ => fs::create_dir_all(outputs),
            }
        }
        r => r,
    }
}

/// Makes the directory `dir` under a name of its own in the same parent, then renames it into
/// place (if nothing else has made `dir` meanwhile; if something has, ours is removed).
///
/// On ext4 a directory made in a "top of hierarchy" directory (`runs/`, see
/// [`spread_subdirectories`]) goes to the block group with the fewest directories, searched
/// from a group chosen by a hash of its name: every home's first group dir, `0k`, started that
/// search at the same group and so landed where the last deleted homes' `0k` had been, among
/// the inodes they freed, which the allocator skips one at a time for minutes afterwards (200
/// to 400 µs per new inode instead of 13, measured: bench/README.md). A name of its own starts
/// the search somewhere else each time. An emptied group can still be the one with the fewest
/// directories: so an unnamed file (`O_TMPFILE`, freed at once) is made in the new directory,
/// where the jobs' files will go, and if that was slow another directory is made, which the
/// search now places elsewhere; of up to [`GROUP_DIR_TRIES`] the fastest is kept. Renaming does
/// not move the directory's inode, and the jobs' directories and files are then allocated
/// beside it.
fn make_group_dir(dir: &Path) -> std::io::Result<()> {
    make_group_dir_within(dir, SLOW_GROUP_DIR)
}

/// A new inode takes 12 to 17 µs on a settled ext4 here, 200 to 400 among inodes freed minutes
/// ago.
const SLOW_GROUP_DIR: std::time::Duration = std::time::Duration::from_micros(100);
const GROUP_DIR_TRIES: usize = 4;

fn make_group_dir_within(dir: &Path, slow: std::time::Duration) -> std::io::Result<()> {
    let Some(parent) = dir.parent() else {
        return fs::create_dir(dir);
    };
    let mut made: Vec<(PathBuf, std::time::Duration)> = Vec::with_capacity(GROUP_DIR_TRIES);
    let mut error = None;
    while made.len() < GROUP_DIR_TRIES && made.last().is_none_or(|(_, took)| *took >= slow) {
        match crate::atomic::temp_path(dir, parent).and_then(|temp| fs::create_dir(&temp).map(|()| temp)) {
            Ok(temp) => {
                let took = new_inode_cost(&temp);
                made.push((temp, took));
            }
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let fastest = made.iter().enumerate().min_by_key(|(_, (_, took))| *took).map(|(i, _)| i);
    let kept = fastest.map(|i| made.swap_remove(i).0);
    for (temp, _) in made {
        let _ = fs::remove_dir(temp);
    }
    let Some(temp) = kept else {
        return Err(error.unwrap_or_else(|| std::io::Error::other("no group dir made")));
    };
    match rename_noreplace(&temp, dir) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = fs::remove_dir(&temp);
            match e.kind() {
                std::io::ErrorKind::AlreadyExists => Ok(()),
                // A filesystem without RENAME_NOREPLACE: made the usual way.
                _ if e.raw_os_error() == Some(libc::EINVAL) => match fs::create_dir(dir) {
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                    r => r,
                },
                _ => Err(e),
            }
        }
    }
}

/// How long an unnamed file in `dir` took to make: what a new inode costs there. Zero where
/// the filesystem has no `O_TMPFILE`.
fn new_inode_cost(dir: &Path) -> std::time::Duration {
    use std::os::unix::fs::OpenOptionsExt;
    let started = std::time::Instant::now();
    match fs::OpenOptions::new().write(true).mode(0o600).custom_flags(libc::O_TMPFILE).open(dir) {
        Ok(file) => {
            let took = started.elapsed();
            drop(file);
            took
        }
        Err(_) => std::time::Duration::ZERO,
    }
}

/// `rename(from, to)` that fails with `AlreadyExists` instead of replacing an existing `to`.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: renameat2 with two NUL-terminated paths relative to the working directory.
    let r =
        unsafe { libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::RENAME_NOREPLACE) };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Spawns `exe args` detached, its stdin one end of a new socket pair whose other end is
/// returned.
fn spawn_supervisor(exe: &Path, args: &[&OsStr]) -> Result<(Launched, UnixStream), ExecError> {
    let spawn_err = |source: std::io::Error| ExecError::SpawnSupervisor { exe: exe.to_owned(), source };
    let (ours, theirs) = UnixStream::pair().map_err(spawn_err)?;
    let pid = spawn::spawn_detached(exe, args, theirs.as_raw_fd(), &signals::watched()).map_err(spawn_err)?;
    drop(theirs);
    // Not yet reaped, so /proc/PID exists even if the supervisor already exited.
    let start_time = procfs::process_start_time(pid).ok_or(ExecError::StartTime { pid })?;
    Ok((Launched { pid, start_time }, ours))
}

/// Makes the attempt's dir and its `outputs/` the job's user's alone: owned by `uid:gid`, mode
/// 0700. Done on descriptors opened without following a symlink in either place, `outputs/`
/// found relative to the run dir's descriptor, and handed over before the run dir: until the
/// run dir is theirs, the user cannot have replaced anything in it.
fn give_run_dir(run_dir: &Path, uid: u32, gid: u32) -> Result<(), ExecError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let flags = libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    fn err(path: &Path) -> impl FnOnce(std::io::Error) -> ExecError + '_ {
        move |source| ExecError::CreateDir { path: path.to_owned(), source }
    }
    let dir = fs::OpenOptions::new().read(true).custom_flags(flags).open(run_dir).map_err(err(run_dir))?;
    let outputs_path = run_dir.join(OUTPUTS_DIR);
    let outputs = open_at(&dir, OUTPUTS_DIR, flags).map_err(err(&outputs_path))?;
    for (f, path) in [(&outputs, outputs_path.as_path()), (&dir, run_dir)] {
        std::os::unix::fs::fchown(f, Some(uid), Some(gid)).map_err(err(path))?;
        f.set_permissions(fs::Permissions::from_mode(0o700)).map_err(err(path))?;
    }
    Ok(())
}

/// Opens `name` relative to the directory `dir` with `flags` (read-only).
fn open_at(dir: &File, name: &str, flags: libc::c_int) -> std::io::Result<File> {
    let name = std::ffi::CString::new(name).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: openat with a directory fd we own and a NUL-terminated name.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_RDONLY) };
    if fd == -1 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Asks the filesystem to place the subdirectories of `dir` apart from each other (ext4's
/// "top of directory hierarchy" flag, `chattr +T`): each job's run dir then gets its inodes
/// from a block group of its own choosing instead of from the one `dir` is in. On ext4
/// without a journal, allocating an inode skips every inode of its group deleted in the last
/// few minutes, one at a time; a queue's run dirs clustered in one group (the usual place for
/// a temp dir too) made every attempt's files cost milliseconds of CPU. Best effort: other
/// filesystems have no such flag, and nothing depends on it.
pub fn spread_subdirectories(dir: &Path) {
    const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;
    let Ok(f) = File::open(dir) else { return };
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS/SETFLAGS read and write one int through a valid pointer.
    unsafe {
        if libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) == 0 && flags & FS_TOPDIR_FL == 0 {
            flags |= FS_TOPDIR_FL;
            libc::ioctl(f.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags);
        }
    }
}

/// The argument after RUN_DIR that tells the supervisor to read its spec from stdin.
pub const SPEC_FROM_STDIN: &str = "-";

/// The argument (instead of RUN_DIR) that starts a supervisor as a [`Standby`].
pub const STANDBY: &str = "--standby";

fn absolute(path: &Path) -> Result<PathBuf, ExecError> {
    std::path::absolute(path).map_err(|source| ExecError::CreateDir { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn a_groups_first_job_makes_the_group_dir_and_leaves_no_temp_dir() {
        let home = tempfile::tempdir().unwrap();
        let runs = home.path().join("runs");
        fs::create_dir(&runs).unwrap();
        let run_dir = runs.join("0k").join("5").join("1");
        make_dirs(&run_dir, &run_dir.join(OUTPUTS_DIR)).unwrap();
        assert!(run_dir.join(OUTPUTS_DIR).is_dir());
        assert_eq!(names(&runs), ["0k"]);
        // The next job of the group, and another attempt of the first, use it as it is.
        let second = runs.join("0k").join("6").join("1");
        make_dirs(&second, &second.join(OUTPUTS_DIR)).unwrap();
        let again = runs.join("0k").join("5").join("2");
        make_dirs(&again, &again.join(OUTPUTS_DIR)).unwrap();
        assert_eq!(names(&runs.join("0k")), ["5", "6"]);
        assert_eq!(names(&runs.join("0k").join("5")), ["1", "2"]);
        assert_eq!(names(&runs), ["0k"]);
    }

    #[test]
    fn a_group_dir_made_meanwhile_by_someone_else_is_kept_as_it_is() {
        let home = tempfile::tempdir().unwrap();
        let group = home.path().join("1k");
        fs::create_dir(&group).unwrap();
        fs::write(group.join("theirs"), b"x").unwrap();
        make_group_dir(&group).unwrap();
        assert_eq!(names(home.path()), ["1k"]);
        assert_eq!(names(&group), ["theirs"]);
        // Many at once: one wins, the others find it made, no temp dir is left behind.
        let racy = home.path().join("2k");
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| make_group_dir(&racy).unwrap());
            }
        });
        assert_eq!(names(home.path()), ["1k", "2k"]);
    }

    #[test]
    fn of_several_slow_group_dirs_one_is_kept_and_the_others_removed() {
        let home = tempfile::tempdir().unwrap();
        let group = home.path().join("3k");
        // Every try counts as slow: all are made, one is renamed into place.
        make_group_dir_within(&group, std::time::Duration::ZERO).unwrap();
        assert_eq!(names(home.path()), ["3k"]);
        assert!(group.is_dir());
        // A parent that is not there: the error, and nothing left.
        let missing = home.path().join("nope").join("4k");
        assert_eq!(make_group_dir(&missing).unwrap_err().kind(), std::io::ErrorKind::NotFound);
        assert_eq!(names(home.path()), ["3k"]);
    }

    #[test]
    fn without_runs_dir_everything_is_made() {
        let home = tempfile::tempdir().unwrap();
        let run_dir = home.path().join("runs").join("0k").join("7").join("1");
        make_dirs(&run_dir, &run_dir.join(OUTPUTS_DIR)).unwrap();
        assert!(run_dir.join(OUTPUTS_DIR).is_dir());
    }
}
