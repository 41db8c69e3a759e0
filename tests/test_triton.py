"""The triton backend computes the eager backend's function: outputs and gradients, under the Triton
interpreter on CPU, and compiles for an H100/H200 (sm_90) without a GPU.

Triton reads TRITON_INTERPRET when it decorates the kernels, i.e. at the first import of
impls.triton_kernels, and another test of this pytest process may have imported it already. So the
comparisons run in one subprocess (this file run as a script, with TRITON_INTERPRET=1) that prints
one JSON line of results; each test below asserts on one of them. Sizes are tiny because the
interpreter runs every program in numpy. Besides the comparisons, that subprocess checks what the
interpreter would otherwise hide: the custom ops' fake implementations (torch.library.opcheck), that
the order in which programs run does not matter (no program reads what another one of the same
launch writes), that every output element is written, and that positions multiplying strides are
int64.

The interpreter cannot run bfloat16 dots and never compiles, so two more subprocesses (without the
interpreter) run real fwd + bwd calls of every kernel variant a suite can ask for through Triton's
own JIT with a stand-in sm_90 driver: Triton specialises the arguments and compiles as for a launch on
the device, and the launch itself is skipped. Its kernel cache tells how many kernels a call
compiles; ptxas's report gives registers, spills and shared memory per variant.
"""
from __future__ import annotations

import builtins
import contextlib
import io
import json
import os
import random
import re
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
    # Two programs per chunk (fp32 tiles of 32 slots), the second one half padding; d_head padded.
    "n96-c48-d20-r2-causal-dedup": _case(96, 48, 2, causal=True, dedup=True, d_head=20),
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
    """Output, d qk and d v of one backend, in float32 (each distinct run computed once)."""
    key = (backend, json.dumps(case, sort_keys=True), dtype)
    if key not in _RUNS:
        _RUNS[key] = _run_once(backend, case, dtype)
    return _RUNS[key]


_RUNS: dict = {}


def _run_once(backend: str, case: dict, dtype: torch.dtype) -> list[torch.Tensor]:
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
    """Two chunks cover the sequence, so LSH attention must equal dense attention (docs/DESIGN.md)."""
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


# Cases rerun with the programs of every launch in another order and with every output allocated as
# NaN: several rounds with dedup, several programs per chunk, padded tiles; half precision.
ORDER_CASES = ("n96-c48-d20-r2-causal-dedup", "fp16-n64-c32-r2")


def _dtype_of(case: dict) -> torch.dtype:
    return torch.float16 if case.get("dtype") == "float16" else torch.float32


def _bitwise_same(got: list[torch.Tensor], want: list[torch.Tensor]) -> list[bool]:
    return [torch.equal(g, w) for g, w in zip(got, want)]


@contextlib.contextmanager
def _grid_order(order: str):
    """The interpreter runs the programs of each launch in `order` ("reversed" or "shuffled") instead
    of in grid order. It loops over the grid with `range` in GridExecutor.__call__ (Triton 3.x); the
    module's `range` is replaced by one that reorders for that frame only. Yields the sizes of the grid
    loops it reordered, so that a test sees the patch take effect."""
    from triton.runtime import interpreter

    grid_loop = interpreter.GridExecutor.__call__.__code__
    rng = random.Random(0)
    reordered = []

    def grid_range(*args):
        values = list(builtins.range(*args))
        if sys._getframe(1).f_code is grid_loop:
            reordered.append(len(values))
            if order == "reversed":
                values.reverse()
            else:
                rng.shuffle(values)
        return values

    saved = vars(interpreter).get("range")
    interpreter.range = grid_range
    try:
        yield reordered
    finally:
        if saved is None:
            del interpreter.range
        else:
            interpreter.range = saved


def _grid_order_report() -> dict:
    """{order: whether output, d qk, d v of each ORDER_CASES case equal the in-grid-order run bitwise}.
    A program that read what another program of the same launch writes would see other values."""
    want = {name: _run("triton", CASES[name], _dtype_of(CASES[name])) for name in ORDER_CASES}
    report = {}
    for order in ("reversed", "shuffled"):
        with _grid_order(order) as reordered:
            same = {name: _bitwise_same(_run_once("triton", CASES[name], _dtype_of(CASES[name])), want[name])
                    for name in ORDER_CASES}
        report[order] = {"cases": same, "reordered_loops": len(reordered)}
    return report


