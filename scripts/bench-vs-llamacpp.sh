#!/usr/bin/env bash
# Side-by-side throughput of pathos and llama.cpp on the same GGUF files, same thread
# count, same machine, one invocation, runs interleaved (pathos, llama.cpp, pathos, …) so
# that drift in machine load affects both. Also the peak RSS of a 64-token generation.
#
#   scripts/bench-vs-llamacpp.sh [-t THREADS] [-p 128] [-n 64] [-r 3] [--rounds 2] [--json] [MODEL...]
#
# MODEL is a manifest name (default: all three). llama.cpp is built by build-llamacpp.sh
# outside the repository. Prints markdown tables: throughput with pathos ÷ llama.cpp
# ratios and the machine's streaming read bandwidth measured beside each test (for tg,
# the file's bytes per second at pathos's speed against it: near 1, one stream is at
# memory's limit), the agents' scaling (N sequences decoding together; `pathos bench` runs one
# stream and each N in turn, --rounds times, samples pooled), peak RSS and start-up
# time (a one-token generation, median of 5 after a warm-up); --json prints the same as
# one JSON object.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
threads=2 pp=128 tg=64 reps=3 rounds=2 json=0 models=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -t) threads="$2"; shift 2 ;;
    -p) pp="$2"; shift 2 ;;
    -n) tg="$2"; shift 2 ;;
    -r) reps="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --json) json=1; shift ;;
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
  for r in $(seq "$rounds"); do
    "$pathos" bench -m "$file" -t "$threads" -p 0 -n "$tg" -r "$reps" --agents 2,4,8 --json \
      > "$out/$m.agents.$r.json"
  done
  for tool in pathos llama; do
    for i in 0 1 2 3 4 5; do
      t0=$(date +%s%N)
      if [[ $tool == pathos ]]; then
        "$pathos" generate -m "$file" -t "$threads" --temperature 0 -n 1 --raw "Hello" > /dev/null 2>&1
      else
        "$bin/llama-simple" -m "$file" -n 1 "Hello" > /dev/null 2>&1 || true
      fi
      t1=$(date +%s%N)
      [[ $i -gt 0 ]] && echo $(( (t1 - t0) / 1000000 )) >> "$out/$m.$tool.startup"
    done
  done
  /usr/bin/time -v "$pathos" generate -m "$file" -t "$threads" --temperature 0 -n 64 --raw "Once upon a time" \
    > /dev/null 2> "$out/$m.pathos.time"
  /usr/bin/time -v "$bin/llama-simple" -m "$file" -n 64 "Once upon a time" \
    > /dev/null 2> "$out/$m.llama.time" || true
done
python3 - "$out" "$json" "${models[@]}" <<'PY'
import json, re, statistics, sys
out, as_json, models = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]
report = {"throughput": [], "agents": [], "rss_mib": [], "startup_ms": []}
def rss(path):
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(path).read())
    return int(m.group(1)) / 1024 if m else float("nan")
import glob
for m in models:
    p, l, mem, size = {}, {}, {}, 0
    for f in glob.glob(f"{out}/{m}.pathos.*.json"):
        for row in json.load(open(f)):
            p.setdefault(row["test"], []).extend(row["samples_ts"])
            mem.setdefault(row["test"], []).append(row["mem_read_gbs"])
            size = row["size"]
    for f in glob.glob(f"{out}/{m}.llama.*.json"):
        for row in json.load(open(f)):
            test = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"
            l.setdefault(test, []).extend(row["samples_ts"])
    for test in sorted(p):
        a, b = p[test], l.get(test, [float("nan")])
        ma, mb = statistics.mean(a), statistics.mean(b)
        sa = statistics.stdev(a) if len(a) > 1 else 0
        sb = statistics.stdev(b) if len(b) > 1 else 0
        gbs = statistics.mean(mem[test])
        # A decode step reads the whole file once: how much of the machine's streaming
        # read bandwidth (measured beside the test) one stream's tokens used.
        share = size * ma / (gbs * 1e9) if test.startswith("tg") else None
        report["throughput"].append({"model": m, "test": test, "pathos": ma, "pathos_sd": sa,
                                     "llama_cpp": mb, "llama_cpp_sd": sb, "ratio": ma / mb,
                                     "mem_read_gbs": gbs, "file_read_vs_mem_read": share})
    # Every round's samples of each agent count pooled (the tests take turns within a
    # round, so one stream and N agents see the same machine).
    pooled = {}
    for f in sorted(glob.glob(f"{out}/{m}.agents.*.json")):
        for row in json.load(open(f)):
            pooled.setdefault(row["agents"], []).append(row)
    single = statistics.mean(s for r in pooled[1] for s in r["samples_ts"]) if 1 in pooled else float("nan")
    for n, rs in sorted(pooled.items()):
        agg = statistics.mean(s for r in rs for s in r["samples_ts"])
        report["agents"].append({"model": m, "agents": n, "aggregate_ts": agg,
                                 "vs_n_single": agg / (n * single),
                                 "ms_per_step": statistics.mean(r["ms_per_step"] for r in rs),
                                 "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
                                 "kv_mib_per_sequence": rs[-1]["kv_mib"]})
    report["rss_mib"].append({"model": m, "pathos": rss(f"{out}/{m}.pathos.time"),
                              "llama_simple": rss(f"{out}/{m}.llama.time")})
    med = lambda f: statistics.median(int(x) for x in open(f).read().split())
    report["startup_ms"].append({"model": m, "pathos": med(f"{out}/{m}.pathos.startup"),
                                 "llama_simple": med(f"{out}/{m}.llama.startup")})
if as_json:
    print(json.dumps(report, indent=2))
    sys.exit(0)
print("| model | test | pathos t/s | llama.cpp t/s | pathos ÷ llama.cpp | memory read | file read ÷ memory read |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
for r in report["throughput"]:
    share = "" if r["file_read_vs_mem_read"] is None else f"{r['file_read_vs_mem_read']:.2f}"
    print(f"| {r['model']} | {r['test']} | {r['pathos']:.1f} ± {r['pathos_sd']:.1f} | "
          f"{r['llama_cpp']:.1f} ± {r['llama_cpp_sd']:.1f} | {r['ratio']:.2f} | "
          f"{r['mem_read_gbs']:.1f} GB/s | {share} |")
print()
print("| model | agents | aggregate t/s | ÷ (N × single) | ms per step | peak RSS | KV per sequence |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for r in report["agents"]:
    print(f"| {r['model']} | {r['agents']} | {r['aggregate_ts']:.1f} | {r['vs_n_single']:.2f} | "
          f"{r['ms_per_step']:.1f} | {r['peak_rss_mib']:.0f} MiB | {r['kv_mib_per_sequence']:.1f} MiB |")
print()
print("| model | peak RSS, 64-token generation: pathos | llama-simple | start-up, 1 token: pathos | llama-simple |")
print("| --- | ---: | ---: | ---: | ---: |")
for r, s in zip(report["rss_mib"], report["startup_ms"]):
    print(f"| {r['model']} | {r['pathos']:.0f} MiB | {r['llama_simple']:.0f} MiB | "
          f"{s['pathos']:.0f} ms | {s['llama_simple']:.0f} ms |")
PY
rm -rf "$out"
