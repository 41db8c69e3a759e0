"""Results directories (read by harness.results.store, the one reader) as one pandas frame for the report."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..errors import UserError
from ..results.store import ResultSet, numeric_keys, read_results, row_keys
from ..suite.parameters import flag_labels


def load_frame(paths: list[Path]) -> tuple[list[ResultSet], pd.DataFrame]:
    """All rows of all directories in one frame, with `run` (the directory name) and `series` columns.

    Every row key of the table is a column (null where a row lacks it); numeric metrics are float
    columns with NaN for null, so plots and fits can use them directly.
    """
    if not paths:
        raise UserError("no results directories given")
    sets = []
    for path in paths:
        if not Path(path).is_dir():
            raise UserError(f"results directory {str(path)!r} does not exist")
        result_set = read_results(Path(path), require_run=True)
        sets.append(result_set)
    keys = list(row_keys())
    records = [row | {"run": s.path.name} for s in sets for row in s.rows]
    frame = pd.DataFrame.from_records(records, columns=None if records else keys + ["run"])
    for key in keys:
        if key not in frame.columns:
            frame[key] = None
    for key in numeric_keys():
        frame[key] = pd.to_numeric(frame[key], errors="coerce").astype(float)
    frame["suite"] = frame["suite"].where(frame["suite"].notna(), "").astype(str)
    frame["series"] = [series_label(row) for row in frame.to_dict("records")]
    from .analysis import noise_reasons

    frame["noise"] = noise_reasons(frame)
    frame["peak_share"] = _peak_shares(sets, frame)
    return sets, frame


def _peak_shares(sets: list[ResultSet], frame: pd.DataFrame) -> pd.Series:
    """achieved_flops_per_s / the matmul peak its run measured for the row's device and dtype (NaN where
    either is unknown, and for interpreted rows, whose time is not the kernels')."""
    peaks = {(s.path.name, p.get("device"), p.get("dtype")): p.get("flops_per_s")
             for s in sets for p in (s.run.get("matmul_peak") or [])}
    if frame.empty:
        return pd.Series(dtype=float)
    values = []
    for row in frame[["run", "device", "dtype", "achieved_flops_per_s", "interpreted"]].itertuples(index=False):
        peak = peaks.get((row.run, row.device, row.dtype))
        ok = peak and pd.notna(row.achieved_flops_per_s) and row.interpreted is not True
        values.append(row.achieved_flops_per_s / peak if ok else float("nan"))
    return pd.Series(values, index=frame.index, dtype=float)


def series_label(row: dict) -> str:
    """How a plot legend names a row's series: "eager LSH-4", + the labels of its true LSH flags (" dedup",
    " buckets replayed": harness.suite.parameters), the backend alone for dense."""
    n_hashes = row.get("n_hashes")
    if row.get("backend_kind") == "dense" or n_hashes is None or (isinstance(n_hashes, float)
                                                                    and math.isnan(n_hashes)):
        return str(row["backend"])
    return " ".join([f"{row['backend']} LSH-{int(n_hashes)}", *flag_labels(row)])
