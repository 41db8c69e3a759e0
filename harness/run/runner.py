"""Runs a suite's cases, each in a fresh worker process (harness.run.launch), and appends one row per
case as it ends.

Failures never stop the sweep: every case ends in a row with its status (see launch). Rows are appended
(and flushed) as soon as each case ends; Ctrl-C kills the running workers, keeps every finished row and
raises SweepInterrupted; `resume=True` skips cases that already have a row (and, with
skip_larger_after_failure, remembers the oom / timeout / SIGKILLed rows among them). Without resume, a run
directory that already holds rows is refused: appending a second run would give its cases two rows.

Where the workers run is the executor's business: LocalExecutor runs them one after another on this
machine; harness.run.ray.RayExecutor fans them out over a Ray cluster. An executor takes a batch of
cases and yields (case, row) as each ends. A case that depends on another (a task's evaluation on its
training) runs after that one ended ok: LocalExecutor gets batches cut so that the dependency's row is
known first; RayExecutor (runs_dependents) gets them whole and holds such a case until then, so that a
suite's trainings run at once. With skip_larger_after_failure the sweep is handed over one
sequence length at a time, shortest first, so that a failure can still skip the longer cases of its series.
"""
from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..env import node_facts
from ..errors import UserError
from ..results.store import (
    RESULTS_FILE,
    RUN_FILE,
    ResultsWriter,
    new_row,
    read_results,
    read_run_json,
    write_run_json,
)
from ..suite import Case, Suite
from . import launch


class SweepInterrupted(Exception):
    """Ctrl-C during a sweep: the rows written so far are kept."""

    def __init__(self, rows_written: int, run_dir: Path) -> None:
        super().__init__(f"interrupted after {rows_written} new rows; results kept in {run_dir}")
        self.rows_written = rows_written
        self.run_dir = run_dir


@dataclass
class SweepResult:
    run_dir: Path
    rows: list[dict] = field(default_factory=list)  # rows written by this invocation
    skipped: int = 0  # cases that already had a row (resume)


class LocalExecutor:
    """One worker at a time on this machine, started by `launch_method` (harness.run.launch: "fork" or
    "spawn"; None: launch.DEFAULT_LAUNCH).

    The runner sets run_dir (where cases may keep files: a task's checkpoints) and on_progress (a
    worker's progress lines) on an executor before it runs any case."""

    name = "local"
    run_dir: Path | None = None
    on_progress: Callable[[str], None] | None = None

    def __init__(self, launch_method: str | None = None) -> None:
        self.launch_method = launch_method or launch.DEFAULT_LAUNCH

    def run(self, cases: Iterable[Case], started: Callable[[Case], None]) -> Iterator[tuple[Case, dict]]:
        for case in cases:
            started(case)
            row = launch.run_case_in_worker(case, self.run_dir, self.on_progress, self.launch_method)
            row.update(node_facts(case.device))
            yield case, row

    def close(self) -> None:
        launch.close_servers()


