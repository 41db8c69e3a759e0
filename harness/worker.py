"""One case, measured in a process of its own: `python -m harness.worker CASE_JSON RESULT_JSON T0`.

The runner starts one worker per case so that memory peaks, allocator state and compile caches
never carry over between cases. The worker writes its row to RESULT_JSON (atomically) and exits;
a worker that dies before writing is classified by the runner. It prints `stage: NAME` lines to
stderr so that the runner can say where a killed or hanging worker was.

Order of work (each step untimed unless said so):
  setup        import the backend, check available(), build seeded inputs, warm torch's thread pool,
               then apply the case's address-space limit (mem_limit)
  timing       first call (first_call_s; compile_time_s = first call - warm median), warm-up
               calls, `repeats` timed calls (measure.time_call)
  memory       one call under harness.memory.track_peak_memory (+ NVML sampling on GPU); the
               output (and gradients) are checked for non-finite values. On the CPU a backend
               with compile_stats (torch.compile) runs this call untracked: dynamo does not run
               compiled frames under the tracker's TorchDispatchMode (mem_peak_bytes null)
  compile      backend.compile_stats(), if offered, covering the timed and memory calls:
               compilations; a fallback to eager is status error
  flops        one call under FlopCounterMode (flops.counted_flops)
  fidelity     dense reference on the same inputs: rel_error, attn_mass_recall (accuracy)
"""
from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path

from .spec import Case


def stage(name: str) -> None:
    print(f"stage: {name}", file=sys.stderr, flush=True)


# --- backends -----------------------------------------------------------------------------------

def backend_names() -> list[str]:
    """Every registered backend, peers included."""
    import impls

    return impls.list_backends()


def backend_kind(name: str) -> str:
    """"lsh" | "dense" | "peer", from the registration (nothing is imported or built)."""
    import impls

    return impls.backend_info(name).kind


def backend_kinds() -> dict[str, str]:
    """name -> kind for every registered backend."""
    return {name: backend_kind(name) for name in backend_names()}


def backend_availability(name: str) -> tuple[bool, str]:
    """(ok, reason) of a backend, import failures included; never raises."""
    import impls

    return impls.backend_availability(name)


# --- the measured call --------------------------------------------------------------------------

class CaseCall:
    """Builds the inputs of a case and the zero-argument callable that the harness times.

    forward: attend() under torch.no_grad(). forward_backward: attend() then out.backward(grad_out)
    with a fixed random grad_out; input gradients are reset to None before each call.
    train_step: AdamW step of impls.model's ReformerLM (LSH backends, reversible) or TransformerLM
    (dense backends); the architecture comes from the suite's [model] table, the LSH settings
    (n_hashes, chunk_len, n_buckets) and `causal` from the case, max_seq_len defaults to seq_len.
    `input_bytes` is what lives before a call: inputs (+ grad_out), or tokens + parameters + optimizer
    state; mem_peak_bytes = input_bytes + the peak increment measured around one call.
    """

    def __init__(self, case: Case, backend) -> None:
        import torch

        from impls import LSHConfig

        self.case = case
        self.backend = backend
        self.device = torch.device(case.device)
        self.dtype = getattr(torch, case.dtype)
        self.cfg = LSHConfig(n_buckets=case.n_buckets or 2, n_hashes=case.n_hashes or 1,
                             chunk_len=case.chunk_len, causal=case.causal, dedup=bool(case.dedup),
                             seed=case.seed)
        gen = torch.Generator(device=self.device).manual_seed(case.seed)
        shape = (case.batch, case.heads, case.seq_len, case.d_head)
        if case.mode == "train_step":
            self._build_model(gen)
            return
        grad = case.mode == "forward_backward"
        self.qk = torch.randn(shape, generator=gen, device=self.device, dtype=self.dtype).requires_grad_(grad)
        self.v = torch.randn(shape, generator=gen, device=self.device, dtype=self.dtype).requires_grad_(grad)
        self.grad_out = torch.randn(shape, generator=gen, device=self.device, dtype=self.dtype) if grad else None
        self.input_bytes = sum(t.numel() * t.element_size() for t in (self.qk, self.v, self.grad_out)
                               if t is not None)

    def _build_model(self, gen) -> None:
        import torch

        from impls.model import ModelConfig, ReformerLM, TransformerLM

        case = self.case
        fields = dict(case.model)
        fields.setdefault("max_seq_len", case.seq_len)
        fields["causal"] = case.causal
        if isinstance(fields.get("axial_shape"), list):
            fields["axial_shape"] = tuple(fields["axial_shape"])
        if case.backend_kind == "dense":
            mc = ModelConfig(**fields)
            self.model = TransformerLM(mc, backend=case.backend)
        else:
            fields.update(n_hashes=case.n_hashes, chunk_len=case.chunk_len, n_buckets=case.n_buckets,
                          dedup=bool(case.dedup))
            mc = ModelConfig(**fields)
            self.model = ReformerLM(mc, backend=case.backend, reversible=True)
        self.model.to(device=self.device, dtype=self.dtype)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.tokens = torch.randint(0, mc.vocab, (case.batch, case.seq_len), generator=gen, device=self.device)
        self.input_bytes = None  # known after the first step has created the optimizer state

    def __call__(self):
        if self.case.mode == "forward":
            import torch

            with torch.no_grad():
                return self.backend.attend(self.qk, self.v, self.cfg)
        if self.case.mode == "forward_backward":
            self.qk.grad = None
            self.v.grad = None
            out = self.backend.attend(self.qk, self.v, self.cfg)
            out.backward(self.grad_out)
            return out.detach()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.model.loss(self.tokens)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def reset_grads(self) -> None:
        """Free gradients so that what lives before a measured call is input_bytes exactly."""
        if self.case.mode == "forward_backward":
            self.qk.grad = None
            self.v.grad = None
        elif self.case.mode == "train_step":
            self.optimizer.zero_grad(set_to_none=True)
            tensors = [p for p in self.model.parameters()] + [self.tokens]
            tensors += [t for s in self.optimizer.state.values() for t in s.values() if hasattr(t, "numel")]
            self.input_bytes = sum(t.numel() * t.element_size() for t in tensors)

    def gradients(self):
        if self.case.mode == "forward_backward":
            return [self.qk.grad, self.v.grad]
        if self.case.mode == "train_step":
            return [p.grad for p in self.model.parameters()]
        return []


