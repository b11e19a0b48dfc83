//! `posix_spawn` of a detached process: own session, a given signal mask, stdin from a given
//! fd and stdout/stderr on /dev/null.

use std::ffi::{CString, OsStr};
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
    let dev_null = c"/dev/null";

    // SAFETY: the attr and file-actions objects are initialised before use and destroyed
    // after; every pointer handed to posix_spawn (program, argv, environ, the path) outlives
    // the call.
    unsafe {
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        check(libc::posix_spawnattr_init(&mut attr))?;
        check(libc::posix_spawn_file_actions_init(&mut actions))?;
        let result = (|| {
            let flags = libc::POSIX_SPAWN_SETSID as libc::c_int | libc::POSIX_SPAWN_SETSIGMASK;
            check(libc::posix_spawnattr_setflags(&mut attr, flags as libc::c_short))?;
            check(libc::posix_spawnattr_setsigmask(&mut attr, mask))?;
            check(libc::posix_spawn_file_actions_adddup2(&mut actions, stdin_fd, 0))?;
            for fd in [1, 2] {
                check(libc::posix_spawn_file_actions_addopen(&mut actions, fd, dev_null.as_ptr(), libc::O_WRONLY, 0))?;
            }
            let mut pid: libc::pid_t = 0;
            unsafe extern "C" {
                static environ: *const *mut libc::c_char;
            }
            check(libc::posix_spawn(&mut pid, program.as_ptr(), &actions, &attr, argv.as_ptr(), environ))?;
            Ok(pid)
        })();
        libc::posix_spawn_file_actions_destroy(&mut actions);
        libc::posix_spawnattr_destroy(&mut attr);
        result
    }
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(r)) }
}
