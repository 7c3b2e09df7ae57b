#!/usr/bin/env bash
# Interop test with an independent client library: matrix-nio (Python) drives a real
# Pulse binary: register -> create room -> invite -> join -> send -> sync sees it,
# user directory and message search, then restart with kill -9 and check the message (and
# the directory and search index) are still there. Then js_e2ee.sh.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/.venv-interop"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import nio" 2>/dev/null; then
  "$venv/bin/pip" install -q "matrix-nio==0.26.0"
fi
cargo build -q -p pulse
"$venv/bin/python" "$root/tests/interop/nio_roundtrip.py" "$root/target/debug/pulse"
# Real end-to-end encryption: matrix-js-sdk's Rust crypto on two federating Pulses.
echo "== interop (matrix-js-sdk Rust crypto, two Pulses)" >&2
"$root/tests/interop/js_e2ee.sh"