# --- measurement --------------------------------------------------------------------------------

def run_case(case: Case, spawned_at: float | None = None) -> dict:
    """Measure one case in this process; returns its row (never raises for a failing case)."""
    from .results import new_row

    row = new_row(case)
    row["status"] = "ok"
    row["reason"] = ""
    try:
        _measure(case, row, spawned_at)
    except BaseException as exc:  # every failure becomes the row's status
        if isinstance(exc, KeyboardInterrupt):
            raise
        row["status"], row["reason"] = classify_exception(exc)
        row["reason"] += f" (stage {row['stage']})"
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
    if case.plugins:
        _import_plugins(case)
    import torch

    import impls

    from . import flops as flops_mod
    from .measure import time_call
    from .memory import NvmlSampler, process_peak_rss_bytes, track_peak_memory

    if case.threads:
        torch.set_num_threads(case.threads)
    ok, reason = backend_availability(case.backend)
    if not ok:
        row["status"], row["reason"] = "unavailable", reason
        return
    if case.device.startswith("cuda") and not torch.cuda.is_available():
        row["status"], row["reason"] = "unavailable", f"device={case.device!r} but CUDA is not available"
        return
    backend = impls.get_backend(case.backend)
    package = impls.backend_info(case.backend).package
    if package:
        from .env import package_version

        row["peer"] = f"{package} {package_version(package)}"
    call = CaseCall(case, backend)
    effective_n_buckets = getattr(backend, "effective_n_buckets", None)
    if callable(effective_n_buckets):  # a peer that hashes into another bucket count than asked
        row["n_buckets"] = effective_n_buckets(call.cfg, case.seq_len)
    _warm_thread_pool(torch)
    if case.mem_limit_bytes is not None:
        if case.device.startswith("cuda"):
            _limit_cuda_memory(torch, call.device, case.mem_limit_bytes)
        else:
            _limit_address_space(case.mem_limit_bytes)
    if spawned_at is not None:
        row["worker_setup_s"] = time.time() - spawned_at

    row["stage"] = "timing"
    stage("timing")
    timing = time_call(call, warmup=case.warmup, repeats=case.repeats, device=case.device)
    row.update(time_median_s=timing.median_s, time_iqr_s=timing.iqr_s, time_min_s=timing.min_s,
               repeats=len(timing.times_s), first_call_s=timing.first_call_s,
               # What the first call costs beyond a warm one: compilation, autotuning, lazy init.
               compile_time_s=timing.first_call_s - timing.median_s)

    compile_stats = getattr(backend, "compile_stats", None)

    row["stage"] = "memory"
    stage("memory")
    call.reset_grads()
    device_index = torch.device(case.device).index or 0
    if case.device == "cpu" and callable(compile_stats):
        # The CPU tracker is a TorchDispatchMode, and dynamo refuses to run compiled frames while
        # one is active: a compiled backend's CPU peak cannot be measured this way.
        out = call()
        row["mem_method"] = "unmeasured: torch.compile does not run under the CPU tensor tracker"
    else:
        nvml_sampler = NvmlSampler(device_index) if case.device.startswith("cuda") else _Null()
        with nvml_sampler as nvml, track_peak_memory(case.device) as peak:
            out = call()
        row.update(mem_peak_bytes=call.input_bytes + peak.peak_bytes, mem_method=peak.method,
                   nvml_peak_used_bytes=getattr(nvml, "peak_used_bytes", None))
    if callable(compile_stats):
        # Read after the memory pass too, so a fallback in any call of the compiled backend counts.
        row["stage"] = "compile_stats"
        stats = compile_stats()
        row["compilations"] = stats.get("compilations")
        if stats.get("fell_back"):
            row["status"] = "error"
            row["reason"] = f"compiled backend fell back to eager: {stats.get('reason', '')}".strip()
    bad = _count_nonfinite([out, *call.gradients()])
    if bad:
        row["status"], row["reason"] = "nonfinite", f"{bad} non-finite values in the output or gradients"

    row["stage"] = "flops"
    stage("flops")
    row["flops_analytic"] = flops_mod.analytic_flops(case, n_buckets=row["n_buckets"])
    if case.count_flops:
        counting_call = _counting_call(case, call)
        if counting_call is not None:
            call.reset_grads()
            with _auxiliary(row, "flops_counted"):
                row["flops_counted"] = flops_mod.counted_flops(counting_call)
    work = row["flops_analytic"] if row["flops_analytic"] is not None else row["flops_counted"]
    if work is not None and timing.median_s > 0:
        row["achieved_flops_per_s"] = work / timing.median_s

    if case.fidelity and row["status"] == "ok":
        row["stage"] = "fidelity"
        stage("fidelity")
        with _auxiliary(row, "fidelity"):
            _fidelity(case, call, out, row)
    row["rss_peak_bytes"] = process_peak_rss_bytes()
    row["stage"] = "done"


