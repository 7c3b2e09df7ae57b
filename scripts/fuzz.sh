#!/usr/bin/env bash
# Fuzz one target of fuzz/ (cargo-fuzz, nightly) for SECONDS, or every target in turn:
#
#   scripts/fuzz.sh TARGET [SECONDS]   # default 60 s
#   scripts/fuzz.sh all [SECONDS]      # each target for SECONDS, one after the other
#   scripts/fuzz.sh list
#
# Starts from the committed seed corpus fuzz/corpus/TARGET; new inputs go to a scratch
# corpus (fuzz/corpus-work/TARGET, not committed), so runs do not grow the repository.
# A crash stops the run with a non-zero exit and leaves the input in fuzz/artifacts/TARGET/
# (reproduce: cd fuzz && cargo +nightly fuzz run TARGET artifacts/TARGET/crash-...).
# Each target's output goes to fuzz/logs/TARGET.log and a line (time, executions, corpus
# size, exit status) to fuzz/logs/summary.txt (not committed).
# Installs cargo-fuzz with `cargo install` when it is missing. FUZZ_JOBS is not used: the
# build machines are shared, one target runs at a time on one core.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
target="${1:?usage: scripts/fuzz.sh TARGET|all|list [SECONDS]}"
seconds="${2:-60}"
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi
if [ "$target" = list ]; then
    cargo +nightly fuzz list
    exit 0
fi
if [ "$target" = all ]; then
    targets=$(cargo +nightly fuzz list)
else
    targets="$target"
fi
started=$(date +%s)
echo "== building fuzz targets (nightly, ASan)" >&2
cargo +nightly fuzz build
echo "== built in $(( $(date +%s) - started )) s" >&2
mkdir -p logs
for t in $targets; do
    mkdir -p "corpus-work/$t" "corpus/$t"
    echo "== fuzzing $t for ${seconds} s" >&2
    t0=$(date +%s)
    status=0
    cargo +nightly fuzz run "$t" "corpus-work/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
        2>&1 | tee "logs/$t.log" >&2 || status=$?
    # One line per target for docs/security.md: wall time, executions, corpus size.
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log" | tail -1)
    corpus=$(find "corpus-work/$t" "corpus/$t" -type f | wc -l)
    line="$t: $(( $(date +%s) - t0 )) s, ${execs:-?} execs, corpus ${corpus} files, exit ${status}"
    echo "$line" | tee -a logs/summary.txt >&2
    [ "$status" -eq 0 ] || exit "$status"
done
echo "== all clean ($(( $(date +%s) - started )) s in total)" >&2
