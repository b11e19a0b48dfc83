//! A typed, blocking client for the Ravel API: the local daemon over its Unix socket, or a
//! cluster controller over HTTPS with a bearer token.
//!
//! The CLI's hot path (`ravel run`) goes through here, so it is deliberately small: one
//! HTTP/1.1 request per connection, no async runtime; a local client never touches TLS.

mod http;
mod stream;
pub mod tls;

use http::Target;
use ravel_proto::ErrorBody;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use http::Response;
pub use stream::SseEvent;
pub use tls::Trust;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket: no daemon, or a stale socket file of a dead one.
    #[error("the ravel daemon is not running (no answer on {}); start it with `ravel daemon start`", socket.display())]
    NotRunning { socket: PathBuf },
    /// No TCP connection to the controller (name not resolved, refused, timed out).
    #[error("the controller at {url} does not answer ({message}); check the URL and that the controller runs")]
    Unreachable { url: String, message: String },
    /// The TLS handshake with the controller failed.
    #[error("TLS with the controller at {url} failed: {message}")]
    Tls { url: String, message: String },
    /// The controller's certificate is not the pinned one.
    #[error(
        "the controller's certificate has fingerprint {seen}, not the pinned {pinned}: if the controller at {url} \
made a new certificate, check its fingerprint (the controller prints it at start) and pin that one; \
otherwise something else answers at that address"
    )]
    CertificateMismatch { url: String, seen: String, pinned: String },
    /// The daemon answered with an error.
    #[error("{}", body.error)]
    Api { status: u16, body: ErrorBody },
    /// `target` is "the daemon on SOCKET" or "the controller at URL".
    #[error("talking to {target}: {message}")]
    Io { target: String, message: String },
    #[error("unexpected answer from the daemon: {0}")]
    Protocol(String),
    /// A client that cannot be made: a bad URL, token or trust setting.
    #[error("{0}")]
    Config(String),
}

impl ClientError {
    /// Only for the local daemon (which `ravel run` may start); an unreachable controller is
    /// [`ClientError::Unreachable`].
    pub fn is_not_running(&self) -> bool {
        matches!(self, ClientError::NotRunning { .. })
    }

    /// The API's error code (`not_found`, `bad_request`, ...), if the daemon answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { body, .. } => Some(&body.code),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Client {
    target: Target,
    timeout: Duration,
}

impl Client {
    /// The daemon listening on `socket`.
    pub fn local(socket: impl Into<PathBuf>) -> Client {
        Client { target: Target::Unix(socket.into()), timeout: Duration::from_secs(60) }
    }

    /// A controller at `https://HOST[:PORT]`, sending `token` as `Authorization: Bearer` and
    /// accepting the certificate `trust` says. Refuses `http://` URLs, and reads a CA file now.
    pub fn remote(url: &str, token: Option<String>, trust: Trust) -> Result<Client, ClientError> {
        let remote = tls::Remote::new(url, token, trust)?;
        Ok(Client { target: Target::Remote(Arc::new(remote)), timeout: Duration::from_secs(60) })
    }

    pub fn is_remote(&self) -> bool {
        matches!(self.target, Target::Remote(_))
    }

    /// The socket path or the controller's URL, for messages.
    pub fn target(&self) -> String {
        match &self.target {
            Target::Unix(socket) => socket.display().to_string(),
            Target::Remote(r) => r.url.clone(),
        }
    }

    /// The local daemon's socket (None for a controller).
    pub fn socket(&self) -> Option<&Path> {
        match &self.target {
            Target::Unix(socket) => Some(socket),
            Target::Remote(_) => None,
        }
    }

    /// How long one request may take (long polls pass their own, shorter, server timeout).
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        decode(self.raw("GET", path, None)?)
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        decode(self.raw("POST", path, Some(&body))?)
    }

    /// One request; a non-2xx answer becomes `ClientError::Api`.
    pub fn raw(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Response, ClientError> {
        let resp = http::request(&self.target, self.timeout, method, path, body)?;
        if (200..300).contains(&resp.status) {
            return Ok(resp);
        }
        Err(api_error(resp))
    }
}

impl Client {
    /// Follows a Server-Sent Events stream, calling `on_event` for each event until the stream
    /// ends or `on_event` returns false. `idle` bounds the silence between bytes.
    pub fn events(
        &self,
        path: &str,
        last_event_id: Option<&str>,
        idle: Duration,
        on_event: impl FnMut(SseEvent) -> bool,
    ) -> Result<(), ClientError> {
        streamed(stream::stream(&self.target, idle, path, last_event_id, on_event)?)
    }

    /// GETs a streamed answer (e.g. a followed log), handing its bytes to `on_bytes` as they
    /// arrive until it ends or `on_bytes` returns false.
    pub fn stream_body(
        &self,
        path: &str,
        idle: Duration,
        on_bytes: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), ClientError> {
        streamed(stream::body(&self.target, idle, path, "", on_bytes)?)
    }

    /// Like [`Client::stream_body`], a line (without its `\n`) at a time, until the answer ends
    /// or `on_line` returns false. An answer that ends in the middle of a line is an error.
    pub fn stream_lines(
        &self,
        path: &str,
        idle: Duration,
        mut on_line: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), ClientError> {
        let mut lines = stream::Lines::default();
        let mut stopped = false;
        self.stream_body(path, idle, |bytes| {
            stopped = !lines.feed(bytes, &mut on_line);
            !stopped
        })?;
        if !stopped && !lines.pending.is_empty() {
            return Err(ClientError::Protocol("the answer ended in the middle of a line".into()));
        }
        Ok(())
    }
}

/// A streamed answer that was an error.
fn streamed(resp: Option<Response>) -> Result<(), ClientError> {
    resp.map_or(Ok(()), |r| Err(api_error(r)))
}

/// A non-2xx answer as an error: the daemon's JSON error body, or the raw text.
fn api_error(resp: Response) -> ClientError {
    let body = serde_json::from_slice::<ErrorBody>(&resp.body).unwrap_or_else(|_| ErrorBody {
        code: "internal".into(),
        error: format!("HTTP {}: {}", resp.status, String::from_utf8_lossy(&resp.body).trim()),
    });
    ClientError::Api { status: resp.status, body }
}

fn decode<T: DeserializeOwned>(resp: Response) -> Result<T, ClientError> {
    serde_json::from_slice(&resp.body).map_err(|e| ClientError::Protocol(format!("bad JSON body: {e}")))
}

/// Percent-encodes a query value.
pub fn encode_query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~,".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
