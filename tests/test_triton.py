"""The triton backend computes the eager backend's function: outputs and gradients, under the Triton
interpreter on CPU.

Triton reads TRITON_INTERPRET when it decorates the kernels, i.e. at the first import of
impls.triton_kernels, and another test of this pytest process may have imported it already. So the
comparisons run in one subprocess (this file run as a script, with TRITON_INTERPRET=1) that prints
one JSON line of errors per case; each test below asserts on one case. Sizes are tiny because the
interpreter runs every program in numpy. The interpreter cannot run bfloat16 dots, so a second
subprocess compiles the kernels ahead of time for an H100/H200 (sm_90) in bfloat16: the code the
GPU runs is at least built, here, without a GPU.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from impls import LSHConfig, get_backend

REPO = Path(__file__).resolve().parents[1]


def _case(seq: int, chunk_len: int, n_hashes: int, causal: bool = False, dedup: bool = False,
          **extra) -> dict:
    return {"seq": seq, "chunk_len": chunk_len, "n_hashes": n_hashes, "causal": causal, "dedup": dedup,
            **extra}


# A pairwise-covering set over causal x n_hashes x dedup x seq x chunk_len (every pair of values of
# any two factors occurs), then the cases that reach special paths of the kernels.
CASES = {
    "n64-c16-r1": _case(64, 16, 1),
    "n64-c16-r4-causal-dedup": _case(64, 16, 4, causal=True, dedup=True),
    "n64-c32-r4-dedup": _case(64, 32, 4, dedup=True),
    "n64-c32-r1-causal": _case(64, 32, 1, causal=True),
    "n128-c16-r4": _case(128, 16, 4),
    "n128-c16-r1-causal-dedup": _case(128, 16, 1, causal=True, dedup=True),
    "n128-c32-r4-causal": _case(128, 32, 4, causal=True),
    "n128-c32-r1-dedup": _case(128, 32, 1, dedup=True),
    # One chunk per round: the window is the chunk alone.
    "n32-c32-r2-one-chunk": _case(32, 32, 2, causal=True, dedup=True),
    # chunk_len and d_head that are not powers of two: padded tiles.
    "n72-c24-d20-r2-causal-dedup": _case(72, 24, 2, causal=True, dedup=True, d_head=20),
    # chunk_len above the fp32 tile (32 slots): several programs per chunk, several key steps.
    "n256-c128-r2-causal": _case(256, 128, 2, causal=True),
    # Non-contiguous inputs and the expanded (stride-0) gradient of out.sum().
    "n64-c16-r2-strided-sum": _case(64, 16, 2, strided=True),
    "fp16-n64-c16-r4-causal-dedup": _case(64, 16, 4, causal=True, dedup=True, dtype="float16"),
    "fp16-n64-c32-r2": _case(64, 32, 2, dtype="float16"),
}
FP32_TOL = 1e-4


def _inputs(case: dict, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(1234)
    shape = (1, 2, case["seq"], case.get("d_head", 16))  # batch x heads = 2 rows
    if case.get("strided"):
        # (batch, seq, heads, d) storage seen as (batch, heads, seq, d): what a model's head split gives.
        qk = torch.randn(shape[0], shape[2], shape[1], shape[3], generator=gen).transpose(1, 2)
        v = torch.randn(shape[0], shape[2], shape[1], shape[3], generator=gen).transpose(1, 2)
    else:
        qk = torch.randn(shape, generator=gen)
        v = torch.randn(shape, generator=gen)
    grad = torch.randn(shape, generator=gen)
    return qk.to(dtype), v.to(dtype), grad.to(dtype)


def _run(backend: str, case: dict, dtype: torch.dtype) -> list[torch.Tensor]:
    """Output, d qk and d v of one backend, in float32."""
    cfg = LSHConfig(n_buckets=4, n_hashes=case["n_hashes"], chunk_len=case["chunk_len"],
                    causal=case["causal"], dedup=case["dedup"], seed=7)
    qk, v, grad = _inputs(case, dtype)
    qk.requires_grad_(True)
    v.requires_grad_(True)
    out = get_backend(backend).attend(qk, v, cfg)
    if case.get("strided"):
        out.sum().backward()
    else:
        out.backward(grad)
    return [t.detach().float() for t in (out, qk.grad, v.grad)]


def _relative_errors(got: list[torch.Tensor], ref: list[torch.Tensor]) -> list[float]:
    """max |got - ref| / max |ref| for output, d qk, d v."""
    return [((g - r).abs().max() / r.abs().max()).item() for g, r in zip(got, ref)]


def _case_errors(case: dict) -> dict:
    if case.get("dtype") == "float16":
        # Both half-precision runs against the float32 eager reference: triton must be as close
        # to it as eager in float16 is.
        ref = _run("eager", case, torch.float32)
        return {"triton": _relative_errors(_run("triton", case, torch.float16), ref),
                "eager": _relative_errors(_run("eager", case, torch.float16), ref)}
    ref = _run("eager", case, torch.float32)
    return {"triton": _relative_errors(_run("triton", case, torch.float32), ref)}


def _exact_regime_error() -> float:
    """Two chunks cover the sequence, so LSH attention must equal dense attention (DESIGN.md)."""
    gen = torch.Generator().manual_seed(5)
    qk, v = torch.randn(1, 2, 64, 16, generator=gen), torch.randn(1, 2, 64, 16, generator=gen)
    cfg = LSHConfig(n_buckets=8, n_hashes=3, chunk_len=32, causal=True, seed=3)
    out = get_backend("triton").attend(qk, v, cfg)
    ref = get_backend("dense").attend(qk, v, cfg)
    return ((out - ref).abs().max() / ref.abs().max()).item()


def _counted_flops() -> dict:
    """FlopCounterMode's count of one forward and one forward + backward, buckets precomputed (so
    that hashing's matmul is not in it): (batch x heads) = 2, N = 64, C = 16, W = 2, D = 16, R = 2."""
    from torch.utils.flop_counter import FlopCounterMode

    from impls.lsh import hash_buckets

    gen = torch.Generator().manual_seed(0)
    qk = torch.randn(1, 2, 64, 16, generator=gen, requires_grad=True)
    v = torch.randn(1, 2, 64, 16, generator=gen, requires_grad=True)
    cfg = LSHConfig(n_buckets=8, n_hashes=2, chunk_len=16)
    buckets = hash_buckets(qk, cfg)
    counts = {}
    for mode in ("forward", "forward_backward"):
        counter = FlopCounterMode(display=False)
        with counter:
            out = get_backend("triton").attend(qk, v, cfg, buckets=buckets)
            if mode == "forward_backward":
                out.sum().backward()
        counts[mode] = counter.get_total_flops()
    return counts


