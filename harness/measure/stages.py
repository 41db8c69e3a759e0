"""The built-in measurements, run by the worker in this order on one case (each untimed unless said):

  timing       first call (first_call_s; compile_time_s = first call - warm median for backends that
               compile), `warmup` more calls, `repeats` timed calls (harness.measure.timing)
  memory       one call under harness.measure.memory's trackers at once: the tensor tracker and the
               allocator's events on the CPU (a backend that runs under dynamo, torch.compile, is measured
               by the allocator alone: dynamo does not run under the tracker's TorchDispatchMode), the
               CUDA allocator and NVML on GPU; memory-profiler samples the RSS over the same call
  compile_stats  backend.compile_stats(), if it declares that capability, covering the timed and memory calls:
               compilations; a fallback to eager is status error
  finite       the output (and gradients) of the memory call: NaN / inf is status nonfinite
  flops        the analytic count, and one call under FlopCounterMode on the eager path (flops_via)
  fidelity     the reference (exact dense attention) on the same inputs: rel_error, attn_mass_recall
  phases       (a case that asks: [suite] phases) one call under torch.profiler with the backends' named
               phases on: phase_times, phase_shares, phase_total_s (harness.measure.phases)
  trace        (a case that asks: [suite] profile) one more profiled call: its Chrome trace and op table
               under <run dir>/profiles/<case id>/
  (rss, right after timing: the worker's peak resident set size over setup and the timed calls)
A case that asks for peak_live has its memory pass record the live set at the peak too
(harness.measure.live_set). A case that asks for none of them runs none of their code.

Each is a function of a Context returning {metric: value}; registered with its metrics in
harness.measure.metrics, where a plugin's measurement joins them.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .metrics import Measurement, register_measurement

# Where a case's profiles go, under the run directory: profiles/<case id>/.
PROFILES_DIR = "profiles"
# Groups of the live set at the peak that a row carries (the file has them all).
PEAK_LIVE_TOP = 10

if TYPE_CHECKING:
    from impls.registry import AttentionBackend, BackendInfo

    from ..suite import Case
    from .workload import Workload


@dataclass
class Context:
    """What a measurement sees.

    case: the case (None for a pytest-benchmark call, which has no case).
    workload: what is called (harness.measure.workload.Workload).
    device: where it runs ("cpu", "cuda", "cuda:N").
    info, backend: the backend's registration and instance (None for a pytest-benchmark call).
    row: the row so far (the measurements' figures, status and reason).
    output: the output of the memory pass's call, for the checks after it.
    run_dir: the run directory, where profiles are written (None: nowhere to write them)."""

    case: Case | None
    workload: Workload
    device: str
    info: BackendInfo | None = None
    backend: AttentionBackend | None = None
    row: dict[str, Any] = field(default_factory=dict)
    output: Any = None
    run_dir: str | None = None

    def fail(self, status: str, reason: str) -> None:
        """Mark the case failed (the first failure's reason is kept)."""
        if self.row.get("status") in (None, "ok"):
            self.row["status"], self.row["reason"] = status, reason

    def note(self, text: str) -> None:
        """Add to the row's reason without failing the case (a profile that could not be made)."""
        self.row["reason"] = f"{self.row['reason']}; {text}" if self.row.get("reason") else text

    def profile_dir(self) -> Path | None:
        """<run dir>/profiles/<case id>/ (created), or None without a run directory or a case."""
        if self.run_dir is None or self.case is None:
            return None
        where = Path(self.run_dir) / PROFILES_DIR / self.case.case_id
        where.mkdir(parents=True, exist_ok=True)
        return where

    def relative(self, path: str | Path) -> str:
        """A file under the run directory as rows give it: relative to the run directory."""
        return Path(path).relative_to(Path(self.run_dir or ".")).as_posix()

    def the_case(self) -> Case:
        """The case, for a measurement that needs one (a pytest-benchmark call has none)."""
        if self.case is None:
            raise RuntimeError("this measurement needs a case; a pytest-benchmark call has none")
        return self.case

    def the_backend(self) -> tuple[BackendInfo, Any]:
        """The backend's registration and instance, the instance typed Any: it offers the methods of its
        declared capabilities (impls.registry checks them when it builds the backend)."""
        if self.info is None or self.backend is None:
            raise RuntimeError("this measurement needs a backend; a pytest-benchmark call has none")
        return self.info, self.backend

    def counting_workload(self) -> Workload:
        """The workload FlopCounterMode runs: the same case on the backend's flops_via, else itself."""
        if self.case is None or self.info is None or self.info.flops_via is None:
            return self.workload
        from .workload import build_workload

        return build_workload(self.case, self.info.flops_via)


def measure_timing(ctx: Context) -> dict:
    from .timing import time_call

    case = ctx.the_case()
    timing = time_call(ctx.workload, warmup=case.warmup, repeats=case.repeats, device=case.device)
    compiles = ctx.info is not None and ctx.info.compiles
    tokens = case.batch * case.seq_len
    return {"time_median_s": timing.median_s, "time_q1_s": timing.q1_s, "time_q3_s": timing.q3_s,
            "tokens_per_s": tokens / timing.median_s if timing.median_s > 0 else None,
            "time_iqr_s": timing.iqr_s, "time_min_s": timing.min_s, "repeats": len(timing.times_s),
            "first_call_s": timing.first_call_s,
            # What the first call costs beyond a warm one: compilation, autotuning, lazy init.
            "compile_time_s": timing.first_call_s - timing.median_s if compiles else None}


def measure_memory(ctx: Context) -> dict:
    """One call, measured three ways at once: the tensor tracker (mem_peak_bytes on the CPU, the gated
    figure), the allocator's events (mem_alloc_peak_bytes; on the CPU also the figure of a backend that
    torch.compile runs, which dynamo will not run under the tracker) or the CUDA allocator, and the
    process's RSS over the call (memory-profiler), with glibc's mmap threshold fixed first so that
    freed large blocks go back to the OS and the RSS rise follows live memory."""
    from .memory import NvmlSampler, rss_trace, track_allocator_peak, track_peak_memory

    ctx.workload.reset()
    input_bytes = ctx.workload.input_bytes or 0
    if ctx.device == "cpu":
        with track_allocator_peak():  # the profiler's one-time start-up (libraries, buffers) is not the call's
            pass
    fixed_threshold = fix_mmap_threshold()
    figures: dict = {}

    live_set = ctx.case is not None and ctx.case.peak_live
    tracked: list = []  # the CPU tensor tracker's result, for the live set at the peak

    def call():
        if ctx.device == "cpu":
            dynamo = ctx.info is not None and ctx.info.offers("dynamo")
            site = _creation_site(ctx) if live_set and not dynamo else contextlib.nullcontext()
            with site as where:
                tensor_tracker = contextlib.nullcontext() if dynamo else track_peak_memory("cpu", where)
                with track_allocator_peak() as allocator, tensor_tracker as tensors:
                    ctx.output = ctx.workload()
            tracked.append(tensors)
            figures["mem_alloc_peak_bytes"] = input_bytes + allocator.peak_bytes
            if dynamo:
                figures.update(mem_peak_bytes=input_bytes + allocator.peak_bytes, mem_method=allocator.method)
            else:
                figures.update(mem_peak_bytes=input_bytes + tensors.peak_bytes, mem_method=tensors.method)
            # Lower bound: allocations the tensor tracker cannot see (an ATen kernel's workspace), memory
            # that does not come from PyTorch's allocator (inductor's C++ kernels' scratch; the Triton
            # interpreter's numpy arrays).
            hidden = allocator.peak_bytes > (tensors.peak_bytes if tensors is not None else allocator.peak_bytes)
            off_allocator = dynamo or ctx.row.get("interpreted")
            figures["mem_bound"] = "lower bound" if hidden or off_allocator else "exact"
            return
        import torch

        snapshot = _cuda_snapshot(ctx, figures) if live_set else contextlib.nullcontext()
        with snapshot, NvmlSampler(torch.device(ctx.device).index or 0) as sampler, \
                track_peak_memory(ctx.device) as peak:
            ctx.output = ctx.workload()
        figures.update(mem_peak_bytes=input_bytes + peak.peak_bytes, mem_method=peak.method, mem_bound="exact",
                       nvml_peak_used_bytes=sampler.peak_used_bytes)

    trace, _ = rss_trace(call)
    if live_set and tracked:  # written after the call, outside the RSS samples
        _write_live_set(ctx, tracked[0], input_bytes, figures)
    if trace:
        figures["rss_call_rise_bytes"] = max(b for _, b in trace) - trace[0][1]
        figures["rss_trace"] = _downsample(trace, RSS_TRACE_POINTS)
    sampling = ("RSS sampled every 10 ms over the memory call by memory-profiler (the call runs under the memory "
                "trackers, whose own bookkeeping is in it)")
    figures["rss_note"] = (f"{sampling}, glibc M_MMAP_THRESHOLD fixed at {fixed_threshold} B for it" if fixed_threshold
                           else f"{sampling}, malloc's defaults")
    return figures


def _creation_site(ctx: Context):
    from .live_set import creation_site

    # The workload's modules name the places (a model's layers, a layer's projections).
    roots = [getattr(ctx.workload, name, None) for name in ("model", "layer")]
    return creation_site([root for root in roots if root is not None])


def _write_live_set(ctx: Context, tensors, input_bytes: int, figures: dict) -> None:
    """The live set at the peak: its largest groups into the row, all of it into peak_live.json."""
    from .live_set import breakdown, top

    if tensors is None or tensors.live_at_peak is None:
        ctx.note("peak_live not recorded: the tensor tracker cannot follow a backend that runs under dynamo")
        return
    groups = breakdown(tensors.live_at_peak, input_bytes)
    figures["peak_live_top"] = top(groups, PEAK_LIVE_TOP)
    where = ctx.profile_dir()
    if where is None:
        ctx.note("peak_live_file not written: no run directory")
        return
    path = where / "peak_live.json"
    path.write_text(json.dumps({"case_id": ctx.the_case().case_id, "mem_peak_bytes": figures["mem_peak_bytes"],
                                "sum_bytes": sum(g["bytes"] for g in groups), "groups": groups}, indent=1) + "\n")
    figures["peak_live_file"] = ctx.relative(path)


@contextlib.contextmanager
def _cuda_snapshot(ctx: Context, figures: dict):
    """CUDA: the caching allocator's history over the memory call, its snapshot written as a pickle that
    pytorch.org/memory_viz opens (the peak is on its timeline). Not exercised without a GPU."""
    import pickle

    import torch

    where = ctx.profile_dir()
    if where is None:
        ctx.note("peak_live_file not written: no run directory")
        yield
        return
    torch.cuda.memory._record_memory_history(max_entries=CUDA_HISTORY_ENTRIES)
    try:
        yield
        snapshot = torch.cuda.memory._snapshot()
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    path = where / "cuda_memory_snapshot.pickle"
    with open(path, "wb") as f:
        pickle.dump(snapshot, f)
    figures["peak_live_file"] = ctx.relative(path)


# Allocator events the CUDA memory history keeps (the newest; older ones drop off its timeline).
CUDA_HISTORY_ENTRIES = 1_000_000


# Points of an RSS trace kept in the row (the report plots them).
RSS_TRACE_POINTS = 120
# glibc's initial mmap threshold, fixed: blocks above it are mapped and unmapped, so RSS follows live
# memory instead of keeping freed blocks in the heap (the dynamic threshold grows up to 32 MiB).
MMAP_THRESHOLD_BYTES = 128 * 1024


def fix_mmap_threshold() -> int | None:
    """mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) where the C library is glibc; the value, or
    None where it could not be set. Called after the timing, so timed calls run with malloc's defaults."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    m_mmap_threshold = -3
    try:
        libc = ctypes.CDLL("libc.so.6")
        return MMAP_THRESHOLD_BYTES if libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD_BYTES) == 1 else None
    except (OSError, AttributeError):
        return None


def _downsample(trace: list, points: int) -> list:
    """At most `points` samples, the maximum kept: [[seconds, bytes], ...]."""
    if len(trace) <= points:
        return [list(p) for p in trace]
    step = len(trace) / points
    kept = {int(i * step) for i in range(points)} | {max(range(len(trace)), key=lambda i: trace[i][1])}
    return [list(trace[i]) for i in sorted(kept)]


def measure_compile(ctx: Context) -> dict:
    if ctx.info is None or not ctx.info.offers("compile_stats"):
        return {}
    stats = ctx.the_backend()[1].compile_stats()  # read after the memory pass, so a fallback in any call counts
    if stats.get("fell_back"):
        ctx.fail("error", f"compiled backend fell back to eager: {stats.get('reason', '')}".strip())
    return {"compilations": stats.get("compilations")}


def check_finite(ctx: Context) -> dict:
    import torch

    tensors = [ctx.output, *ctx.workload.gradients()]
    bad = sum(int((~torch.isfinite(t)).sum()) for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point())
    if bad:
        ctx.fail("nonfinite", f"{bad} non-finite values in the output or gradients")
    return {}


def measure_flops(ctx: Context) -> dict:
    from . import flops

    case = ctx.case
    hashing = ctx.workload is None or ctx.workload.hashes_in_call
    analytic = None if case is None else flops.analytic_flops(case, n_buckets=ctx.row.get("n_buckets"),
                                                               hashing=hashing)
    counted = None
    if case is None or case.count_flops:
        counting = ctx.counting_workload()
        counting.reset()
        counted = flops.counted_flops(counting) or None  # 0: kernels it has no formula for (unknown)
    work = analytic if analytic is not None else counted
    median = ctx.row.get("time_median_s")
    return {"flops_analytic": analytic, "flops_counted": counted,
            "achieved_flops_per_s": work / median if work is not None and median else None}


def measure_fidelity(ctx: Context) -> dict:
    case = ctx.the_case()
    if not case.fidelity:
        return {}
    import torch

    import impls

    from .fidelity import attention_mass_recall, relative_error
    from .workload import AttentionWorkload

    workload = ctx.workload
    if not isinstance(workload, AttentionWorkload):
        raise RuntimeError(f"fidelity needs an attention workload, got workload={case.workload!r}")
    info, backend = ctx.the_backend()
    qk, v = workload.qk.detach(), workload.v.detach()
    with torch.no_grad():
        out = ctx.output if case.mode == "forward" else workload.attend(qk, v)
    # A peer with another score temperature approximates dense attention at that temperature.
    reference_qk = qk * backend.score_scale(case.d_head) if info.offers("score_scale") else qk
    with torch.no_grad():
        reference = impls.get_backend(impls.reference_backend()).attend(reference_qk, v, workload.cfg)
    figures = {"rel_error": relative_error(out, reference)}
    if info.kind == "lsh":  # peers hash with their own rotations: our windows are not theirs
        figures["attn_mass_recall"] = attention_mass_recall(qk, workload.cfg)
    return figures


def measure_phases(ctx: Context) -> dict:
    """One untimed profiled call: its time by named phase (harness.measure.phases)."""
    from .phases import phase_profile

    ctx.workload.reset()
    profile = phase_profile(ctx.workload, ctx.device)
    return {"phase_times": profile.times_s, "phase_shares": profile.shares, "phase_total_s": profile.total_s}


def measure_trace(ctx: Context) -> dict:
    """One more profiled call, with shapes and FLOPs: its Chrome trace and op table under profiles/<case id>/."""
    from .phases import write_trace

    where = ctx.profile_dir()
    if where is None:
        ctx.note("trace not written: no run directory")
        return {}
    ctx.workload.reset()
    files = write_trace(ctx.workload, ctx.device, where)
    return {"trace_file": ctx.relative(files["trace"]), "op_table_file": ctx.relative(files["ops"])}


def measure_rss(ctx: Context | None = None) -> dict:
    """The worker's peak RSS so far (needs no workload: task cases take it too)."""
    from .memory import process_peak_rss_bytes

    return {"rss_peak_bytes": process_peak_rss_bytes()}


for _measurement in (
    Measurement("timing", measure_timing, ("time_median_s", "time_q1_s", "time_q3_s", "time_iqr_s", "time_min_s",
                                           "repeats", "first_call_s", "compile_time_s", "tokens_per_s")),
    # Right after the timing: the peak RSS of setup and timed calls, what a user of the backend sees, before
    # the memory pass's trackers add their own bookkeeping.
    Measurement("rss", measure_rss, ("rss_peak_bytes",)),
    Measurement("memory", measure_memory, ("mem_peak_bytes", "mem_method", "mem_bound", "mem_alloc_peak_bytes",
                                           "nvml_peak_used_bytes", "rss_call_rise_bytes", "rss_trace", "rss_note",
                                           "peak_live_top", "peak_live_file")),
    Measurement("compile_stats", measure_compile, ("compilations",)),
    Measurement("finite", check_finite, ()),
    Measurement("flops", measure_flops, ("flops_analytic", "flops_counted", "achieved_flops_per_s"),
                auxiliary=True),
    Measurement("fidelity", measure_fidelity, ("rel_error", "attn_mass_recall"), auxiliary=True),
    # Profiles, last: after every figure above, so that none of them pays for a profiler.
    Measurement("phases", measure_phases, ("phase_times", "phase_shares", "phase_total_s"), auxiliary=True,
                applies=lambda case: case.phases),
    Measurement("trace", measure_trace, ("trace_file", "op_table_file"), auxiliary=True,
                applies=lambda case: case.profile),
):
    register_measurement(_measurement, built_in=True)

