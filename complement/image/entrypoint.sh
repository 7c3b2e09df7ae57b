#!/bin/sh
# Starts Pulse in Complement mode. Runs again on the same filesystem when Complement restarts a
# committed blueprint container: the data directory (/data) is simply reopened.
set -eu
: "${SERVER_NAME:?Complement sets SERVER_NAME (hs1, hs2, ...)}"
export PULSE_SERVER_NAME="$SERVER_NAME"
# exec: pulse becomes PID 1 and gets SIGTERM from `docker stop` directly (it exits within a second).
exec /pulse/bin/pulse serve --config /pulse/pulse.toml
