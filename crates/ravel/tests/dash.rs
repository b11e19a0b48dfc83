//! `ravel dash` in a real terminal (tmux gives it a pseudo-terminal and shows the screen as a
//! person would see it): it renders the queue, reacts to keys, and keeps up with bursts of
//! state changes.

use ravel_test_support::{FakeGpus, TestDaemon, eventually};
use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_ravel");

/// A tmux server of the test's own, with the dash in a 120x40 window.
struct Screen {
    socket: String,
}

impl Screen {
    fn start(d: &TestDaemon) -> Screen {
        let socket = format!("ravel-dash-test-{}", std::process::id());
        let cmd = format!("env RAVEL_HOME={} {BIN} dash", d.home().display());
        let out = Command::new("tmux")
            .args(["-L", &socket, "new-session", "-d", "-x", "120", "-y", "40", &cmd])
            .output()
            .expect("tmux must be installed (scripts/test installs it)");
        assert!(out.status.success(), "tmux: {out:?}");
        Screen { socket }
    }

    fn text(&self) -> String {
        let out = Command::new("tmux").args(["-L", &self.socket, "capture-pane", "-p"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn key(&self, k: &str) {
        let out = Command::new("tmux").args(["-L", &self.socket, "send-keys", k]).output().unwrap();
        assert!(out.status.success());
    }

    /// Waits until the screen shows `what`; panics with the screen otherwise.
    fn shows(&self, what: &str) {
        let mut last = String::new();
        let seen = eventually(Duration::from_secs(15), || {
            last = self.text();
            last.contains(what)
        });
        assert!(seen, "the dash never showed {what:?}; the screen:\n{last}");
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).output();
    }
}

#[test]
fn dash_renders_the_queue_reacts_to_keys_and_keeps_up() {
    let d = TestDaemon::builder(BIN).gpus(FakeGpus::Count(2)).start();
    let held = d.submit(&["--hold", "--name", "dash-held", "--", "true"]);
    let screen = Screen::start(&d);
    screen.shows("dash-held");
    screen.shows("GPUs (fake)");
    screen.shows("Held");
    // The only job is selected: `h` releases it, and it runs.
    screen.key("h");
    d.wait_state(held, "succeeded");
    screen.shows("succeeded 1");
    // A burst: 100 jobs, each queued, running (placed on a ready supervisor, or allocated first)
    // and ended, 300 to 400 events in a second or two. The dash follows the event stream; it
    // must end showing all of them, and the held job's release, start and end before them.
    d.ok(&["run", "--array", "0-99", "--", "true"]);
    screen.shows("running 0  waiting 0  succeeded 101");
    let text = screen.text();
    let events: u64 = text.split("events ").nth(1).and_then(|t| t.split_whitespace().next()?.parse().ok()).unwrap();
    assert!(events >= 100 * 3 + 2, "{events} events seen:\n{text}");
    // `c` asks first; `y` cancels.
    let sleeper = d.submit(&["--name", "dash-sleeper", "--", "sh", "-c", "echo hello-dash-logs; sleep 60"]);
    d.wait_state(sleeper, "running");
    screen.shows("dash-sleeper");
    // Running jobs come first: `g` selects the top row; `l` follows its logs, Esc goes back.
    screen.key("g");
    screen.key("l");
    screen.shows(&format!("logs of job {sleeper}"));
    screen.shows("hello-dash-logs");
    screen.key("Escape");
    screen.shows("dash-sleeper");
    screen.key("c");
    screen.shows(&format!("cancel job {sleeper}?"));
    screen.key("y");
    d.wait_state(sleeper, "canceled");
    // `q` quits.
    screen.key("q");
    assert!(eventually(Duration::from_secs(5), || !screen.text().contains("ravel dash")), "{}", screen.text());
}
