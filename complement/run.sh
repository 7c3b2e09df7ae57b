#!/usr/bin/env bash
# Runs Complement, the Matrix black-box test suite, against the current tree.
#
#   complement/run.sh                    full run: ./tests/... ; rewrites complement/results.jsonl
#   complement/run.sh --ci               CI subset (ci-subset.txt); exits 1 on a regression against
#                                        the committed complement/results.jsonl, records new passes
#   complement/run.sh [go test args]     e.g. -run 'TestPresence' ./tests/csapi ; results are merged
#                                        into complement/results.jsonl (by test name)
#
# Options (before the go test args): --no-build (reuse the image), --ci.
# Environment: PULSE_BINARY=path (use this binary instead of building), PULSE_PROFILE=release|dev
# (cargo profile, default dev), COMPLEMENT_SRC=dir (your own Complement checkout, used when the
# Go module proxy does not serve the pinned version; see below),
# plus any COMPLEMENT_* variable Complement reads (e.g. COMPLEMENT_DEBUG=1,
# COMPLEMENT_ALWAYS_PRINT_SERVER_LOGS=1), PULSE_COMPLEMENT_IMAGE=name:tag (the image's tag, default
# pulse-complement:dev).
# Runs on one machine take turns (a lock on /tmp/pulse-complement.lock): Complement's containers
# and networks of two simultaneous runs on one Docker daemon knock each other over.
#
# Exit status: 0 no regression; 1 regression against the baseline; 2 the run could not be done.
# Everything the run makes goes to complement/.work (git-ignored): logs.jsonl is the raw
# `go test -json` output, including the homeservers' logs for failed tests.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
work=$here/.work
image=${PULSE_COMPLEMENT_IMAGE:-pulse-complement:dev}
mkdir -p "$work"

ci=0
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --ci) ci=1; shift ;;
    --no-build) build=0; shift ;;
    --) shift; break ;;
    *) break ;;
  esac
done

log() { echo "complement/run.sh: $*" >&2; }
die() { log "$*"; exit 2; }

if command -v flock >/dev/null 2>&1; then
  exec 9>/tmp/pulse-complement.lock
  flock -n 9 || { log "another Complement run holds /tmp/pulse-complement.lock; waiting"; flock 9; }
fi

# ---------------------------------------------------------------------------------------------
# 1. Docker engine. Debian's docker.io (20.10, API 1.41) is enough: Complement negotiates the API
# version. Findings on this kind of machine (Debian 12 VM, kernel 6.x, cgroup v1, root, no
# systemd): dockerd starts as is with the overlay2 storage driver, the cgroupfs cgroup driver and
# iptables (nf_tables backend) NAT, which Complement needs (published ports, container -> host
# traffic for its mock federation servers via host.docker.internal = host-gateway). If overlay2
# is refused (e.g. /var/lib/docker on overlayfs), we retry with vfs (slow but always works).
docker_ready() { docker version --format '{{.Server.APIVersion}}' >/dev/null 2>&1; }

start_dockerd() {
  local driver=$1
  log "starting dockerd${driver:+ (storage driver $driver)}"
  # setsid + redirections: dockerd outlives this script and holds none of its output pipes,
  # nor fd 9 (the run lock: a dockerd holding it would block every later run for good).
  setsid dockerd --log-level=warn ${driver:+--storage-driver=$driver} \
    </dev/null >"$work/dockerd.log" 2>&1 9>&- &
  local pid=$!
  for _ in $(seq 1 60); do
    docker_ready && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.5
  done
  return 1
}

ensure_docker() {
  docker_ready && return 0
  if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
    log "installing docker.io (Debian)"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq docker.io; } >"$work/apt.log" 2>&1 \
      || { cat "$work/apt.log" >&2; die "cannot install docker.io"; }
  fi
  start_dockerd "" && return 0
  log "dockerd did not come up with the default storage driver; $(tail -n 3 "$work/dockerd.log" | tr '\n' ' ')"
  if pgrep -x dockerd >/dev/null; then
    die "a dockerd is running but does not answer; see $work/dockerd.log"
  fi
  start_dockerd vfs || die "cannot start dockerd; see $work/dockerd.log"
}

