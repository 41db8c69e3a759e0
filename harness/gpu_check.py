"""One-command GPU check of the triton backend:  python -m harness.gpu_check OUTDIR [--budget-s S]

On a CUDA machine, in this order and within about S seconds (default 480, for an H200):
  1. `pytest -m gpu` (tests/test_gpu.py): bf16 against fp32 eager at 4K-64K tokens, fp32 / fp16
     at 4K, the peak-memory bound. Log and JUnit XML in OUTDIR.
  2. The figures of issue 6, each printed with its unit and formula and written to
     OUTDIR/gpu_check.json and OUTDIR/gpu_check.md. Shape: batch 1, 4 heads x 64, chunk 64,
     4 rounds, n_buckets = 2N/64, not causal, bf16, forward + backward with a random upstream gradient:
       - time at N = 65,536 of triton, end to end (hashing and sorting included) and attention only
         (buckets precomputed and replayed);
       - triton's CUDA allocator peak over that call, against the tensors it cannot do without;
       - triton at N = 1,048,576: completes or not, time, peak;
       - the same times for eager and compiled (while 60% of the time left after the tests lasts),
         the speed-ups t_other / t_triton, and achieved TFLOP/s = harness.flops count / time.
  3. `reformer-bench run suites/gpu.toml --backend triton --out OUTDIR/suite` (results.jsonl,
     report.html) in the time left (--suite-backends widens it; the whole suite is the GPU
     runner's job); a run cut short is finished with the same command and --resume.

Exit code 0 when the tests passed and every figure was measured, 1 otherwise, 2 without a CUDA
device or with TRITON_INTERPRET=1 set (one line on stderr).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
# Time kept back at the end of the budget for writing results.
MARGIN_S = 15


@dataclass(frozen=True)
class Plan:
    """What the figures measure. GPU_PLAN is issue 6's; tests run a tiny one on the CPU under the
    Triton interpreter to keep this script's code path exercised where there is no GPU."""

    device: str = "cuda"
    dtype: torch.dtype = torch.bfloat16
    batch: int = 1
    heads: int = 4
    d_head: int = 64
    chunk_len: int = 64
    n_hashes: int = 4
    speed_seq_len: int = 65536
    long_seq_len: int = 1 << 20
    warmup: int = 2
    repeats: int = 5
    others: tuple[str, ...] = ("eager", "compiled")

    def config(self, seq_len: int):
        from impls import LSHConfig

        return LSHConfig(n_buckets=2 * seq_len // self.chunk_len, n_hashes=self.n_hashes,
                         chunk_len=self.chunk_len, causal=False, seed=0)

    def inputs(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """qk and v (requiring grad) and an upstream gradient, standard normal."""
        shape = (self.batch, self.heads, seq_len, self.d_head)
        gen = torch.Generator(device=self.device).manual_seed(0)
        qk, v, grad = (torch.randn(shape, generator=gen, device=self.device).to(self.dtype) for _ in range(3))
        return qk.requires_grad_(True), v.requires_grad_(True), grad

    def describe(self, seq_len: int) -> str:
        return (f"B={self.batch} H={self.heads} N={seq_len} D={self.d_head} C={self.chunk_len} "
                f"R={self.n_hashes} n_buckets={2 * seq_len // self.chunk_len} "
                f"{str(self.dtype).removeprefix('torch.')} fwd+bwd")


GPU_PLAN = Plan()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path, help="folder for test logs, figures and the suite run")
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget of the whole check")
    parser.add_argument("--suite-backends", nargs="+", default=["triton"], metavar="NAME",
                        help="backends of suites/gpu.toml to run (default: triton)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("gpu_check: error: TRITON_INTERPRET is set; unset it to run the compiled kernels",
              file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device here; run this on a GPU machine", file=sys.stderr)
        return 2
    deadline = time.monotonic() + args.budget_s
    args.outdir.mkdir(parents=True, exist_ok=True)

    tests_ok = _run_tests(args.outdir, timeout_s=max(60.0, 0.5 * args.budget_s))
    # Keep a third of what is left for the suite when `compiled` is slow to compile.
    figures = measure_figures(GPU_PLAN, deadline=time.monotonic() + 0.6 * (deadline - time.monotonic()))
    from .env import environment

    plan = {k: str(v) if isinstance(v, torch.dtype) else v for k, v in dataclasses.asdict(GPU_PLAN).items()}
    record = {"environment": environment(), "plan": plan, "gpu_tests_passed": tests_ok, "figures": figures}
    (args.outdir / "gpu_check.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.outdir / "gpu_check.md").write_text(_markdown(record))
    suite = _run_suite(args.outdir / "suite", args.suite_backends,
                       timeout_s=deadline - time.monotonic() - MARGIN_S)
    record["suite"] = suite
    (args.outdir / "gpu_check.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"gpu_check: tests {'passed' if tests_ok else 'FAILED'}; suite {suite}; figures in {args.outdir}")
    measured = all(f["value"] is not None and f["value"] is not False for f in figures)
    return 0 if tests_ok and measured else 1


def _run_tests(outdir: Path, timeout_s: float) -> bool:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "tests/test_gpu.py",
           f"--junitxml={outdir / 'pytest-gpu.xml'}"]
    print("$", " ".join(cmd), flush=True)
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        (outdir / "pytest-gpu.log").write_text(f"timed out after {timeout_s:.0f} s\n{exc.stdout or ''}")
        print(f"gpu tests: timed out after {timeout_s:.0f} s", flush=True)
        return False
    (outdir / "pytest-gpu.log").write_text(proc.stdout + proc.stderr)
    print(proc.stdout[-3000:], flush=True)
    return proc.returncode == 0


def _run_suite(run_dir: Path, backends: list[str], timeout_s: float) -> str:
    suite = REPO / "suites" / "gpu.toml"
    if not suite.exists():
        return "skipped: suites/gpu.toml does not exist"
    if timeout_s < 30:
        return f"skipped: {timeout_s:.0f} s left of the budget"
    cmd = [sys.executable, "-m", "harness.cli", "run", str(suite), "--backend", *backends,
           "--out", str(run_dir)]
    print("$", " ".join(cmd), flush=True)
    # Own session, so that the runner and its workers go together when the budget is spent.
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True)
    try:
        code = proc.wait(timeout=timeout_s)
        return f"exit code {code}, results in {run_dir}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)  # the runner keeps finished rows on an interrupt
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return (f"stopped after {timeout_s:.0f} s (budget); finish with: reformer-bench run suites/gpu.toml "
                f"--backend {' '.join(backends)} --out {run_dir} --resume")


# ----------------------------------------------------------------------------------------------
# Figures


def _figure(name: str, value, unit: str, formula: str, **extra) -> dict:
    figure = {"name": name, "value": value, "unit": unit, "formula": formula, **extra}
    shown = "not measured" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))
    print(f"{name}: {shown} {unit if value is not None else ''}   [{formula}]"
          + (f"  ({extra['error']})" if "error" in extra else ""), flush=True)
    return figure


