//! `ravel logs` and the output streaming of `ravel run --wait`.

use super::code;
use crate::cli::LogsArgs;
use crate::home::Home;
use ravel_client::Client;
use ravel_core::{JobId, JobState};
use ravel_proto::{HEADER_FILE_SIZE, HEADER_JOB_STATE, HEADER_NEXT_OFFSET, JobView, LogStream};
use std::io::Write;
use std::process::ExitCode;

struct Reader {
    stream: LogStream,
    offset: u64,
}

struct Chunk {
    data: Vec<u8>,
    next: u64,
    size: u64,
    state: Option<JobState>,
}

fn fetch(
    client: &Client,
    id: JobId,
    stream: LogStream,
    offset: u64,
    limit: Option<u64>,
    which: Which,
) -> anyhow::Result<Chunk> {
    let mut path = format!("/v1/jobs/{id}/logs?stream={}&offset={offset}", stream.as_str());
    if let Some(l) = limit {
        path.push_str(&format!("&limit={l}"));
    }
    path.push_str(&which.query());
    let resp = client.raw("GET", &path, None)?;
    let num = |h: &str| resp.header(h).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok(Chunk {
        next: num(HEADER_NEXT_OFFSET).max(offset),
        size: num(HEADER_FILE_SIZE),
        state: resp.header(HEADER_JOB_STATE).and_then(JobState::parse),
        data: resp.body,
    })
}

/// The offset where the last `n` lines start, reading backwards in growing windows.
fn tail_offset(client: &Client, id: JobId, stream: LogStream, n: usize, which: Which) -> anyhow::Result<u64> {
    let size = fetch(client, id, stream, 0, Some(0), which)?.size;
    let mut window = 64 * 1024u64;
    loop {
        let start = size.saturating_sub(window);
        let chunk = fetch(client, id, stream, start, Some(size - start), which)?;
        let data = &chunk.data;
        // Ignore a final newline: it ends the last line rather than starting a new one.
        let body = data.strip_suffix(b"\n").unwrap_or(data);
        let mut seen = 0;
        for (i, b) in body.iter().enumerate().rev() {
            if *b == b'\n' {
                seen += 1;
                if seen == n {
                    return Ok(start + i as u64 + 1);
                }
            }
        }
        if start == 0 {
            return Ok(0);
        }
        window *= 4;
    }
}

/// Prints whatever is new on each stream; returns whether anything was printed and the job state.
fn drain(client: &Client, id: JobId, readers: &mut [Reader], which: Which) -> anyhow::Result<(bool, Option<JobState>)> {
    let mut printed = false;
    let mut state = None;
    for r in readers.iter_mut() {
        loop {
            let c = fetch(client, id, r.stream, r.offset, None, which)?;
            state = c.state.or(state);
            if c.data.is_empty() {
                break;
            }
            printed = true;
            r.offset = c.next;
            match r.stream {
                LogStream::Stdout => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&c.data)?;
                    out.flush()?;
                }
                LogStream::Stderr => std::io::stderr().lock().write_all(&c.data)?,
            }
            if c.next >= c.size {
                break;
            }
        }
    }
    Ok((printed, state))
}

/// Which attempt (default: the current one) and which rank of a gang (default: rank 0).
#[derive(Clone, Copy)]
struct Which {
    attempt: Option<u32>,
    rank: Option<u32>,
}

impl Which {
    fn query(&self) -> String {
        let mut q = String::new();
        if let Some(a) = self.attempt {
            q.push_str(&format!("&attempt={a}"));
        }
        if let Some(r) = self.rank {
            q.push_str(&format!("&rank={r}"));
        }
        q
    }
}

