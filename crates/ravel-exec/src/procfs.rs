//! Reading process identity and ancestry from `/proc/PID/stat`.
//!
//! A pid alone does not identify a process across a daemon restart (pids are reused), so
//! processes are identified by pid + start time (clock ticks since boot, fixed at fork).

use std::fs;
use std::path::Path;

/// The fields of `/proc/PID/stat` this crate uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    /// `R`, `S`, `D`, `Z`, `T`, ...; `Z` is a zombie: exited, waiting to be reaped.
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    /// Field 22, `starttime`, in clock ticks since boot.
    pub start_time: u64,
}

impl ProcStat {
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }
}

/// Reads `/proc/PID/stat`. None if the process does not exist (or has been reaped).
pub fn read_stat(pid: i32) -> Option<ProcStat> {
    if pid <= 0 {
        return None;
    }
    let bytes = fs::read(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &bytes)
}

/// Parses the content of `/proc/PID/stat`. The command name (field 2) is in parentheses and
/// may itself contain spaces, parentheses and non-UTF-8 bytes, so parsing starts after the
/// last `)`.
fn parse_stat(pid: i32, bytes: &[u8]) -> Option<ProcStat> {
    let close = bytes.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&bytes[close + 1..]).ok()?;
    // Fields from 3 (state) on; field N is at index N - 3.
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).copied();
    let mut state_chars = field(3)?.chars();
    let state = state_chars.next()?;
    Some(ProcStat {
        pid,
        state,
        ppid: field(4)?.parse().ok()?,
        pgrp: field(5)?.parse().ok()?,
        session: field(6)?.parse().ok()?,
        start_time: field(22)?.parse().ok()?,
    })
}

/// The start time of `pid` (zombies included), or None if there is no such process.
pub fn process_start_time(pid: i32) -> Option<u64> {
    read_stat(pid).map(|s| s.start_time)
}

/// CLOCK_BOOTTIME now, in nanoseconds: the clock the kernel stamps a new process with.
pub(crate) fn boot_clock_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The start time of `pid`, a process created between two readings of [`boot_clock_ns`],
/// `before` and `after`. The kernel stamps a new process with CLOCK_BOOTTIME and `/proc`
/// shows that rounded down to clock ticks: when both readings fall in the same tick, so does
/// the start, and it is known without reading `/proc` (a read that, right after a spawn,
/// waits on the new process's exec). Otherwise it is read from `/proc`.
pub(crate) fn start_time_between(pid: i32, before: u64, after: u64) -> Option<u64> {
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // Nanoseconds per tick, when a second holds a whole number of them (as /proc converts).
    let tick = u64::try_from(hz).ok().filter(|hz| *hz > 0 && 1_000_000_000 % hz == 0).map(|hz| 1_000_000_000 / hz);
    match tick {
        Some(tick) if before / tick == after / tick => Some(before / tick),
        _ => process_start_time(pid),
    }
}

/// True if `pid` is alive (not a zombie) and is the process that started at `start_time`.
pub fn is_same_process(pid: i32, start_time: u64) -> bool {
    read_stat(pid).is_some_and(|s| !s.is_zombie() && s.start_time == start_time)
}

/// Every process visible in `/proc`. Processes come and go while this runs; callers treat
/// the result as a snapshot.
pub fn all_processes() -> Vec<ProcStat> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()).filter_map(read_stat).collect()
}

/// A live supervisor of `run_dir`, found by its command line (`... __supervise RUN_DIR ...`).
/// For the window between spawning a supervisor and it writing `supervisor.json`.
pub fn find_supervisor(run_dir: &Path) -> Option<ProcStat> {
    let want = run_dir.as_os_str().as_encoded_bytes();
    all_processes().into_iter().filter(|p| !p.is_zombie()).find(|p| {
        let Ok(cmdline) = fs::read(format!("/proc/{}/cmdline", p.pid)) else { return false };
        let mut args = cmdline.split(|b| *b == 0);
        args.any(|a| a == crate::SUPERVISE_SUBCOMMAND.as_bytes()) && args.next() == Some(want)
    })
}

/// Processes (zombies included) whose process group is `pgid`.
pub fn group_members(pgid: i32) -> Vec<ProcStat> {
    all_processes().into_iter().filter(|p| p.pgrp == pgid).collect()
}

/// Processes (zombies included) whose parent is `ppid`.
pub(crate) fn children_of(ppid: i32) -> Vec<ProcStat> {
    all_processes().into_iter().filter(|p| p.ppid == ppid).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT_TAIL: &str = " S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";

    #[test]
    fn parses_plain_command_name() {
        let line = format!("123 (sleep){STAT_TAIL}");
        let s = parse_stat(123, line.as_bytes()).unwrap();
        assert_eq!(s, ProcStat { pid: 123, state: 'S', ppid: 1, pgrp: 42, session: 42, start_time: 987654 });
    }

    #[test]
    fn parses_command_name_with_spaces_and_parens() {
        let line = format!("123 (evil) S 9 9 (x y){STAT_TAIL}");
        let s = parse_stat(123, line.as_bytes()).unwrap();
        assert_eq!((s.state, s.ppid, s.start_time), ('S', 1, 987654));
    }

    #[test]
    fn parses_non_utf8_command_name() {
        let mut line = b"123 (\xff\xfe)".to_vec();
        line.extend_from_slice(STAT_TAIL.as_bytes());
        assert_eq!(parse_stat(123, &line).unwrap().start_time, 987654);
    }

    #[test]
    fn start_time_between_two_clock_readings_is_the_one_proc_shows() {
        let mut known = 0;
        for _ in 0..50 {
            let before = boot_clock_ns();
            let mut child = std::process::Command::new("true").spawn().unwrap();
            let after = boot_clock_ns();
            let start = start_time_between(child.id() as i32, before, after);
            assert_eq!(start, process_start_time(child.id() as i32), "before {before} after {after}");
            child.wait().unwrap();
            known += usize::from(start.is_some());
        }
        assert_eq!(known, 50);
        // Readings a tick apart: the answer comes from /proc, and a process that is gone has none.
        assert_eq!(start_time_between(i32::MAX, 0, 1_000_000_000), None);
    }

    #[test]
    fn rejects_truncated_stat() {
        assert!(parse_stat(1, b"1 (init) S 0 1 1").is_none());
        assert!(parse_stat(1, b"garbage").is_none());
    }

    #[test]
    fn reads_own_stat() {
        let me = std::process::id() as i32;
        let s = read_stat(me).unwrap();
        assert_eq!(s.pid, me);
        assert!(!s.is_zombie());
        assert!(is_same_process(me, s.start_time));
        assert!(!is_same_process(me, s.start_time + 1));
        assert!(read_stat(0).is_none());
        assert!(read_stat(-1).is_none());
    }

    #[test]
    fn finds_a_supervisor_by_its_run_dir() {
        let dir = format!("/tmp/ravel-find-supervisor-{}", std::process::id());
        // `sh -c CMD NAME ARG` puts NAME and ARG on the command line like `ravel __supervise DIR`.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 5", crate::SUPERVISE_SUBCOMMAND, &dir])
            .spawn()
            .unwrap();
        // The child shows its command line once it has exec'd `sh`: look until then.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let mut found = None;
        while found.is_none() && std::time::Instant::now() < deadline {
            found = find_supervisor(Path::new(&dir)).map(|p| p.pid);
            if found.is_none() {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        let other = find_supervisor(Path::new(&format!("{dir}-other")));
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found, Some(child.id() as i32));
        assert!(other.is_none());
    }
}
