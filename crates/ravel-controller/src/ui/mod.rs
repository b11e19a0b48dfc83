//! The web UI: server-rendered pages with a little JavaScript for live updates (the event stream)
//! and log tails, served by the daemon itself; no build step, assets are in the binary.
//!
//! Safe by default: nothing listens until someone who may talk to the daemon runs `ravel ui`,
//! which opens a listener on 127.0.0.1 only and prints a one-time login link. The link gives the
//! browser a session cookie (HttpOnly, SameSite=Strict) bound to that user: the pages and the API
//! behind them then act with that user's rights, as the socket would. Every request must name
//! the listener itself in `Host` (a DNS-rebinding page cannot), and every change must come with
//! a matching `Origin`.

mod pages;

use crate::Controller;
use crate::api::{ApiError, Json};
use crate::auth::{Caller, Peer};
use axum::Router;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a login link works.
const TOKEN_LIFE: Duration = Duration::from_secs(300);
const COOKIE: &str = "ravel_session";

/// The UI listener, once opened, and who may use it.
#[derive(Default)]
pub struct Ui {
    inner: Mutex<UiState>,
}

#[derive(Default)]
struct UiState {
    port: Option<u16>,
    /// One-time login tokens: (user, when made).
    tokens: HashMap<String, (Peer, Instant)>,
    sessions: HashMap<String, Peer>,
}

#[derive(Deserialize, Serialize, Default, utoipa::ToSchema)]
pub struct SessionRequest {
    /// Port to listen on when the UI is not open yet (0 or absent: any free port).
    #[serde(default)]
    pub port: Option<u16>,
}

#[derive(Deserialize, Serialize, utoipa::ToSchema)]
pub struct SessionResponse {
    /// Open this in a browser on this machine: it logs in once and shows the jobs.
    pub url: String,
    pub port: u16,
}

#[utoipa::path(post, path = "/v1/ui/session", tag = "ui", request_body = crate::ui::SessionRequest, responses((status = 200, description = "A one-time login link", body = crate::ui::SessionResponse)))]
/// `POST /v1/ui/session` (on the socket): opens the UI listener if needed, and returns a one-time
/// login link for the caller.
pub async fn session(
    State(ctl): State<Arc<Controller>>,
    caller: Caller,
    Json(req): Json<SessionRequest>,
) -> Result<axum::Json<SessionResponse>, ApiError> {
    let running = ctl.ui.inner.lock().unwrap_or_else(|p| p.into_inner()).port;
    let port = match running {
        Some(p) => p,
        None => open(&ctl, req.port.unwrap_or(0)).await?,
    };
    let token = random_hex();
    let peer = Peer { uid: caller.uid, gid: caller.gid };
    {
        let mut st = ctl.ui.inner.lock().unwrap_or_else(|p| p.into_inner());
        st.tokens.retain(|_, (_, made)| made.elapsed() < TOKEN_LIFE);
        st.tokens.insert(token.clone(), (peer, Instant::now()));
    }
    Ok(axum::Json(SessionResponse { url: format!("http://127.0.0.1:{port}/login?token={token}"), port }))
}

/// Starts the listener on 127.0.0.1.
async fn open(ctl: &Arc<Controller>, port: u16) -> Result<u16, ApiError> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot listen on 127.0.0.1:{port}: {e}")))?;
    let port = listener.local_addr().map_err(|e| ApiError::internal(e.to_string()))?.port();
    ctl.ui.inner.lock().unwrap_or_else(|p| p.into_inner()).port = Some(port);
    let app = router(ctl.clone());
    let stop = {
        let ctl = ctl.clone();
        async move { ctl.shutdown_requested().await }
    };
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
            tracing::warn!(error = %e, "web UI listener failed");
        }
    });
    tracing::info!(port, "web UI listening on 127.0.0.1");
    Ok(port)
}

