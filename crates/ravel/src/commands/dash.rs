//! `ravel dash`: a live terminal dashboard. GPUs and who uses them, the queue with pending
//! reasons, running jobs with their runtimes, recent finishes; keys to follow a job's logs,
//! cancel it, hold or release it, and change its priority.
//!
//! It loads the jobs once, then applies the daemon's event stream (`GET /v1/events`) as events
//! arrive, redrawing at most every 50 ms; GPUs and pending reasons (which events do not carry)
//! are refreshed every 2 s.

use crate::home::Home;
use crate::output::{command_line, duration};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table, TableState, Wrap};
use ravel_client::Client;
use ravel_controller::now_ms;
use ravel_core::{JobId, JobState};
use ravel_proto::{EventView, GpusResponse, JobView, QueueResponse};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What the background threads tell the screen.
enum Msg {
    Event(Box<EventView>),
    Job(Box<JobView>),
    Refresh(Box<QueueResponse>, Box<GpusResponse>),
    Log(Vec<u8>),
    Gone(String),
}

enum Mode {
    Jobs,
    /// Following a job's stdout and stderr.
    Logs {
        id: JobId,
        text: String,
    },
    /// Asking to confirm a cancel.
    Confirm(JobId),
}

struct Dash {
    jobs: BTreeMap<JobId, JobView>,
    gpus: GpusResponse,
    /// Ids in display order (rebuilt when something changes).
    order: Vec<JobId>,
    table: TableState,
    mode: Mode,
    status: String,
    events_seen: u64,
}

pub fn dash(home: &Home) -> anyhow::Result<ExitCode> {
    if !std::io::stdout().is_terminal() {
        anyhow::bail!("ravel dash needs a terminal; for scripts use `ravel queue --json` or `ravel events -f --json`");
    }
    let client = home.client();
    let queue: QueueResponse = client.get("/v1/jobs?recent=20&limit=500")?;
    let gpus: GpusResponse = client.get("/v1/gpus")?;
    let (tx, rx) = mpsc::channel();
    spawn_events(client.clone(), tx.clone());
    spawn_refresh(client.clone(), tx.clone());
    let mut d = Dash {
        jobs: queue.jobs.into_iter().map(|j| (j.job.id, j)).collect(),
        gpus,
        order: vec![],
        table: TableState::default().with_selected(Some(0)),
        mode: Mode::Jobs,
        status: String::new(),
        events_seen: 0,
    };
    d.reorder();
    let mut terminal = ratatui::init();
    let result = run(&mut terminal, &mut d, &client, &tx, &rx);
    ratatui::restore();
    result.map(|_| ExitCode::SUCCESS)
}

fn run(
    terminal: &mut ratatui::DefaultTerminal,
    d: &mut Dash,
    client: &Client,
    tx: &mpsc::Sender<Msg>,
    rx: &mpsc::Receiver<Msg>,
) -> anyhow::Result<()> {
    let mut dirty = true;
    let mut last_draw = Instant::now() - Duration::from_secs(1);
    loop {
        // Apply whatever arrived; draw at most every 50 ms, so a burst of events costs one frame.
        while let Ok(m) = rx.try_recv() {
            dirty |= d.apply(m, client, tx);
        }
        // Runtimes advance even when nothing happens.
        dirty |= last_draw.elapsed() >= Duration::from_secs(1);
        if dirty && last_draw.elapsed() >= Duration::from_millis(50) {
            terminal.draw(|f| d.draw(f))?;
            last_draw = Instant::now();
            dirty = false;
        }
        if event::poll(Duration::from_millis(20))?
            && let Event::Key(k) = event::read()?
            && k.kind == KeyEventKind::Press
        {
            if k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL) {
                return Ok(());
            }
            if !d.key(k.code, client, tx) {
                return Ok(());
            }
            dirty = true;
        }
    }
}

