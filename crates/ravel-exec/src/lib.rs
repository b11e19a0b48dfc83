//! Running job attempts as process groups owned by a detached per-attempt supervisor.
//!
//! The daemon calls [`launch`], which writes the run dir and starts `ravel __supervise RUN_DIR`
//! in its own session. That supervisor ([`supervise_main`]) spawns the job as the leader of a
//! new process group, turns cancel requests (SIGTERM to the supervisor) into SIGTERM then
//! SIGKILL for the whole group, makes sure nothing of the job outlives it, and records the
//! outcome in `exit.json`. Because the job never depends on the daemon, a restarted daemon
//! re-adopts live supervisors by pid + start time ([`is_same_process`]) and reads the exit
//! records of those that finished meanwhile.
//!
//! Linux only: it relies on `/proc`, `pidfd_open(2)` and `PR_SET_CHILD_SUBREAPER`.

mod atomic;
pub mod cgroup;
mod cleanup;
mod control;
mod error;
mod fds;
mod group;
mod job;
mod launch;
mod lease;
pub mod procfs;
mod records;
mod resolve;
mod signals;
mod spawn;
mod supervise;
pub mod users;
mod wait;
mod zygote;

pub use atomic::{Durability, write_json, write_json_atomic, write_json_private};
pub use control::{kill_group_and_wait, pidfd_open, reap, request_cancel, wait_for_child};
pub use error::ExecError;
pub use launch::{
    Finished, Launched, SPEC_FROM_STDIN, STANDBY, SUPERVISE_SUBCOMMAND, Standby, launch, spread_subdirectories,
};
pub use lease::{end_lease, renew_lease};
pub use procfs::{is_same_process, process_start_time};
pub use records::{
    CgroupSpec, EXIT_FILE, ExitRecord, LAUNCH_FILE, LaunchSpec, OUTPUTS_DIR, RunAs, STDERR_FILE, STDOUT_FILE,
    SUPERVISOR_FILE, SupervisorRecord, open_log_for_reading, read_exit, read_launch, read_supervisor,
};
pub use supervise::{supervise_main, supervise_standby};
pub use zygote::{ZYGOTE, Zygote, zygote_main};
