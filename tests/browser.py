"""Open an HTML file in headless Chromium and report what a reader's browser would see: JavaScript
errors, dialogs, the page's own checks (window.__reportChecks), load time and a full-page screenshot.

Speaks the DevTools protocol over --remote-debugging-pipe (JSON messages separated by NUL bytes on
file descriptors 3 and 4 of the browser), so it needs no websocket client, driver or port.
"""
from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from typing_extensions import Self  # a torch dependency; typing.Self needs 3.11

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: Flags for a quiet, reproducible headless run: no sandbox (CI containers run as root), no GPU, no
#: network chatter, no first-run UI; a fresh profile each time.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--remote-debugging-pipe")


class BrowserError(RuntimeError):
    """The browser could not be started or did not answer in time."""


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary: $REFORMER_BENCH_CHROMIUM, else the first of CANDIDATES on PATH."""
    explicit = os.environ.get("REFORMER_BENCH_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageReport:
    """What loading a page produced. Times in seconds; screenshot is PNG bytes of the whole page."""

    js_errors: list[str] = field(default_factory=list)     # uncaught exceptions, console.error, log errors
    dialogs: list[str] = field(default_factory=list)       # alert/confirm/prompt messages (none expected)
    checks: dict | None = None                             # window.__reportChecks once done
    load_s: float | None = None                            # navigation start -> load event
    ready_s: float | None = None                           # navigation start -> checks done (charts drawn)
    screenshot: bytes = b""
    pixels: dict | None = None                             # screenshot statistics (see inspect_page)
    body_text: str = ""
    script_value: object = None                            # what `script` evaluated to, if one was given


def _fd_above_9(fd: int) -> int:
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


class _Pipe:
    """DevTools protocol client over the two pipes: send() waits for the reply; events pile up."""

    def __init__(self, to_browser, from_browser) -> None:
        self._out = to_browser
        self._in = from_browser
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self._events: queue.Queue = queue.Queue()
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buffer = b""
        while True:
            chunk = self._in.read1(1 << 16) if hasattr(self._in, "read1") else self._in.read(1 << 16)
            if not chunk:
                with self._cond:
                    self._replies[-1] = {}
                    self._cond.notify_all()
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    with self._cond:
                        self._replies[message["id"]] = message
                        self._cond.notify_all()
                    continue
                self._events.put(message)
                if message.get("method") == "Page.javascriptDialogOpening":
                    # An open alert() blocks the page, and with it any evaluate in flight: dismiss it
                    # here, from the reader, without waiting for the answer.
                    self._post("Page.handleJavaScriptDialog", {"accept": True}, message.get("sessionId"))

    def _post(self, method: str, params: dict | None, session: str | None) -> int:
        """Send a command without waiting; returns its id."""
        with self._write_lock:
            self._next_id += 1
            message = {"id": self._next_id, "method": method, "params": params or {}}
            if session:
                message["sessionId"] = session
            self._out.write(json.dumps(message).encode() + b"\0")
            self._out.flush()
            return self._next_id

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout_s: float = 30.0) -> dict:
        """Send a command and wait for its answer (the `result` object); BrowserError on error/timeout."""
        message_id = self._post(method, params, session)
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while message_id not in self._replies:
                if -1 in self._replies:
                    raise BrowserError(f"the browser closed the DevTools pipe during {method}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrowserError(f"no answer to {method} within {timeout_s:.0f} s")
                self._cond.wait(left)
            reply = self._replies.pop(message_id)
        if "error" in reply:
            raise BrowserError(f"{method} failed: {reply['error'].get('message')}")
        return reply.get("result", {})

    def events(self) -> list[dict]:
        out = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                return out


class HeadlessChromium:
    """A headless Chromium process for one `with` block, with a fresh profile directory."""

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or find_chromium()
        if not self.binary:
            raise BrowserError("no Chromium found (install Debian's `chromium` or set REFORMER_BENCH_CHROMIUM)")

    def __enter__(self) -> Self:
        self._profile = tempfile.mkdtemp(prefix="reformer-bench-chromium-")
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        # The browser reads commands on fd 3 and writes replies on fd 4; bash moves the pipe ends there
        # (dash takes single-digit fds only). They first go above 9 so neither is already 3 or 4.
        to_child_r, from_child_w = (_fd_above_9(fd) for fd in (to_child_r, from_child_w))
        self._log = tempfile.TemporaryFile()
        command = ["bash", "-c", f'exec "$0" "$@" 3<&{to_child_r} 4>&{from_child_w}', self.binary, *FLAGS,
                   f"--user-data-dir={self._profile}", "about:blank"]
        self._process = subprocess.Popen(command, pass_fds=(to_child_r, from_child_w),
                                         stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log)
        os.close(to_child_r)
        os.close(from_child_w)
        self.pipe = _Pipe(os.fdopen(to_child_w, "wb"), os.fdopen(from_child_r, "rb"))
        try:
            self.version = self.pipe.send("Browser.getVersion", timeout_s=30).get("product", "")
        except (BrowserError, OSError) as exc:
            self._log.seek(0)
            tail = self._log.read().decode(errors="replace").strip().splitlines()[-3:]
            self.__exit__(None, None, None)
            raise BrowserError(f"{self.binary} did not start: {exc}; {' | '.join(tail)}") from None
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.pipe.send("Browser.close", timeout_s=5)
        except (BrowserError, OSError, AttributeError):
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        shutil.rmtree(self._profile, ignore_errors=True)
        self._log.close()

    def inspect_page(self, path: Path, width: int = 1280, height: int = 900, timeout_s: float = 30.0,
                     script: str | None = None) -> PageReport:
        """Load file `path`, wait for window.__reportChecks.done, screenshot the whole page, then
        evaluate `script` (a JavaScript expression; a promise is awaited) if given.

        pixels: {"width", "height", "background_share" (share of pixels equal to the most common
        colour, sampled every 4th pixel), "colours" (distinct sampled colours)}: computed in the page
        from the decoded PNG, so a blank or one-colour screenshot shows as background_share ~ 1.
        """
        pipe = self.pipe
        target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for method in ("Page.enable", "Runtime.enable", "Log.enable"):
            pipe.send(method, session=session)
        pipe.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
        report = PageReport()
        pipe.send("Page.navigate", {"url": Path(path).resolve().as_uri()}, session=session)
        deadline = time.monotonic() + timeout_s
        while True:
            self._collect(report, session)
            state = self._evaluate(session, "window.__reportChecks ? JSON.stringify(window.__reportChecks) : null")
            if state:
                report.checks = json.loads(state)
                if report.checks.get("done"):
                    break
            if time.monotonic() > deadline:
                report.js_errors.append(f"page not ready within {timeout_s:.0f} s (window.__reportChecks.done)")
                break
            time.sleep(0.05)
        timing = self._evaluate(session, "JSON.stringify(performance.getEntriesByType('navigation')"
                                         ".map(e => e.loadEventEnd)[0] || null)")
        if timing and json.loads(timing):
            report.load_s = json.loads(timing) / 1000
        if report.checks and report.checks.get("renderMs") is not None:
            report.ready_s = report.checks["renderMs"] / 1000
        report.body_text = self._evaluate(session, "document.body ? document.body.innerText : ''") or ""
        metrics = pipe.send("Page.getLayoutMetrics", session=session)
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        shot = pipe.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}},
            session=session, timeout_s=timeout_s)
        report.screenshot = base64.b64decode(shot["data"])
        report.pixels = self._pixel_stats(session, shot["data"])
        if script:
            report.script_value = self._evaluate(session, script, await_promise=True)
        self._collect(report, session)
        pipe.send("Target.closeTarget", {"targetId": target})
        return report

    def _evaluate(self, session: str, expression: str, await_promise: bool = False):
        result = self.pipe.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                      "awaitPromise": await_promise}, session=session)
        if "exceptionDetails" in result:
            raise BrowserError(f"evaluating {expression[:60]!r} threw: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def _pixel_stats(self, session: str, png_base64: str) -> dict:
        script = """(async () => {
          const img = new Image(); img.src = 'data:image/png;base64,' + PNG; await img.decode();
          const c = document.createElement('canvas'); c.width = img.width; c.height = img.height;
          const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
          const d = ctx.getImageData(0, 0, c.width, c.height).data; const counts = new Map();
          let n = 0;
          for (let i = 0; i < d.length; i += 16) { const k = (d[i] << 16) | (d[i+1] << 8) | d[i+2];
            counts.set(k, (counts.get(k) || 0) + 1); n += 1; }
          const top = Math.max(...counts.values());
          return JSON.stringify({width: c.width, height: c.height, background_share: top / n, colours: counts.size});
        })()""".replace("PNG", json.dumps(png_base64))
        return json.loads(self._evaluate(session, script, await_promise=True))

    def _collect(self, report: PageReport, session: str) -> None:
        for event in self.pipe.events():
            if event.get("sessionId") != session:
                continue
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                description = details.get("exception", {}).get("description") or details.get("text", "")
                report.js_errors.append(f"uncaught: {description.splitlines()[0] if description else ''}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                args = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                report.js_errors.append(f"console.{params['type']}: {args}")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                report.js_errors.append(f"log: {params['entry'].get('text', '')}")
            elif method == "Page.javascriptDialogOpening":  # the pipe's reader has dismissed it
                report.dialogs.append(params.get("message", ""))
