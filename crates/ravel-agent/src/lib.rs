//! The node side of Ravel: GPU inventory, and launching, watching, re-adopting and stopping
//! attempts through their supervisors (see `ravel-exec`).
//!
//! The agent decides nothing: the controller tells it what to launch or stop, and the agent
//! reports each supervisor's end as an [`AgentEvent`]. In local mode it runs in-process.

pub mod remote;

use ravel_core::JobId;
use ravel_exec::{ExitRecord, LaunchSpec, Launched, Standby, SupervisorRecord, Zygote};
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
    /// A supervisor started ahead of the next attempt (see [`Standby`]), and whether one is
    /// being started.
    standby: Arc<Mutex<Option<Standby>>>,
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
            standby: Arc::default(),
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

    /// The supervisor started ahead of the next attempt; with none ready, one forked by the
    /// zygote now, or none if that fails (the attempt's supervisor is then exec'd). Its identity is
    /// recorded with the placement before the attempt is handed to it ([`LocalAgent::launch`]),
    /// so that a restart between the two finds it; [`LocalAgent::put_back`] returns it unused.
    pub async fn take_standby(&self) -> Option<Standby> {
        let ready = self.standby.lock().unwrap_or_else(|e| e.into_inner()).take();
        if ready.is_some() {
            return ready;
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
        self.start_standby();
        standby
    }

    pub fn put_back(&self, standby: Option<Standby>) {
        if let Some(s) = standby {
            let mut slot = self.standby.lock().unwrap_or_else(|e| e.into_inner());
            match slot.as_ref() {
                None => *slot = Some(s),
                // One came up meanwhile: this one exits on the end of its input.
                Some(_) => let_go(s),
            }
        }
    }

    /// Starts a standby supervisor in the background unless one is ready or starting.
    pub fn start_standby(&self) {
        if self.standby.lock().unwrap_or_else(|e| e.into_inner()).is_some()
            || self.starting_standby.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let (exe, slot, starting) = (self.exe.clone(), self.standby.clone(), self.starting_standby.clone());
        let zygote = self.zygote.clone();
        tokio::task::spawn_blocking(move || {
            match new_standby(&exe, &zygote) {
                Ok(s) => {
                    let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
                    match slot.as_ref() {
                        None => *slot = Some(s),
                        Some(_) => let_go(s),
                    }
                }
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
        let (launched, child) = match standby {
            Some(s) => {
                let (launched, child) = (s.launched(), s.is_child());
                // A few directories and a pipe write (~0.1 ms): done in place. Not even through
                // `block_in_place`, which hands this worker's queue to another thread each time.
                let handed = s.hand_over(&run_dir, &spec);
                if let Err(e) = handed {
                    // It was given nothing and exits; the attempt fails like a launch would.
                    if child {
                        reap_in_background(launched.pid);
                    }
                    return Err(e.to_string());
                }
                (launched, child)
            }
            None => {
                let exe = self.exe.clone();
                let dir = run_dir.clone();
                let launched = tokio::task::spawn_blocking(move || ravel_exec::launch(&exe, &dir, &spec))
                    .await
                    .map_err(|e| format!("launch task failed: {e}"))?
                    .map_err(|e| e.to_string())?;
                (launched, true)
            }
        };
        self.watch(job, attempt, run_dir, launched.pid, child);
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
        if let Ok(fd) = ravel_exec::pidfd_open(pid)
            && ravel_exec::is_same_process(pid, start_time)
        {
            self.watch_fd(job, attempt, run_dir.to_path_buf(), pid, fd, false);
            return Adoption::Watching { pid, start_time };
        }
        // The supervisor is gone. It writes exit.json before it exits, so reading it now is final.
        report_end(&self.events, job, attempt, run_dir, &self.cgroup_name(job, attempt));
        Adoption::Ended
    }

    /// Asks the supervisor to stop its job (SIGTERM to the group, SIGKILL after the grace period).
    pub fn stop(&self, pid: i32, start_time: u64) -> bool {
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
            // The usual end, an exit record, is two small reads: done in place. Without one,
            // an orphaned job group may have to be killed and waited for: on a blocking thread.
            match ravel_exec::read_exit(&run_dir) {
                Some(exit) => report_read_end(&events, job, attempt, &run_dir, &cgroup, Some(exit)),
                None => {
                    let end = move || report_read_end(&events, job, attempt, &run_dir, &cgroup, None);
                    let _ = tokio::task::spawn_blocking(end).await;
                }
            }
        });
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
    let record = ravel_exec::read_supervisor(run_dir);
    if exit.is_none() {
        kill_orphaned_job(record.as_ref(), run_dir);
        // Its supervisor did not live to empty and remove the job's cgroup.
        ravel_exec::cgroup::remove_leftover(cgroup);
    }
    let spawned = record.as_ref().is_some_and(|r| r.job_pid.is_some());
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
