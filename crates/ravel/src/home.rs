//! Where local state lives: `$RAVEL_HOME` (default `~/.local/share/ravel`) and the files in it.

use std::path::PathBuf;

pub struct Home {
    pub dir: PathBuf,
}

impl Home {
    pub fn from_env() -> anyhow::Result<Home> {
        if let Some(dir) = std::env::var_os("RAVEL_HOME").filter(|v| !v.is_empty()) {
            let dir = PathBuf::from(dir);
            let dir = if dir.is_absolute() { dir } else { std::env::current_dir()?.join(dir) };
            return Ok(Home { dir });
        }
        let base = std::env::var_os("XDG_DATA_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .ok_or_else(|| {
                anyhow::anyhow!("neither RAVEL_HOME nor HOME is set: set RAVEL_HOME to a directory for ravel's state")
            })?;
        Ok(Home { dir: base.join("ravel") })
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("ravel.sock")
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

    pub fn client(&self) -> ravel_client::Client {
        ravel_client::Client::local(self.socket())
    }

    pub fn ensure(&self) -> anyhow::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", self.dir.display()))
    }
}
