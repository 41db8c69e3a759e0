"""One case in one fresh worker process, always ending in a row.

Two ways to start it (LAUNCH_METHODS): "fork" (the default on Linux) forks it from a fork server that
has already imported torch, the harness and the backends (harness.run.forkserver: one per run and
worker environment, started at its first case, closed by close_servers()); "spawn" starts a new
interpreter, `python -m harness.run.worker`, that imports them itself. Either way the case has a
process of its own (clean memory peaks, no allocator or in-memory compile-cache state from earlier
cases, and empty on-disk inductor / Triton caches of its own), in its own session so that a timeout can
kill it and everything it started; it dies if the runner dies. How a case ends:
  - the worker's own row:           ok | oom | error | nonfinite | unavailable (classified in-worker)
  - no row and past timeout_s:      timeout (the worker's process group is killed)
  - no row and the worker died:     crashed (killed by a signal, or exited without writing a row)
  - the worker could not start:     crashed (the reason names the OS error)
  - the fork server died:           crashed (the reason says so); the next case starts a new server
The same function runs a case on this machine or, as a Ray task, on another one (harness.run.ray).
"""
from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from ..results.store import new_row
from ..suite import Case
from .forkserver import ForkedChild, ForkServer, ServerDied

LAUNCH_METHODS = ("fork", "spawn")
# Fork where a forked child is known safe and dies with its server (Linux: PR_SET_PDEATHSIG).
DEFAULT_LAUNCH = "fork" if sys.platform.startswith("linux") else "spawn"

# Grace period between SIGTERM and SIGKILL when a worker has to go.
KILL_GRACE_S = 2.0
# Characters of the worker's output kept in the reason of a crash.
CRASH_TAIL_CHARS = 300


# How often a waiting launcher reads the worker's log for `progress:` lines.
PROGRESS_POLL_S = 0.5


def run_case_in_worker(case: Case, run_dir: Path | None = None, on_progress=None,
                       launch: str | None = None) -> dict:
    """One case in a fresh worker process; always returns a row.

    run_dir: the run directory, for cases that keep files there (a task's checkpoints). on_progress:
    called with each `progress: TEXT` line the worker prints (a training's loss and accuracy).
    launch: "fork" or "spawn" (None: DEFAULT_LAUNCH)."""
    launch = launch or DEFAULT_LAUNCH
    if launch not in LAUNCH_METHODS:
        raise ValueError(f"launch must be one of {LAUNCH_METHODS}, got launch={launch!r}")
    started, started_at = time.monotonic(), time.time()
    with tempfile.TemporaryDirectory(prefix="reformer-bench-") as tmp_name:
        tmp = Path(tmp_name)
        case_file, result_file, log_file = tmp / "case.json", tmp / "result.json", tmp / "worker.log"
        case_file.write_text(case.to_json())
        env = _worker_env(case, tmp, run_dir)
        with open(log_file, "w") as log:
            proc: subprocess.Popen | ForkedChild
            try:
                if launch == "fork":
                    proc = _server_for(case, env).fork(case_file, result_file, log_file, time.time(), env)
                else:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "harness.run.worker", str(case_file), str(result_file),
                         repr(time.time()), str(os.getpid())],
                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                        start_new_session=True,
                    )
            except (OSError, ServerDied, subprocess.TimeoutExpired) as exc:
                # no executable, no memory or process slots left, a server that died starting: a row, not the end
                return _with_wall_time(_start_failure_row(case, exc), started_at, time.monotonic() - started)
            server_death = None
            try:
                returncode = _wait(proc, case.timeout_s, log_file, on_progress)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                returncode = None
            except ServerDied as exc:  # its child died with it (PR_SET_PDEATHSIG)
                server_death = str(exc)
                returncode = None
            except BaseException:  # Ctrl-C: the worker must not outlive the sweep
                _kill_group(proc)
                raise
        row = _worker_row(case, result_file, log_file, returncode, server_death)
    return _with_wall_time(row, started_at, time.monotonic() - started)