fn router(ctl: Arc<Controller>) -> Router {
    Router::new()
        .route("/", get(pages::jobs))
        .route("/jobs/{id}", get(pages::job))
        .route("/gpus", get(pages::gpus))
        .route("/login", get(login))
        .route("/static/app.js", get(|| async { asset("text/javascript; charset=utf-8", include_str!("app.js")) }))
        .route("/static/app.css", get(|| async { asset("text/css; charset=utf-8", include_str!("app.css")) }))
        .merge(crate::api::routes(&ctl))
        .layer(axum::middleware::from_fn_with_state(ctl.clone(), guard))
        .with_state(ctl)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "max-age=300")], body).into_response()
}

#[derive(Deserialize)]
struct LoginQuery {
    token: String,
}

/// Trades a one-time token for a session cookie.
async fn login(State(ctl): State<Arc<Controller>>, Query(q): Query<LoginQuery>) -> Response {
    let mut st = ctl.ui.inner.lock().unwrap_or_else(|p| p.into_inner());
    let Some((peer, made)) = st.tokens.remove(&q.token) else {
        return denied("This login link was used already or is unknown: run `ravel ui` for a new one.");
    };
    if made.elapsed() > TOKEN_LIFE {
        return denied("This login link expired: run `ravel ui` for a new one.");
    }
    let sid = random_hex();
    st.sessions.insert(sid.clone(), peer);
    let cookie = format!("{COOKIE}={sid}; HttpOnly; SameSite=Strict; Path=/");
    let mut resp = Redirect::to("/").into_response();
    resp.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("cookie is ASCII"));
    resp
}

fn denied(why: &str) -> Response {
    (StatusCode::UNAUTHORIZED, Html(pages::message_page("Not signed in", why))).into_response()
}

/// Host and Origin checks, then the session: its user becomes the request's peer, so every
/// permission check of the API applies as on the socket.
async fn guard(State(ctl): State<Arc<Controller>>, mut req: Request, next: Next) -> Response {
    let port = ctl.ui.inner.lock().unwrap_or_else(|p| p.into_inner()).port.unwrap_or(0);
    let ours = |v: Option<&str>, scheme: &str| {
        v.is_some_and(|v| {
            [format!("{scheme}127.0.0.1:{port}"), format!("{scheme}localhost:{port}")].iter().any(|o| o == v)
        })
    };
    let headers = req.headers();
    if !ours(headers.get(header::HOST).and_then(|h| h.to_str().ok()), "") {
        return (StatusCode::MISDIRECTED_REQUEST, "this address does not serve the ravel UI\n").into_response();
    }
    let changes = !matches!(*req.method(), axum::http::Method::GET | axum::http::Method::HEAD);
    if changes && !ours(headers.get(header::ORIGIN).and_then(|h| h.to_str().ok()), "http://") {
        return (StatusCode::FORBIDDEN, "cross-origin request refused\n").into_response();
    }
    let path = req.uri().path();
    if path == "/login" || path.starts_with("/static/") {
        return next.run(req).await;
    }
    let peer = session_of(&ctl, req.headers());
    let Some(peer) = peer else {
        return denied("Open the link that `ravel ui` prints to sign in.");
    };
    req.extensions_mut().insert(ConnectInfo(peer));
    next.run(req).await
}

fn session_of(ctl: &Controller, headers: &HeaderMap) -> Option<Peer> {
    let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
    let sid = cookies.split(';').find_map(|c| c.trim().strip_prefix(&format!("{COOKIE}=")))?;
    ctl.ui.inner.lock().unwrap_or_else(|p| p.into_inner()).sessions.get(sid).copied()
}

/// 128 random bits from the kernel, as hex.
fn random_hex() -> String {
    let mut b = [0u8; 16];
    // SAFETY: getrandom fills at most `b.len()` bytes of `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    assert_eq!(n, b.len() as isize, "the kernel gave no random bytes");
    crate::tokens::hex(&b)
}
