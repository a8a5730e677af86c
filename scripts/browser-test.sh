#!/usr/bin/env bash
# The debate viewer in a real headless browser (Chromium): renders the page, lets its
# JavaScript run, dumps the DOM it built and a screenshot into target/browser/, and checks
# the DOM against the transcript.
#
#   scripts/browser-test.sh REPORT.html                 report mode (`pathos report` output)
#   scripts/browser-test.sh --replay TRANSCRIPT.json    live mode against scripts/sse-replay.py
#   PATHOS_URL=http://127.0.0.1:8080 scripts/browser-test.sh --live
#                                                       live mode against `pathos serve`
#
# Live mode opens URL/?text=…&target=…&autostart=1 (PATHOS_TEXT, PATHOS_TARGET,
# PATHOS_MAX_ROUNDS [2], PATHOS_CANDIDATES [1], PATHOS_ETHICS=1 adjust it) and waits for
# the `result` event (at most PATHOS_BROWSER_TIMEOUT seconds, 900 by default).
# Installs Debian's chromium when no browser is found and it runs as root.
# Exit status: 0 pass, 1 fail, 2 usage, 77 skipped (no browser and none installable).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="$PWD/target/browser"
mkdir -p "$OUT"

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 1 ] || usage

find_browser() {
  local b
  for b in "${CHROMIUM:-}" chromium chromium-browser google-chrome; do
    if [ -n "$b" ] && command -v "$b" >/dev/null 2>&1; then command -v "$b"; return 0; fi
  done
  return 1
}
BROWSER=$(find_browser || true)
if [ -z "$BROWSER" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "browser-test: installing chromium with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q chromium >&2 || { apt-get update -q >&2 && apt-get install -y -q chromium >&2; } || true
  BROWSER=$(find_browser || true)
fi
if [ -z "$BROWSER" ]; then
  echo "browser-test: SKIP: no chromium found, and it cannot be installed here (needs root and apt-get)" >&2
  exit 77
fi
if ! command -v python3 >/dev/null 2>&1; then
  echo "browser-test: SKIP: python3 is needed to read the DOM" >&2
  exit 77
fi

PROFILE=$(mktemp -d)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$PROFILE"
}
trap cleanup EXIT

# One headless run; chromium's own chatter goes to a log, not the terminal.
HEADLESS=("$BROWSER" --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run
  --user-data-dir="$PROFILE")
headless() { "${HEADLESS[@]}" "$@" 2>>"$OUT/chromium.log"; }

# check_dom MODE DOM_FILE [EXPECTED_TRANSCRIPT_SOURCE]: asserts on what the page's JS built.
# MODE: report (the transcript is embedded in the page), replay (known transcript), live.
check_dom() {
  python3 - "$@" <<'PY'
import html.parser, json, re, sys

mode, dom_path = sys.argv[1], sys.argv[2]
src = sys.argv[3] if len(sys.argv) > 3 else None
dom = open(dom_path, encoding="utf-8").read()

class Tree(html.parser.HTMLParser):
    """Flat list of elements with attributes and their text, enough for id/class queries."""
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.nodes, self.stack = [], []
    def handle_starttag(self, tag, attrs):
        node = {"tag": tag, "attrs": dict(attrs), "text": []}
        self.nodes.append(node)
        if tag not in self.VOID:
            self.stack.append(node)
    def handle_startendtag(self, tag, attrs):
        self.nodes.append({"tag": tag, "attrs": dict(attrs), "text": []})
    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i]["tag"] == tag:
                del self.stack[i:]
                break
    def handle_data(self, data):
        for n in self.stack:
            n["text"].append(data)

t = Tree()
t.feed(dom)
def by_id(i):
    return next((n for n in t.nodes if n["attrs"].get("id") == i), None)
def by_class(c, tag=None):
    return [n for n in t.nodes if c in (n["attrs"].get("class") or "").split() and (tag is None or n["tag"] == tag)]
def text(n):
    return re.sub(r"\s+", " ", "".join(n["text"])).strip()