def _nan_allocation_report() -> dict:
    """Every tensor the triton ops allocate for a kernel to write (outputs, row statistics, Delta,
    gradients) starts as NaN: results must still equal the normal run bitwise, so every element is
    written before it is read or returned."""
    from impls import triton_lsh

    real_empty = triton_lsh._empty
    allocated = []

    def nan_empty(shape, dtype, device):
        allocated.append(list(shape))
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    want = {name: _run("triton", CASES[name], _dtype_of(CASES[name])) for name in ORDER_CASES}
    triton_lsh._empty = nan_empty
    try:
        same = {name: _bitwise_same(_run_once("triton", CASES[name], _dtype_of(CASES[name])), want[name])
                for name in ORDER_CASES}
    finally:
        triton_lsh._empty = real_empty
    return {"cases": same, "allocations": len(allocated)}


def _position_dtypes() -> list[str]:
    """dtypes of the row positions that _load_rows multiplies by a row stride, over all kernels of
    one fwd + bwd call (int32 would overflow at pos * stride >= 2^31)."""
    import impls.triton_kernels as kernels

    real_load_rows = kernels._load_rows
    seen = set()

    def recording(base, pos, *rest):
        seen.add(str(pos.dtype))
        return real_load_rows(base, pos, *rest)

    kernels._load_rows = recording
    try:
        _run_once("triton", CASES["n64-c16-r2-strided-sum"], torch.float32)
    finally:
        kernels._load_rows = real_load_rows
    return sorted(seen)


def _op_inputs(layout: str, rows: int = 2, seq: int = 16, d_head: int = 16, rounds: int = 2, chunk_len: int = 8):
    """Arguments of the custom ops as lsh_attention passes them: (BH, N, D) tensors, contiguous or
    sequence-major ("strided", as a model's head split gives), and a random permutation per round."""
    gen = torch.Generator().manual_seed(0)

    def rows_tensor():
        if layout == "strided":
            return torch.randn(seq, rows, d_head, generator=gen).transpose(0, 1)
        return torch.randn(rows, seq, d_head, generator=gen)

    qk, v, grad = rows_tensor(), rows_tensor(), rows_tensor()
    perm = torch.stack([torch.randperm(seq, generator=gen) for _ in range(rows * rounds)]).view(rows, rounds, seq)
    rank = torch.empty_like(perm).scatter_(-1, perm, torch.arange(seq).expand_as(perm).contiguous())
    return qk, v, grad, perm.to(torch.int32), (rank // chunk_len).to(torch.int32), chunk_len


def _opcheck_report() -> dict:
    """torch.library.opcheck of both ops on contiguous and strided inputs: schema, autograd
    registration, the fake implementation against the real outputs' shapes and strides, and for the
    forward AOT dispatch (which runs the backward op through the autograd formula too)."""
    from torch.library import opcheck

    import impls.triton_lsh  # noqa: F401  (registers the ops)

    ops = torch.ops.reformer_bench
    report = {}
    for layout in ("contiguous", "strided"):
        qk, v, grad, perm, chunk_ids, chunk_len = _op_inputs(layout)
        options = (chunk_len, True, True)  # causal, dedup: every argument in use
        out, row_max, row_logsum = ops.lsh_attention_forward(qk, v, perm, chunk_ids, *options)
        checks = {
            "forward": (ops.lsh_attention_forward,
                        (qk.detach().requires_grad_(), v.detach().requires_grad_(), perm, chunk_ids, *options)),
            "backward": (ops.lsh_attention_backward,
                         (grad, qk, v, out, row_max, row_logsum, perm, chunk_ids, *options)),
        }
        for name, (op, args) in checks.items():
            utils = ("test_schema", "test_autograd_registration", "test_faketensor") + (
                ("test_aot_dispatch_dynamic",) if name == "forward" else ())
            try:
                opcheck(op, args, test_utils=utils)
                report[f"{name}-{layout}"] = "ok"
            except Exception as exc:  # reported, and asserted on, by the test of that check
                report[f"{name}-{layout}"] = f"{type(exc).__name__}: {exc}"[:1000]
    return report


def _interpreter_report() -> dict:
    ok, reason = get_backend("triton").available()
    return {"available": [ok, reason], "exact_regime": _exact_regime_error(), "flops": _counted_flops(),
            "cases": {name: _case_errors(case) for name, case in CASES.items()},
            "opcheck": _opcheck_report(), "grid_order": _grid_order_report(),
            "nan_allocation": _nan_allocation_report(), "position_dtypes": _position_dtypes()}


# --- compiling for sm_90 without a GPU ---------------------------------------------------------

# Every kernel variant a suite can ask for: d_head 64 and chunk_len 64 (the CUDA suites), causal or
# not, dedup or not, each dtype, several rounds and one (which must reuse the kernels of several);
# and the model's layout (heads split from a sequence-major projection, a sequence-major gradient),
# which must reuse the contiguous kernels.
VARIANTS = [{"dtype": dtype, "causal": causal, "dedup": dedup, "rounds": rounds, "layout": "contiguous"}
            for dtype in ("float32", "float16", "bfloat16") for causal in (False, True)
            for dedup in (False, True) for rounds in (4, 1)]
MODEL_LAYOUT = {"dtype": "float32", "causal": True, "dedup": False, "rounds": 4, "layout": "model"}
KERNELS = ("lsh_forward_round", "output_grad_dot", "lsh_backward_round")
SM90_MAX_SHARED = 232448  # bytes of shared memory one block may use on sm_90 (227 KiB)
COMPILE_PARTS = 2  # compiling subprocesses; the interpreter's is a third


def _compile_share(part: int) -> list[dict]:
    """Variants compiled by subprocess `part`: split by causal; the model layout goes with its
    contiguous twin (causal), after it."""
    share = [variant for variant in VARIANTS if int(variant["causal"]) == part]
    return share + [MODEL_LAYOUT] if MODEL_LAYOUT["causal"] == bool(part) else share


class _SM90Driver:
    """What JITFunction.run asks of the active driver before it launches (Triton 3.x), answered for an
    sm_90 device that is not here: the target, a device index and a stream."""

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device) -> int:
        return 0