pub fn logs(home: &Home, args: LogsArgs) -> anyhow::Result<ExitCode> {
    let client = home.client();
    let which = Which { attempt: args.attempt, rank: args.rank };
    let streams = if args.stdout {
        vec![LogStream::Stdout]
    } else if args.stderr {
        vec![LogStream::Stderr]
    } else {
        vec![LogStream::Stdout, LogStream::Stderr]
    };
    // Fail with "no job N" before anything else.
    let _: JobView = client.get(&format!("/v1/jobs/{}", args.id))?;
    let mut readers = Vec::new();
    for s in streams {
        let offset = match args.tail {
            Some(n) => tail_offset(&client, args.id, s, n, which)?,
            None => 0,
        };
        readers.push(Reader { stream: s, offset });
    }
    if !args.follow {
        drain(&client, args.id, &mut readers, which)?;
        return Ok(ExitCode::SUCCESS);
    }
    follow(&client, args.id, &mut readers, which)?;
    Ok(ExitCode::SUCCESS)
}

/// Prints new output until the job is in a terminal state and everything is printed: each
/// stream is followed by the daemon (`follow=true`), which sends bytes as they are written.
fn follow(client: &Client, id: JobId, readers: &mut [Reader], which: Which) -> anyhow::Result<()> {
    std::thread::scope(|s| {
        let handles: Vec<_> = readers.iter_mut().map(|r| s.spawn(|| stream_one(client, id, r, which))).collect();
        handles.into_iter().try_for_each(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("log reader panicked"))))
    })?;
    // The streams end when the job has ended, or when the daemon stops: then poll from where they
    // were (which says plainly if no daemon answers any more) until a read after the job's end.
    // A stream the daemon cut short (a read that failed) must not lose the tail: polling ends
    // with a read past the job's end either way.
    poll(client, id, readers, which)
}

fn stream_one(client: &Client, id: JobId, r: &mut Reader, which: Which) -> anyhow::Result<()> {
    let mut path = format!("/v1/jobs/{id}/logs?follow=true&stream={}&offset={}", r.stream.as_str(), r.offset);
    path.push_str(&which.query());
    // A job may print nothing for hours; the stream ends when it ends or the daemon goes.
    let idle = std::time::Duration::from_secs(7 * 24 * 3600);
    client.stream_body(&path, idle, |bytes| {
        r.offset += bytes.len() as u64;
        let written = match r.stream {
            LogStream::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(bytes).and_then(|_| out.flush())
            }
            LogStream::Stderr => std::io::stderr().lock().write_all(bytes),
        };
        // A closed pipe (`ravel logs -f 3 | head`) ends quietly.
        written.is_ok()
    })?;
    Ok(())
}

/// Polls for new output until the job is in a terminal state and everything is printed.
fn poll(client: &Client, id: JobId, readers: &mut [Reader], which: Which) -> anyhow::Result<()> {
    loop {
        let (_, state) = drain(client, id, readers, which)?;
        if state.is_some_and(|s| s.is_terminal()) {
            // The supervisor wrote its exit record after the job's last byte: one more read is final.
            drain(client, id, readers, which)?;
            return Ok(());
        }
        // Sleep until the job ends, or 200 ms pass, whichever is first.
        let _: serde_json::Value = client.get(&format!("/v1/wait?ids={id}&timeout_ms=200"))?;
    }
}

/// `ravel run --wait`: stream both outputs, then exit as the job did.
pub fn follow_to_end(home: &Home, id: JobId, stdout: bool, stderr: bool) -> anyhow::Result<ExitCode> {
    let client = home.client();
    let mut readers = Vec::new();
    if stdout {
        readers.push(Reader { stream: LogStream::Stdout, offset: 0 });
    }
    if stderr {
        readers.push(Reader { stream: LogStream::Stderr, offset: 0 });
    }
    follow(&client, id, &mut readers, Which { attempt: None, rank: None })?;
    let v: JobView = client.get(&format!("/v1/jobs/{id}"))?;
    Ok(match (v.job.state, v.job.exit_code, v.job.signal) {
        (JobState::Succeeded, _, _) => ExitCode::SUCCESS,
        (JobState::Canceled, _, _) => code(130),
        (_, Some(c), _) => code(c.clamp(0, 255) as u8),
        (_, None, Some(s)) => code((128 + s).clamp(0, 255) as u8),
        _ => ExitCode::FAILURE,
    })
}
