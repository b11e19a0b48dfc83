#!/usr/bin/env bash
# Scheduler-core benchmark: full passes over 100,000 queued jobs on 64 nodes x 8 GPUs.
# Prints one JSON line.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release --locked -q -p ravel-core --example sched_bench "$@"
