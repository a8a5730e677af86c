#!/usr/bin/env python3
"""Replays a saved debate transcript as the Server-Sent Events `pathos serve` streams, so
the viewer's live mode can be checked in a browser without a model or the real server.

    scripts/sse-replay.py TRANSCRIPT.json --emotions BEAM.json [--port 0] [--delay 0.05]
                          [--ethics VERDICT.json] [--api-key KEY]

Serves the viewer page at /, the BEAM table at /v1/pathos/emotions, one model at
/v1/models, and POST /v1/pathos/rewrite as the event stream: detect (before), then per
round `round`, one `turn` per agent turn, `round_end`; the synthesis turns (round null),
detect (after), `result`. Prints "listening on PORT" once ready. Standard library only.
"""

import argparse
import json
import pathlib
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGE = ROOT / "src" / "server" / "viewer" / "index.html"


def events(t, ethics):
    """The event sequence of one debate, in the order the server emits it."""
    rounds = t.get("rounds", [])
    of = t.get("config", {}).get("max_rounds") or len(rounds)
    yield "step", {"text": "reading the emotions of the source"}
    yield "detect", {"stage": "before", "detection": t["detect_before"]}
    for r in rounds:
        yield "round", {"index": r["index"], "of": of, "contentiousness": r["contentiousness"]}
        for turn in r.get("turns", []):
            yield "turn", {"round": r["index"], "turn": turn}
        yield "round_end", {"round": r}
    yield "step", {"text": "synthesis"}
    for turn in t.get("synthesis", {}).get("turns", []):
        yield "turn", {"round": None, "turn": turn}
    if t.get("features_turn"):
        yield "turn", {"round": None, "turn": t["features_turn"]}
    yield "detect", {"stage": "after", "detection": t["detect_after"]}
    yield "result", {"transcript": t, "ethics": ethics}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("transcript")
    ap.add_argument("--emotions", required=True, help="output of `pathos emotions --json`")
    ap.add_argument("--ethics", help="an ethics verdict to send in `result`")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay", type=float, default=0.05, help="seconds between events")
    ap.add_argument("--api-key", help="require this bearer key")
    a = ap.parse_args()
    transcript = json.loads(pathlib.Path(a.transcript).read_text())
    beam = json.loads(pathlib.Path(a.emotions).read_text())
    ethics = json.loads(pathlib.Path(a.ethics).read_text()) if a.ethics else None
    model = transcript.get("config", {}).get("judge_model", "replay")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def send(self, code, ctype, body):
            data = body if isinstance(body, bytes) else body.encode()
            self.send_response(code)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def error(self, code, message, kind):
            self.send(code, "application/json", json.dumps({"error": {"message": message, "type": kind}}))

        def authorized(self):
            if not a.api_key or self.headers.get("authorization") == "Bearer " + a.api_key:
                return True
            self.error(401, "missing or wrong API key", "authentication_error")
            return False

        def do_GET(self):
            path = self.path.split("?")[0]
            if path in ("/", "/index.html"):
                self.send(200, "text/html; charset=utf-8", PAGE.read_bytes())
            elif not self.authorized():
                return
            elif path == "/v1/models":
                self.send(200, "application/json", json.dumps({"object": "list", "data": [{"id": model, "object": "model"}]}))
            elif path == "/v1/pathos/emotions":
                self.send(200, "application/json", json.dumps(beam))
            else:
                self.error(404, "no route " + path, "not_found")

        def do_POST(self):
            if self.path.split("?")[0] != "/v1/pathos/rewrite":
                return self.error(404, "no route " + self.path, "not_found")
            if not self.authorized():
                return
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            try:
                req = json.loads(body)
            except ValueError as e:
                return self.error(400, "body is not JSON: %s" % e, "invalid_request_error")
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("cache-control", "no-cache")
            self.send_header("connection", "close")
            self.end_headers()
            self.close_connection = True
            missing = [k for k in ("text", "target") if not req.get(k)]
            seq = events(transcript, ethics if req.get("ethics") else None)
            if missing:
                seq = [("error", {"error": {"message": "missing " + ", ".join(missing), "type": "invalid_request_error"}})]
            try:
                self.wfile.write(b": replaying a saved debate\n\n")
                for kind, data in seq:
                    self.wfile.write(("event: %s\ndata: %s\n\n" % (kind, json.dumps(data))).encode())
                    self.wfile.flush()
                    time.sleep(a.delay)
            except (BrokenPipeError, ConnectionResetError):
                pass

    server = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    print("listening on %d" % server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
