"""`triton` backend: the contract's LSH attention with fused Triton kernels (impls.triton_kernels).

Hashing and sorting are the shared torch code of impls.lsh, so for one seed this backend sees the
same buckets as `eager`. The kernels gather rows through the sort permutation, normalise keys from
the queries in-kernel, never store a score tensor, and fold the hash rounds into one running output
(see triton_kernels' docstring for the formulas). Forward and backward are torch.library custom
ops (reformer_bench::lsh_attention_forward / _backward) with autograd, fake (meta) implementations
and FLOP formulas, so torch.compile and FlopCounterMode see them. Saved for backward: qk, v, the
output, the combined log-sum-exp over rounds as (row max, log sum) (2 x fp32 (BH, N)) and the
int32 permutation (plus int32 chunk ids with dedup).

Memory beyond inputs, output and gradients (B*H rows of N tokens, R rounds), kept for backward:
4 B H N R bytes of int32 permutation (twice that with dedup) and 8 B H N bytes of log-sum-exp, plus
4 B H N bytes of Delta in the backward; the rounds are summed in the output and gradient tensors
themselves (see triton_kernels). Nothing grows with the chunk length or with N^2.

This module imports triton only inside available() and attend(), so `reformer-bench list` works
where triton is missing. On a machine without CUDA the kernels run under the Triton interpreter
when TRITON_INTERPRET=1 was set before the kernels were first imported.
"""
from __future__ import annotations

import os
import sys

import torch
from torch.utils.flop_counter import register_flop_formula

from .config import LSHConfig
from .lsh import check_inputs, mask_values, sorted_order, window_chunks
from .phases import phase

SUPPORTED = (torch.float32, torch.float16, torch.bfloat16)
_KERNELS = f"{__package__}.triton_kernels"
# Launch shapes for sm_90, chosen from ptxas register/spill reports of the AOT-compiled kernels
# (d_head 64; tests/test_triton.py collects them for every variant): slots per program (BLOCK_M) =
# keys per inner step (BLOCK_N) at most 64 for half precision (tensor-core dots) and 32 for fp32
# (IEEE fp32 dots run on the FMA units and hold more registers). Some backward variants still spill
# (fp32 without dedup, half precision with dedup); a choice to be measured on the device.
MAX_BLOCK = {torch.float16: 64, torch.bfloat16: 64, torch.float32: 32}
FORWARD_WARPS = {torch.float16: 4, torch.bfloat16: 4, torch.float32: 8}
BACKWARD_WARPS = 8


def _interpreted() -> bool:
    """Whether the kernels run (or, once imported, will run) under the Triton interpreter."""
    kernels = sys.modules.get(_KERNELS)
    if kernels is not None:
        return kernels.INTERPRETED
    try:
        import triton
    except ImportError as exc:
        raise RuntimeError(f"the triton backend needs triton ({exc}); "
                           "pip install 'reformer-bench[triton]'") from exc
    knobs = getattr(triton, "knobs", None)  # Triton >= 3.4; older releases read the environment
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _pow2_at_least_16(n: int) -> int:
    # tl.dot needs every block dimension >= 16 and a power of two.
    return max(16, 1 << (n - 1).bit_length())


