//! The client side of cluster mode: `ravel context` (named controllers, in the contexts file),
//! `ravel token` (a controller's bearer tokens), `ravel nodes` and `ravel node`.

use super::{print_json, usage};
use crate::home::Home;
use crate::output::{duration, table, timestamp};
use crate::target::{self, Chosen, Context, Contexts, LOCAL};
use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use ravel_client::{Client, encode_query_value, tls};
use ravel_controller::now_ms;
use ravel_proto::{
    NodeInfo, NodeResponse, NodesResponse, Role, TokenCreateRequest, TokenCreated, TokenInfo, TokensResponse,
};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum ContextCommand {
    /// Name a controller: its URL, your token, and the certificate to trust
    #[command(
        long_about = "Names a controller: its URL, your token, and which certificate to trust (the fingerprint the \
controller prints at start, or a CA certificate). Kept in $XDG_CONFIG_HOME/ravel/contexts.json (default \
~/.config/ravel/contexts.json), readable by you only. Adding a name again replaces it.",
        after_help = "Examples:\n  ravel context add lab --controller https://ctl.lab:8443 --token-file ~/lab.token \\\n    \
--fingerprint AB:CD:... --use\n  ravel context add prod --controller https://ravel.example.com --token-file t --ca-cert ca.pem"
    )]
    Add(ContextAddArgs),
    /// Talk to this context's controller from now on (`local`: the local daemon)
    Use { name: String },
    /// List contexts; the current one is marked `*`. Tokens are never printed
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Forget a context (the current one: commands talk to the local daemon again)
    Rm { name: String },
}

