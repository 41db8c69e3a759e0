"""One case, measured in a process of its own: `python -m harness.run.worker CASE_JSON RESULT_JSON [T0 [PID]]`.

The runner starts one worker per case (harness.run.launch) so that memory peaks, allocator state and
compile caches never carry over between cases. The worker writes its row to RESULT_JSON (atomically)
and exits; a worker that dies before writing is classified by the launcher. It prints `stage: NAME`
lines to stderr so that the launcher can say where a killed or hanging worker was.

Setup (untimed): import the suite's plugins and the backend, check available() and the device,
build the seeded workload (harness.measure.workload), warm torch's thread pool, then apply the case's
memory limit (mem_limit). Then every measurement of the metric table in order
(harness.measure.stages: timing, rss, memory, compile_stats, finite, flops, fidelity; then plugins').
A task case (harness.run.task_case) trains or evaluates instead.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from ..suite import Case

# The measurement whose duration is a case's work (row work_s); every other pass is the harness's overhead.
WORK_MEASUREMENT = "timing"


def stage(name: str) -> None:
    print(f"stage: {name}", file=sys.stderr, flush=True)


def run_case(case: Case, spawned_at: float | None = None) -> dict:
    """Measure one case in this process; returns its row (never raises for a failing case)."""
    from ..measure import stages  # noqa: F401 -- registers the built-in measurements, before any plugin's
    from ..plugins import import_plugins
    from ..results.store import new_row

    if case.plugins:  # before the row is made: plugins may declare metrics
        import_plugins(case.plugins, case.plugin_dir)

    row = new_row(case)
    row["status"], row["reason"] = "ok", ""
    try:
        _measure(case, row, spawned_at)
    except BaseException as exc:  # every failure becomes the row's status
        if isinstance(exc, KeyboardInterrupt):
            raise
        row["status"], reason = classify_exception(exc)
        row["reason"] = f"{reason} (stage {row['stage']})"
        traceback.print_exc(file=sys.stderr)
    return row


def classify_exception(exc: BaseException) -> tuple[str, str]:
    """(status, one-line reason): out-of-memory errors are "oom", anything else "error"."""
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    line = text[0] if text else type(exc).__name__
    for extra in text[1:]:  # torch puts the useful part of allocator errors on later lines
        if "allocate" in extra.lower() or "out of memory" in extra.lower():
            line = f"{line} {extra.strip()}"
            break
    lowered = " ".join(text).lower()
    oom_words = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or any(
            w in lowered for w in oom_words):
        return "oom", line[:500]
    return "error", line[:500]


def _measure(case: Case, row: dict, spawned_at: float | None) -> None:
    row["stage"] = "setup"
    stage("setup")
    import torch

    import impls

    from ..env import package_version
    from ..measure.metrics import measurements
    from ..measure.stages import Context, measure_rss
    from ..measure.workload import build_workload

    if case.threads:
        torch.set_num_threads(case.threads)
    info = impls.backend_info(case.backend)
    row["interpreted"] = interpreted(case, info)
    ok, reason = impls.backend_availability(case.backend)
    if not ok:
        row["status"], row["reason"] = "unavailable", reason
        return
    if case.device.startswith("cuda") and not torch.cuda.is_available():
        row["status"], row["reason"] = "unavailable", f"device={case.device!r} but CUDA is not available"
        return
    backend = impls.get_backend(case.backend)
    if info.package:
        row["peer"] = f"{info.package} {package_version(info.package)}"
    workload = None if case.workload == "task" else build_workload(case)
    if info.offers("effective_n_buckets") and workload is not None and case.n_buckets is not None:
        # A peer that hashes into another bucket count than asked: its row (and FLOPs) say which.
        offers: Any = backend  # a declared capability's method (checked when the backend was built)
        row["n_buckets"] = offers.effective_n_buckets(workload.cfg, case.seq_len)
    _warm_thread_pool(torch)
    if case.mem_limit_bytes is not None:
        if case.device.startswith("cuda"):
            _limit_cuda_memory(torch, torch.device(case.device), case.mem_limit_bytes)
        else:
            _limit_address_space(case.mem_limit_bytes)
    if spawned_at is not None:
        row["worker_setup_s"] = time.time() - spawned_at

    if workload is None:  # a task case: trained and evaluated, not timed call by call (harness.run.task_case)
        from .task_case import measure as measure_task

        row["stage"] = case.mode
        stage(case.mode)
        work_started = time.perf_counter()
        measure_task(case, row)
        row["work_s"] = time.perf_counter() - work_started
        row.update(measure_rss())
        row["stage"] = "done"
        return
    from .task_case import RUN_DIR_ENV

    ctx = Context(case=case, workload=workload, device=case.device, info=info, backend=backend, row=row,
                  run_dir=os.environ.get(RUN_DIR_ENV))
    for measurement in measurements():
        if measurement.auxiliary and row["status"] != "ok":
            continue  # cross-checks of a failed case would measure nothing worth keeping
        if measurement.applies is not None and not measurement.applies(case):
            continue  # a profile the case did not ask for: no stage, no cost
        row["stage"] = measurement.name
        stage(measurement.name)
        if not measurement.auxiliary:
            work_started = time.perf_counter()
            row.update(measurement.measure(ctx) or {})
            if measurement.name == WORK_MEASUREMENT:
                row["work_s"] = time.perf_counter() - work_started
            continue
        try:
            row.update(measurement.measure(ctx) or {})
        except Exception as exc:  # recorded in the row, the measured figures stand
            # A cross-check that fails (an OOM of the dense reference, typically) leaves the timing and
            # memory figures standing; the reason says what is missing and why.
            note = f"{measurement.name} not measured: {classify_exception(exc)[1]}"
            row["reason"] = f"{row['reason']}; {note}" if row["reason"] else note
            traceback.print_exc(file=sys.stderr)
    row["stage"] = "done"


def interpreted(case: Case, info) -> bool:
    """Whether this case's backend runs under its CPU interpreter (the launcher set its environment)."""
    env = info.cpu_interpreter_env
    return bool(env) and case.device == "cpu" and all(os.environ.get(k) == v for k, v in env.items())


