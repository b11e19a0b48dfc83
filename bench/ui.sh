#!/usr/bin/env bash
# Builds the release binary and times the web UI's job list over 100,000 jobs; prints one JSON object.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p ravel >&2
exec python3 bench/ui.py --ravel "$PWD/target/release/ravel" "$@"