failures = []
def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)

if mode == "report":
    m = re.search(r'<script type="application/json" id="pathos-transcript">(.*?)</script>', open(src, encoding="utf-8").read(), re.S)
    expected = json.loads(m.group(1))
elif mode == "replay":
    expected = json.load(open(src, encoding="utf-8"))
else:
    expected = None

status = by_id("render-status")
check(status is not None, "#render-status exists")
attrs = status["attrs"] if status else {}
want_state = "rendered" if mode == "report" else "done"
check(attrs.get("data-state") == want_state, "page state is %r (got %r)" % (want_state, attrs.get("data-state")))
check(attrs.get("data-errors", "0") == "0", "no script errors (%s)" % attrs.get("data-last-error", "none"))
err = by_id("error")
check(err is None or "hidden" in err["attrs"], "no error shown" + ("" if err is None or "hidden" in err["attrs"] else ": " + text(err)))

rounds = [n for n in t.nodes if n["tag"] == "section" and "round" in (n["attrs"].get("class") or "").split()]
turns = by_class("turn", "article")
final = by_id("final-text")
check(final is not None and text(final) != "" and "pending" not in (final["attrs"].get("class") or ""), "#final-text is filled")
chart_r, chart_e = by_id("chart-rounds"), by_id("chart-emotion")
check(chart_r is not None and chart_r["tag"] == "svg", "svg#chart-rounds drawn")
check(chart_e is not None and chart_e["tag"] == "svg", "svg#chart-emotion drawn")
rows = by_class("emo-row")
check(len(rows) == 7, "emotion chart has 7 spectra (got %d)" % len(rows))
check(len(by_class("pt-before")) == 7 and len(by_class("pt-after")) == 7, "before and after marked on every spectrum")
check(len(by_class("target-mark")) == 1, "the target is marked once")
check(len(rounds) >= 1 and len(turns) >= 1, "rounds and turns shown (%d rounds, %d turns)" % (len(rounds), len(turns)))
check(len(by_class("pt-contentiousness")) >= len(rounds), "contentiousness plotted per round")

if expected is not None:
    norm = lambda s: re.sub(r"\s+", " ", s).strip()
    n_turns = sum(len(r["turns"]) for r in expected["rounds"]) + len(expected["synthesis"]["turns"]) + (1 if expected.get("features_turn") else 0)
    check(text(final) == norm(expected["final_text"]), "#final-text is the transcript's final text")
    check(text(by_id("source-text")) == norm(expected["source"]), "#source-text is the source")
    check(len(rounds) == len(expected["rounds"]), "one .round per round (%d)" % len(expected["rounds"]))
    check(attrs.get("data-turns") == str(n_turns) and len(turns) == n_turns, "every turn shown (%d)" % n_turns)
    shown = [float(n["attrs"]["data-value"]) for n in by_class("pt-contentiousness")][: len(expected["rounds"])]
    check(shown == [round(r["contentiousness"], 3) for r in expected["rounds"]], "charted contentiousness matches %s" % shown)
    check(all(a > b for a, b in zip(shown, shown[1:])), "contentiousness falls round by round")
    crit = [n for n in by_class("pt-crit")]
    check(len(crit) == sum(1 for r in expected["rounds"] if r.get("crit_mean") is not None), "mean CRIT plotted for each scored round")
    check(text(by_class("stop-reason")[0]).startswith("stopped:") if by_class("stop-reason") else False, "stop reason shown")
    check(by_id("synthesis") is not None and by_id("totals") is not None, "synthesis and totals shown")
if mode == "replay":
    check(attrs.get("data-live-turns") == attrs.get("data-turns"), "every turn arrived live before the result (%s)" % attrs.get("data-live-turns"))
    check(int(attrs.get("data-live-rounds", "0")) == len(expected["rounds"]), "every round arrived live")
if mode in ("replay", "live"):
    check(int(attrs.get("data-live-turns", "0")) > 0, "turns were shown as they arrived")
