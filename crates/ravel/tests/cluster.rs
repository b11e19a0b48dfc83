//! Cluster mode end to end: a real controller and three real agent processes on loopback, over
//! HTTPS with tokens, each agent with its own fake GPUs and home.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ravel");
const ADMIN: &str = "test-admin-token-0123456789";
/// Short, so that node loss is seen within the test; agents fence after two thirds of it.
const NODE_TIMEOUT: &str = "5s";

struct Cluster {
    dir: tempfile::TempDir,
    node_timeout: &'static str,
    port: u16,
    fingerprint: String,
    controller: Child,
    agents: Vec<Option<Child>>,
    agent_token: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Cluster {
    fn start(nodes: usize) -> Cluster {
        Cluster::start_with(&vec![&[][..]; nodes])
    }

    /// One agent per entry, with these extra flags.
    fn start_with(agents: &[&[&str]]) -> Cluster {
        Cluster::start_timed(agents, NODE_TIMEOUT)
    }

    fn start_timed(agents: &[&[&str]], node_timeout: &'static str) -> Cluster {
        let nodes = agents.len();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let (controller, fingerprint) = start_controller(dir.path(), port, node_timeout);
        let mut c =
            Cluster { dir, node_timeout, port, fingerprint, controller, agents: vec![], agent_token: String::new() };
        // One token for all the agents: unnamed ("agent"), it may sync as any node.
        let token: Value =
            serde_json::from_str(&c.ok(&["token", "create", "--role", "agent", "--json"])).expect("token JSON");
        c.agent_token = token["token"].as_str().unwrap().to_string();
        std::fs::write(c.dir.path().join("agent.token"), &c.agent_token).unwrap();
        for (i, extra) in agents.iter().enumerate() {
            let a = c.start_agent(i, extra);
            c.agents.push(Some(a));
        }
        c.wait_nodes(nodes, "ready");
        c
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn start_agent(&self, i: usize, extra: &[&str]) -> Child {
        let home = self.dir.path().join(format!("agent{i}"));
        std::fs::create_dir_all(&home).unwrap();
        Command::new(BIN)
            .args(["agent", "--controller", &self.url(), "--fingerprint", &self.fingerprint, "--cpus", "4"])
            .arg("--token-file")
            .arg(self.dir.path().join("agent.token"))
            .args(["--name", &format!("node{i}"), "--home"])
            .arg(&home)
            .args(extra)
            .env("RAVEL_FAKE_GPUS", "2")
            .env_remove("RAVEL_HOME")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join(format!("agent{i}.log"))).unwrap())
            .spawn()
            .expect("start agent")
    }

    /// The CLI as a client of the controller, with an admin token.
    fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("RAVEL_CONTROLLER", self.url())
            .env("RAVEL_TOKEN", ADMIN)
            .env("RAVEL_FINGERPRINT", &self.fingerprint)
            .env("RAVEL_HOME", self.dir.path().join("client-home"))
            .env("XDG_CONFIG_HOME", self.dir.path().join("client-config"))
            .current_dir(self.dir.path());
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "ravel {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn submit(&self, args: &[&str]) -> i64 {
        let mut all = vec!["run", "-q"];
        all.extend_from_slice(args);
        self.ok(&all).trim().parse().expect("job id")
    }

    fn show(&self, id: i64) -> Value {
        serde_json::from_str(&self.ok(&["show", &id.to_string(), "--json"])).unwrap()
    }

    fn nodes(&self) -> Vec<Value> {
        let v: Value = serde_json::from_str(&self.ok(&["nodes", "--json"])).unwrap();
        v.get("nodes").unwrap_or(&v).as_array().cloned().unwrap_or_default()
    }

    fn wait_nodes(&self, n: usize, state: &str) {
        let ok =
            eventually(Duration::from_secs(20), || self.nodes().iter().filter(|x| x["state"] == state).count() == n);
        assert!(ok, "not {n} nodes {state}: {:?}", self.nodes());
    }

    fn wait_job(&self, id: i64, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.show(id);
            if pred(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "job {id} never got there: {v:#}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn agent_pid(&self, node: &str) -> i32 {
        let i: usize = node.trim_start_matches("node").parse().unwrap();
        self.agents[i].as_ref().unwrap().id() as i32
    }

    fn restart_controller(&mut self) {
        let (c, f) = start_controller(self.dir.path(), self.port, self.node_timeout);
        assert_eq!(f, self.fingerprint, "the kept certificate is reused");
        self.controller = c;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for a in self.agents.iter_mut().flatten() {
            let _ = a.kill();
            let _ = a.wait();
        }
        let _ = self.controller.kill();
        let _ = self.controller.wait();
        // Jobs outlive their agents: end them (their leases would, within seconds) by taking
        // their lease files away.
        for i in 0..self.agents.len() {
            let home = self.dir.path().join(format!("agent{i}"));
            for e in std::fs::read_dir(&home).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().starts_with("lease.") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(400));
    }
}