def _forward_backward(backend, qk, v, grad, cfg, buckets=None):
    def call():
        out = backend.attend(qk, v, cfg) if buckets is None else backend.attend(qk, v, cfg, buckets=buckets)
        torch.autograd.grad(out, (qk, v), grad)

    return call


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def _release(plan: Plan) -> None:
    if plan.device.startswith("cuda"):
        torch.cuda.empty_cache()


def measure_figures(plan: Plan, deadline: float | None = None) -> list[dict]:
    """Speed, peak memory, the long-sequence run, speed-ups and TFLOP/s; one dict per figure.

    Triton's figures come first; another backend is timed only while time.monotonic() < deadline
    (its compilation, for `compiled`, can take minutes)."""
    from impls.lsh import hash_buckets

    from .flops import lsh_attention_flops

    n = plan.speed_seq_len
    cfg = plan.config(n)
    qk, v, grad = plan.inputs(n)
    buckets = hash_buckets(qk, cfg)
    times: dict[tuple[str, str], float | None] = {}
    figures = _time_backend("triton", plan, qk, v, grad, cfg, buckets, times)
    figures += _peak_memory_figures(plan, qk, v, grad, cfg)
    figures += _long_sequence_figures(plan)
    for other in plan.others:
        if deadline is not None and time.monotonic() > deadline:
            for scope in SCOPES:
                times[other, scope] = None
                figures.append(_figure(f"time {other} {scope}", None, "s", "", error="skipped: budget spent"))
        else:
            figures += _time_backend(other, plan, qk, v, grad, cfg, buckets, times)
    for other in plan.others:
        for scope in SCOPES:
            t_triton, t_other = times[("triton", scope)], times[(other, scope)]
            value = t_other / t_triton if t_triton and t_other else None
            figures.append(_figure(f"speed-up over {other}, {scope}", value, "x",
                                   f"time {other} {scope} / time triton {scope} (target >= 4)"))

    b, h, d, c, r = plan.batch, plan.heads, plan.d_head, plan.chunk_len, plan.n_hashes
    total = lsh_attention_flops(b, h, n, d, cfg.n_buckets, r, c, backward=True)
    hashing = 2 * b * h * n * d * r * (cfg.n_buckets // 2)  # harness.flops: x @ rotations, forward only
    for scope, flops in (("end to end", total), ("attention only", total - hashing)):
        t = times[("triton", scope)]
        figures.append(_figure(
            f"triton achieved TFLOP/s, {scope}", flops / t / 1e12 if t else None, "TFLOP/s",
            f"{flops:.4g} FLOP / time triton {scope}; FLOP = 3 x 4*B*H*N*W*C*D*R (attention fwd+bwd, W=2)"
            + (" + 2*B*H*N*D*R*n_buckets/2 (hashing)" if scope == "end to end" else "")))
    return figures


SCOPES = ("end to end", "attention only")


def _time_backend(name: str, plan: Plan, qk, v, grad, cfg, buckets, times: dict) -> list[dict]:
    """Time one backend's fwd+bwd end to end and with replayed buckets; fills times[name, scope]."""
    from impls import get_backend

    from .measure import time_call

    figures = []
    backend = get_backend(name)
    ok, reason = backend.available()
    n = qk.shape[2]
    for scope, replay in zip(SCOPES, (None, buckets)):
        key = f"time {name} {scope}"
        formula = (f"median of {plan.repeats} synchronised calls after {plan.warmup} warm-ups, "
                   f"{plan.describe(n)}"
                   + ("; hashing and sorting included" if replay is None else "; buckets precomputed"))
        times[name, scope] = None
        if not ok:
            figures.append(_figure(key, None, "s", formula, error=f"unavailable: {reason}"))
            continue
        try:
            timing = time_call(_forward_backward(backend, qk, v, grad, cfg, replay), plan.warmup,
                               plan.repeats, plan.device)
        except Exception as exc:  # noqa: BLE001 -- an OOM or a compile failure is this figure's error
            figures.append(_figure(key, None, "s", formula, error=_error(exc)))
        else:
            times[name, scope] = timing.median_s
            figures.append(_figure(key, timing.median_s, "s", formula, iqr_s=timing.iqr_s,
                                   first_call_s=timing.first_call_s))
        _release(plan)
    return figures


def _peak_memory_figures(plan: Plan, qk, v, grad, cfg) -> list[dict]:
    from impls import get_backend

    from .memory import track_peak_memory

    call = _forward_backward(get_backend("triton"), qk, v, grad, cfg)
    tensor = qk.numel() * qk.element_size()
    formula = ("peak bytes added during one fwd+bwd (harness.memory.track_peak_memory: CUDA allocator "
               "peak on GPU) + qk, v and upstream gradient")
    try:
        call()  # compiled and warm
        with track_peak_memory(plan.device) as peak_memory:
            call()
    except Exception as exc:  # noqa: BLE001 -- an OOM is this figure's error
        return [_figure("triton peak memory", None, "bytes", formula, error=_error(exc))]
    peak = peak_memory.peak_bytes + 3 * tensor
    rows_rounds = qk.shape[0] * qk.shape[1] * qk.shape[2] * cfg.n_hashes
    # What the issue names: inputs qk, v; output; the sort's int64 permutation and inverse; fp32
    # lse per round.
    named = 3 * tensor + 2 * 8 * rows_rounds + 4 * rows_rounds
    with_grads = named + 3 * tensor  # + upstream gradient, d qk, d v
    return [
        _figure("triton peak memory", peak, "bytes", formula),
        _figure("peak / (inputs + output + sort indices + LSE)", peak / named, "x",
                f"{peak} / (3 x {tensor} + 2 x 8*B*H*R*N + 4*B*H*R*N = {named}) (target <= 1.5)"),
        _figure("peak / (that + upstream gradient + d qk + d v)", peak / with_grads, "x",
                f"{peak} / ({named} + 3 x {tensor} = {with_grads})"),
    ]


def _long_sequence_figures(plan: Plan) -> list[dict]:
    from impls import get_backend

    from .measure import time_call
    from .memory import track_peak_memory

    backend = get_backend("triton")
    n = plan.long_seq_len
    formula = f"one call, {plan.describe(n)}, synchronised wall clock, hashing included"
    try:
        qk, v, grad = plan.inputs(n)
        with track_peak_memory(plan.device) as peak_memory:
            timing = time_call(_forward_backward(backend, qk, v, grad, plan.config(n)), 0, 1, plan.device)
    except Exception as exc:  # noqa: BLE001 -- not completing is the figure
        return [_figure(f"{n} tokens fwd+bwd completes", False, "", formula, error=_error(exc))]
    peak = peak_memory.peak_bytes + 3 * qk.numel() * qk.element_size()
    return [_figure(f"{n} tokens fwd+bwd completes", True, "", formula),
            _figure(f"{n} tokens fwd+bwd time", timing.first_call_s, "s", formula),
            _figure(f"{n} tokens fwd+bwd peak memory", peak, "bytes", "as triton peak memory")]


def _markdown(record: dict) -> str:
    env = record["environment"]
    title = (f"# GPU check of the triton backend ({env.get('device_name')}, torch {env.get('torch')}, "
             f"triton {env.get('triton')}, commit {str(env.get('git_commit'))[:10]})")
    lines = [title, "",
             f"GPU tests (pytest -m gpu): {'passed' if record['gpu_tests_passed'] else 'FAILED'}", "",
             "| figure | value | unit | formula |", "| --- | --- | --- | --- |"]
    for f in record["figures"]:
        value = f["value"]
        shown = "not measured: " + f.get("error", "") if value is None else (
            f"{value:.4g}" if isinstance(value, float) else str(value))
        lines.append(f"| {f['name']} | {shown} | {f['unit']} | {f['formula']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
