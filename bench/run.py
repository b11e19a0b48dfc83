#!/usr/bin/env python3
"""One benchmark run: the shared peer harness (../shared/bench/peers/measure.py) for Ravel and
task-spooler, back to back on this machine (and one pass for pueue when it is installed), the
drain of both measured in pairs (bench/paired.py), the launch side's CPU per job
(bench/cpu.py), 1,000 concurrent submitters under each durability mode (bench/storm.py),
Ravel's local figures with 10,000 and 100,000 queued (bench/local.py) and with 1,000,000
finished jobs in the store (bench/history.py).
Prints one JSON object and rewrites the tables between the markers in bench/README.md: the
harness's figures beside task-spooler's, and Ravel's figures beside issue 8's targets.

The harness runs in rounds, task-spooler then Ravel and Ravel then task-spooler in turn, each
round with fresh homes; each figure reported is its median over the rounds, and the ratios are
those of the medians (each round's ratios are listed too). On this machine kind the CPU's own
speed swings by half within seconds (a fixed Python loop takes 0.62 to 0.97 s from one run to the
next), so one pass of each system, minutes apart, gives a ratio that is mostly the machine's mood.
Before anything, it waits (up to eight minutes) until a new file costs what it costs on a settled
filesystem (bench/settle.py).

Usage: bench/run.py --ravel PATH [--jobs 300] [--submits 30] [--rounds 5] [--queued 10000] [--deep 100000]
                   [--finished 1000000] [--no-readme]
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import settle  # noqa: E402  (waits for the filesystem to settle first)
PEERS = os.path.join(HERE, "..", "..", "shared", "bench", "peers", "measure.py")
START, END = "<!-- bench/run.py: start -->", "<!-- bench/run.py: end -->"


def last_json(script, *args, env=None):
    """Runs a Python benchmark script and returns the JSON object it prints last."""
    out = subprocess.run([sys.executable, script, *args], env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def harness(system, jobs, submits, env):
    return last_json(PEERS, system, "--jobs", str(jobs), "--submits", str(submits), env=env)


def cpu_model():
    """The CPU as /proc/cpuinfo names it, with its family and model numbers (guests of one name
    differ: the README's rounds tell them apart by these)."""
    fields = {}
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return "an unknown CPU"
    return f"{fields.get('model name', 'an unknown CPU')} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ravel", required=True)
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--submits", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--queued", type=int, default=10000)
    ap.add_argument("--deep", type=int, default=100000, help="the long queue's length (local.py --deep, history.py)")
    ap.add_argument("--finished", type=int, default=1000000, help="finished jobs in the store (history.py)")
    ap.add_argument("--no-readme", action="store_true")
    a = ap.parse_args()
    if a.rounds < 1:
        ap.error("--rounds must be at least 1")
    result = {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "cpu": cpu_model(),
              "kernel": os.uname().release}
    # The peers first, then the launch side's CPU and the storm, their homes deleted at the very
    # end: on ext4 without a journal, inodes deleted in the last minutes slow down every file
    # created in their block group (ARCHITECTURE.md, "Run dirs and the filesystem"). local.py and
    # history.py, which delete their own, come last.
    tmp = tempfile.mkdtemp(prefix="ravel-bench-")
    try:
        # A mass deletion in the last minutes (a CI run, a build, the last benchmark's homes) makes
        # new files cost several times their price where it happened (bench/settle.py).
        result["fs_settle"] = settle.wait_settled(tmp)
        if not result["fs_settle"]["settled"]:
            print(f"the filesystem did not settle: {result['fs_settle']}", file=sys.stderr)
        rounds = [peers(a, os.path.join(tmp, f"round{i}"), i % 2 == 1) for i in range(a.rounds)]
        result["harness"] = {name: medians([r[name] for r in rounds]) for name in rounds[0]}
        result["harness_rounds"] = rounds
        if "tsp" in result["harness"]:
            result["ratio_ravel_over_tsp"] = ratios(result["harness"]["tsp"], result["harness"]["ravel"])
            result["ratio_rounds"] = [ratios(r["tsp"], r["ravel"]) for r in rounds]
        if "tsp" in result["harness"]:
            result["paired_drain"] = script("paired.py", a.ravel, "--dir", tmp)
        if shutil.which("pueue") and shutil.which("pueued"):
            result["pueue"] = pueue(a, os.path.join(tmp, "pueue"))
        result["cpu_per_job"] = script("cpu.py", a.ravel, "--dir", tmp)
        result["storm"] = script("storm.py", a.ravel, "--dir", tmp)
        result["ravel_local"] = script("local.py", a.ravel, "--queued", str(a.queued), "--deep", str(a.deep))
        result["history"] = script("history.py", a.ravel, "--finished", str(a.finished), "--queued", str(a.deep))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))
    if not a.no_readme:
        write_readme(result)


