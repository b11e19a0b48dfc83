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

/// A user's passwd entry: what a job run as them needs besides uid and gid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Passwd {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// The passwd entry of user `name`, from /etc/passwd.
pub fn passwd(name: &str) -> Option<Passwd> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 6 || f[0] != name {
            return None;
        }
        Some(Passwd {
            name: name.to_string(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5].to_string(),
        })
    })
}

/// The groups of user `name` with primary group `gid`, from the group database (the primary
/// one included), as `initgroups` would set them.
pub fn groups_of(name: &str, gid: u32) -> Vec<u32> {
    let Ok(cname) = std::ffi::CString::new(name) else {
        return vec![gid];
    };
    let mut n: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; n.max(1) as usize];
        let room = n;
        // SAFETY: `groups` has room for `room` entries; getgrouplist writes at most that many and
        // sets `n` to the number it found (or needs).
        let r = unsafe { libc::getgrouplist(cname.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if r >= 0 {
            groups.truncate(n.max(0) as usize);
            return groups;
        }
        if n <= room {
            return vec![gid];
        }
    }
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
        let root = passwd("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(passwd("no-such-user-here"), None);
        assert!(groups_of("root", 0).contains(&0));
    }
}