def _with_wall_time(row: dict, started_at: float, wall_s: float) -> dict:
    """The row with started_at, wall_s and overhead_s (wall_s less the worker's work_s) set."""
    row["started_at"] = datetime.fromtimestamp(started_at, timezone.utc).isoformat(timespec="milliseconds")
    row["wall_s"] = wall_s
    row["overhead_s"] = wall_s - (row.get("work_s") or 0.0)
    return row


# One fork server per worker environment that must be set before the imports (the interpreter's).
_servers: dict[tuple, ForkServer] = {}


def _server_for(case: Case, worker_env: dict[str, str]) -> ForkServer:
    """The running server for this case's import-time environment; started (again) where none is."""
    key = tuple(sorted(interpreter_env(case).items()))
    server = _servers.get(key)
    if server is not None and not server.alive():
        server.close()
        server = None
    if server is None:
        from .task_case import RUN_DIR_ENV

        # What _worker_env sets per case is the child's, not the server's.
        per_case = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", RUN_DIR_ENV)
        env = {k: v for k, v in worker_env.items() if k not in per_case}
        server = _servers[key] = ForkServer(env)
    return server


def close_servers() -> None:
    """End every fork server this process started (the end of a run; a later case starts a new one)."""
    while _servers:
        _, server = _servers.popitem()
        server.close()


atexit.register(close_servers)


def _wait(proc: subprocess.Popen | ForkedChild, timeout_s: float, log_file: Path, on_progress) -> int:
    """proc.wait(timeout_s), handing the worker's `progress:` lines to on_progress as they come."""
    if on_progress is None:
        return proc.wait(timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    pending = ""  # a line the worker has not finished writing yet
    with open(log_file, errors="replace") as log:
        while True:
            try:
                returncode = proc.wait(timeout=max(0.0, min(PROGRESS_POLL_S, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                returncode = None
            pending += log.read()
            *lines, pending = pending.split("\n")
            for line in lines:
                if line.startswith("progress: "):
                    on_progress(line[len("progress: "):].rstrip())
            if returncode is not None:
                return returncode
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(proc.args, timeout_s)


def _worker_row(case: Case, result_file: Path, log_file: Path, returncode: int | None,
                server_death: str | None = None) -> dict:
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
    if server_death is not None:
        row["status"] = "crashed"
        row["reason"] = f"{server_death}{where}; the worker died with it"
        return row
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
        tail = " | ".join(line.strip() for line in log
                          if line.strip() and not line.startswith(("stage: ", "progress: ")))
        tail = tail[-CRASH_TAIL_CHARS:]
        row["reason"] = f"worker exited with code {returncode} without a result{where}" + (
            f": {tail}" if tail else "")
    return row


def _start_failure_row(case: Case, exc: Exception) -> dict:
    row = new_row(case)
    row["status"] = "crashed"
    row["stage"] = "start-up"
    row["reason"] = f"could not start the worker: {type(exc).__name__}: {exc}"
    return row


def _worker_env(case: Case, tmp: Path, run_dir: Path | None = None) -> dict:
    env = dict(os.environ)
    if run_dir is not None:
        from .task_case import RUN_DIR_ENV

        env[RUN_DIR_ENV] = str(Path(run_dir).resolve())
    # Compile caches on disk (inductor's FX graph and kernel caches, Triton's kernel cache) would
    # let a later case reuse an earlier one's compilation: each worker gets empty ones of its own.
    env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / "inductor-cache")
    env["TRITON_CACHE_DIR"] = str(tmp / "triton-cache")
    env.update(interpreter_env(case))  # must be set before the backend's module is imported: hence here
    # The worker must import this very checkout (also when it is not the installed one).
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _kill_group(proc) -> None:
    """SIGTERM the worker's whole session, then SIGKILL what is left after KILL_GRACE_S.
    proc: a subprocess.Popen or a fork server's ForkedChild (each its session's leader)."""
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
        except ServerDied:  # the server took its child with it
            return


def interpreter_env(case: Case) -> dict[str, str]:
    """The environment that runs the case's backend under its CPU interpreter, where it has one and
    the suite allows it (interpret = true); {} otherwise."""
    import impls

    if case.device != "cpu" or not case.interpret:
        return {}
    return dict(impls.backend_info(case.backend).cpu_interpreter_env)
