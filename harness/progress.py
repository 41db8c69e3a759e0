"""Terminal output of a sweep: a progress line with ETA while it runs, tables of rows after.

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


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


# Columns of the results table: header, unit, how a row's value is shown.
COLUMNS = (
    ("backend", "", lambda r: r.get("backend")),
    ("mode", "", lambda r: {"forward": "fwd", "forward_backward": "fwd+bwd"}.get(r.get("mode"), r.get("mode"))),
    ("seq", "", lambda r: r.get("seq_len")),
    ("batch", "", lambda r: r.get("batch")),
    ("buckets", "", lambda r: _num(r.get("n_buckets"), "d")),
    ("hashes", "", lambda r: _num(r.get("n_hashes"), "d")),
    ("chunk", "", lambda r: _num(r.get("chunk_len"), "d")),
    ("status", "", lambda r: r.get("status")),
    ("median", "ms", lambda r: _ms(r.get("time_median_s"))),
    ("iqr", "ms", lambda r: _ms(r.get("time_iqr_s"))),
    ("first", "ms", lambda r: _ms(r.get("first_call_s", r.get("compile_time_s")))),
    ("peak mem", "MiB", lambda r: _mib(r.get("mem_peak_bytes"))),
    ("GFLOP/s", "", lambda r: _num(None if r.get("achieved_flops_per_s") is None
                                   else r["achieved_flops_per_s"] / 1e9, ".3g")),
    ("rel err", "", lambda r: _num(r.get("rel_error"), ".2e")),
    ("recall", "", lambda r: _num(r.get("attn_mass_recall"), ".3f")),
)


def results_table(rows: list[dict], reasons: bool = True) -> str:
    """A plain-text table of rows (units in the header); failed rows' reasons listed below it."""
    headers = [f"{name} ({unit})" if unit else name for name, unit, _ in COLUMNS]
    # A row from an older or hand-edited file may lack any key: show "-" rather than fail.
    body = [["-" if show(r) is None else str(show(r)) for _, _, show in COLUMNS] for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in body)) if body else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(cell.rjust(w) if i >= 2 else cell.ljust(w) for i, (cell, w) in
                        enumerate(zip(line, widths))) for line in body]
    failures = [r for r in rows if r["status"] != "ok"]
    if reasons and failures:
        lines.append("")
        lines += [f"{r['case_id']}: {r['status']}: {r.get('reason') or ''}" for r in failures]
    return "\n".join(lines)


def status_summary(rows: list[dict]) -> str:
    from .results import STATUSES

    counts = Counter(r["status"] for r in rows)
    order = [s for s in STATUSES if s in counts] + sorted(set(counts) - set(STATUSES))
    return f"{len(rows)} cases: " + ", ".join(f"{counts[s]} {s}" for s in order)