fn spawn_events(client: Client, tx: mpsc::Sender<Msg>) {
    std::thread::spawn(move || {
        let r = client.events("/v1/events", None, Duration::from_secs(60), |ev| {
            if ev.event != "job" {
                return true;
            }
            match serde_json::from_str::<EventView>(&ev.data) {
                Ok(e) => tx.send(Msg::Event(Box::new(e))).is_ok(),
                Err(_) => true,
            }
        });
        let why = match r {
            Ok(()) => "the daemon closed the event stream (stopped?)".to_string(),
            Err(e) => e.to_string(),
        };
        let _ = tx.send(Msg::Gone(why));
    });
}

fn spawn_refresh(client: Client, tx: mpsc::Sender<Msg>) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(2));
            let q = client.get::<QueueResponse>("/v1/jobs?recent=0&limit=500");
            let g = client.get::<GpusResponse>("/v1/gpus");
            if let (Ok(q), Ok(g)) = (q, g)
                && tx.send(Msg::Refresh(Box::new(q), Box::new(g))).is_err()
            {
                return;
            }
        }
    });
}

impl Dash {
    /// Applies a message; true if the screen changed.
    fn apply(&mut self, m: Msg, client: &Client, tx: &mpsc::Sender<Msg>) -> bool {
        match m {
            Msg::Event(e) => {
                self.events_seen += 1;
                // A selected job that ends drops among the finished: the selection goes back to
                // the top instead of following it there.
                let follow = !(e.state.is_terminal() && self.selected() == Some(e.job));
                if let std::collections::btree_map::Entry::Vacant(slot) = self.jobs.entry(e.job) {
                    // A job submitted since: shown from its events at once; what events do not
                    // carry (command, submit time) is fetched once, off this thread, and merged.
                    slot.insert(placeholder(&e));
                    let (client, tx, id) = (client.clone(), tx.clone(), e.job);
                    std::thread::spawn(move || {
                        if let Ok(v) = client.get::<JobView>(&format!("/v1/jobs/{id}")) {
                            let _ = tx.send(Msg::Job(Box::new(v)));
                        }
                    });
                }
                if let Some(v) = self.jobs.get_mut(&e.job) {
                    let j = &mut v.job;
                    j.state = e.state;
                    j.attempt = e.attempt;
                    j.held = e.held;
                    j.spec.priority = e.priority;
                    j.cancel_requested = e.cancel_requested;
                    j.exit_code = e.exit_code;
                    j.reason = e.reason.clone();
                    if let Some(g) = &e.gpus {
                        j.gpus_assigned = g.clone();
                    }
                    if e.state == JobState::Running && j.started_at.is_none() {
                        j.started_at = Some(e.at);
                    }
                    if e.state.is_terminal() {
                        j.finished_at = Some(e.at);
                        v.pending_reason = None;
                    }
                }
                self.reorder();
                if !follow {
                    self.table.select(Some(0));
                    *self.table.offset_mut() = 0;
                }
            }
            Msg::Job(v) => {
                // Only what does not change: the state it had when fetched may be older than
                // the events applied since.
                if let Some(known) = self.jobs.get_mut(&v.job.id) {
                    let j = &mut known.job;
                    j.spec.command = v.job.spec.command;
                    j.spec.name = v.job.spec.name;
                    j.spec.user = v.job.spec.user;
                    j.submitted_at = v.job.submitted_at;
                }
            }
            Msg::Refresh(q, g) => {
                for v in q.jobs {
                    if let Some(old) = self.jobs.get_mut(&v.job.id) {
                        old.pending_reason = v.pending_reason;
                        old.position = v.position;
                    }
                }
                self.gpus = *g;
            }
            Msg::Log(bytes) => {
                if let Mode::Logs { text, .. } = &mut self.mode {
                    text.push_str(&String::from_utf8_lossy(&bytes));
                    // Keep the tail only.
                    if text.len() > 256 * 1024 {
                        let cut = text.len() - 128 * 1024;
                        let cut = (cut..text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(0);
                        text.drain(..cut);
                    }
                }
            }
            Msg::Gone(why) => self.status = format!("no more updates: {why}"),
        }
        true
    }

    /// Running first, then waiting in id order, then finished (newest first); keeps at most
    /// `KEEP_FINISHED` finished ones.
    fn reorder(&mut self) {
        let rank = |s: JobState| match s {
            JobState::Allocated | JobState::Starting | JobState::Running => 0,
            JobState::Queued | JobState::Blocked => 1,
            _ => 2,
        };
        let mut finished: Vec<JobId> =
            self.jobs.values().filter(|v| rank(v.job.state) == 2).map(|v| v.job.id).collect();
        finished.sort_unstable_by(|a, b| b.cmp(a));
        for old in finished.iter().skip(KEEP_FINISHED) {
            self.jobs.remove(old);
        }
        let selected = self.selected();
        let mut order: Vec<(u8, i64, JobId)> = self
            .jobs
            .values()
            .map(|v| {
                let r = rank(v.job.state);
                (r, if r == 2 { -v.job.id } else { v.job.id }, v.job.id)
            })
            .collect();
        order.sort_unstable();
        // Finished jobs beyond the most recent few are counted, not listed.
        let mut shown_finished = 0;
        order.retain(|(rank, _, _)| {
            shown_finished += usize::from(*rank == 2);
            *rank < 2 || shown_finished <= SHOW_FINISHED
        });
        self.order = order.into_iter().map(|(_, _, id)| id).collect();
        let at = selected.and_then(|id| self.order.iter().position(|o| *o == id)).unwrap_or(0);
        self.table.select(Some(at.min(self.order.len().saturating_sub(1))));
    }

    fn selected(&self) -> Option<JobId> {
        self.table.selected().and_then(|i| self.order.get(i)).copied()
    }

    /// Handles a key; false to quit.
    fn key(&mut self, code: KeyCode, client: &Client, tx: &mpsc::Sender<Msg>) -> bool {
        match (&self.mode, code) {
            (Mode::Logs { .. }, KeyCode::Esc | KeyCode::Char('q') | KeyCode::Char('l')) => self.mode = Mode::Jobs,
            (Mode::Logs { .. }, _) => {}
            (Mode::Confirm(id), KeyCode::Char('y')) => {
                let id = *id;
                self.mode = Mode::Jobs;
                self.act(client, "cancel", id);
            }
            (Mode::Confirm(_), _) => {
                self.mode = Mode::Jobs;
                self.status = "not canceled".into();
            }
            (Mode::Jobs, KeyCode::Char('q') | KeyCode::Esc) => return false,
            (Mode::Jobs, KeyCode::Down | KeyCode::Char('j')) => self.table.select_next(),
            (Mode::Jobs, KeyCode::Up | KeyCode::Char('k')) => self.table.select_previous(),
            (Mode::Jobs, KeyCode::Home | KeyCode::Char('g')) => {
                self.table.select(Some(0));
                *self.table.offset_mut() = 0;
            }
            (Mode::Jobs, code) => {
                let Some(id) = self.selected() else { return true };
                match code {
                    KeyCode::Char('c') => self.mode = Mode::Confirm(id),
                    KeyCode::Char('h') => {
                        let held = self.jobs.get(&id).is_some_and(|v| v.job.held);
                        self.act(client, if held { "release" } else { "hold" }, id);
                    }
                    KeyCode::Char('+') | KeyCode::Char('-') => {
                        let now = self.jobs.get(&id).map_or(0, |v| v.job.spec.priority);
                        let p = if code == KeyCode::Char('+') { now + 1 } else { now - 1 };
                        let r = client.post::<_, serde_json::Value>(
                            &format!("/v1/jobs/{id}/priority"),
                            &ravel_proto::PriorityRequest { priority: p },
                        );
                        self.status = match r {
                            Ok(_) => format!("job {id}: priority {p}"),
                            Err(e) => format!("job {id}: {e}"),
                        };
                    }
                    KeyCode::Char('l') | KeyCode::Enter => {
                        self.mode = Mode::Logs { id, text: String::new() };
                        follow_logs(client.clone(), tx.clone(), id);
                    }
                    _ => {}
                }
            }
        }
        true
    }

    fn act(&mut self, client: &Client, verb: &str, id: JobId) {
        let r = if verb == "cancel" {
            client
                .post::<_, serde_json::Value>("/v1/jobs/cancel", &ravel_proto::CancelRequest { ids: vec![id] })
                .map(|_| ())
        } else {
            client.post::<_, serde_json::Value>(&format!("/v1/jobs/{id}/{verb}"), &serde_json::json!({})).map(|_| ())
        };
        self.status = match r {
            Ok(()) => format!("job {id}: {verb} asked"),
            Err(e) => format!("job {id}: {e}"),
        };
    }

    fn draw(&mut self, f: &mut ratatui::Frame) {
        let count = |pred: &dyn Fn(JobState) -> bool| self.jobs.values().filter(|v| pred(v.job.state)).count();
        let running = count(&|s| matches!(s, JobState::Allocated | JobState::Starting | JobState::Running));
        let waiting = count(&|s| matches!(s, JobState::Queued | JobState::Blocked));
        let succeeded = count(&|s| s == JobState::Succeeded);
        let failed = count(&|s| matches!(s, JobState::Failed | JobState::Lost));
        let header = format!(
            " ravel dash   running {running}  waiting {waiting}  succeeded {succeeded}  failed {failed}   events {}",
            self.events_seen
        );
        let gpu_rows = self.gpus.gpus.len().min(8) as u16;
        let [top, gpus, jobs, help] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(gpu_rows + 3),
            Constraint::Min(5),
            Constraint::Length(1),
        ])
        .areas(f.area());
        f.render_widget(Paragraph::new(header).style(Style::new().add_modifier(Modifier::BOLD)), top);

