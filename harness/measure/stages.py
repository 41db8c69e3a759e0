"""The built-in measurements, run by the worker in this order on one case (each untimed unless said):

  timing       first call (first_call_s; compile_time_s = first call - warm median for backends that
               compile), `warmup` more calls, `repeats` timed calls (harness.measure.timing)
  memory       one call under harness.measure.memory.track_peak_memory (+ NVML sampling on GPU). On the
               CPU a backend with compile_stats (torch.compile) runs this call untracked: dynamo does not
               run compiled frames under the tracker's TorchDispatchMode (mem_peak_bytes null)
  compile      backend.compile_stats(), if offered, covering the timed and memory calls:
               compilations; a fallback to eager is status error
  finite       the output (and gradients) of the memory call: NaN / inf is status nonfinite
  flops        the analytic count, and one call under FlopCounterMode on the eager path (flops_via)
  fidelity     the reference (exact dense attention) on the same inputs: rel_error, attn_mass_recall
  rss          the worker's peak resident set size

Each is a function of a Context returning {metric: value}; registered with its metrics in
harness.measure.metrics, where a plugin's measurement joins them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .metrics import Measurement, register_measurement


@dataclass
class Context:
    """What a measurement sees: the case (None for a pytest-benchmark call), the backend's registration
    and instance, the workload (call(), input_bytes, reset(), gradients()), the row so far, and the
    output of the memory pass."""

    case: Any
    workload: Any
    device: str
    info: Any = None
    backend: Any = None
    row: dict = field(default_factory=dict)
    output: Any = None
    timing: Any = None

    def fail(self, status: str, reason: str) -> None:
        """Mark the case failed (the first failure's reason is kept)."""
        if self.row.get("status") in (None, "ok"):
            self.row["status"], self.row["reason"] = status, reason

    def counting_workload(self):
        """The workload FlopCounterMode runs: the same case on the backend's flops_via, else itself."""
        if self.info is None or self.info.flops_via is None:
            return self.workload
        from ..run.workload import build_workload

        return build_workload(self.case, self.info.flops_via)


def measure_timing(ctx: Context) -> dict:
    from .timing import time_call

    case = ctx.case
    timing = ctx.timing = time_call(ctx.workload, warmup=case.warmup, repeats=case.repeats, device=case.device)
    compiles = ctx.info is not None and ctx.info.compiles
    return {"time_median_s": timing.median_s, "time_q1_s": timing.q1_s, "time_q3_s": timing.q3_s,
            "time_iqr_s": timing.iqr_s, "time_min_s": timing.min_s, "repeats": len(timing.times_s),
            "first_call_s": timing.first_call_s,
            # What the first call costs beyond a warm one: compilation, autotuning, lazy init.
            "compile_time_s": timing.first_call_s - timing.median_s if compiles else None}


def measure_memory(ctx: Context) -> dict:
    from .memory import NvmlSampler, track_peak_memory

    ctx.workload.reset()
    if ctx.device == "cpu" and callable(getattr(ctx.backend, "compile_stats", None)):
        # The CPU tracker is a TorchDispatchMode, and dynamo refuses to run compiled frames while
        # one is active: a compiled backend's CPU peak cannot be measured this way.
        ctx.output = ctx.workload()
        return {"mem_method": "unmeasured: torch.compile does not run under the CPU tensor tracker"}
    if ctx.device.startswith("cuda"):
        import torch

        sampler = NvmlSampler(torch.device(ctx.device).index or 0)
    else:
        sampler = None
    with _maybe(sampler), track_peak_memory(ctx.device) as peak:
        ctx.output = ctx.workload()
    input_bytes = ctx.workload.input_bytes or 0
    return {"mem_peak_bytes": input_bytes + peak.peak_bytes, "mem_method": peak.method,
            "nvml_peak_used_bytes": None if sampler is None else sampler.peak_used_bytes}


def measure_compile(ctx: Context) -> dict:
    compile_stats = getattr(ctx.backend, "compile_stats", None)
    if not callable(compile_stats):
        return {}
    stats = compile_stats()  # read after the memory pass, so a fallback in any call counts
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
    analytic = None if case is None else flops.analytic_flops(case, n_buckets=ctx.row.get("n_buckets"))
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
    if not ctx.case.fidelity:
        return {}
    import torch

    import impls

    from .fidelity import attention_mass_recall, relative_error

    workload = ctx.workload
    qk, v = workload.qk.detach(), workload.v.detach()
    with torch.no_grad():
        out = ctx.output if ctx.case.mode == "forward" else workload.attend(qk, v)
    # A peer with another score temperature approximates dense attention at that temperature.
    score_scale = getattr(ctx.backend, "score_scale", None)
    reference_qk = qk * score_scale(ctx.case.d_head) if callable(score_scale) else qk
    with torch.no_grad():
        reference = impls.get_backend(impls.reference_backend()).attend(reference_qk, v, workload.cfg)
    figures = {"rel_error": relative_error(out, reference)}
    if ctx.info.kind == "lsh":  # peers hash with their own rotations: our windows are not theirs
        figures["attn_mass_recall"] = attention_mass_recall(qk, workload.cfg)
    return figures


def measure_rss(ctx: Context) -> dict:
    from .memory import process_peak_rss_bytes

    return {"rss_peak_bytes": process_peak_rss_bytes()}


class _maybe:
    """`with _maybe(x):` enters x when it is not None."""

    def __init__(self, manager) -> None:
        self.manager = manager

    def __enter__(self):
        return None if self.manager is None else self.manager.__enter__()

    def __exit__(self, *exc):
        return None if self.manager is None else self.manager.__exit__(*exc)


for _measurement in (
    Measurement("timing", measure_timing, ("time_median_s", "time_q1_s", "time_q3_s", "time_iqr_s", "time_min_s",
                                           "repeats", "first_call_s", "compile_time_s")),
    Measurement("memory", measure_memory, ("mem_peak_bytes", "mem_method", "nvml_peak_used_bytes")),
    Measurement("compile_stats", measure_compile, ("compilations",)),
    Measurement("finite", check_finite, ()),
    Measurement("flops", measure_flops, ("flops_analytic", "flops_counted", "achieved_flops_per_s"),
                auxiliary=True),
    Measurement("fidelity", measure_fidelity, ("rel_error", "attn_mass_recall"), auxiliary=True),
    Measurement("rss", measure_rss, ("rss_peak_bytes",)),
):
    register_measurement(_measurement, built_in=True)

