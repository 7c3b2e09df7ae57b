#!/usr/bin/env bash
# Interop with a real Prometheus server (Debian's `prometheus`): start Pulse with
# [metrics] enabled, start Prometheus on a free port with a generated config scraping it
# every second, run a presence load (PUT /presence/.../status for several users), and query
# Prometheus' HTTP API until pulse_presence_updates_total has grown by the load, and the
# HTTP and storage series are there. Installs prometheus with apt-get when missing; exits 77
# (skipped, with the reason) only if it cannot be installed. About 10-20 s.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"

if ! command -v prometheus >/dev/null 2>&1; then
  echo "prometheus interop: installing Debian's prometheus" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq prometheus >/dev/null; }; then
    echo "SKIPPED prometheus interop: apt-get install prometheus failed" >&2
    exit 77
  fi
fi
command -v curl >/dev/null || { echo "prometheus interop: curl is needed" >&2; exit 1; }

cargo build -q -p pulse
bin="$root/target/debug/pulse"
work="$(mktemp -d /tmp/pulse-prometheus.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${keep:-0}" = 1 ]; then echo "logs kept in $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
client_port="$(free_port)"; metrics_port="$(free_port)"; prom_port="$(free_port)"

cat >"$work/pulse.toml" <<TOML
server_name = "localhost"
data_dir = "$work/data"
[[listeners]]
bind = "127.0.0.1:$client_port"
[accounts]
argon2_memory_kib = 8
argon2_iterations = 1
[rate_limits]
enabled = false
[presence]
status_per_second = 0.0
[federation]
enabled = false
[log]
level = "warn"
[metrics]
enabled = true
bind = "127.0.0.1:$metrics_port"
TOML
"$bin" serve --config "$work/pulse.toml" >"$work/pulse.log" 2>&1 &
pids+=($!)
base="http://127.0.0.1:$client_port"
for _ in $(seq 100); do curl -sf "$base/_matrix/client/versions" >/dev/null && break; sleep 0.1; done

cat >"$work/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: pulse
    static_configs:
      - targets: ["127.0.0.1:$metrics_port"]
YML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.log" 2>&1 &
pids+=($!)
prom="http://127.0.0.1:$prom_port"
for _ in $(seq 150); do curl -sf "$prom/-/ready" >/dev/null && break; sleep 0.2; done
curl -sf "$prom/-/ready" >/dev/null || { keep=1; echo "prometheus did not become ready" >&2; cat "$work/prometheus.log" >&2; exit 1; }

# The value of an instant query's first sample (empty when there is none yet).
query() {
  curl -sf --get "$prom/api/v1/query" --data-urlencode "query=$1" |
    python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")'
}
updates='sum(pulse_presence_updates_total{direction="in",via="local"})'
# Wait for the first scrape, then note the starting value.
before=""
for _ in $(seq 100); do before="$(query "$updates")"; [ -n "$before" ] && break; sleep 0.2; done
[ -n "$before" ] || { keep=1; echo "Prometheus never scraped Pulse" >&2; curl -s "$prom/api/v1/targets" >&2; exit 1; }
echo "prometheus interop: scraped; presence updates in = $before" >&2

# The load: 5 users, each switching presence 20 times (100 updates, about 5 s), in the
# background.
tokens=()
for i in 1 2 3 4 5; do
  t="$(curl -sf -XPOST "$base/_matrix/client/v3/register" \
        -d "{\"username\":\"load$i\",\"password\":\"pw-load-$i\",\"auth\":{\"type\":\"m.login.dummy\"}}" |
       python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')"
  tokens+=("$t")
done
load() {
  local i="$1" t="$2" states=(online unavailable)
  for n in $(seq 20); do
    curl -sf -XPUT -H "Authorization: Bearer $t" \
      "$base/_matrix/client/v3/presence/%40load$i%3Alocalhost/status" \
      -d "{\"presence\":\"${states[$((n % 2))]}\"}" >/dev/null
    sleep 0.2
  done
}
for i in 1 2 3 4 5; do load "$i" "${tokens[$((i - 1))]}" & pids+=($!); done

# While the load runs, Prometheus must see the counter move, and finally by all 100.
# "Moving" means a value strictly between the start and the end: seen mid-load.
seen_moving=0; after="$before"; midway=""
for _ in $(seq 150); do
  after="$(query "$updates")"
  if [ -n "$after" ] && python3 -c "import sys; a=float('$after'); b=float('$before'); sys.exit(0 if b < a < b + 100 else 1)"; then
    seen_moving=1; midway="$midway $after"
  fi
  if python3 -c "import sys; sys.exit(0 if float('${after:-0}') >= float('$before') + 100 else 1)"; then break; fi
  sleep 0.2
done
[ "$seen_moving" = 1 ] || { keep=1; echo "FAIL: Prometheus never saw pulse_presence_updates_total move ($before)" >&2; exit 1; }
python3 -c "import sys; sys.exit(0 if float('$after') >= float('$before') + 100 else 1)" ||
  { keep=1; echo "FAIL: presence updates went $before -> $after, expected +100" >&2; exit 1; }
echo "prometheus interop: presence updates in $before ->$midway -> $after" >&2

# Other families Prometheus must have ingested: per-route HTTP counts (a template, no user
# ID), latency histograms, transitions, storage and process series.
check() {
  local v; v="$(query "$1")"
  [ -n "$v" ] || { keep=1; echo "FAIL: no result for $1" >&2; exit 1; }
  echo "  $1 = $v" >&2
}
check 'sum(pulse_http_requests_total{route="/_matrix/client/v3/presence/{user_id}/status",method="PUT",status="200"})'
check 'histogram_quantile(0.9, sum by (le) (rate(pulse_http_request_duration_seconds_bucket[10s])))'
check 'pulse_presence_transitions_total{state="unavailable"}'
check 'pulse_storage_disk_bytes'
check 'process_resident_memory_bytes'
users="$(curl -sf --get "$prom/api/v1/query" --data-urlencode 'query=count(pulse_http_requests_total{route=~".*@.*"})' |
  python3 -c 'import json,sys; print(len(json.load(sys.stdin)["data"]["result"]))')"
[ "$users" = 0 ] || { keep=1; echo "FAIL: a route label carries a user ID" >&2; exit 1; }
echo "prometheus interop: ok" >&2
