//! Reading answers that stream: a body handed over as it arrives (the HTTP/1.1 chunked encoding
//! undone incrementally), e.g. a followed log, and on top of it Server-Sent Events
//! (`GET /v1/events`: `id:`, `event:`, `data:` fields ended by a blank line; `:` lines are
//! keep-alive comments).

use crate::ClientError;
use crate::http::Target;
use std::io::{ErrorKind, Read, Write};
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
pub(crate) fn stream(
    target: &Target,
    idle: Duration,
    path: &str,
    last_event_id: Option<&str>,
    mut on_event: impl FnMut(SseEvent) -> bool,
) -> Result<Option<crate::Response>, ClientError> {
    let headers = match last_event_id {
        Some(id) => format!("accept: text/event-stream\r\nlast-event-id: {id}\r\n"),
        None => "accept: text/event-stream\r\n".to_string(),
    };
    let mut lines = Lines::default();
    let mut ev = SseEvent::default();
    body(target, idle, path, &headers, |bytes| {
        lines.feed(bytes, |raw| {
            let line = String::from_utf8_lossy(raw);
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                if !ev.data.is_empty() || ev.id.is_some() {
                    let done = std::mem::take(&mut ev);
                    let event = if done.event.is_empty() { "message".into() } else { done.event };
                    return on_event(SseEvent { event, ..done });
                }
                return true;
            }
            if line.starts_with(':') {
                return true;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
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
            true
        })
    })
}

/// A byte stream cut into lines as it arrives.
#[derive(Default)]
pub(crate) struct Lines {
    /// What came after the last complete line.
    pub(crate) pending: Vec<u8>,
}

impl Lines {
    /// Hands `on_line` each line (without its `\n`) that `bytes` completes, until it returns
    /// false, which is returned.
    pub(crate) fn feed(&mut self, bytes: &[u8], mut on_line: impl FnMut(&[u8]) -> bool) -> bool {
        self.pending.extend_from_slice(bytes);
        let (mut start, mut go) = (0, true);
        while go && let Some(n) = self.pending[start..].iter().position(|b| *b == b'\n') {
            go = on_line(&self.pending[start..start + n]);
            start += n + 1;
        }
        self.pending.drain(..start);
        go
    }
}

/// GETs `path` and hands the body to `on_bytes` as it arrives (the chunked encoding undone),
/// until it ends or `on_bytes` returns false. `extra_headers` are whole header lines. A non-2xx
/// answer is read whole and returned for the caller to turn into an error.
pub(crate) fn body(
    target: &Target,
    idle: Duration,
    path: &str,
    extra_headers: &str,
    mut on_bytes: impl FnMut(&[u8]) -> bool,
) -> Result<Option<crate::Response>, ClientError> {
    let io = |e: std::io::Error| target.io_error(e);
    let mut s = target.connect(idle)?;
    let req = format!("GET {path} HTTP/1.1\r\n{}{extra_headers}\r\n", target.headers());
    s.write_all(req.as_bytes()).map_err(io)?;
    s.flush().map_err(io)?;

    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    let mut fill = |buf: &mut Vec<u8>| -> Result<bool, ClientError> {
        match s.read(&mut chunk) {
            Ok(0) => Ok(false),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(target.timed_out(format!("the stream was silent for {}s", idle.as_secs())))
            }
            Err(e) => Err(io(e)),
        }
    };
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if !fill(&mut buf)? {
            return Err(ClientError::Protocol("the connection closed before an answer came".into()));
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
    loop {
        if !chunked {
            if !buf.is_empty() && !on_bytes(&buf) {
                return Ok(None);
            }
            buf.clear();
        }
        while chunked && let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") {
            let size = std::str::from_utf8(&buf[..line_end])
                .ok()
                .and_then(|t| usize::from_str_radix(t.split(';').next()?.trim(), 16).ok())
                .ok_or_else(|| ClientError::Protocol("bad chunk size in a streamed answer".into()))?;
            if size == 0 {
                return Ok(None);
            }
            if buf.len() < line_end + 2 + size + 2 {
                break;
            }
            if !on_bytes(&buf[line_end + 2..line_end + 2 + size]) {
                return Ok(None);
            }
            buf.drain(..line_end + 2 + size + 2);
        }
        if !fill(&mut buf)? {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Lines;

    #[test]
    fn lines_are_cut_across_chunks_and_stop_when_asked() {
        let mut lines = Lines::default();
        let mut seen: Vec<String> = vec![];
        let mut take = |l: &[u8]| {
            seen.push(String::from_utf8_lossy(l).into_owned());
            l != b"stop"
        };
        assert!(lines.feed(b"one\ntw", &mut take));
        assert!(lines.feed(b"o\n\nthr", &mut take));
        assert!(!lines.feed(b"ee\nstop\nafter\n", &mut take));
        assert_eq!(seen, ["one", "two", "", "three", "stop"]);
        assert_eq!(lines.pending, b"after\n", "what follows a stop is kept, not handed over");
    }
}