def _counting_call(case: Case, call: CaseCall):
    """What FlopCounterMode runs: the eager path of the same algorithm (DESIGN.md measurement rules).

    LSH backends are counted through `eager` (compiled and Triton kernels are invisible to the
    counter); dense baselines and peers through themselves. train_step is counted only on backends
    that run in eager PyTorch.
    """
    import impls

    if case.mode == "train_step":
        return call if case.backend in ("eager", "dense", "sdpa") or case.backend_kind == "peer" else None
    if case.backend_kind == "lsh" and case.backend != "eager":
        eager_call = CaseCall.__new__(CaseCall)
        eager_call.__dict__.update(call.__dict__)
        eager_call.backend = impls.get_backend("eager")
        return eager_call
    return call


def _fidelity(case: Case, call: CaseCall, out, row: dict) -> None:
    import torch

    import impls

    from .accuracy import attention_mass_recall, relative_error

    qk = call.qk.detach()
    v = call.v.detach()
    if case.mode != "forward":
        with torch.no_grad():
            out = call.backend.attend(qk, v, call.cfg)
    # A peer with another score temperature approximates dense attention at that temperature.
    score_scale = getattr(call.backend, "score_scale", None)
    reference_qk = qk * score_scale(case.d_head) if callable(score_scale) else qk
    with torch.no_grad():
        reference = impls.get_backend("dense").attend(reference_qk, v, call.cfg)
    row["rel_error"] = relative_error(out, reference)
    if case.backend_kind == "lsh":  # peers hash with their own rotations: our windows are not theirs
        row["attn_mass_recall"] = attention_mass_recall(qk, call.cfg)


def _count_nonfinite(tensors) -> int:
    import torch

    return sum(int((~torch.isfinite(t)).sum()) for t in tensors
               if isinstance(t, torch.Tensor) and t.is_floating_point())


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


def _import_plugins(case: Case) -> None:
    import importlib

    if case.plugin_dir and case.plugin_dir not in sys.path:
        sys.path.insert(0, case.plugin_dir)
    for module in case.plugins:
        importlib.import_module(module)


@contextlib.contextmanager
def _auxiliary(row: dict, what: str):
    """A cross-check pass (FLOP counting, fidelity) that fails leaves the case's status alone: the
    timing and memory figures stand, and the reason says what is missing and why. An OOM of the
    dense reference is the typical case."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 -- recorded in the row, the measured figures stand
        _, reason = classify_exception(exc)
        note = f"{what} not measured: {reason}"
        row["reason"] = f"{row['reason']}; {note}" if row["reason"] else note
        traceback.print_exc(file=sys.stderr)


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


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