def script(name, ravel, *args):
    """Runs one of this directory's benchmarks against `ravel`."""
    return last_json(os.path.join(HERE, name), "--ravel", ravel, *args)


def medians(runs):
    """One system's harness figures, each the median over `runs` (a figure of its own round)."""
    out = {"system": runs[0]["system"], "rounds": len(runs)}
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not key.startswith("loadavg"):
            out[key] = round(statistics.median(r[key] for r in runs), 2)
    return out


def ratios(t, r):
    """Ravel over task-spooler: below 1 is faster for the latencies, above 1 for the drain."""
    return {
        "submit_p50": round(r["submit_ms_p50"] / t["submit_ms_p50"], 2),
        "dispatch_p50": round(r["dispatch_ms_p50"] / t["dispatch_ms_p50"], 2),
        "drain_jobs_per_s": round(r["jobs_per_s"] / t["jobs_per_s"], 2),
    }


def peers(a, tmp, ravel_first):
    """One round of the shared harness, task-spooler (when installed) and Ravel, in the order given,
    homes in `tmp`. What one system leaves behind (dirty pages being written back, processes
    exiting) falls on the next: rounds alternate the order so that it falls on both alike."""
    os.makedirs(tmp)
    out = {}

    def tsp():
        if shutil.which("tsp"):
            env = dict(os.environ, TS_SOCKET=os.path.join(tmp, "ts.sock"))
            out["tsp"] = harness("tsp", a.jobs, a.submits, env)
            subprocess.run(["tsp", "-K"], env=env, capture_output=True)

    def ravel():
        env = dict(os.environ, RAVEL_HOME=os.path.join(tmp, "ravel"),
                   PATH=os.path.dirname(os.path.abspath(a.ravel)) + os.pathsep + os.environ["PATH"])
        env.pop("RAVEL_NO_GPU", None)
        subprocess.run([a.ravel, "daemon", "start", "--cpus", "8"], env=env, check=True, capture_output=True)
        try:
            out["ravel"] = harness("ravel", a.jobs, a.submits, env)
        finally:
            subprocess.run([a.ravel, "daemon", "stop", "--kill-jobs"], env=env, capture_output=True)

    for run in ((ravel, tsp) if ravel_first else (tsp, ravel)):
        run()
    return {name: out[name] for name in ("tsp", "ravel") if name in out}


