//! `ravel`, the command people type: a small front for `ravel-main`, the program that does
//! everything (the CLI, the daemon, agents, supervisors), installed beside it.
//!
//! Every call is handed to `ravel-main` with `execve` (same arguments, same environment, same
//! pid) except the hot one: a plain `ravel run` to the local daemon, which the front submits
//! itself. A submit is what users and scripts call thousands of times, and a process start of
//! `ravel-main` (a 14 MB program, the C library's start-up, the dynamic loader) cost more than
//! the daemon's whole answer. In release builds on x86-64 Linux (`ravel_lean`, set by build.rs)
//! this file is built without the standard library and without the C library: it starts at
//! `_start`, talks to the kernel with raw system calls, and its start-up is two page faults. In
//! debug builds it is an ordinary std program with the same logic, so tests exercise it.
//!
//! The front takes `ravel run [--gpus N] [--cpus N] [--priority N] [--name NAME] [--hold] [-q]
//! -- COMMAND...` when no controller can be meant (no `RAVEL_CONTEXT`, no `RAVEL_CONTROLLER`,
//! no contexts file) and the daemon's socket answers. Anything else (other flags, a repeated
//! flag, a value that is not plain, no daemon, a request it cannot hold) goes to `ravel-main`
//! before anything is sent. After a request was sent, an answer other than 200 (a refusal
//! changes nothing) is also handed to `ravel-main`, which runs the submit again and reports it
//! in its own words. A connection that breaks after the request was sent is reported, never
//! retried: the job may have been accepted.

// The lean build is not used for the unit tests (they need the standard library).
#![cfg_attr(all(ravel_lean, not(test)), no_std, no_main, no_builtins)]

#[cfg(all(ravel_lean, not(test), not(panic = "abort")))]
compile_error!("the lean front (build.rs's ravel_lean) needs panic = \"abort\" in the release profile");

/// The program the front hands everything else to, in the front's own directory.
const MAIN: &[u8] = b"ravel-main";
/// The longest request the front sends itself (a larger environment goes through `ravel-main`).
const BODY_MAX: usize = 4 << 20;
/// How long the daemon may take to answer, as `ravel-main`'s client allows.
const TIMEOUT_S: i64 = 60;
/// The longest answer the front reads (a submit's is about 30 bytes of JSON).
const ANSWER_MAX: usize = 16384;

static mut BODY: [u8; BODY_MAX] = [0; BODY_MAX];
static mut ANSWER: [u8; ANSWER_MAX] = [0; ANSWER_MAX];

/// A NUL-terminated string from the kernel (argv, envp), without its NUL.
unsafe fn c_bytes<'a>(p: *const u8) -> &'a [u8] {
    let mut n = 0;
    // SAFETY: the caller passes a NUL-terminated string.
    unsafe {
        while *p.add(n) != 0 {
            n += 1;
        }
        core::slice::from_raw_parts(p, n)
    }
}

/// The process's arguments and environment, as the kernel gave them (NULL-terminated arrays).
#[derive(Clone, Copy)]
struct Process {
    argc: usize,
    argv: *const *const u8,
    envp: *const *const u8,
}

impl Process {
    fn arg(&self, i: usize) -> Option<&'static [u8]> {
        // SAFETY: argv has argc strings (then NULL), which live as long as the process.
        (i < self.argc).then(|| unsafe { c_bytes(*self.argv.add(i)) })
    }

    /// The environment's entries, `KEY=VALUE`, in order.
    fn env(&self) -> impl Iterator<Item = &'static [u8]> {
        let envp = self.envp;
        // SAFETY: envp is NULL-terminated and its strings live as long as the process.
        (0..).map(move |i| unsafe { *envp.add(i) }).take_while(|p| !p.is_null()).map(|p| unsafe { c_bytes(p) })
    }

    /// The first entry's value for `key`, as getenv finds it.
    fn var(&self, key: &[u8]) -> Option<&'static [u8]> {
        self.env().find_map(|e| e.strip_prefix(key).and_then(|rest| rest.strip_prefix(b"=")))
    }

    /// A variable that is set and not empty once trimmed (as `ravel-main` reads its settings).
    fn set(&self, key: &[u8]) -> Option<&'static [u8]> {
        self.var(key).map(|v| v.trim_ascii()).filter(|v| !v.is_empty())
    }
}

/// What `ravel run` asked for, when the front can submit it itself.
#[derive(Debug, PartialEq)]
struct Run {
    gpus: u32,
    cpus: u32,
    priority: i32,
    name: Option<&'static str>,
    hold: bool,
    /// Index in argv of the command's first word.
    command: usize,
}

