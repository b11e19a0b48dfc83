#!/usr/bin/env python3
"""CPU per job on the launch side: the daemon's, its zygote's and supervisors', and the jobs'
own (reaped by the supervisors), from /proc (utime + stime, in clock ticks), around N
harness-style submits of `ravel run --gpus 0 -- sh -c true` (one process per submit, through
/bin/sh) and a wait for all. A second daemon takes N held submits (`--hold`): its CPU is the
submit path's alone. Supervisors that exit during the run (let go) take their figures with them,
so the supervisors' and jobs' figures are lower bounds.

Prints one JSON object. Usage: bench/cpu.py --ravel PATH [--jobs 300] [--dir DIR]
(with --dir the daemons' homes go there and are left for the caller to delete: deleting run
dirs slows every file created in the minutes after, see bench/README.md)
"""
import argparse, json, os, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from drain_latency import homes  # noqa: E402  (a temp dir for the homes, kept with --dir)


def stat(pid):
    """(comm, ppid, own ticks, reaped children's ticks) of `pid`, or None if it is gone."""
    try:
        text = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return (text[text.index("(") + 1:text.rindex(")")], int(fields[1]), int(fields[11]) + int(fields[12]),
            int(fields[13]) + int(fields[14]))


def ticks(daemon_pid):
    """CPU ticks of the daemon (all its threads), of its zygote and the zygote's children (the
    supervisors), and of the jobs those supervisors reaped."""
    daemon = stat(daemon_pid)
    procs = [(int(p), stat(p)) for p in os.listdir("/proc") if p.isdigit()]
    zygotes = {pid for pid, st in procs if st and st[1] == daemon_pid and st[0] == "ravel-zygote"}
    mine = [st for pid, st in procs if st and (pid in zygotes or st[1] in zygotes)]
    return (daemon[2] if daemon else 0), sum(st[2] for st in mine), sum(st[3] for st in mine)


def measure(ravel, home, jobs, hold):
    env = dict(os.environ, RAVEL_HOME=home, PATH=os.path.dirname(os.path.abspath(ravel)) + os.pathsep + os.environ["PATH"])
    subprocess.run([ravel, "daemon", "start", "--cpus", "8"], env=env, check=True, capture_output=True)
    try:
        cmd = "ravel run %s--gpus 0 -- sh -c true" % ("--hold " if hold else "")
        for _ in range(20):  # warm-up: standbys, page cache
            subprocess.run(cmd, shell=True, check=True, capture_output=True, env=env)
        if not hold:
            subprocess.run("ravel wait --all", shell=True, check=True, capture_output=True, env=env)
        status = subprocess.run([ravel, "daemon", "status", "--json"], env=env, check=True, capture_output=True, text=True)
        pid = json.loads(status.stdout)["pid"]
        d0, s0, j0 = ticks(pid)
        t0 = time.time()
        for _ in range(jobs):
            subprocess.run(cmd, shell=True, check=True, capture_output=True, env=env)
        if not hold:
            subprocess.run("ravel wait --all", shell=True, check=True, capture_output=True, env=env)
        wall = time.time() - t0
        d1, s1, j1 = ticks(pid)
    finally:
        subprocess.run([ravel, "daemon", "stop", "--kill-jobs"], env=env, capture_output=True)
    ms = 1000.0 / os.sysconf("SC_CLK_TCK") / jobs
    return dict(daemon_ms=round((d1 - d0) * ms, 3), supervisors_ms=round((s1 - s0) * ms, 3),
                jobs_ms=round((j1 - j0) * ms, 3), wall_ms=round(1000 * wall / jobs, 3))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ravel", required=True)
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--dir")
    a = ap.parse_args()
    with homes("ravel-cpu-", a.dir) as tmp:
        run = measure(a.ravel, os.path.join(tmp, "run"), a.jobs, False)
        held = measure(a.ravel, os.path.join(tmp, "hold"), a.jobs, True)
    print(json.dumps({"jobs": a.jobs, "cores": os.cpu_count(), "run": run,
                      "submit_only_daemon_ms": held["daemon_ms"],
                      "launch_and_end_daemon_ms": round(run["daemon_ms"] - held["daemon_ms"], 3)}))


if __name__ == "__main__":
    main()
