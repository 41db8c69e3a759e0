"""Reading results directories (README.md, "Results format") into one pandas frame for the report.

A results directory holds run.json (suite, environment, start time) and results.jsonl (one JSON object
per case). Every problem is a ResultsError whose message names the file, and the line for a bad row,
so the CLI can print it as one line.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

# The keys of a results row (README order) and the statuses: one definition, the runner's.
# Missing keys read as null (a metric not measured).
from .results import ROW_KEYS, STATUSES

#: Without these a row cannot be placed in any table or plot.
REQUIRED_KEYS = ("case_id", "backend", "status", "seq_len")
NUMERIC_KEYS = (
    "seq_len", "batch", "heads", "d_head", "n_buckets", "n_hashes", "chunk_len", "time_median_s",
    "time_iqr_s", "time_min_s", "repeats", "compile_time_s", "compilations", "mem_peak_bytes",
    "nvml_peak_used_bytes", "rss_peak_bytes", "flops_analytic", "flops_counted", "achieved_flops_per_s",
    "rel_error", "attn_mass_recall", "worker_setup_s", "wall_s",
)


class ResultsError(ValueError):
    """A results directory that cannot be read; the message is one line naming the file (and line)."""


@dataclass
class ResultSet:
    """One results directory: its run.json as a dict, its rows (dicts with every ROW_KEYS key) and the
    "file:line" of lines skipped because a killed sweep cut their write short."""

    path: Path
    run: dict
    rows: list[dict] = field(default_factory=list)
    cut_short: list[str] = field(default_factory=list)

    @property
    def suite(self) -> str:
        return str(self.run.get("suite") or (self.rows[0].get("suite") if self.rows else "") or self.path.name)


def load_result_set(path: Path) -> ResultSet:
    """Read and check one results directory; raises ResultsError naming the file and line at fault."""
    path = Path(path)
    if not path.is_dir():
        raise ResultsError(f"results directory {str(path)!r} does not exist")
    run_path, rows_path = path / "run.json", path / "results.jsonl"
    if not run_path.is_file():
        raise ResultsError(f"{run_path}: missing (not a results directory written by `reformer-bench run`)")
    try:
        run = json.loads(run_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{run_path}: not valid JSON ({_why(exc)})") from None
    if not isinstance(run, dict):
        raise ResultsError(f"{run_path}: expected a JSON object, got {type(run).__name__}")
    if not rows_path.is_file():
        raise ResultsError(f"{rows_path}: missing")
    result_set = ResultSet(path=path, run=run)
    with rows_path.open(encoding="utf-8", errors="replace") as lines:
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{rows_path}:{line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                # The runner resumes a killed sweep on a fresh line, so a write cut short can sit in the
                # middle of the file: JSON that is fine up to where the line ends is that, not corruption.
                if line.lstrip().startswith("{") and exc.pos >= len(line.rstrip()):
                    result_set.cut_short.append(where)
                    continue
                raise ResultsError(f"{where}: not valid JSON ({_why(exc)})") from None
            result_set.rows.append(_check_row(row, where))
    return result_set


def _check_row(row: object, where: str) -> dict:
    if not isinstance(row, dict):
        raise ResultsError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [key for key in REQUIRED_KEYS if row.get(key) is None]
    if missing:
        raise ResultsError(f"{where}: missing key {missing[0]!r}")
    if row["status"] not in STATUSES:
        raise ResultsError(f"{where}: status={row['status']!r} is not one of {', '.join(STATUSES)}")
    for key in NUMERIC_KEYS:
        value = row.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ResultsError(f"{where}: {key}={value!r} is not a number or null")
    return {key: row.get(key) for key in ROW_KEYS} | {k: v for k, v in row.items() if k not in ROW_KEYS}


def _why(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at column {exc.colno}"
    return str(exc).splitlines()[0]


def load_frame(paths: list[Path]) -> tuple[list[ResultSet], pd.DataFrame]:
    """All rows of all directories in one frame, with `run` (the directory name) and `series` columns.

    Numeric metrics become float columns with NaN for null, so plots and fits can use them directly.
    """
    if not paths:
        raise ResultsError("no results directories given")
    sets = [load_result_set(Path(p)) for p in paths]
    records = []
    for result_set in sets:
        for row in result_set.rows:
            records.append(row | {"run": result_set.path.name})
    frame = pd.DataFrame.from_records(records, columns=None if records else list(ROW_KEYS) + ["run"])
    for key in ROW_KEYS:
        if key not in frame.columns:
            frame[key] = None
    for key in NUMERIC_KEYS:
        frame[key] = pd.to_numeric(frame[key], errors="coerce").astype(float)
    frame["suite"] = frame["suite"].where(frame["suite"].notna(), "").astype(str)
    frame["series"] = [series_label(row) for row in frame.to_dict("records")]
    return sets, frame


def series_label(row: dict) -> str:
    """How a plot legend names a row's series: "eager LSH-4" (+ " dedup"), the backend alone for dense."""
    n_hashes = row.get("n_hashes")
    hashes = n_hashes is not None and not (isinstance(n_hashes, float) and math.isnan(n_hashes))
    if row.get("backend_kind") == "dense" or not hashes:
        return str(row["backend"])
    return f"{row['backend']} LSH-{int(n_hashes)}" + (" dedup" if row.get("dedup") is True else "")