class _CompileOnly:
    """Stands in for a kernel in impls.triton_kernels: `kernel[grid](...)` goes through Triton's JIT
    (argument specialisation, kernel cache, compilation) with warmup=True, which skips the launch.
    Counts launches and keeps what ptxas printed for each kernel it compiled."""

    def __init__(self, fn):
        self.fn = fn
        self.launches = 0
        self.captured = {}

    def cache(self) -> dict:
        """Triton's kernel cache for device 0: specialisation key -> CompiledKernel."""
        return self.fn.device_caches[0][0]

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches += 1
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                kernel = self.fn.run(*args, grid=grid, warmup=True, **kwargs)
            self.captured.setdefault(kernel.hash, printed.getvalue())
        return launch


def _ptxas_log(kernel, captured: str) -> str:
    """ptxas's report for `kernel`: as printed when Triton ran ptxas just now; else the copy kept
    beside Triton's cache entry the time it did; else ptxas run again on the PTX with Triton's flags."""
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    from triton.runtime.cache import get_cache_manager

    store = get_cache_manager(kernel.hash)
    if "registers" not in captured:
        kept = store.get_file("ptxas.log")
        if kept is not None:
            return Path(kept).read_text()
        with tempfile.TemporaryDirectory() as tmp:
            ptx = Path(tmp, "kernel.ptx")
            ptx.write_text(kernel.asm["ptx"])
            captured = subprocess.run(
                [get_ptxas(90).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
                 f"--gpu-name={sm_arch_from_capability(90)}", str(ptx), "-o", str(Path(tmp, "kernel.o"))],
                capture_output=True, text=True, check=True).stderr
    store.put(captured, "ptxas.log", binary=False)
    return captured


def _figures(kernel, log: str) -> dict:
    registers = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return {"registers": int(registers.group(1)) if registers else None,
            "spill_stores": int(spills.group(1)) if spills else None,
            "spill_loads": int(spills.group(2)) if spills else None,
            "shared": kernel.metadata.shared, "num_warps": kernel.metadata.num_warps,
            "cubin_bytes": len(kernel.asm["cubin"])}


def _variant_call(variant: dict) -> None:
    """One fwd + bwd call of the triton backend in this variant (d_head 64, chunk_len 64, 4 chunks)."""
    from impls.triton_lsh import lsh_attention

    dtype = getattr(torch, variant["dtype"])
    gen = torch.Generator().manual_seed(0)

    def tensor():
        if variant["layout"] == "model":  # (batch, seq, heads, d) storage seen as (batch, heads, seq, d)
            return torch.randn(1, 256, 2, 64, generator=gen).transpose(1, 2).to(dtype)
        return torch.randn(1, 2, 256, 64, generator=gen).to(dtype)

    qk, v, grad = tensor().detach().requires_grad_(), tensor().detach().requires_grad_(), tensor()
    cfg = LSHConfig(n_buckets=8, n_hashes=variant["rounds"], chunk_len=64, causal=variant["causal"],
                    dedup=variant["dedup"])
    lsh_attention(qk, v, cfg).backward(grad)