fn start_controller(dir: &Path, port: u16, node_timeout: &str) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(["controller", "--listen", &format!("127.0.0.1:{port}"), "--tls-self-signed"])
        .args(["--node-timeout", node_timeout, "--kill-grace", "1"])
        .arg("--home")
        .arg(dir.join("controller"))
        .env("RAVEL_ADMIN_TOKEN", ADMIN)
        .env_remove("RAVEL_HOME")
        .stdout(Stdio::piped())
        .stderr(std::fs::OpenOptions::new().create(true).append(true).open(dir.join("controller.log")).unwrap())
        .spawn()
        .expect("start controller");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut fingerprint = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(f) = line.split("fingerprint SHA256 ").nth(1) {
            fingerprint = Some(f.trim().to_string());
            break;
        }
    }
    let fingerprint = fingerprint.unwrap_or_else(|| {
        panic!("controller printed no fingerprint: {}", std::fs::read_to_string(dir.join("controller.log")).unwrap())
    });
    // Keep draining its stdout so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, fingerprint)
}

fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

fn attempts(v: &Value) -> Vec<Value> {
    v["attempts"].as_array().cloned().unwrap_or_default()
}

fn current_node(v: &Value) -> String {
    attempts(v).last().map(|a| a["node"].as_str().unwrap_or("").to_string()).unwrap_or_default()
}

fn count_lines(path: &PathBuf, what: &str) -> usize {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter(|l| *l == what).count()
}

