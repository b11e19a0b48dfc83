#!/usr/bin/env python3
"""What a job's files cost in a group dir made right after other homes were deleted, with the
group dir made as Ravel made it before (`mkdir runs/0k`) and as it makes it now (under a name of
its own, renamed into place: ravel-exec's `launch::make_group_dir`).

On ext4 a directory made in a "top of hierarchy" directory (`runs/`) goes to the block group
with the fewest directories, searched from a group picked by a hash of its name. Every home's
`0k` starts that search at the same place, so a new home's `0k` lands where the last deleted
homes' `0k` were, and each new inode there skips, one at a time, every inode they freed in the
last minutes (ARCHITECTURE.md, "Run dirs and the filesystem").

The script fills `--homes` homes of `--jobs` jobs each (a job: its dir, the attempt's dir,
`outputs/`, five files, as a run dir), deletes them, and then makes `--tries` new homes each
way and times a job's eight inodes in each. Prints one JSON object: µs per inode, per try.

It makes the filesystem slow for everybody for a few minutes (that is what it measures): do not
run it before a benchmark. Usage: bench/groupdir.py [--dir DIR] [--homes 4] [--jobs 1000]
[--tries 3] [--probe-jobs 300]
"""
import argparse, json, os, random, shutil, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from settle import topdir  # noqa: E402

FILES = ("stdout.log", "stderr.log", "supervisor.json", "exit.json", "run.json")


def home(base, name):
    runs = os.path.join(base, name, "runs")
    os.makedirs(runs)
    topdir(runs)
    return runs


def group(runs, renamed):
    g = os.path.join(runs, "0k")
    if renamed:
        temp = os.path.join(runs, f".0k.{os.getpid()}.{random.getrandbits(32):08x}.tmp")
        os.mkdir(temp)
        os.rename(temp, g)
    else:
        os.mkdir(g)
    return g


def jobs(g, n):
    """µs per inode of `n` jobs' run dirs made in the group dir `g`."""
    t0 = time.perf_counter()
    for j in range(n):
        attempt = os.path.join(g, str(j), "1")
        os.mkdir(os.path.join(g, str(j)))
        os.mkdir(attempt)
        os.mkdir(os.path.join(attempt, "outputs"))
        for f in FILES:
            os.close(os.open(os.path.join(attempt, f), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return round((time.perf_counter() - t0) * 1e6 / (n * (3 + len(FILES))), 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", help="where the homes go (default: the temp dir)")
    ap.add_argument("--homes", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--tries", type=int, default=3)
    ap.add_argument("--probe-jobs", type=int, default=300)
    a = ap.parse_args()
    base = tempfile.mkdtemp(prefix="ravel-groupdir-", dir=a.dir)
    try:
        old = os.path.join(base, "old")
        filled = [jobs(group(home(old, str(i)), False), a.jobs) for i in range(a.homes)]
        shutil.rmtree(old)
        # The kernel counts an inode as recently deleted from the second after its deletion.
        time.sleep(2)
        out = {"filled_us_per_inode": filled, "deleted_inodes": a.homes * a.jobs * (3 + len(FILES))}
        new = os.path.join(base, "new")
        for renamed, key in ((False, "mkdir_0k"), (True, "renamed_into_place")):
            out[key] = [jobs(group(home(new, f"{key}{i}"), renamed), a.probe_jobs) for i in range(a.tries)]
        print(json.dumps(out))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
