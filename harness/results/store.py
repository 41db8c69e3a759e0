"""Run directories and result rows: the format README.md "Results format" documents, and its one reader.

A run directory holds run.json (suite, settings and environment), results.jsonl (one JSON object per
case, appended and flushed as each case finishes) and, once written, report.html. A row's keys are the
case's parameters (the table harness.suite.parameters), then every metric of the table
(harness.measure.metrics), in that order; a figure that was not measured is null. The reader checks
every row against the two tables (type, null where allowed, range): a row that does not fit is one
UserError line naming the file, the line, the key and the value.
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..plugins import import_run_plugins

STATUSES = ("ok", "oom", "timeout", "error", "crashed", "unavailable", "nonfinite")
RUN_FILE = "run.json"
RESULTS_FILE = "results.jsonl"
# Without these a row is not a row of a case.
REQUIRED_KEYS = ("case_id", "status")


def row_keys() -> tuple[str, ...]:
    """Every key of a row, in order: case parameters, then the metric table (plugins' metrics included)."""
    from ..measure.metrics import METRICS
    from ..suite.parameters import row_parameters

    return row_parameters() + tuple(METRICS)


def new_row(case) -> dict:
    """A row for `case`: its parameters, then every metric None (not measured)."""
    return case.parameters() | {key: None for key in row_keys() if key not in case.parameters()}


def numeric_keys() -> tuple[str, ...]:
    """Row keys that hold numbers (or null): numeric case parameters and numeric metrics."""
    from ..measure.metrics import metrics
    from ..suite.parameters import names

    return names(lambda p: p.numeric and p.in_row) + tuple(m.name for m in metrics(lambda m: m.numeric))


def row_checks() -> dict[str, Callable[[object], str | None]]:
    """key -> why a row's value for it does not fit (None when it does), from the parameter table and the
    metric table. Null is unknown (a figure not measured, an LSH setting of a dense row); where the
    parameter table says a key is never null, null is refused. A key a row lacks is read as unknown."""
    from ..measure.metrics import metrics
    from ..suite.parameters import parameters

    checks: dict[str, Callable[[object], str | None]] = {p.name: p.row_error for p in parameters(lambda p: p.in_row)}
    checks.update({m.name: _METRIC_CHECKS[m.kind] for m in metrics() if m.name != "status"})
    return checks


def _number_error(value) -> str | None:
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return None
    return "is not a number or null"


def _count_error(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        return "is not an integer or null"
    return "is below 0" if value < 0 else None


def _trace_error(value) -> str | None:
    if value is None:
        return None
    def sample(point) -> bool:  # [x, y, more...]: x and y numbers, the others numbers or null
        return (isinstance(point, list) and len(point) >= 2 and all(_number_error(x) is None for x in point)
                and None not in point[:2])
    if not isinstance(value, list) or not all(sample(point) for point in value):
        return "is not a list of [x, y, ...] samples or null"
    return None


def _mapping_error(value) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and v is not None and _number_error(v) is None
                                              for k, v in value.items()):
        return "is not an object of name -> number or null"
    return None


def _records_error(value) -> str | None:
    if value is None:
        return None
    def record(item) -> bool:
        return isinstance(item, dict) and all(isinstance(k, str) and (v is None or isinstance(v, (str, int, float)))
                                              for k, v in item.items())
    if not isinstance(value, list) or not all(record(item) for item in value):
        return "is not a list of flat objects or null"
    return None


_METRIC_CHECKS: dict[str, Callable[[object], str | None]] = {
    "number": _number_error,
    "count": _count_error,
    "text": lambda v: None if v is None or isinstance(v, str) else "is not a string or null",
    "flag": lambda v: None if v is None or isinstance(v, bool) else "is not true, false or null",
    "trace": _trace_error,
    "mapping": _mapping_error,
    "records": _records_error,
}
REPR_CHARS = 80


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
        self._file = open(self.path, "a", encoding="utf-8")  # closed by close()
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


@dataclass
class ResultSet:
    """What a run directory (or a bare results.jsonl) holds: run.json as a dict ({} without one), the
    rows, and the "file:line" of lines skipped because a killed sweep cut their write short."""

    path: Path
    run: dict
    rows: list[dict] = field(default_factory=list)
    cut_short: list[str] = field(default_factory=list)

    @property
    def suite(self) -> str:
        return str(self.run.get("suite") or (self.rows[0].get("suite") if self.rows else "") or self.path.name)


def read_results(path: Path, require_run: bool = False) -> ResultSet:
    """Read a run directory or a results.jsonl; every problem is a UserError naming the file (and the
    line of a bad row). A line cut short by a kill (JSON that is fine up to where the line ends) is
    skipped and recorded (an object that starts but never closes): the runner resumes on a fresh line,
    so one can sit mid-file.

    require_run: a directory must hold run.json (the report and the gate read the environment)."""
    path = Path(path)
    if path.is_dir():
        run_dir, rows_path = path, path / RESULTS_FILE
        if (run_dir / RUN_FILE).is_file():
            run = read_run_json(run_dir)
        elif require_run:
            raise UserError(f"{run_dir / RUN_FILE}: missing (not a results directory written by `reformer-bench run`)")
        else:
            run = {}
    elif path.exists() or not require_run:
        run_dir, rows_path, run = path.parent, path, {}
    else:
        raise UserError(f"results directory {str(path)!r} does not exist")
    if not rows_path.is_file():
        raise UserError(f"{rows_path}: missing")
    # The run's plugins may declare the parameters and metrics its rows carry: import them before the check.
    import_run_plugins(run)
    result = ResultSet(path=run_dir if path.is_dir() else path, run=run)
    try:
        lines = rows_path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{rows_path}: not a results file (not UTF-8 text)") from None
    except OSError as exc:
        raise UserError(f"{rows_path}: cannot read ({exc.strerror})") from None
    checks = row_checks()  # once per file, not per row
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{rows_path}:{line_no}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if _cut_short(line, exc):
                result.cut_short.append(where)
                continue
            raise UserError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        result.rows.append(_check_row(row, where, checks))
    return result


def _cut_short(line: str, exc: json.JSONDecodeError) -> bool:
    """Whether a line that fails to parse is a row whose write was cut: an object that is valid up to
    where the line ends (the parser stops at the end, inside a string, or inside null / true / false)."""
    rest = line[exc.pos:].strip()
    in_word = any(word.startswith(rest) for word in ("null", "true", "false", "NaN", "Infinity", "-Infinity"))
    in_number = re.fullmatch(r"-?[0-9]*\.?[0-9]*([eE][-+]?[0-9]*)?", rest) is not None
    return line.lstrip().startswith("{") and (rest == "" or exc.msg.startswith("Unterminated string") or in_word
                                              or in_number)


def read_rows(path: Path) -> list[dict]:
    """The rows of a run directory or a results.jsonl (read_results(path).rows)."""
    return read_results(path).rows


def _check_row(row: object, where: str, checks: dict[str, Callable[[object], str | None]]) -> dict:
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [key for key in REQUIRED_KEYS if row.get(key) is None]
    if missing:
        raise UserError(f"{where}: missing key {missing[0]!r}")
    if row["status"] not in STATUSES:
        raise UserError(f"{where}: status={row['status']!r} is not one of {', '.join(STATUSES)}")
    for key, check in checks.items():
        if key not in row:  # an older or hand-made file: unknown
            continue
        error = check(row[key])
        if error:
            shown = repr(row[key])
            shown = shown if len(shown) <= REPR_CHARS else shown[:REPR_CHARS - 1] + "…"
            raise UserError(f"{where}: {key}={shown} {error}")
    return row


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
    """run_dir/run.json; UserError (naming the file) when it is not a JSON object."""
    path = Path(run_dir) / RUN_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a run.json (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg} at column {exc.colno}), so not a run.json") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    if not isinstance(info, dict):
        raise UserError(f"{path}: not a run.json (a JSON {type(info).__name__}, not an object)")
    return info
