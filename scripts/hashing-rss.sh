#!/usr/bin/env bash
# Peak RSS of a pulse server while N registrations (default 200) arrive at once, each with
# a password to hash at the configured argon2 cost (issue 13 item 3; docs/security.md).
#
#   scripts/hashing-rss.sh PULSE_BINARY [N] [PORT] [EXTRA_ACCOUNTS_TOML]
#
# Starts PULSE_BINARY on 127.0.0.1:PORT (default 18350) with a fresh data directory, the
# default argon2 cost (19 MiB, 2 passes) and rate limits off, waits until it answers, fires
# N registrations at once (one thread each), then reads the kernel's peak resident set of
# the process (VmHWM in /proc/PID/status) and counts the answers by status. Prints
# "baseline_kib=... peak_kib=... statuses=..." and stops the server. WAIT_S (default 600)
# bounds the wait for answers; registrations still unanswered then count as "pending" (the
# peak is read anyway: VmHWM is the highest resident set the process ever had).
set -euo pipefail
bin=${1:?usage: $0 PULSE_BINARY [N] [PORT] [EXTRA_ACCOUNTS_TOML]}
n=${2:-200}
port=${3:-18350}
extra=${4:-}
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
cat >"$dir/pulse.toml" <<TOML
server_name = "localhost"
data_dir = "$dir/data"

[[listeners]]
bind = "127.0.0.1:$port"

[accounts]
argon2_memory_kib = 19456
argon2_iterations = 2
argon2_parallelism = 1
$extra

[rate_limits]
enabled = false

[log]
level = "warn"
TOML
"$bin" serve --config "$dir/pulse.toml" >"$dir/log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/_matrix/client/versions" >/dev/null 2>&1 && break
  sleep 0.1
done
baseline=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
statuses=$(python3 - "$port" "$n" <<'PY'
import json, sys, threading, urllib.request, urllib.error, collections
port, n = sys.argv[1], int(sys.argv[2])
start = threading.Barrier(n)
counts = collections.Counter()
lock = threading.Lock()
def register(i):
    body = json.dumps({"username": f"rss{i}", "password": f"password-{i}",
                       "auth": {"type": "m.login.dummy"}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/_matrix/client/v3/register",
                                 data=body, headers={"Content-Type": "application/json"})
    start.wait()
    try:
        status = urllib.request.urlopen(req, timeout=300).status
    except urllib.error.HTTPError as e:
        status = e.code
    except Exception as e:
        status = type(e).__name__
    with lock:
        counts[status] += 1
import os, time
threads = [threading.Thread(target=register, args=(i,), daemon=True) for i in range(n)]
for t in threads: t.start()
deadline = time.monotonic() + float(os.environ.get("WAIT_S", "600"))
for t in threads: t.join(max(0.0, deadline - time.monotonic()))
with lock:
    pending = n - sum(counts.values())
    if pending:
        counts["pending"] = pending
    print(",".join(f"{k}:{v}" for k, v in sorted(counts.items(), key=str)), flush=True)
os._exit(0)
PY
)
peak=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
echo "baseline_kib=$baseline peak_kib=$peak statuses=$statuses"
