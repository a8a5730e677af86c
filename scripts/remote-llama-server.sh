#!/usr/bin/env bash
# The remote backend against a real llama.cpp `llama-server` on loopback: builds it from
# the llama-cpp-python source package into the cache (scripts/build-llamacpp.sh
# --server), serves the default model's GGUF, and runs `pathos --backend openai:URL`
# generate, detect and a whole rewrite through it. Prints what each took; exits
# non-zero if any step fails.
#
#   scripts/remote-llama-server.sh [PORT]
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${1:-18181}"
BIN="$(scripts/build-llamacpp.sh --server | tail -1)"
cargo build --release --locked >&2
PATHOS=target/release/pathos
$PATHOS models fetch smollm2-135m >&2
MODEL="$($PATHOS models list --json | python3 -c 'import json,sys; print(next(m["path"] for m in json.load(sys.stdin) if m["name"] == "smollm2-135m"))')"
LOG="$(mktemp)"
"$BIN/llama-server" -m "$MODEL" --host 127.0.0.1 --port "$PORT" -t 2 -c 4096 -np 4 >"$LOG" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; rm -f "$LOG"' EXIT
for _ in $(seq 1 150); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
  sleep 0.2
done
curl -sf "http://127.0.0.1:$PORT/health" >/dev/null || { cat "$LOG" >&2; echo "llama-server did not start" >&2; exit 1; }
export PATHOS_BACKEND="openai:http://127.0.0.1:$PORT"
step() {
  local name="$1"; shift
  local t0; t0=$(date +%s.%N)
  "$@"
  printf '%s: %.1f s\n' "$name" "$(echo "$(date +%s.%N) - $t0" | bc)" >&2
}
step generate $PATHOS -t 2 generate "Say hello in five words." --max-tokens 16 --json
step detect $PATHOS -t 2 detect "What a wonderful, happy day!" --json | python3 -c '
import json, sys
for s in json.load(sys.stdin)["spectra"]:
    print("  %-24s %-12s expected %+.2f" % (s["spectrum"], s["word"], s["expected"]))'
step rewrite $PATHOS -t 2 rewrite "The meeting was moved to Friday." --to joy --max-rounds 1 --writers 2 --candidates 1 --json \
  | python3 -c 'import json,sys; v=json.load(sys.stdin); print("  rewrite:", v["text"])'
echo "remote backend against llama-server: ok"
