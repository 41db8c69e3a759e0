"""The progress of a sweep on the terminal: a progress line with ETA while it runs.

ETA = mean wall time of the cases finished so far x cases left (a rough guide: cases grow with
seq_len). On a terminal the progress line redraws in place; elsewhere (CI logs, pipes) each
finished case prints one line.
"""
from __future__ import annotations

import sys
import time
from collections import Counter
from typing import TextIO

BAR_WIDTH = 24


class Progress:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.total = 0
        self.done = 0
        self.started = time.monotonic()
        self.current = ""
        self.statuses: Counter = Counter()

    def begin(self, total: int, skipped: int = 0) -> None:
        self.total = total
        self.started = time.monotonic()
        if skipped:
            self._line(f"resuming: {skipped} cases already have a row, {total} to run")

    def start(self, case) -> None:
        self.current = case.case_id
        if self.tty:
            self._draw()

    def finish(self, row: dict) -> None:
        self.done += 1
        self.statuses[row["status"]] += 1
        if self.tty:
            self._draw()
        else:
            self._line(f"[{self.done}/{self.total}] {row['case_id']}: {_row_brief(row)}  ETA {self._eta()}")

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def _eta(self) -> str:
        if not self.done:
            return "?"
        left = (time.monotonic() - self.started) / self.done * (self.total - self.done)
        return format_duration(left)

    def _draw(self) -> None:
        filled = int(BAR_WIDTH * self.done / max(1, self.total))
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        counts = " ".join(f"{k}={v}" for k, v in sorted(self.statuses.items()))
        text = f"\r[{bar}] {self.done}/{self.total} ETA {self._eta()} {counts} | {self.current}"
        self.stream.write(text[:160].ljust(160))
        self.stream.flush()

    def _line(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r" + " " * 160 + "\r")
        self.stream.write(text + "\n")
        self.stream.flush()


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _row_brief(row: dict) -> str:
    if row["status"] != "ok":
        return f"{row['status']} ({row.get('reason') or ''})"[:140]
    return f"ok {_ms(row.get('time_median_s'))} ms, {_mib(row.get('mem_peak_bytes'))} MiB"


def _ms(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3g}"


def _mib(nbytes) -> str:
    return "-" if nbytes is None else f"{nbytes / 2 ** 20:.3g}"
