#!/usr/bin/env bash
# Builds the release binary and runs the local benchmark; prints one JSON object.
# Usage: bench/local.sh [--samples N] [--queued N] [--drain N]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p ravel >&2
exec python3 bench/local.py --ravel "$PWD/target/release/ravel" "$@"
