#!/usr/bin/env python3
"""Ravel's drain beside task-spooler's, measured in pairs: both systems stay up side by side,
and each round runs a chunk of harness-style submits (`subprocess.run(cmd, shell=True)` of
`... sh -c true`, one after another, each job running while the next is submitted) on each
system, in a random order, then waits for both queues to empty (not timed). A round takes
about half a second per system, so a swing of the machine's speed (on this machine kind the
CPU's own speed moves by a third from one second to the next, see bench/README.md) falls on
both systems of a round alike; the ratio of the two chunk times in a round is one sample of
the speed ratio. The harness (bench/run.py) times one drain of each system per round, seconds
apart, which that swing can tip either way.

A chunk is as long as the harness's drain (300 submits) by default. Shorter chunks flatter a
system that does part of its work later: Ravel writes `run.json` at idle priority and
checkpoints its WAL on a thread, and the untimed waits between short chunks give that work
idle CPU it does not get in a drain (chunks of 50 gave Ravel 4 to 8 % more than chunks of 300
in the same session, bench/README.md).

Several Ravel builds can run in the same rounds (`--ravel NAME=PATH`, repeated): the way to
tell whether a change makes the drain faster, when one harness run cannot.

Prints one JSON object: per system the mean and median time per submit (ms), and per Ravel
build its `speed_vs_tsp`: task-spooler's mean over the build's (above 1: Ravel drains faster),
with the quartiles of the per-round ratios.

Usage: bench/paired.py --ravel [NAME=]PATH [--ravel ...] [--rounds 16] [--chunk 300] [--dir DIR]
"""
import argparse, json, os, random, shutil, statistics, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from drain_latency import TSP_WAIT, homes  # noqa: E402  (the harness's wait for task-spooler; the homes' temp dir)


def system(name, ravel, home):
    """(environment, submit command, wait command) of a system started in `home`."""
    env = dict(os.environ, TMPDIR=home, TS_SOCKET=os.path.join(home, "ts.sock"), RAVEL_HOME=os.path.join(home, "ravel"))
    env.pop("RAVEL_NO_GPU", None)
    if name == "tsp":
        subprocess.run(["tsp", "-S", "8"], env=env, check=True, capture_output=True)
        return env, "tsp sh -c true", TSP_WAIT
    env["PATH"] = os.path.dirname(os.path.abspath(ravel)) + os.pathsep + env["PATH"]
    subprocess.run([ravel, "daemon", "start", "--cpus", "8"], env=env, check=True, capture_output=True)
    return env, "ravel run --gpus 0 -- sh -c true", "ravel wait --all"


def stop(name, env):
    if name == "tsp":
        subprocess.run(["tsp", "-K"], env=env, capture_output=True)
    else:
        subprocess.run(["ravel", "daemon", "stop", "--kill-jobs"], env=env, capture_output=True)


def build(arg):
    """(name, path) of `--ravel [NAME=]PATH`."""
    name, named, path = arg.partition("=")
    return (name, path) if named else ("ravel", arg)


def quartiles(xs):
    xs = sorted(xs)
    return [round(xs[min(len(xs) - 1, int(q * len(xs)))], 3) for q in (0.25, 0.5, 0.75)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ravel", action="append", required=True, help="[NAME=]PATH of a ravel binary")
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=300)
    ap.add_argument("--dir", help="where the homes go (left for the caller to delete)")
    a = ap.parse_args()
    if shutil.which("tsp") is None:
        sys.exit("task-spooler (tsp) is not installed")
    systems = {}
    with homes("ravel-paired-", a.dir) as tmp:
        try:
            for i, (name, path) in enumerate([("tsp", "")] + [build(r) for r in a.ravel]):
                if name in systems:
                    ap.error(f"two systems named {name}: name them, --ravel NAME=PATH")
                home = os.path.join(tmp, f"{i}")
                os.makedirs(home)
                systems[name] = system(name, path, home)
            for env, submit, wait in systems.values():  # warm-up: page cache, standbys
                for _ in range(20):
                    subprocess.run(submit, shell=True, env=env, check=True, capture_output=True)
                subprocess.run(wait, shell=True, env=env, check=True, capture_output=True)
            ms = {name: [] for name in systems}
            for _ in range(a.rounds):
                order = list(systems)
                random.shuffle(order)
                for name in order:
                    env, submit, wait = systems[name]
                    t0 = time.perf_counter()
                    for _ in range(a.chunk):
                        subprocess.run(submit, shell=True, env=env, check=True, capture_output=True)
                    ms[name].append((time.perf_counter() - t0) * 1000 / a.chunk)
                    subprocess.run(wait, shell=True, env=env, check=True, capture_output=True)
                    if name == "tsp":
                        subprocess.run(["tsp", "-C"], env=env, check=True, capture_output=True)
        finally:
            for name, (env, _, _) in systems.items():
                stop(name, env)
    out = {"rounds": a.rounds, "chunk": a.chunk}
    for name, xs in ms.items():
        out[name] = {"ms_per_submit_mean": round(statistics.mean(xs), 3), "ms_per_submit_median": round(statistics.median(xs), 3)}
    for name, xs in ms.items():
        if name != "tsp":
            out[name]["speed_vs_tsp"] = round(statistics.mean(ms["tsp"]) / statistics.mean(xs), 3)
            out[name]["round_ratio_quartiles"] = quartiles([t / r for t, r in zip(ms["tsp"], xs)])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
