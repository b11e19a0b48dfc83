//! Minimal HTTP/1.1: one request per connection, `Connection: close`, read until the answer is
//! whole by its framing (or to EOF when it has none); over the
//! local Unix socket or a TLS connection to a controller.

use crate::ClientError;
use crate::tls::Remote;
use rustls::{ClientConnection, StreamOwned};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where requests go.
#[derive(Clone, Debug)]
pub(crate) enum Target {
    Unix(PathBuf),
    Remote(Arc<Remote>),
}

impl Target {
    /// Connects, with `timeout` for reads; nothing listening on a socket means no daemon.
    pub(crate) fn connect(&self, timeout: Duration) -> Result<Conn, ClientError> {
        match self {
            Target::Unix(socket) => self.connect_unix(socket, timeout).map(Conn::Unix),
            Target::Remote(r) => r.connect(timeout).map(|s| Conn::Tls(Box::new(s))),
        }
    }

    /// The header lines every request carries: `Host:`, and for a controller `Authorization:`.
    pub(crate) fn headers(&self) -> &str {
        match self {
            Target::Unix(_) => "host: localhost\r\n",
            Target::Remote(r) => r.headers(),
        }
    }

    /// What we talk to, for messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Target::Unix(socket) => format!("the daemon on {}", socket.display()),
            Target::Remote(r) => format!("the controller at {}", r.url),
        }
    }

    /// Connects to the local socket, with `timeout` for reads; nothing listening means no daemon.
    fn connect_unix(&self, socket: &Path, timeout: Duration) -> Result<UnixStream, ClientError> {
        let stream = match UnixStream::connect(socket) {
            Ok(s) => s,
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
                return Err(ClientError::NotRunning { socket: socket.to_path_buf() });
            }
            Err(e) => return Err(self.io_error(e)),
        };
        stream.set_read_timeout(Some(timeout)).map_err(|e| self.io_error(e))?;
        Ok(stream)
    }

    pub(crate) fn io_error(&self, e: std::io::Error) -> ClientError {
        ClientError::Io { target: self.describe(), message: e.to_string() }
    }

    pub(crate) fn timed_out(&self, message: String) -> ClientError {
        ClientError::Io { target: self.describe(), message }
    }
}