        let rows = self.gpus.gpus.iter().map(|g| {
            let who = match (&g.allocated_to, g.shared.first(), &g.foreign_busy) {
                (Some(j), _, _) => self.owner_label(*j),
                (None, Some((j, m)), _) => format!("{} ({m}M shared)", self.owner_label(*j)),
                (None, None, Some(why)) => format!("busy: {why}"),
                _ => "free".into(),
            };
            Row::new(vec![
                g.index.to_string(),
                format!("{}%", g.utilization_pct),
                format!("{}/{} MiB", g.memory_used_mib, g.memory_total_mib),
                who,
            ])
        });
        let gpu_table = Table::new(
            rows,
            [Constraint::Length(4), Constraint::Length(5), Constraint::Length(20), Constraint::Min(10)],
        )
        .header(Row::new(vec!["GPU", "UTIL", "MEMORY", "USED BY"]).style(Style::new().add_modifier(Modifier::BOLD)))
        .block(Block::new().borders(Borders::ALL).title(format!(" GPUs ({}) ", self.gpus.probe)));
        f.render_widget(gpu_table, gpus);

        match &self.mode {
            Mode::Logs { id, text } => {
                let lines: Vec<&str> = text.lines().collect();
                let h = jobs.height.saturating_sub(2) as usize;
                let tail = lines[lines.len().saturating_sub(h)..].join("\n");
                let p = Paragraph::new(tail)
                    .wrap(Wrap { trim: false })
                    .block(Block::new().borders(Borders::ALL).title(format!(" logs of job {id} (Esc: back) ")));
                f.render_widget(p, jobs);
            }
            _ => {
                let now = now_ms();
                let rows: Vec<Row> = self
                    .order
                    .iter()
                    .filter_map(|id| self.jobs.get(id))
                    .map(|v| {
                        let j = &v.job;
                        let time = match (j.started_at, j.finished_at) {
                            (Some(s), Some(e)) => duration(e - s),
                            (Some(s), None) => duration(now - s),
                            _ => format!("{} ago", duration(now - j.submitted_at)),
                        };
                        let info = match (&v.pending_reason, j.state) {
                            (Some(r), _) => r.clone(),
                            (None, s) if s.is_terminal() => {
                                j.reason.clone().or(j.exit_code.map(|c| format!("exit {c}"))).unwrap_or_default()
                            }
                            _ if !j.gpus_assigned.is_empty() => format!(
                                "GPUs {}",
                                j.gpus_assigned.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(",")
                            ),
                            _ => String::new(),
                        };
                        let what = j.spec.name.clone().unwrap_or_else(|| command_line(&j.spec.command));
                        Row::new(vec![
                            j.id.to_string(),
                            j.spec.user.clone().unwrap_or_else(|| "-".into()),
                            if j.held { "held".into() } else { j.state.to_string() },
                            time,
                            what,
                            info,
                        ])
                    })
                    .collect();
                let table = Table::new(
                    rows,
                    [
                        Constraint::Length(7),
                        Constraint::Length(10),
                        Constraint::Length(10),
                        Constraint::Length(9),
                        Constraint::Percentage(35),
                        Constraint::Min(10),
                    ],
                )
                .header(
                    Row::new(vec!["ID", "USER", "STATE", "TIME", "COMMAND", "INFO"])
                        .style(Style::new().add_modifier(Modifier::BOLD)),
                )
                .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
                .block(Block::new().borders(Borders::ALL).title(" jobs "));
                f.render_stateful_widget(table, jobs, &mut self.table);
            }
        }
        let keys = match &self.mode {
            Mode::Confirm(id) => Line::from(format!(" cancel job {id}? y: yes, any other key: no")),
            Mode::Logs { .. } => Line::from(" Esc/q/l: back to the jobs"),
            Mode::Jobs if !self.status.is_empty() => Line::from(format!(
                " {}   |  ↑↓/g select  l logs  c cancel  h hold/release  +/- priority  q quit",
                self.status
            )),
            Mode::Jobs => Line::from(" ↑↓/g select  l logs  c cancel  h hold/release  +/- priority  q quit"),
        };
        f.render_widget(Paragraph::new(keys), help);
    }

    fn owner_label(&self, job: JobId) -> String {
        match self.jobs.get(&job).and_then(|v| v.job.spec.user.clone()) {
            Some(u) => format!("job {job} ({u})"),
            None => format!("job {job}"),
        }
    }
}

/// Finished jobs kept (and counted in the header), and how many of the newest are listed.
const KEEP_FINISHED: usize = 1000;
const SHOW_FINISHED: usize = 30;

/// A job known only from an event so far.
fn placeholder(e: &EventView) -> JobView {
    let spec = ravel_core::JobSpec { user: e.user.clone(), name: e.name.clone(), ..Default::default() };
    let job = ravel_core::Job { attempt: e.attempt, held: e.held, ..ravel_core::Job::new(e.job, spec, e.state, e.at) };
    JobView {
        job,
        pending_reason: None,
        position: None,
        estimated_start: None,
        run_dir: None,
        attempts: vec![],
        events: vec![],
    }
}

fn follow_logs(client: Client, tx: mpsc::Sender<Msg>, id: JobId) {
    for stream in ["stdout", "stderr"] {
        let (client, tx) = (client.clone(), tx.clone());
        std::thread::spawn(move || {
            let path = format!("/v1/jobs/{id}/logs?follow=true&stream={stream}");
            let _ = client
                .stream_body(&path, Duration::from_secs(7 * 24 * 3600), |b| tx.send(Msg::Log(b.to_vec())).is_ok());
        });
    }
}