/// `ravel run` with only the flags the front knows, each once, then `--` and a command.
fn parse_run(p: &Process) -> Option<Run> {
    if p.arg(1)? != b"run" {
        return None;
    }
    let mut run = Run { gpus: 0, cpus: 1, priority: 0, name: None, hold: false, command: 0 };
    let mut seen = 0u8;
    let mut once = |bit: u8| {
        let first = seen & bit == 0;
        seen |= bit;
        first.then_some(())
    };
    let mut i = 2;
    loop {
        let arg = p.arg(i)?;
        i += 1;
        if arg == b"--" {
            break;
        }
        let (flag, inline) = match arg.iter().position(|&b| b == b'=') {
            Some(eq) if arg.starts_with(b"--") => (&arg[..eq], Some(&arg[eq + 1..])),
            _ => (arg, None),
        };
        let mut value = || match inline {
            Some(v) => Some(v),
            None => {
                i += 1;
                p.arg(i - 1)
            }
        };
        match flag {
            b"--gpus" => {
                once(1)?;
                run.gpus = number(value()?)?;
            }
            b"--cpus" => {
                once(2)?;
                run.cpus = number(value()?).filter(|&n| n > 0)?;
            }
            b"--priority" => {
                once(4)?;
                let v = value()?;
                let n = i64::from(number(v.strip_prefix(b"-").unwrap_or(v))?);
                run.priority = i32::try_from(if v.starts_with(b"-") { -n } else { n }).ok()?;
            }
            b"--name" => {
                once(8)?;
                let v = core::str::from_utf8(value()?).ok()?;
                // A value like a flag is clap's to judge; a name over the limit is the daemon's.
                if v.starts_with('-') || v.len() > 256 {
                    return None;
                }
                run.name = Some(v);
            }
            b"--hold" if inline.is_none() => {
                once(16)?;
                run.hold = true;
            }
            b"-q" | b"--quiet" if inline.is_none() => once(32)?,
            _ => return None,
        }
    }
    // The command: at least one word, the first not empty, every word UTF-8.
    run.command = i;
    if p.arg(i)?.is_empty() {
        return None;
    }
    let mut k = i;
    while let Some(word) = p.arg(k) {
        core::str::from_utf8(word).ok()?;
        k += 1;
    }
    Some(run)
}

/// A plain decimal u32: digits only (no sign, no spaces), no overflow.
fn number(v: &[u8]) -> Option<u32> {
    if v.is_empty() || v.len() > 10 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(b - b'0');
    }
    u32::try_from(n).ok()
}

/// A growing byte string in a fixed buffer; `None` once it would overflow.
struct Out<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Out<'_> {
    fn push(&mut self, bytes: &[u8]) -> Option<()> {
        let end = self.len.checked_add(bytes.len()).filter(|&e| e <= self.buf.len())?;
        self.buf[self.len..end].copy_from_slice(bytes);
        self.len = end;
        Some(())
    }

    fn num(&mut self, n: i64) -> Option<()> {
        let mut digits = [0u8; 20];
        let mut k = digits.len();
        let mut m = n.unsigned_abs();
        loop {
            k -= 1;
            digits[k] = b'0' + (m % 10) as u8;
            m /= 10;
            if m == 0 {
                break;
            }
        }
        if n < 0 {
            self.push(b"-")?;
        }
        self.push(&digits[k..])
    }

    /// A JSON string of UTF-8 text.
    fn string(&mut self, s: &[u8]) -> Option<()> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.push(b"\"")?;
        let mut start = 0;
        for (k, &b) in s.iter().enumerate() {
            let esc: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0..=0x1f => &[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]],
                _ => continue,
            };
            self.push(&s[start..k])?;
            self.push(esc)?;
            start = k + 1;
        }
        self.push(&s[start..])?;
        self.push(b"\"")
    }
}

