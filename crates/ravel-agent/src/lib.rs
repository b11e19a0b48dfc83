//! The node side of Ravel: GPU inventory, and launching, watching, re-adopting and stopping
//! attempts through their supervisors (see `ravel-exec`).
//!
//! The agent decides nothing: the controller tells it what to launch or stop, and the agent
//! reports each supervisor's end as an [`AgentEvent`]. In local mode it runs in-process.

pub mod remote;

use ravel_core::JobId;
use ravel_exec::{ExitRecord, Finished, LaunchSpec, Launched, Standby, SupervisorRecord, Zygote};
use ravel_gpu::{GpuInfo, GpuProbe, ProbeError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

/// What the agent reports to the controller.
#[derive(Debug)]
pub enum AgentEvent {
    /// The supervisor of `(job, attempt)` is gone. `exit` is the status it wrote; `None` means it
    /// vanished without writing one (killed with SIGKILL, or the machine rebooted). `spawned`
    /// says whether it had started the job (it records that in `supervisor.json` right after):
    /// a supervisor that ended before, with no exit status, never ran anything (its launcher
    /// died while handing it the spec).
    Ended { job: JobId, attempt: u32, exit: Option<ExitRecord>, spawned: bool },
}

/// The cgroup (relative to Ravel's cgroup root, which every daemon on the host shares) that an
/// attempt of a job runs in: `<instance>-<job>.<attempt>`, where the instance tells daemons
/// apart (job ids are only unique within one daemon's store).
pub fn cgroup_name(instance: &str, job: JobId, attempt: u32) -> String {
    format!("{instance}-{job}.{attempt}")
}

/// A short name for the daemon whose state lives in `home` (FNV-1a of the path, in hex).
pub fn instance_of(home: &Path) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in home.as_os_str().as_encoded_bytes() {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// What re-adoption found for an attempt the controller believes is live.
#[derive(Debug, PartialEq)]
pub enum Adoption {
    /// Its supervisor is alive and now watched; its end will arrive as an event.
    Watching { pid: i32, start_time: u64 },
    /// It ended while no one was watching; an `Ended` event has been sent.
    Ended,
    /// It never got a supervisor (the controller stopped between placing and launching it).
    NeverLaunched,
}

#[derive(Clone)]
pub struct LocalAgent {
    /// The `ravel` binary, run as `ravel __supervise RUN_DIR`.
    exe: PathBuf,
    /// This daemon's part of its attempts' cgroup names (see [`cgroup_name`]).
    instance: String,
    events: mpsc::UnboundedSender<AgentEvent>,
    probe: Arc<dyn GpuProbe>,
    /// Supervisors ready for the next attempt (see [`Standby`]) and those serving one, and
    /// whether a new one is being started.
    supervisors: Arc<Mutex<Supervisors>>,
    starting_standby: Arc<AtomicBool>,
    /// The fork server standbys come from (started with the first one).
    zygote: Arc<Mutex<Option<Zygote>>>,
}

impl LocalAgent {
    pub fn new(
        exe: PathBuf,
        instance: String,
        probe: Box<dyn GpuProbe>,
        events: mpsc::UnboundedSender<AgentEvent>,
    ) -> LocalAgent {
        LocalAgent {
            exe,
            instance,
            events,
            probe: Arc::from(probe),
            supervisors: Arc::default(),
            starting_standby: Arc::default(),
            zygote: Arc::default(),
        }
    }

    /// The cgroup an attempt of this daemon runs in.
    pub fn cgroup_name(&self, job: JobId, attempt: u32) -> String {
        cgroup_name(&self.instance, job, attempt)
    }

    pub fn probe_kind(&self) -> &'static str {
        self.probe.kind()
    }

    /// Reads the GPU inventory (off the async threads: NVML and nvidia-smi block).
    pub async fn inventory(&self) -> Result<Vec<GpuInfo>, String> {
        let probe = self.probe.clone();
        match tokio::task::spawn_blocking(move || probe.probe()).await {
            Ok(r) => r.map_err(|e: ProbeError| e.to_string()),
            Err(e) => Err(format!("GPU probe task failed: {e}")),
        }
    }

    /// A supervisor ready for the next attempt (one that finished an attempt, or one started
    /// ahead); with none ready, one forked by the zygote now, or none if that fails (the
    /// attempt's supervisor is then exec'd). Its identity is recorded with the placement before
    /// the attempt is handed to it ([`LocalAgent::launch`]), so that a restart between the two
    /// finds it; [`LocalAgent::put_back`] returns it unused.
    pub async fn take_standby(&self) -> Option<Standby> {
        if let Some(s) = self.take_ready() {
            return Some(s);
        }
        // None ready: submits come faster than standbys are made (the next one is started only
        // after a launch). One from the zygote now is a fork, ~0.2 ms; launching without one
        // execs a whole supervisor, ~1 ms of CPU. Bounded, since it waits on another process:
        // past the bound the launch goes without (and a late standby exits, given nothing).
        let (exe, zygote) = (self.exe.clone(), self.zygote.clone());
        let made = tokio::task::spawn_blocking(move || forked_standby(&exe, &zygote));
        let standby = match tokio::time::timeout(std::time::Duration::from_millis(250), made).await {
            Ok(Ok(Ok(s))) => Some(s),
            Ok(Ok(Err(e))) => {
                tracing::debug!(error = %e, "no standby from the zygote; launching without one");
                None
            }
            _ => None,
        };
        if let Some(s) = &standby {
            self.lock_supervisors().reserve(s);
        }
        self.start_standby();
        standby
    }

    /// A standby that is ready now, if any; never waits (see [`LocalAgent::take_standby`]).
    pub fn take_ready(&self) -> Option<Standby> {
        self.lock_supervisors().take()
    }

    pub fn put_back(&self, standby: Option<Standby>) {
        if let Some(s) = standby {
            let mut sup = self.lock_supervisors();
            sup.busy.remove(&s.launched().pid);
            sup.keep(s);
        }
    }

    fn lock_supervisors(&self) -> std::sync::MutexGuard<'_, Supervisors> {
        self.supervisors.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a standby supervisor in the background unless one is ready or starting.
    pub fn start_standby(&self) {
        if !self.lock_supervisors().ready.is_empty() || self.starting_standby.swap(true, Ordering::AcqRel) {
            return;
        }
        let (exe, supervisors, starting) = (self.exe.clone(), self.supervisors.clone(), self.starting_standby.clone());
        let zygote = self.zygote.clone();
        tokio::task::spawn_blocking(move || {
            match new_standby(&exe, &zygote) {
                Ok(s) => supervisors.lock().unwrap_or_else(|e| e.into_inner()).keep(s),
                Err(e) => tracing::warn!(error = %e, "cannot start a standby supervisor"),
            }
            starting.store(false, Ordering::Release);
        });
    }

    /// Starts the attempt's supervisor and watches it: `standby`, if given, is handed the
    /// attempt; otherwise a supervisor is spawned for it.
    pub async fn launch(
        &self,
        job: JobId,
        attempt: u32,
        run_dir: PathBuf,
        spec: LaunchSpec,
        standby: Option<Standby>,
    ) -> Result<Launched, String> {
        let Some(standby) = standby else {
            let exe = self.exe.clone();
            let dir = run_dir.clone();
            let launched = tokio::task::spawn_blocking(move || ravel_exec::launch(&exe, &dir, &spec))
                .await
                .map_err(|e| format!("launch task failed: {e}"))?
                .map_err(|e| e.to_string())?;
            self.watch(job, attempt, run_dir, launched.pid, true);
            self.start_standby();
            return Ok(launched);
        };
        let (launched, child) = (standby.launched(), standby.is_child());
        // A few directories and a socket write (~0.1 ms): done in place. Not even through
        // `block_in_place`, which hands this worker's queue to another thread each time.
        match standby.hand_over(&run_dir, &spec) {
            Ok(serving) => {
                self.lock_supervisors()
                    .busy
                    .insert(launched.pid, Busy { attempt: Some((job, attempt)), stopped: false });
                self.watch_serving(job, attempt, run_dir, serving);
            }
            Err(e) => {
                // It was given nothing and exits; the attempt fails like a launch would.
                self.lock_supervisors().busy.remove(&launched.pid);
                if child {
                    reap_in_background(launched.pid);
                }
                return Err(e.to_string());
            }
        }
        self.start_standby();
        Ok(launched)
    }

    /// Takes back an attempt after a controller restart.
    pub fn adopt(&self, job: JobId, attempt: u32, run_dir: &Path, known: Option<(i32, u64)>) -> Adoption {
        let mut record = ravel_exec::read_supervisor(run_dir);
        let from_record = |r: &Option<SupervisorRecord>| r.as_ref().map(|r| (r.supervisor_pid, r.supervisor_start));
        let mut found = known.or(from_record(&record));
        if found.is_none() && run_dir.join(ravel_exec::OUTPUTS_DIR).exists() {
            // `launch` got as far as preparing the run dir, so a supervisor may have started
            // without having written its record yet: look for it before declaring the attempt
            // unlaunched, or the job could run twice.
            found = ravel_exec::procfs::find_supervisor(run_dir).map(|p| (p.pid, p.start_time));
            if found.is_none() {
                record = ravel_exec::read_supervisor(run_dir);
                found = from_record(&record);
            }
            if found.is_none() && ravel_exec::read_exit(run_dir).is_some() {
                // It ran and ended (spawn failed, or a cancel before spawn) while no one watched.
                report_end(&self.events, job, attempt, run_dir, &self.cgroup_name(job, attempt));
                return Adoption::Ended;
            }
        }
        let Some((pid, start_time)) = found else {
            return Adoption::NeverLaunched;
        };
        // Open the pidfd before checking identity, so a pid reused after the check cannot fool us.
        // A supervisor serves attempts one after another: alive, it may be past this one, whose
        // exit record then says so (it is written before the supervisor moves on).
        if let Ok(fd) = ravel_exec::pidfd_open(pid)
            && ravel_exec::is_same_process(pid, start_time)
            && !run_dir.join(ravel_exec::EXIT_FILE).exists()
        {
            self.watch_fd(job, attempt, run_dir.to_path_buf(), pid, fd, false);
            return Adoption::Watching { pid, start_time };
        }
        // The supervisor is gone. It writes exit.json before it exits, so reading it now is final.
        report_end(&self.events, job, attempt, run_dir, &self.cgroup_name(job, attempt));
        Adoption::Ended
    }

    /// Asks the supervisor of `(job, attempt)` to stop its job (SIGTERM to the group, SIGKILL
    /// after the grace period). A supervisor of ours that is past that attempt (ready, or
    /// serving another) is left alone: the request is late, and the signal would stop the wrong
    /// job. One asked to stop is not given another attempt (the signal may still be pending).
    pub fn stop(&self, pid: i32, start_time: u64, job: JobId, attempt: u32) -> bool {
        let mut sup = self.lock_supervisors();
        if let Some(b) = sup.busy.get_mut(&pid) {
            if b.attempt != Some((job, attempt)) {
                return false;
            }
            b.stopped = true;
            // Under the lock: the supervisor cannot be given another attempt meanwhile.
            return matches!(ravel_exec::request_cancel(pid, start_time), Ok(true));
        }
        if sup.ready.iter().any(|s| s.launched().pid == pid) {
            return false;
        }
        drop(sup);
        matches!(ravel_exec::request_cancel(pid, start_time), Ok(true))
    }

    fn watch(&self, job: JobId, attempt: u32, run_dir: PathBuf, pid: i32, child: bool) {
        match ravel_exec::pidfd_open(pid) {
            Ok(fd) => self.watch_fd(job, attempt, run_dir, pid, fd, child),
            Err(e) => {
                // A standby is the zygote's child, reaped by the kernel: with a short job it can
                // be gone before we look, which is no trouble (its exit record says how it ended).
                if e.raw_os_error() == Some(libc::ESRCH) {
                    tracing::debug!(job, attempt, pid, "supervisor already gone; reading its exit record");
                } else {
                    tracing::warn!(job, attempt, pid, error = %e, "cannot watch supervisor; treating it as ended");
                }
                if child {
                    ravel_exec::reap(pid);
                }
                report_end(&self.events, job, attempt, &run_dir, &self.cgroup_name(job, attempt));
            }
        }
    }

    fn watch_fd(&self, job: JobId, attempt: u32, run_dir: PathBuf, pid: i32, fd: std::os::fd::OwnedFd, child: bool) {
        let events = self.events.clone();
        let cgroup = self.cgroup_name(job, attempt);
        tokio::spawn(async move {
            // SAFETY: the AsyncFd owns the OwnedFd; nothing else closes or reuses this fd while
            // it is registered.
            match unsafe { AsyncFd::register(fd) } {
                Ok(afd) => {
                    let _ = afd.readable().await;
                }
                Err(e) => {
                    // Fall back to polling identity; rare (no pidfd support in the reactor).
                    tracing::warn!(pid, error = %e.to_string(), "cannot register pidfd; polling");
                    while ravel_exec::procfs::read_stat(pid).is_some_and(|s| !s.is_zombie()) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            if child {
                ravel_exec::reap(pid);
            }
            report_ended(events, job, attempt, run_dir, cgroup).await;
        });
    }

    /// Watches a supervisor of ours serving `(job, attempt)`: its socket says when the attempt
    /// is recorded (and it is ready for another), or, at its end, that it is gone.
    fn watch_serving(&self, job: JobId, attempt: u32, run_dir: PathBuf, serving: Standby) {
        let pid = serving.launched().pid;
        let child = serving.is_child();
        // SAFETY: the AsyncFd owns the Standby and with it the socket, whose fd stays open and
        // the same until `into_inner` gives it back.
        let afd = match unsafe { AsyncFd::register_with_interest(serving, tokio::io::Interest::READABLE) } {
            Ok(afd) => afd,
            Err(e) => {
                let (_serving, e) = e.into_parts();
                // Rare (the reactor refused the socket): watch the process instead, and let it go
                // after this attempt.
                tracing::warn!(pid, error = %e.to_string(), "cannot watch a supervisor's socket; watching its process");
                self.lock_supervisors().busy.remove(&pid);
                return self.watch(job, attempt, run_dir, pid, child);
            }
        };
        let (events, supervisors) = (self.events.clone(), self.supervisors.clone());
        let cgroup = self.cgroup_name(job, attempt);
        tokio::spawn(async move {
            let finished = loop {
                let Ok(mut guard) = afd.readable().await else { break Finished::Gone };
                match guard.try_io(|s| s.get_ref().finished()) {
                    Ok(Ok(f)) => break f,
                    Ok(Err(_)) => break Finished::Gone,
                    Err(_would_block) => continue,
                }
            };
            let serving = afd.into_inner();
            let gone = {
                let mut sup = supervisors.lock().unwrap_or_else(|e| e.into_inner());
                let stopped = sup.busy.remove(&pid).is_some_and(|b| b.stopped);
                match finished {
                    // Ready before the end is reported, so that the launch the end makes room
                    // for finds it.
                    Finished::Ready if !stopped => sup.keep(serving),
                    Finished::Ready => let_go(serving),
                    Finished::Gone => drop(serving),
                }
                finished == Finished::Gone
            };
            // Its end of the socket closed as it exited: a zombie now, or in a moment.
            if gone && child {
                let _ = tokio::task::spawn_blocking(move || ravel_exec::wait_for_child(pid)).await;
            }
            report_ended(events, job, attempt, run_dir, cgroup).await;
        });
    }
}

/// Reports the end of `(job, attempt)` from its run dir. The usual end, an exit record, is one
/// small read: done in place. Without one, an orphaned job group may have to be killed and
/// waited for: on a blocking thread.
async fn report_ended(
    events: mpsc::UnboundedSender<AgentEvent>,
    job: JobId,
    attempt: u32,
    run_dir: PathBuf,
    cgroup: String,
) {
    match ravel_exec::read_exit(&run_dir) {
        Some(exit) => report_read_end(&events, job, attempt, &run_dir, &cgroup, Some(exit)),
        None => {
            let end = move || report_read_end(&events, job, attempt, &run_dir, &cgroup, None);
            let _ = tokio::task::spawn_blocking(end).await;
        }
    }
}

/// Supervisors of ours that can take an attempt.
#[derive(Default)]
struct Supervisors {
    /// Ready for an attempt: started ahead, or done with their last one.
    ready: Vec<Standby>,
    /// Taken for an attempt (or serving one), by pid.
    busy: std::collections::HashMap<i32, Busy>,
}

/// A supervisor taken for an attempt.
#[derive(Default)]
struct Busy {
    /// The attempt it serves; none while the attempt is being placed.
    attempt: Option<(JobId, u32)>,
    /// Asked to stop its job: not given another attempt, since the signal may still be pending.
    stopped: bool,
}

/// At most this many supervisors wait ready: more than the next burst of launches takes.
const MAX_READY: usize = 4;

impl Supervisors {
    /// The last one to become ready, whose pages are likeliest still in memory.
    fn take(&mut self) -> Option<Standby> {
        let s = self.ready.pop()?;
        self.reserve(&s);
        Some(s)
    }

    /// Counts `s` as taken for an attempt not yet placed: no stop request reaches it.
    fn reserve(&mut self, s: &Standby) {
        self.busy.insert(s.launched().pid, Busy::default());
    }

    /// Keeps `s` ready, or lets it go when enough are.
    fn keep(&mut self, s: Standby) {
        if self.ready.len() < MAX_READY {
            self.ready.push(s);
        } else {
            let_go(s);
        }
    }
}

/// Lets an unused standby supervisor go: it exits on the end of its input, and is reaped (by us
/// if it is our child; the zygote's are reaped by the kernel).
fn let_go(standby: Standby) {
    let (pid, child) = (standby.launched().pid, standby.is_child());
    drop(standby);
    if child {
        reap_in_background(pid);
    }
}

/// Waits for a child of ours that is about to exit (on the end of its input), and reaps it.
fn reap_in_background(pid: i32) {
    std::thread::spawn(move || ravel_exec::wait_for_child(pid));
}

/// A standby forked by the zygote ([`forked_standby`]), else one started by exec.
fn new_standby(exe: &Path, zygote: &Mutex<Option<Zygote>>) -> Result<Standby, ravel_exec::ExecError> {
    forked_standby(exe, zygote).or_else(|_| Standby::spawn(exe))
}

/// A standby forked by the zygote (started on first use); a zygote that fails is let go (the
/// next call starts a new one). The standby is not our child: the kernel reaps it.
fn forked_standby(exe: &Path, zygote: &Mutex<Option<Zygote>>) -> Result<Standby, ravel_exec::ExecError> {
    let mut z = zygote.lock().unwrap_or_else(|e| e.into_inner());
    if z.is_none() {
        match Zygote::spawn(exe) {
            Ok(started) => *z = Some(started),
            Err(e) => tracing::warn!(error = %e, "cannot start the supervisor zygote"),
        }
    }
    let Some(started) = z.as_ref() else {
        return Err(ravel_exec::ExecError::SpawnSupervisor {
            exe: exe.to_owned(),
            source: std::io::Error::other("no supervisor zygote"),
        });
    };
    started.standby().inspect_err(|e| {
        tracing::warn!(error = %e, "the supervisor zygote failed; starting a new one next time");
        if let Some(old) = z.take() {
            let pid = old.pid();
            drop(old);
            reap_in_background(pid);
        }
    })
}

/// The supervisor of `(job, attempt)` is gone: report what it left in the run dir. It writes
/// `exit.json` before it exits, so what is there now is final.
fn report_end(events: &mpsc::UnboundedSender<AgentEvent>, job: JobId, attempt: u32, run_dir: &Path, cgroup: &str) {
    report_read_end(events, job, attempt, run_dir, cgroup, ravel_exec::read_exit(run_dir));
}

/// [`report_end`] with the exit record already read.
fn report_read_end(
    events: &mpsc::UnboundedSender<AgentEvent>,
    job: JobId,
    attempt: u32,
    run_dir: &Path,
    cgroup: &str,
    exit: Option<ravel_exec::ExitRecord>,
) {
    // With an exit status, nothing else in the run dir matters here (the usual end: one read).
    let mut spawned = true;
    if exit.is_none() {
        let record = ravel_exec::read_supervisor(run_dir);
        kill_orphaned_job(record.as_ref(), run_dir);
        // Its supervisor did not live to empty and remove the job's cgroup.
        ravel_exec::cgroup::remove_leftover(cgroup);
        spawned = record.as_ref().is_some_and(|r| r.job_pid.is_some());
    }
    let _ = events.send(AgentEvent::Ended { job, attempt, exit, spawned });
}

/// A supervisor that died without writing its exit status may have left its job running with no
/// one to report it: kill that job's group, so the GPUs it held are really free again.
///
/// On a shared box the record lies in a run dir its job's user owns, so it may be forged: only a
/// process of that user, in the session the supervisor led, is killed.
fn kill_orphaned_job(record: Option<&SupervisorRecord>, run_dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Some(r) = record else { return };
    let (Some(pid), Some(start)) = (r.job_pid, r.job_start) else {
        return;
    };
    let in_session = ravel_exec::procfs::read_stat(pid).is_some_and(|s| s.session == r.supervisor_pid);
    let dir_owner = std::fs::symlink_metadata(run_dir).map(|m| m.uid()).unwrap_or(0);
    let owner_ok = dir_owner == 0 || ravel_exec::users::process_uid(pid as u32) == Some(dir_owner);
    if !(in_session && owner_ok) {
        tracing::warn!(pid, run_dir = %run_dir.display(), "supervisor record names a process that is not its job's; not killing it");
        return;
    }
    if ravel_exec::is_same_process(pid, start) {
        tracing::warn!(pid, "supervisor vanished; killing its job's process group");
        ravel_exec::kill_group_and_wait(pid, Duration::from_secs(5));
    }
}
