#!/usr/bin/env bash
# Real end-to-end encryption with matrix-js-sdk and its Rust crypto (matrix-sdk-crypto-wasm, a
# dependency of the pinned js-sdk) on two federating Pulse servers: js_sdk/e2ee.mjs.
# npm installs into .interop-js/ at the repository root (ignored by git), once.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
work="$root/.interop-js"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "js-sdk e2ee interop: node and npm are needed; installing them from Debian" >&2
  apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
fi
mkdir -p "$work"
cp "$root/tests/interop/js_sdk/package.json" "$root/tests/interop/js_sdk/e2ee.mjs" "$work/"
if [ ! -f "$work/node_modules/matrix-js-sdk/package.json" ] \
  || ! grep -q '"version": "43.0.0"' "$work/node_modules/matrix-js-sdk/package.json"; then
  if ! (cd "$work" && npm install --no-audit --no-fund --loglevel=error); then
    # Only a missing network is a reason to skip; say so plainly.
    if ! npm ping >/dev/null 2>&1; then
      echo "js-sdk e2ee interop: SKIPPED: the npm registry cannot be reached (no network)" >&2
      exit 0
    fi
    echo "js-sdk e2ee interop: npm install failed" >&2
    exit 1
  fi
fi
cargo build -q -p pulse
exec node "$work/e2ee.mjs" "$root/target/debug/pulse"
