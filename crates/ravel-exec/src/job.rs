//! Spawning the job: its program, arguments, environment, working directory, logs, process
//! group and signal state, and the mapping of spawn failures to exit records.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::ExecError;
use crate::records::{LaunchSpec, RunAs, STDERR_FILE, STDOUT_FILE};
use crate::{fds, resolve, signals, spawn, users};

/// Starts the job described by `spec` as the leader of a new process group (pgid = its pid)
/// and returns its pid. Its stdout/stderr are the run dir's log files themselves, not pipes,
/// so the job keeps running (and logging) if the supervisor dies.
///
/// With `spec.run_as`, the job's process (never the supervisor) first joins the cgroup whose
/// `cgroup.procs` are open as `cgroup_fds`, then drops to the user: supplementary groups,
/// gid, uid, in that order, and only then changes to the working directory, so that the
/// directory is entered with the user's rights, not root's.
pub(crate) fn spawn(spec: &LaunchSpec, run_dir: &Path, cgroup_fds: &[RawFd]) -> Result<i32, ExecError> {
    let Some(program) = spec.command.first() else {
        return Err(ExecError::EmptyCommand { run_dir: run_dir.to_owned() });
    };
    let cwd = Path::new(&spec.cwd);
    // With `run_as` the directory is looked at with the user's rights only (by chdir in the
    // job's process): a check as root would tell the user whether paths they cannot search exist.
    if spec.run_as.is_none() {
        check_cwd(&spec.cwd)?;
    }
    let user = spec.run_as.as_ref().map(prepare_user).transpose()?;
    let resolved = resolve::find_program(program, &spec.env, cwd)
        .map_err(|source| ExecError::CannotRun { program: program.clone(), source })?;
    let owner = spec.run_as.as_ref().map(|r| (r.uid, r.gid));
    let stdout = open_log(&run_dir.join(STDOUT_FILE), owner)?;
    let stderr = open_log(&run_dir.join(STDERR_FILE), owner)?;
    if spec.run_as.is_none() && cgroup_fds.is_empty() {
        return spawn_plain(spec, &resolved, &stdout, &stderr).map_err(|source| {
            // As below: a directory that vanished since it was checked is not the program's fault.
            check_cwd(&spec.cwd).err().unwrap_or_else(|| ExecError::CannotRun { program: program.clone(), source })
        });
    }

    let mut command = Command::new(&resolved);
    command
        .arg0(program)
        .args(&spec.command[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);
    if let Some(u) = &user {
        command.env("HOME", &u.home).env("USER", &u.name).env("LOGNAME", &u.name);
    } else {
        command.current_dir(cwd);
    }
    // Which step failed in the child, for the error message (only an errno crosses back).
    let (step_read, step_write) =
        step_pipe().map_err(|source| ExecError::CannotRun { program: program.clone(), source })?;
    let step_fd = step_write.as_raw_fd();
    let cwd_c = CString::new(spec.cwd.as_bytes())
        .map_err(|_| ExecError::BadCwd { cwd: spec.cwd.clone(), source: io::Error::from_raw_os_error(libc::EINVAL) })?;
    let fds = cgroup_fds.to_vec();
    let umask = spec.umask;
    let drop_to = user.as_ref().map(|u| (u.uid, u.gid, u.groups.clone()));
    let mut reset_signals = signals::reset_for_job();
    // SAFETY: the closure only makes async-signal-safe calls (write, setgroups, setresgid,
    // setresuid, chdir, umask, signal, sigprocmask, close_range) and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            let failed = |step: u8| {
                let e = io::Error::last_os_error();
                libc::write(step_fd, [step].as_ptr().cast(), 1);
                Err(e)
            };
            if crate::cgroup::join(&fds).is_err() {
                return failed(STEP_CGROUP);
            }
            if let Some((uid, gid, groups)) = &drop_to {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setresgid(*gid, *gid, *gid) != 0
                    || libc::setresuid(*uid, *uid, *uid) != 0
                {
                    return failed(STEP_USER);
                }
                if libc::chdir(cwd_c.as_ptr()) != 0 {
                    return failed(STEP_CWD);
                }
            }
            if let Some(m) = umask {
                libc::umask(m as libc::mode_t);
            }
            reset_signals()?;
            fds::cloexec_above_stdio()
        });
    }
    // The child is reaped with waitpid by pid, not through `Child`; dropping it neither waits
    // nor kills.
    let spawned = command.spawn();
    drop(step_write);
    spawned.map(|child| child.id() as i32).map_err(|source| {
        let user_name = || spec.run_as.as_ref().map(|r| r.user.clone()).unwrap_or_default();
        match read_step(step_read) {
            // ENOENT as the user means the path is missing as far as they can see.
            Some(STEP_CWD) if source.raw_os_error() == Some(libc::ENOENT) => {
                ExecError::MissingCwd { cwd: spec.cwd.clone() }
            }
            Some(STEP_CWD) => ExecError::EnterCwd { cwd: spec.cwd.clone(), user: user_name(), source },
            Some(STEP_USER) => ExecError::RunAs { user: user_name(), reason: source.to_string() },
            Some(STEP_CGROUP) => ExecError::Cgroup(format!("cannot put the job in its cgroup: {source}")),
            // Without `run_as` the directory was checked above; if std's chdir failed anyway it
            // vanished meanwhile, and its bare ENOENT would wrongly blame the program.
            _ if spec.run_as.is_none() => {
                check_cwd(&spec.cwd).err().unwrap_or_else(|| ExecError::CannotRun { program: program.clone(), source })
            }
            _ => ExecError::CannotRun { program: program.clone(), source },
        }
    })
}

