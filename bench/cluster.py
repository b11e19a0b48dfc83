#!/usr/bin/env python3
"""Cluster mode under load: a real `ravel controller` (HTTPS, self-signed certificate, SQLite)
and N simulated agents in this one process, each with its own persistent HTTPS connection
speaking the agent protocol (`POST /v1/agent/sync`) with 8 fake GPUs. Once every node is
`ready`, 4 submitter threads post the jobs (one GPU each, as a user token); each agent "starts"
the attempts it is ordered to at once and reports them ended `--job-ms` after they started, in
a sync after the one that reported them running. Prints one JSON object.

    bench/cluster.py                      # 200 agents x 8 GPUs, 10,000 jobs
    bench/cluster.py --quick              # 20 agents, 500 jobs (development)
    bench/cluster.py --backlog            # every job queued first, then all nodes at once
    bench/cluster.py --bin target/debug/ravel --agents 200 --jobs 10000 --sync-ms 2000 --job-ms 0

An agent reports what is new (a start, an end) with wait_ms=--report-wait-ms (default 0, as
the real agent's "urgent" sync does: the controller holds a sync that reports only starts) and
otherwise long-polls with wait_ms=--sync-ms (shortened to the next fake job end when --job-ms
> 0). Syncs are timed in two kinds: "report" (it reported something new) and "poll" (it
reported nothing new: the controller may hold it until it has an order for the node).

Measured from the first submit (with --backlog: the first undrain) until the last job's end is
acknowledged: placements (launch orders received by the agents) per second overall and in the
best 1 s window, jobs per second, latency of submits and syncs, the controller's CPU
(/proc/PID/stat) and peak RSS (VmHWM), and this client's own CPU (it shares the machine with the
controller). The agents run on one asyncio event loop by default (`--client threads`: a thread
and an http.client connection per agent, which costs the client more CPU).
"""
import argparse, http.client, json, os, shutil, signal, socket, ssl, subprocess, sys, tempfile
import threading, time

ADMIN = "bench-admin-token-0123456789abcdef"
TARGET_P99_MS = 50.0
TARGET_PLACEMENTS_PER_S = 1000.0
GPU_MIB = 81920
TICK = os.sysconf("SC_CLK_TCK")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(p / 100.0 * (len(xs) - 1)))))
    return round(xs[k], 2)


def lat(xs):
    return {"n": len(xs), "p50": pct(xs, 50), "p99": pct(xs, 99), "max": round(max(xs), 2) if xs else None}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def proc_cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)