if attrs.get("data-ethics") == "true":
    v = by_id("ethics-verdict")
    check(v is not None and v["attrs"].get("data-verdict") in ("pass", "violation"), "ethics verdict shown")

print("%s: %d check(s) failed" % (dom_path, len(failures)) if failures else "%s: all checks passed" % dom_path)
sys.exit(1 if failures else 0)
PY
}

case "$1" in
  --live|--replay)
    if [ "$1" = --replay ]; then
      [ $# -ge 2 ] || usage
      TRANSCRIPT=$(cd "$(dirname "$2")" && pwd)/$(basename "$2")
      BIN=${PATHOS_BIN:-target/release/pathos}
      "$BIN" emotions --json >"$OUT/emotions.json"
      python3 scripts/sse-replay.py "$TRANSCRIPT" --emotions "$OUT/emotions.json" --delay "${REPLAY_DELAY:-0.02}" >"$OUT/replay.log" 2>&1 &
      PIDS+=($!)
      for _ in $(seq 100); do grep -q '^listening on' "$OUT/replay.log" 2>/dev/null && break; sleep 0.1; done
      PORT=$(sed -n 's/^listening on //p' "$OUT/replay.log")
      [ -n "$PORT" ] || { echo "browser-test: the replay server did not start:" >&2; cat "$OUT/replay.log" >&2; exit 1; }
      URL="http://127.0.0.1:$PORT"
      NAME=replay
    else
      URL=${2:-${PATHOS_URL:-}}
      [ -n "$URL" ] || { echo "browser-test: --live needs PATHOS_URL (or a URL argument) of a running 'pathos serve'" >&2; exit 2; }
      NAME=live
    fi
    QUERY=$(python3 -c 'import sys, urllib.parse as u; q={"text": sys.argv[1], "target": sys.argv[2], "autostart": "1"}
if sys.argv[3]: q["max_rounds"] = sys.argv[3]
if sys.argv[4] == "1": q["ethics"] = "1"
if sys.argv[5]: q["candidates"] = sys.argv[5]
print(u.urlencode(q))' "${PATHOS_TEXT:-The train arrived late and I waited on the platform.}" "${PATHOS_TARGET:-joy}" "${PATHOS_MAX_ROUNDS:-2}" "${PATHOS_ETHICS:-0}" "${PATHOS_CANDIDATES:-1}")
    PAGE="${URL%/}/?$QUERY"
    echo "browser-test: $PAGE" >&2
    rm -f "$OUT/$NAME.dom.html" "$OUT/$NAME.png"
    # --dump-dom's virtual time does not wait for a streamed body: wait in real time.
    python3 scripts/browser-wait.py "$BROWSER" "$PAGE" --timeout "${PATHOS_BROWSER_TIMEOUT:-900}" \
      --dom "$OUT/$NAME.dom.html" --screenshot "$OUT/$NAME.png" 2>&1 | tee -a "$OUT/chromium.log" >&2 || true
    [ -s "$OUT/$NAME.dom.html" ] || { echo "browser-test: the browser produced no DOM (see $OUT/chromium.log)" >&2; exit 1; }
    if [ "$NAME" = replay ]; then check_dom replay "$OUT/$NAME.dom.html" "$TRANSCRIPT"; else check_dom live "$OUT/$NAME.dom.html"; fi
    echo "browser-test: screenshot $OUT/$NAME.png" >&2
    ;;
  -*) usage ;;
  *)
    REPORT=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
    [ -f "$REPORT" ] || { echo "browser-test: no such file: $1" >&2; exit 2; }
    rm -f "$OUT/report.dom.html" "$OUT/report.png"
    headless --virtual-time-budget=5000 --dump-dom "file://$REPORT" >"$OUT/report.dom.html"
    headless --virtual-time-budget=5000 --window-size=1280,2000 --screenshot="$OUT/report.png" "file://$REPORT" >/dev/null
    check_dom report "$OUT/report.dom.html" "$REPORT"
    echo "browser-test: screenshot $OUT/report.png" >&2
    ;;
esac
