//! Whether commands talk to a cluster controller, and the contexts file that names controllers.
//!
//! The order: `--context NAME` (or `RAVEL_CONTEXT`); else `RAVEL_CONTROLLER` (with
//! `RAVEL_TOKEN`, and `RAVEL_FINGERPRINT` or `RAVEL_CA_CERT`); else the current context of
//! `$XDG_CONFIG_HOME/ravel/contexts.json` (default `~/.config/ravel/contexts.json`); else the
//! local daemon (`home.rs`). The context named `local` is always the local daemon. Deciding
//! costs a failed `open` of the contexts file when there is none; the TLS set-up is only made
//! for a controller.

use anyhow::{Context as _, anyhow, bail};
use ravel_client::{Client, ClientError, Trust};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The context name that means the local daemon.
pub const LOCAL: &str = "local";

/// The contexts file.
#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
pub struct Contexts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// A named controller.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Context {
    pub controller: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
}

impl Context {
    pub fn trust(&self) -> Result<Trust, String> {
        match (&self.fingerprint, &self.ca_cert) {
            (Some(f), None) => Ok(Trust::Fingerprint(f.clone())),
            (None, Some(ca)) => Ok(Trust::CaFile(ca.clone())),
            _ => Err("give it exactly one of a certificate fingerprint and a CA certificate".into()),
        }
    }
}

impl Contexts {
    /// `$XDG_CONFIG_HOME/ravel/contexts.json`, else `$HOME/.config/ravel/contexts.json`.
    pub fn path() -> anyhow::Result<PathBuf> {
        Contexts::path_in(&env_var)
    }

    fn path_in(var: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<PathBuf> {
        let base = var("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".config")))
            .ok_or_else(|| anyhow!("neither XDG_CONFIG_HOME nor HOME is set: no place for ravel's contexts file"))?;
        Ok(base.join("ravel").join("contexts.json"))
    }

    /// The file's contexts; none when it does not exist.
    pub fn load(path: &Path) -> anyhow::Result<Contexts> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a valid contexts file; fix or remove it", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Contexts::default()),
            Err(e) => Err(anyhow!("cannot read {}: {e}", path.display())),
        }
    }

    /// Replaces the file at once (a new file renamed over it), readable by the user only: it
    /// holds tokens.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = path.parent().ok_or_else(|| anyhow!("bad contexts file path {}", path.display()))?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        ravel_exec::write_json_private(path, self).map_err(|e| anyhow!("cannot write {}: {e}", path.display()))
    }
}

/// A token kept in a file (`--token-file`), trimmed; an empty file is refused.
pub fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?
        .trim()
        .to_string();
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    Ok(token)
}

/// A controller commands talk to, and why.
#[derive(Clone, Debug)]
pub struct Remote {
    /// E.g. "context lab (the current one)" or "RAVEL_CONTROLLER is set".
    pub why: String,
    pub client: Client,
}

/// Where the controller settings come from, before any client is made.
pub enum Chosen {
    Local,
    Remote { controller: String, token: Option<String>, trust: Result<Trust, String>, why: String },
}

/// Decides in the documented order; `context` is `--context` (or `RAVEL_CONTEXT`).
pub fn choose(context: Option<&str>) -> anyhow::Result<Chosen> {
    choose_in(context, &env_var)
}

