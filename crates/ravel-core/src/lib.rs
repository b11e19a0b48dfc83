//! Ravel's domain: job specs and records, the job state machine, and the scheduling policy.
//!
//! This crate is pure: no I/O, no clock, no threads. Callers pass in the time and the world.

pub mod job;
pub mod policy;
pub mod units;

pub use job::{Attempt, Job, JobId, JobSpec, JobState, Millis, NotifyOn, Outcome, SpecError};