# ---------------------------------------------------------------------------------------------
# 2. Complement as a Go module pinned in complement/go.mod (GOTOOLCHAIN=local: never download a
# toolchain). Its source comes from, in order:
#   a. the Go module proxy (the source of record);
#   b. $COMPLEMENT_SRC: a git clone of github.com/matrix-org/complement (the top level of its own
#      repository: the pinned commit is exported with `git archive`) or a plain source tree with a
#      COMMIT file naming the pinned commit;
#   c. ../shared/vendor/complement beside the repository (a plain tree with a COMMIT file; read-only
#      in CI).
# A directory counts as a git clone only if it is the top level of its own repository: a plain
# tree that merely sits inside some other repository is not one. Whatever the source, it is copied
# to complement/.work/complement-src (writable; go needs nothing else) and used through an
# alternate go.mod (-modfile) with a `replace`, so the committed go.mod is never edited. Go
# dependencies still come from the module proxy (go.sum). Nothing of Complement is committed here.
export GOTOOLCHAIN=local
pinned_version=$(sed -n 's/^[[:space:]]*\(require \)\{0,1\}github.com\/matrix-org\/complement \(v0\.0\.0-[0-9]*-[0-9a-f]\{12\}\)$/\2/p' "$here/go.mod")
pinned=${pinned_version##*-}
[ -n "$pinned" ] || die "no pinned Complement pseudo-version in complement/go.mod"
src=$work/complement-src
shared_src=$root/../shared/vendor/complement

# is_git_top DIR: DIR is the top level of its own git repository (work tree or bare clone).
is_git_top() {
  local top
  top=$(git -C "$1" rev-parse --show-toplevel 2>/dev/null) || {
    # A bare clone has no work tree; it is its own git directory.
    [ "$(git -C "$1" rev-parse --is-bare-repository 2>/dev/null)" = true ] || return 1
    [ "$(cd "$1" && pwd -P)" = "$(cd "$(git -C "$1" rev-parse --absolute-git-dir)" && pwd -P)" ]
    return
  }
  [ "$(cd "$1" && pwd -P)" = "$(cd "$top" && pwd -P)" ]
}

# copy_source DIR: DIR's pinned Complement into $src. Returns 1 (with the reason in $why) when DIR
# does not hold the pinned commit.
copy_source() {
  local from=$1
  rm -rf "$src" && mkdir -p "$src"
  if is_git_top "$from"; then
    if ! git -C "$from" archive "$pinned" 2>"$work/archive.err" | tar -x -C "$src" 2>/dev/null; then
      why="$from (a git clone) has no commit $pinned: $(head -c 200 "$work/archive.err")"
      return 1
    fi
  else
    local commit
    [ -f "$from/COMMIT" ] && commit=$(tr -d '[:space:]' <"$from/COMMIT") || { why="$from is neither the top level of a git clone nor a source tree with a COMMIT file"; return 1; }
    case "$commit" in
      "$pinned"*) ;;
      *) why="$from/COMMIT says ${commit:-nothing}, complement/go.mod pins $pinned"; return 1 ;;
    esac
    [ -f "$from/go.mod" ] || { why="$from has a COMMIT file but no go.mod"; return 1; }
    # cp -r, not hard links or symlinks: the source may be read-only and go wants nothing there.
    cp -r "$from"/. "$src"/ || { why="cannot copy $from"; return 1; }
    chmod -R u+w "$src"
  fi
  echo "$pinned" >"$src/.pinned"
}

ensure_complement_source() {
  if (cd "$here" && GOFLAGS=-mod=mod go mod download "github.com/matrix-org/complement@$pinned_version") 2>"$work/proxy.err"; then
    log "Complement $pinned from the Go module proxy"
    export GOFLAGS=-mod=mod
    return 0
  fi
  local reasons="the Go module proxy refused it ($(head -c 300 "$work/proxy.err" | tr '\n' ' '))"
  local from="" why="" candidate
  for candidate in ${COMPLEMENT_SRC:+"$COMPLEMENT_SRC"} "$shared_src"; do
    if [ ! -d "$candidate" ]; then
      reasons="$reasons; $candidate does not exist"
      continue
    fi
    candidate=$(cd "$candidate" && pwd -P)
    if [ -f "$src/.pinned" ] && [ "$(cat "$src/.pinned")" = "$pinned" ] \
      && [ "$(cat "$src/.from" 2>/dev/null)" = "$candidate" ]; then
      from=$candidate
      break
    fi
    if copy_source "$candidate"; then
      echo "$candidate" >"$src/.from"
      from=$candidate
      break
    fi
    rm -rf "$src"
    reasons="$reasons; $why"
  done
  if [ -z "$from" ]; then
    local msg="no source for Complement $pinned_version: $reasons. Set COMPLEMENT_SRC to a git
    clone of github.com/matrix-org/complement (or a tree with a COMMIT file) to run the suite"
    # A machine without the module cannot run the suite at all. In CI that is reported loudly but
    # does not fail the build unless COMPLEMENT_REQUIRED=1 (.ci/run sets it).
    if [ "$ci" = 1 ] && [ "${COMPLEMENT_REQUIRED:-0}" != 1 ]; then
      log "SKIPPED, NOT RUN: $msg"
      exit 0
    fi
    die "$msg"
  fi
  log "Complement $pinned from $from (copied to $src)"
  cp "$here/go.mod" "$work/go.alt.mod"
  cp "$here/go.sum" "$work/go.alt.sum"
  echo "replace github.com/matrix-org/complement => $src" >>"$work/go.alt.mod"
  export GOFLAGS="-modfile=$work/go.alt.mod"
}

