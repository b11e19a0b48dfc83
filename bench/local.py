#!/usr/bin/env python3
"""Local benchmark of Ravel: round trip, submit->start, drain, daemon RSS. Prints one JSON object.

Usage: bench/local.py [--ravel PATH] [--samples N] [--queued N] [--deep N] [--drain N]
Each figure drives the real CLI (a fresh process per call) against a daemon in a temp RAVEL_HOME
with fake GPUs. Filling the queue uses the API directly (it is setup, not a measured figure).
"""
import argparse, http.client, json, os, shutil, socket, statistics, subprocess, sys, tempfile, time


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=60)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def api(home, method, path, body=None):
    c = UnixHTTP(os.path.join(home, "ravel.sock"))
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"content-type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status >= 300:
        raise RuntimeError(f"{method} {path}: {r.status} {data[:200]!r}")
    return json.loads(data) if data else None


def pct(xs, p):
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(p / 100 * len(xs)))], 2)


def p50_p99(xs):
    return {"p50": pct(xs, 50), "p99": pct(xs, 99)}


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)


class Daemon:
    """A daemon with fake GPUs in a temp home, or in `home` (made, and left at stop for the caller
    to delete); `start_args` go to `ravel daemon start`."""

    def __init__(self, ravel, gpus, cpus, *start_args, home=None):
        self.ravel, self.keep = ravel, home is not None
        if home is not None:
            os.makedirs(home)
        self.home = home if home is not None else tempfile.mkdtemp(prefix="ravel-bench-")
        self.env = dict(os.environ, RAVEL_HOME=self.home, RAVEL_FAKE_GPUS=str(gpus))
        self.env.pop("RAVEL_NO_GPU", None)
        self.env.pop("RAVEL_DB_PATH", None)
        self.run("daemon", "start", "--cpus", str(cpus), *start_args)
        self.pid = api(self.home, "GET", "/v1/status")["pid"]

    def run(self, *args):
        return subprocess.run([self.ravel, *args], env=self.env, check=True, capture_output=True, text=True).stdout

    def spec(self, cmd, gpus=0, cpus=1):
        return {"spec": {"command": cmd, "cwd": self.home, "env": [["PATH", os.environ.get("PATH", "/usr/bin:/bin")]],
                         "gpus": gpus, "cpus": cpus}}

    def fill(self, n, gpus):
        """Queues n jobs through the API, a few connections at a time."""
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda _: api(self.home, "POST", "/v1/jobs", self.spec(["true"], gpus=gpus)), range(n)))

    def stop(self):
        subprocess.run([self.ravel, "daemon", "stop", "--kill-jobs"], env=self.env, capture_output=True)
        if not self.keep:
            shutil.rmtree(self.home, ignore_errors=True)


def round_trips(d, n):
    xs = []
    for _ in range(n):
        t0 = time.perf_counter()
        d.run("run", "--", "true")
        xs.append((time.perf_counter() - t0) * 1000)
    return xs


def submit_to_start(d, n):
    lat = []
    stamp_dir = tempfile.mkdtemp(dir=d.home)
    for i in range(n):
        stamp = os.path.join(stamp_dir, f"s{i}")
        t0 = time.time()
        d.run("run", "--", "sh", "-c", f"date +%s.%N > {stamp}")
        while not os.path.exists(stamp) or os.path.getsize(stamp) == 0:
            time.sleep(0.0002)
            if time.time() - t0 > 30:
                raise RuntimeError("job did not start")
        lat.append((float(open(stamp).read()) - t0) * 1000)
    return lat


def queued_figures(d, a):
    """The figures of a daemon with a long queue: its size and RSS, `ravel run` round trip, submit
    -> start of CPU jobs (they start beside the waiting GPU jobs), `ravel queue`, and `ravel
    queue --all --json` (every job ever, streamed by the daemon a batch at a time)."""
    time.sleep(0.5)
    out = {"queued": api(d.home, "GET", "/v1/status")["queued"], "rss_queued_mib": rss_mib(d.pid)}
    rtq = round_trips(d, a.samples)
    out["run_round_trip_queued_ms"] = p50_p99(rtq)
    stq = submit_to_start(d, a.samples)
    out["submit_to_start_queued_ms"] = p50_p99(stq)
    if not a.skip_queue:
        t0 = time.perf_counter()
        d.run("queue")
        out["queue_cmd_queued_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        t0 = time.perf_counter()
        listed = subprocess.run([d.ravel, "queue", "--all", "--json"], env=d.env, check=True,
                                stdout=subprocess.PIPE).stdout
        out["queue_all_json_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        out["queue_all_json_jobs"] = len(json.loads(listed))
        out["rss_after_queue_all_mib"] = rss_mib(d.pid)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ravel", default=shutil.which("ravel") or "target/release/ravel")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--queued", type=int, default=10000)
    ap.add_argument("--drain", type=int, default=1000)
    ap.add_argument("--deep", type=int, default=0,
                    help="after the figures at --queued, fill the queue up to this many and measure again ('deep')")
    ap.add_argument("--skip-queue", action="store_true", help="do not time `ravel queue` (it lists every queued job)")
    a = ap.parse_args()
    out = {"ravel": a.ravel, "machine": {"cores": os.cpu_count(), "loadavg_start": os.getloadavg()[0]}}

    # 1. Empty queue: round trip, submit -> first instruction, idle RSS.
    d = Daemon(a.ravel, gpus=1, cpus=8)
    try:
        time.sleep(0.5)
        out["rss_idle_mib"] = rss_mib(d.pid)
        rt = round_trips(d, a.samples)
        out["run_round_trip_ms"] = p50_p99(rt)
        st = submit_to_start(d, a.samples)
        out["submit_to_start_ms"] = p50_p99(st)

        # 2. With N queued: a holder keeps the only GPU; N GPU jobs wait behind it.
        api(d.home, "POST", "/v1/jobs", d.spec(["sleep", "3600"], gpus=1))
        t0 = time.time()
        d.fill(a.queued, gpus=1)
        out["fill_jobs_per_s"] = round(a.queued / (time.time() - t0), 1)
        out.update(queued_figures(d, a))
        # 2b. The same with the queue filled up to --deep.
        if a.deep > a.queued:
            d.fill(a.deep - a.queued, gpus=1)
            out["deep"] = queued_figures(d, a)
    finally:
        d.stop()

    # 3. Drain: N `true` jobs queued behind a job holding all 8 slots, then released.
    d = Daemon(a.ravel, gpus=0, cpus=8)
    try:
        holder = api(d.home, "POST", "/v1/jobs", d.spec(["sleep", "3600"], cpus=8))["id"]
        d.fill(a.drain, gpus=0)
        t0 = time.perf_counter()
        d.run("cancel", str(holder))
        d.run("wait", "--all")
        secs = time.perf_counter() - t0
        out["drain"] = {"jobs": a.drain, "cpus": 8, "seconds": round(secs, 3), "jobs_per_s": round(a.drain / secs, 1)}
    finally:
        d.stop()
    out["machine"]["loadavg_end"] = os.getloadavg()[0]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
