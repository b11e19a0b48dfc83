//! Who is asking: the Unix socket peer's credentials (`SO_PEERCRED`), read by the kernel when
//! the connection was made — never a flag, a header or a field of the request — and what they
//! may do.
//!
//! Admins are root, the daemon's own user, and members of the configured admin group. A job
//! belongs to the user who submitted it; only they or an admin may change it or read its logs.

use crate::Controller;
use crate::api::ApiError;
use crate::tokens::TokenIdentity;
use axum::extract::FromRequestParts;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::http::request::Parts;
use axum::serve::IncomingStream;
use ravel_core::Job;
use ravel_proto::Role;
use std::sync::Arc;
use tokio::net::UnixListener;

/// The credentials of the process at the other end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
}

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Peer {
        match stream.io().peer_cred() {
            Ok(c) => Peer { uid: c.uid(), gid: c.gid() },
            // Cannot happen on Linux for a connected Unix socket; if it did, the caller gets
            // the rights of nobody in particular.
            Err(_) => Peer { uid: u32::MAX, gid: u32::MAX },
        }
    }
}

/// The caller of a request, as far as permissions go.
#[derive(Clone, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
    pub admin: bool,
    /// Set for a caller known by a bearer token (cluster mode): jobs are then theirs by name.
    pub role: Option<Role>,
}

impl FromRequestParts<Arc<Controller>> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, ctl: &Arc<Controller>) -> Result<Caller, ApiError> {
        if let Some(peer) = parts.extensions.get::<ConnectInfo<Peer>>().map(|c| c.0) {
            return Ok(ctl.caller(peer));
        }
        let token = parts
            .extensions
            .get::<TokenIdentity>()
            .ok_or_else(|| ApiError::unauthorized("the connection has neither peer credentials nor a token"))?;
        Ok(Caller {
            uid: u32::MAX,
            gid: u32::MAX,
            name: token.name.clone(),
            admin: token.role == Role::Admin,
            role: Some(token.role),
        })
    }
}

/// Cluster mode's door: every request but the health checks needs a valid bearer token, and
/// each role reaches only its part of the API (agents: `/v1/agent/...` only, and only they;
/// tokens, node changes, shutdown and limits: admins only). Refusals are JSON, change nothing,
/// and never echo the token.
pub async fn require_token(
    axum::extract::State(ctl): axum::extract::State<Arc<Controller>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = req.uri().path().to_string();
    if path == "/healthz" || path == "/readyz" {
        return next.run(req).await;
    }
    let header = req.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let secret = header.and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer "))).map(str::trim);
    let who = match ctl.tokens.check(secret, crate::now_ms()) {
        Ok(who) => who,
        Err(refused) => return ApiError::unauthorized(refused.message()).into_response(),
    };
    let agent_route = path.starts_with("/v1/agent/");
    let method = req.method().clone();
    let admin_route = path.starts_with("/v1/tokens")
        || path.starts_with("/v1/daemon/")
        || (path.starts_with("/v1/admin/") && method != axum::http::Method::GET)
        || (path.starts_with("/v1/nodes/") && method != axum::http::Method::GET);
    let refusal = match who.role {
        Role::Agent if !agent_route => Some("an agent token may only sync (`/v1/agent/...`); use a user token"),
        Role::Admin | Role::User if agent_route => Some("only agent tokens may use `/v1/agent/...`"),
        Role::User if admin_route => Some("this needs an admin token"),
        _ if path == "/v1/ui/session" => Some("the web UI is opened on the controller's host (`ravel ui` there)"),
        _ => None,
    };
    if let Some(why) = refusal {
        let article = if who.role == Role::User { "a" } else { "an" };
        return ApiError::forbidden(format!("{why} (you are {} with {article} {} token)", who.name, who.role.as_str()))
            .into_response();
    }
    req.extensions_mut().insert(who);
    next.run(req).await
}

impl Controller {
    /// Names and admin rights of a peer (names are cached: the passwd file is read once per uid).
    pub(crate) fn caller(&self, peer: Peer) -> Caller {
        let name = {
            let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
            names.entry(peer.uid).or_insert_with(|| ravel_exec::users::user_name(peer.uid)).clone()
        };
        let admin = peer.uid == 0
            || peer.uid == self.own_uid
            || self.admin_gid.is_some_and(|g| peer.gid == g || member_of(&name, peer.gid, g));
        Caller { uid: peer.uid, gid: peer.gid, name, admin, role: None }
    }

    /// Whether `job` is the caller's own: by uid on a socket, by name for a token.
    pub(crate) fn owns(&self, caller: &Caller, job: &Job) -> bool {
        match caller.role {
            Some(_) => job.spec.user.as_deref() == Some(caller.name.as_str()),
            None => self.owner_of(job) == caller.uid,
        }
    }

