#!/usr/bin/env bash
# Start Pulse with the embedded defaults (no config file): client API on
# http://127.0.0.1:8008, server name "localhost", data in ./pulse-data.
# Extra arguments go to `pulse serve` (e.g. --config pulse.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p pulse
exec target/release/pulse serve "$@"
