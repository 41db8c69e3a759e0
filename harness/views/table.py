"""The results table of `reformer-bench show` and of the end of a run: the case columns below, then
every metric the table marks `terminal` (harness.measure.metrics), with its unit in the header."""
from __future__ import annotations

from collections import Counter

from ..measure.metrics import Metric, metrics
from ..results.store import STATUSES
from .describe import MODE_SHORT, varying_model_keys


def _what(row: dict) -> str:
    mode = MODE_SHORT.get(row.get("mode"), row.get("mode"))
    workload = row.get("workload")
    return mode if workload in (None, "attention") else f"{workload} {mode}"


def _int(key: str):
    return lambda row: None if row.get(key) is None else f"{row[key]:d}" if isinstance(row[key], int) else str(row[key])


# (header, value of a row): what the case is, then how it ended.
CASE_COLUMNS = (
    ("backend", lambda r: r.get("backend")),
    ("mode", _what),
    ("seq", _int("seq_len")),
    ("batch", _int("batch")),
    ("buckets", _int("n_buckets")),
    ("hashes", _int("n_hashes")),
    ("chunk", _int("chunk_len")),
    ("status", lambda r: r.get("status")),
)


def _metric_column(metric: Metric):
    return metric.column, lambda row: metric.format(row.get(metric.name))


def columns(rows: list[dict] = ()) -> list[tuple[str, object]]:
    """The case columns (with a "model" column of the model keys that differ, where rows differ in
    them), then the terminal metrics."""
    cols = list(CASE_COLUMNS)
    keys = varying_model_keys(list(rows))
    if keys:
        cols.insert(2, ("model", lambda r: " ".join(f"{k}={(r.get('model') or {})[k]}" for k in keys
                                                    if k in (r.get("model") or {}))))
    return cols + [_metric_column(m) for m in metrics(lambda m: m.terminal)]


def results_table(rows: list[dict], reasons: bool = True) -> str:
    """A plain-text table of rows (units in the header); failed rows' reasons listed below it. A value
    that is unknown, or a key a row lacks (an older or hand-edited file), shows as "-"."""
    cols = columns(rows)
    headers = [header for header, _ in cols]
    body = [["-" if show(r) is None else str(show(r)) for _, show in cols] for r in rows]
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
    counts = Counter(r["status"] for r in rows)
    order = [s for s in STATUSES if s in counts] + sorted(set(counts) - set(STATUSES))
    return f"{len(rows)} cases: " + ", ".join(f"{counts[s]} {s}" for s in order)