/// The job of a user's own daemon (no user to become, no cgroup to join): `posix_spawn`, which
/// glibc does with a vfork (the supervisor waits until the job has exec'd), instead of std's
/// fork for a `pre_exec` closure. A fork copies the supervisor's page tables and both sides
/// then fault on every page they write before the exec: in a drain of short jobs that was a
/// quarter of the supervisor's CPU. The job starts in the same state: its own process group,
/// default dispositions and an empty mask, stdin on /dev/null, the logs as stdout and stderr,
/// the working directory, the umask, nothing else open (all of the supervisor's descriptors
/// are close-on-exec), and the environment as std builds it (by key, the last value winning).
fn spawn_plain(spec: &LaunchSpec, resolved: &Path, stdout: &File, stderr: &File) -> io::Result<i32> {
    use std::os::unix::ffi::OsStrExt;
    let c = |s: &[u8]| CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL));
    let path = c(resolved.as_os_str().as_bytes())?;
    let args: Vec<CString> = spec.command.iter().map(|a| c(a.as_bytes())).collect::<io::Result<_>>()?;
    let env: std::collections::BTreeMap<&str, &str> = spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let env: Vec<CString> = env.iter().map(|(k, v)| c(format!("{k}={v}").as_bytes())).collect::<io::Result<_>>()?;
    let cwd = c(spec.cwd.as_bytes())?;
    let mut argv: Vec<*mut libc::c_char> = args.iter().map(|a| a.as_ptr().cast_mut()).collect();
    argv.push(std::ptr::null_mut());
    let mut envp: Vec<*mut libc::c_char> = env.iter().map(|e| e.as_ptr().cast_mut()).collect();
    envp.push(std::ptr::null_mut());
    // umask is process-wide, and the supervisor is single-threaded: it is the job's only for the
    // spawn, then ours again.
    // SAFETY: umask cannot fail.
    let old = spec.umask.map(|m| unsafe { libc::umask(m as libc::mode_t) });
    let spawned = spawn::posix_spawn(&path, &argv, envp.as_ptr(), |attr, actions| {
        use spawn::check;
        // SAFETY: attr and actions are initialised by posix_spawn; cwd and the path outlive the spawn.
        unsafe {
            let flags = libc::POSIX_SPAWN_SETPGROUP | libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF;
            check(libc::posix_spawnattr_setflags(attr, flags as libc::c_short))?;
            check(libc::posix_spawnattr_setpgroup(attr, 0))?;
            check(libc::posix_spawnattr_setsigmask(attr, &signals::empty()))?;
            check(libc::posix_spawnattr_setsigdefault(attr, &signals::reset_set()))?;
            check(libc::posix_spawn_file_actions_addopen(actions, 0, c"/dev/null".as_ptr(), libc::O_RDONLY, 0))?;
            check(libc::posix_spawn_file_actions_adddup2(actions, stdout.as_raw_fd(), 1))?;
            check(libc::posix_spawn_file_actions_adddup2(actions, stderr.as_raw_fd(), 2))?;
            check(libc::posix_spawn_file_actions_addchdir_np(actions, cwd.as_ptr()))?;
        }
        Ok(())
    });
    if let Some(old) = old {
        // SAFETY: as above.
        unsafe { libc::umask(old) };
    }
    spawned
}

