"""Runs a suite's cases, each in a fresh worker process, and appends one row per case as it ends.

Isolation: `python -m harness.worker` per case (a new interpreter: clean memory peaks, no allocator
or in-memory compile-cache state from earlier cases, and empty on-disk inductor / Triton caches of
its own), in its own session so that a timeout can kill it and everything it started; the worker
asks Linux to kill it if the runner dies. Failures never stop the sweep:
  - the worker's own row:           ok | oom | error | nonfinite | unavailable (classified in-worker)
  - no row and past timeout_s:      timeout (the worker's process group is killed)
  - no row and the worker died:     crashed (killed by a signal, or exited without writing a row)
  - the worker could not start:     crashed (the reason names the OS error)
Rows are appended (and flushed) as soon as each case ends; Ctrl-C kills the running worker, keeps
every finished row and raises SweepInterrupted; `resume=True` skips cases that already have a row
(and, with skip_larger_after_failure, remembers the oom / timeout rows among them).
Without resume, a run directory that already holds rows is refused (RunDirInUse): appending a
second run would give its cases two rows each.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .results import RESULTS_FILE, ResultsWriter, new_row, read_rows, read_run_json, write_run_json
from .spec import Case, Suite

# Lines of the worker's stderr kept for the reason of a crash.
STDERR_TAIL_LINES = 3
# Grace period between SIGTERM and SIGKILL when a worker has to go.
KILL_GRACE_S = 2.0


class RunDirInUse(ValueError):
    """The run directory already holds result rows and resume was not asked for."""


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


def run_suite(suite: Suite, run_dir: Path, resume: bool = False, progress=None,
              environment: dict | None = None) -> SweepResult:
    """Run every case of `suite` into run_dir (run.json + results.jsonl). See the module docstring.

    progress: an object with start(case), finish(row), close() (harness.progress.Progress) or None.
    """
    run_dir = Path(run_dir)
    results_file = run_dir / RESULTS_FILE
    earlier_rows = read_rows(results_file) if results_file.exists() else []
    done = {row["case_id"] for row in earlier_rows}
    if done and not resume:
        raise RunDirInUse(f"{run_dir} already holds {len(done)} result rows; resume to add to that run, "
                          f"or use another run directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_run_info(suite, run_dir, resume, environment)
    cases = [c for c in suite.cases if c.case_id not in done]
    if suite.settings.get("skip_larger_after_failure"):
        cases.sort(key=lambda c: c.seq_len)  # stable: the suite's order within one length
    result = SweepResult(run_dir=run_dir, skipped=len(suite.cases) - len(cases))
    # series -> (seq_len, status) of its first failure, remembered across a resume
    failed_series = _earlier_failures(suite, earlier_rows) if suite.settings.get("skip_larger_after_failure") else {}
    if progress is not None:
        progress.begin(len(cases), skipped=result.skipped)
    with ResultsWriter(results_file) as writer:
        try:
            for case in cases:
                if progress is not None:
                    progress.start(case)
                row = _skip_row(case, failed_series) if failed_series else None
                if row is None:
                    row = run_case_in_worker(case)
                writer.append(row)
                result.rows.append(row)
                if row["status"] in ("oom", "timeout") and suite.settings.get("skip_larger_after_failure"):
                    _note_failure(failed_series, case, row["status"])
                if progress is not None:
                    progress.finish(row)
        except KeyboardInterrupt:
            raise SweepInterrupted(len(result.rows), run_dir) from None
        finally:
            if progress is not None:
                progress.close()
    return result


def run_case_in_worker(case: Case) -> dict:
    """One case in a fresh `python -m harness.worker` process; always returns a row."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="reformer-bench-") as tmp:
        tmp = Path(tmp)
        case_file, result_file, log_file = tmp / "case.json", tmp / "result.json", tmp / "worker.log"
        case_file.write_text(case.to_json())
        with open(log_file, "w") as log:
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "harness.worker", str(case_file), str(result_file),
                     repr(time.time()), str(os.getpid())],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=_worker_env(case, tmp),
                    start_new_session=True,
                )
            except OSError as exc:  # no executable, no memory or process slots left, ...: a row, not the end
                row = _start_failure_row(case, exc)
                row["wall_s"] = time.monotonic() - started
                return row
            try:
                returncode = proc.wait(timeout=case.timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                returncode = None
            except BaseException:  # Ctrl-C: the worker must not outlive the sweep
                _kill_group(proc)
                raise
        row = _worker_row(case, result_file, log_file, returncode)
    row["wall_s"] = time.monotonic() - started
    return row


def _worker_row(case: Case, result_file: Path, log_file: Path, returncode: int | None) -> dict:
    import json

    if result_file.exists():
        try:
            return json.loads(result_file.read_text())
        except json.JSONDecodeError:
            pass
    log = log_file.read_text(errors="replace").splitlines()
    stages = [line.split(":", 1)[1].strip() for line in log if line.startswith("stage: ")]
    where = f" during stage {stages[-1]}" if stages else " during start-up"
    row = new_row(case)
    row["stage"] = stages[-1] if stages else "start-up"
    if returncode is None:
        row["status"] = "timeout"
        row["reason"] = f"no result within timeout_s={case.timeout_s:g}{where}; worker killed"
        return row
    row["status"] = "crashed"
    if returncode < 0:
        sig = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        hint = " (the OS out-of-memory killer sends SIGKILL)" if sig == "SIGKILL" else ""
        row["reason"] = f"worker killed by {sig}{where}{hint}"
    else:
        tail = " | ".join(line.strip() for line in log if line.strip() and not line.startswith("stage: "))
        tail = tail[-300:]
        row["reason"] = f"worker exited with code {returncode} without a result{where}" + (
            f": {tail}" if tail else "")
    return row


def _start_failure_row(case: Case, exc: OSError) -> dict:
    row = new_row(case)
    row["status"] = "crashed"
    row["stage"] = "start-up"
    row["reason"] = f"could not start the worker: {type(exc).__name__}: {exc}"
    return row


def _earlier_failures(suite: Suite, rows: list[dict]) -> dict[str, tuple[int, str]]:
    """series -> (shortest seq_len, status) of the oom / timeout rows a resumed run already holds,
    so that the resumed sweep does not run (and crash on) lengths above them again."""
    cases = {case.case_id: case for case in suite.cases}
    failures: dict[str, tuple[int, str]] = {}
    for row in rows:
        case = cases.get(row.get("case_id"))
        if case is not None and row.get("status") in ("oom", "timeout"):
            _note_failure(failures, case, row["status"])
    return failures


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


def _worker_env(case: Case, tmp: Path) -> dict:
    env = dict(os.environ)
    # Compile caches on disk (inductor's FX graph and kernel caches, Triton's kernel cache) would
    # let a later case reuse an earlier one's compilation: each worker gets empty ones of its own.
    env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / "inductor-cache")
    env["TRITON_CACHE_DIR"] = str(tmp / "triton-cache")
    if case.backend == "triton" and case.device == "cpu" and case.triton_interpret:
        env["TRITON_INTERPRET"] = "1"  # must be set before triton is imported: hence here
    # The worker must import this very checkout (also when it is not the installed one).
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the worker's whole session, then SIGKILL what is left after KILL_GRACE_S."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _write_run_info(suite: Suite, run_dir: Path, resume: bool, environment: dict | None) -> None:
    from .env import environment as current_environment

    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    env = environment if environment is not None else current_environment()
    if resume and (run_dir / "run.json").exists():
        info = read_run_json(run_dir)
        info.setdefault("resumed", []).append({"time": now, "environment": env})
    else:
        info = {
            "suite": suite.name,
            "suite_file": str(suite.path),
            "description": suite.description,
            "settings": {k: v for k, v in suite.settings.items() if k != "plugin_dir"},
            "cases": len(suite.cases),
            "started": now,
            "environment": env,
        }
    write_run_json(run_dir, info)
