//! Where a daemon's state lives and which daemon a command talks to.
//!
//! A user's own daemon keeps its state in `$RAVEL_HOME` (default `~/.local/share/ravel`), socket
//! included. A shared box's system daemon keeps it in `/var/lib/ravel` with its socket at
//! `/run/ravel/ravel.sock` (`RAVEL_SYSTEM_HOME` and `RAVEL_SYSTEM_SOCKET` move them, for tests
//! and packagers). Commands find their daemon in this order: `RAVEL_HOME` if set; else the
//! user's own daemon if it runs; else the system daemon if its socket exists; else the user's own
//! (which `ravel run` starts). Before all of these, a cluster controller (`target.rs`) wins when
//! one is chosen: `Home::resolve` says which.

use crate::target::{self, Remote};
use std::path::PathBuf;

#[derive(Clone)]
pub struct Home {
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// The shared box's system daemon.
    pub system: bool,
    /// Why commands talk to this daemon (shown by `ravel daemon status`).
    pub why: &'static str,
    /// A cluster controller that commands talk to instead of the daemon above.
    pub remote: Option<Remote>,
}

const SYSTEM_HOME: &str = "/var/lib/ravel";
const SYSTEM_SOCKET: &str = "/run/ravel/ravel.sock";

impl Home {
    /// What commands talk to: a controller when `--context` (`context`), `RAVEL_CONTROLLER` or
    /// the current context names one, else the local daemon [`Home::target`] finds.
    pub fn resolve(context: Option<&str>) -> anyhow::Result<Home> {
        match target::remote(context)? {
            // Paths of the local home still serve what is only local (none of it is used for
            // talking to the controller), so a missing HOME is no error here.
            Some(remote) => {
                let local = Home::from_env().unwrap_or_else(|_| Home::own(PathBuf::new()));
                Ok(Home { why: "a controller", remote: Some(remote), ..local })
            }
            None => Home::target(),
        }
    }

    /// The local daemon commands talk to, in the documented order.
    pub fn target() -> anyhow::Result<Home> {
        let own = Home::from_env()?;
        if std::env::var_os("RAVEL_HOME").is_some_and(|v| !v.is_empty()) {
            return Ok(Home { why: "RAVEL_HOME is set", ..own });
        }
        if crate::daemon::running_pid(&own).is_some() {
            return Ok(Home { why: "your own daemon runs", ..own });
        }
        let system = Home::system();
        if system.socket.exists() {
            return Ok(system);
        }
        Ok(Home { why: "no system daemon here: your own daemon", ..own })
    }

    /// The shared box's system daemon.
    pub fn system() -> Home {
        let var = |k: &str, default: &str| {
            std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(default))
        };
        Home {
            dir: var("RAVEL_SYSTEM_HOME", SYSTEM_HOME),
            socket: var("RAVEL_SYSTEM_SOCKET", SYSTEM_SOCKET),
            system: true,
            why: "the system daemon",
            remote: None,
        }
    }

    /// The user's own daemon.
    pub fn from_env() -> anyhow::Result<Home> {
        Ok(Home::own(state_dir(None, "ravel")?))
    }

    pub fn own(dir: PathBuf) -> Home {
        Home { socket: dir.join("ravel.sock"), dir, system: false, why: "your own daemon", remote: None }
    }

    /// `RAVEL_DB_PATH` overrides the database file (kept from the seed, for tests).
    pub fn db(&self) -> PathBuf {
        std::env::var_os("RAVEL_DB_PATH")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| self.dir.join("ravel.db"))
    }

    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("ravel.pid")
    }

    /// Serializes concurrent auto-starts from many `ravel run`s.
    pub fn start_lock(&self) -> PathBuf {
        self.dir.join("start.lock")
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }

    /// The daemon options last used, so `restart` and auto-start keep them.
    pub fn daemon_config(&self) -> PathBuf {
        self.dir.join("daemon.json")
    }

    /// Per-user limits of this daemon (`ravel admin limits`).
    pub fn limits_file(&self) -> PathBuf {
        self.dir.join("limits.json")
    }

    /// A client of the controller, or of the local daemon.
    pub fn client(&self) -> ravel_client::Client {
        match &self.remote {
            Some(r) => r.client.clone(),
            None => ravel_client::Client::local(self.socket.clone()),
        }
    }

    /// Creates the state dir (and the socket's dir): private for a user's daemon; readable for
    /// the system daemon's, whose users reach their run dirs and the socket through them.
    pub fn ensure(&self) -> anyhow::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        let mode = if self.system { 0o755 } else { 0o700 };
        let mut dirs = vec![self.dir.as_path()];
        let socket_dir = self.socket.parent().filter(|p| *p != self.dir.as_path());
        if let Some(p) = socket_dir {
            dirs.push(p);
        }
        for dir in dirs {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(dir)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        }
        Ok(())
    }
}

/// A state directory: `given` (a `--home` flag), else `$RAVEL_HOME`, else `name` in
/// `$XDG_DATA_HOME` (default `~/.local/share`). A relative path is taken from the current
/// directory.
pub fn state_dir(given: Option<PathBuf>, name: &str) -> anyhow::Result<PathBuf> {
    if let Some(dir) = given.or_else(|| std::env::var_os("RAVEL_HOME").filter(|v| !v.is_empty()).map(PathBuf::from)) {
        return Ok(if dir.is_absolute() { dir } else { std::env::current_dir()?.join(dir) });
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .ok_or_else(|| {
            anyhow::anyhow!("neither RAVEL_HOME nor HOME is set: set RAVEL_HOME to a directory for ravel's state")
        })?;
    Ok(base.join(name))
}