def _warm_thread_pool(torch) -> None:
    # Start the intra-op thread pool (and its stacks and malloc arenas) before any address-space
    # limit, so that the limit bites on the case's tensors and not on thread creation.
    a = torch.ones(256, 256)
    (a @ a).sum()


def _limit_address_space(headroom_bytes: int) -> None:
    """RLIMIT_AS = this process's current virtual size + headroom_bytes.

    Virtual size after importing torch is hundreds of MiB of mapped libraries, so the limit is set
    relative to it: the case may add at most `headroom_bytes` of address space.
    """
    with open("/proc/self/statm") as f:
        vm_bytes = int(f.read().split()[0]) * resource.getpagesize()
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = vm_bytes + headroom_bytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _limit_cuda_memory(torch, device, headroom_bytes: int) -> None:
    """Cap the caching allocator at what is allocated now + headroom_bytes (a fraction of the
    device's memory), so that a larger case raises torch.OutOfMemoryError."""
    total = torch.cuda.get_device_properties(device).total_memory
    fraction = min(1.0, (torch.cuda.memory_allocated(device) + headroom_bytes) / total)
    torch.cuda.set_per_process_memory_fraction(fraction, device)


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this worker when its runner dies (even by SIGKILL), so that a killed
    sweep leaves no orphan behind; exit at once if the runner is already gone. Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    """argv: CASE_JSON RESULT_JSON [SPAWN_TIME [RUNNER_PID]]."""
    argv = sys.argv[1:] if argv is None else argv
    case_path, result_path = Path(argv[0]), Path(argv[1])
    spawned_at = float(argv[2]) if len(argv) > 2 else None
    if len(argv) > 3:
        die_with_parent(int(argv[3]))
    case = Case.from_json(case_path.read_text())
    row = run_case(case, spawned_at)
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(row))
    os.replace(tmp, result_path)
    stage("written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