def pueue(a, home):
    """One pass of the shared harness for pueue (optional: measured when installed, e.g. by `cargo
    install pueue --locked`), its daemon's config, state and socket in `home`. It is about twenty
    times slower than the others, so one pass tells where it stands."""
    env = dict(os.environ, HOME=home, XDG_CONFIG_HOME=os.path.join(home, "config"),
               XDG_DATA_HOME=os.path.join(home, "data"), XDG_RUNTIME_DIR=os.path.join(home, "run"))
    os.makedirs(env["XDG_RUNTIME_DIR"])
    # Not captured: the daemon it leaves behind would hold the pipes open.
    subprocess.run(["pueued", "-d"], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 10
        while subprocess.run(["pueue", "status"], env=env, capture_output=True).returncode != 0:
            if time.time() > deadline:
                raise RuntimeError("pueued did not answer within 10 s")
            time.sleep(0.05)
        return harness("pueue", a.jobs, a.submits, env)
    finally:
        subprocess.run(["pueue", "shutdown"], env=env, capture_output=True)


def targets(r):
    """Ravel's figures of the run beside issue 8's targets, as table rows."""
    loc, deep, hist, storm = r["ravel_local"], r["ravel_local"].get("deep", {}), r["history"], r["storm"]
    both = hist["history_and_queued"]

    def ms(x):
        return f"{x['p50']} / {x['p99']} ms"

    def per_s(mode):
        s = storm[mode]["storm"]
        return (f"{s['submits_per_s']:,.0f} submits/s ({storm['clients']:,} clients × {storm['each']}; "
                f"{s['errors']} errors, {s['ran_once']:,} of {s['submits']:,} ran once, all ended in {s['all_ended_s']} s)")

    rows = [
        ("`ravel run` round trip p50 / p99, empty queue", "≤ 3 / ≤ 10 ms", ms(loc["run_round_trip_ms"])),
        (f"same, {hist['queued']:,} queued and {hist['finished']:,} finished", "within 1.5× of empty",
         f"{ms(both['run_round_trip_ms'])} ({both['round_trip_p50_vs_empty']}× its empty phase's p50)"),
        ("submit → job's first instruction p50 / p99", "≤ 5 / ≤ 15 ms", ms(loc["submit_to_start_ms"])),
        (f"drain of {loc['drain']['jobs']:,} queued `true` jobs, 8 slots", "≥ 500 jobs/s",
         f"{loc['drain']['jobs_per_s']:,} jobs/s"),
        (f"{storm['clients']:,} concurrent submitters", "≥ 1,000 submits/s (1,000 clients)", per_s("normal")),
        ("same, `--durability full`", "(benchmarked)", per_s("full")),
        ("`ravel run` round trip p50 / p99, `--durability full`", "(benchmarked)",
         ms(storm["full"]["run_round_trip_ms"]) + f" (normal {ms(storm['normal']['run_round_trip_ms'])})"),
        ("daemon RSS idle", "≤ 20 MiB", f"{loc['rss_idle_mib']} MiB"),
        (f"daemon RSS, {loc['queued']:,} queued", "≤ 60 MiB", f"{loc['rss_queued_mib']} MiB"),
    ]
    if deep:  # local.py's second depth (run.py --deep above --queued)
        rows += [
            (f"`ravel queue`, {deep['queued']:,} queued", "≤ 20 ms (100,000)", f"{deep['queue_cmd_queued_ms']} ms"),
            (f"`ravel queue --all --json`, {deep['queue_all_json_jobs']:,} jobs", "≤ 1 s (100,000)",
             f"{deep['queue_all_json_ms']} ms"),
            (f"daemon RSS, {deep['queued']:,} queued", "≤ 200 MiB (100,000)", f"{deep['rss_queued_mib']} MiB"),
        ]
    return ["| figure | target | this run |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]


def write_readme(r):
    rows = ["| system | submit p50 / p99 ms | submit → running p50 / p99 ms | drain jobs/s |", "|---|---|---|---|"]
    for name, m in r["harness"].items():
        rows.append(f"| {name} | {m['submit_ms_p50']} / {m['submit_ms_p99']} | {m['dispatch_ms_p50']} / "
                    f"{m['dispatch_ms_p99']} | {m['jobs_per_s']} |")
    if "ratio_ravel_over_tsp" in r:
        q = r["ratio_ravel_over_tsp"]
        rows.append(f"| ratio Ravel / tsp | {q['submit_p50']} | {q['dispatch_p50']} | {q['drain_jobs_per_s']} |")
    if "pueue" in r:
        m = r["pueue"]
        rows.append(f"| pueue (one pass) | {m['submit_ms_p50']} / {m['submit_ms_p99']} | {m['dispatch_ms_p50']} / "
                    f"{m['dispatch_ms_p99']} | {m['jobs_per_s']} |")
    rounds = r["harness"]["ravel"]["rounds"]
    paired = []
    if "paired_drain" in r:
        p = r["paired_drain"]
        paired = [f"Drain in pairs (`bench/paired.py`, {p['rounds']} rounds of {p['chunk']} submits on each system): "
                  f"task-spooler {p['tsp']['ms_per_submit_mean']} ms per submit, Ravel {p['ravel']['ms_per_submit_mean']}: "
                  f"Ravel's speed {p['ravel']['speed_vs_tsp']}× task-spooler's (per-round ratios, quartiles: "
                  f"{' / '.join(str(q) for q in p['ravel']['round_ratio_quartiles'])}).", ""]
    text = "\n".join([START, f"Run of {r['date']} on {r['cores']} cores of {r['cpu']}, Linux {r['kernel']} "
                      f"(`bench/run.sh`), medians of {rounds} "
                      "alternating rounds of the harness:", "", *rows, "", *paired,
                      "Ravel's own figures in the same run, beside issue 8's targets:", "", *targets(r), "",
                      "```json", json.dumps(r), "```", END])
    path = os.path.join(HERE, "README.md")
    readme = open(path).read()
    if START in readme and END in readme:
        readme = readme[:readme.index(START)] + text + readme[readme.index(END) + len(END):]
    else:
        readme = readme.rstrip() + "\n\n## Latest `bench/run.sh`\n\n" + text + "\n"
    open(path, "w").write(readme)


if __name__ == "__main__":
    main()