# ---------------------------------------------------------------------------------------------
# 3. The image: FROM scratch + the binary + what it needs (see image/Dockerfile).
build_image() {
  local bin=${PULSE_BINARY:-}
  if [ -z "$bin" ]; then
    local profile=${PULSE_PROFILE:-dev}
    log "cargo build -p pulse --profile $profile"
    (cd "$root" && cargo build -q -p pulse --profile "$profile") || die "cargo build failed"
    local dir=$profile; [ "$profile" = dev ] && dir=debug
    bin=${CARGO_TARGET_DIR:-$root/target}/$dir/pulse
  fi
  [ -x "$bin" ] || die "no pulse binary at $bin"

  local ctx=$work/image
  rm -rf "$ctx" && mkdir -p "$ctx/rootfs/pulse/bin" "$ctx/rootfs/bin" "$ctx/rootfs/etc/ssl/certs" \
    "$ctx/rootfs/data" "$ctx/rootfs/tmp"
  chmod 1777 "$ctx/rootfs/tmp"
  # Debug info is not needed in the container (and makes every image layer larger).
  objcopy --strip-debug "$bin" "$ctx/rootfs/pulse/bin/pulse" 2>/dev/null || cp "$bin" "$ctx/rootfs/pulse/bin/pulse"
  cp "$(command -v dash)" "$ctx/rootfs/bin/sh"
  # Shared libraries (and the dynamic loader) at the paths the binaries were linked against.
  local lib
  for lib in $( { ldd "$bin"; ldd "$(command -v dash)"; } | awk '/=> \//{print $3} /^[ \t]*\/[^ ]*ld-linux/{print $1}' | sort -u); do
    mkdir -p "$ctx/rootfs$(dirname "$lib")"
    cp -L "$lib" "$ctx/rootfs$lib"
  done
  if ldd "$bin" | grep -q 'not found'; then die "$bin: missing libraries: $(ldd "$bin" | grep 'not found')"; fi
  # glibc's resolver: /etc/hosts first (Complement's host.docker.internal is only there), then DNS.
  echo 'hosts: files dns' >"$ctx/rootfs/etc/nsswitch.conf"
  [ -f /etc/ssl/certs/ca-certificates.crt ] && cp /etc/ssl/certs/ca-certificates.crt "$ctx/rootfs/etc/ssl/certs/"
  cp "$here/image/entrypoint.sh" "$here/image/pulse.toml" "$ctx/rootfs/pulse/"
  # Outbound federation settings (image/federation.toml) only for a binary that knows the keys:
  # the config loader rejects unknown keys, and federation support is landing in steps. Known =
  # every key of federation.toml appears in `pulse generate-config` (the documented example).
  local example missing=""
  example=$("$bin" generate-config 2>/dev/null || true)
  for key in $(sed -n 's/^\([a-z_]*\)[[:space:]]*=.*/\1/p' "$here/image/federation.toml"); do
    grep -qw -- "$key" <<<"$example" || missing="$missing $key"
  done
  if [ -z "$missing" ]; then
    cat "$here/image/federation.toml" >>"$ctx/rootfs/pulse/pulse.toml"
    log "image config: outbound federation settings included (image/federation.toml)"
  else
    log "image config: this pulse does not document [federation]$missing; federation settings left out"
  fi
  cp "$here/image/Dockerfile" "$ctx/Dockerfile"
  log "docker build $image ($(du -sh "$ctx/rootfs" | cut -f1))"
  # (The legacy builder prints a deprecation notice on every build: shown only on failure.)
  DOCKER_BUILDKIT=0 docker build -q -t "$image" "$ctx" >"$work/docker-build.log" 2>&1 \
    || { cat "$work/docker-build.log" >&2; die "docker build failed"; }
  # The previous build's image, now untagged.
  docker image prune -f --filter label=pulse.complement >/dev/null 2>&1 || true
}

