#!/usr/bin/env python3
"""Opens a page in headless Chromium and waits, in real time, until the page says it is
finished, then saves its DOM and a screenshot. `--dump-dom` cannot do this for a live
debate: virtual time does not wait for a streamed response body.

    scripts/browser-wait.py BROWSER URL --dom OUT.html --screenshot OUT.png
                            [--timeout 900] [--width 1280] [--height 2400] [--scroll-to SEL]

"Finished" is #render-status[data-state] being done, rendered, error or stopped.
Talks the DevTools protocol over --remote-debugging-pipe (NUL-separated JSON on fds 3
and 4), so it needs nothing beyond Python's standard library. Exit status: 0 when the
page finished, 1 on a timeout or a browser failure (the DOM is saved either way).
"""

import argparse
import base64
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time

STATE = "(document.getElementById('render-status') || {dataset: {}}).dataset.state || ''"
FINISHED = {"done", "rendered", "error", "stopped"}


class Pipe:
    """A DevTools session over the browser's debugging pipe."""

    def __init__(self, proc, write_fd, read_fd):
        self.proc, self.w, self.r = proc, write_fd, read_fd
        self.buf, self.next_id = b"", 0

    def call(self, method, params=None, session=None, timeout=60):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            while b"\0" not in self.buf:
                if time.time() > deadline:
                    raise TimeoutError(method)
                chunk = os.read(self.r, 1 << 16)
                if not chunk:
                    raise RuntimeError("the browser closed the debugging pipe")
                self.buf += chunk
            raw, self.buf = self.buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError("%s: %s" % (method, reply["error"]))
                return reply.get("result", {})


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("browser")
    ap.add_argument("url")
    ap.add_argument("--dom", required=True)
    ap.add_argument("--screenshot", required=True)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=2400)
    ap.add_argument("--scroll-to", metavar="SELECTOR", help="scroll this element to the top before the screenshot")
    a = ap.parse_args()

    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()
    # Keep the browser's ends clear of 3 and 4, which the shell maps them onto.
    cmd_fd = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
    out_fd = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
    profile = tempfile.mkdtemp(prefix="pathos-browser-")
    args = [
        "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
        "--remote-debugging-pipe", "--user-data-dir=" + profile, "about:blank",
    ]
    log = open(os.environ.get("BROWSER_LOG", os.devnull), "a")
    proc = subprocess.Popen(
        ["bash", "-c", 'exec "$0" "$@" 3<&%d 4>&%d' % (cmd_fd, out_fd), a.browser] + args,
        pass_fds=(cmd_fd, out_fd), stdout=log, stderr=log,
    )
    for fd in (to_browser_r, from_browser_w, cmd_fd, out_fd):
        os.close(fd)
    cdp = Pipe(proc, to_browser_w, from_browser_r)
    state, ok = "", False
    try:
        target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        cdp.call("Emulation.setDeviceMetricsOverride",
                 {"width": a.width, "height": a.height, "deviceScaleFactor": 1, "mobile": False}, session)
        cdp.call("Page.navigate", {"url": a.url}, session)
        deadline = time.time() + a.timeout
        last = None
        while time.time() < deadline:
            state = cdp.call("Runtime.evaluate", {"expression": STATE, "returnByValue": True}, session)["result"].get("value", "")
            if state != last:
                print("browser-wait: page state %r" % state, file=sys.stderr, flush=True)
                last = state
            if state in FINISHED:
                ok = True
                break
            time.sleep(1)
        if not ok:
            print("browser-wait: gave up after %.0f s (state %r)" % (a.timeout, state), file=sys.stderr)
        if a.scroll_to:
            cdp.call("Runtime.evaluate", {"expression": "document.querySelector(%s).scrollIntoView()" % json.dumps(a.scroll_to)}, session)
        time.sleep(0.3)  # let the last frame paint before the screenshot
        dom = cdp.call("Runtime.evaluate", {"expression": "document.documentElement.outerHTML", "returnByValue": True}, session)
        with open(a.dom, "w", encoding="utf-8") as f:
            f.write("<!DOCTYPE html>\n" + dom["result"]["value"])
        shot = cdp.call("Page.captureScreenshot", {"format": "png"}, session)
        with open(a.screenshot, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        try:
            cdp.call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
    except (RuntimeError, TimeoutError, OSError) as e:
        print("browser-wait: %s" % e, file=sys.stderr)
        ok = False
    finally:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        subprocess.run(["rm", "-rf", profile], check=False)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
