"""Open an HTML file in headless Chromium through Playwright and report what a reader's browser would see:
JavaScript errors, dialogs, the page's own checks (window.__reportChecks), load time and a full-page
screenshot. Playwright drives the system's Chromium (executable_path): no browser download.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from typing_extensions import Self  # a torch dependency; typing.Self needs 3.11

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: Flags for a quiet, reproducible headless run: no sandbox (CI containers run as root), no GPU, no
#: network chatter, no first-run UI.
FLAGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--mute-audio")

# The screenshot's statistics, computed in the page from the decoded PNG: a blank or one-colour page
# shows as background_share ~ 1.
PIXEL_STATS = """async (png) => {
  const img = new Image(); img.src = 'data:image/png;base64,' + png; await img.decode();
  const c = document.createElement('canvas'); c.width = img.width; c.height = img.height;
  const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data; const counts = new Map();
  let n = 0;
  for (let i = 0; i < d.length; i += 16) { const k = (d[i] << 16) | (d[i+1] << 8) | d[i+2];
    counts.set(k, (counts.get(k) || 0) + 1); n += 1; }
  const top = Math.max(...counts.values());
  return {width: c.width, height: c.height, background_share: top / n, colours: counts.size};
}"""


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

    js_errors: list[str] = field(default_factory=list)     # uncaught exceptions and console errors
    dialogs: list[str] = field(default_factory=list)       # alert/confirm/prompt messages (none expected)
    checks: dict | None = None                             # window.__reportChecks once done
    load_s: float | None = None                            # navigation start -> load event
    ready_s: float | None = None                           # navigation start -> checks done (charts drawn)
    screenshot: bytes = b""
    pixels: dict | None = None                             # screenshot statistics (PIXEL_STATS)
    body_text: str = ""
    script_value: object = None                            # what `script` evaluated to, if one was given


class HeadlessChromium:
    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or find_chromium()

    def __enter__(self) -> Self:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(executable_path=self.binary, headless=True, args=list(FLAGS))
        return self

    def __exit__(self, *exc) -> None:
        self._browser.close()
        self._playwright.stop()

    def inspect_page(self, path: Path, width: int = 1280, height: int = 900, timeout_s: float = 30.0,
                     script: str | None = None) -> PageReport:
        """Load file `path`, wait for window.__reportChecks.done, screenshot the whole page, then
        evaluate `script` (a JavaScript expression; a promise is awaited) if given."""
        import base64

        report = PageReport()
        page = self._browser.new_page(viewport={"width": width, "height": height})
        page.on("pageerror", lambda error: report.js_errors.append(f"uncaught: {error.message.splitlines()[0]}"))
        page.on("console", lambda message: report.js_errors.append(f"console.{message.type}: {message.text}")
                if message.type in ("error", "assert") else None)

        def dismiss(dialog) -> None:
            report.dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", dismiss)
        page.goto(Path(path).resolve().as_uri())
        try:
            page.wait_for_function("window.__reportChecks && window.__reportChecks.done", timeout=timeout_s * 1000)
        except Exception:  # Playwright's TimeoutError: reported as the page's failure
            report.js_errors.append(f"page not ready within {timeout_s:.0f} s (window.__reportChecks.done)")
        report.checks = page.evaluate("window.__reportChecks || null")
        load = page.evaluate("(performance.getEntriesByType('navigation').map(e => e.loadEventEnd)[0]) || null")
        report.load_s = load / 1000 if load else None
        if report.checks and report.checks.get("renderMs") is not None:
            report.ready_s = report.checks["renderMs"] / 1000
        report.body_text = page.inner_text("body")
        report.screenshot = page.screenshot(full_page=True)
        report.pixels = page.evaluate(PIXEL_STATS, base64.b64encode(report.screenshot).decode())
        if script:
            value = page.evaluate(script)
            report.script_value = value if isinstance(value, str) else json.dumps(value)
        page.close()
        return report
