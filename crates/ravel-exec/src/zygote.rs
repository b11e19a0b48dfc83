//! A fork server for standby supervisors.
//!
//! Starting a supervisor by exec costs the `ravel` binary's whole start-up (the dynamic loader,
//! page faults, glibc's CPU identification) for every attempt: in a drain of short jobs that was
//! most of the supervisors' CPU. The zygote (`ravel __supervise --zygote`) is started once, is
//! single-threaded and small, and forks a [`Standby`] whenever asked: the child is already a
//! started `ravel` process, so it only pays for the pages it writes.
//!
//! Protocol, over a `SOCK_SEQPACKET` socket pair that is the zygote's stdin: the daemon sends one
//! byte; the zygote forks a standby whose stdin is one end of a new stream socket pair, and
//! answers with the standby's pid and start time, passing the other end along (`SCM_RIGHTS`).
//! It keeps no copy, so the standby reads the end of its input once the daemon drops it. The
//! zygote ignores SIGCHLD with `SA_NOCLDWAIT`: its children are reaped by the kernel, and the
//! daemon watches them through their sockets. It exits when the daemon's end of its own socket
//! closes.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use crate::error::ExecError;
use crate::launch::{Launched, STANDBY, SUPERVISE_SUBCOMMAND, Standby};
use crate::{procfs, signals, spawn};

/// The argument (instead of RUN_DIR) that starts the fork server.
pub const ZYGOTE: &str = "--zygote";

/// The daemon's end of a running zygote.
#[derive(Debug)]
pub struct Zygote {
    sock: OwnedFd,
    pid: i32,
    /// One request and its answer at a time.
    turn: std::sync::Mutex<()>,
}

impl Zygote {
    /// Starts `exe __supervise --zygote` in a session of its own (the daemon's child).
    pub fn spawn(exe: &Path) -> Result<Zygote, ExecError> {
        let err = |source| ExecError::SpawnSupervisor { exe: exe.to_owned(), source };
        let (ours, theirs) = seqpacket_pair().map_err(err)?;
        let args = [std::ffi::OsStr::new(SUPERVISE_SUBCOMMAND), std::ffi::OsStr::new(ZYGOTE)];
        let pid = spawn::spawn_detached(exe, &args, theirs.as_raw_fd(), &signals::watched()).map_err(err)?;
        Ok(Zygote { sock: ours, pid, turn: std::sync::Mutex::new(()) })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// A new standby supervisor, forked by the zygote (not the caller's child).
    pub fn standby(&self) -> Result<Standby, ExecError> {
        let err = |source| ExecError::SpawnSupervisor { exe: STANDBY.into(), source };
        let _turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: send of one byte from a valid buffer on a socket we own.
        if unsafe { libc::send(self.sock.as_raw_fd(), [1u8].as_ptr().cast(), 1, libc::MSG_NOSIGNAL) } != 1 {
            return Err(err(std::io::Error::last_os_error()));
        }
        let (reply, fd) = recv_with_fd(self.sock.as_raw_fd()).map_err(err)?;
        let fd = fd.ok_or_else(|| err(std::io::Error::other("the zygote sent no socket")))?;
        let pid = i32::from_ne_bytes(reply[..4].try_into().unwrap_or_default());
        let start_time = u64::from_ne_bytes(reply[4..].try_into().unwrap_or_default());
        if pid <= 0 {
            return Err(err(std::io::Error::other("the zygote could not fork")));
        }
        Ok(Standby::from_parts(Launched { pid, start_time }, fd, false))
    }
}

/// The zygote's body: forks a standby per request until its socket (stdin) closes.
pub fn zygote_main() -> i32 {
    crate::supervise::set_up();
    set_name(c"ravel-zygote");
    // SAFETY: sigaction with a zeroed struct, SIG_IGN and SA_NOCLDWAIT: children are reaped by
    // the kernel.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = libc::SIG_IGN;
        sa.sa_flags = libc::SA_NOCLDWAIT;
        libc::sigaction(libc::SIGCHLD, &sa, std::ptr::null_mut());
    }
    let sock: RawFd = 0;
    loop {
        let mut byte = [0u8; 1];
        // SAFETY: recv into a valid one-byte buffer.
        let n = unsafe { libc::recv(sock, byte.as_mut_ptr().cast(), 1, 0) };
        if n <= 0 {
            if n == -1 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return 0;
        }
        // A failed fork answers pid 0 and no socket.
        let (pid, channel) = fork_standby(sock).unwrap_or_default();
        let start = if pid > 0 { procfs::process_start_time(pid).unwrap_or(0) } else { 0 };
        let mut reply = [0u8; 12];
        reply[..4].copy_from_slice(&pid.to_ne_bytes());
        reply[4..].copy_from_slice(&start.to_ne_bytes());
        if send_with_fd(sock, &reply, channel.as_ref().map(|f| f.as_raw_fd())).is_err() {
            return 0;
        }
        // Our copy of the socket goes now: the standby's input is the daemon's alone.
        drop(channel);
    }
}

