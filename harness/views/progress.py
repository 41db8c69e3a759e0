"""The progress of a sweep on the terminal: a progress line with ETA while it runs.

On a terminal, rich's progress bar (done / total, ETA from the pace so far, statuses so far, the case
running) with a line per finished case above it; elsewhere (CI logs, pipes) one line per finished case
with ETA = mean wall time of the cases finished so far x cases left (a rough guide: cases grow with
seq_len).
"""
from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any, TextIO

BAR_WIDTH = 24


class Progress:
    """begin(total, skipped), start(case), update(text), finish(row), note(text), close(): what the runner
    calls."""

    def __init__(self, stream: TextIO | None = None) -> None:
        from rich.console import Console

        self.console = Console(file=stream or sys.stderr, highlight=False)
        self.tty = self.console.is_terminal
        self.total = 0
        self.done = 0
        self.started = time.monotonic()
        self.statuses: Counter = Counter()
        self._bar: Any = None  # a rich.progress.Progress while a bar shows (rich is imported only then)
        self._task = None

    def begin(self, total: int, skipped: int = 0) -> None:
        self.total = total
        self.started = time.monotonic()
        if self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(BarColumn(bar_width=BAR_WIDTH), MofNCompleteColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), TextColumn("{task.fields[statuses]}"),
                                 TextColumn("{task.description}"), console=self.console)
            self._bar.start()
            self._task = self._bar.add_task("", total=total, statuses="")
        if skipped:
            self.note(f"resuming: {skipped} cases already have a row, {total} to run")

    def start(self, case) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=case.case_id)

    def note(self, text: str) -> None:
        """A line of its own, above the bar on a terminal (e.g. a training step's loss)."""
        self.console.print(text, markup=False, soft_wrap=True)

    def update(self, text: str) -> None:
        """What the running case reports (a training's step, loss and accuracy): the bar's text on a
        terminal, a line of its own elsewhere."""
        if self._bar is not None:
            self._bar.update(self._task, description=text)
        else:
            self.note(f"  {text}")

    def finish(self, row: dict) -> None:
        self.done += 1
        self.statuses[row["status"]] += 1
        line = f"[{self.done}/{self.total}] {row['case_id']}: {_row_brief(row)}"
        if self._bar is not None:
            counts = " ".join(f"{k}={v}" for k, v in sorted(self.statuses.items()))
            self._bar.update(self._task, advance=1, statuses=counts)
            self.note(line)
        else:
            self.note(f"{line}  ETA {self._eta()}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _eta(self) -> str:
        if not self.done:
            return "?"
        left = (time.monotonic() - self.started) / self.done * (self.total - self.done)
        return format_duration(left)


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
    if row.get("task_accuracy") is not None:
        return f"ok, accuracy {row['task_accuracy']:.2%}"
    if row.get("train_steps") is not None:
        taken = "" if row.get("train_s") is None else f" in {row['train_s']:.0f} s"
        last = "" if row.get("train_accuracy") is None else f", last accuracy {row['train_accuracy']:.1%}"
        return f"ok, trained {row['train_steps']} steps{taken}{last}"
    return f"ok {_ms(row.get('time_median_s'))} ms, {_mib(row.get('mem_peak_bytes'))} MiB"


def _ms(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3g}"


def _mib(nbytes) -> str:
    return "-" if nbytes is None else f"{nbytes / 2 ** 20:.3g}"