/// One connection: the local socket, or TLS over TCP.
pub(crate) enum Conn {
    Unix(UnixStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Conn {
    fn set_write_timeout(&self, timeout: Duration) -> std::io::Result<()> {
        match self {
            Conn::Unix(s) => s.set_write_timeout(Some(timeout)),
            // Set with the read timeout before the handshake.
            Conn::Tls(_) => Ok(()),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            // A server that closes without TLS's close_notify ends the answer as a closed socket
            // would; the HTTP framing (content length, the last chunk) still tells a cut answer.
            Conn::Tls(s) => match s.read(buf) {
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(0),
                r => r,
            },
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    /// For TLS this sends what was written (rustls buffers it as records).
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Unix(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header names are lower-case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

pub(crate) fn request(
    target: &Target,
    timeout: Duration,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<Response, ClientError> {
    let io = |e: std::io::Error| target.io_error(e);
    let mut stream = target.connect(timeout)?;
    stream.set_write_timeout(timeout).map_err(io)?;
    let body = body.unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\n{}connection: close\r\ncontent-length: {}\r\n",
        target.headers(),
        body.len()
    );
    if !body.is_empty() {
        req.push_str("content-type: application/json\r\n");
    }
    req.push_str("\r\n");
    let mut buf = req.into_bytes();
    buf.extend_from_slice(body);
    stream.write_all(&buf).map_err(io)?;
    stream.flush().map_err(io)?;
    let raw = read_answer(&mut stream).map_err(|e| {
        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
            target.timed_out(format!("no answer within {}s", timeout.as_secs()))
        } else {
            io(e)
        }
    })?;
    parse(&raw)
}

/// Reads an answer until it is whole (its head and `content-length` bytes, or the last chunk),
/// or to EOF when its framing does not say. Not waiting for the server's close saves a submit
/// the time the server takes to get round to closing after it answered.
fn read_answer(stream: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::with_capacity(4096);
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(raw);
        }
        raw.extend_from_slice(&buf[..n]);
        if is_whole(&raw) {
            return Ok(raw);
        }
    }
}

/// Whether `raw` holds a whole answer by its own framing (false when only EOF can end it).
fn is_whole(raw: &[u8]) -> bool {
    let Ok((head, rest)) = split_head(raw) else { return false };
    match framing(fields(head)) {
        Framing::Chunked => dechunk(rest).is_some(),
        Framing::Length(len) => rest.len() >= len,
        Framing::Close => false,
    }
}

pub(crate) fn parse(raw: &[u8]) -> Result<Response, ClientError> {
    let bad = |m: &str| ClientError::Protocol(m.to_string());
    let (head, rest) = split_head(raw).map_err(bad)?;
    let status_line = head.split("\r\n").next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(&format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = fields(head).map(|(k, v)| (k.to_ascii_lowercase(), v.to_string())).collect();
    let body = match framing(fields(head)) {
        Framing::Chunked => dechunk(rest).ok_or_else(|| bad("bad chunked body"))?,
        Framing::Length(len) => rest.get(..len).ok_or_else(|| bad("truncated body"))?.to_vec(),
        Framing::Close => rest.to_vec(),
    };
    Ok(Response { status, headers, body })
}

/// An answer's head (as text, without the blank line) and what follows it.
fn split_head(raw: &[u8]) -> Result<(&str, &[u8]), &'static str> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("truncated response head")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "response head is not UTF-8")?;
    Ok((head, &raw[end + 4..]))
}

/// A head's header fields, name and value trimmed (the status line skipped).
fn fields(head: &str) -> impl Iterator<Item = (&str, &str)> + Clone {
    head.split("\r\n").skip(1).filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim(), v.trim()))
}

/// How an answer's body ends.
enum Framing {
    /// At its last chunk.
    Chunked,
    /// After this many bytes.
    Length(usize),
    /// When the server closes the connection.
    Close,
}

fn framing<'a>(fields: impl Iterator<Item = (&'a str, &'a str)> + Clone) -> Framing {
    let named = |name: &'static str| fields.clone().filter(move |(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v);
    if named("transfer-encoding").any(|v| v.eq_ignore_ascii_case("chunked")) {
        Framing::Chunked
    } else if let Some(len) = named("content-length").next().and_then(|v| v.parse().ok()) {
        Framing::Length(len)
    } else {
        Framing::Close
    }
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_and_chunked_bodies() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_slice(), r.header("x-a")), (200, &b"{}"[..], Some("b")));
        let r = parse(b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"abcde"[..]));
        assert!(parse(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn an_answer_is_whole_by_its_framing() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n";
        assert!(!is_whole(&head[..10]));
        assert!(!is_whole(&[&head[..], b"{}"].concat()));
        assert!(is_whole(&[&head[..], b"{\"a\"}"].concat()));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n";
        assert!(!is_whole(chunked));
        assert!(is_whole(&[&chunked[..], b"0\r\n\r\n"].concat()));
        // Without framing only the close ends it.
        assert!(!is_whole(b"HTTP/1.1 200 OK\r\n\r\nabc"));
        // Read from a stream that stays open after the answer, the read stops at its end.
        struct Open(std::io::Cursor<Vec<u8>>);
        impl Read for Open {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                match self.0.read(buf)? {
                    0 => Err(std::io::Error::new(ErrorKind::TimedOut, "read past the answer")),
                    n => Ok(n),
                }
            }
        }
        let answer = [&head[..], b"{\"a\"}"].concat();
        assert_eq!(read_answer(&mut Open(std::io::Cursor::new(answer.clone()))).unwrap(), answer);
    }

    #[test]
    fn a_missing_socket_means_not_running() {
        let target = Target::Unix("/nonexistent/ravel.sock".into());
        let err = request(&target, Duration::from_secs(1), "GET", "/", None).unwrap_err();
        assert!(matches!(err, ClientError::NotRunning { .. }));
        assert!(err.to_string().contains("ravel daemon start"));
    }
}