    /// The uid a job belongs to (jobs recorded before uids were kept belong to the daemon's user).
    pub(crate) fn owner_of(&self, job: &Job) -> u32 {
        job.spec.uid.unwrap_or(self.own_uid)
    }

    /// Refuses, with one clear line, a caller who may not `verb` (e.g. "cancel") `job`.
    pub(crate) fn check_owner(&self, caller: &Caller, job: &Job, verb: &str) -> Result<(), ApiError> {
        if caller.admin || self.owns(caller, job) {
            return Ok(());
        }
        let owner = job.spec.user.as_deref().unwrap_or("another user");
        Err(ApiError::forbidden(format!(
            "job {} belongs to {owner}; only {owner} or an admin may {verb} it (you are {})",
            job.id, caller.name
        )))
    }

    /// Whether `caller` may see `job` at all (everyone may, unless the queue is private).
    pub(crate) fn may_see(&self, caller: &Caller, job: &Job) -> bool {
        !self.cfg.private_queue || caller.admin || self.owns(caller, job)
    }
}

/// Whether user `name` (primary group `gid`) is in group `group`, by the group database.
pub fn member_of(name: &str, gid: u32, group: u32) -> bool {
    groups_of(name, gid).contains(&group)
}

pub use ravel_exec::users::groups_of;

/// The gid of group `name`, from /etc/group.
pub fn group_id(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// Why a user may not enter a directory.
#[derive(Debug, PartialEq, Eq)]
pub enum NoEntry {
    /// A component is missing where the user could look (so they may be told).
    Missing,
    /// A component they may not search: what lies beyond it is not looked at, so its
    /// existence is not revealed.
    Denied(String),
}

/// Whether user `uid` with groups `gids` may enter every directory of the absolute path `dir`
/// (search permission on each component, by the mode bits; root may always). A check at submit
/// time so that a job is refused at once; the job's own `chdir`, made after it dropped to the
/// user's rights, is what finally decides. Each component is looked at only once the user may
/// search its parent.
pub fn can_enter(dir: &str, uid: u32, gids: &[u32]) -> Result<(), NoEntry> {
    use std::os::unix::fs::MetadataExt;
    if uid == 0 {
        return Ok(());
    }
    let mut path = std::path::PathBuf::from("/");
    let components: Vec<_> = std::path::Path::new(dir).components().skip(1).collect();
    for c in std::iter::once(None).chain(components.into_iter().map(Some)) {
        if let Some(c) = c {
            path.push(c);
        }
        let meta = std::fs::metadata(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => NoEntry::Missing,
            _ => NoEntry::Denied(format!("{}: {e}", path.display())),
        })?;
        let mode = meta.mode();
        let bit = if meta.uid() == uid {
            0o100
        } else if gids.contains(&meta.gid()) {
            0o010
        } else {
            0o001
        };
        if mode & bit == 0 {
            return Err(NoEntry::Denied(format!("{}: permission denied", path.display())));
        }
    }
    Ok(())
}

/// Shared by handlers that take a job by id and check its owner.
pub(crate) async fn owned_job(
    ctl: &Arc<Controller>,
    caller: &Caller,
    id: ravel_core::JobId,
    verb: &str,
) -> Result<Job, ApiError> {
    let job = ctl.store.job(id).await?.ok_or(ravel_store::StoreError::NotFound(id))?;
    ctl.check_owner(caller, &job, verb)?;
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_enters_anywhere_and_others_need_search_rights() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let locked = dir.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();
        let owner = std::fs::metadata(&locked).map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap();
        let stranger = if owner == 0 { 4_000_000 } else { 0 };
        let p = locked.to_str().unwrap();
        assert!(can_enter(p, owner, &[]).is_ok());
        if stranger != 0 {
            let Err(NoEntry::Denied(e)) = can_enter(p, stranger, &[]) else { panic!("denied") };
            assert!(e.contains("locked: permission denied"), "{e}");
            let hidden = locked.join("maybe/there");
            assert!(
                matches!(can_enter(hidden.to_str().unwrap(), stranger, &[]), Err(NoEntry::Denied(_))),
                "not Missing"
            );
            assert!(can_enter(dir.path().to_str().unwrap(), stranger, &[]).is_ok());
        }
        assert!(can_enter("/no/such/dir", 0, &[]).is_ok(), "root is not checked");
        assert_eq!(can_enter("/no/such/dir", 4_000_000, &[]), Err(NoEntry::Missing));
    }

    #[test]
    fn groups_come_from_the_group_database() {
        assert!(groups_of("root", 0).contains(&0));
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(group_id("no-such-group-here"), None);
    }
}
