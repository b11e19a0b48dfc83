//! Whether a queued or blocked job may be considered for placement at all: dependencies, holds
//! and begin times. Resources are `schedule`'s business.

use crate::job::{JobId, JobSpec, JobState, Millis};

/// What the caller knows of a dependency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DepState {
    /// Not finished yet (or never started).
    Pending,
    Ended(JobState),
    /// No such job (deleted history); treated as failed.
    Missing,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Eligibility {
    Ready,
    /// Waits for this dependency to end.
    WaitingOn(JobId),
    /// An `--after` dependency ended without success: the job can never run.
    DependencyFailed {
        job: JobId,
        state: Option<JobState>,
    },
    Held,
    NotBefore(Millis),
}

/// Dependencies first (a failed one ends the job, whatever else holds it), then the hold, then
/// the begin time (`not_before` also carries a retry's backoff).
pub fn eligibility(
    spec: &JobSpec,
    held: bool,
    not_before: Option<Millis>,
    now: Millis,
    dep: impl Fn(JobId) -> DepState,
) -> Eligibility {
    let mut waiting = None;
    for &d in &spec.after {
        match dep(d) {
            DepState::Ended(JobState::Succeeded) => {}
            DepState::Ended(s) => return Eligibility::DependencyFailed { job: d, state: Some(s) },
            DepState::Missing => return Eligibility::DependencyFailed { job: d, state: None },
            DepState::Pending => {
                waiting.get_or_insert(d);
            }
        }
    }
    for &d in &spec.after_any {
        if dep(d) == DepState::Pending {
            waiting.get_or_insert(d);
        }
    }
    if let Some(d) = waiting {
        return Eligibility::WaitingOn(d);
    }
    if held {
        return Eligibility::Held;
    }
    match not_before {
        Some(t) if t > now => Eligibility::NotBefore(t),
        _ => Eligibility::Ready,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(after: Vec<JobId>, after_any: Vec<JobId>) -> JobSpec {
        JobSpec { command: vec!["true".into()], after, after_any, ..JobSpec::default() }
    }

    #[test]
    fn dependencies_decide_first() {
        let states = |d: JobId| match d {
            1 => DepState::Ended(JobState::Succeeded),
            2 => DepState::Ended(JobState::Failed),
            3 => DepState::Pending,
            _ => DepState::Missing,
        };
        assert_eq!(eligibility(&spec(vec![1], vec![]), true, None, 0, states), Eligibility::Held);
        assert_eq!(
            eligibility(&spec(vec![1, 2], vec![]), true, None, 0, states),
            Eligibility::DependencyFailed { job: 2, state: Some(JobState::Failed) }
        );
        assert_eq!(eligibility(&spec(vec![3], vec![2]), false, None, 0, states), Eligibility::WaitingOn(3));
        // --after-any runs after a failed dependency.
        assert_eq!(eligibility(&spec(vec![], vec![2]), false, None, 0, states), Eligibility::Ready);
        assert_eq!(
            eligibility(&spec(vec![9], vec![]), false, None, 0, states),
            Eligibility::DependencyFailed { job: 9, state: None }
        );
        assert_eq!(eligibility(&spec(vec![], vec![]), false, Some(10), 5, states), Eligibility::NotBefore(10));
        assert_eq!(eligibility(&spec(vec![], vec![]), false, Some(10), 10, states), Eligibility::Ready);
    }
}
