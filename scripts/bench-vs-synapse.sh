#!/usr/bin/env bash
# Pulse side by side with Synapse: the same pulse-bench scenarios against both servers,
# on loopback, alternating servers, each server on a fresh database per run.
#
#   scripts/bench-vs-synapse.sh                    # everything (takes a long while)
#   scripts/bench-vs-synapse.sh --quick            # smallest size only, fewer idle long-polls
#   scripts/bench-vs-synapse.sh --servers pulse --scenarios wakeup,idle
#   scripts/bench-vs-synapse.sh --postgres         # Synapse on PostgreSQL instead of SQLite
#
# Options:
#   --servers LIST     pulse,synapse (default both; order alternates per size)
#   --scenarios LIST   fanout,wakeup,idle,startup,federation (default all)
#   --sizes LIST       users:rate pairs for presence-fanout (default 200:20,2000:100,10000:500)
#   --fed-sizes LIST   users:rate pairs for federation-presence: two servers of each kind,
#                      half the users on each, updates by users of the first (default 200:20)
#   --idle LIST        idle long-poll counts for sync-wakeup and idle-connections (default 1000,10000)
#   --duration S       seconds of presence updates per fanout run (default 30)
#   --events N         messages for the start-up scenario (default 100000)
#   --quick            --sizes 200:20 --idle 1000 --duration 20 --events 20000
#   --postgres         Synapse on PostgreSQL (needs initdb/pg_ctl; runs it as user postgres)
#   --results DIR      where JSON results go (default docs/benchmarks/results); files are
#                      named after scenario, server and size, so a later run replaces
#                      only what it measured
#   --clean            delete DIR's JSON results first
#   --no-docs          don't regenerate docs/benchmarks.md tables and plots
#   --no-build         use the release binaries already in target/ (e.g. while the tree
#                      doesn't build)
#
# Environment: SERVER_CPUS / BENCH_CPUS (taskset lists, default 0 and 1 on 2+ cores),
# SYNAPSE_PORT (18008), PULSE_PORT (18009), FED_PORT_BASE (18100: the federation pairs use
# the five ports from it), BENCH_WORK (scratch, default target/bench-vs-synapse),
# PULSE_BIN (the pulse binary, default target/release/pulse: e.g. an older build kept aside,
# to measure before and after a change in interleaved runs; implies --no-build for it),
# SYNAPSE_STOP_P99_MS (default 30000: Synapse is not run at larger sizes once its fanout p99
# passes this or it delivers under 90% or it falls 20% behind the update rate).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
INVOCATION="scripts/bench-vs-synapse.sh $*"

SERVERS=pulse,synapse
SCENARIOS=fanout,wakeup,idle,startup,federation
SIZES=200:20,2000:100,10000:500
FED_SIZES=200:20
IDLE=1000,10000
DURATION=30
EVENTS=100000
POSTGRES=0
RESULTS=docs/benchmarks/results
CLEAN=0
DOCS=1
BUILD=1
while [ $# -gt 0 ]; do
    case "$1" in
        --servers) SERVERS=$2; shift ;;
        --scenarios) SCENARIOS=$2; shift ;;
        --sizes) SIZES=$2; shift ;;
        --fed-sizes) FED_SIZES=$2; shift ;;
        --idle) IDLE=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --events) EVENTS=$2; shift ;;
        --quick) SIZES=200:20; IDLE=1000; DURATION=20; EVENTS=20000 ;;
        --postgres) POSTGRES=1 ;;
        --results) RESULTS=$2; shift ;;
        --clean) CLEAN=1 ;;
        --no-docs) DOCS=0 ;;
        --no-build) BUILD=0 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

