//! User names for uids, as people see them: the passwd entry's name, else `uid N`.

/// The name of `uid` from /etc/passwd, or `uid N` when it has none.
pub fn user_name(uid: u32) -> String {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let uid_text = uid.to_string();
    passwd
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            (f.nth(1)? == uid_text).then(|| name.to_string())
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// The real uid of a live process, from /proc.
pub fn process_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_uids() {
        assert_eq!(user_name(0), "root");
        assert_eq!(user_name(4_000_000_000), "uid 4000000000");
        // SAFETY: getuid cannot fail.
        let me = unsafe { libc::getuid() };
        assert_eq!(process_uid(std::process::id()), Some(me));
        assert_eq!(process_uid(0), None);
    }
}
