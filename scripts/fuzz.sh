#!/usr/bin/env bash
# Runs each fuzz target of tests/fuzz.rs on its own for a time budget and prints a table
# of executions (property-body runs, counted inside the test), crashes (failing runs,
# each with its seed and minimal input in the log) and seconds per target.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [--json]     (default 60 seconds)
#
# PATHOS_FUZZ_SEED sets the first seed (default: the current time; printed so a run can
# be repeated). Logs go to a temporary directory outside the repository. Exit status 1
# if any target crashed, hung or died.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=60
json=0
for a in "$@"; do
  case "$a" in
    --json) json=1 ;;
    -h | --help)
      sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *[!0-9.]* | '')
      echo "fuzz.sh: unknown argument '$a' (want SECONDS_PER_TARGET and/or --json)" >&2
      exit 2
      ;;
    *) secs="$a" ;;
  esac
done

# The targets: every test in tests/fuzz.rs that calls the harness's `fuzz`.
targets=(
  gguf::random_bytes
  gguf::mutated
  tokenizer::bpe_roundtrip
  tokenizer::spm_roundtrip
  tokenizer::decode_ids
  template::random_source
  template::mutated_real
  template::content_is_data
  http::chat_body
  http::completion_body
  http::chat_valid_roundtrip
  constrain::guide
)

seed="${PATHOS_FUZZ_SEED:-$(date +%s)}"
logs="$(mktemp -d "${TMPDIR:-/tmp}/pathos-fuzz.XXXXXX")"
cargo test --release --test fuzz --no-run >"$logs/build.log" 2>&1 || {
  cat "$logs/build.log" >&2
  exit 1
}
listed="$(cargo test --release --test fuzz -q -- --list 2>/dev/null)"
for t in "${targets[@]}"; do
  grep -qx "$t: test" <<<"$listed" || {
    echo "fuzz.sh: target $t is not in tests/fuzz.rs; update the list in $0" >&2
    exit 1
  }
done
[ "$json" = 1 ] || echo "fuzzing ${#targets[@]} targets for ${secs}s each, seed $seed, logs in $logs" >&2

failed=0
rows=()
for t in "${targets[@]}"; do
  log="$logs/${t//::/-}.log"
  [ "$json" = 1 ] || printf '%-28s ' "$t" >&2
  start=$(date +%s%N)
  PATHOS_FUZZ_SECONDS="$secs" PATHOS_FUZZ_SEED="$seed" RUST_BACKTRACE=0 \
    cargo test --release --test fuzz -q -- --exact "$t" --nocapture >"$log" 2>&1 && rc=0 || rc=$?
  wall=$(awk -v a="$start" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
  result="$(grep -a "^FUZZ-RESULT target=$t " "$log" | tail -1 || true)"
  if [ -n "$result" ]; then
    execs=$(sed 's/.* execs=\([0-9]*\).*/\1/' <<<"$result")
    crashes=$(sed 's/.* crashes=\([0-9]*\).*/\1/' <<<"$result")
    seconds=$(sed 's/.* seconds=\([0-9.a-z]*\).*/\1/' <<<"$result")
  else
    # The process died (an abort, a signal): the last progress line says how far it got.
    execs=$(grep -a "^FUZZ-PROGRESS target=$t " "$log" | tail -1 | sed 's/.* execs=\([0-9]*\).*/\1/' || true)
    execs=${execs:-0}
    crashes=1
    seconds=$wall
  fi
  # A hang reports no fuzzing time of its own.
  [ "$seconds" != nan ] || seconds=$wall
  if [ "$crashes" != 0 ] || [ "$rc" != 0 ]; then
    failed=1
    [ "$crashes" != 0 ] || crashes=1
  fi
  rows+=("$t $execs $crashes $seconds $log")
  [ "$json" = 1 ] || echo "$execs execs, $crashes crashes, ${seconds}s" >&2
done

if [ "$json" = 1 ]; then
  printf '{"seed": %s, "seconds_per_target": %s, "targets": [' "$seed" "$secs"
  sep=""
  for r in "${rows[@]}"; do
    read -r t execs crashes seconds log <<<"$r"
    printf '%s\n  {"target": "%s", "executions": %s, "crashes": %s, "seconds": %s, "log": "%s"}' \
      "$sep" "$t" "$execs" "$crashes" "$seconds" "$log"
    sep=","
  done
  printf '\n]}\n'
else
  printf '\n%-28s %12s %8s %8s %10s\n' target executions crashes seconds execs/s
  for r in "${rows[@]}"; do
    read -r t execs crashes seconds log <<<"$r"
    rate=$(awk -v e="$execs" -v s="$seconds" 'BEGIN { if (s + 0 > 0) printf "%d", e / s; else print "-" }')
    printf '%-28s %12s %8s %8s %10s\n' "$t" "$execs" "$crashes" "$seconds" "$rate"
  done
  if [ "$failed" = 1 ]; then
    echo
    echo "crashes (seed, minimal input; replay with PATHOS_FUZZ_SEED=seed PATHOS_FUZZ_CASES=cases):"
    for r in "${rows[@]}"; do
      read -r t execs crashes seconds log <<<"$r"
      [ "$crashes" = 0 ] || { grep -a -A3 "^FUZZ-CRASH\|^FUZZ-HANG" "$log" || tail -5 "$log"; }
    done
  fi
fi
exit "$failed"
