#!/usr/bin/env bash
# Side-by-side throughput of pathos and llama.cpp on the same GGUF files, same thread
# count, same machine, one invocation, runs interleaved (pathos, llama.cpp, pathos, …) so
# that drift in machine load affects both. Also the peak RSS of a 64-token generation.
#
#   scripts/bench-vs-llamacpp.sh [-t THREADS] [-p 128] [-n 64] [-r 3] [--rounds 2] [MODEL...]
#
# MODEL is a manifest name (default: all three). llama.cpp is built by build-llamacpp.sh
# outside the repository. Prints a markdown table with pathos ÷ llama.cpp ratios.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
threads=2 pp=128 tg=64 reps=3 rounds=2 models=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -t) threads="$2"; shift 2 ;;
    -p) pp="$2"; shift 2 ;;
    -n) tg="$2"; shift 2 ;;
    -r) reps="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    *) models+=("$1"); shift ;;
  esac
done
[[ ${#models[@]} -gt 0 ]] || models=(smollm2-135m gemma3-270m qwen2.5-coder-0.5b)
cd "$here/.."
cargo build --release --quiet
pathos=./target/release/pathos
bin="$("$here/build-llamacpp.sh" | tail -n 1)"
out="$(mktemp -d)"
for m in "${models[@]}"; do
  "$pathos" models fetch "$m" >&2
  file="${PATHOS_HOME:-$HOME/.cache/pathos}/models/$m.gguf"
  for r in $(seq "$rounds"); do
    "$pathos" bench -m "$file" -t "$threads" -p "$pp" -n "$tg" -r "$reps" --json > "$out/$m.pathos.$r.json"
    "$bin/llama-bench" -m "$file" -t "$threads" -p "$pp" -n "$tg" -r "$reps" -o json > "$out/$m.llama.$r.json" 2>/dev/null
  done
  /usr/bin/time -v "$pathos" generate -m "$file" -t "$threads" --temperature 0 -n 64 --raw "Once upon a time" \
    > /dev/null 2> "$out/$m.pathos.time"
  /usr/bin/time -v "$bin/llama-simple" -m "$file" -n 64 "Once upon a time" \
    > /dev/null 2> "$out/$m.llama.time" || true
done
python3 - "$out" "${models[@]}" <<'PY'
import json, re, statistics, sys
out, models = sys.argv[1], sys.argv[2:]
def rss(path):
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(path).read())
    return int(m.group(1)) / 1024 if m else float("nan")
print("| model | test | pathos t/s | llama.cpp t/s | pathos ÷ llama.cpp |")
print("| --- | --- | ---: | ---: | ---: |")
import glob
for m in models:
    p, l = {}, {}
    for f in glob.glob(f"{out}/{m}.pathos.*.json"):
        for row in json.load(open(f)):
            p.setdefault(row["test"], []).extend(row["samples_ts"])
    for f in glob.glob(f"{out}/{m}.llama.*.json"):
        for row in json.load(open(f)):
            test = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"
            l.setdefault(test, []).extend(row["samples_ts"])
    for test in sorted(p):
        a, b = p[test], l.get(test, [float("nan")])
        ma, mb = statistics.mean(a), statistics.mean(b)
        sa = statistics.stdev(a) if len(a) > 1 else 0
        sb = statistics.stdev(b) if len(b) > 1 else 0
        print(f"| {m} | {test} | {ma:.1f} ± {sa:.1f} | {mb:.1f} ± {sb:.1f} | {ma / mb:.2f} |")
print()
print("| model | peak RSS, 64-token generation: pathos | llama-simple |")
print("| --- | ---: | ---: |")
for m in models:
    print(f"| {m} | {rss(f'{out}/{m}.pathos.time'):.0f} MiB | {rss(f'{out}/{m}.llama.time'):.0f} MiB |")
PY
rm -rf "$out"