/// Forks a standby whose stdin is one end of a new socket pair; returns its pid and the other end.
fn fork_standby(sock: RawFd) -> std::io::Result<(i32, Option<OwnedFd>)> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    // SAFETY: the zygote is single-threaded, so the child may run any code after fork.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            // The child: a supervisor in a session of its own, reading its orders from the socket.
            // SAFETY: plain syscalls on descriptors and signal dispositions of this process.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(libc::SIGCHLD, &sa, std::ptr::null_mut());
                libc::close(sock);
                libc::dup2(theirs.as_raw_fd(), 0);
                libc::setsid();
            }
            set_name(c"ravel-supervise");
            drop(theirs);
            drop(ours);
            // SAFETY: _exit ends the child without running the zygote's atexit handlers.
            unsafe { libc::_exit(crate::supervise::supervise_standby()) }
        }
        pid => Ok((pid, Some(OwnedFd::from(ours)))),
    }
}

/// The name `top` and `ps -o comm` show for this process (at most 15 bytes), so that the zygote
/// and supervisors are told apart from `ravel` commands.
fn set_name(name: &std::ffi::CStr) {
    // SAFETY: PR_SET_NAME reads a NUL-terminated string that outlives the call.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0);
    }
}

fn seqpacket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair fills two fds on success.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } == -1
    {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Room for one `SCM_RIGHTS` message carrying one descriptor.
#[repr(C, align(8))]
struct CmsgSpace([u8; 64]);

fn send_with_fd(sock: RawFd, data: &[u8], fd: Option<RawFd>) -> std::io::Result<()> {
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut _, iov_len: data.len() };
    let mut space = CmsgSpace([0; 64]);
    // SAFETY: msghdr/cmsghdr are filled within `space`, which outlives the sendmsg call;
    // CMSG_SPACE(sizeof(int)) is far below its 64 bytes.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if let Some(fd) = fd {
            msg.msg_control = space.0.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        }
        if libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) == -1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn recv_with_fd(sock: RawFd) -> std::io::Result<([u8; 12], Option<OwnedFd>)> {
    let mut data = [0u8; 12];
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
    let mut space = CmsgSpace([0; 64]);
    // SAFETY: recvmsg into buffers that outlive the call; a received descriptor is read from the
    // first control message only if it is an SCM_RIGHTS one, and then owned by us.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = space.0.as_mut_ptr().cast();
        msg.msg_controllen = space.0.len();
        let n = loop {
            let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n == -1 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break n;
        };
        if n == -1 {
            return Err(std::io::Error::last_os_error());
        }
        if n as usize != data.len() {
            return Err(std::io::Error::other("the zygote hung up"));
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        let fd = (!cmsg.is_null() && (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS)
            .then(|| OwnedFd::from_raw_fd(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>())));
        Ok((data, fd))
    }
}