/// `POST /v1/jobs` with the body `ravel-main` would send (fields it leaves at their defaults
/// are left out); the head is put in front of the body, in the space kept for it.
fn request<'a>(p: &Process, run: &Run, cwd: &[u8], umask: u32, buf: &'a mut [u8]) -> Option<&'a [u8]> {
    const HEAD_ROOM: usize = 160;
    let (head, body) = buf.split_at_mut(HEAD_ROOM);
    let mut o = Out { buf: body, len: 0 };
    o.push(b"{\"spec\":{\"command\":[")?;
    let mut k = run.command;
    while let Some(word) = p.arg(k) {
        if k > run.command {
            o.push(b",")?;
        }
        o.string(word)?;
        k += 1;
    }
    o.push(b"],\"name\":")?;
    match run.name {
        Some(n) => o.string(n.as_bytes())?,
        None => o.push(b"null")?,
    }
    o.push(b",\"cwd\":")?;
    o.string(cwd)?;
    o.push(b",\"env\":[")?;
    let mut first = true;
    for entry in p.env() {
        // As Rust's std reads the environment: the key ends at the first '=' after its first byte.
        let Some(eq) = entry.iter().skip(1).position(|&b| b == b'=').map(|e| e + 1) else { continue };
        let (key, value) = (&entry[..eq], &entry[eq + 1..]);
        // The caller's controller token stays out of the job (see ravel-main's run.rs); what
        // is not UTF-8 is left out as ravel-main leaves it out.
        if key == b"RAVEL_TOKEN" || core::str::from_utf8(key).is_err() || core::str::from_utf8(value).is_err() {
            continue;
        }
        if !first {
            o.push(b",")?;
        }
        first = false;
        o.push(b"[")?;
        o.string(key)?;
        o.push(b",")?;
        o.string(value)?;
        o.push(b"]")?;
    }
    o.push(b"],\"gpus\":")?;
    o.num(i64::from(run.gpus))?;
    o.push(b",\"cpus\":")?;
    o.num(i64::from(run.cpus))?;
    o.push(b",\"priority\":")?;
    o.num(i64::from(run.priority))?;
    o.push(b",\"umask\":")?;
    o.num(i64::from(umask))?;
    o.push(if run.hold { b",\"hold\":true}}" } else { b",\"hold\":false}}" })?;
    let body_len = o.len;
    let mut h = [0u8; HEAD_ROOM];
    let mut ho = Out { buf: &mut h, len: 0 };
    ho.push(b"POST /v1/jobs HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-type: application/json\r\n")?;
    ho.push(b"content-length: ")?;
    ho.num(body_len as i64)?;
    ho.push(b"\r\n\r\n")?;
    let head_len = ho.len;
    let start = HEAD_ROOM - head_len;
    head[start..].copy_from_slice(&h[..head_len]);
    Some(&buf[start..HEAD_ROOM + body_len])
}

/// The local daemon's socket path (NUL-terminated), when no controller can be meant.
fn local_socket(p: &Process, out: &mut [u8]) -> Option<usize> {
    if p.set(b"RAVEL_CONTEXT").is_some() || p.set(b"RAVEL_CONTROLLER").is_some() {
        return None;
    }
    // A contexts file may name a current controller: ravel-main reads it.
    let mut path = [0u8; 4096];
    let mut o = Out { buf: &mut path, len: 0 };
    match (p.set(b"XDG_CONFIG_HOME"), p.set(b"HOME")) {
        (Some(config), _) => o.push(config)?,
        (None, Some(home)) => {
            o.push(home)?;
            o.push(b"/.config")?;
        }
        (None, None) => return None,
    }
    o.push(b"/ravel/contexts.json\0")?;
    if sys::exists(&path)? {
        return None;
    }
    let mut o = Out { buf: out, len: 0 };
    match p.var(b"RAVEL_HOME").filter(|v| !v.is_empty()) {
        Some(home) if home.starts_with(b"/") => o.push(home)?,
        // A relative RAVEL_HOME is resolved against the working directory by ravel-main.
        Some(_) => return None,
        None => match (p.var(b"XDG_DATA_HOME").filter(|v| !v.is_empty()), p.var(b"HOME")) {
            (Some(data), _) if data.starts_with(b"/") => {
                o.push(data)?;
                o.push(b"/ravel")?;
            }
            (None, Some(home)) if home.starts_with(b"/") => {
                o.push(home)?;
                o.push(b"/.local/share/ravel")?;
            }
            _ => return None,
        },
    }
    o.push(b"/ravel.sock\0")?;
    Some(o.len)
}

