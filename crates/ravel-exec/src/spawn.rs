//! `posix_spawn`: of a detached process (own session, a given signal mask, stdin from a given
//! fd and stdout/stderr on /dev/null), and the wrapper the job's spawn shares.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Spawns `exe` with `args` (argv[1..]) and the caller's environment.
pub(crate) fn spawn_detached(exe: &Path, args: &[&OsStr], stdin_fd: i32, mask: &libc::sigset_t) -> io::Result<i32> {
    let cstr = |s: &OsStr| CString::new(s.as_bytes()).map_err(|_| io::Error::other("argument contains a NUL byte"));
    let program = cstr(exe.as_os_str())?;
    let mut argv_owned = vec![program.clone()];
    for a in args {
        argv_owned.push(cstr(a)?);
    }
    let mut argv: Vec<*mut libc::c_char> = argv_owned.iter().map(|a| a.as_ptr() as *mut libc::c_char).collect();
    argv.push(std::ptr::null_mut());
    unsafe extern "C" {
        static environ: *const *mut libc::c_char;
    }
    // SAFETY: environ is the process's environment, read (not changed) for the spawn.
    let envp = unsafe { environ };
    posix_spawn(&program, &argv, envp, |attr, actions| {
        // SAFETY: attr and actions are initialised by posix_spawn below; the path is static.
        unsafe {
            let flags = libc::POSIX_SPAWN_SETSID as libc::c_int | libc::POSIX_SPAWN_SETSIGMASK;
            check(libc::posix_spawnattr_setflags(attr, flags as libc::c_short))?;
            check(libc::posix_spawnattr_setsigmask(attr, mask))?;
            check(libc::posix_spawn_file_actions_adddup2(actions, stdin_fd, 0))?;
            for fd in [1, 2] {
                check(libc::posix_spawn_file_actions_addopen(actions, fd, c"/dev/null".as_ptr(), libc::O_WRONLY, 0))?;
            }
        }
        Ok(())
    })
}

/// `posix_spawn` of `program` with `argv` and `envp` (both NULL-terminated), its attributes and
/// file actions set by `set_up`; returns the pid.
pub(crate) fn posix_spawn(
    program: &CStr,
    argv: &[*mut libc::c_char],
    envp: *const *mut libc::c_char,
    set_up: impl FnOnce(&mut libc::posix_spawnattr_t, &mut libc::posix_spawn_file_actions_t) -> io::Result<()>,
) -> io::Result<i32> {
    if argv.last().is_none_or(|p| !p.is_null()) {
        return Err(io::Error::other("argv must end with a null pointer"));
    }
    // SAFETY: the attr and file-actions objects are initialised before use and destroyed after;
    // program and argv are checked above or borrowed for the call, envp is the caller's
    // NULL-terminated array.
    unsafe {
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        check(libc::posix_spawnattr_init(&mut attr))?;
        if let Err(e) = check(libc::posix_spawn_file_actions_init(&mut actions)) {
            libc::posix_spawnattr_destroy(&mut attr);
            return Err(e);
        }
        let result = set_up(&mut attr, &mut actions).and_then(|()| {
            let mut pid: libc::pid_t = 0;
            check(libc::posix_spawn(&mut pid, program.as_ptr(), &actions, &attr, argv.as_ptr(), envp))?;
            Ok(pid)
        });
        libc::posix_spawn_file_actions_destroy(&mut actions);
        libc::posix_spawnattr_destroy(&mut attr);
        result
    }
}

/// posix_spawn's functions return the errno itself.
pub(crate) fn check(r: libc::c_int) -> io::Result<()> {
    if r == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(r)) }
}