WORK=$(realpath -m "${BENCH_WORK:-target/bench-vs-synapse}")
# Paths shown in recorded commands: relative to the repository where possible.
rel() { realpath -m --relative-to="$ROOT" "$1"; }
VENV=$ROOT/.venv-synapse
SYNAPSE_PIN='matrix-synapse==1.163.*'
SYNAPSE_PORT=${SYNAPSE_PORT:-18008}
PULSE_PORT=${PULSE_PORT:-18009}
SYNAPSE_STOP_P99_MS=${SYNAPSE_STOP_P99_MS:-30000}
SECRET=pulse-bench-shared-secret
# Synapse reads its version from git beside its module; the venv sits in our repository, so
# keep git from finding our commit there.
SYNAPSE_ENV=(env "GIT_CEILING_DIRECTORIES=$ROOT")
BENCH=$ROOT/target/release/pulse-bench
PULSE=$(realpath -m "${PULSE_BIN:-$ROOT/target/release/pulse}")
mkdir -p "$WORK" "$RESULTS"
[ "$CLEAN" = 1 ] && rm -f "$RESULTS"/*.json

# Server and load generator on different cores where there are two.
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    SERVER_CPUS=${SERVER_CPUS:-0}
    BENCH_CPUS=${BENCH_CPUS:-1}
    ON_SERVER_CPUS=(taskset -c "$SERVER_CPUS")
    ON_BENCH_CPUS=(taskset -c "$BENCH_CPUS")
else
    ON_SERVER_CPUS=()
    ON_BENCH_CPUS=()
fi
# 10,000 long-polls need as many sockets on each side.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

has() { case ",$1," in *",$2,"*) return 0 ;; *) return 1 ;; esac; }
log() { printf '\n== %s  %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
compilers() { pgrep -c -x 'rustc|cc1|cc1plus|ld' 2>/dev/null || true; }

SERVER_PID=
SERVER_URL=
PULSE_NOTE=
SYNAPSE_NOTE=
PG_DIR=
FED_PIDS=()
cleanup() {
    [ -n "$SERVER_PID" ] && stop_server
    [ ${#FED_PIDS[@]} -gt 0 ] && stop_pair
    [ -n "$PG_DIR" ] && su postgres -c "pg_ctl -D '$PG_DIR' -m fast stop" >/dev/null 2>&1 || true
}
trap cleanup EXIT

wait_versions() { # url seconds
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        curl -fsS -m 1 "$1/_matrix/client/versions" >/dev/null 2>&1 && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

stop_server() {
    local i
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

# ---------------------------------------------------------------- Synapse
setup_synapse() {
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating $VENV"
        python3 -m venv "$VENV"
    fi
    local extra=""
    [ "$POSTGRES" = 1 ] && extra="[postgres]"
    if ! "$VENV/bin/python" -c 'import synapse, sys; sys.exit(0 if synapse.__version__.startswith("1.163.") else 1)' 2>/dev/null \
        || { [ "$POSTGRES" = 1 ] && ! "$VENV/bin/python" -c 'import psycopg2' 2>/dev/null; }; then
        log "installing $SYNAPSE_PIN$extra from PyPI"
        "$VENV/bin/pip" install -q "matrix-synapse$extra==1.163.*"
    fi
    SYNAPSE_VERSION=$("${SYNAPSE_ENV[@]}" "$VENV/bin/python" -c 'import synapse; print(synapse.__version__)')
    local db=SQLite
    [ "$POSTGRES" = 1 ] && db="PostgreSQL $(su postgres -c 'postgres --version' 2>/dev/null | awk '{print $NF}')"
    SYNAPSE_NOTE="Synapse $SYNAPSE_VERSION on $db, Python $("$VENV/bin/python" -c 'import platform; print(platform.python_version())'), one process"
}

start_postgres() { # fresh cluster under $1, database "synapse"
    PG_DIR=$1/pg
    mkdir -p "$PG_DIR" && chown postgres "$1" "$PG_DIR" 2>/dev/null || true
    su postgres -c "initdb -D '$PG_DIR' -E UTF8 --locale=C -A trust" >/dev/null
    su postgres -c "pg_ctl -D '$PG_DIR' -o '-p 15432 -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off' -l '$PG_DIR/log' -w start" >/dev/null
    local pg_pid
    pg_pid=$(head -1 "$PG_DIR/postmaster.pid")
    # Keep PostgreSQL on the server's cores too.
    [ ${#ON_SERVER_CPUS[@]} -gt 0 ] && for p in $(pgrep -P "$pg_pid") "$pg_pid"; do taskset -pc "$SERVER_CPUS" "$p" >/dev/null; done
    su postgres -c "createdb -h 127.0.0.1 -p 15432 -T template0 -E UTF8 --lc-collate=C --lc-ctype=C synapse"
}

write_synapse_config() { # dir
    local d=$1 db
    if [ "$POSTGRES" = 1 ]; then
        db="  name: psycopg2
  args:
    user: postgres
    database: synapse
    host: 127.0.0.1
    port: 15432
    cp_min: 5
    cp_max: 10"
    else
        db="  name: sqlite3
  args:
    database: $d/homeserver.db"
    fi
    local hi="{per_second: 1000000, burst_count: 1000000}"
    cat >"$d/homeserver.yaml" <<EOF
# Generated by scripts/bench-vs-synapse.sh: loopback only, every rate limit off.
server_name: localhost
pid_file: $d/homeserver.pid
public_baseurl: http://127.0.0.1:$SYNAPSE_PORT/
listeners:
  - port: $SYNAPSE_PORT
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client, federation]
        compress: false
database:
$db
log_config: $d/log.yaml
media_store_path: $d/media_store
signing_key_path: $d/signing.key
trusted_key_servers: []
suppress_key_server_warning: true
federation_domain_whitelist: []
report_stats: false
enable_metrics: false
url_preview_enabled: false
macaroon_secret_key: "$(head -c 24 /dev/urandom | base64)"
form_secret: "$(head -c 24 /dev/urandom | base64)"
registration_shared_secret: "$SECRET"
enable_registration: true
enable_registration_without_verification: true
# Cheap password hashing, as Pulse gets (argon2 8 KiB, 1 iteration): setup is not what is measured.
bcrypt_rounds: 4
presence:
  enabled: true
rc_message: $hi
rc_registration: $hi
rc_registration_token_validity: $hi
rc_login:
  address: $hi
  account: $hi
  failed_attempts: $hi
rc_admin_redaction: $hi
rc_joins:
  local: $hi
  remote: $hi
rc_joins_per_room: $hi
rc_3pid_validation: $hi
rc_invites:
  per_room: $hi
  per_user: $hi
  per_issuer: $hi
rc_third_party_invite: $hi
rc_media_create: $hi
rc_presence:
  per_user: $hi
rc_delayed_event_mgmt: $hi
rc_room_creation: $hi
rc_reports: $hi
rc_user_directory: $hi
rc_profile: $hi
rc_key_requests: $hi
rc_federation:
  window_size: 1000
  sleep_limit: 1000000
  sleep_delay: 0
  reject_limit: 1000000
  concurrent: 1000000
EOF
    cat >"$d/log.yaml" <<EOF
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: $d/homeserver.log
root:
  level: WARNING
  handlers: [file]
disable_existing_loggers: false
EOF
}

start_synapse() { # fresh database every time
    local d=$WORK/synapse
    [ -n "$PG_DIR" ] && { su postgres -c "pg_ctl -D '$PG_DIR' -m fast stop" >/dev/null 2>&1 || true; PG_DIR=; }
    rm -rf "$d" && mkdir -p "$d"
    [ "$POSTGRES" = 1 ] && start_postgres "$d"
    write_synapse_config "$d"
    "$VENV/bin/python" -m synapse.app.homeserver -c "$d/homeserver.yaml" --generate-keys >/dev/null
    "${ON_SERVER_CPUS[@]}" "${SYNAPSE_ENV[@]}" "$VENV/bin/python" -m synapse.app.homeserver -c "$d/homeserver.yaml" >"$d/stdout.log" 2>&1 &
    SERVER_PID=$!
    SERVER_URL=http://127.0.0.1:$SYNAPSE_PORT
    wait_versions "$SERVER_URL" 180 || { tail -30 "$d/stdout.log" "$d/homeserver.log" >&2; echo "Synapse did not start" >&2; exit 1; }
}

restart_synapse_timed() { # keeps the database; prints the start timestamp
    local d=$WORK/synapse
    stop_server
    START_NS=$(date +%s%N)
    "${ON_SERVER_CPUS[@]}" "${SYNAPSE_ENV[@]}" "$VENV/bin/python" -m synapse.app.homeserver -c "$d/homeserver.yaml" >>"$d/stdout.log" 2>&1 &
    SERVER_PID=$!
}

# ---------------------------------------------------------------- Pulse
setup_pulse() {
    if [ "$BUILD" = 1 ] && [ -z "${PULSE_BIN:-}" ]; then
        log "building pulse and pulse-bench (release)"
        cargo build --release --quiet -p pulse -p bench
    fi
    [ -x "$PULSE" ] || { echo "no $PULSE: build it (cargo build --release -p pulse)" >&2; exit 1; }
    local dirty=""
    git diff --quiet HEAD -- crates Cargo.toml Cargo.lock 2>/dev/null || dirty=" + uncommitted changes"
    PULSE_NOTE="$("$PULSE" --version), binary built $(date -u -r "$PULSE" '+%Y-%m-%d %H:%M UTC'); tree when measured: $(git rev-parse --short HEAD)$dirty"
    [ -n "${PULSE_BIN:-}" ] && PULSE_NOTE="$("$PULSE" --version), binary $PULSE_BIN built $(date -u -r "$PULSE" '+%Y-%m-%d %H:%M UTC')"
    PULSE_VERSION=$("$PULSE" --version 2>/dev/null || echo "pulse ?")
}

start_pulse() {
    local d=$WORK/pulse
    rm -rf "$d" && mkdir -p "$d"
    cat >"$d/pulse.toml" <<EOF
# Generated by scripts/bench-vs-synapse.sh: loopback only, rate limits off, cheap hashing.
server_name = "localhost"
data_dir = "$d/data"

[[listeners]]
bind = "127.0.0.1:$PULSE_PORT"

[registration]
enabled = true
shared_secret = "$SECRET"

[accounts]
argon2_memory_kib = 8
argon2_iterations = 1

[rate_limits]
enabled = false

[presence]
# No per-user limit on PUT /presence/.../status (Synapse gets rc_presence off).
status_per_second = 0.0

[log]
level = "warn"
EOF
    "${ON_SERVER_CPUS[@]}" "$PULSE" serve --config "$d/pulse.toml" >"$d/stdout.log" 2>&1 &
    SERVER_PID=$!
    SERVER_URL=http://127.0.0.1:$PULSE_PORT
    wait_versions "$SERVER_URL" 60 || { tail -30 "$d/stdout.log" >&2; echo "Pulse did not start" >&2; exit 1; }
}

restart_pulse_timed() {
    local d=$WORK/pulse
    stop_server
    START_NS=$(date +%s%N)
    "${ON_SERVER_CPUS[@]}" "$PULSE" serve --config "$d/pulse.toml" >>"$d/stdout.log" 2>&1 &
    SERVER_PID=$!
}

# ---------------------------------------------------------------- federation pairs
# Two servers of one kind federating over loopback TLS: A (sender) is 127.0.0.1:FED_A; B's
# server name is 127.0.0.1:FED_B_NAME, where pulse-bench's recording proxy listens during the
# run and forwards to B's real federation listener FED_B (so every transaction A sends B is
# counted). Client APIs on plain HTTP: FED_A_CLIENT, FED_B_CLIENT.
FED_PORT_BASE=${FED_PORT_BASE:-18100}
FED_A=$FED_PORT_BASE FED_A_CLIENT=$((FED_PORT_BASE + 1))
FED_B_NAME=$((FED_PORT_BASE + 2)) FED_B=$((FED_PORT_BASE + 3)) FED_B_CLIENT=$((FED_PORT_BASE + 4))

stop_pair() {
    local p i
    for p in "${FED_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${FED_PIDS[@]}"; do
        for ((i = 0; i < 300; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    FED_PIDS=()
}

wait_url() { # url pid seconds
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        curl -fsS -m 1 "$1/_matrix/client/versions" >/dev/null 2>&1 && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

start_pulse_one() { # dir name_port fed_port client_port; sets LAST_PID
    local d=$1
    rm -rf "$d" && mkdir -p "$d"
    cat >"$d/pulse.toml" <<EOF
# Generated by scripts/bench-vs-synapse.sh (federation pair): loopback, rate limits off.
server_name = "127.0.0.1:$2"
data_dir = "$d/data"

[[listeners]]
bind = "127.0.0.1:$4"

[[listeners]]
bind = "127.0.0.1:$3"
[listeners.tls]
extra_names = ["127.0.0.1"]

[registration]
enabled = true
shared_secret = "$SECRET"

[accounts]
argon2_memory_kib = 8
argon2_iterations = 1

[rate_limits]
enabled = false

[presence]
status_per_second = 0.0

[log]
level = "warn"

[federation]
enabled = true
verify_tls = false
ip_range_allowlist = ["127.0.0.0/8"]
EOF
    "${ON_SERVER_CPUS[@]}" "$PULSE" serve --config "$d/pulse.toml" >"$d/stdout.log" 2>&1 &
    LAST_PID=$!
    FED_PIDS+=("$LAST_PID")
    wait_url "http://127.0.0.1:$4" "$LAST_PID" 60 || { tail -30 "$d/stdout.log" >&2; echo "Pulse did not start" >&2; exit 1; }
}

start_pulse_pair() {
    start_pulse_one "$WORK/fed-pulse-a" "$FED_A" "$FED_A" "$FED_A_CLIENT"; FED_A_PID=$LAST_PID
    start_pulse_one "$WORK/fed-pulse-b" "$FED_B_NAME" "$FED_B" "$FED_B_CLIENT"; FED_B_PID=$LAST_PID
}

start_synapse_one() { # dir name_port fed_port client_port; sets LAST_PID
    local d=$1
    rm -rf "$d" && mkdir -p "$d"
    SYNAPSE_PORT=$4 write_synapse_config "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=127.0.0.1" \
        -addext "subjectAltName=IP:127.0.0.1" -keyout "$d/tls.key" -out "$d/tls.crt" >/dev/null 2>&1
    # The single-server config, made to federate: an IP-literal name, a TLS federation
    # listener, self-signed peers, loopback allowed (as tests/interop/synapse.sh does).
    "$VENV/bin/python" - "$d" "127.0.0.1:$2" "$3" "$4" <<'PY'
import sys, yaml
d, name, fed, client = sys.argv[1:]
p = d + "/homeserver.yaml"
c = yaml.safe_load(open(p))
c["server_name"] = name
c["public_baseurl"] = f"http://127.0.0.1:{client}/"
c["listeners"] = [
    {"port": int(fed), "bind_addresses": ["127.0.0.1"], "type": "http", "tls": True,
     "resources": [{"names": ["federation"], "compress": False}]},
    {"port": int(client), "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
     "resources": [{"names": ["client"], "compress": False}]},
]
c["tls_certificate_path"] = d + "/tls.crt"
c["tls_private_key_path"] = d + "/tls.key"
c["federation_verify_certificates"] = False
c["federation_ip_range_blacklist"] = []
c["ip_range_whitelist"] = ["127.0.0.0/8"]
c.pop("federation_domain_whitelist", None)
yaml.safe_dump(c, open(p, "w"))
PY
    "$VENV/bin/python" -m synapse.app.homeserver -c "$d/homeserver.yaml" --generate-keys >/dev/null
    "${ON_SERVER_CPUS[@]}" "${SYNAPSE_ENV[@]}" "$VENV/bin/python" -m synapse.app.homeserver -c "$d/homeserver.yaml" >"$d/stdout.log" 2>&1 &
    LAST_PID=$!
    FED_PIDS+=("$LAST_PID")
    wait_url "http://127.0.0.1:$4" "$LAST_PID" 180 || { tail -30 "$d/stdout.log" "$d/homeserver.log" >&2; echo "Synapse did not start" >&2; exit 1; }
}

start_synapse_pair() {
    start_synapse_one "$WORK/fed-synapse-a" "$FED_A" "$FED_A" "$FED_A_CLIENT"; FED_A_PID=$LAST_PID
    start_synapse_one "$WORK/fed-synapse-b" "$FED_B_NAME" "$FED_B" "$FED_B_CLIENT"; FED_B_PID=$LAST_PID
}

# ---------------------------------------------------------------- runs
bench() { # label outfile args...: one pulse-bench run against the running server
    local label=$1 out=$2
    shift 2
    log "$label: pulse-bench $* (compilers running: $(compilers), load: $(cut -d' ' -f1-3 /proc/loadavg))"
    local note=$PULSE_NOTE
    [ "$label" = synapse ] && note=$SYNAPSE_NOTE
    "${ON_BENCH_CPUS[@]}" "$BENCH" --url "$SERVER_URL" --label "$label" --server-pid "$SERVER_PID" --out "$out" --note "$note" "$@"
}

# Synapse stops at the first size it can't keep up with.
synapse_kept_up() { # result file
    [ -f "$1" ] || return 1
    jq -e --argjson p99 "$SYNAPSE_STOP_P99_MS" \
        '.results.delivery_ratio >= 0.9 and .results.achieved_rate >= 0.8 * .results.target_rate and .results.delivery_ms.p99 <= $p99' \
        "$1" >/dev/null
}

order_for() { # alternate which server goes first, per index
    if [ $(($1 % 2)) = 0 ]; then echo "pulse synapse"; else echo "synapse pulse"; fi
}

has "$SERVERS" synapse && setup_synapse
has "$SERVERS" pulse && setup_pulse
[ -x "$BENCH" ] || cargo build --release -p bench

SYNAPSE_OK=1
i=0
if has "$SCENARIOS" fanout; then
    for size in ${SIZES//,/ }; do
        users=${size%%:*} rate=${size##*:}
        for s in $(order_for $i); do
            has "$SERVERS" "$s" || continue
            if [ "$s" = synapse ] && [ "$SYNAPSE_OK" = 0 ]; then
                log "synapse: skipping $users users ($size): it did not keep up at a smaller size"
                continue
            fi
            out=$RESULTS/presence-fanout-$s-$users-$rate.json
            "start_$s"
            bench "$s" "$out" presence-fanout --users "$users" --rate "$rate" --duration "$DURATION" \
                --concurrency 32 || echo "presence-fanout against $s at $users users failed" >&2
            stop_server
            if [ "$s" = synapse ] && ! synapse_kept_up "$out"; then SYNAPSE_OK=0; fi
        done
        i=$((i + 1))
    done
fi

if has "$SCENARIOS" wakeup || has "$SCENARIOS" idle; then
    for k in ${IDLE//,/ }; do
        for s in $(order_for $i); do
            has "$SERVERS" "$s" || continue
            if has "$SCENARIOS" wakeup; then
                "start_$s"
                bench "$s" "$RESULTS/sync-wakeup-$s-$k.json" sync-wakeup --idle "$k" --sends 200 --concurrency 32 \
                    || echo "sync-wakeup against $s with $k idle failed" >&2
                stop_server
            fi
            if has "$SCENARIOS" idle; then
                "start_$s"
                bench "$s" "$RESULTS/idle-connections-$s-$k.json" idle-connections --conns "$k" --hold-secs 30 --concurrency 32 \
                    || echo "idle-connections against $s with $k failed" >&2
                stop_server
            fi
        done
        i=$((i + 1))
    done
fi

if has "$SCENARIOS" startup; then
    for s in $(order_for $i); do
        has "$SERVERS" "$s" || continue
        "start_$s"
        tok=$(rel "$WORK/$s-token.json")
        if bench "$s" "$RESULTS/populate-$s-$EVENTS.json" populate --events "$EVENTS" --token-file "$tok" --concurrency 16; then
            sleep 2
            "restart_${s}_timed"
            # No --server-pid: the new process is measured from its start instead.
            log "$s: timing start-up on $EVENTS events"
            note=$PULSE_NOTE
            [ "$s" = synapse ] && note=$SYNAPSE_NOTE
            "${ON_BENCH_CPUS[@]}" "$BENCH" --url "$SERVER_URL" --label "$s" --note "$note" --out "$RESULTS/startup-$s-$EVENTS.json" \
                wait-ready --since-unix-ns "$START_NS" --token-file "$tok" --events-in-db "$EVENTS" \
                || echo "start-up timing of $s failed" >&2
        else
            echo "populate against $s failed" >&2
        fi
        stop_server
    done
fi

if has "$SCENARIOS" federation; then
    for size in ${FED_SIZES//,/ }; do
        users=${size%%:*} rate=${size##*:}
        for s in $(order_for $i); do
            has "$SERVERS" "$s" || continue
            "start_${s}_pair"
            note=$PULSE_NOTE
            [ "$s" = synapse ] && note=$SYNAPSE_NOTE
            log "$s pair: pulse-bench federation-presence --users $users --rate $rate (load: $(cut -d' ' -f1-3 /proc/loadavg))"
            "${ON_BENCH_CPUS[@]}" "$BENCH" --url "http://127.0.0.1:$FED_A_CLIENT" --label "$s" \
                --server-pid "$FED_A_PID" --out "$RESULTS/federation-presence-$s-$users-$rate.json" \
                --note "$note (two servers)" \
                federation-presence --url-b "http://127.0.0.1:$FED_B_CLIENT" --server-pid-b "$FED_B_PID" \
                --proxy-listen "127.0.0.1:$FED_B_NAME" --proxy-upstream "https://127.0.0.1:$FED_B" \
                --users "$users" --rate "$rate" --duration "$DURATION" --concurrency 16 \
                || echo "federation-presence between two $s failed" >&2
            stop_pair
        done
        i=$((i + 1))
    done
fi

if [ "$DOCS" = 1 ]; then
    log "plots and tables"
    "$BENCH" plot --results "$RESULTS" --out-dir docs/benchmarks
    "$BENCH" report --results "$RESULTS" --doc docs/benchmarks.md
fi
log "done: $INVOCATION (results in $RESULTS)"