/// Submits `run` itself, or returns to let `ravel-main` do it (nothing was accepted then).
fn submit(p: &Process, run: &Run) -> Option<()> {
    let mut socket = [0u8; 4200];
    let socket_len = local_socket(p, &mut socket)?;
    let socket = &socket[..socket_len];
    let mut cwd = [0u8; 4096];
    let cwd = sys::getcwd(&mut cwd)?;
    core::str::from_utf8(cwd).ok()?;
    let umask = sys::umask();
    // SAFETY: the front is single-threaded and takes the buffers once.
    let (body, answer) = unsafe {
        (
            core::slice::from_raw_parts_mut((&raw mut BODY).cast::<u8>(), BODY_MAX),
            core::slice::from_raw_parts_mut((&raw mut ANSWER).cast::<u8>(), ANSWER_MAX),
        )
    };
    let req = request(p, run, cwd, umask, body)?;
    // Not answering (no daemon, a stale socket) is ravel-main's to handle: it starts one.
    let fd = sys::connect(socket, TIMEOUT_S)?;
    // A request not wholly sent cannot have been accepted.
    sys::send_all(fd, req)?;
    let shown = &socket[..socket.len() - 1];
    let answer = match read_answer(fd, answer) {
        Ok(a) => a,
        Err(why) => fail(&[b"ravel: talking to the daemon on ", shown, b": ", why]),
    };
    match answer {
        (200, body) => match id_of(body) {
            Some(id) => {
                let mut line = [0u8; 24];
                let mut o = Out { buf: &mut line, len: 0 };
                o.num(id as i64)?;
                o.push(b"\n")?;
                let n = o.len;
                sys::write_all(1, &line[..n]);
                sys::exit(0)
            }
            None => fail(&[b"ravel: unexpected answer from the daemon on ", shown, b": no job id"]),
        },
        // Refused: nothing was accepted, and ravel-main says why in its own words.
        _ => None,
    }
}

/// Reads until the answer is whole (by its content length, else at EOF); its status and body.
fn read_answer(fd: i32, buf: &mut [u8]) -> Result<(u16, &[u8]), &'static [u8]> {
    let (status, start, end) = read_whole(fd, buf)?;
    Ok((status, &buf[start..end]))
}

/// [`read_answer`]'s reading: the status and where the body is in `buf`.
fn read_whole(fd: i32, buf: &mut [u8]) -> Result<(u16, usize, usize), &'static [u8]> {
    let mut len = 0;
    loop {
        if len == buf.len() {
            return Err(b"the answer is too long");
        }
        let eof = match sys::read(fd, &mut buf[len..]) {
            Ok(0) => true,
            Ok(n) => {
                len += n;
                false
            }
            Err(sys::TIMED_OUT) => return Err(b"no answer within 60s"),
            Err(_) => return Err(b"reading the answer failed"),
        };
        let got = &buf[..len];
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            if eof {
                return Err(b"the daemon closed the connection before it answered");
            }
            continue;
        };
        let (head, body) = (&got[..end], &got[end + 4..]);
        let Some(status) = head.get(9..12).and_then(number).and_then(|s| u16::try_from(s).ok()) else {
            return Err(b"the answer has no status");
        };
        let length = head.split(|&b| b == b'\n').find_map(|line| {
            let (name, value) = line.split_at(line.iter().position(|&b| b == b':')?);
            name.trim_ascii().eq_ignore_ascii_case(b"content-length").then(|| number(value[1..].trim_ascii()))?
        });
        let start = end + 4;
        match length {
            Some(n) if body.len() >= n as usize => return Ok((status, start, start + n as usize)),
            None if eof => return Ok((status, start, len)),
            Some(_) if eof => return Err(b"the daemon closed the connection in the middle of its answer"),
            _ => continue,
        }
    }
}

