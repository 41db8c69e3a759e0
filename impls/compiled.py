"""`compiled` backend: the contract's LSH attention with its chunked core compiled by torch.compile.

Hashing, sorting and key normalisation are the shared code of impls.lsh, run in plain PyTorch as
in impls.eager, so for one seed both backends see the same buckets. What is compiled (inductor:
C++ on CPU, Triton on GPU) are two block kernels written with gathers, reshapes and batched
matmuls only (no Python loop over chunks, no in-place scatter), so that dynamo traces each into
one graph and inductor fuses the gathers, masks and softmax around the matmuls:

  forward:  gather a block's queries and window keys / values (own chunk, previous chunk) ->
            S = q k^T -> self / causal masks (and -log N_ij with dedup) -> lse = logsumexp_j S ->
            o_r = exp(S - lse) v
  backward: P = exp(S - lse) from the saved lse -> dS = P w (g v^T - g.o) on unmasked entries
            (g = dL/do, w = the round's combining weight) -> dq = dS k, dk = dS^T q,
            dv = P^T (w g), the previous-chunk part of dk / dv shifted onto the chunk it came from

A Python-level autograd.Function walks blocks of rows (one row = one batch x head x round) and,
for long rows, steps of chunks, each with about SCORE_BLOCK_ELEMENTS scores, and combines the
rounds itself (o = sum_r w_r o_r, w = softmax_r lse_r, the contract's formula) so that
its backward needs only lse, w and o. Memory: O(seq * d * n_hashes) plus one block, never
seq x seq.

Sweep safety: the kernels are compiled with dynamic=True and without duck sizing, so seq_len,
chunk_len, n_buckets, n_hashes and block sizes are symbols of one graph; the causal flag is a 0-d
tensor, so causal and non-causal share it too. Blocks avoid sizes of 1, which dynamo specialises.
Only dedup, dtype, the one-chunk case and a lone row (batch x heads x n_hashes = 1 or an odd
count of long rows) pick another graph, each compiled once per process. fullgraph=True turns a
graph break or a hit of dynamo's recompile limit into an exception instead of silently running
Python; the backend then runs the same kernel uncompiled (the result stays right) and records
fell_back=True with the reason. Each kernel also returns torch.compiler.is_compiling(), a
constant True in compiled code, so a call that dynamo ran as Python anyway
(set_stance("force_eager") or "eager_on_recompile", suppress_errors) is recorded too.
compile_stats() reports compilations and fallbacks for the harness.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from .config import LSHConfig
from .lsh import (
    accum_dtype,
    mask_values,
    sorted_order,
    window_chunks,
)

# Upper bound on query-key scores of one block (elements): 4M fp32 = 16 MiB.
SCORE_BLOCK_ELEMENTS = 1 << 22

# How dynamo / inductor report that a kernel could not be compiled (graph break under fullgraph,
# recompile limit, backend failure). Anything else is a real error and propagates.
try:
    from torch._dynamo.exc import FailOnRecompileLimitHit, TorchDynamoException

    _COMPILE_ERRORS: tuple[type[BaseException], ...] = (TorchDynamoException, FailOnRecompileLimitHit)
except ImportError:  # pragma: no cover - torch without dynamo
    _COMPILE_ERRORS = ()


# ---------------------------------------------------------------------------------------------
# Block kernels (traced by dynamo). A block is G rows x cb chunks of C sorted slots. pos_ext
# (G, cb + 1, C) holds the original positions of chunks c0 - 1, c0, ..., c1 - 1 of each row's
# sorted order (chunk c0 - 1 circularly), so every chunk's previous chunk is inside the block.
# ---------------------------------------------------------------------------------------------

def _window(x_ext: torch.Tensor, has_prev: bool) -> torch.Tensor:
    """(G, cb + 1, C, ...) chunks c0-1..c1-1 -> keys of chunks c0..c1-1: (G, cb, W*C, ...),
    own chunk then previous chunk (W = 2), or own chunk only when a round is one chunk (W = 1)."""
    own = x_ext[:, 1:]
    return torch.cat([own, x_ext[:, :-1]], dim=2) if has_prev else own


def _bmm(a: torch.Tensor, b: torch.Tensor, batch: tuple) -> torch.Tensor:
    """a @ b for flat (G*cb, ., .) operands (4-d ones are flattened), as (G, cb, ., .)."""
    a, b = (x.flatten(0, 1) if x.dim() == 4 else x for x in (a, b))
    return torch.bmm(a, b).unflatten(0, batch)


def _masked_scores(q_c, k_w, q_pos, k_pos, causal, chunk_of, n_chunks, acc: torch.dtype):
    """S_ij = q_i . k_j in acc, with S = -1e5 on self pairs, -1e9 on future keys where `causal`
    (0-d bool tensor), minus log N_ij when chunk_of (G, R, N) gives every position's chunk in
    every round (dedup, paper Eq. 16). Also returns the mask of constant-filled entries."""
    self_value, causal_value = mask_values(acc if q_c.dtype == torch.float64 else q_c.dtype)
    scores = _bmm(q_c, k_w.transpose(-1, -2), q_pos.shape[:2]).to(acc)
    q_p, k_p = q_pos.unsqueeze(-1), k_pos.unsqueeze(-2)
    is_self = q_p == k_p
    is_future = (k_p > q_p) & causal
    scores = torch.where(is_future, causal_value, torch.where(is_self, self_value, scores))
    if chunk_of is not None:
        g, n_rounds = chunk_of.shape[:2]
        q_chunk = chunk_of.gather(2, q_pos.reshape(g, 1, -1).expand(g, n_rounds, -1))
        k_chunk = chunk_of.gather(2, k_pos.reshape(g, 1, -1).expand(g, n_rounds, -1))
        q_chunk = q_chunk.view(g, n_rounds, *q_pos.shape[1:]).unsqueeze(-1)
        k_chunk = k_chunk.view(g, n_rounds, *k_pos.shape[1:]).unsqueeze(-2)
        # N_ij: rounds in which key j is in query i's chunk or the one before it (circularly);
        # with one chunk per round the second test repeats the first, as the window is that chunk.
        in_window = (k_chunk == q_chunk) | (k_chunk == torch.remainder(q_chunk - 1, n_chunks))
        scores = scores - in_window.sum(dim=1).to(acc).log()
    return scores, is_self | is_future


def _forward_block(q, k, v, bh, pos_ext, causal, chunk_of, n_chunks, has_prev: bool):
    """O (G, cb, C, D) and lse (G, cb, C) of a block, in sorted order.

    q, k, v: (BH, N, D) whole inputs (k = unit-normalised q); bh (G, 1, 1): each row's batch x
    head. The last output is torch.compiler.is_compiling(): True only in compiled code.
    """
    acc = accum_dtype(q.dtype)
    q_pos, k_pos = pos_ext[:, 1:], _window(pos_ext, has_prev)
    q_c, k_w, v_w = _gather_chunks(q, bh, q_pos), _gather_chunks(k, bh, k_pos), _gather_chunks(v, bh, k_pos)
    scores, _ = _masked_scores(q_c, k_w, q_pos, k_pos, causal, chunk_of, n_chunks, acc)
    lse = torch.logsumexp(scores, dim=-1)
    out = _bmm(torch.exp(scores - lse.unsqueeze(-1)).to(v.dtype), v_w, q_pos.shape[:2])
    return out, lse, torch.compiler.is_compiling()


def _gather_chunks(x: torch.Tensor, bh: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """x[bh, pos] for x (BH, N, D), pos (G, cb, L): flat (G*cb, L, D), the layout torch.bmm
    reads. Kept flat: every 4-d view of it that reaches a bmm makes inductor write another copy."""
    g, cb, length = pos.shape
    rows = bh.view(g, 1, 1).expand(g, cb, 1).reshape(g * cb, 1)
    return x[rows, pos.reshape(g * cb, length)]


def _backward_block(q, k, v, bh, pos_ext, rows, lse, weights, grad, grad_dot_out, causal, chunk_of,
                    n_chunks, has_prev: bool):
    """dq (G, cb, C, D) of chunks c0..c1-1 and dk, dv (G, cb + 1, C, D) of chunks c0-1..c1-1,
    in sorted order, in acc dtype.

    rows (G, 1, 1) index lse and the round weights w (rows, N); bh indexes grad = dL/do and
    grad_dot_out = dL/do . o (BH, N[, D]); all in original order. With o = sum_r w_r o_r:
    dL/do_r = w_r g, dL/dlse_r = w_r (g.o_r - g.o), so for round r's scores
    dL/dS_ij = P_ij (dP_ij - sum_l P_il dP_il + dL/dlse_i) = P_ij w_i (g_i . v_j - g_i . o_i).
    """
    acc = lse.dtype
    q_pos, k_pos = pos_ext[:, 1:], _window(pos_ext, has_prev)
    q_c, k_w, v_w = _gather_chunks(q, bh, q_pos), _gather_chunks(k, bh, k_pos), _gather_chunks(v, bh, k_pos)
    scores, masked = _masked_scores(q_c, k_w, q_pos, k_pos, causal, chunk_of, n_chunks, acc)
    probs = torch.exp(scores - lse[rows, q_pos].unsqueeze(-1))
    w = weights[rows, q_pos].unsqueeze(-1)
    batch = q_pos.shape[:2]
    d_out = (w.flatten(0, 1) * _gather_chunks(grad, bh, q_pos).to(acc)).to(v.dtype)  # (G*cb, C, D)
    d_probs = _bmm(d_out, v_w.transpose(-1, -2), batch).to(acc)
    row_term = w * grad_dot_out[bh, q_pos].unsqueeze(-1)
    # Constant-filled (masked) scores depend on neither q nor k.
    d_scores = torch.where(masked, 0.0, probs * (d_probs - row_term)).to(q.dtype)
    d_q = _bmm(d_scores, k_w, batch).to(acc)
    d_k = _fold_window(_bmm(d_scores.transpose(-1, -2), q_c, batch).to(acc), q_pos.shape[-1], has_prev)
    d_v = _fold_window(_bmm(probs.to(v.dtype).transpose(-1, -2), d_out, batch).to(acc),
                       q_pos.shape[-1], has_prev)
    return d_q, d_k, d_v, torch.compiler.is_compiling()


def _fold_window(grad_w: torch.Tensor, chunk_len, has_prev: bool) -> torch.Tensor:
    """Adjoint of _window: (G, cb, W*C, D) key gradients -> (G, cb + 1, C, D) per chunk c0-1..c1-1
    (the own part of chunk c lands on c, the previous-chunk part on c - 1)."""
    own = F.pad(grad_w[:, :, :chunk_len], (0, 0, 0, 0, 1, 0))
    return own + F.pad(grad_w[:, :, chunk_len:], (0, 0, 0, 0, 0, 1)) if has_prev else own


# ---------------------------------------------------------------------------------------------
# Compilation with honest bookkeeping.
# ---------------------------------------------------------------------------------------------

class _CompileStats:
    """Compilations and fallbacks since the last reset (see CompiledBackend.compile_stats)."""

    def __init__(self) -> None:
        self.compile_ids: set[tuple] = set()
        self.fell_back = False
        self.reason = ""

    def fall_back(self, reason: str) -> None:
        if not self.fell_back:  # the first reason is the cause; later ones repeat it
            self.fell_back, self.reason = True, reason


def _describe(exc: BaseException) -> str:
    """One line: the exception and the one it was raised from (dynamo wraps the real cause)."""
    parts = []
    while exc is not None and len(parts) < 2:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        parts.append(f"{type(exc).__name__}: {first_line}")
        exc = exc.__cause__
    return " <- ".join(parts)


class _Kernel:
    """A block kernel, its compiled form, and the fallback bookkeeping around every call."""

    def __init__(self, fn, stats: _CompileStats) -> None:
        self.fn = fn
        self.stats = stats
        self.compiled = torch.compile(fn, backend=self._inductor_counting, dynamic=True, fullgraph=True)

    def _inductor_counting(self, graph_module, example_inputs):
        from torch._guards import CompileContext
        from torch._inductor.compile_fx import compile_fx

        # One entry per dynamo compile (first compile or recompile); a compile that dynamo
        # restarts internally hands inductor a graph twice under the same id.
        compile_id = CompileContext.current_compile_id()
        key = (self.fn.__name__, getattr(compile_id, "frame_id", None),
               getattr(compile_id, "frame_compile_id", len(self.stats.compile_ids)))
        self.stats.compile_ids.add(key)
        return compile_fx(graph_module, example_inputs)

    def __call__(self, *args):
        # Detached aliases are not views: dynamo guards a view on its base's sizes and strides,
        # which change between calls and would recompile. The kernels need no autograd.
        args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        try:
            # Without duck sizing, sizes that happen to be equal in the first call (e.g. a block's
            # rows and batch x heads) are not assumed equal, which would recompile later.
            with torch.fx.experimental._config.patch(use_duck_shape=False):
                *outputs, ran_compiled = self.compiled(*args)
        except _COMPILE_ERRORS as exc:
            self.stats.fall_back(f"{self.fn.__name__} not compiled, ran eagerly: {_describe(exc)}")
            *outputs, _ = self.fn(*args)
            return outputs
        if not ran_compiled:
            from torch._dynamo.eval_frame import _stance

            self.stats.fall_back(f"{self.fn.__name__} ran as eager Python under dynamo "
                                 f"(compiler stance {_stance.stance!r})")
        return outputs


# ---------------------------------------------------------------------------------------------
# The blocked autograd.Function around the kernels.
# ---------------------------------------------------------------------------------------------

class _Plan:
    """The blocks of one call and the settings forward and backward share.

    A row is one (batch x head, round) pair. A block is several whole rows or, when rows have
    more than SCORE_BLOCK_ELEMENTS scores, two rows walked in steps of a few chunks.
    """

    def __init__(self, perm, rank, n_rounds, chunk_len, causal, dedup, dtype):
        bh_rows, _, seq_len = perm.shape
        self.n_rounds = n_rounds
        self.chunk_len = chunk_len
        self.n_chunks = seq_len // chunk_len
        self.has_prev = window_chunks(self.n_chunks) == 2
        self.acc = accum_dtype(dtype)
        rows = bh_rows * n_rounds
        self.perm_chunks = perm.reshape(rows, self.n_chunks, chunk_len)  # original position per slot
        self.rank = rank.reshape(rows, seq_len)  # sorted slot per original position
        # The causal flag is data, not a Python constant, so one graph serves both settings.
        self.causal = torch.tensor(causal, device=perm.device)
        self.chunk_of = rank // chunk_len if dedup else None  # (BH, R, N)

    def row_blocks(self):
        """Yield (r0, r1, bh (G, 1, 1), chunk steps [(c0, c1), ...]): G rows, walked together in
        steps of chunks, with G x (chunks per step) x (scores per chunk) <= SCORE_BLOCK_ELEMENTS
        where possible. Long rows go two at a time in shorter steps rather than one at a time, so
        the kernels see the same sizes >= 2 as for short rows (dynamo specialises sizes 0 and 1)."""
        rows, n_chunks = self.perm_chunks.shape[:2]
        per_chunk = self.chunk_len * (2 if self.has_prev else 1) * self.chunk_len
        chunks_fit = max(1, SCORE_BLOCK_ELEMENTS // per_chunk)
        if chunks_fit >= n_chunks:
            spans = _even_ranges(rows, chunks_fit // n_chunks)
            steps = [(0, n_chunks)]
        else:
            spans = _even_ranges(rows, 2)
            steps = _even_ranges(n_chunks, max(2, chunks_fit // 2))
        for r0, r1 in spans:
            bh = (torch.arange(r0, r1, device=self.rank.device) // self.n_rounds).view(-1, 1, 1)
            yield r0, r1, bh, steps

    def kernel_args(self, r0, r1, bh, c0, c1):
        """pos_ext (G, cb + 1, C) of chunks c0-1..c1-1, and the (G, R, N) chunk_of rows or None."""
        chunk_ids = torch.arange(c0 - 1, c1, device=self.rank.device) % self.n_chunks
        pos_ext = self.perm_chunks[r0:r1, chunk_ids]
        chunk_of = None if self.chunk_of is None else self.chunk_of[bh.view(-1)]
        return pos_ext, chunk_of


def _even_ranges(total: int, most: int) -> list[tuple[int, int]]:
    """[0, total) cut into the fewest ranges of at most `most`, of near-equal lengths: a short
    last range would be a new size for the kernels, and a length of 1 a recompile (dynamo
    specialises sizes 0 and 1)."""
    n_ranges = -(-total // most)
    bounds = [total * i // n_ranges for i in range(n_ranges + 1)]
    return list(itertools.pairwise(bounds))


def _to_original(x_sorted: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """(G, N[, D]) in sorted order -> original order: out[g, p] = x_sorted[g, rank[g, p]].
    One index_select of whole D-rows on the flattened rows (torch.gather along dim 1 copies
    element by element, over 10x slower on the CPU)."""
    g, n = rank.shape
    flat = (rank + torch.arange(g, device=rank.device).unsqueeze(1) * n).reshape(-1)
    return x_sorted.reshape(g * n, *x_sorted.shape[2:]).index_select(0, flat).view(x_sorted.shape)


def _add_chunks(acc: torch.Tensor, grads_ext: torch.Tensor, c0: int, c1: int, n_chunks: int) -> None:
    """acc (G, nC, C, D) chunks (c0-1..c1-1) mod nC += grads_ext (G, c1-c0+1, C, D)."""
    if c0 > 0:
        acc[:, c0 - 1:c1] += grads_ext
    else:
        acc[:, n_chunks - 1] += grads_ext[:, 0]
        acc[:, :c1] += grads_ext[:, 1:]


def _add_rounds(acc: torch.Tensor, grads: torch.Tensor, r0: int, n_rounds: int) -> None:
    """acc (BH, N, D)[row // n_rounds] += grads (G, N, D)[row - r0] for rows r0..r0+G-1: the sum
    over rounds, as slab adds (index_add_ over dim 0 takes a slow scatter path on CPU)."""
    r1 = r0 + grads.shape[0]
    for b in range(r0 // n_rounds, (r1 - 1) // n_rounds + 1):
        lo, hi = max(r0, b * n_rounds) - r0, min(r1, (b + 1) * n_rounds) - r0
        acc[b] += grads[lo:hi].sum(0) if hi - lo > 1 else grads[lo]


class _CompiledLSHAttention(torch.autograd.Function):
    """o = sum_r w_r o_r, w = softmax_r(lse_r), from the per-round chunked attention (o_r, lse_r).

    The rounds are combined here rather than by autograd over a per-round output tensor, so that
    backward needs only lse, w and o (the per-round outputs are freed after forward) and the
    combine's gradient enters the backward kernel directly (see _backward_block).
    """

    @staticmethod
    def forward(ctx, q, k, v, plan: _Plan, kernels):
        forward_kernel = kernels[0]
        bh_rows, seq_len, d = q.shape
        rows_total = bh_rows * plan.n_rounds
        out_rounds = q.new_empty(rows_total, seq_len, d)
        lse = torch.empty(rows_total, seq_len, dtype=plan.acc, device=q.device)
        for r0, r1, bh, steps in plan.row_blocks():
            outs, lses = [], []
            for c0, c1 in steps:
                pos_ext, chunk_of = plan.kernel_args(r0, r1, bh, c0, c1)
                out_c, lse_c = forward_kernel(q, k, v, bh, pos_ext, plan.causal, chunk_of,
                                              plan.n_chunks, plan.has_prev)
                outs.append(out_c.flatten(1, 2))
                lses.append(lse_c.flatten(1, 2))
            out_s = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
            lse_s = lses[0] if len(lses) == 1 else torch.cat(lses, dim=1)
            out_rounds[r0:r1] = _to_original(out_s, plan.rank[r0:r1])
            lse[r0:r1] = _to_original(lse_s, plan.rank[r0:r1])
        weights = torch.softmax(lse.view(bh_rows, plan.n_rounds, seq_len), dim=1)
        out_rounds = out_rounds.view(bh_rows, plan.n_rounds, seq_len, d)
        out = (out_rounds[:, 0] * weights[:, 0].unsqueeze(-1)).to(plan.acc)
        for r in range(1, plan.n_rounds):
            out.addcmul_(out_rounds[:, r], weights[:, r].unsqueeze(-1))
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, lse, weights.view(rows_total, seq_len), out)
        ctx.plan, ctx.kernels = plan, kernels
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, lse, weights, out = ctx.saved_tensors
        plan: _Plan = ctx.plan
        backward_kernel = ctx.kernels[1]
        bh_rows, seq_len, d = q.shape
        grad = grad.contiguous()  # e.g. the expanded ones of out.sum(): one layout, one graph
        grad_dot_out = (grad.to(plan.acc) * out.to(plan.acc)).sum(-1)
        dq = torch.zeros(bh_rows, seq_len, d, dtype=plan.acc, device=q.device)
        dk, dv = torch.zeros_like(dq), torch.zeros_like(dq)
        shape_c = (plan.n_chunks, plan.chunk_len, d)
        for r0, r1, bh, steps in plan.row_blocks():
            rows = torch.arange(r0, r1, device=q.device).view(-1, 1, 1)
            dq_s = dk_s = dv_s = None
            for c0, c1 in steps:
                pos_ext, chunk_of = plan.kernel_args(r0, r1, bh, c0, c1)
                dq_c, dk_ext, dv_ext = backward_kernel(q, k, v, bh, pos_ext, rows, lse, weights, grad,
                                                       grad_dot_out, plan.causal, chunk_of, plan.n_chunks,
                                                       plan.has_prev)
                if len(steps) == 1:
                    # Whole rows: the extra leading chunk is chunk nC - 1, the circular look-back.
                    dq_s = dq_c
                    dk_s, dv_s = dk_ext[:, 1:], dv_ext[:, 1:]
                    dk_s[:, -1] += dk_ext[:, 0]
                    dv_s[:, -1] += dv_ext[:, 0]
                    break
                if dq_s is None:
                    dq_s, dk_s, dv_s = (dq_c.new_zeros(r1 - r0, *shape_c) for _ in range(3))
                dq_s[:, c0:c1] = dq_c
                _add_chunks(dk_s, dk_ext, c0, c1, plan.n_chunks)
                _add_chunks(dv_s, dv_ext, c0, c1, plan.n_chunks)
            for acc, grads_s in ((dq, dq_s), (dk, dk_s), (dv, dv_s)):
                _add_rounds(acc, _to_original(grads_s.flatten(1, 2), plan.rank[r0:r1]), r0, plan.n_rounds)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None


class CompiledBackend:
    """LSH attention whose chunked forward and backward kernels are compiled by torch.compile."""

    name = "compiled"
    kind = "lsh"

    def __init__(self) -> None:
        self._stats = _CompileStats()
        self._kernels = (_Kernel(_forward_block, self._stats), _Kernel(_backward_block, self._stats))

    def available(self) -> tuple[bool, str]:
        if not _COMPILE_ERRORS:
            return False, f"torch {torch.__version__} has no torch._dynamo"
        return True, ""

    def compile_stats(self) -> dict:
        """Since the last reset_compile_stats(): compilations (dynamo compiles of the two kernels,
        first compiles and recompiles), fell_back (some block ran uncompiled) and its reason."""
        return {"compilations": len(self._stats.compile_ids), "fell_back": self._stats.fell_back,
                "reason": self._stats.reason}

    def reset_compile_stats(self) -> None:
        self._stats.__init__()

    def attend(self, qk: torch.Tensor, v: torch.Tensor, cfg: LSHConfig,
               buckets: torch.Tensor | None = None) -> torch.Tensor:
        """The contract's LSH attention, (batch, heads, seq, d_head) -> same shape; differentiable.
        buckets: optional precomputed hash_buckets(qk, cfg), as for the eager backend."""
        order = sorted_order(qk, v, cfg, buckets)
        batch, heads, seq_len, d_head = qk.shape
        bh_rows = batch * heads
        # Keys are the unit-normalised queries; the normalisation stays outside the kernels so
        # its gradient is autograd's, as in the eager backend.
        keys = F.normalize(qk, p=2.0, dim=-1)
        plan = _Plan(order.perm.reshape(bh_rows, cfg.n_hashes, seq_len),
                     order.rank.reshape(bh_rows, cfg.n_hashes, seq_len),
                     cfg.n_hashes, order.chunk_len, cfg.causal, cfg.dedup, qk.dtype)
        out = _CompiledLSHAttention.apply(
            qk.reshape(bh_rows, seq_len, d_head), keys.reshape(bh_rows, seq_len, d_head),
            v.reshape(bh_rows, seq_len, d_head), plan, self._kernels)
        return out.view(batch, heads, seq_len, d_head)