/// A variable of the environment, trimmed; empty counts as unset.
fn env_var(k: &str) -> Option<String> {
    std::env::var(k).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

/// [`choose`] with the environment given (for tests).
fn choose_in(context: Option<&str>, var: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Chosen> {
    if let Some(name) = context.map(str::trim).filter(|n| !n.is_empty()) {
        if name == LOCAL {
            return Ok(Chosen::Local);
        }
        let path = Contexts::path_in(var)?;
        let file = Contexts::load(&path)?;
        let Some(ctx) = file.contexts.get(name) else {
            let known: Vec<&str> = file.contexts.keys().map(String::as_str).collect();
            bail!(
                "no context named {name:?} in {} (known: {}); add it with `ravel context add {name} --controller URL ...`",
                path.display(),
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            );
        };
        return Ok(from_context(name, ctx, format!("context {name} (--context or RAVEL_CONTEXT)"), var));
    }
    if let Some(controller) = var("RAVEL_CONTROLLER") {
        let trust = match (var("RAVEL_FINGERPRINT"), var("RAVEL_CA_CERT")) {
            (Some(f), None) => Ok(Trust::Fingerprint(f)),
            (None, Some(ca)) => Ok(Trust::CaFile(ca.into())),
            (Some(_), Some(_)) => Err("both RAVEL_FINGERPRINT and RAVEL_CA_CERT are set: unset one".into()),
            (None, None) => {
                Err("RAVEL_CONTROLLER is set, but neither RAVEL_FINGERPRINT nor RAVEL_CA_CERT: set one to say \
which certificate to trust (the controller prints its fingerprint at start)"
                    .into())
            }
        };
        return Ok(Chosen::Remote {
            controller,
            token: var("RAVEL_TOKEN"),
            trust,
            why: "RAVEL_CONTROLLER is set".into(),
        });
    }
    let path = Contexts::path_in(var)?;
    let file = Contexts::load(&path)?;
    match file.current.as_deref().filter(|c| *c != LOCAL) {
        None => Ok(Chosen::Local),
        Some(name) => match file.contexts.get(name) {
            Some(ctx) => Ok(from_context(name, ctx, format!("context {name}, the current one"), var)),
            None => bail!(
                "the current context {name:?} is not in {}: choose another (`ravel context use NAME`, or `local`)",
                path.display()
            ),
        },
    }
}

fn from_context(name: &str, ctx: &Context, why: String, var: &dyn Fn(&str) -> Option<String>) -> Chosen {
    Chosen::Remote {
        controller: ctx.controller.clone(),
        // A context without a token of its own uses RAVEL_TOKEN (e.g. a CI secret).
        token: ctx.token.clone().or_else(|| var("RAVEL_TOKEN")),
        trust: ctx.trust().map_err(|e| format!("context {name}: {e}")),
        why,
    }
}

/// The controller to talk to, if any, with its client ready (TLS configured, CA file read).
pub fn remote(context: Option<&str>) -> anyhow::Result<Option<Remote>> {
    match choose(context)? {
        Chosen::Local => Ok(None),
        Chosen::Remote { controller, token, trust, why } => {
            let trust = trust.map_err(|e| anyhow!(e))?;
            let client = Client::remote(&controller, token, trust)
                .map_err(|e| anyhow!("{e} (the controller comes from {why})"))?;
            Ok(Some(Remote { why, client }))
        }
    }
}

/// Says which context a failure to reach the controller concerns: the connection-level errors
/// otherwise name only a URL.
pub fn explain(e: anyhow::Error, remote: Option<&Remote>) -> anyhow::Error {
    let Some(r) = remote else { return e };
    let reaching = matches!(
        e.downcast_ref::<ClientError>(),
        Some(ClientError::Unreachable { .. } | ClientError::Tls { .. } | ClientError::CertificateMismatch { .. })
    );
    if reaching { e.context(r.why.clone()) } else { e }
}

/// `ravel daemon ...` acts on the local daemon whatever the target: says so when commands
/// would otherwise talk to a controller.
pub fn note_daemon_is_local(context: Option<&str>) {
    if let Ok(Chosen::Remote { controller, why, .. }) = choose(context) {
        eprintln!("note: `ravel daemon` acts on the local daemon only; other commands talk to {controller} ({why})");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned().filter(|v| !v.is_empty())
    }

    fn remote(c: Chosen) -> (String, Option<String>, Result<Trust, String>, String) {
        match c {
            Chosen::Remote { controller, token, trust, why } => (controller, token, trust, why),
            Chosen::Local => panic!("local"),
        }
    }

    #[test]
    fn the_flag_then_the_environment_then_the_current_context_then_the_local_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().to_str().unwrap();
        let fp = "AB:".repeat(31) + "AB";
        // No contexts file, nothing set: the local daemon.
        assert!(matches!(choose_in(None, &env(&[("XDG_CONFIG_HOME", cfg)])).unwrap(), Chosen::Local));
        let path = Contexts::path_in(&env(&[("XDG_CONFIG_HOME", cfg)])).unwrap();
        assert_eq!(path, dir.path().join("ravel/contexts.json"));
        let ctx = |url: &str, token: Option<&str>| Context {
            controller: url.into(),
            token: token.map(String::from),
            fingerprint: Some(fp.clone()),
            ca_cert: None,
        };
        let file = Contexts {
            current: Some("lab".into()),
            contexts: [
                ("lab".to_string(), ctx("https://lab:8443", Some("t1"))),
                ("ci".to_string(), ctx("https://ci", None)),
            ]
            .into(),
        };
        file.save(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(Contexts::load(&path).unwrap(), file);

        let base = [("XDG_CONFIG_HOME", cfg)];
        let (url, token, trust, why) = remote(choose_in(None, &env(&base)).unwrap());
        assert_eq!(
            (url.as_str(), token.as_deref(), trust),
            ("https://lab:8443", Some("t1"), Ok(Trust::Fingerprint(fp.clone())))
        );
        assert!(why.contains("context lab"), "{why}");
        // RAVEL_CONTROLLER beats the current context.
        let with_env = [
            ("XDG_CONFIG_HOME", cfg),
            ("RAVEL_CONTROLLER", "https://env"),
            ("RAVEL_TOKEN", "t2"),
            ("RAVEL_CA_CERT", "/ca.pem"),
        ];
        let (url, token, trust, _) = remote(choose_in(None, &env(&with_env)).unwrap());
        assert_eq!(
            (url.as_str(), token.as_deref(), trust),
            ("https://env", Some("t2"), Ok(Trust::CaFile("/ca.pem".into())))
        );
        // --context beats both; a context without a token takes RAVEL_TOKEN.
        let (url, token, _, _) = remote(choose_in(Some("ci"), &env(&with_env)).unwrap());
        assert_eq!((url.as_str(), token.as_deref()), ("https://ci", Some("t2")));
        assert!(matches!(choose_in(Some("local"), &env(&with_env)).unwrap(), Chosen::Local));
        let err = choose_in(Some("nope"), &env(&base)).err().unwrap().to_string();
        assert!(err.contains("no context named \"nope\"") && err.contains("known: ci, lab"), "{err}");
        // The environment must say what to trust, once.
        let (.., trust, _) =
            remote(choose_in(None, &env(&[("XDG_CONFIG_HOME", cfg), ("RAVEL_CONTROLLER", "https://env")])).unwrap());
        assert!(trust.unwrap_err().contains("neither RAVEL_FINGERPRINT nor RAVEL_CA_CERT"));
    }
}