class _Launch:
    """Kernel parameters of one call, shared by forward and backward."""

    def __init__(self, qk: torch.Tensor, n_rounds: int, chunk_len: int, causal: bool, dedup: bool):
        bh_rows, self.seq_len, self.head_dim = qk.shape
        self.n_rounds = n_rounds
        self.n_chunks = self.seq_len // chunk_len
        self.block_m = self.block_n = min(_pow2_at_least_16(chunk_len), MAX_BLOCK[qk.dtype])
        self.block_d = _pow2_at_least_16(self.head_dim)
        self.grid = (self.n_chunks * -(-chunk_len // self.block_m), bh_rows)
        self.self_value, self.causal_value = mask_values(qk.dtype)
        self.constexprs = {
            "HEAD_DIM": self.head_dim, "CHUNK": chunk_len, "BLOCK_M": self.block_m,
            "BLOCK_N": self.block_n, "BLOCK_D": self.block_d, "WINDOW": window_chunks(self.n_chunks),
            "CAUSAL": causal, "DEDUP": dedup,
            # fp32 inputs: true fp32 products (eager's torch.matmul), not TF32.
            "DOT_PRECISION": "ieee" if qk.dtype == torch.float32 else "tf32",
        }
        self.forward_warps = FORWARD_WARPS[qk.dtype]


def _empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every tensor a kernel writes: contiguous, as the kernels index them. Real and fake
    implementations allocate through here, so the fakes report the kernels' strides, and a test can
    fill every allocation with NaN to see that each element is written."""
    return torch.empty(shape, dtype=dtype, device=device)


def _forward_outputs(qk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(output, row max, row log sum) of lsh_attention_forward."""
    row_shape = qk.shape[:2]
    return (_empty(qk.shape, qk.dtype, qk.device), _empty(row_shape, torch.float32, qk.device),
            _empty(row_shape, torch.float32, qk.device))


def _backward_outputs(qk: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d qk, d v) of lsh_attention_backward."""
    return _empty(qk.shape, qk.dtype, qk.device), _empty(v.shape, v.dtype, v.device)


# The kernels are wrapped as torch.library custom ops, so that torch.compile treats them as one
# opaque op each (no graph break) and FlopCounterMode counts them (formulas below).

@torch.library.custom_op("reformer_bench::lsh_attention_forward", mutates_args=())
def lsh_attention_forward(qk: torch.Tensor, v: torch.Tensor, perm: torch.Tensor,
                          chunk_ids: torch.Tensor | None, chunk_len: int, causal: bool,
                          dedup: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(qk, v) as (BH, N, D), perm (BH, R, N) int32, chunk ids (BH, R, N) int32 (dedup) or None ->
    output (BH, N, D) and the combined log-sum-exp as row max and log sum (fp32 (BH, N) each)."""
    from . import triton_kernels as kernels

    launch = _Launch(qk, perm.shape[1], chunk_len, causal, dedup)
    out, row_max, row_logsum = _forward_outputs(qk)
    ids = perm if chunk_ids is None else chunk_ids  # never read without dedup
    # One kernel per round gathers, attends and folds the round into the output: no phase of its own
    # for gathering or combining.
    with phase("lsh.attend"):
        for r in range(launch.n_rounds):
            kernels.lsh_forward_round[launch.grid](
                qk, v, perm, ids, out, row_max, row_logsum, *qk.stride(), *v.stride(),
                r, launch.seq_len, launch.n_rounds, launch.n_chunks,
                launch.self_value, launch.causal_value, **launch.constexprs, num_warps=launch.forward_warps)
    return out, row_max, row_logsum


@lsh_attention_forward.register_fake
def _(qk, v, perm, chunk_ids, chunk_len, causal, dedup):
    return _forward_outputs(qk)


@torch.library.custom_op("reformer_bench::lsh_attention_backward", mutates_args=())
def lsh_attention_backward(grad_out: torch.Tensor, qk: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                           row_max: torch.Tensor, row_logsum: torch.Tensor, perm: torch.Tensor,
                           chunk_ids: torch.Tensor | None, chunk_len: int, causal: bool,
                           dedup: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients (d qk, d v) of lsh_attention_forward's output; grad_out may have any strides."""
    from . import triton_kernels as kernels

    launch = _Launch(qk, perm.shape[1], chunk_len, causal, dedup)
    bh_rows, seq_len, _ = qk.shape
    # Strided reads of grad_out: an expanded gradient (e.g. of out.sum()) is never materialised.
    delta = _empty((bh_rows, seq_len), torch.float32, qk.device)
    block_n = 64
    with phase("lsh.backward.prepare"):
        kernels.output_grad_dot[(-(-seq_len // block_n), bh_rows)](
            grad_out, out, delta, *grad_out.stride(), seq_len,
            HEAD_DIM=launch.head_dim, BLOCK_N=block_n, BLOCK_D=launch.block_d)
    dqk, dv = _backward_outputs(qk, v)
    ids = perm if chunk_ids is None else chunk_ids
    with phase("lsh.backward.attend"):
        for r in range(launch.n_rounds):
            kernels.lsh_backward_round[launch.grid](
                qk, v, grad_out, perm, ids, row_max, row_logsum, delta, dqk, dv,
                *qk.stride(), *v.stride(), *grad_out.stride(),
                r, seq_len, launch.n_rounds, launch.n_chunks,
                launch.self_value, launch.causal_value, **launch.constexprs, num_warps=BACKWARD_WARPS)
    return dqk, dv


@lsh_attention_backward.register_fake
def _(grad_out, qk, v, out, row_max, row_logsum, perm, chunk_ids, chunk_len, causal, dedup):
    return _backward_outputs(qk, v)


def _setup_context(ctx, inputs, output) -> None:
    qk, v, perm, chunk_ids, chunk_len, causal, dedup = inputs
    out, row_max, row_logsum = output
    ctx.save_for_backward(qk, v, out, row_max, row_logsum, perm, chunk_ids)
    ctx.options = (chunk_len, causal, dedup)


def _backward(ctx, grad_out, grad_row_max, grad_row_logsum):
    # row_max / row_logsum are internal to this module (never returned by attend): no gradient.
    qk, v, out, row_max, row_logsum, perm, chunk_ids = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dqk, dv = lsh_attention_backward(grad_out, qk, v, out, row_max, row_logsum, perm, chunk_ids, *ctx.options)
    return dqk, dv, None, None, None, None, None


lsh_attention_forward.register_autograd(_backward, setup_context=_setup_context)


def _window_matmul_flops(qk_shape, perm_shape, chunk_len: int) -> int:
    """2 * BH*N*(W*C)*D*R: one (queries x window keys x d_head) matmul over every round."""
    bh_rows, seq_len, d_head = qk_shape
    return 2 * bh_rows * seq_len * window_chunks(seq_len // chunk_len) * chunk_len * d_head * perm_shape[1]


@register_flop_formula(torch.ops.reformer_bench.lsh_attention_forward)
def _forward_flops(qk_shape, v_shape, perm_shape, chunk_ids_shape, chunk_len, causal, dedup, **kwargs) -> int:
    """QK^T and PV: 2 window matmuls."""
    return 2 * _window_matmul_flops(qk_shape, perm_shape, chunk_len)


@register_flop_formula(torch.ops.reformer_bench.lsh_attention_backward)
def _backward_flops(grad_shape, qk_shape, v_shape, out_shape_, row_max_shape, row_logsum_shape, perm_shape,
                    chunk_ids_shape, chunk_len, causal, dedup, **kwargs) -> int:
    """What the kernel runs: the key pass recomputes S and dP and forms dk, dv (4 window matmuls),
    the query pass recomputes S and dP and forms dq (3): 7 window matmuls (the algorithm needs 5)."""
    return 7 * _window_matmul_flops(qk_shape, perm_shape, chunk_len)


def _check_triton_inputs(qk: torch.Tensor, cfg: LSHConfig, buckets: torch.Tensor | None) -> None:
    if qk.dtype not in SUPPORTED:
        raise ValueError(f"the triton backend supports float32, float16 and bfloat16, "
                         f"got qk.dtype={qk.dtype}")
    interpreted = _interpreted()
    if interpreted and qk.dtype == torch.bfloat16:
        # The interpreter's tl.dot multiplies bfloat16's raw uint16 storage (Triton 3.x).
        raise ValueError("qk.dtype=torch.bfloat16 is not supported under the Triton interpreter "
                         "(TRITON_INTERPRET=1); use float32 or float16, or a CUDA device")
    if not interpreted and qk.device.type != "cuda":
        raise ValueError(f"the triton backend needs CUDA tensors, got qk.device={qk.device}; set "
                         "TRITON_INTERPRET=1 before the first import to run it on CPU (slow)")
    batch, heads, seq_len, _ = qk.shape
    expected = (batch, heads, cfg.n_hashes, seq_len)
    if buckets is not None and tuple(buckets.shape) != expected:
        raise ValueError(f"buckets.shape={tuple(buckets.shape)} does not match (batch, heads, n_hashes, "
                         f"seq)={expected}")


def lsh_attention(qk: torch.Tensor, v: torch.Tensor, cfg: LSHConfig,
                  buckets: torch.Tensor | None = None) -> torch.Tensor:
    """The contract's LSH attention; (batch, heads, seq, d_head) -> same shape. Differentiable.

    buckets: optional precomputed hash_buckets(qk, cfg), as in the eager backend.
    """
    check_inputs(qk, v, cfg)
    _check_triton_inputs(qk, cfg, buckets)
    batch, heads, seq_len, d_head = qk.shape
    bh_rows = batch * heads
    order = sorted_order(qk, v, cfg, buckets)
    chunk_len = order.chunk_len
    perm = order.perm.reshape(bh_rows, cfg.n_hashes, seq_len).to(torch.int32)
    chunk_ids = None
    if cfg.dedup:
        chunk_ids = (order.rank // chunk_len).reshape(bh_rows, cfg.n_hashes, seq_len).to(torch.int32)
    del order
    rows = (bh_rows, seq_len, d_head)
    out, _, _ = lsh_attention_forward(qk.reshape(rows), v.reshape(rows), perm, chunk_ids, chunk_len,
                                      cfg.causal, cfg.dedup)
    return out.view(batch, heads, seq_len, d_head)


class TritonBackend:
    name = "triton"

    def available(self) -> tuple[bool, str]:
        try:
            interpreted = _interpreted()
        except RuntimeError as exc:
            return False, str(exc)
        if interpreted:
            return True, "Triton interpreter (TRITON_INTERPRET=1): CPU tensors, slow, no bfloat16"
        if torch.cuda.is_available():
            return True, ""
        return False, ("no CUDA device; set TRITON_INTERPRET=1 before the first import to run the "
                       "kernels on CPU through the Triton interpreter (slow)")

    def attend(self, qk: torch.Tensor, v: torch.Tensor, cfg: LSHConfig,
               buckets: torch.Tensor | None = None) -> torch.Tensor:
        return lsh_attention(qk, v, cfg, buckets=buckets)
