"""The results table of `reformer-bench show` and of the end of a run: the case columns below, then
every metric the table marks `terminal` (harness.measure.metrics), with its unit in the header."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from ..measure.metrics import Metric, metrics
from ..results.store import STATUSES
from ..suite.case import attention_label
from ..suite.parameters import plugin_parameters
from .describe import MODE_SHORT, varying_model_keys

# How a row shows in a column: its text, None where it has no value ("-").
Show = Callable[[dict], object]


def _what(row: dict) -> str | None:
    mode = row.get("mode")
    if isinstance(mode, str):
        mode = MODE_SHORT.get(mode, mode)
    workload = row.get("workload")
    return mode if workload in (None, "attention") else f"{workload} {mode}"


def _text(key: str) -> Show:
    return lambda row: None if row.get(key) is None else str(row[key])


def _int(key: str) -> Show:
    return lambda row: None if row.get(key) is None else f"{row[key]:d}" if isinstance(row[key], int) else str(row[key])


# (header, value of a row): what the case is, then how it ended.
CASE_COLUMNS: tuple[tuple[str, Show], ...] = (
    # An interpreted backend's times are the interpreter's, not the kernels': said next to its name.
    ("backend", lambda r: None if r.get("backend") is None else r["backend"] + (" (interpreted)" if r.get("interpreted")
                                                                                 else "")),
    ("mode", _what),
    ("seq", _int("seq_len")),
    ("batch", _int("batch")),
    ("buckets", _int("n_buckets")),
    ("hashes", _int("n_hashes")),
    ("chunk", _int("chunk_len")),
    ("status", lambda r: r.get("status")),
)


def _task_setting(row: dict) -> str | None:
    """"trained with LSH-4" for a training, "LSH-4 evaluated with LSH-2" for an evaluation."""
    if not row.get("task"):
        return None
    trained = attention_label(row.get("train_n_hashes"))
    if row.get("eval_n_hashes") is None:
        return f"{row['task']} trained with {trained}"
    return f"{row['task']} {trained} evaluated with {attention_label(row['eval_n_hashes'])}"


def _metric_column(metric: Metric) -> tuple[str, Show]:
    return metric.column, lambda row: metric.format(row.get(metric.name))


def columns(rows: Sequence[dict] = ()) -> list[tuple[str, Show]]:
    """The case columns (with a "model" column of the model keys that differ, where rows differ in
    them), then the terminal metrics."""
    cols = list(CASE_COLUMNS)
    # A plugin's parameters (harness.suite.parameters), before the status, where some row sets one.
    cols[-1:-1] = [(p.title or p.name, _text(p.name))
                   for p in plugin_parameters() if p.in_row and any(r.get(p.name) is not None for r in rows)]
    if any(r.get("task") for r in rows):
        cols.insert(2, ("task", _task_setting))
    keys = varying_model_keys(list(rows))
    if keys:
        cols.insert(2, ("model", lambda r: " ".join(f"{k}={(r.get('model') or {})[k]}" for k in keys
                                                    if k in (r.get("model") or {}))))
    # A metric no row has a value for (task accuracy in an attention sweep) is left out.
    shown = [m for m in metrics(lambda m: m.terminal) if not rows or any(r.get(m.name) is not None for r in rows)]
    return cols + [_metric_column(m) for m in shown]


def results_table(rows: list[dict], reasons: bool = True) -> str:
    """The rows as a rich table (units in the header), rendered to plain text; failed rows' reasons
    listed below it. A value that is unknown, or a key a row lacks (an older or hand-edited file),
    shows as "-"."""
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table

    cols = columns(rows)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    text_columns = {"backend", "mode", "task", "model", "status"}
    for header, _ in cols:
        table.add_column(header, justify="left" if header in text_columns else "right", no_wrap=True)
    for row in rows:
        table.add_row(*["-" if show(row) is None else str(show(row)) for _, show in cols])
    out = io.StringIO()
    # As wide as the table needs: a pipe or a CI log must not get wrapped or cut columns.
    Console(file=out, width=100_000, color_system=None, highlight=False).print(table)
    lines = [line.rstrip() for line in out.getvalue().splitlines()]
    failures = [r for r in rows if r["status"] != "ok"]
    if reasons and failures:
        lines.append("")
        lines += [f"{r['case_id']}: {r['status']}: {r.get('reason') or ''}" for r in failures]
    return "\n".join(lines)


def status_summary(rows: list[dict]) -> str:
    counts = Counter(r["status"] for r in rows)
    order = [s for s in STATUSES if s in counts] + sorted(set(counts) - set(STATUSES))
    return f"{len(rows)} cases: " + ", ".join(f"{counts[s]} {s}" for s in order)
