#!/usr/bin/env python3
"""Does a long history or a long queue slow the common path? (issue 8: "the same cost with
100,000 queued jobs and 1,000,000 finished jobs in the store").

Three phases against one daemon in a temp RAVEL_HOME, one GPU, 8 CPU slots:
  empty     nothing in the store;
  history   + N finished jobs (written straight into the database while the daemon is
            stopped: running a million jobs through it would take the whole benchmark);
  queued    + M waiting GPU jobs behind a job that holds the only GPU.
In each: `ravel run -- true` round trip, submit -> the job's first instruction (CPU jobs, which
run beside the waiting GPU jobs), the daemon's CPU per job and full passes during those, `ravel
queue`, and the daemon's RSS. Prints one JSON object.

    bench/history.py --ravel target/release/ravel --finished 1000000 --queued 100000
"""
import argparse, json, os, sqlite3, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from local import Daemon, UnixHTTP, api, p50_p99, pct, rss_mib, round_trips, submit_to_start  # noqa: E402
from cpu import stat  # noqa: E402


def add_history(db, n):
    """Writes n succeeded jobs, as the daemon records them, in batches."""
    spec = json.dumps({"command": ["true"], "name": None, "cwd": "/tmp", "env": [["PATH", "/usr/bin:/bin"]],
                       "gpus": 0, "cpus": 1, "priority": 0, "user": "bench"})
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    first = (conn.execute("SELECT coalesce(max(id), 0) FROM jobs").fetchone()[0] or 0) + 1
    now = int(time.time() * 1000) - n
    batch = 50_000
    for start in range(0, n, batch):
        rows = [(first + i, spec, now + i, now + i, now + i + 1)
                for i in range(start, min(n, start + batch))]
        conn.executemany(
            "INSERT INTO jobs (id, spec, state, priority, submitted_at, started_at, finished_at, attempt, node, "
            "exit_code, user, label) VALUES (?, ?, 'succeeded', 0, ?, ?, ?, 1, 'bench', 0, 'bench', 'true')", rows)
        conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    # Written with synchronous=OFF: flush it now, or the daemon's first checkpoint (its fsync)
    # would pay for writing back the whole history, a setup cost and not the daemon's.
    os.sync()


def daemon_cpu_ms(pid):
    """The daemon's CPU so far (all threads, user + system), in ms."""
    return stat(pid)[2] * 1000 / os.sysconf("SC_CLK_TCK")


def passes(home):
    """Full scheduling passes so far (the pass histogram's count in /metrics)."""
    c = UnixHTTP(os.path.join(home, "ravel.sock"))
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    return int(float(next(l for l in text.splitlines() if l.startswith("ravel_scheduler_pass_seconds_count")).split()[-1]))


def measure(d, samples):
    time.sleep(0.5)
    out = {"rss_mib": rss_mib(d.pid)}
    cpu0, passes0, t0 = daemon_cpu_ms(d.pid), passes(d.home), time.time()
    rt = round_trips(d, samples)
    out["run_round_trip_ms"] = p50_p99(rt)
    st = submit_to_start(d, samples)
    out["submit_to_start_ms"] = p50_p99(st)
    # What each of those 2 x samples jobs cost the daemon, and the full passes it made meanwhile:
    # with a long queue waiting, a job that starts at once should need no pass.
    out["daemon_cpu_ms_per_job"] = round((daemon_cpu_ms(d.pid) - cpu0) / (2 * samples), 2)
    out["passes"] = passes(d.home) - passes0
    out["seconds"] = round(time.time() - t0, 1)
    qs = []
    for _ in range(10):
        t0 = time.perf_counter()
        d.run("queue")
        qs.append((time.perf_counter() - t0) * 1000)
    out["queue_cmd_ms"] = {"p50": pct(qs, 50), "max": round(max(qs), 2)}
    return out


def restart(d):
    d.run("daemon", "stop")
    d.run("daemon", "start", "--cpus", "8")
    d.pid = api(d.home, "GET", "/v1/status")["pid"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ravel", default="target/release/ravel")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--finished", type=int, default=1_000_000)
    ap.add_argument("--queued", type=int, default=100_000)
    a = ap.parse_args()
    out = {"ravel": a.ravel, "finished": a.finished, "queued": a.queued,
           "machine": {"cores": os.cpu_count(), "loadavg_start": os.getloadavg()[0]}}
    d = Daemon(a.ravel, gpus=1, cpus=8)
    try:
        out["empty"] = measure(d, a.samples)
        d.run("daemon", "stop")
        t0 = time.time()
        add_history(os.path.join(d.home, "ravel.db"), a.finished)
        out["history_written_s"] = round(time.time() - t0, 1)
        restart(d)
        out["history"] = measure(d, a.samples)
        api(d.home, "POST", "/v1/jobs", d.spec(["sleep", "3600"], gpus=1))
        for start in range(0, a.queued, 10_000):
            body = d.spec(["true"], gpus=1)
            body["array"] = {"indices": list(range(start, min(a.queued, start + 10_000)))}
            api(d.home, "POST", "/v1/jobs", body)
        out["history_and_queued"] = measure(d, a.samples)
    finally:
        d.stop()
    for k in ("history", "history_and_queued"):
        out[k]["round_trip_p50_vs_empty"] = round(out[k]["run_round_trip_ms"]["p50"] /
                                                 out["empty"]["run_round_trip_ms"]["p50"], 2)
    out["machine"]["loadavg_end"] = os.getloadavg()[0]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