/// The `"id"` of `{"id":N,...}`.
fn id_of(body: &[u8]) -> Option<u64> {
    let at = body.windows(5).position(|w| w == b"\"id\":")? + 5;
    let digits = body[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    let mut n: u64 = 0;
    for &b in &body[at..at + digits] {
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    (digits > 0).then_some(n)
}

fn fail(parts: &[&[u8]]) -> ! {
    for part in parts {
        sys::write_all(2, part);
    }
    sys::write_all(2, b"\n");
    sys::exit(1)
}

/// `execve` of `ravel-main` beside this program, with our arguments and environment.
fn exec_main(p: &Process) -> ! {
    let mut path = [0u8; 4200];
    let n = sys::self_exe(&mut path[..4096]).unwrap_or(0);
    let dir = path[..n].iter().rposition(|&b| b == b'/').unwrap_or(0);
    let mut o = Out { buf: &mut path, len: dir + 1 };
    if n == 0 || o.push(MAIN).and_then(|()| o.push(b"\0")).is_none() {
        fail(&[b"ravel: cannot find this program's directory (/proc/self/exe), where ravel-main is"]);
    }
    let len = o.len;
    let errno = sys::execve(&path[..len], p.argv, p.envp);
    let mut code = [0u8; 12];
    let mut c = Out { buf: &mut code, len: 0 };
    let _ = c.num(errno as i64);
    let code_len = c.len;
    fail(&[
        b"ravel: cannot run ",
        &path[..len - 1],
        b" (errno ",
        &code[..code_len],
        b"); it is installed beside ravel (`cargo install --path crates/ravel` installs both)",
    ])
}

fn front(p: Process) -> ! {
    if let Some(run) = parse_run(&p) {
        let _ = submit(&p, &run);
    }
    exec_main(&p)
}

/// System calls: raw on the lean build, through the C library's `syscall` otherwise.
mod sys {
    #[cfg(all(ravel_lean, not(test)))]
    mod nr {
        pub const READ: usize = 0;
        pub const WRITE: usize = 1;
        pub const CLOSE: usize = 3;
        pub const SOCKET: usize = 41;
        pub const CONNECT: usize = 42;
        pub const SENDTO: usize = 44;
        pub const SETSOCKOPT: usize = 54;
        pub const EXECVE: usize = 59;
        pub const GETCWD: usize = 79;
        pub const UMASK: usize = 95;
        pub const EXIT_GROUP: usize = 231;
        pub const READLINKAT: usize = 267;
        pub const FACCESSAT: usize = 269;
    }
    #[cfg(not(all(ravel_lean, not(test))))]
    mod nr {
        pub const READ: usize = libc::SYS_read as usize;
        pub const WRITE: usize = libc::SYS_write as usize;
        pub const CLOSE: usize = libc::SYS_close as usize;
        pub const SOCKET: usize = libc::SYS_socket as usize;
        pub const CONNECT: usize = libc::SYS_connect as usize;
        pub const SENDTO: usize = libc::SYS_sendto as usize;
        pub const SETSOCKOPT: usize = libc::SYS_setsockopt as usize;
        pub const EXECVE: usize = libc::SYS_execve as usize;
        pub const GETCWD: usize = libc::SYS_getcwd as usize;
        pub const UMASK: usize = libc::SYS_umask as usize;
        pub const EXIT_GROUP: usize = libc::SYS_exit_group as usize;
        pub const READLINKAT: usize = libc::SYS_readlinkat as usize;
        pub const FACCESSAT: usize = libc::SYS_faccessat as usize;
    }

    const EINTR: isize = 4;
    const ENOENT: isize = 2;
    /// EAGAIN: what a read past SO_RCVTIMEO fails with.
    pub const TIMED_OUT: isize = 11;
    const AT_FDCWD: isize = -100;

    #[cfg(all(ravel_lean, not(test)))]
    unsafe fn syscall(n: usize, a: usize, b: usize, c: usize, d: usize, e: usize, f: usize) -> isize {
        let r: isize;
        // SAFETY: the caller's arguments are valid for system call `n`.
        unsafe {
            core::arch::asm!("syscall", inlateout("rax") n as isize => r, in("rdi") a, in("rsi") b, in("rdx") c,
                in("r10") d, in("r8") e, in("r9") f, lateout("rcx") _, lateout("r11") _, options(nostack));
        }
        r
    }

    #[cfg(not(all(ravel_lean, not(test))))]
    unsafe fn syscall(n: usize, a: usize, b: usize, c: usize, d: usize, e: usize, f: usize) -> isize {
        // SAFETY: the caller's arguments are valid for system call `n`.
        let r = unsafe { libc::syscall(n as libc::c_long, a, b, c, d, e, f) };
        if r == -1 { -(std::io::Error::last_os_error().raw_os_error().unwrap_or(5) as isize) } else { r as isize }
    }

    /// A system call retried while interrupted; `Err(errno)` on failure.
    fn call(n: usize, args: [usize; 6]) -> Result<usize, isize> {
        loop {
            // SAFETY: each wrapper below passes arguments valid for its call.
            let r = unsafe { syscall(n, args[0], args[1], args[2], args[3], args[4], args[5]) };
            match r {
                r if r >= 0 => return Ok(r as usize),
                r if r == -EINTR => continue,
                r => return Err(-r),
            }
        }
    }

    pub fn read(fd: i32, buf: &mut [u8]) -> Result<usize, isize> {
        call(nr::READ, [fd as usize, buf.as_mut_ptr() as usize, buf.len(), 0, 0, 0])
    }

    pub fn write_all(fd: i32, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match call(nr::WRITE, [fd as usize, bytes.as_ptr() as usize, bytes.len(), 0, 0, 0]) {
                Ok(n) if n > 0 => bytes = &bytes[n..],
                _ => return,
            }
        }
    }

    /// Sends all of `bytes` without SIGPIPE; `None` if the peer went away first.
    pub fn send_all(fd: i32, mut bytes: &[u8]) -> Option<()> {
        const MSG_NOSIGNAL: usize = 0x4000;
        while !bytes.is_empty() {
            let n = call(nr::SENDTO, [fd as usize, bytes.as_ptr() as usize, bytes.len(), MSG_NOSIGNAL, 0, 0]).ok()?;
            bytes = &bytes[n..];
        }
        Some(())
    }

    /// A Unix stream connection to `path` (NUL-terminated), reads and writes timing out after
    /// `timeout_s`.
    pub fn connect(path: &[u8], timeout_s: i64) -> Option<i32> {
        const AF_UNIX: usize = 1;
        const SOCK_STREAM_CLOEXEC: usize = 1 | 0o2000000;
        const SOL_SOCKET: usize = 1;
        const SO_RCVTIMEO: usize = 20;
        const SO_SNDTIMEO: usize = 21;
        let mut addr = [0u8; 110];
        if path.len() > addr.len() - 2 {
            return None;
        }
        addr[0] = AF_UNIX as u8;
        addr[2..2 + path.len()].copy_from_slice(path);
        let fd = call(nr::SOCKET, [AF_UNIX, SOCK_STREAM_CLOEXEC, 0, 0, 0, 0]).ok()? as i32;
        let timeval: [i64; 2] = [timeout_s, 0];
        let ok = call(nr::CONNECT, [fd as usize, addr.as_ptr() as usize, 2 + path.len(), 0, 0, 0]).is_ok()
            && [SO_RCVTIMEO, SO_SNDTIMEO].iter().all(|&opt| {
                call(nr::SETSOCKOPT, [fd as usize, SOL_SOCKET, opt, timeval.as_ptr() as usize, 16, 0]).is_ok()
            });
        if !ok {
            let _ = call(nr::CLOSE, [fd as usize, 0, 0, 0, 0, 0]);
            return None;
        }
        Some(fd)
    }

    /// Whether `path` (NUL-terminated) exists; `None` when that cannot be told.
    pub fn exists(path: &[u8]) -> Option<bool> {
        match call(nr::FACCESSAT, [AT_FDCWD as usize, path.as_ptr() as usize, 0, 0, 0, 0]) {
            Ok(_) => Some(true),
            Err(ENOENT) => Some(false),
            Err(_) => None,
        }
    }

    /// The working directory, without its NUL.
    pub fn getcwd(buf: &mut [u8]) -> Option<&[u8]> {
        let n = call(nr::GETCWD, [buf.as_mut_ptr() as usize, buf.len(), 0, 0, 0, 0]).ok()?;
        // The kernel counts the NUL; a path it cannot reach from our root starts otherwise.
        buf[..n.checked_sub(1)?].starts_with(b"/").then(|| &buf[..n - 1])
    }

    /// The umask (read by setting it, then putting it back).
    pub fn umask() -> u32 {
        let m = call(nr::UMASK, [0, 0, 0, 0, 0, 0]).unwrap_or(0o022);
        let _ = call(nr::UMASK, [m, 0, 0, 0, 0, 0]);
        m as u32
    }

    /// This program's path (`/proc/self/exe`), its length.
    pub fn self_exe(buf: &mut [u8]) -> Option<usize> {
        let link = b"/proc/self/exe\0";
        let n = call(
            nr::READLINKAT,
            [AT_FDCWD as usize, link.as_ptr() as usize, buf.as_mut_ptr() as usize, buf.len(), 0, 0],
        )
        .ok()?;
        (n < buf.len()).then_some(n)
    }

    /// Replaces this process; returns the errno if it could not.
    pub fn execve(path: &[u8], argv: *const *const u8, envp: *const *const u8) -> isize {
        call(nr::EXECVE, [path.as_ptr() as usize, argv as usize, envp as usize, 0, 0, 0]).err().unwrap_or(0)
    }

    pub fn exit(code: i32) -> ! {
        loop {
            // SAFETY: exit_group takes an integer and does not return.
            unsafe {
                syscall(nr::EXIT_GROUP, code as usize, 0, 0, 0, 0, 0);
            }
        }
    }
}

#[cfg(all(ravel_lean, not(test)))]
mod lean {
    //! The entry point and the few symbols the compiler expects from a C library.

    core::arch::global_asm!(
        ".globl _start",
        "_start:",
        "xor ebp, ebp",
        "mov rdi, rsp",
        "and rsp, -16",
        "call {entry}",
        "ud2",
        entry = sym start,
    );

    /// The kernel's initial stack: argc, argv[argc + 1], envp[..., NULL].
    unsafe extern "C" fn start(sp: *const usize) -> ! {
        // SAFETY: the layout the kernel gives every new program.
        let (argc, argv, envp) = unsafe {
            let argc = *sp;
            let argv = sp.add(1) as *const *const u8;
            (argc, argv, argv.add(argc + 1))
        };
        super::front(super::Process { argc, argv, envp })
    }

    #[panic_handler]
    fn panic(_: &core::panic::PanicInfo) -> ! {
        super::sys::write_all(2, b"ravel: internal error in the front\n");
        super::sys::exit(101)
    }

    /// Named by the precompiled `core`'s unwind tables; never called, as nothing unwinds here.
    #[unsafe(no_mangle)]
    extern "C" fn rust_eh_personality() {}

    // The crate is `no_builtins`, so these loops are not turned back into calls of themselves.
    #[unsafe(no_mangle)]
    unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        // SAFETY: the compiler calls this with valid, non-overlapping ranges.
        unsafe { memmove(dst, src, n) }
    }

    #[unsafe(no_mangle)]
    unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        // SAFETY: the compiler calls this with valid ranges of n bytes.
        unsafe {
            if (dst as usize) < (src as usize) {
                let mut i = 0;
                while i < n {
                    *dst.add(i) = *src.add(i);
                    i += 1;
                }
            } else {
                let mut i = n;
                while i > 0 {
                    i -= 1;
                    *dst.add(i) = *src.add(i);
                }
            }
        }
        dst
    }

    #[unsafe(no_mangle)]
    unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
        let mut i = 0;
        while i < n {
            // SAFETY: the compiler calls this with a valid range of n bytes.
            unsafe { *dst.add(i) = c as u8 };
            i += 1;
        }
        dst
    }

    #[unsafe(no_mangle)]
    unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
        let mut i = 0;
        while i < n {
            // SAFETY: the compiler calls this with valid ranges of n bytes.
            let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
            if x != y {
                return i32::from(x) - i32::from(y);
            }
            i += 1;
        }
        0
    }

    #[unsafe(no_mangle)]
    unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
        // SAFETY: as memcmp.
        unsafe { memcmp(a, b, n) }
    }
}