def prepare_run_dir(run_dir: Path, suite: Suite, resume: bool) -> list[dict]:
    """Check that this run may write into run_dir, create it, and return the rows it already holds:
    a file is no directory, rows need resume, and a resumed run must be of the same suite."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir}: exists and is not a directory")
    if resume and (run_dir / RUN_FILE).exists():
        try:
            earlier = read_run_json(run_dir).get("suite")
        except UserError as exc:
            raise UserError(f"--resume: cannot continue the run in {run_dir}: {exc}") from None
        if earlier != suite.name:
            raise UserError(f"--resume: {run_dir} holds a run of suite {earlier!r}, not {suite.name!r}")
    try:
        rows = read_results(run_dir).rows if (run_dir / RESULTS_FILE).exists() else []
    except UserError as exc:
        raise UserError(f"cannot use run directory {run_dir}: {exc}") from None
    if rows and not resume:
        raise UserError(f"{run_dir} already holds {len(rows)} result rows of an earlier run: pass "
                        f"--resume to continue that run, or another --out for a new one")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create run directory {run_dir}: {exc.strerror}") from None
    return rows


def run_suite(suite: Suite, run_dir: Path, resume: bool = False, progress=None,
              environment: dict | None = None, executor=None) -> SweepResult:
    """Run every case of `suite` into run_dir (run.json + results.jsonl). See the module docstring.

    progress: an object with begin(total, skipped), start(case), finish(row), close()
    (harness.views.progress.Progress) or None. executor: LocalExecutor() unless given.
    """
    run_dir = Path(run_dir)
    earlier_rows = prepare_run_dir(run_dir, suite, resume)
    executor = executor or LocalExecutor()
    executor.run_dir = run_dir
    executor.on_progress = getattr(progress, "update", None)
    _write_run_info(suite, run_dir, resume, environment, executor.name, getattr(executor, "launch_method", None))
    done = {row["case_id"] for row in earlier_rows}
    cases = [c for c in suite.cases if c.case_id not in done]
    skip_larger = bool(suite.settings.get("skip_larger_after_failure"))
    if skip_larger:
        cases.sort(key=lambda c: c.seq_len)  # stable: the suite's order within one length
    result = SweepResult(run_dir=run_dir, skipped=len(suite.cases) - len(cases))
    # series -> (seq_len, status) of its first failure, remembered across a resume
    failed_series = _earlier_failures(suite, earlier_rows) if skip_larger else {}
    # case_id -> status of every case that ended, for the cases that depend on one (a task's evaluations)
    ended = {row["case_id"]: row["status"] for row in earlier_rows}
    # case_id -> reason of the cases that ended unavailable: their dependents are unavailable for it too
    unavailable = {row["case_id"]: row.get("reason") for row in earlier_rows if row["status"] == "unavailable"}
    if progress is not None:
        progress.begin(len(cases), skipped=result.skipped)
    started = progress.start if progress is not None else (lambda case: None)

    def record(writer: ResultsWriter, case: Case, row: dict) -> None:
        writer.append(row)
        result.rows.append(row)
        ended[case.case_id] = row["status"]
        if row["status"] == "unavailable":
            unavailable[case.case_id] = row.get("reason")
        if skip_larger and _ends_series(row):
            _note_failure(failed_series, case, row["status"])
        if progress is not None:
            progress.finish(row)

    batches = ([list(group) for _, group in itertools.groupby(cases, key=lambda c: c.seq_len)]
               if skip_larger else [cases])
    # An executor that runs cases at once and holds a dependent case until its dependency has ended
    # (RayExecutor) gets the batch whole; another gets it cut so that a dependency has ended first.
    runs_dependents = getattr(executor, "runs_dependents", False)
    if not runs_dependents:
        batches = [part for batch in batches for part in _after_dependencies(batch)]

    def dependency_row(case: Case) -> dict | None:
        return _dependency_row(case, ended.get(case.depends_on), unavailable.get(case.depends_on))

    with ResultsWriter(run_dir / RESULTS_FILE) as writer:
        try:
            for batch in batches:
                to_run = []
                queued: set[str] = set()  # the executor holds a case whose dependency it is given
                for case in batch:
                    row = _skip_row(case, failed_series) if failed_series else None
                    if (row is None and case.depends_on is not None
                            and not (runs_dependents and case.depends_on in queued)):
                        row = dependency_row(case)
                    if row is None:
                        to_run.append(case)
                        queued.add(case.case_id)
                    else:
                        started(case)
                        record(writer, case, row)
                ran = (executor.run(to_run, started, dependency_row=dependency_row) if runs_dependents
                       else executor.run(to_run, started))
                for case, row in ran:
                    record(writer, case, row)
        except KeyboardInterrupt:
            raise SweepInterrupted(len(result.rows), run_dir) from None
        finally:
            executor.close()
            if progress is not None:
                progress.close()
    _write_overhead(run_dir, earlier_rows + result.rows)
    return result


def harness_overhead(rows: list[dict]) -> dict | None:
    """What the run cost beyond its work: the sum and per-case median of the rows' overhead_s (wall_s less
    the measured work, harness.measure.metrics), beside the sum of wall_s; None when no row has one."""
    measured = [row for row in rows if isinstance(row.get("overhead_s"), (int, float))]
    if not measured:
        return None
    overheads = sorted(row["overhead_s"] for row in measured)
    return {"cases": len(measured), "sum_s": round(sum(overheads), 3),
            "median_s": round(statistics.median(overheads), 3),
            "wall_sum_s": round(sum(row.get("wall_s") or 0.0 for row in measured), 3)}


def _write_overhead(run_dir: Path, rows: list[dict]) -> None:
    overhead = harness_overhead(rows)
    if overhead is None:
        return
    info = read_run_json(run_dir)
    info["harness_overhead"] = overhead
    write_run_json(run_dir, info)


def _after_dependencies(batch: list[Case]) -> list[list[Case]]:
    """The batch cut so that no case is handed over with the case it depends on: a case's dependency
    has ended (and its row is known) before the case is dispatched, in order."""
    parts: list[list[Case]] = [[]]
    in_part: set[str] = set()
    for case in batch:
        if case.depends_on in in_part:
            parts.append([])
            in_part = set()
        parts[-1].append(case)
        in_part.add(case.case_id)
    return [part for part in parts if part]


def _dependency_row(case: Case, status: str | None, unavailable_reason: str | None = None) -> dict | None:
    """None when the case may run (what it depends on ended ok); else its row, not run: unavailable with
    the same reason when that case was unavailable (a corpus not installed), else an error."""
    if status == "ok":
        return None
    row = new_row(case)
    if status == "unavailable" and unavailable_reason:
        row["status"], row["reason"] = "unavailable", unavailable_reason
    else:
        row["status"] = "error"
        row["reason"] = (f"not run: it needs {case.depends_on}, which "
                         + ("is not in this suite's run" if status is None else f"ended in {status}"))
    row["stage"] = "skipped"
    row["wall_s"] = 0.0
    return row


def _earlier_failures(suite: Suite, rows: list[dict]) -> dict[str, tuple[int, str]]:
    """series -> (shortest seq_len, status) of the oom / timeout rows a resumed run already holds,
    so that the resumed sweep does not run (and crash on) lengths above them again."""
    cases = {case.case_id: case for case in suite.cases}
    failures: dict[str, tuple[int, str]] = {}
    for row in rows:
        case = cases.get(str(row.get("case_id")))
        if case is not None and _ends_series(row):
            _note_failure(failures, case, row["status"])
    return failures


def _ends_series(row: dict) -> bool:
    """An oom or timeout, or a worker SIGKILLed (the OS's out-of-memory killer, where no mem_limit made it
    an oom first): a longer case of the series would end the same way."""
    return row.get("status") in ("oom", "timeout") or (
        row.get("status") == "crashed" and "SIGKILL" in str(row.get("reason") or ""))


def _note_failure(failures: dict[str, tuple[int, str]], case: Case, status: str) -> None:
    """Keep the shortest failing length per series (a resumed run may fail below a remembered one)."""
    key = case.series_key()
    if key not in failures or case.seq_len < failures[key][0]:
        failures[key] = (case.seq_len, status)


def _skip_row(case: Case, failed_series: dict[str, tuple[int, str]]) -> dict | None:
    failure = failed_series.get(case.series_key())
    if failure is None or case.seq_len <= failure[0]:
        return None
    row = new_row(case)
    row["status"] = failure[1]
    row["reason"] = f"not run: seq_len={failure[0]} of the same series already ended in {failure[1]}"
    row["stage"] = "skipped"
    row["wall_s"] = 0.0
    return row


def _write_run_info(suite: Suite, run_dir: Path, resume: bool, environment: dict | None, executor: str,
                    launch_method: str | None = None) -> None:
    from ..env import environment as current_environment

    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    env = environment if environment is not None else current_environment(suite.settings.get("threads"))
    if resume and (run_dir / RUN_FILE).exists():
        info = read_run_json(run_dir)
        info.setdefault("resumed", []).append({"time": now, "executor": executor, "launch": launch_method,
                                               "environment": env})
    else:
        info = {
            "suite": suite.name,
            "suite_file": str(suite.path),
            "description": suite.description,
            "settings": {k: v for k, v in suite.settings.items() if k != "plugin_dir"},
            "cases": len(suite.cases),
            "started": now,
            "executor": executor,
            "launch": launch_method,  # how each case's worker process was started (harness.run.launch)
            "environment": env,
        }
    if suite.settings.get("measure_peak") and not info.get("matmul_peak"):
        from ..measure.peak import measure_in_subprocess

        # The yardstick of achieved FLOP/s, on this machine (the driver's, for a sweep on Ray).
        combos = sorted({(c.device, c.dtype) for c in suite.cases})
        info["matmul_peak"] = [measure_in_subprocess(device, dtype, suite.settings.get("threads"))
                               for device, dtype in combos]
    write_run_json(run_dir, info)