def _compile_report(part: int) -> list[dict]:
    """For each variant of this part: per kernel, its launches in one fwd + bwd call and the kernels
    that call compiled (with ptxas's figures); launches run nothing, so outputs are never read."""
    from triton import knobs
    from triton.runtime.driver import driver

    import impls.triton_kernels as kernels
    from impls import triton_lsh

    driver.set_active(_SM90Driver())
    knobs.nvidia.dump_ptxas_log = True  # Triton prints ptxas's report when it compiles
    stand_ins = {name: _CompileOnly(getattr(kernels, name)) for name in KERNELS}
    for name, stand_in in stand_ins.items():
        setattr(kernels, name, stand_in)
    triton_lsh._check_triton_inputs = lambda *args: None  # CPU tensors, kernels never launched
    report = []
    for variant in _compile_share(part):
        before = {name: (stand_in.launches, len(stand_in.cache())) for name, stand_in in stand_ins.items()}
        _variant_call(variant)
        row = {"variant": variant, "part": part, "kernels": {}}
        for name, stand_in in stand_ins.items():
            new = list(stand_in.cache().values())[before[name][1]:]
            row["kernels"][name] = {
                "launches": stand_in.launches - before[name][0],
                "compiled": [_figures(k, _ptxas_log(k, stand_in.captured.get(k.hash, ""))) for k in new]}
        report.append(row)
    return report