def proc_status_mib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def die_with_parent():
    """In the controller's process before exec: SIGTERM when this script dies, even by SIGKILL."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def client_cpu_s():
    t = os.times()
    return t.user + t.system


class Api:
    """One persistent HTTPS connection with a bearer token; reconnects after an error."""

    def __init__(self, port, ctx, token, timeout):
        self.port, self.ctx, self.timeout = port, ctx, timeout
        self.headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
        self.conn = None

    def call(self, method, path, body=None):
        """(status, parsed JSON or raw bytes). Raises OSError/HTTPException on a transport error."""
        if self.conn is None:
            self.conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=self.timeout)
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        try:
            self.conn.request(method, path, data, self.headers)
            resp = self.conn.getresponse()
            raw = resp.read()
        except Exception:
            self.close()
            raise
        if resp.getheader("Connection", "").lower() == "close":
            self.close()
        try:
            return resp.status, json.loads(raw) if raw else None
        except ValueError:
            return resp.status, raw

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
            self.conn = None


class Agent:
    """One simulated node: what it reports and what it does with the answers. The transport
    (a thread with http.client, or a coroutine on one event loop) is the runner's."""

    def __init__(self, i, bench):
        self.b = bench
        self.node = f"sim{i}"
        self.epoch = 0
        # (job, attempt) -> {"sup": [pid, start], "t0": when its launch order came, "ran": a sync
        #                    reported it running, "end": AttemptEnd or None, "end_sent": bool}
        self.att = {}
        self.pid = 100000 + i * 100000
        self.gpus = [{"index": g, "name": "Fake H100 80GB", "uuid": None, "memory_total_mib": GPU_MIB,
                      "memory_used_mib": 0, "utilization_pct": 0, "foreign_used_mib": 0, "foreign_processes": []}
                     for g in range(8)]
        self.report_lat = []   # (t_start, ms)
        self.poll_lat = []     # (t_start, ms)
        self.launches = []     # time each launch order was received
        self.acked_ok = 0
        self.last_ack = 0.0
        self.errors = {}
        self.stale = 0

    def err(self, what):
        self.errors[what] = self.errors.get(what, 0) + 1
        b = self.b
        with b.lock:
            if len(b.error_samples) < 20:
                b.error_samples.append(f"{self.node}: {what}")

    def request(self):
        """The next sync's body (JSON bytes), and whether it reports anything new."""
        job_s = self.b.a.job_ms / 1000
        now = time.monotonic()
        new = False
        attempts = []
        next_end = None
        for (job, n), a in self.att.items():
            # The job started when its order came; it ends job_ms later, but is reported
            # ended only after a sync reported it running.
            if a["end"] is None and a["ran"] and now >= a["t0"] + job_s:
                a["end"] = {"exit_code": 0, "started_at": a["started_ms"]}
            if a["end"] is None and a["ran"]:
                due = a["t0"] + job_s
                next_end = due if next_end is None else min(next_end, due)
            if not a["ran"] or (a["end"] is not None and not a["end_sent"]):
                new = True
            o = {"job": job, "attempt": n, "supervisor": a["sup"]}
            if a["end"] is not None:
                o["ended"] = a["end"]
            attempts.append(o)
        if new:
            wait = self.b.a.report_wait_ms
        else:
            wait = self.b.a.sync_ms
            if next_end is not None:
                wait = max(1, min(wait, int((next_end - now) * 1000) + 1))
        req = {"name": self.node, "epoch": self.epoch, "version": "bench-sim", "cpus": 32,
               "gpus": self.gpus, "attempts": attempts, "wait_ms": wait}
        return json.dumps(req).encode(), new

    def answer(self, new, t0, t1, status, body):
        """Takes in a sync's answer. Returns seconds to pause before the next sync."""
        (self.report_lat if new else self.poll_lat).append((t0, (t1 - t0) * 1000))
        if status == 409 and isinstance(body, dict) and body.get("code") == "stale_epoch":
            self.stale += 1
            self.err(f"409 stale_epoch: {body.get('error')}")
            self.epoch, self.att = 0, {}
            return 0
        if status != 200 or not isinstance(body, dict):
            self.err(f"HTTP {status}: {str(body)[:200]}")
            return 0.5
        self.epoch = body["epoch"]
        now = time.monotonic()
        for a in self.att.values():
            a["ran"] = True
            if a["end"] is not None:
                a["end_sent"] = True
        for job, n in body.get("acked", []):
            a = self.att.pop((job, n), None)
            if a is not None and a["end"] is not None and a["end"].get("exit_code") == 0:
                self.acked_ok += 1
                self.last_ack = now
        wanted = set()
        for d in body.get("desired", []):
            key = (d["job"], d["attempt"])
            wanted.add(key)
            a = self.att.get(key)
            if a is None and d.get("launch") is not None:
                self.pid += 1
                self.att[key] = {"sup": [self.pid, int(now * 100)], "t0": now, "ran": False, "end": None,
                                 "end_sent": False, "started_ms": int(time.time() * 1000)}
                self.launches.append(now)
            elif a is not None and d.get("kill") and a["end"] is None:
                a["end"] = {"signal": 15, "canceled": True, "started_at": a["started_ms"]}
        # Not wanted any more: killed and forgotten (an end not yet acknowledged is kept).
        for key in [k for k, a in self.att.items() if k not in wanted and a["end"] is None]:
            del self.att[key]
        return 0


def run_thread(agent, bench):
    """A thread per agent, one persistent http.client connection each."""
    api = Api(bench.port, bench.ctx, bench.agent_token, bench.a.sync_ms / 1000 + 30)
    while not bench.stop.is_set():
        data, new = agent.request()
        t0 = time.perf_counter()
        try:
            status, body = api.call("POST", "/v1/agent/sync", data)
        except Exception as e:
            if bench.stop.is_set():
                return
            agent.err(f"transport: {type(e).__name__}: {e}")
            time.sleep(0.2)
            continue
        pause = agent.answer(new, t0, time.perf_counter(), status, body)
        if pause:
            time.sleep(pause)
    api.close()


