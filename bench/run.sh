#!/usr/bin/env bash
# Builds the release binary, installs task-spooler if missing, and runs bench/run.py:
# Ravel's local figures plus the shared peer harness for Ravel and task-spooler, and their drains
# measured in pairs (bench/paired.py), in one run.
# Prints one JSON object and updates the table in bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v tsp >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq task-spooler) >&2 || echo "task-spooler not installed; peers skipped" >&2
  else
    echo "task-spooler (tsp) is not installed and this is not root; peers skipped" >&2
  fi
fi
cargo build --release --locked -p ravel >&2
exec python3 bench/run.py --ravel "$PWD/target/release/ravel" "$@"
