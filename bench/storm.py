#!/usr/bin/env python3
"""Many clients at once, under each durability mode.

For `--durability normal` (the default) and `--durability full` (an fsync per commit), one daemon
each (8 CPU slots, a temp RAVEL_HOME):
- `ravel run -- true` round trip through the CLI (`--samples` calls, one process each);
- a storm: `--clients` submitters (1,000) at once, each sending `--each` (10) submits of a `true`
  job one after another, a new connection per submit as a CLI would, all released together.
  Figures: acknowledged submits per second (the first release to the last answer), each
  submit's latency, errors (must be none), then the time until every job has ended; then a
  check that the ids are distinct and every job succeeded in its first attempt (ran once).

Prints one JSON object. Usage:
    bench/storm.py --ravel PATH [--clients 1000] [--each 10] [--samples 100] [--dir DIR]
(with --dir the homes go there and are left for the caller to delete: deleting run dirs slows
every file created in the minutes after, see bench/README.md)
"""
import argparse, asyncio, json, os, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from drain_latency import homes  # noqa: E402  (a temp dir for the homes, kept with --dir)
from local import Daemon, p50_p99, pct, round_trips  # noqa: E402


async def submit(sock, request):
    """One submit on a connection of its own; returns the new job's id."""
    reader, writer = await asyncio.open_unix_connection(sock)
    try:
        writer.write(request)
        await writer.drain()
        data = await reader.read()  # `Connection: close`: the daemon closes after its answer
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if status not in (200, 201):
        raise RuntimeError(f"status {status}: {body[:200]!r}")
    return json.loads(body)["id"]


async def storm(sock, request, clients, each):
    go = asyncio.Event()
    latencies, ids, errors = [], [], []

    async def client():
        await go.wait()
        for _ in range(each):
            t0 = time.perf_counter()
            try:
                ids.append(await submit(sock, request))
                latencies.append((time.perf_counter() - t0) * 1000)
            except Exception as e:  # noqa: BLE001  (counted and reported, the run goes on)
                errors.append(str(e))

    tasks = [asyncio.create_task(client()) for _ in range(clients)]
    await asyncio.sleep(0.2)  # every client waiting at the gate
    t0 = time.perf_counter()
    go.set()
    await asyncio.gather(*tasks)
    return time.perf_counter() - t0, latencies, ids, errors


def measure(ravel, home, durability, a):
    d = Daemon(ravel, 0, 8, "--durability", durability, home=home)
    try:
        for _ in range(20):  # warm-up: standbys, page cache
            d.run("run", "--", "true")
        d.run("wait", "--all")
        rt = round_trips(d, a.samples)
        d.run("wait", "--all")
        body = json.dumps(d.spec(["true"])).encode()
        request = (b"POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                   b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
        t0 = time.perf_counter()
        secs, lat, ids, errors = asyncio.run(storm(os.path.join(home, "ravel.sock"), request, a.clients, a.each))
        d.run("wait", "--all", "--timeout", "600")
        all_ended = time.perf_counter() - t0
        jobs = {j["id"]: j for j in json.loads(d.run("queue", "--all", "--json"))}
        ran_once = sum(1 for i in set(ids) if jobs.get(i, {}).get("state") == "succeeded"
                       and jobs[i].get("attempt") == 1)
    finally:
        d.stop()
    n = a.clients * a.each
    return {
        "run_round_trip_ms": p50_p99(rt),
        "storm": {"submits": n, "seconds": round(secs, 3), "submits_per_s": round(n / secs, 1),
                  "latency_ms": {**p50_p99(lat), "max": pct(lat, 100)} if lat else None,
                  "errors": len(errors), "first_errors": errors[:3], "distinct_ids": len(set(ids)),
                  "ran_once": ran_once, "all_ended_s": round(all_ended, 3),
                  "jobs_per_s": round(n / all_ended, 1)},
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ravel", required=True)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--each", type=int, default=10)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--dir")
    a = ap.parse_args()
    ravel = os.path.abspath(a.ravel)
    out = {"clients": a.clients, "each": a.each, "cores": os.cpu_count()}
    with homes("ravel-storm-", a.dir) as tmp:
        for mode in ("normal", "full"):
            out[mode] = measure(ravel, os.path.join(tmp, mode), mode, a)
    n, f = out["normal"], out["full"]
    out["full_over_normal"] = {
        "run_round_trip_p50": round(f["run_round_trip_ms"]["p50"] / n["run_round_trip_ms"]["p50"], 2),
        "storm_submits_per_s": round(f["storm"]["submits_per_s"] / n["storm"]["submits_per_s"], 2),
    }
    print(json.dumps(out))
    bad = [m for m in ("normal", "full") if out[m]["storm"]["errors"] or out[m]["storm"]["ran_once"] != a.clients * a.each]
    if bad:
        print(f"storm: errors or jobs not run exactly once under {', '.join(bad)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
