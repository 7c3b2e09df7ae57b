#!/usr/bin/env bash
# Pulse <-> Synapse federation on loopback: a Pulse user joins a Synapse room and a Synapse user
# joins a Pulse room, messages both ways (tests/interop/federation_synapse.py has the steps),
# then presence both ways and a restricted update withheld (tests/interop/presence_synapse.py).
#
#   tests/interop/federation-synapse.sh          # builds pulse (dev) unless PULSE_BINARY is set
#
# Both servers are named 127.0.0.1:PORT and serve federation over TLS with self-signed
# certificates; each trusts no certificate and allows loopback. Pulse's config uses the
# [federation] keys of issue 16 (verify_tls, ip_range_allowlist); a binary that does not document
# them cannot federate yet: the test then prints SKIPPED and exits 77 (FORCE=1 runs it anyway,
# without the [federation] section, to see how far it gets).
# Scratch files (configs, data, logs) in FED_WORK (default: a new temp dir, kept on failure).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=${FED_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/pulse-fed-synapse.XXXXXX")}
mkdir -p "$work"
export PYTHONDONTWRITEBYTECODE=1
log() { echo "federation-synapse.sh: $*" >&2; }

bin=${PULSE_BINARY:-}
if [ -z "$bin" ]; then
  (cd "$root" && cargo build -q -p pulse)
  bin=$root/target/debug/pulse
fi

federation_section=1
example=$("$bin" generate-config)
for key in verify_tls ip_range_allowlist; do
  if ! grep -qw -- "$key" <<<"$example"; then
    if [ "${FORCE:-0}" = 1 ]; then
      log "this pulse does not document [federation] $key: running without the [federation] section (FORCE=1)"
      federation_section=0
      break
    fi
    log "SKIPPED: this pulse does not document [federation] $key, so it cannot federate yet"
    exit 77
  fi
done

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Synapse first (its venv has signedjson, which the driver uses).
export SYNAPSE_DIR=$work/synapse
# Both servers keep their default room version (12, as Synapse 1.163's): the driver checks
# it, and runs a version-10 case too. SYNAPSE_ROOM_VERSION, if set, still changes Synapse's.
"$here/synapse.sh" start
pulse_pid=
cleanup() {
  if [ -n "$pulse_pid" ]; then kill "$pulse_pid" 2>/dev/null; wait "$pulse_pid" 2>/dev/null || true; fi
  pulse_pid=
  "$here/synapse.sh" stop || true
}
trap cleanup EXIT

fed_port=$(free_port)
client_port=$(free_port)
secret=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
mkdir -p "$work/pulse"
cat >"$work/pulse/pulse.toml" <<EOF
server_name = "127.0.0.1:$fed_port"
data_dir = "$work/pulse/data"

# Client API, plain HTTP, for the driver.
[[listeners]]
bind = "127.0.0.1:$client_port"

# Federation: TLS, certificate self-signed at start.
[[listeners]]
bind = "127.0.0.1:$fed_port"
[listeners.tls]
extra_names = ["127.0.0.1"]

[registration]
enabled = true
shared_secret = "$secret"

[accounts]
argon2_memory_kib = 8
argon2_iterations = 1

[rate_limits]
enabled = false

[log]
level = "info,ruma_state_res=warn"
EOF
if [ "$federation_section" = 1 ]; then
  cat >>"$work/pulse/pulse.toml" <<'EOF'

[federation]
enabled = true
# Synapse's certificate is self-signed, and it lives on loopback.
verify_tls = false
ip_range_allowlist = ["127.0.0.0/8"]
EOF
fi

"$bin" serve --config "$work/pulse/pulse.toml" >"$work/pulse/log" 2>&1 &
pulse_pid=$!
for _ in $(seq 1 120); do
  curl -ksf -m 1 "http://127.0.0.1:$client_port/_matrix/client/versions" >/dev/null 2>&1 && break
  kill -0 "$pulse_pid" 2>/dev/null || { tail -n 20 "$work/pulse/log" >&2; log "pulse exited during start-up"; exit 1; }
  sleep 0.25
done
cat >"$work/pulse/env.json" <<EOF
{"SYNAPSE_SERVER_NAME": "127.0.0.1:$fed_port",
 "SYNAPSE_CLIENT_URL": "http://127.0.0.1:$client_port",
 "SYNAPSE_FEDERATION_URL": "https://127.0.0.1:$fed_port",
 "SYNAPSE_SHARED_SECRET": "$secret"}
EOF
log "Pulse 127.0.0.1:$fed_port (client http://127.0.0.1:$client_port), Synapse $(. "$SYNAPSE_DIR/env"; echo "$SYNAPSE_SERVER_NAME")"

venv_python=${PULSE_INTEROP_CACHE:-$HOME/.cache/pulse-interop}/synapse-venv/bin/python
cd "$here"
rc=0
# The drivers, in order, on the same two servers (FED_DRIVERS picks some): joins, messages and
# invites; then presence (presence_synapse.py, issue 17).
for driver in ${FED_DRIVERS:-federation_synapse.py presence_synapse.py}; do
  log "running $driver"
  "$venv_python" "$driver" "$work/pulse/env.json" "$SYNAPSE_DIR/env.json" || { rc=$?; break; }
done
trap - EXIT
cleanup
if [ "$rc" = 0 ]; then
  [ -z "${FED_WORK:-}" ] && rm -rf "$work"
  exit 0
fi
log "FAILED; logs: $work/pulse/log, $SYNAPSE_DIR/homeserver.log"
exit 1