async def run_async(agent, bench):
    """A coroutine per agent on one event loop; HTTP/1.1 written and read by hand."""
    import asyncio
    head = (f"POST /v1/agent/sync HTTP/1.1\r\nHost: 127.0.0.1:{bench.port}\r\n"
            f"Authorization: Bearer {bench.agent_token}\r\nContent-Type: application/json\r\n").encode()
    reader = writer = None
    while not bench.stop.is_set():
        data, new = agent.request()
        t0 = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", bench.port, ssl=bench.ctx,
                                                               server_hostname="127.0.0.1")
            writer.write(head + b"Content-Length: %d\r\n\r\n" % len(data) + data)
            status_line = await reader.readline()
            if not status_line:
                raise ConnectionError("connection closed")
            status = int(status_line.split()[1])
            length, chunked, close = 0, False, False
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                k, _, v = line.decode("latin-1").partition(":")
                k, v = k.strip().lower(), v.strip().lower()
                if k == "content-length":
                    length = int(v)
                elif k == "transfer-encoding" and "chunked" in v:
                    chunked = True
                elif k == "connection" and v == "close":
                    close = True
            if chunked:
                raw = b""
                while True:
                    size = int((await reader.readline()).split(b";")[0], 16)
                    chunk = await reader.readexactly(size + 2)
                    if size == 0:
                        break
                    raw += chunk[:-2]
            else:
                raw = await reader.readexactly(length)
            if close:
                writer.close()
                reader = writer = None
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw
        except Exception as e:
            if writer is not None:
                writer.close()
            reader = writer = None
            if bench.stop.is_set():
                return
            agent.err(f"transport: {type(e).__name__}: {e}")
            await asyncio.sleep(0.2)
            continue
        pause = agent.answer(new, t0, time.perf_counter(), status, body)
        if pause:
            await asyncio.sleep(pause)
    if writer is not None:
        writer.close()


def start_agents(agents, bench):
    if bench.a.client == "threads":
        threading.stack_size(256 * 1024)
        for ag in agents:
            threading.Thread(target=run_thread, args=(ag, bench), name=ag.node, daemon=True).start()
        threading.stack_size(0)
        return
    import asyncio

    def loop():
        async def all_agents():
            tasks = [asyncio.ensure_future(run_async(ag, bench)) for ag in agents]
            while not bench.stop.is_set():
                await asyncio.sleep(0.1)
            for t in tasks:
                t.cancel()
        asyncio.run(all_agents())
    threading.Thread(target=loop, name="agents", daemon=True).start()


