#!/usr/bin/env python3
"""Bounded load test of `pathos serve` on loopback: starts its own server on a free
port, sends a fixed number of chat requests at each concurrency level, and reports
throughput, latency percentiles, errors by status and the server's RSS before and
after. A last phase runs above the queue bound to show that the only errors there are
429s. Stops by itself (each phase has a deadline); never talks to anything but
127.0.0.1.

usage: scripts/load-test.py [--levels 1,8,32] [--requests 50,400,600] [--max-tokens 16]
                            [--queue-limit 64] [--deadline 600] [--json]
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "pathos")


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start_server(queue_limit):
    p = subprocess.Popen(
        [BIN, "-t", "2", "serve", "--port", "0", "--queue-limit", str(queue_limit)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = p.stdout.readline().strip()
    if not line.startswith("listening on http://127.0.0.1:"):
        p.kill()
        sys.exit(f"the server did not start: {line!r}")
    return p, line.split(" ", 2)[2]


def one_request(url, max_tokens, i):
    body = json.dumps(
        {
            "messages": [{"role": "user", "content": f"Write one sentence about the number {i}."}],
            "max_tokens": max_tokens,
            "temperature": 0.7,
            "seed": i,
        }
    ).encode()
    req = urllib.request.Request(
        url + "/v1/chat/completions", data=body, headers={"content-type": "application/json"}
    )
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            v = json.load(r)
            return 200, time.perf_counter() - t0, v["usage"]["completion_tokens"]
    except urllib.error.HTTPError as e:
        json.load(e)  # every error has a JSON body
        return e.code, time.perf_counter() - t0, 0
    except Exception as e:  # noqa: BLE001 - a transport failure is a result here
        return f"transport: {e}", time.perf_counter() - t0, 0


def phase(url, clients, count, max_tokens, deadline):
    results = []
    lock = threading.Lock()
    next_i = [0]
    stop_at = time.monotonic() + deadline

    def worker():
        while time.monotonic() < stop_at:
            with lock:
                if next_i[0] >= count:
                    return
                i = next_i[0]
                next_i[0] += 1
            r = one_request(url, max_tokens, i)
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if r[0] == 200]
    lat = sorted(r[1] for r in ok)
    errors = {}
    for r in results:
        if r[0] != 200:
            errors[str(r[0])] = errors.get(str(r[0]), 0) + 1

    def pct(p):
        if not lat:
            return float("nan")
        return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))]

    tokens = sum(r[2] for r in ok)
    return {
        "clients": clients,
        "requests": len(results),
        "ok": len(ok),
        "errors": errors,
        "seconds": round(wall, 2),
        "tokens": tokens,
        "tokens_per_second": round(tokens / wall, 1) if wall else 0,
        "requests_per_second": round(len(ok) / wall, 2) if wall else 0,
        "p50_ms": round(pct(50) * 1000),
        "p99_ms": round(pct(99) * 1000),
        "mean_ms": round(statistics.mean(lat) * 1000) if lat else None,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--requests", default="50,400,600")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--queue-limit", type=int, default=64)
    ap.add_argument("--over-limit", type=int, default=4, help="queue limit of the 429 phase")
    ap.add_argument("--deadline", type=float, default=600, help="seconds per phase at most")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    levels = [int(x) for x in a.levels.split(",")]
    counts = [int(x) for x in a.requests.split(",")]
    if len(counts) != len(levels):
        sys.exit("--levels and --requests need the same number of entries")

    server, url = start_server(a.queue_limit)
    report = {"url": url, "max_tokens": a.max_tokens, "queue_limit": a.queue_limit, "phases": []}
    try:
        one_request(url, 2, 0)  # warm-up
        report["rss_before_mib"] = round(rss_mib(server.pid), 1)
        for clients, count in zip(levels, counts):
            report["phases"].append(phase(url, clients, count, a.max_tokens, a.deadline))
        report["rss_after_mib"] = round(rss_mib(server.pid), 1)
        report["requests_total"] = sum(p["requests"] for p in report["phases"])
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)

    # Above the bound: a short queue and many clients; only 429s may fail.
    server, url = start_server(a.over_limit)
    try:
        over = phase(url, max(levels), max(levels) * 2, a.max_tokens, a.deadline)
        over["queue_limit"] = a.over_limit
        report["over_limit"] = over
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)

    below_errors = sum(sum(p["errors"].values()) for p in report["phases"])
    only_429 = set(report["over_limit"]["errors"]) <= {"429"}
    report["pass"] = below_errors == 0 and only_429
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"pathos serve load test · {url} · max_tokens {a.max_tokens} · queue limit {a.queue_limit}")
        print(f"{'clients':>7} {'requests':>8} {'ok':>5} {'errors':>10} {'tok/s':>7} {'req/s':>6} {'p50 ms':>7} {'p99 ms':>7}")
        for p in report["phases"] + [report["over_limit"]]:
            errs = ",".join(f"{k}:{v}" for k, v in p["errors"].items()) or "0"
            print(
                f"{p['clients']:>7} {p['requests']:>8} {p['ok']:>5} {errs:>10} {p['tokens_per_second']:>7} "
                f"{p['requests_per_second']:>6} {p['p50_ms']:>7} {p['p99_ms']:>7}"
                + (f"   (queue limit {p['queue_limit']})" if "queue_limit" in p else "")
            )
        print(
            f"RSS {report['rss_before_mib']} MiB before, {report['rss_after_mib']} MiB after "
            f"{report['requests_total']} requests"
        )
        print("PASS" if report["pass"] else "FAIL")
    sys.exit(0 if report["pass"] else 1)


if __name__ == "__main__":
    main()
