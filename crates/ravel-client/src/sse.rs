//! Reading a Server-Sent Events stream (`GET /v1/events`) as it arrives: the HTTP/1.1 chunked
//! body is decoded incrementally and split into events (`id:`, `event:`, `data:` fields ended by
//! a blank line; `:` lines are keep-alive comments).

use crate::ClientError;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// One event of the stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    /// `message` when the stream gives no name.
    pub event: String,
    pub data: String,
}

/// Opens `path` and calls `on_event` for each event until the stream ends or `on_event`
/// returns false. `idle` bounds the wait for any byte (the daemon sends a keep-alive every
/// 15 s). A non-2xx answer is returned as the raw response for the caller to turn into an error.
pub fn stream(
    socket: &Path,
    idle: Duration,
    path: &str,
    last_event_id: Option<&str>,
    mut on_event: impl FnMut(SseEvent) -> bool,
) -> Result<Option<crate::Response>, ClientError> {
    let io = |e: std::io::Error| ClientError::Io { socket: socket.to_path_buf(), message: e.to_string() };
    let mut s = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            return Err(ClientError::NotRunning { socket: socket.to_path_buf() });
        }
        Err(e) => return Err(io(e)),
    };
    s.set_read_timeout(Some(idle)).map_err(io)?;
    let mut req = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\naccept: text/event-stream\r\n");
    if let Some(id) = last_event_id {
        req.push_str(&format!("last-event-id: {id}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).map_err(io)?;

    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    let mut fill = |buf: &mut Vec<u8>| -> Result<bool, ClientError> {
        match s.read(&mut chunk) {
            Ok(0) => Ok(false),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Err(ClientError::Io {
                socket: socket.to_path_buf(),
                message: format!("the event stream was silent for {}s", idle.as_secs()),
            }),
            Err(e) => Err(io(e)),
        }
    };
    // The head.
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if !fill(&mut buf)? {
            return Err(ClientError::Protocol("the daemon closed the stream before answering".into()));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    buf.drain(..head_end + 4);
    if !(200..300).contains(&status) {
        while fill(&mut buf)? {}
        let raw = [head.as_bytes(), b"\r\n\r\n", &buf].concat();
        return crate::http::parse(&raw).map(Some);
    }
    // The body, decoded into `text` as chunks complete; events are cut from `text`.
    let mut text: Vec<u8> = Vec::new();
    let mut ev = SseEvent::default();
    let mut ended = false;
    loop {
        if chunked {
            while let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") {
                let size = std::str::from_utf8(&buf[..line_end])
                    .ok()
                    .and_then(|t| usize::from_str_radix(t.split(';').next()?.trim(), 16).ok())
                    .ok_or_else(|| ClientError::Protocol("bad chunk size in the event stream".into()))?;
                if size == 0 {
                    ended = true;
                    break;
                }
                if buf.len() < line_end + 2 + size + 2 {
                    break;
                }
                text.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
                buf.drain(..line_end + 2 + size + 2);
            }
        } else {
            text.append(&mut buf);
        }
        while let Some(nl) = text.iter().position(|b| *b == b'\n') {
            let line = String::from_utf8_lossy(&text[..nl]).trim_end_matches('\r').to_string();
            text.drain(..=nl);
            if line.is_empty() {
                if !ev.data.is_empty() || ev.id.is_some() {
                    let done = std::mem::take(&mut ev);
                    let done =
                        SseEvent { event: if done.event.is_empty() { "message".into() } else { done.event }, ..done };
                    if !on_event(done) {
                        return Ok(None);
                    }
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').map_or((line.as_str(), ""), |(f, v)| (f, v));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => ev.id = Some(value.to_string()),
                "event" => ev.event = value.to_string(),
                "data" => {
                    if !ev.data.is_empty() {
                        ev.data.push('\n');
                    }
                    ev.data.push_str(value);
                }
                _ => {}
            }
        }
        if ended || !fill(&mut buf)? {
            return Ok(None);
        }
    }
}
