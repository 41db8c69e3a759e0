"""Where a call's time goes: one untimed call under torch.profiler with the backends' named phases on
(impls.phases), and, on request, its Chrome trace and op table.

- phase_profile: one profiled call; per phase the exclusive time of its ranges (a phase's ranges
  summed, less the time of phases nested in them), "other" for the rest of the call, and the call's
  total (its own range). A backend without phases (dense, a peer whose code has no range) is "other"
  whole: the call as one phase.
- write_trace: one more profiled call, with input shapes and FLOPs, written as a Chrome-format trace
  (Perfetto and chrome://tracing open it) and an op table (top ops by self time: calls, input shapes,
  FLOPs where torch knows them), as text and as JSON.

Run after the timed calls (harness.measure.stages): the profiler and the ranges never touch a timed call.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

# The range around the whole profiled call: its duration is the call's total.
CALL_RANGE = "reformer_bench.call"
OTHER = "other"
# Rows of the op table written beside a trace.
OP_TABLE_ROWS = 60


@dataclass
class PhaseProfile:
    """times_s: phase -> exclusive seconds, OTHER included (they sum to total_s). total_s: the call."""

    times_s: dict[str, float]
    total_s: float

    @property
    def shares(self) -> dict[str, float]:
        return {name: t / self.total_s if self.total_s > 0 else 0.0 for name, t in self.times_s.items()}


def _sync_for(device: str):
    if device.startswith("cuda"):
        return lambda: torch.cuda.synchronize(torch.device(device))
    return None


def _activities(device: str) -> list:
    from torch.profiler import ProfilerActivity

    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])


def profiled_call(call, device: str, **profile_kwargs):
    """(profiler, phase names entered): one call of `call` under torch.profiler inside CALL_RANGE,
    with the backends' phases on (and synchronised with the device on CUDA, so that a phase's range
    covers the kernels it launched)."""
    from torch.profiler import profile, record_function

    from impls import phases

    sync = _sync_for(device)
    with phases.enabled(sync=sync) as seen, profile(activities=_activities(device), **profile_kwargs) as prof:
        with record_function(CALL_RANGE):
            if sync is not None:
                sync()
            call()
            if sync is not None:
                sync()
    return prof, set(seen)


def phase_profile(call, device: str) -> PhaseProfile:
    """One profiled call of `call`: its phases' exclusive times, OTHER and the call's total."""
    prof, names = profiled_call(call, device)
    return phase_times(prof.events(), names)


def phase_times(events, names: set[str]) -> PhaseProfile:
    """From a profiler's FunctionEvents: each phase's exclusive time summed over its ranges, OTHER =
    the call's range less them. Exclusive: a phase range's time less that of the phase ranges nearest
    below it in the event tree, so nested phases are never counted twice."""
    total_us = sum(e.time_range.elapsed_us() for e in events if e.name == CALL_RANGE)
    times_us: dict[str, float] = {}
    for event in events:
        if event.name not in names:
            continue
        inner = sum(child.time_range.elapsed_us() for child in _nearest_phases(event, names))
        times_us[event.name] = times_us.get(event.name, 0.0) + event.time_range.elapsed_us() - inner
    named = sum(times_us.values())
    times_us[OTHER] = max(0.0, total_us - named)
    return PhaseProfile(times_s={k: v * 1e-6 for k, v in sorted(times_us.items(), key=lambda kv: -kv[1])},
                        total_s=max(total_us, named) * 1e-6)


def _nearest_phases(event, names: set[str]):
    for child in event.cpu_children:
        if child.name in names:
            yield child
        else:
            yield from _nearest_phases(child, names)


def write_trace(call, device: str, where: Path) -> dict[str, str]:
    """One profiled call with shapes and FLOPs: where/trace.json (Chrome format) and the op table
    where/ops.txt and where/ops.json. Returns {"trace": path, "ops": path} (ops.json's)."""
    where.mkdir(parents=True, exist_ok=True)
    prof, _ = profiled_call(call, device, record_shapes=True, with_flops=True)
    trace = where / "trace.json"
    prof.export_chrome_trace(str(trace))
    averages = prof.key_averages(group_by_input_shape=True)
    sort_by = "self_device_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    (where / "ops.txt").write_text(averages.table(sort_by=sort_by, row_limit=OP_TABLE_ROWS) + "\n")
    rows = sorted(averages, key=lambda a: -getattr(a, sort_by))[:OP_TABLE_ROWS]
    ops = [{"op": a.key, "calls": a.count, "self_s": getattr(a, sort_by) * 1e-6,
            "total_s": (a.device_time_total if device.startswith("cuda") else a.cpu_time_total) * 1e-6,
            "input_shapes": str(a.input_shapes) if a.input_shapes else None,
            "flops": a.flops or None} for a in rows]
    (where / "ops.json").write_text(json.dumps(ops, indent=1) + "\n")
    return {"trace": str(trace), "ops": str(where / "ops.json")}