#[cfg(not(all(ravel_lean, not(test))))]
fn main() {
    use std::os::unix::ffi::OsStringExt;
    // The arguments as C strings; the environment is the C library's own array.
    let args: Vec<std::ffi::CString> =
        std::env::args_os().map(|a| std::ffi::CString::new(a.into_vec()).expect("arguments have no NUL")).collect();
    let mut argv: Vec<*const u8> = args.iter().map(|a| a.as_ptr().cast()).collect();
    argv.push(std::ptr::null());
    unsafe extern "C" {
        static environ: *const *const u8;
    }
    // SAFETY: environ is the process's environment; nothing here changes it.
    let envp = unsafe { environ };
    front(Process { argc: args.len(), argv: argv.as_ptr(), envp })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Process over owned strings.
    struct Owned {
        _strings: Vec<std::ffi::CString>,
        argv: Vec<*const u8>,
        envp: Vec<*const u8>,
    }

    fn process(args: &[&str], env: &[&str]) -> Owned {
        let strings: Vec<std::ffi::CString> =
            args.iter().chain(env).map(|s| std::ffi::CString::new(*s).unwrap()).collect();
        let mut argv: Vec<*const u8> = strings[..args.len()].iter().map(|s| s.as_ptr().cast()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const u8> = strings[args.len()..].iter().map(|s| s.as_ptr().cast()).collect();
        envp.push(std::ptr::null());
        Owned { _strings: strings, argv, envp }
    }

    /// What parse_run makes of `args`, shown while they are alive (a Run borrows them).
    fn parse(args: &[&str]) -> Option<String> {
        let o = process(args, &[]);
        parse_run(&Process { argc: o.argv.len() - 1, argv: o.argv.as_ptr(), envp: o.envp.as_ptr() })
            .map(|r| format!("{r:?}"))
    }

    #[test]
    fn takes_only_the_plain_run() {
        let run = parse(&[
            "ravel",
            "run",
            "--gpus",
            "2",
            "--cpus=3",
            "--priority",
            "-5",
            "--name",
            "a b",
            "--hold",
            "-q",
            "--",
            "sh",
            "-c",
            "x",
        ])
        .unwrap();
        let want = Run { gpus: 2, cpus: 3, priority: -5, name: Some("a b"), hold: true, command: 12 };
        assert_eq!(run, format!("{want:?}"));
        let plain = Run { gpus: 0, cpus: 1, priority: 0, name: None, hold: false, command: 3 };
        assert_eq!(parse(&["ravel", "run", "--", "true"]), Some(format!("{plain:?}")));
        for refused in [
            &["ravel", "queue"][..],
            &["ravel", "--context", "x", "run", "--", "true"],
            &["ravel", "run", "true"],
            &["ravel", "run", "--"],
            &["ravel", "run", "--", ""],
            &["ravel", "run", "--gpus", "1", "--gpus", "2", "--", "true"],
            &["ravel", "run", "--gpus", "+1", "--", "true"],
            &["ravel", "run", "--gpus", "99999999999", "--", "true"],
            &["ravel", "run", "--cpus", "0", "--", "true"],
            &["ravel", "run", "--name", "-x", "--", "true"],
            &["ravel", "run", "--hold=true", "--", "true"],
            &["ravel", "run", "--wait", "--", "true"],
            &["ravel", "run", "--gpus"],
        ] {
            assert_eq!(parse(refused), None, "{refused:?}");
        }
    }

    #[test]
    fn the_body_is_the_spec_ravel_main_sends() {
        let o = process(
            &["ravel", "run", "--gpus", "1", "--name", "n\"1", "--", "sh", "-c", "echo \"$X\"\t\u{1}é"],
            &["A=1", "RAVEL_TOKEN=secret", "B=x=y", "=weird", "NOEQ", "C=line\nbreak"],
        );
        let p = Process { argc: o.argv.len() - 1, argv: o.argv.as_ptr(), envp: o.envp.as_ptr() };
        let run = parse_run(&p).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let req = request(&p, &run, b"/tmp/x", 0o027, &mut buf).unwrap().to_vec();
        let text = String::from_utf8(req).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("POST /v1/jobs HTTP/1.1\r\n"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let sent: ravel_proto::SubmitRequest = serde_json::from_str(body).unwrap();
        let spec = sent.spec;
        assert_eq!(spec.command, ["sh", "-c", "echo \"$X\"\t\u{1}é"]);
        assert_eq!(spec.name.as_deref(), Some("n\"1"));
        assert_eq!(spec.cwd, "/tmp/x");
        let env: Vec<(&str, &str)> = spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(env, [("A", "1"), ("B", "x=y"), ("C", "line\nbreak")]);
        assert_eq!((spec.gpus, spec.cpus, spec.priority, spec.umask, spec.hold), (1, 1, 0, Some(0o027), false));
        assert!(sent.array.is_none() && spec.after.is_empty() && spec.timeout_ms.is_none() && spec.user.is_none());
    }

    #[test]
    fn a_controller_or_contexts_file_leaves_it_to_ravel_main() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let home = format!("RAVEL_HOME={d}/home");
        let config = format!("XDG_CONFIG_HOME={d}/config");
        let socket = |env: &[&str]| {
            let o = process(&["ravel"], env);
            let mut out = [0u8; 4200];
            local_socket(&Process { argc: o.argv.len() - 1, argv: o.argv.as_ptr(), envp: o.envp.as_ptr() }, &mut out)
                .map(|n| String::from_utf8(out[..n].to_vec()).unwrap())
        };
        assert_eq!(socket(&[&home, &config]), Some(format!("{d}/home/ravel.sock\0")));
        assert_eq!(socket(&[&config, &format!("HOME={d}/h")]), Some(format!("{d}/h/.local/share/ravel/ravel.sock\0")));
        assert_eq!(socket(&[&home, &config, "RAVEL_CONTROLLER=https://x:1"]), None);
        assert_eq!(socket(&[&home, &config, "RAVEL_CONTEXT=lab"]), None);
        assert_eq!(socket(&["RAVEL_HOME=rel", &config]), None);
        std::fs::create_dir_all(format!("{d}/config/ravel")).unwrap();
        std::fs::write(format!("{d}/config/ravel/contexts.json"), "{}").unwrap();
        assert_eq!(socket(&[&home, &config]), None);
    }

    #[test]
    fn reads_the_answer_and_its_id() {
        assert_eq!(id_of(br#"{"id":42,"ids":[42]}"#), Some(42));
        assert_eq!(id_of(br#"{"error":"x"}"#), None);
        assert_eq!(number(b"4294967295"), Some(u32::MAX));
        assert_eq!(number(b"4294967296"), None);
    }
}