def _interpreter_report() -> dict:
    ok, reason = get_backend("triton").available()
    return {"available": [ok, reason], "exact_regime": _exact_regime_error(), "flops": _counted_flops(),
            "cases": {name: _case_errors(case) for name, case in CASES.items()}}


def _compile_for_sm90() -> dict:
    """Compile forward, Delta and backward kernels for sm_90 in bfloat16 with the launch parameters
    of a 64-slot-chunk, d_head 64, causal, dedup call; returns {kernel: cubin bytes}."""
    from triton import compile as triton_compile
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    import impls.triton_kernels as kernels
    from impls.triton_lsh import BACKWARD_WARPS, _Launch

    qk = torch.empty(4, 1024, 64, dtype=torch.bfloat16)  # (BH, N, D): only shape and dtype are read
    launch = _Launch(qk, n_rounds=4, chunk_len=64, causal=True, dedup=True)
    # Pointer arguments are the upper-case ones; the tensors in the input dtype are named here.
    input_dtype = {"QK", "V", "G", "OUT", "DQK", "DV"}
    int_pointers = {"PERM", "CHUNK_IDS"}

    def signature(fn, constexprs):
        sig = {}
        for name in fn.arg_names:
            if name in constexprs:
                sig[name] = "constexpr"
            elif name.isupper():
                sig[name] = "*bf16" if name in input_dtype else "*i32" if name in int_pointers else "*fp32"
            else:
                sig[name] = "fp32" if name.endswith("_value") else "i32"
        return sig

    target = GPUTarget("cuda", 90, 32)
    delta_constexprs = {"HEAD_DIM": 64, "BLOCK_N": 64, "BLOCK_D": 64}
    builds = {}
    for fn, constexprs, warps in ((kernels.lsh_forward_round, launch.constexprs, launch.forward_warps),
                                  (kernels.output_grad_dot, delta_constexprs, 4),
                                  (kernels.lsh_backward_round, launch.constexprs, BACKWARD_WARPS)):
        src = ASTSource(fn, signature(fn, constexprs), constexprs=constexprs)
        kernel = triton_compile(src, target=target, options={"num_warps": warps})
        builds[fn.__name__] = len(kernel.asm["cubin"])
    return builds