class Bench:
    def __init__(self, a):
        self.a = a
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.error_samples = []
        self.proc = None
        self.tmp = tempfile.mkdtemp(prefix="ravel-cluster-bench-")
        self.home = os.path.join(self.tmp, "controller")
        self.log_path = os.path.join(self.tmp, "controller.log")

    def start_controller(self):
        self.port = free_port()
        env = dict(os.environ, RAVEL_ADMIN_TOKEN=ADMIN)
        env.pop("RAVEL_HOME", None)
        self.proc = subprocess.Popen(
            [self.a.bin, "controller", "--listen", f"127.0.0.1:{self.port}", "--tls-self-signed",
             "--home", self.home, "--node-timeout", "30s"],
            env=env, stdout=subprocess.PIPE, stderr=open(self.log_path, "ab"), text=True,
            preexec_fn=die_with_parent)
        fingerprint = None
        deadline = time.time() + 30
        for line in self.proc.stdout:
            if "fingerprint SHA256 " in line:
                fingerprint = line.split("fingerprint SHA256 ", 1)[1].strip()
                break
            if time.time() > deadline:
                break
        if fingerprint is None:
            raise RuntimeError("the controller printed no fingerprint: " + self.log_tail(20))
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        self.fingerprint = fingerprint
        self.ctx = ssl.create_default_context(cafile=os.path.join(self.home, "tls", "cert.pem"))
        self.admin = Api(self.port, self.ctx, ADMIN, 60)

    def log_tail(self, n):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def token(self, role, name):
        status, body = self.admin.call("POST", "/v1/tokens", {"role": role, "name": name})
        if status != 200:
            raise RuntimeError(f"POST /v1/tokens ({role}): HTTP {status}: {body}")
        return body["token"]

    def status(self):
        s, body = self.admin.call("GET", "/v1/status")
        return body if s == 200 else {}

    def ready_nodes(self):
        s, body = self.admin.call("GET", "/v1/nodes")
        if s != 200:
            return 0
        return sum(1 for n in body["nodes"] if n["state"] == "ready")

    def submitter(self, ids, out, user_token):
        api = Api(self.port, self.ctx, user_token, 60)
        spec = {"command": ["true"], "cwd": "/", "gpus": 1,
                "env": [["PATH", "/usr/local/bin:/usr/bin:/bin"], ["HOME", "/home/bench"], ["USER", "bench"],
                        ["LANG", "C.UTF-8"]]}
        body = json.dumps({"spec": spec}).encode()
        for _ in ids:
            if self.stop.is_set():
                break
            t0 = time.perf_counter()
            try:
                s, resp = api.call("POST", "/v1/jobs", body)
            except Exception as e:
                out["errors"].append(f"transport: {e}")
                time.sleep(0.1)
                continue
            ms = (time.perf_counter() - t0) * 1000
            if s == 200:
                out["lat"].append((t0, ms))
            else:
                out["errors"].append(f"HTTP {s}: {str(resp)[:200]}")
        out["end"] = time.perf_counter()
        api.close()

    def node_action(self, names, action, result=None):
        """POST /v1/nodes/NAME/ACTION for every node, from 4 connections."""
        t0 = time.perf_counter()
        failed = []

        def part(chunk):
            api = Api(self.port, self.ctx, ADMIN, 60)
            for name in chunk:
                try:
                    s, body = api.call("POST", f"/v1/nodes/{name}/{action}")
                except Exception as e:
                    s, body = None, e
                if s != 200:
                    failed.append(f"{name}: HTTP {s}: {str(body)[:200]}")
            api.close()
        ts = [threading.Thread(target=part, args=(names[k::4],)) for k in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if failed:
            raise RuntimeError(f"{action} failed for {len(failed)} nodes: {failed[:3]}")
        if result is not None:
            result[f"{action}_all_s"] = round(time.perf_counter() - t0, 3)

    def run(self):
        a = self.a
        result = {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "bin": os.path.abspath(a.bin),
                  "bin_kind": next((k for k in ("release", "debug") if f"/{k}/" in a.bin), "unknown"),
                  "bin_mtime": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(os.stat(a.bin).st_mtime)),
                  "agents": a.agents, "gpus_per_agent": 8, "jobs": a.jobs, "sync_ms": a.sync_ms,
                  "report_wait_ms": a.report_wait_ms, "job_ms": a.job_ms, "client": a.client, "backlog": a.backlog,
                  "loadavg_start": round(os.getloadavg()[0], 2)}
        self.start_controller()
        pid = self.proc.pid
        # One token for every node: an agent token named "agent" may sync as any node (one named
        # after a node syncs as that node only).
        self.agent_token = self.token("agent", "agent")
        user_token = self.token("user", "bench")

        t_reg = time.perf_counter()
        agents = [Agent(i, self) for i in range(a.agents)]
        start_agents(agents, self)
        while self.ready_nodes() < a.agents:
            if time.perf_counter() - t_reg > a.register_s:
                raise RuntimeError(f"only {self.ready_nodes()} of {a.agents} nodes ready after {a.register_s:g} s; agents' errors: "
                                   f"{self.error_samples[:5]}; controller log: " + self.log_tail(20))
            time.sleep(0.2)
        result["register_all_s"] = round(time.perf_counter() - t_reg, 2)
        log(f"{a.agents} nodes ready in {result['register_all_s']} s")

        # Idle: every agent long-polling, nothing to do.
        time.sleep(1.0)
        c0, k0, i0 = proc_cpu_s(pid), client_cpu_s(), time.perf_counter()
        n0 = sum(len(ag.poll_lat) + len(ag.report_lat) for ag in agents)
        time.sleep(a.idle_s)
        c1, k1, i1 = proc_cpu_s(pid), client_cpu_s(), time.perf_counter()
        n1 = sum(len(ag.poll_lat) + len(ag.report_lat) for ag in agents)
        result["idle"] = {"seconds": round(i1 - i0, 2), "syncs_per_s": round((n1 - n0) / (i1 - i0), 1),
                          "controller_cpu_pct": round((c1 - c0) / (i1 - i0) * 100, 1),
                          "client_cpu_pct": round((k1 - k0) / (i1 - i0) * 100, 1)}

        # Load.
        outs = [{"lat": [], "errors": [], "end": None} for _ in range(4)]
        chunks = [range(k, a.jobs, 4) for k in range(4)]
        subs = [threading.Thread(target=self.submitter, args=(chunks[k], outs[k], user_token), daemon=True)
                for k in range(4)]
        names = [ag.node for ag in agents]
        undrain = None
        if a.backlog:
            # Every node cordoned, every job queued behind them, then all nodes back at once: the
            # placements are then not bounded by the submit rate.
            self.node_action(names, "cordon")
            t_sub0 = time.perf_counter()
            for s in subs:
                s.start()
            for s in subs:
                s.join()
            deadline = time.monotonic() + 60
            while (self.status().get("queued") or 0) < a.jobs and time.monotonic() < deadline:
                time.sleep(0.1)
            result["backlog_queued"] = self.status().get("queued")
            time.sleep(1.0)
            cpu0, kcpu0 = proc_cpu_s(pid), client_cpu_s()
            t_first = time.perf_counter()
            m_first = time.monotonic()
            undrain = threading.Thread(target=self.node_action, args=(names, "undrain", result), daemon=True)
            undrain.start()
        else:
            cpu0, kcpu0 = proc_cpu_s(pid), client_cpu_s()
            t_first = t_sub0 = time.perf_counter()
            m_first = time.monotonic()
            for s in subs:
                s.start()
        last_progress, last_done, stalled = time.monotonic(), -1, False
        queued_max, next_status = 0, 0.0
        while True:
            time.sleep(0.1)
            done = sum(ag.acked_ok for ag in agents)
            if time.monotonic() >= next_status:
                # The controller's queue, twice a second (one more API call among many).
                st = self.status()
                queued_max = max(queued_max, st.get("queued") or 0)
                next_status = time.monotonic() + 0.5
                # Nothing left (some jobs may have ended otherwise than acknowledged here,
                # e.g. lost with their node).
                if not any(s.is_alive() for s in subs) and st.get("queued") == 0 and st.get("running") == 0:
                    break
            if done >= a.jobs:
                break
            if done != last_done:
                last_done, last_progress = done, time.monotonic()
            elif time.monotonic() - last_progress > a.stall_s:
                stalled = True
                break
            if int(time.monotonic() * 10) % 50 == 0:
                log(f"  {done}/{a.jobs} done, {sum(len(ag.launches) for ag in agents)} placed")
        m_end = max([ag.last_ack for ag in agents] + [m_first]) if not stalled else time.monotonic()
        t_end = time.perf_counter()
        cpu1, kcpu1 = proc_cpu_s(pid), client_cpu_s()
        wall = m_end - m_first
        for s in subs:
            s.join(timeout=10)
        if undrain is not None:
            undrain.join(timeout=10)
        ends = [o["end"] for o in outs if o["end"] is not None]
        t_submitted = max(ends) if len(ends) == 4 else None

        launches = sorted(t for ag in agents for t in ag.launches if t >= m_first)
        peak, j = 0, 0
        for i in range(len(launches)):
            while launches[i] - launches[j] > 1.0:
                j += 1
            peak = max(peak, i - j + 1)
        placed = len(launches)
        done = sum(ag.acked_ok for ag in agents)
        sub_lat = [ms for o in outs for (_, ms) in o["lat"]]
        rep_lat = [ms for ag in agents for (t, ms) in ag.report_lat if t >= t_first and t <= t_end]
        poll_lat = [ms for ag in agents for (t, ms) in ag.poll_lat if t >= t_first and t <= t_end]
        st = self.status()
        result.update({
            "seconds": round(wall, 3),
            "submit_all_s": round((t_submitted or t_end) - t_sub0, 3),
            "submit_per_s": round(a.jobs / ((t_submitted or t_end) - t_sub0), 1),
            "queued_max": queued_max,
            "placed": placed,
            "succeeded_acked": done,
            "placements_per_s": round(placed / wall, 1) if wall > 0 else None,
            "placements_peak_1s": peak,
            "jobs_per_s": round(done / wall, 1) if wall > 0 else None,
            "submit_ms": lat(sub_lat),
            "sync_report_ms": lat(rep_lat),
            "sync_poll_ms": lat(poll_lat),
            # Where the slow answers are: the p99 of the report syncs sent in each second of the run.
            "sync_report_p99_by_second": [
                pct([ms for ag in agents for (t, ms) in ag.report_lat if t_first + k <= t < t_first + k + 1], 99)
                for k in range(int(t_end - t_first) + 1)
            ],
            "syncs_per_s": round((len(rep_lat) + len(poll_lat)) / (t_end - t_first), 1),
            "controller_cpu_s": round(cpu1 - cpu0, 2),
            "controller_cpu_pct": round((cpu1 - cpu0) / wall * 100, 1) if wall > 0 else None,
            "controller_cpu_ms_per_job": round((cpu1 - cpu0) * 1000 / max(1, done), 3),
            "controller_peak_rss_mib": proc_status_mib(pid, "VmHWM"),
            "controller_rss_mib": proc_status_mib(pid, "VmRSS"),
            "client_cpu_s": round(kcpu1 - kcpu0, 2),
            "client_cpu_pct": round((kcpu1 - kcpu0) / wall * 100, 1) if wall > 0 else None,
            "status_after": {"queued": st.get("queued"), "running": st.get("running")},
            "stalled": stalled,
            "loadavg_end": round(os.getloadavg()[0], 2),
        })
        errors = {}
        for ag in agents:
            for k, v in ag.errors.items():
                key = ":".join(k.split(":")[:2]) if k.startswith("transport") else k.split(":")[0]
                errors[key] = errors.get(key, 0) + v
        sub_errors = [e for o in outs for e in o["errors"]]
        result["errors"] = {"sync": errors, "stale_epoch": sum(ag.stale for ag in agents),
                            "submit": len(sub_errors), "samples": (self.error_samples + sub_errors)[:10]}
        # Every job, as the controller recorded it.
        s, body = self.admin.call("GET", "/v1/jobs?all=true")
        if s == 200:
            states = {}
            for job in body.get("jobs", []):
                states[job["state"]] = states.get(job["state"], 0) + 1
            result["job_states"] = states
        p99s = [x for x in (result["submit_ms"]["p99"], result["sync_report_ms"]["p99"]) if x is not None]
        result["targets"] = {
            "api_p99_ms": {"target": f"< {TARGET_P99_MS:g}", "submit": result["submit_ms"]["p99"],
                           "sync_report": result["sync_report_ms"]["p99"],
                           "met": bool(p99s) and max(p99s) < TARGET_P99_MS},
            "placements_per_s": {"target": f">= {TARGET_PLACEMENTS_PER_S:g} (SQLite)",
                                 "got": result["placements_per_s"], "peak_1s": peak,
                                 "met": (result["placements_per_s"] or 0) >= TARGET_PLACEMENTS_PER_S},
        }
        warn = [l for l in self.log_tail(400).splitlines() if " WARN " in l or " ERROR " in l]
        result["controller_warnings"] = len(warn)
        result["controller_warning_samples"] = warn[:5]
        if stalled:
            result["controller_log_tail"] = self.log_tail(30).splitlines()
        return result

    def close(self, keep):
        self.stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if keep:
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    release = os.path.join(here, "..", "target", "release", "ravel")
    default_bin = release if os.path.exists(release) else os.path.join(here, "..", "target", "debug", "ravel")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=default_bin, help="the ravel binary (default: target/release/ravel if built, "
                                                       "else target/debug/ravel)")
    ap.add_argument("--agents", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=10000)
    ap.add_argument("--sync-ms", type=int, default=2000, help="wait_ms of a sync that reports nothing new")
    ap.add_argument("--report-wait-ms", type=int, default=0, help="wait_ms of a sync that reports a start or an end")
    ap.add_argument("--job-ms", type=int, default=0, help="how long a fake job runs from its launch order (its end is reported in a sync after the one "
                         "that reported it running)")
    ap.add_argument("--idle-s", type=float, default=4.0, help="idle measurement before the submits")
    ap.add_argument("--register-s", type=float, default=120.0, help="give up if the nodes are not all ready by then")
    ap.add_argument("--stall-s", type=float, default=60.0, help="give up after this long without a job ending")
    ap.add_argument("--client", choices=["threads", "asyncio"], default="asyncio",
                    help="one event loop for all agents (default: the cheaper client), or a thread per agent (http.client)")
    ap.add_argument("--backlog", action="store_true",
                    help="cordon every node, queue every job, then undrain them all: placements from a full queue, "
                         "timed from the first undrain (the submits are timed before, against the growing queue)")
    ap.add_argument("--quick", action="store_true", help="20 agents, 500 jobs")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (controller home and log)")
    a = ap.parse_args()
    if a.quick:
        a.agents, a.jobs = 20, 500
    a.bin = os.path.abspath(a.bin)
    # A SIGTERM ends the run like Ctrl-C does: the controller is stopped and the temp dir removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    b = Bench(a)
    try:
        result = b.run()
    finally:
        b.close(a.keep)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