@pytest.fixture(scope="module")
def reports() -> dict:
    """{"interpret": JSON report, "compile-sm90": rows of every compiled variant} of this file run as a
    script: one interpreter subprocess and COMPILE_PARTS compiling ones, side by side."""
    pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[triton]')")
    runs = [("interpret", "1", [])] + [("compile-sm90", "0", [str(part)]) for part in range(COMPILE_PARTS)]
    procs = []
    for mode, interpret, extra in runs:
        env = dict(os.environ, TRITON_INTERPRET=interpret)
        procs.append((mode, subprocess.Popen([sys.executable, __file__, mode, *extra], cwd=REPO, env=env, text=True,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
    results = {"compile-sm90": []}
    for mode, proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{mode} run failed:\n{stderr[-4000:]}"
        result = json.loads(stdout.strip().splitlines()[-1])
        if mode == "interpret":
            results[mode] = result
        else:
            results[mode] += result
    return results


@pytest.fixture(scope="module")
def interpreted(reports) -> dict:
    return reports["interpret"]


@pytest.fixture(scope="module")
def compiled(reports) -> list[dict]:
    return reports["compile-sm90"]


def _contiguous_rows(compiled: list[dict]) -> list[dict]:
    return [row for row in compiled if row["variant"]["layout"] == "contiguous"]


def _kernel_variant(row: dict) -> tuple:
    """What selects a round kernel: dtype, causal, dedup (not the number of rounds)."""
    return row["variant"]["dtype"], row["variant"]["causal"], row["variant"]["dedup"]


@pytest.mark.slow
def test_every_variant_compiles_for_sm90(compiled):
    assert sorted(json.dumps(row["variant"], sort_keys=True) for row in compiled) == sorted(
        json.dumps(variant, sort_keys=True) for variant in VARIANTS + [MODEL_LAYOUT])
    cubins = {}
    for row in _contiguous_rows(compiled):
        for name in ("lsh_forward_round", "lsh_backward_round"):
            for k in row["kernels"][name]["compiled"]:
                cubins.setdefault((name, *_kernel_variant(row)), []).append(k["cubin_bytes"])
    assert len(cubins) == 2 * 3 * 2 * 2  # forward / backward x dtype x causal x dedup
    assert all(len(sizes) == 1 and sizes[0] > 0 for sizes in cubins.values()), cubins


@pytest.mark.slow  # the reports fixture compiles every variant in subprocesses
def test_a_call_compiles_one_forward_and_one_backward_kernel_for_all_its_rounds(compiled):
    """Triton's kernel cache after a call of 4 rounds: 4 launches of each round kernel, one kernel each
    (a specialised round index compiled three: round 0, round 1 and the rest); a call of 1 round
    next compiles nothing (a specialised n_rounds compiled one more)."""
    for row in _contiguous_rows(compiled):
        counts = {name: (k["launches"], len(k["compiled"])) for name, k in row["kernels"].items()}
        rounds = row["variant"]["rounds"]
        new = 1 if rounds > 1 else 0
        assert counts["lsh_forward_round"] == (rounds, new), row["variant"]
        assert counts["lsh_backward_round"] == (rounds, new), row["variant"]
        assert counts["output_grad_dot"][0] == 1


@pytest.mark.slow  # the reports fixture compiles every variant in subprocesses
def test_output_grad_dot_compiles_once_per_dtype(compiled):
    """Delta does not depend on causal, dedup or rounds: one kernel per dtype in each subprocess."""
    counts = {}
    for row in compiled:
        key = (row["part"], row["variant"]["dtype"])
        counts[key] = counts.get(key, 0) + len(row["kernels"]["output_grad_dot"]["compiled"])
    assert set(counts.values()) == {1}, counts


@pytest.mark.slow  # the reports fixture compiles every variant in subprocesses
def test_the_model_layout_reuses_the_contiguous_kernels(compiled):
    """Heads split from a sequence-major projection and a sequence-major gradient (d_head 64):
    strides of the same divisibility as the contiguous layout's, so nothing new is compiled."""
    (row,) = [row for row in compiled if row["variant"]["layout"] == "model"]
    assert row["kernels"]["lsh_forward_round"]["launches"] == MODEL_LAYOUT["rounds"]
    assert {name: k["compiled"] for name, k in row["kernels"].items()} == {name: [] for name in KERNELS}


@pytest.mark.slow  # the reports fixture compiles every variant in subprocesses
def test_sm90_registers_spills_and_shared_memory_are_reported_and_fit(compiled):
    kernels = [(row["variant"], name, k) for row in compiled for name, entry in row["kernels"].items()
               for k in entry["compiled"]]
    assert len(kernels) == 2 * 3 * 2 * 2 + 3 * COMPILE_PARTS  # round kernels + Delta per dtype and part
    for variant, name, k in kernels:
        assert k["registers"] is not None and 0 < k["registers"] <= 255, (variant, name, k)
        assert k["spill_stores"] is not None and k["spill_loads"] is not None, (variant, name, k)
        assert 0 <= k["shared"] <= SM90_MAX_SHARED, (variant, name, k)


@pytest.mark.parametrize("check", ["forward-contiguous", "forward-strided", "backward-contiguous",
                                   "backward-strided"])
@pytest.mark.slow  # the reports fixture compiles every variant in subprocesses
def test_custom_op_passes_opcheck(interpreted, check):
    assert interpreted["opcheck"][check] == "ok"


@pytest.mark.slow  # the reports fixture compiles every variant in subprocesses
@pytest.mark.parametrize("order", ["reversed", "shuffled"])
def test_program_order_does_not_change_results(interpreted, order):
    report = interpreted["grid_order"][order]
    assert report["reordered_loops"] > 0
    assert report["cases"] == {name: [True, True, True] for name in ORDER_CASES}


@pytest.mark.slow  # the reports fixture compiles every variant in subprocesses
def test_every_output_element_is_written(interpreted):
    report = interpreted["nan_allocation"]
    assert report["allocations"] >= 6 * len(ORDER_CASES)  # output, max, log sum, Delta, d qk, d v
    assert report["cases"] == {name: [True, True, True] for name in ORDER_CASES}


@pytest.mark.slow  # the reports fixture compiles every variant in subprocesses
def test_positions_that_multiply_strides_are_int64(interpreted):
    assert interpreted["position_dtypes"] == ["int64"]


@pytest.mark.slow  # the reports fixture compiles every variant in subprocesses
def test_available_under_interpreter(interpreted):
    ok, reason = interpreted["available"]
    assert ok and "TRITON_INTERPRET=1" in reason


@pytest.mark.slow  # the reports fixture compiles every variant in subprocesses
def test_exact_regime_equals_dense(interpreted):
    assert interpreted["exact_regime"] < FP32_TOL


@pytest.mark.slow  # the reports fixture compiles every variant in subprocesses
def test_flop_counter_counts_the_kernels(interpreted):
    window_matmul = 2 * 2 * 64 * (2 * 16) * 16 * 2  # 2 * BH * N * (W * C) * D * R
    # Forward: QK^T and PV. Backward as run: S and dP recomputed in both passes, dk, dv, dq.
    assert interpreted["flops"] == {"forward": 2 * window_matmul, "forward_backward": 9 * window_matmul}


@pytest.mark.slow  # the reports fixture compiles every variant in subprocesses
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
    print(json.dumps(_interpreter_report() if sys.argv[1] == "interpret" else _compile_report(int(sys.argv[2]))))
