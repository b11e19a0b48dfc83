//! Per-user limits: the file they live in (`limits.json` in the daemon's home) and how they
//! reach the scheduler (GPUs and running jobs, through the policy) and admission (queued jobs).

use crate::Controller;
use ravel_core::policy::UserLimits;
use ravel_proto::{Limits, LimitsConfig};
use std::path::Path;

/// Reads the limits file; a missing file is no limits. A malformed one stops the daemon: it must
/// not run a shared box without the limits its admin set.
pub fn load(path: Option<&Path>) -> Result<LimitsConfig, String> {
    let Some(path) = path else { return Ok(LimitsConfig::default()) };
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "{}: {e}; expected {{\"default\": {{\"gpus\": 4, \"running\": 8, \"queued\": 1000}}, \"users\": {{\"alice\": {{\"gpus\": 8}}}}}}",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LimitsConfig::default()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Writes the limits file atomically.
pub fn save(path: &Path, cfg: &LimitsConfig) -> std::io::Result<()> {
    ravel_exec::write_json(path, cfg, ravel_exec::Durability::Synced)
}

/// What the policy enforces of `l`.
pub fn policy_limits(l: Limits) -> UserLimits {
    UserLimits { max_gpus: l.gpus, max_running: l.running }
}

impl Controller {
    /// Refuses a submit of `n` more jobs that would take `user` past their queued-jobs limit.
    pub(crate) fn check_queued_limit(&self, user: &str, n: usize) -> Result<(), crate::api::ApiError> {
        let st = self.lock();
        let Some(max) = st.users.limits_cfg.for_user(user).queued else { return Ok(()) };
        let id = st.users.lookup(user);
        let waiting = id.map_or(0, |id| {
            st.queue.values().filter(|q| q.user == id).count() + st.parked.values().filter(|p| p.job.user == id).count()
        });
        if waiting + n > max as usize {
            return Err(crate::api::ApiError::limit(format!(
                "User limit: {user} has {waiting} of {max} jobs waiting{}; wait for some to start, or cancel some \
                 (see `ravel admin limits`)",
                if n > 1 { format!(" and submits {n} more") } else { String::new() }
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_entry_wins_field_by_field() {
        let cfg: LimitsConfig =
            serde_json::from_str(r#"{"default": {"gpus": 4, "queued": 10}, "users": {"alice": {"gpus": 8}}}"#).unwrap();
        assert_eq!(cfg.for_user("alice"), Limits { gpus: Some(8), running: None, queued: Some(10) });
        assert_eq!(cfg.for_user("bob"), Limits { gpus: Some(4), running: None, queued: Some(10) });
        assert!(serde_json::from_str::<LimitsConfig>(r#"{"default": {"gpu": 4}}"#).is_err(), "typos are refused");
    }

    #[test]
    fn files_load_and_save() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("limits.json");
        assert_eq!(load(Some(&path)).unwrap(), LimitsConfig::default());
        let mut cfg = LimitsConfig::default();
        cfg.users.insert("bob".into(), Limits { running: Some(2), ..Limits::default() });
        save(&path, &cfg).unwrap();
        assert_eq!(load(Some(&path)).unwrap(), cfg);
        std::fs::write(&path, "{nope").unwrap();
        assert!(load(Some(&path)).unwrap_err().contains("limits.json"));
    }
}
