#!/usr/bin/env bash
# Interop test with matrix-js-sdk (the SDK Element is built on), pinned in js_sdk/package.json:
# startClient reaches PREPARED, room, invite, join, message, unread count, presence.
# npm installs into .interop-js/ at the repository root (ignored by git), once.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
work="$root/.interop-js"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "js-sdk interop: node and npm are needed; installing them from Debian" >&2
  apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
fi
mkdir -p "$work"
cp "$root/tests/interop/js_sdk/package.json" "$root/tests/interop/js_sdk/roundtrip.mjs" "$work/"
if [ ! -f "$work/node_modules/matrix-js-sdk/package.json" ] \
  || ! grep -q '"version": "43.0.0"' "$work/node_modules/matrix-js-sdk/package.json"; then
  if ! (cd "$work" && npm install --no-audit --no-fund --loglevel=error); then
    # Only a missing network is a reason to skip; say so plainly.
    if ! npm ping >/dev/null 2>&1; then
      echo "js-sdk interop: SKIPPED: the npm registry cannot be reached (no network)" >&2
      exit 0
    fi
    echo "js-sdk interop: npm install failed" >&2
    exit 1
  fi
fi
cargo build -q -p pulse
exec node "$work/roundtrip.mjs" "$root/target/debug/pulse"