#[derive(Args, Debug)]
pub struct ContextAddArgs {
    /// The context's name (`local` is reserved for the local daemon)
    pub name: String,
    /// The controller's URL: https://HOST[:PORT]
    #[arg(long, value_name = "URL")]
    pub controller: String,
    /// Your bearer token (`ravel token create` prints it); prefer --token-file, which keeps it out of
    /// your shell history
    #[arg(long, value_name = "TOKEN", conflicts_with = "token_file")]
    pub token: Option<String>,
    /// A file holding your token; it is read now and kept in the contexts file
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Trust exactly the certificate with this SHA-256 fingerprint (as the controller prints it)
    #[arg(long, value_name = "SHA256", conflicts_with = "ca_cert", required_unless_present = "ca_cert")]
    pub fingerprint: Option<String>,
    /// Trust certificates issued by this CA (PEM file) for the controller's host name
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Make it the current context
    #[arg(long = "use")]
    pub use_it: bool,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token. Its secret is printed once, alone on stdout
    #[command(
        long_about = "Creates a bearer token on the controller (admins only). The secret is printed once, alone on \
stdout (so `> file` keeps just it); the controller keeps only its hash. user: submits and manages its own jobs, sees \
the queue; admin: everything, including tokens and nodes; agent: for `ravel agent` on a node.",
        after_help = "Examples:\n  ravel token create --role user --name alice --expires 90d > alice.token\n  \
ravel token create --role agent --name gpu-07 > /etc/ravel/agent.token"
    )]
    Create {
        /// What it may do: admin (everything), user (its own jobs, and views), agent (a node's agent)
        #[arg(long)]
        role: RoleArg,
        /// Who it is for: a user token's jobs belong to this name (default: set by the controller)
        #[arg(long)]
        name: Option<String>,
        /// Valid for this long (e.g. 30d, 12h); default: until revoked
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
        /// Print the token's record and secret as JSON
        #[arg(long)]
        json: bool,
    },
    /// List tokens: id, name, role, dates and state (never their secrets)
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Revoke tokens: requests that carry them are refused from now on
    Revoke {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<u64>,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleArg {
    Admin,
    User,
    Agent,
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Place no new jobs on the node; running ones finish (then it is `drained`)
    Drain { name: String },
    /// Place jobs on a drained or cordoned node again
    Undrain { name: String },
    /// Place no new jobs on the node, without waiting for anything
    Cordon { name: String },
    /// Forget a node that holds no jobs (drain it, or let it be lost, first)
    Rm { name: String },
}

pub fn context(cmd: ContextCommand, flag: Option<&str>) -> anyhow::Result<ExitCode> {
    let path = Contexts::path()?;
    let mut file = Contexts::load(&path)?;
    match cmd {
        ContextCommand::Add(a) => {
            if a.name == LOCAL || a.name.is_empty() || a.name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                usage!("bad context name {:?}: `local` is the local daemon; use a word without spaces", a.name);
            }
            let token = match (&a.token, &a.token_file) {
                (Some(t), _) => Some(t.trim().to_string()),
                (None, Some(f)) => Some(target::read_token_file(f)?),
                (None, None) => None,
            };
            let fingerprint = match &a.fingerprint {
                Some(f) => Some(tls::normalize_fingerprint(f).map_err(|e| anyhow!("--fingerprint: {e}"))?),
                None => None,
            };
            let ca_cert = match &a.ca_cert {
                Some(p) => Some(std::fs::canonicalize(p).with_context(|| format!("--ca-cert {}", p.display()))?),
                None => None,
            };
            let ctx = Context {
                controller: a.controller.trim().trim_end_matches('/').to_string(),
                token,
                fingerprint,
                ca_cert,
            };
            // Checks the URL, the token's characters, and that a CA file is one; nothing is sent.
            Client::remote(&ctx.controller, ctx.token.clone(), ctx.trust().map_err(|e| anyhow!(e))?)?;
            let replaced = file.contexts.insert(a.name.clone(), ctx.clone()).is_some();
            if a.use_it {
                file.current = Some(a.name.clone());
            }
            file.save(&path)?;
            let verb = if replaced { "replaced" } else { "added" };
            let trust = match (&ctx.fingerprint, &ctx.ca_cert) {
                (Some(f), _) => format!("certificate {f}"),
                (_, Some(ca)) => format!("certificates of the CA in {}", ca.display()),
                _ => unreachable!("checked above"),
            };
            println!("{verb} context {} ({}, trusting {trust})", a.name, ctx.controller);
            if ctx.token.is_none() {
                println!("it has no token: requests will carry RAVEL_TOKEN if set, else none");
            }
            if a.use_it {
                println!("commands now talk to it");
            } else {
                println!("use it with `ravel context use {}`, or `--context {}` for one command", a.name, a.name);
            }
        }
        ContextCommand::Use { name } => {
            if name == LOCAL {
                file.current = None;
            } else if file.contexts.contains_key(&name) {
                file.current = Some(name.clone());
            } else {
                bail!("no context named {name:?} (see `ravel context ls`; add it with `ravel context add {name} ...`)");
            }
            file.save(&path)?;
            match file.current {
                Some(_) => println!("commands now talk to context {name} ({})", file.contexts[&name].controller),
                None => println!("commands now talk to the local daemon"),
            }
            overridden_note(flag);
        }
        ContextCommand::Rm { name } => {
            if file.contexts.remove(&name).is_none() {
                bail!("no context named {name:?} (see `ravel context ls`)");
            }
            let was_current = file.current.as_deref() == Some(name.as_str());
            if was_current {
                file.current = None;
            }
            file.save(&path)?;
            println!(
                "removed context {name}{}",
                if was_current { "; commands talk to the local daemon again" } else { "" }
            );
        }
        ContextCommand::Ls { json } => {
            #[derive(Serialize)]
            struct Row<'a> {
                name: &'a str,
                current: bool,
                controller: &'a str,
                has_token: bool,
                #[serde(skip_serializing_if = "Option::is_none")]
                fingerprint: Option<&'a str>,
                #[serde(skip_serializing_if = "Option::is_none")]
                ca_cert: Option<&'a std::path::Path>,
            }
            let rows: Vec<Row> = file
                .contexts
                .iter()
                .map(|(name, c)| Row {
                    name,
                    current: file.current.as_deref() == Some(name.as_str()),
                    controller: &c.controller,
                    has_token: c.token.is_some(),
                    fingerprint: c.fingerprint.as_deref(),
                    ca_cert: c.ca_cert.as_deref(),
                })
                .collect();
            if json {
                print_json(&rows)?;
                return Ok(ExitCode::SUCCESS);
            }
            if rows.is_empty() {
                println!(
                    "no contexts: commands talk to the local daemon (add a controller with \
`ravel context add NAME --controller https://HOST:PORT --fingerprint SHA256 --token-file FILE`)"
                );
            } else {
                let cells: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        let trust = match (r.fingerprint, r.ca_cert) {
                            (Some(f), _) => format!("fingerprint {}", crate::output::truncate(f, 24)),
                            (_, Some(ca)) => format!("CA {}", ca.display()),
                            _ => "-".into(),
                        };
                        vec![
                            if r.current { "*" } else { "" }.to_string(),
                            r.name.to_string(),
                            r.controller.to_string(),
                            if r.has_token { "yes" } else { "no" }.to_string(),
                            trust,
                        ]
                    })
                    .collect();
                print!("{}", table(&["CURRENT", "NAME", "CONTROLLER", "TOKEN", "TRUST"], &cells));
            }
            overridden_note(flag);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Says so when `--context` or `RAVEL_CONTROLLER` overrides the contexts file's choice.