# ---------------------------------------------------------------------------------------------
# 4. What to run. Go test args may name packages as ./tests/... (Complement's own spelling).
pkg_prefix=github.com/matrix-org/complement
full_set="$pkg_prefix/tests/..."
go_args=()
pkgs=()
filtered=0
for a in "$@"; do
  case "$a" in
    ./tests*) pkgs+=("$pkg_prefix/${a#./}") ;;
    tests*) pkgs+=("$pkg_prefix/$a") ;;
    "$pkg_prefix"/*) pkgs+=("$a") ;;
    -run|-run=*|-skip|-skip=*) filtered=1; go_args+=("$a") ;;
    *) go_args+=("$a") ;;
  esac
done

# Shared settings. Dirty runs: one container per hsN per package, reused by every test that
# deploys N servers (no blueprint commits) - halves the run time. -p 1: one package at a time
# (2 cores; each package process has its own CA and containers).
export COMPLEMENT_BASE_IMAGE=$image
export COMPLEMENT_ENABLE_DIRTY_RUNS=${COMPLEMENT_ENABLE_DIRTY_RUNS:-1}
export COMPLEMENT_SPAWN_HS_TIMEOUT_SECS=${COMPLEMENT_SPAWN_HS_TIMEOUT_SECS:-30}

ensure_complement_source
ensure_docker
[ "$build" = 1 ] && build_image
docker image inspect "$image" >/dev/null 2>&1 || die "no image $image (run without --no-build)"

cd "$here"
results=$here/results.jsonl
logs=$work/logs.jsonl
selected=$work/selected.txt
: >"$logs"
: >"$selected"
if [ "$ci" = 1 ]; then
  go test -count=1 ./cmd/results >&2 || die "the results checker's own tests fail"
fi
go build -o "$work/results" ./cmd/results || die "cannot build the results checker"

# run_pkg TIMEOUT RUN_REGEX PACKAGE...: one go test invocation, appended to logs.jsonl.
run_pkg() {
  local timeout=$1 regex=$2; shift 2
  local run=()
  [ -n "$regex" ] && run=(-run "$regex")
  # The top-level tests this selects (for "selected but did not run" detection in --ci).
  local p list
  for p in "$@"; do
    list=$(go test -count=1 -list "${regex:-.}" "$p" 2>&1) || die "cannot list the tests of $p: $list"
    grep -E '^Test' <<<"$list" | sed "s|^|$(pkg_label "$p")|" >>"$selected" || true
  done
  go test -count=1 -p 1 -json -timeout "$timeout" "${run[@]}" "${go_args[@]}" "$@" 2>&1 \
    | tee -a "$logs" | "$work/results" progress || true
}

# The results-file prefix of a package's tests (see cmd/results): none for tests and tests/csapi.
pkg_label() {
  case "$1" in
    "$pkg_prefix/tests" | "$pkg_prefix/tests/csapi") echo "" ;;
    *) echo "${1##*/}." ;;
  esac
}

start=$(date +%s)
if [ "$ci" = 1 ]; then
  # ci-subset.txt: lines "PACKAGE TIMEOUT [RUN_REGEX]" (PACKAGE relative to Complement's root).
  while read -r pkg timeout regex; do
    case "$pkg" in ''|'#'*) continue ;; esac
    log "go test $pkg ${regex:+-run '$regex'}"
    run_pkg "$timeout" "$regex" "$pkg_prefix/$pkg"
  done <"$here/ci-subset.txt"
  mode=ci
else
  [ ${#pkgs[@]} -gt 0 ] || pkgs=("$full_set")
  if [ "$filtered" = 0 ] && [ "${pkgs[*]}" = "$full_set" ]; then mode=replace; else mode=merge; fi
  # isolated.txt: tests that stop and restart homeservers ("PACKAGE TEST" lines). In a dirty run
  # such a test that fails before restarting leaves that server down for every later test of its
  # package, so a full run runs them last, each in its own go test invocation.
  isolated=()
  if [ "$mode" = replace ]; then
    while read -r pkg name; do
      case "$pkg" in ''|'#'*) continue ;; esac
      isolated+=("$pkg $name")
    done <"$here/isolated.txt"
  fi
  skip=()
  if [ ${#isolated[@]} -gt 0 ]; then
    skip=(-skip "^($(printf '%s\n' "${isolated[@]}" | cut -d' ' -f2 | paste -sd'|'))\$")
  fi
  log "go test ${go_args[*]} ${skip[*]} ${pkgs[*]}"
  go test -count=1 -p 1 -json -timeout "${COMPLEMENT_TIMEOUT:-60m}" "${go_args[@]}" "${skip[@]}" \
    "${pkgs[@]}" 2>&1 | tee -a "$logs" | "$work/results" progress || true
  for entry in "${isolated[@]}"; do
    log "go test -run '^${entry#* }\$' ./${entry%% *}"
    go test -count=1 -json -timeout 10m -run "^${entry#* }\$" "$pkg_prefix/${entry%% *}" 2>&1 \
      | tee -a "$logs" | "$work/results" progress || true
  done
fi
log "wall time: $(( $(date +%s) - start )) s"
if [ "$ci" = 1 ] && ! grep -q '"Action":"pass"' "$logs"; then
  # Nothing passed at all: the suite did not really run (a crashed package, no homeserver).
  die "no Complement test passed in this run; see $logs"
fi

sel=()
[ -s "$selected" ] && sel=(-selected "$selected")
"$work/results" check -baseline "$results" -out "$results" -mode "$mode" "${sel[@]}" \
  -flaky "$here/flaky.txt" "$logs"
