"""Result rows and run directories: the format README.md "Results format" documents.

A run directory holds run.json (suite and environment), results.jsonl (one JSON object per case,
appended and flushed as each case finishes) and, once written, report.html.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from .spec import Case

STATUSES = ("ok", "oom", "timeout", "error", "crashed", "unavailable", "nonfinite")

# The keys of README.md "Results format", in that order. Never rename; add new keys at the end.
ROW_KEYS = (
    "case_id", "suite", "backend", "backend_kind", "mode", "seq_len", "batch", "heads", "d_head",
    "n_buckets", "n_hashes", "chunk_len", "causal", "dedup", "dtype", "device", "status", "reason",
    "time_median_s", "time_iqr_s", "time_min_s", "repeats", "compile_time_s", "compilations",
    "mem_peak_bytes", "mem_method", "nvml_peak_used_bytes", "rss_peak_bytes", "flops_analytic",
    "flops_counted", "achieved_flops_per_s", "rel_error", "attn_mass_recall", "worker_setup_s", "wall_s",
)
# Added keys: seed of the inputs and rotations, the [model] table of train_step cases, the peer
# package and version behind a peer backend, the worker's last stage (where a failure happened), and
# the raw duration of the first call (compile_time_s is first_call_s - time_median_s).
EXTRA_KEYS = ("seed", "model", "peer", "stage", "first_call_s")

RUN_FILE = "run.json"
RESULTS_FILE = "results.jsonl"
REPORT_FILE = "report.html"


class ResultsFileError(ValueError):
    """A results.jsonl or run.json that cannot be read as one; the message names the file."""


def new_row(case: Case) -> dict:
    """A row for `case` with its parameters filled in and every metric None (not measured)."""
    params = asdict(case)
    row = {key: None for key in ROW_KEYS + EXTRA_KEYS}
    for key in row:
        if key in params:
            row[key] = params[key]
    row["repeats"] = None  # set to the number of timed calls when timing ran
    return row


class ResultsWriter:
    """Appends rows to results.jsonl, one line each, flushed at once so a killed sweep keeps them."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # A sweep killed in the middle of a write leaves a partial last line: start on a fresh one.
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, "rb") as f:
                f.seek(-1, 2)
                needs_newline = f.read(1) != b"\n"
        else:
            needs_newline = False
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 -- closed by close()
        if needs_newline:
            self._file.write("\n")
            self._file.flush()

    def append(self, row: dict) -> None:
        self._file.write(json.dumps(row, sort_keys=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_rows(path: Path) -> list[dict]:
    """Rows of a results.jsonl (or of the results.jsonl inside a run directory).

    Lines that are not complete JSON objects (a write cut short by a kill) are skipped. A file
    that is not UTF-8 text (rows are written as ASCII JSON) raises ResultsFileError.
    """
    path = results_path(path)
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except UnicodeDecodeError:
        raise ResultsFileError(f"{path}: not a results file (not UTF-8 text)") from None
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "case_id" in row:
            rows.append(row)
    return rows


def results_path(path: Path) -> Path:
    path = Path(path)
    return path / RESULTS_FILE if path.is_dir() else path


def new_run_dir(base: Path, suite_name: str) -> Path:
    """base/<suite>-<UTC timestamp>, e.g. reports/smoke-20260101T120000Z (made unique if taken)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    candidate = Path(base) / f"{suite_name}-{stamp}"
    n = 1
    while candidate.exists():
        n += 1
        candidate = Path(base) / f"{suite_name}-{stamp}-{n}"
    return candidate


def latest_run_dir(base: Path, suite_name: str) -> Path | None:
    """The newest base/<suite>-<timestamp> directory holding a run.json, or None."""
    runs = sorted(p for p in Path(base).glob(f"{suite_name}-*") if (p / RUN_FILE).exists())
    return runs[-1] if runs else None


def write_run_json(run_dir: Path, info: dict) -> None:
    path = Path(run_dir) / RUN_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def read_run_json(run_dir: Path) -> dict:
    """run_dir/run.json; ResultsFileError (naming the file) when it is not a JSON object."""
    path = Path(run_dir) / RUN_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ResultsFileError(f"{path}: not a run.json (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise ResultsFileError(f"{path}: not a run.json (invalid JSON: {exc})") from None
    if not isinstance(info, dict):
        raise ResultsFileError(f"{path}: not a run.json (a JSON {type(info).__name__}, not an object)")
    return info