#[test]
fn jobs_spread_over_the_nodes_with_their_gpus_and_logs_come_back() {
    let c = Cluster::start(3);
    let ids: Vec<i64> = (0..6)
        .map(|i| {
            c.submit(&["--gpus", "1", "--", "sh", "-c", &format!("echo gpu=$CUDA_VISIBLE_DEVICES job={i}; sleep 2")])
        })
        .collect();
    let mut nodes = std::collections::HashSet::new();
    let mut held = std::collections::HashSet::new();
    for id in &ids {
        let v = c.wait_job(*id, Duration::from_secs(20), |v| v["state"] == "running" || v["state"] == "succeeded");
        let a = attempts(&v).last().cloned().unwrap();
        let gpus = a["gpus"].as_array().unwrap().clone();
        assert_eq!(gpus.len(), 1, "{a}");
        let node = a["node"].as_str().unwrap().to_string();
        assert!(held.insert((node.clone(), gpus[0].as_u64().unwrap())), "GPU given twice: {a}");
        nodes.insert(node);
    }
    assert_eq!(nodes.len(), 3, "six 1-GPU jobs on three 2-GPU nodes use all three");
    for (i, id) in ids.iter().enumerate() {
        let v = c.wait_job(*id, Duration::from_secs(30), |v| v["state"] == "succeeded");
        let gpu = attempts(&v).last().unwrap()["gpus"][0].as_u64().unwrap();
        // The output, written on the node, read through the controller.
        let log = c.ok(&["logs", &id.to_string()]);
        assert_eq!(log.trim(), format!("gpu={gpu} job={i}"), "job {id}");
    }
    // Every attempt went queued → allocated → starting (handed to its agent) → running → succeeded.
    let events = c.ok(&["events", "--json"]);
    let states: Vec<String> = events
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .flat_map(|v| if v.is_array() { v.as_array().unwrap().clone() } else { vec![v] })
        .filter(|e| e["job"] == ids[0])
        .map(|e| e["state"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(states, ["queued", "allocated", "starting", "running", "succeeded"], "{events}");
    // Followed logs of a job on another node stream until it ends.
    let id = c.submit(&["--", "sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.3; done"]);
    let followed = c.ok(&["logs", "-f", &id.to_string()]);
    assert_eq!(followed, "line 1\nline 2\nline 3\n");
    // A cwd that does not exist on the node fails the attempt with a reason naming the node.
    let id = c.submit(&["--cwd", "/no/such/dir/here", "--", "true"]);
    let v = c.wait_job(id, Duration::from_secs(20), |v| v["state"] == "failed");
    let reason = v["reason"].as_str().unwrap_or("");
    assert!(reason.contains("cwd /no/such/dir/here not found on node node"), "{v:#}");
}

#[test]
fn a_killed_agents_job_is_lost_and_runs_once_elsewhere() {
    let c = Cluster::start(3);
    let marks = c.dir.path().join("marks");
    let script = format!("echo start >> {m}; sleep 6; echo done >> {m}", m = marks.display());
    let id = c.submit(&["--retries", "1", "--", "sh", "-c", &script]);
    let v = c.wait_job(id, Duration::from_secs(20), |v| v["state"] == "running");
    let first = current_node(&v);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(c.agent_pid(&first), libc::SIGKILL) };
    let v = c.wait_job(id, Duration::from_secs(30), |v| attempts(v).len() == 2 && v["state"] == "running");
    let a = attempts(&v);
    assert_eq!(a[0]["state"], "lost", "{v:#}");
    assert!(a[0]["reason"].as_str().unwrap_or("").contains(&format!("node {first} lost")), "{v:#}");
    assert_ne!(current_node(&v), first, "retried on another node");
    let v = c.wait_job(id, Duration::from_secs(30), |v| v["state"] == "succeeded");
    assert_eq!(attempts(&v).len(), 2);
    std::thread::sleep(Duration::from_secs(1));
    // The first attempt was killed by its own supervisor (its lease ran out): it never finished.
    assert_eq!(count_lines(&marks, "start"), 2);
    assert_eq!(count_lines(&marks, "done"), 1, "exactly one attempt ran to the end");
    let lost = c.nodes().into_iter().find(|n| n["name"] == first.as_str()).unwrap();
    assert_eq!(lost["state"], "lost");
}

#[test]
fn a_stopped_agent_is_fenced_and_its_stale_reports_are_refused() {
    let mut c = Cluster::start(2);
    let marks = c.dir.path().join("marks");
    let script = format!("echo start >> {m}; sleep 7; echo done >> {m}", m = marks.display());
    let id = c.submit(&["--retries", "1", "--", "sh", "-c", &script]);
    let v = c.wait_job(id, Duration::from_secs(20), |v| v["state"] == "running");
    let first = current_node(&v);
    let pid = c.agent_pid(&first);
    let epoch_before = c.nodes().into_iter().find(|n| n["name"] == first.as_str()).unwrap()["epoch"].as_u64().unwrap();
    // SAFETY: signals to our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let v = c.wait_job(id, Duration::from_secs(30), |v| attempts(v).len() == 2 && v["state"] == "running");
    assert_eq!(attempts(&v)[0]["state"], "lost");
    std::thread::sleep(Duration::from_secs(1));
    unsafe { libc::kill(pid, libc::SIGCONT) };
    // It comes back under a new epoch; its old attempt's report was refused, not recorded.
    let ok = eventually(Duration::from_secs(20), || {
        c.nodes().iter().any(|n| {
            n["name"] == first.as_str() && n["state"] == "ready" && n["epoch"].as_u64() > Some(epoch_before + 1)
        })
    });
    assert!(ok, "{:?}", c.nodes());
    let v = c.wait_job(id, Duration::from_secs(30), |v| v["state"] == "succeeded");
    let a = attempts(&v);
    assert_eq!((a[0]["state"].as_str(), a[1]["state"].as_str()), (Some("lost"), Some("succeeded")), "{v:#}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(count_lines(&marks, "done"), 1, "the job did not run twice to the end");
    let _ = &mut c;
}

#[test]
fn a_restarted_controller_keeps_running_jobs_and_loses_no_node() {
    // The agents keep their jobs for two thirds of the node timeout without the controller: room
    // for a restart on a loaded machine.
    let mut c = Cluster::start_timed(&[&[], &[]], "12s");
    let ids: Vec<i64> =
        (0..2).map(|_| c.submit(&["--gpus", "1", "--", "sh", "-c", "sleep 5; echo finished"])).collect();
    for id in &ids {
        c.wait_job(*id, Duration::from_secs(20), |v| v["state"] == "running");
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(c.controller.id() as i32, libc::SIGKILL) };
    let _ = c.controller.wait();
    std::thread::sleep(Duration::from_millis(500));
    c.restart_controller();
    for id in &ids {
        let v = c.wait_job(*id, Duration::from_secs(30), |v| v["state"] == "succeeded");
        assert_eq!(attempts(&v).len(), 1, "no retry: the job kept running: {v:#}");
        assert_eq!(c.ok(&["logs", &id.to_string()]), "finished\n");
    }
    assert!(c.nodes().iter().all(|n| n["state"] == "ready"), "{:?}", c.nodes());
}

#[test]
fn a_drained_node_takes_no_new_jobs_and_finishes_its_own() {
    let c = Cluster::start(2);
    let id = c.submit(&["--gpus", "2", "--", "sleep", "2"]);
    let v = c.wait_job(id, Duration::from_secs(20), |v| v["state"] == "running");
    let busy = current_node(&v);
    c.ok(&["node", "drain", &busy]);
    let more: Vec<i64> = (0..3).map(|_| c.submit(&["--gpus", "1", "--", "sleep", "0.5"])).collect();
    for id in &more {
        let v = c.wait_job(*id, Duration::from_secs(30), |v| v["state"] == "succeeded");
        assert_ne!(current_node(&v), busy, "job {id} went to the drained node");
    }
    c.wait_job(id, Duration::from_secs(20), |v| v["state"] == "succeeded");
    let ok = eventually(Duration::from_secs(10), || {
        c.nodes().iter().any(|n| n["name"] == busy.as_str() && n["state"] == "drained")
    });
    assert!(ok, "{:?}", c.nodes());
    c.ok(&["node", "undrain", &busy]);
    assert!(c.nodes().iter().any(|n| n["name"] == busy.as_str() && n["state"] == "ready"));
}

/// `curl` against the controller: (status, body).
fn curl(c: &Cluster, args: &[&str]) -> (u16, String) {
    let cert = c.dir.path().join("controller/tls/cert.pem");
    let out = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
        .arg(&cert)
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn tokens_open_only_their_part_of_the_api() {
    let c = Cluster::start(1);
    let url = c.url();
    let token = |role: &str, extra: &[&str]| -> String {
        let mut args = vec!["token", "create", "--role", role, "--json"];
        args.extend_from_slice(extra);
        let v: Value = serde_json::from_str(&c.ok(&args)).unwrap();
        v["token"].as_str().unwrap().to_string()
    };
    let user = token("user", &["--name", "alice"]);
    let revoked = token("user", &["--name", "mallory"]);
    let expiring = token("user", &["--name", "brief", "--expires", "1s"]);
    let ls: Value = serde_json::from_str(&c.ok(&["token", "ls", "--json"])).unwrap();
    let list = ls.get("tokens").unwrap_or(&ls).to_string();
    assert!(!list.contains(&user) && !list.contains(ADMIN), "secrets never listed");
    let mallory_id =
        ls.get("tokens").unwrap_or(&ls).as_array().unwrap().iter().find(|t| t["name"] == "mallory").unwrap()["id"]
            .as_u64()
            .unwrap();
    c.ok(&["token", "revoke", &mallory_id.to_string()]);
    std::thread::sleep(Duration::from_millis(1100));
    let bearer = |t: &str| format!("authorization: Bearer {t}");
    let jobs = format!("{url}/v1/jobs");
    let sync = format!("{url}/v1/agent/sync");
    let tokens = format!("{url}/v1/tokens");
    for (what, args, want) in [
        ("no token", vec![jobs.clone()], 401),
        ("a wrong token", vec!["-H".into(), bearer("ravel_nope"), jobs.clone()], 401),
        ("a revoked token", vec!["-H".into(), bearer(&revoked), jobs.clone()], 401),
        ("an expired token", vec!["-H".into(), bearer(&expiring), jobs.clone()], 401),
        ("a user token", vec!["-H".into(), bearer(&user), jobs.clone()], 200),
        ("a user token on agent sync", vec!["-H".into(), bearer(&user), "-d".into(), "{}".into(), sync.clone()], 403),
        ("an agent token on tokens", vec!["-H".into(), bearer(&c.agent_token), tokens.clone()], 403),
        ("an agent token on jobs", vec!["-H".into(), bearer(&c.agent_token), jobs.clone()], 403),
        ("a user token on tokens", vec!["-H".into(), bearer(&user), tokens.clone()], 403),
        ("an admin token on tokens", vec!["-H".into(), bearer(ADMIN), tokens.clone()], 200),
    ] {
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let (code, body) = curl(&c, &args);
        assert_eq!(code, want, "{what}: {body}");
        if code >= 400 {
            let e: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{what}: not JSON: {body}"));
            assert!(e["error"].as_str().is_some_and(|m| !m.contains(&user) && !m.contains(ADMIN)), "{what}: {body}");
        }
    }
    // Bad bodies: 4xx with the reason, nothing changed.
    let before = c.ok(&["queue", "--all", "--json"]);
    let h = ["-H".to_string(), bearer(&user), "-H".into(), "content-type: application/json".into()];
    let big = c.dir.path().join("big.json");
    std::fs::write(
        &big,
        format!(
            "{{\"spec\": {{\"command\": [\"true\"], \"cwd\": \"/\", \"env\": [[\"X\", \"{}\"]]}}}}",
            "x".repeat(1_200_000)
        ),
    )
    .unwrap();
    let big_arg = format!("@{}", big.display());
    for (what, body, want) in [
        ("malformed JSON", "{not json", 400),
        ("an unknown field", "{\"spec\": {\"command\": [\"true\"], \"cwd\": \"/\"}, \"surprise\": 1}", 400),
        ("an oversized body", big_arg.as_str(), 413),
    ] {
        let mut args: Vec<&str> = h.iter().map(|s| s.as_str()).collect();
        args.extend(["--data-binary", body, jobs.as_str()]);
        let (code, text) = curl(&c, &args);
        assert_eq!(code, want, "{what}: {text}");
    }
    assert_eq!(c.ok(&["queue", "--all", "--json"]), before, "refused requests changed nothing");
    // An agent's sync with an unknown field is refused too.
    let mut args: Vec<&str> = vec!["-H", &h[1], "-H", "content-type: application/json"];
    let agent_bearer = bearer(&c.agent_token);
    args[1] = &agent_bearer;
    args.extend([
        "-d",
        "{\"name\": \"x\", \"epoch\": 0, \"version\": \"1\", \"cpus\": 1, \"gpus\": [], \"attempts\": [], \"evil\": 1}",
        sync.as_str(),
    ]);
    assert_eq!(curl(&c, &args).0, 400);
    // An agent token named after a node syncs as that node only.
    let bound = token("agent", &["--name", "node7"]);
    let bound_bearer = bearer(&bound);
    let body = "{\"name\": \"node8\", \"epoch\": 0, \"version\": \"1\", \"cpus\": 1, \"gpus\": [], \"attempts\": []}";
    let args = ["-H", bound_bearer.as_str(), "-H", "content-type: application/json", "-d", body, sync.as_str()];
    let (code, text) = curl(&c, &args);
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("belongs to node node7"), "{text}");
    // Plain HTTP to the TLS port is refused cleanly.
    let plain = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}", &format!("http://127.0.0.1:{}/v1/jobs", c.port)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&plain.stdout);
    assert!(text.ends_with("\n400") && text.contains("HTTPS only"), "{text}");
}

#[test]
fn jobs_choose_their_nodes_by_name_and_tags_within_node_limits() {
    let c = Cluster::start_with(&[&["--tags", "a100"], &["--tags", "a100,nvlink"], &["--max-jobs", "1"]]);
    let on = |args: &[&str]| {
        let id = c.submit(args);
        current_node(&c.wait_job(id, Duration::from_secs(20), |v| v["state"] == "succeeded"))
    };
    assert_eq!(on(&["--node", "node2", "--", "true"]), "node2");
    assert_eq!(on(&["--tags", "nvlink", "--", "true"]), "node1");
    assert_eq!(on(&["--tags", "a100,nvlink", "--gpus", "2", "--", "true"]), "node1");
    let tagged = on(&["--tags", "a100", "--", "true"]);
    assert!(tagged == "node0" || tagged == "node1", "{tagged}");
    // No node has it: the job waits and says why.
    let id = c.submit(&["--tags", "h100", "--", "true"]);
    let v = c.wait_job(id, Duration::from_secs(10), |v| {
        v["pending_reason"].as_str().is_some_and(|r| r.starts_with("Nodes"))
    });
    assert!(v["pending_reason"].as_str().unwrap().contains("no node matches"), "{v:#}");
    c.ok(&["cancel", &id.to_string()]);
    // node2 takes one job at a time.
    let first = c.submit(&["--node", "node2", "--", "sleep", "2"]);
    let second = c.submit(&["--node", "node2", "--", "true"]);
    c.wait_job(first, Duration::from_secs(20), |v| v["state"] == "running");
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(c.show(second)["state"], "queued", "node2's --max-jobs 1 holds it back");
    c.wait_job(second, Duration::from_secs(20), |v| v["state"] == "succeeded");
    // A single daemon refuses node choices it cannot honour: checked in the local tests.
}

#[test]
fn a_gang_starts_on_distinct_nodes_and_stops_together() {
    let c = Cluster::start(3);
    let marks = c.dir.path().join("ranks");
    let script = format!(
        "echo rank=$NODE_RANK world=$WORLD_SIZE master=$MASTER_ADDR:$MASTER_PORT list=$RAVEL_NODELIST gpus=$CUDA_VISIBLE_DEVICES >> {m}; echo out $NODE_RANK",
        m = marks.display()
    );
    let id = c.submit(&["--nodes", "2", "--gpus", "2", "--", "sh", "-c", &script]);
    let v = c.wait_job(id, Duration::from_secs(30), |v| v["state"] == "succeeded");
    let a = attempts(&v).last().cloned().unwrap();
    let rank1 = a["ranks"][0][0].as_str().unwrap().to_string();
    let rank0 = a["node"].as_str().unwrap().to_string();
    assert_ne!(rank0, rank1, "{a}");
    let text = std::fs::read_to_string(&marks).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    let port = 29_500 + id % 10_000;
    let expect = |r: u32| format!("rank={r} world=2 master=127.0.0.1:{port} list={rank0},{rank1} gpus=0,1");
    assert_eq!(lines, vec![expect(0), expect(1)]);
    // Each rank's output, shipped from its own node.
    let rank_logs = |args: &[&str]| c.ok(&[&["logs", &id.to_string()][..], args].concat());
    assert_eq!(rank_logs(&[]), "out 0\n");
    assert_eq!(rank_logs(&["--rank", "1"]), "out 1\n");
    let (code, err) = {
        let out = c.cmd().args(["logs", &id.to_string(), "--rank", "2"]).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    assert_eq!(code, Some(1));
    assert!(err.contains("has 2 ranks"), "{err}");
    // One rank fails: the job fails and the other rank is stopped at once.
    let script = "if [ \"$NODE_RANK\" = 1 ]; then sleep 1; exit 3; fi; exec sleep 41";
    let id = c.submit(&["--nodes", "2", "--gpus", "1", "--", "sh", "-c", script]);
    let v = c.wait_job(id, Duration::from_secs(30), |v| v["state"] == "failed");
    assert_eq!(v["exit_code"], 3, "{v:#}");
    let gone = eventually(Duration::from_secs(10), || {
        let out = Command::new("pgrep").args(["-f", "sleep 41"]).output().unwrap();
        out.stdout.is_empty()
    });
    assert!(gone, "rank 0 still runs after rank 1 failed");
    // More ranks than nodes: it waits, all or nothing.
    let id = c.submit(&["--nodes", "4", "--", "true"]);
    let v = c.wait_job(id, Duration::from_secs(10), |v| {
        v["pending_reason"].as_str().is_some_and(|r| r.starts_with("Nodes"))
    });
    assert!(v["pending_reason"].as_str().unwrap().contains("needs 4 nodes"), "{v:#}");
    assert!(attempts(&v).is_empty());
}

#[test]
fn a_restarted_agent_takes_back_its_jobs() {
    let mut c = Cluster::start_timed(&[&[]], "6s");
    let id = c.submit(&["--", "sh", "-c", "sleep 5; echo finished"]);
    c.wait_job(id, Duration::from_secs(20), |v| v["state"] == "running");
    // Wait until the agent is in a long poll, so that its lease is as old as it gets.
    std::thread::sleep(Duration::from_millis(1500));
    let mut old = c.agents[0].take().unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(old.id() as i32, libc::SIGKILL) };
    let _ = old.wait();
    std::thread::sleep(Duration::from_millis(500));
    c.agents[0] = Some(c.start_agent(0, &[]));
    let v = c.wait_job(id, Duration::from_secs(30), |v| v["state"] == "succeeded" || v["state"] == "lost");
    assert_eq!(v["state"], "succeeded", "{v:#}");
    assert_eq!(attempts(&v).len(), 1, "the job kept running under the restarted agent: {v:#}");
    assert_eq!(c.ok(&["logs", &id.to_string()]), "finished\n");
}
