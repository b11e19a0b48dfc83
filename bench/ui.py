#!/usr/bin/env python3
"""Web UI job-list timings over a long history; prints one JSON object.

Starts a daemon in a temp RAVEL_HOME, submits N held jobs in one array request, signs in
through `ravel ui`, and reads each page's server time from its Server-Timing header.
Usage: bench/ui.py --ravel PATH [--jobs 100000] [--repeat 5]
"""
import argparse, http.client, json, os, statistics, subprocess, tempfile, time

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ravel", required=True)
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    home = tempfile.mkdtemp(prefix="ravel-bench-ui-")
    env = dict(os.environ, RAVEL_HOME=home, RAVEL_NO_GPU="1")
    run = lambda *args: subprocess.run([a.ravel, *args], env=env, check=True, capture_output=True, text=True).stdout
    try:
        run("daemon", "start", "--cpus", "8")
        t0 = time.time()
        run("run", "--hold", "--array", f"0-{a.jobs - 1}", "--", "true")
        fill_s = time.time() - t0
        url = json.loads(run("ui", "--json"))["url"]
        port = int(url.split(":")[2].split("/")[0])
        c = http.client.HTTPConnection("127.0.0.1", port)
        c.request("GET", url[url.index("/login"):])
        r = c.getresponse(); r.read()
        cookie = r.getheader("set-cookie").split(";")[0]
        pages = {"first page": "/", "page 1000": "/?page=1000", "page 2000 (last)": "/?page=2000",
                 "waiting, page 500": "/?state=waiting&page=500", "search, page 3": "/?q=true&page=3",
                 "search, no match": "/?q=nomatch", "oldest first": "/?order=old"}
        out = {}
        for name, path in pages.items():
            ms = []
            for _ in range(a.repeat):
                c = http.client.HTTPConnection("127.0.0.1", port)
                c.request("GET", path, headers={"Cookie": cookie})
                r = c.getresponse(); r.read()
                assert r.status == 200, (path, r.status)
                ms.append(float(r.getheader("server-timing").split("dur=")[1]))
            out[name] = {"p50_ms": round(statistics.median(ms), 1), "max_ms": round(max(ms), 1)}
        print(json.dumps({"jobs": a.jobs, "fill_s": round(fill_s, 2), "server_ms": out,
                          "loadavg": os.getloadavg()[0], "cores": os.cpu_count()}))
    finally:
        subprocess.run([a.ravel, "daemon", "stop", "--kill-jobs"], env=env, capture_output=True)

if __name__ == "__main__":
    main()
