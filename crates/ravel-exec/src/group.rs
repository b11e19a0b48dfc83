//! Signalling a process group and telling whether anything is left in it.

use std::io;

use crate::procfs;

/// Sends `signal` to every process in group `pgid`. ESRCH (empty group) is an error the
/// callers usually ignore.
pub(crate) fn signal(pgid: i32, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: killpg has no memory-safety preconditions.
    if unsafe { libc::killpg(pgid, signal) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// True if no process, not even a zombie, is in group `pgid`.
pub(crate) fn is_empty(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let failed = unsafe { libc::kill(-pgid, 0) } == -1;
    failed && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// True if every process still in group `pgid` is a zombie: it holds no resources any more
/// and only waits for a parent (possibly not us) to reap it.
pub(crate) fn has_no_live_members(pgid: i32) -> bool {
    is_empty(pgid) || procfs::group_members(pgid).iter().all(procfs::ProcStat::is_zombie)
}