const STEP_CGROUP: u8 = 1;
const STEP_USER: u8 = 2;
const STEP_CWD: u8 = 3;

/// What the job's process needs to become `run_as`, prepared before fork (no allocation after).
struct User {
    name: String,
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
    home: String,
}

fn prepare_user(r: &RunAs) -> Result<User, ExecError> {
    let entry = users::passwd(&r.user)
        .ok_or_else(|| ExecError::RunAs { user: r.user.clone(), reason: "no such user in /etc/passwd".into() })?;
    if entry.uid != r.uid {
        return Err(ExecError::RunAs {
            user: r.user.clone(),
            reason: format!("the user's uid is now {}, not {} as when the job was submitted", entry.uid, r.uid),
        });
    }
    let mut groups = users::groups_of(&r.user, r.gid);
    if !groups.contains(&r.gid) {
        groups.push(r.gid);
    }
    Ok(User { name: r.user.clone(), uid: r.uid, gid: r.gid, groups, home: entry.home })
}

fn step_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds on success; we take ownership of both.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn read_step(fd: OwnedFd) -> Option<u8> {
    let mut b = [0u8; 1];
    // SAFETY: reading one byte into a local buffer from an fd we own.
    (unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), 1) } == 1).then_some(b[0])
}

fn check_cwd(cwd: &str) -> Result<(), ExecError> {
    match fs::metadata(cwd) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(ExecError::BadCwd { cwd: cwd.to_owned(), source: io::Error::from_raw_os_error(libc::ENOTDIR) }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ExecError::MissingCwd { cwd: cwd.to_owned() }),
        Err(source) => Err(ExecError::BadCwd { cwd: cwd.to_owned(), source }),
    }
}

/// Appends rather than truncates, so that nothing already logged is lost if the same run dir
/// is ever reused. With `owner`, the file becomes theirs.
///
/// On a shared box the job's user owns the run dir and may have planted something under the
/// log's name before we open it as root: a symlink (refused by O_NOFOLLOW), a FIFO (the
/// non-blocking open cannot hang on it, and it is refused as not a regular file), or a hard link
/// to a file they may not write, such as /etc/shadow (refused by its link count, before the
/// fchown that would hand it to them).
fn open_log(path: &Path, owner: Option<(u32, u32)>) -> Result<File, ExecError> {
    use std::os::unix::fs::MetadataExt;
    let err = |source| ExecError::OpenLog { path: path.to_owned(), source };
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => io::Error::other("it is a symbolic link, and links are never followed"),
            // A FIFO nobody reads (or a socket).
            Some(libc::ENXIO) => io::Error::other("not a regular file"),
            _ => e,
        })
        .map_err(err)?;
    let meta = f.metadata().map_err(err)?;
    if !meta.is_file() {
        return Err(err(io::Error::other("not a regular file")));
    }
    if meta.nlink() != 1 {
        return Err(err(io::Error::other(format!(
            "it has {} hard links, so it may be another file's name too",
            meta.nlink()
        ))));
    }
    fds::set_blocking(&f).map_err(err)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(err)?;
    }
    Ok(f)
}
