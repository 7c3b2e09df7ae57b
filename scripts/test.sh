#!/usr/bin/env bash
# The test command: formatting, lints, unit and integration tests (which start the real
# binary), then the interop tests with matrix-nio and matrix-js-sdk. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets -- -D warnings
# Headless Chromium for the status page test (tests/status_page.rs skips, saying so, without it).
if ! command -v chromium >/dev/null 2>&1; then
  echo "== installing chromium (status page test)" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null; } ||
    echo "chromium could not be installed: the headless status page test will be skipped" >&2
fi
echo "== cargo test" >&2
cargo test --workspace
if [ -x tests/interop/run.sh ]; then
  echo "== interop (matrix-nio)" >&2
  tests/interop/run.sh
fi
if [ -x tests/interop/js_run.sh ]; then
  echo "== interop (matrix-js-sdk)" >&2
  tests/interop/js_run.sh
fi
if [ -x tests/interop/federation-synapse.sh ]; then
  echo "== interop (federation with Synapse)" >&2
  rc=0
  tests/interop/federation-synapse.sh || rc=$?
  # 77: skipped (this binary cannot federate); anything else but 0 is a failure.
  [ "$rc" = 0 ] || [ "$rc" = 77 ] || exit "$rc"
fi
if [ -x tests/interop/prometheus.sh ]; then
  echo "== interop (Prometheus scrapes /metrics)" >&2
  rc=0
  tests/interop/prometheus.sh || rc=$?
  # 77: skipped (prometheus could not be installed); anything else but 0 is a failure.
  [ "$rc" = 0 ] || [ "$rc" = 77 ] || exit "$rc"
fi
