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

    proptest::proptest! {
        #[test]
        fn ready_only_when_dependencies_allow(
            after in proptest::collection::vec(0usize..6, 0..4),
            after_any in proptest::collection::vec(0usize..6, 0..4),
            held: bool,
            not_before in proptest::option::of(0i64..20),
            now in 0i64..20,
        ) {
            // Six jobs in fixed states: succeeded, failed, canceled, lost, pending, missing.
            let state = |d: JobId| match d {
                0 => DepState::Ended(JobState::Succeeded),
                1 => DepState::Ended(JobState::Failed),
                2 => DepState::Ended(JobState::Canceled),
                3 => DepState::Ended(JobState::Lost),
                4 => DepState::Pending,
                _ => DepState::Missing,
            };
            let s = spec(after.iter().map(|d| *d as JobId).collect(), after_any.iter().map(|d| *d as JobId).collect());
            let e = eligibility(&s, held, not_before, now, state);
            let afters_ok = s.after.iter().all(|d| state(*d) == DepState::Ended(JobState::Succeeded));
            let anys_ended = s.after_any.iter().all(|d| state(*d) != DepState::Pending);
            if e == Eligibility::Ready {
                proptest::prop_assert!(afters_ok && anys_ended && !held && not_before.is_none_or(|t| t <= now));
            }
            if let Eligibility::DependencyFailed { job, .. } = e {
                proptest::prop_assert!(s.after.contains(&job));
                proptest::prop_assert!(!matches!(state(job), DepState::Pending | DepState::Ended(JobState::Succeeded)));
            }
            if afters_ok && anys_ended && !held && not_before.is_none_or(|t| t <= now) {
                proptest::prop_assert_eq!(e, Eligibility::Ready);
            }
        }
    }
}
