//! The web UI in a real browser (headless Chromium driven through chromedriver, both installed
//! by scripts/test): it sees a job appear and change state live, follows its output, cancels it,
//! works with the keyboard and at phone width. Screenshots go to target/test-output/ui/. Also:
//! the UI's safety checks, and the job list over 100,000 jobs, over plain HTTP.

use ravel_test_support::{TestDaemon, eventually};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_ravel");

/// The login link of a fresh `ravel ui`.
fn ui_url(d: &TestDaemon) -> String {
    let v: Value = serde_json::from_str(&d.ok(&["ui", "--json"])).unwrap();
    v["url"].as_str().unwrap().to_string()
}

fn port_of(url: &str) -> u16 {
    url.split(':').nth(2).unwrap().split('/').next().unwrap().parse().unwrap()
}

/// A tiny HTTP/1.1 client: (status, headers, body).
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nconnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("host: 127.0.0.1:{port}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or("");
    req.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    // Read the head, then the body by its length (servers may keep the connection open).
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let head_end = loop {
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed before the answer's head");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let len = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok());
    let mut body = raw[head_end + 4..].to_vec();
    match len {
        Some(len) => {
            while body.len() < len {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "connection closed mid-body");
                body.extend_from_slice(&buf[..n]);
            }
        }
        None => {
            s.read_to_end(&mut body).unwrap();
        }
    }
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head, String::from_utf8_lossy(&body).into_owned())
}

/// Signs in with a login link; returns the session cookie.
fn sign_in(url: &str) -> String {
    let port = port_of(url);
    let path = &url[url.find("/login").unwrap()..];
    let (status, head, _) = http(port, "GET", path, &[], None);
    assert_eq!(status, 303, "{head}");
    let cookie = head.lines().find_map(|l| l.strip_prefix("set-cookie: ")).unwrap();
    assert!(cookie.contains("httponly") && cookie.contains("samesite=strict"), "{cookie}");
    cookie.split(';').next().unwrap().to_string()
}

#[test]
fn the_ui_is_closed_until_asked_and_checks_host_origin_and_session() {
    let d = TestDaemon::builder(BIN).start();
    let url = ui_url(&d);
    let port = port_of(&url);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let (status, _, body) = http(port, "GET", "/", &[], None);
    assert_eq!(status, 401, "no session: {body}");
    assert!(body.contains("ravel ui"), "says how to sign in: {body}");
    let cookie = sign_in(&url);
    let c = [("cookie", cookie.as_str())];
    assert_eq!(http(port, "GET", "/", &c, None).0, 200);
    // The link works once.
    let path = &url[url.find("/login").unwrap()..];
    assert_eq!(http(port, "GET", path, &[], None).0, 401);
    // DNS rebinding: a page of another name that resolves here is refused.
    let evil = format!("evil.example:{port}");
    assert_eq!(http(port, "GET", "/", &[("cookie", &cookie), ("host", &evil)], None).0, 421);
    // A change from another origin is refused, from ours it works.
    let id = d.submit(&["--hold", "--", "true"]);
    let body = json!({ "ids": [id] }).to_string();
    let post = |origin: &str| {
        http(
            port,
            "POST",
            "/v1/jobs/cancel",
            &[("cookie", &cookie), ("origin", origin), ("content-type", "application/json")],
            Some(&body),
        )
        .0
    };
    assert_eq!(post("http://evil.example"), 403);
    assert_eq!(d.state(id), "queued");
    assert_eq!(post(&format!("http://127.0.0.1:{port}")), 200);
    assert_eq!(d.state(id), "canceled");
    // A job's metrics.json becomes charts on its page.
    let metrics = r#"[{"step": 1, "loss": 0.9}, {"step": 2, "loss": 0.5}, {"step": 3, "loss": 0.2}]"#;
    let m = d.submit(&["--", "sh", "-c", &format!("printf '%s' '{metrics}' > \"$RAVEL_RUN_DIR/metrics.json\"")]);
    d.wait_state(m, "succeeded");
    let (status, _, page) = http(port, "GET", &format!("/jobs/{m}"), &[("cookie", &cookie)], None);
    assert_eq!(status, 200);
    assert!(page.contains("<h2>Metrics</h2>") && page.contains("loss over 3 points, last 0.2"), "{page}");
}

#[test]
fn the_job_list_pages_through_100000_jobs_quickly() {
    let d = TestDaemon::builder(BIN).start();
    // One array request makes 100,000 held jobs.
    d.ok(&["run", "--hold", "--array", "0-99999", "--", "true"]);
    let url = ui_url(&d);
    let port = port_of(&url);
    let cookie = sign_in(&url);
    let mut worst: f64 = 0.0;
    for path in ["/", "/?page=1000", "/?page=2000&per=50", "/?state=waiting&page=500", "/?q=true&page=3", "/?order=old"]
    {
        let (status, head, body) = http(port, "GET", path, &[("cookie", &cookie)], None);
        assert_eq!(status, 200, "{path}");
        let ms: f64 = head
            .lines()
            .find_map(|l| l.strip_prefix("server-timing: render;dur="))
            .and_then(|v| v.trim().parse().ok())
            .unwrap();
        eprintln!("{path}: {ms:.1} ms");
        worst = worst.max(ms);
        assert!(body.contains("100000 jobs"), "{path}: the total is shown");
        assert_eq!(body.matches("<tr id=\"job-").count(), 50, "{path}: one page of rows");
    }
    // The figure is bench/ui.sh's (release build); this only catches a page that lost its index
    // (debug build, noisy shared machine: twice the 200 ms target).
    eprintln!("slowest page over 100,000 jobs rendered in {worst:.1} ms");
    assert!(worst < 400.0, "a page took {worst} ms");
}