@pytest.fixture(scope="module")
def reports() -> dict:
    """{mode: JSON report} of this file run as a script in both modes, the two side by side."""
    pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[triton]')")
    procs = {}
    for mode, interpret in (("interpret", "1"), ("compile-sm90", "0")):
        env = dict(os.environ, TRITON_INTERPRET=interpret)
        procs[mode] = subprocess.Popen([sys.executable, __file__, mode], cwd=REPO, env=env, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    results = {}
    for mode, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{mode} run failed:\n{stderr[-4000:]}"
        results[mode] = json.loads(stdout.strip().splitlines()[-1])
    return results


@pytest.fixture(scope="module")
def interpreted(reports) -> dict:
    return reports["interpret"]


def test_kernels_compile_for_sm90_in_bfloat16(reports):
    builds = reports["compile-sm90"]
    assert set(builds) == {"lsh_forward_round", "output_grad_dot", "lsh_backward_round"}
    assert all(size > 0 for size in builds.values()), builds


def test_available_under_interpreter(interpreted):
    ok, reason = interpreted["available"]
    assert ok and "TRITON_INTERPRET=1" in reason


def test_exact_regime_equals_dense(interpreted):
    assert interpreted["exact_regime"] < FP32_TOL


def test_flop_counter_counts_the_kernels(interpreted):
    window_matmul = 2 * 2 * 64 * (2 * 16) * 16 * 2  # 2 * BH * N * (W * C) * D * R
    # Forward: QK^T and PV. Backward as run: S and dP recomputed in both passes, dk, dv, dq.
    assert interpreted["flops"] == {"forward": 2 * window_matmul, "forward_backward": 9 * window_matmul}


@pytest.mark.parametrize("name", list(CASES))
def test_triton_matches_eager(interpreted, name):
    errors = interpreted["cases"][name]
    if CASES[name].get("dtype") == "float16":
        # The rounding order differs from eager's (fp32 within a round, fp16 between rounds), so
        # the bound is twice eager's own float16 error, not equality.
        bound = [2 * e for e in errors["eager"]]
        assert all(t <= b for t, b in zip(errors["triton"], bound)), (errors, bound)
    else:
        assert max(errors["triton"]) < FP32_TOL, errors


# In-process checks: input validation happens before any kernel is built.

def _cfg():
    return LSHConfig(n_buckets=4, n_hashes=2, chunk_len=16)


def test_rejects_float64():
    qk = torch.randn(1, 1, 32, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="qk.dtype=torch.float64"):
        get_backend("triton").attend(qk, qk, _cfg())


def test_rejects_cpu_tensors_without_interpreter(monkeypatch):
    from impls import triton_lsh

    monkeypatch.setattr(triton_lsh, "_interpreted", lambda: False)
    qk = torch.randn(1, 1, 32, 16)
    with pytest.raises(ValueError, match="qk.device=cpu"):
        get_backend("triton").attend(qk, qk, _cfg())


def test_rejects_bfloat16_under_interpreter(monkeypatch):
    from impls import triton_lsh

    monkeypatch.setattr(triton_lsh, "_interpreted", lambda: True)
    qk = torch.randn(1, 1, 32, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="bfloat16"):
        get_backend("triton").attend(qk, qk, _cfg())


def test_rejects_buckets_of_wrong_shape(monkeypatch):
    from impls import triton_lsh

    monkeypatch.setattr(triton_lsh, "_interpreted", lambda: True)
    qk = torch.randn(1, 1, 32, 16)
    buckets = torch.zeros(1, 1, 3, 32, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"buckets.shape=\(1, 1, 3, 32\)"):
        get_backend("triton").attend(qk, qk, _cfg(), buckets=buckets)


def test_unavailable_reason_without_cuda_or_interpreter(monkeypatch):
    from impls import triton_lsh

    monkeypatch.setattr(triton_lsh, "_interpreted", lambda: False)
    ok, reason = get_backend("triton").available()
    if torch.cuda.is_available():
        assert ok
    else:
        assert not ok and "no CUDA device" in reason and "TRITON_INTERPRET=1" in reason


def test_unavailable_reason_without_triton(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` raise ImportError
    monkeypatch.delitem(sys.modules, "impls.triton_kernels", raising=False)
    ok, reason = get_backend("triton").available()
    assert not ok and "needs triton" in reason
    with pytest.raises(RuntimeError, match="needs triton"):
        get_backend("triton").attend(torch.randn(1, 1, 32, 16), torch.randn(1, 1, 32, 16), _cfg())


if __name__ == "__main__":
    print(json.dumps(_interpreter_report() if sys.argv[1] == "interpret" else _compile_for_sm90()))
