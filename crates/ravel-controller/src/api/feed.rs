//! `GET /v1/events`: the event feed as Server-Sent Events, resumable with `Last-Event-ID`.

use super::{ApiError, Query};
use crate::Controller;
use crate::feed::Backlog;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use ravel_proto::{EventView, EventsQuery};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// What the stream still has to send, and where it is.
struct Cursor {
    ctl: Arc<Controller>,
    rx: tokio::sync::broadcast::Receiver<Arc<EventView>>,
    stopping: tokio::sync::watch::Receiver<bool>,
    pending: VecDeque<Event>,
    last: u64,
    follow: bool,
    /// With `--private-queue`, a non-admin sees only their own jobs' events.
    only_user: Option<String>,
}

impl Cursor {
    fn shows(&self, e: &EventView) -> bool {
        self.only_user.as_ref().is_none_or(|u| e.user.as_ref() == Some(u))
    }
}

#[utoipa::path(get, path = "/v1/events", tag = "events", params(ravel_proto::EventsQuery, ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event id")), responses((status = 200, description = "Server-Sent Events: `event: job` with an ravel_proto::EventView as data, or `event: reset`", content_type = "text/event-stream", body = ravel_proto::EventView)))]
pub async fn stream(
    State(ctl): State<Arc<Controller>>,
    caller: crate::auth::Caller,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let header_id = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be an event id (a number)"))?,
        ),
        None => None,
    };
    let since = header_id.or(q.since);
    // Subscribe before reading the backlog: an event published in between is in both, and the
    // cursor skips what it already sent.
    let rx = ctl.feed.subscribe();
    let only_user = (ctl.cfg.private_queue && !caller.admin).then(|| caller.name.clone());
    let visible = |e: &EventView| only_user.as_ref().is_none_or(|u| e.user.as_ref() == Some(u));
    let mut pending = VecDeque::new();
    // Without an id to resume from, only what happens from now on.
    let mut last = ctl.feed.last_id();
    if let Some(since) = since {
        last = since;
        let events = match ctl.feed.after(since) {
            Backlog::Events(e) => e,
            Backlog::Reset { oldest, events } => {
                pending.push_back(reset(oldest));
                events
            }
        };
        for e in events {
            last = e.id;
            if visible(&e) {
                pending.push_back(event(&e));
            }
        }
    }
    let cursor = Cursor {
        stopping: ctl.shutdown.subscribe(),
        ctl,
        rx,
        pending,
        last,
        follow: q.follow.unwrap_or(true),
        only_user,
    };
    let s = futures_util::stream::unfold(cursor, |mut c| async move {
        loop {
            if let Some(e) = c.pending.pop_front() {
                return Some((Ok(e), c));
            }
            if !c.follow || *c.stopping.borrow() {
                return None;
            }
            let got = tokio::select! {
                r = c.rx.recv() => r,
                // A daemon stopping must not wait for followers to hang up.
                _ = c.stopping.changed() => return None,
            };
            match got {
                Ok(e) if e.id > c.last => {
                    c.last = e.id;
                    if c.shows(&e) {
                        return Some((Ok(event(&e)), c));
                    }
                }
                Ok(_) => {}
                // Fell behind the channel: catch up from the window.
                Err(RecvError::Lagged(_)) => match c.ctl.feed.after(c.last) {
                    Backlog::Events(es) => {
                        for e in es {
                            c.last = e.id;
                            if c.shows(&e) {
                                c.pending.push_back(event(&e));
                            }
                        }
                    }
                    Backlog::Reset { oldest, events } => {
                        c.pending.push_back(reset(oldest));
                        for e in events {
                            c.last = e.id;
                            if c.shows(&e) {
                                c.pending.push_back(event(&e));
                            }
                        }
                    }
                },
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(s).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn event(e: &EventView) -> Event {
    Event::default().id(e.id.to_string()).event("job").data(serde_json::to_string(e).unwrap_or_default())
}

/// Events between the asked id and `oldest` are gone (older than the window, or before a
/// restart): reload state, then follow.
fn reset(oldest: u64) -> Event {
    Event::default().event("reset").data(format!("{{\"oldest\":{oldest}}}"))
}
