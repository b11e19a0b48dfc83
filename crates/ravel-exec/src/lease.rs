//! A node's lease (cluster mode): a file holding a deadline (UTC ms). The agent pushes it
//! forward after each successful contact with its controller; every supervisor started with
//! `LaunchSpec::lease_file` kills its job once the deadline has passed or the file cannot be
//! read (self-fencing). Both sides use this module, so the format is defined once.

use std::io;
use std::path::Path;
use std::time::Duration;

use crate::atomic::{Durability, write_json};
use crate::records::now_ms;

/// Holds the lease in `file` for `valid_for` from now (atomically: a reader never sees a torn
/// deadline). Not fsynced: after a machine crash the jobs are gone anyway.
pub fn renew_lease(file: &Path, valid_for: Duration) -> io::Result<()> {
    let deadline = now_ms().saturating_add(i64::try_from(valid_for.as_millis()).unwrap_or(i64::MAX));
    write_json(file, &deadline, Durability::Unsynced)
}

/// Ends the lease in `file` now: its jobs die within a moment.
pub fn end_lease(file: &Path) -> io::Result<()> {
    write_json(file, &0i64, Durability::Unsynced)
}

/// Whether the lease in `file` still holds. An unreadable lease does not: the node can no longer
/// show that it is in contact with its controller.
pub(crate) fn lease_holds(file: &Path) -> bool {
    let deadline = std::fs::read_to_string(file).ok().and_then(|s| s.trim().parse::<i64>().ok());
    deadline.is_some_and(|d| now_ms() < d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_holds_until_its_deadline_or_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lease.3");
        assert!(!lease_holds(&file), "no file, no lease");
        renew_lease(&file, Duration::from_secs(60)).unwrap();
        assert!(lease_holds(&file));
        end_lease(&file).unwrap();
        assert!(!lease_holds(&file));
        renew_lease(&file, Duration::ZERO).unwrap();
        assert!(!lease_holds(&file), "a deadline of now has passed");
    }
}
