#!/usr/bin/env python3
"""Where each submit of a harness-style drain spends its time, and whose CPU a job costs, from
the kernel's scheduler events (`perf sched record`, so root or perf_event_paranoid <= 1).

The peer harness submits one job at a time: Python forks `/bin/sh -c "<client> ... sh -c true"`,
the shell forks the client, the client talks to its daemon and exits, the shell exits, Python
forks the next. On two cores every earlier job's launch and end run beside that chain. For each
submit this splits the chain at its fork, switch and wake-up events:

- `python_to_sh_fork`: Python's fork of the shell to the shell's fork of the client;
- `sh_fork_to_client`: to the client's first time on a CPU under its own name (its exec);
- `client`: to the client's exit; for Ravel also `request_to_answer`, from the front's request
  waking the daemon to the daemon's last wake-up of the front (its answer);
- `sh_exit`: the client's exit to the shell's; `to_next`: the shell's exit to Python's next fork.

Three systems, one after another, each started fresh in a temp home with 8 slots: task-spooler
(when installed), Ravel, and Ravel with `--hold` (the submit path alone, nothing launched). Each
gets `--warm` submits first, then `--jobs` recorded ones and a wait for all.

Prints one JSON object: per system the stages' means and medians (ms), the wall time per job,
and the CPU per job of each process name (`sched_stat_runtime`; the job's `sh` and the harness's
`sh` share a name).

Usage: bench/chain.py --ravel PATH [--jobs 300] [--warm 100] [--dir DIR]
"""
import argparse, json, os, re, shutil, statistics, subprocess, sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from drain_latency import drain, homes  # noqa: E402  (the harness's drain: submits one by one, then the wait)
from paired import stop, system  # noqa: E402  (a system started in a home, and stopped)

STAGES = ["python_to_sh_fork", "sh_fork_to_client", "client", "request_to_answer", "sh_exit", "to_next", "total"]


def loop(cmd, n, wait):
    """The drain run under perf by `record`: prints its wall time per job."""
    _, jobs_per_s = drain(cmd, wait, os.environ, n)
    print(json.dumps({"wall_ms_per_job": 1000 / jobs_per_s}))


def record(out, cmd, n, wait, env):
    p = subprocess.run(["perf", "sched", "record", "-o", out, "--", sys.executable, os.path.abspath(__file__),
                        "--loop", cmd, "--jobs", str(n), "--wait", wait], env=env, check=True, capture_output=True,
                       text=True)
    return json.loads(p.stdout.strip().splitlines()[-1])["wall_ms_per_job"]


def events(path):
    text = subprocess.run(["perf", "script", "-i", path, "-F", "comm,tid,time,event,trace"], check=True,
                          capture_output=True, text=True).stdout
    for line in text.splitlines():
        m = re.match(r"\s*(.+?)\s+(\d+)\s+([\d.]+):\s+(\S+):\s*(.*)", line)
        if m:
            yield float(m.group(3)), m.group(1), int(m.group(2)), m.group(4), m.group(5)


def analyse(path, client, jobs):
    forks, wakes = [], []
    last_out, first_in = {}, {}
    runtime = defaultdict(int)
    for t, comm, tid, event, rest in events(path):
        if event == "sched:sched_process_fork":
            m = re.search(r"comm=(.+?) pid=(\d+) child_comm=.+? child_pid=(\d+)", rest)
            if m:
                forks.append((t, m.group(1), int(m.group(2)), int(m.group(3))))
        elif event == "sched:sched_switch":
            m = re.search(r"prev_comm=(.+?) prev_pid=(\d+) .*==> next_comm=(.+?) next_pid=(\d+)", rest)
            if m:
                last_out[int(m.group(2))] = t
                first_in.setdefault((int(m.group(4)), m.group(3)), t)
        elif event == "sched:sched_waking":
            m = re.search(r"comm=(.+?) pid=(\d+)", rest)
            if m:
                wakes.append((t, comm, tid, m.group(1), int(m.group(2))))
        elif event == "sched:sched_stat_runtime":
            m = re.search(r"comm=(.+?) pid=\d+ runtime=(\d+)", rest)
            if m:
                runtime[m.group(1)] += int(m.group(2))
    python = [f for f in forks if f[1].startswith("python")]
    shell_forks = {f[2]: f for f in forks if f[1] == "sh"}
    requests, answers = defaultdict(list), defaultdict(list)
    for t, waker, waker_tid, wakee, wakee_tid in wakes:
        if waker.startswith("tokio"):
            answers[wakee_tid].append(t)
        elif wakee.startswith("tokio"):
            requests[waker_tid].append(t)
    rows = []
    for (t0, _, _, sh), nxt in zip(python, python[1:]):
        if sh not in shell_forks:
            continue
        t1, _, _, c = shell_forks[sh]
        t2, t5, t6 = first_in.get((c, client)), last_out.get(c), last_out.get(sh)
        if None in (t2, t5, t6):
            continue
        row = dict(python_to_sh_fork=t1 - t0, sh_fork_to_client=t2 - t1, client=t5 - t2, sh_exit=t6 - t5,
                   to_next=nxt[0] - t6, total=nxt[0] - t0)
        if requests[c] and answers[c] and answers[c][-1] > requests[c][0]:
            row["request_to_answer"] = answers[c][-1] - requests[c][0]
        rows.append(row)
    stages = {}
    for k in STAGES:
        v = [r[k] * 1000 for r in rows if k in r]
        if v:
            stages[k] = {"mean": round(statistics.mean(v), 3), "p50": round(statistics.median(v), 3)}
    cpu = {comm: round(ns / 1e6 / jobs, 3) for comm, ns in sorted(runtime.items(), key=lambda kv: -kv[1])
           if ns / 1e6 / jobs >= 0.005}
    return {"submits": len(rows), "stages_ms": stages, "cpu_ms_per_job": cpu}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ravel")
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--warm", type=int, default=100)
    ap.add_argument("--dir", help="where the homes go (left for the caller to delete)")
    ap.add_argument("--loop", help=argparse.SUPPRESS)
    ap.add_argument("--wait", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.loop:
        return loop(a.loop, a.jobs, a.wait)
    if not a.ravel:
        ap.error("--ravel is required")
    out = {"jobs": a.jobs}
    with homes("ravel-chain-", a.dir) as tmp:
        for name in (["tsp"] if shutil.which("tsp") else []) + ["ravel", "ravel_held"]:
            home = os.path.join(tmp, name)
            os.makedirs(home)
            kind = "tsp" if name == "tsp" else "ravel"
            env, submit, wait = system(kind, a.ravel, home)
            if name == "ravel_held":
                # Held jobs never end: nothing to wait for.
                submit, wait = submit.replace("ravel run ", "ravel run --hold "), "true"
            try:
                drain(submit, wait, env, a.warm)
                data = os.path.join(home, "sched.data")
                wall = record(data, submit, a.jobs, wait, env)
                out[name] = {"wall_ms_per_job": round(wall, 3), **analyse(data, kind, a.jobs)}
            finally:
                stop(kind, env)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
