#!/usr/bin/env python3
"""Waits until new files cost what they cost on a settled filesystem, before a benchmark.

On ext4 without a journal (this machine kind), allocating an inode skips, one at a time, every
inode of its block group deleted in the last minutes (up to six when the inode table is still
dirty). Right after a mass deletion (a CI run's temp homes, a cargo build's object files, the
last benchmark's homes) the emptied group is the one the allocator likes best, and every file
made there costs several times its settled price for minutes (ARCHITECTURE.md, "Run dirs and
the filesystem"; bench/README.md). A queue that makes eight inodes per job pays that eight
times, one that makes one file pays it once: measured then, a drain compares the filesystem's
mood, not the schedulers.

The probe makes files the way a Ravel home does: a directory with ext4's "top of hierarchy"
flag (as `runs/`), a fresh subdirectory in it (as a group dir, placed by the same rule), and
`--files` empty files in that (as a job's). It repeats with a fresh subdirectory every
`--every` seconds until a probe costs at most `--settled` µs per file or `--budget` seconds
have passed. Nothing is deleted: the probe's files stay in DIR for the caller to remove with
the rest of its homes.

Prints one JSON object (`settled`, `waited_s`, and each probe's µs per file).
Usage: bench/settle.py DIR [--settled 30] [--budget 480] [--every 30] [--files 400]
"""
import argparse, fcntl, json, os, struct, time

FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_TOPDIR_FL = 0x80086601, 0x40086602, 0x00020000


def topdir(path):
    """Sets ext4's "top of hierarchy" flag on `path` (best effort, as Ravel does on `runs/`)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = struct.unpack("i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack("i", 0)))[0]
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", flags | FS_TOPDIR_FL))
    except OSError:
        pass
    finally:
        os.close(fd)


def probe(parent, name, files):
    """µs per empty file made in a fresh subdirectory `name` of `parent`."""
    d = os.path.join(parent, name)
    os.mkdir(d)
    t0 = time.perf_counter()
    for i in range(files):
        os.close(os.open(os.path.join(d, str(i)), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return round((time.perf_counter() - t0) * 1e6 / files, 1)


def wait_settled(dir, settled=30.0, budget=480.0, every=30.0, files=400):
    parent = os.path.join(dir, "fs-probe")
    os.makedirs(parent, exist_ok=True)
    topdir(parent)
    t0 = time.monotonic()
    costs = []
    while True:
        costs.append(probe(parent, f"{os.getpid()}.{len(costs)}", files))
        waited = time.monotonic() - t0
        if costs[-1] <= settled or waited + every > budget:
            return {"settled": costs[-1] <= settled, "waited_s": round(waited), "us_per_file": costs,
                    "threshold_us": settled}
        time.sleep(every)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--settled", type=float, default=30.0, help="µs per file that counts as settled")
    ap.add_argument("--budget", type=float, default=480.0, help="longest wait, seconds")
    ap.add_argument("--every", type=float, default=30.0, help="seconds between probes")
    ap.add_argument("--files", type=int, default=400)
    a = ap.parse_args()
    print(json.dumps(wait_settled(a.dir, a.settled, a.budget, a.every, a.files)))


if __name__ == "__main__":
    main()
