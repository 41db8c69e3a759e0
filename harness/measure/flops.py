"""FLOPs of one case: the analytic count of the algorithm and the matmul FLOPs torch counts.

Conventions: one multiply-add = 2 FLOPs; only matmuls are counted (softmax, masks, sorting and
gathers are left out, as FlopCounterMode leaves them out). B batch, H heads, N seq_len, D d_head,
R n_hashes, C chunk_len, W window chunks (2: own and previous; 1 when a round is a single chunk).

LSH attention, forward:
    hashing      2 * B*H*N*D * R*(n_buckets/2)       (x @ rotations; no gradient flows through it)
    QK^T         2 * B*H*N*(W*C)*D  per round         (each query against its W*C window keys)
    PV           2 * B*H*N*(W*C)*D  per round
    total        2*B*H*N*D*R*(n_buckets/2) + 4*B*H*N*W*C*D*R
Dense shared-QK attention (dense, sdpa), forward: QK^T + PV = 4*B*H*N^2*D (the full matrix, causal
or not: that is what the kernels compute).
forward_backward: the backward of a matmul is two matmuls of the same size, so attention counts
3x its forward; hashing is not differentiated. The eager LSH backward also recomputes QK^T
(flash-attention style), which FlopCounterMode sees and the analytic count, being the algorithm's
cost, does not: counted = analytic + 2*B*H*N*W*C*D*R there.
Buckets hashed once before timing (a workload whose calls do not hash): no hashing term.
layer and model workloads: no analytic count (projections, feed-forward and heads depend on the
implementation); flops_counted covers them.
"""
from __future__ import annotations

from collections.abc import Callable


def lsh_attention_flops(batch: int, heads: int, seq_len: int, d_head: int, n_buckets: int, n_hashes: int,
                        chunk_len: int, backward: bool = False, hashing: bool = True) -> int:
    """Analytic matmul FLOPs of LSH attention (module docstring formulas); hashing=False leaves out the
    projection onto the rotations (buckets replayed: the call hashes nothing)."""
    n_chunks = seq_len // chunk_len
    window = 1 if n_chunks == 1 else 2
    rows = batch * heads * seq_len
    projection = 2 * rows * d_head * n_hashes * (n_buckets // 2) if hashing else 0
    attention = 4 * rows * window * chunk_len * d_head * n_hashes
    return projection + (3 if backward else 1) * attention


def dense_attention_flops(batch: int, heads: int, seq_len: int, d_head: int, backward: bool = False) -> int:
    """Analytic matmul FLOPs of full attention: 4*B*H*N^2*D forward, 3x that with the backward."""
    forward = 4 * batch * heads * seq_len * seq_len * d_head
    return (3 if backward else 1) * forward


def analytic_flops(case, n_buckets: int | None = None, hashing: bool = True) -> int | None:
    """The analytic count for a harness.suite.Case, or None where there is none (layer and model
    workloads).

    n_buckets: the bucket count the backend really hashes into, where it differs from the case's
    (reformer-pytorch always uses seq / chunk_len). hashing: whether the call hashes (False where the
    workload hashed once before timing)."""
    if case.workload != "attention":
        return None
    backward = case.mode == "forward_backward"
    if case.backend_kind == "dense":
        return dense_attention_flops(case.batch, case.heads, case.seq_len, case.d_head, backward)
    return lsh_attention_flops(case.batch, case.heads, case.seq_len, case.d_head, n_buckets or case.n_buckets,
                               case.n_hashes, case.chunk_len, backward, hashing=hashing)


def counted_flops(fn: Callable[[], object]) -> int:
    """Matmul FLOPs torch.utils.flop_counter.FlopCounterMode counts while fn() runs (untimed)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    if hasattr(counter, "mod_tracker"):
        # Only the total is needed. The per-module tracker hooks every nn.Module's backward, and
        # those hooks fail inside torch.autograd.grad (the reversible model's backward uses it).
        counter.mod_tracker = _GlobalOnly()
    with counter:
        fn()
    return int(counter.get_total_flops())


class _GlobalOnly:
    """Stands in for FlopCounterMode's ModuleTracker: every FLOP is attributed to "Global"."""

    parents = frozenset({"Global"})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None
