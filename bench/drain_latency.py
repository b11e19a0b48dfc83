#!/usr/bin/env python3
"""Each submit's latency during a drain, the way the peer harness drains: N `true` jobs submitted
one after another, one process per submit through /bin/sh, then a wait for all. The harness
reports only the drain's total; this shows where it goes: a system whose submits are fast alone
but slow down (or stall now and then) while its earlier jobs launch and end drains slower.

Rounds alternate task-spooler (when installed) and Ravel, each with a fresh home; Ravel's daemon
gets 30 jobs first, as the harness's dispatch phase gives it. Prints one JSON object: for each
system and round, the submits' p10 / p50 / p90 / p99 / max / mean in ms and the drain's jobs/s.

Usage: bench/drain_latency.py --ravel PATH [--rounds 3] [--jobs 300] [--dir DIR]
(with --dir the homes go there and are left for the caller to delete: deleting run dirs slows
every file created in the minutes after, see bench/README.md)
"""
import argparse, contextlib, json, os, shutil, statistics, subprocess, tempfile, time

TSP_WAIT = "while tsp | grep -qE ' (running|queued|allocating) '; do sleep 0.01; done"


@contextlib.contextmanager
def homes(prefix, keep_in):
    """A temp dir for a run's homes. With `keep_in` (a script's --dir) it is made there and left
    for the caller to delete: deleting run dirs slows every file created in the minutes after
    (bench/README.md), so a caller running benchmarks back to back deletes them later; without
    it, it is removed when the run ends."""
    tmp = tempfile.mkdtemp(prefix=prefix, dir=keep_in)
    try:
        yield tmp
    finally:
        if not keep_in:
            shutil.rmtree(tmp, ignore_errors=True)


def drain(submit, wait, env, jobs):
    took = []
    start = time.perf_counter()
    for _ in range(jobs):
        t = time.perf_counter()
        subprocess.run(submit, shell=True, check=True, capture_output=True, env=env)
        took.append((time.perf_counter() - t) * 1000)
    subprocess.run(wait, shell=True, check=True, capture_output=True, env=env)
    return took, jobs / (time.perf_counter() - start)


def summary(took, jobs_per_s):
    s = sorted(took)
    at = lambda p: round(s[min(len(s) - 1, int(p / 100 * len(s)))], 2)
    return {"p10": at(10), "p50": at(50), "p90": at(90), "p99": at(99), "max": round(s[-1], 2),
            "mean": round(statistics.mean(s), 2), "drain_jobs_per_s": round(jobs_per_s, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ravel", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--dir")
    a = ap.parse_args()
    bin_dir = os.path.dirname(os.path.abspath(a.ravel))
    out = {"jobs": a.jobs, "rounds": []}
    with homes("ravel-drain-", a.dir) as tmp:
        for i in range(a.rounds):
            home = os.path.join(tmp, f"round{i}")
            os.makedirs(home)
            r = {}
            if shutil.which("tsp"):
                env = dict(os.environ, TS_SOCKET=os.path.join(home, "ts.sock"))
                subprocess.run("tsp -S 8", shell=True, env=env, check=True, capture_output=True)
                r["tsp"] = summary(*drain("tsp sh -c true", TSP_WAIT, env, a.jobs))
                subprocess.run("tsp -K", shell=True, env=env, capture_output=True)
            env = dict(os.environ, RAVEL_HOME=os.path.join(home, "ravel"), PATH=bin_dir + os.pathsep + os.environ["PATH"])
            env.pop("RAVEL_NO_GPU", None)
            subprocess.run([a.ravel, "daemon", "start", "--cpus", "8"], env=env, check=True, capture_output=True)
            try:
                submit = "ravel run --gpus 0 -- sh -c true"
                drain(submit, "ravel wait --all", env, 30)
                r["ravel"] = summary(*drain(submit, "ravel wait --all", env, a.jobs))
            finally:
                subprocess.run([a.ravel, "daemon", "stop", "--kill-jobs"], env=env, capture_output=True)
            out["rounds"].append(r)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