fn overridden_note(flag: Option<&str>) {
    let from_flag = flag.is_some_and(|f| !f.trim().is_empty());
    let from_env = std::env::var("RAVEL_CONTROLLER").is_ok_and(|v| !v.trim().is_empty());
    if !(from_flag || from_env) {
        return;
    }
    match target::choose(flag) {
        Ok(Chosen::Remote { controller, why, .. }) => {
            eprintln!("note: commands talk to {controller} here, not the current context: {why}")
        }
        Ok(Chosen::Local) => eprintln!("note: commands talk to the local daemon here: --context local"),
        Err(_) => {}
    }
}

pub fn token(home: &Home, cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    let client = home.client();
    match cmd {
        TokenCommand::Create { role, name, expires, json } => {
            let expires_in_ms = match &expires {
                Some(d) => match ravel_core::units::parse_duration_ms(d) {
                    Ok(ms) => Some(ms),
                    Err(e) => usage!("--expires: {e}"),
                },
                None => None,
            };
            let role = match role {
                RoleArg::Admin => Role::Admin,
                RoleArg::User => Role::User,
                RoleArg::Agent => Role::Agent,
            };
            let created: TokenCreated = client.post("/v1/tokens", &TokenCreateRequest { role, name, expires_in_ms })?;
            if json {
                print_json(&created)?;
                return Ok(ExitCode::SUCCESS);
            }
            let t = &created.info;
            let expires = t.expires_at.map_or("never expires".to_string(), |e| format!("expires {}", timestamp(e)));
            eprintln!(
                "created token {} ({}, role {}, {expires}); its secret follows and will not be shown again:",
                t.id,
                t.name,
                t.role.as_str()
            );
            println!("{}", created.token);
        }
        TokenCommand::Ls { json } => {
            let resp: TokensResponse = client.get("/v1/tokens")?;
            if json {
                print_json(&resp)?;
                return Ok(ExitCode::SUCCESS);
            }
            if resp.tokens.is_empty() {
                println!("no tokens (create one with `ravel token create --role user --name NAME`)");
                return Ok(ExitCode::SUCCESS);
            }
            let now = now_ms();
            let rows: Vec<Vec<String>> = resp.tokens.iter().map(|t| token_row(t, now)).collect();
            print!("{}", table(&["ID", "NAME", "ROLE", "CREATED", "EXPIRES", "STATE"], &rows));
        }
        TokenCommand::Revoke { ids } => {
            let mut failed = false;
            for id in ids {
                match client.post::<_, TokenInfo>(&format!("/v1/tokens/{id}/revoke"), &serde_json::json!({})) {
                    Ok(t) => println!("token {id} ({}): revoked", t.name),
                    Err(e) => {
                        failed = true;
                        eprintln!("ravel: token {id}: {e}");
                    }
                }
            }
            return Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS });
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn token_row(t: &TokenInfo, now: i64) -> Vec<String> {
    let state = match (t.revoked_at, t.expires_at) {
        (Some(_), _) => "revoked",
        (None, Some(e)) if e <= now => "expired",
        _ => "active",
    };
    vec![
        t.id.to_string(),
        t.name.clone(),
        t.role.as_str().to_string(),
        timestamp(t.created_at),
        t.expires_at.map_or("never".to_string(), timestamp),
        state.to_string(),
    ]
}

pub fn nodes(home: &Home, json: bool) -> anyhow::Result<ExitCode> {
    let resp: NodesResponse = home.client().get("/v1/nodes")?;
    if json {
        print_json(&resp)?;
        return Ok(ExitCode::SUCCESS);
    }
    if resp.nodes.is_empty() {
        println!(
            "no nodes yet: start `ravel agent` on each node with an agent token (`ravel token create --role agent`)"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let now = now_ms();
    let rows: Vec<Vec<String>> = resp.nodes.iter().map(|n| node_row(n, now)).collect();
    print!("{}", table(&["NAME", "STATE", "GPUS FREE", "CPUS USED", "JOBS", "LAST-SEEN", "VERSION", "TAGS"], &rows));
    Ok(ExitCode::SUCCESS)
}

fn node_row(n: &NodeInfo, now: i64) -> Vec<String> {
    vec![
        n.name.clone(),
        n.state.clone(),
        format!("{}/{}", n.gpus_free, n.gpus_total),
        format!("{}/{}", n.cpus_used, n.cpus_total),
        n.jobs.to_string(),
        n.last_seen.map_or("-".to_string(), |t| format!("{} ago", duration(now - t))),
        if n.version.is_empty() { "-".to_string() } else { n.version.clone() },
        if n.tags.is_empty() { "-".to_string() } else { n.tags.join(",") },
    ]
}

pub fn node(home: &Home, cmd: NodeCommand) -> anyhow::Result<ExitCode> {
    let client = home.client();
    let (verb, name) = match &cmd {
        NodeCommand::Drain { name } => ("drain", name),
        NodeCommand::Undrain { name } => ("undrain", name),
        NodeCommand::Cordon { name } => ("cordon", name),
        NodeCommand::Rm { name } => ("rm", name),
    };
    let path = format!("/v1/nodes/{}", encode_query_value(name));
    let resp: NodeResponse = if verb == "rm" {
        serde_json::from_slice(&client.raw("DELETE", &path, None)?.body).context("bad answer from the controller")?
    } else {
        client.post(&format!("{path}/{verb}"), &serde_json::json!({}))?
    };
    let n = &resp.node;
    if verb == "rm" {
        println!("node {}: removed", n.name);
    } else if n.jobs > 0 && n.state == "draining" {
        println!("node {}: draining ({} job(s) still running)", n.name, n.jobs);
    } else {
        println!("node {}: {}", n.name, n.state);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows() {
        let n = NodeInfo {
            name: "gpu-07".into(),
            state: "ready".into(),
            gpus_total: 8,
            gpus_free: 3,
            cpus_total: 64,
            cpus_used: 12,
            jobs: 5,
            last_seen: Some(10_000),
            version: "0.1.0".into(),
            tags: vec!["a100".into(), "nvlink".into()],
            max_jobs: None,
            epoch: 2,
        };
        assert_eq!(node_row(&n, 13_000), ["gpu-07", "ready", "3/8", "12/64", "5", "3s ago", "0.1.0", "a100,nvlink"]);
        let t = TokenInfo {
            id: 3,
            name: "alice".into(),
            role: Role::User,
            created_at: 0,
            expires_at: Some(5),
            revoked_at: None,
        };
        assert_eq!(token_row(&t, 1)[4..], ["1970-01-01T00:00:00Z", "active"]);
        assert_eq!(token_row(&t, 5)[5], "expired");
        assert_eq!(token_row(&TokenInfo { revoked_at: Some(1), ..t }, 1)[5], "revoked");
    }
}
