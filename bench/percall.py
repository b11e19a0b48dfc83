#!/usr/bin/env python3
"""Wall time and whole-machine CPU per call of shell commands, called the way the peer harness
(../shared/bench/peers/measure.py) calls a submit: `subprocess.run(cmd, shell=True)`, one after
another. CPU is read from /proc/stat around the loop (plus a 0.5 s tail for work a call left
running, e.g. a job it queued), so it includes the daemon, supervisors and jobs, and anything
else the machine did meanwhile: compare commands of one run.

Usage: bench/percall.py [--calls 300] [NAME:=]CMD ...
Prints one JSON object: {NAME or CMD: {"wall_ms": ..., "cpu_ms": ...}, ...}
"""
import argparse, json, os, subprocess, time


def busy_ticks():
    with open("/proc/stat") as f:
        t = [int(x) for x in f.readline().split()[1:]]
    return sum(t) - t[3] - t[4]  # all but idle and iowait


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("cmd", nargs="+")
    a = ap.parse_args()
    tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
    out = {}
    for arg in a.cmd:
        name, _, cmd = arg.rpartition(":=")
        c0, t0 = busy_ticks(), time.perf_counter()
        for _ in range(a.calls):
            subprocess.run(cmd, shell=True, check=True, capture_output=True)
        t1 = time.perf_counter()
        time.sleep(0.5)
        c1 = busy_ticks()
        out[name or cmd] = {"wall_ms": round((t1 - t0) * 1000 / a.calls, 2), "cpu_ms": round((c1 - c0) * tick_ms / a.calls, 2)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