/// A chromedriver session on headless Chromium.
struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

impl Browser {
    fn start() -> Option<Browser> {
        let (chrome, driver) = ("/usr/bin/chromium", "/usr/bin/chromedriver");
        if !std::path::Path::new(chrome).exists() || !std::path::Path::new(driver).exists() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "Chromium and chromedriver must be installed (scripts/test does)"
            );
            eprintln!("skipping the browser test: no {chrome} or {driver} (scripts/test installs them)");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        assert!(
            eventually(Duration::from_secs(20), || TcpStream::connect(("127.0.0.1", port)).is_ok()),
            "chromedriver did not start"
        );
        let mut b = Browser { driver: child, port, session: String::new() };
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": chrome,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"]
        }}}});
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {v}")).to_string();
        Some(b)
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string());
        let (status, _, text) = http(self.port, method, path, &[("content-type", "application/json")], body.as_deref());
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert!(status == 200, "{method} {path}: {status} {text}");
        v["value"].clone()
    }

    fn s(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    fn go(&self, url: &str) {
        self.call("POST", &self.s("/url"), Some(json!({ "url": url })));
    }

    fn script(&self, js: &str) -> Value {
        self.call("POST", &self.s("/execute/sync"), Some(json!({ "script": js, "args": [] })))
    }

    /// Waits until the script returns true.
    fn until(&self, what: &str, js: &str) {
        let ok = eventually(Duration::from_secs(20), || self.script(js) == Value::Bool(true));
        let url = self.call("GET", &self.s("/url"), None);
        assert!(ok, "the page never showed {what} (at {url}): {}", self.script("return document.body.innerText"));
    }

    fn click(&self, css: &str) {
        let el = self.call("POST", &self.s("/element"), Some(json!({ "using": "css selector", "value": css })));
        let id = el.as_object().and_then(|o| o.values().next()).and_then(|v| v.as_str()).unwrap().to_string();
        self.call("POST", &self.s(&format!("/element/{id}/click")), Some(json!({})));
    }

    fn key(&self, key: &str) {
        let actions = json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
            {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}
        ]}]});
        self.call("POST", &self.s("/actions"), Some(actions));
    }

    fn screenshot(&self, name: &str) {
        use std::io::Write as _;
        let b64 = self.call("GET", &self.s("/screenshot"), None);
        let bytes = base64_decode(b64.as_str().unwrap());
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-output/ui");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::File::create(dir.join(format!("{name}.png"))).unwrap().write_all(&bytes).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "a PNG screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = http(self.port, "DELETE", &format!("/session/{}", self.session), &[], None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = s.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()).collect();
    clean
        .chunks(4)
        .flat_map(|ch| {
            let n = ch.iter().enumerate().fold(0u32, |n, (i, c)| n | (u32::from(val(*c)) << (18 - 6 * i)));
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            bytes[..ch.len() - 1].to_vec()
        })
        .collect()
}

#[test]
fn a_browser_sees_a_job_live_follows_its_output_cancels_it_and_uses_the_keyboard() {
    let Some(b) = Browser::start() else { return };
    let d = TestDaemon::builder(BIN).start();
    let url = ui_url(&d);
    let port = port_of(&url);
    b.go(&url);
    b.until(
        "the jobs page",
        "return document.querySelector('h1') && document.querySelector('h1').innerText === 'Jobs'",
    );
    // A job submitted now appears, and changes state, without a reload.
    b.script("window.notReloaded = true; return true");
    let id = d.submit(&["--name", "ui-live", "--", "sh", "-c", "echo hello-from-ui-test; sleep 60"]);
    b.until("the new job", &format!("return !!document.getElementById('job-{id}')"));
    b.until(
        "the job running",
        &format!("return document.querySelector('#job-{id} .state').dataset.state === 'running'"),
    );
    assert_eq!(b.script("return window.notReloaded === true"), Value::Bool(true), "live, not reloaded");
    b.screenshot("jobs");
    // Its page streams its output; Cancel stops it, and the state follows.
    b.click(&format!("#job-{id} a"));
    b.until("the job page", &format!("return document.querySelector('h1').innerText.startsWith('Job {id}')"));
    b.until("its output", "return document.getElementById('log').textContent.includes('hello-from-ui-test')");
    b.screenshot("job");
    b.click("[data-action=cancel]");
    b.until("the job canceled", "return document.getElementById('state').textContent === 'canceled'");
    assert_eq!(d.state(id), "canceled");
    b.until("retry enabled", "return !document.querySelector('[data-action=retry]').disabled");
    // Keyboard: Tab reaches a job's link, Enter opens it.
    b.go(&format!("http://127.0.0.1:{port}/"));
    b.until("the jobs page", &format!("return !!document.getElementById('job-{id}')"));
    let mut reached = false;
    for _ in 0..20 {
        b.key("\u{E004}");
        if b.script("return !!(document.activeElement && document.activeElement.closest('tr[id^=job-]'))")
            == Value::Bool(true)
        {
            reached = true;
            break;
        }
    }
    assert!(reached, "Tab reaches the jobs' links");
    b.key("\u{E007}");
    b.until("a job page by keyboard", "return location.pathname.startsWith('/jobs/')");
    // Phone width: nothing scrolls sideways.
    b.call("POST", &b.s("/window/rect"), Some(json!({ "width": 390, "height": 844 })));
    b.go(&format!("http://127.0.0.1:{port}/"));
    b.until("the jobs page at phone width", "return document.documentElement.scrollWidth <= window.innerWidth + 1");
    b.screenshot("jobs-phone");
}
