#!/usr/bin/env bash
# Where a submit's milliseconds go, beside task-spooler: wall time and whole-machine CPU per call
# (bench/percall.py, called as the peer harness calls a submit) of /bin/true, task-spooler's
# `tsp -V` and submit, a C client sending `ravel run`'s request (bench/floor/submit.c), and
# `ravel run` with the job held and run. Prints one JSON object. Needs cc; tsp if present.
# Usage: bench/floor.sh [RAVEL_BINARY] [CALLS]
set -euo pipefail
cd "$(dirname "$0")/.."
RAVEL=${1:-$PWD/target/release/ravel}
CALLS=${2:-300}
TMP=$(mktemp -d /tmp/ravel-floor.XXXXXX)
export RAVEL_HOME=$TMP/home TS_SOCKET=$TMP/ts.sock
trap '"$RAVEL" daemon stop --kill-jobs >/dev/null 2>&1 || true; command -v tsp >/dev/null && tsp -K >/dev/null 2>&1; rm -rf "$TMP"' EXIT
cc -O2 -o "$TMP/submit" bench/floor/submit.c
"$RAVEL" daemon start --cpus 8 >/dev/null
# The body `ravel run --hold -- true` sends from this environment (see commands/run.rs).
python3 - "$TMP/request" <<'PY'
import json, os, sys
env = [[k, v] for k, v in os.environ.items() if k != "RAVEL_TOKEN"]
spec = {"command": ["true"], "name": None, "cwd": os.getcwd(), "env": env, "gpus": 0, "cpus": 1, "priority": 0,
        "user": None, "gpu_mem_mib": None, "memory_tag": None, "after": [], "after_any": [], "retries": 0,
        "retry_delay_ms": None, "timeout_ms": None, "hold": True, "begin_at": None, "array_index": None,
        "array_limit": None, "uid": None, "gid": None, "umask": 18, "mem_mib": None, "notify": None, "notify_url": None}
body = json.dumps({"spec": spec}).encode()
head = (f"POST /v1/jobs HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: {len(body)}\r\n"
        "content-type: application/json\r\n\r\n").encode()
open(sys.argv[1], "wb").write(head + body)
PY
cmds=("true:=/bin/true")
command -v tsp >/dev/null && { tsp -S 8 >/dev/null; cmds+=("tsp -V" "tsp sh -c true"); }
cmds+=("c client, held:=$TMP/submit $RAVEL_HOME/ravel.sock $TMP/request"
       "ravel run --hold:=$RAVEL run -q --hold --gpus 0 -- sh -c true"
       "ravel run:=$RAVEL run -q --gpus 0 -- sh -c true")
python3 bench/percall.py --calls "$CALLS" "${cmds[@]}"
