"""`eager` backend: the contract's LSH attention in plain PyTorch.

Shape of the computation, per (batch x head) row and hash round r:
  hash -> sort by (bucket, position) -> chunks of C sorted slots -> each chunk's queries attend to
  the keys of their own chunk and of the previous chunk (circular within the round) -> output and
  log-sum-exp gathered back to original positions -> rounds combined online by their log-sum-exp.

Memory: the chunked attention is a custom autograd.Function that works on blocks of rows and
chunks and saves only its inputs, the combined output and the per-round log-sum-exp; the backward
recomputes each block's scores (flash-attention style). No seq x seq tensor, no per-round output
and no R-fold sorted copy of q, k, v is ever kept: the live set is O(seq * d) plus O(seq * R)
for the log-sum-exps, one block of rows in sorted order and one block of scores
(impls.blocked.SCORE_BLOCK_ELEMENTS).
"""
from __future__ import annotations

from collections.abc import Iterator

import torch

from .blocked import BlockPlan, Buffers, RowTable, combine_round_, keys_backward_, select_rows, unit_keys
from .config import LSHConfig
from .lsh import dedup_counts, sorted_order
from .phases import phase


def _row_blocks(rows: int, n_chunks: int, per_chunk: int, budget: int) -> Iterator[tuple[int, int, int]]:
    """(row0, row1, chunks per step): rows processed together, and how many chunks per step."""
    chunks_per_step = max(1, budget // per_chunk)
    if chunks_per_step >= n_chunks:
        rows_per_block = max(1, chunks_per_step // n_chunks)
        for r0 in range(0, rows, rows_per_block):
            yield r0, min(rows, r0 + rows_per_block), n_chunks
    else:
        for r0 in range(rows):
            yield r0, r0 + 1, chunks_per_step


def _chunks(x: torch.Tensor, c0: int, c1: int, chunk_len: int) -> torch.Tensor:
    """Chunks c0..c1-1 of a sorted (G, N, ...) tensor as (G, c1-c0, C, ...)."""
    part = x[:, c0 * chunk_len:c1 * chunk_len]
    return part.reshape(x.shape[0], c1 - c0, chunk_len, *x.shape[2:])


def _prev_chunks(x: torch.Tensor, c0: int, c1: int, chunk_len: int, n_chunks: int) -> torch.Tensor:
    """Chunks (c - 1) mod n_chunks for c in c0..c1-1: the circular look-back within a round."""
    if c0 > 0:
        return _chunks(x, c0 - 1, c1 - 1, chunk_len)
    wrapped = torch.cat([x[:, (n_chunks - 1) * chunk_len:], x[:, :(c1 - 1) * chunk_len]], dim=1)
    return wrapped.reshape(x.shape[0], c1 - c0, chunk_len, *x.shape[2:])


def _add_prev_chunks(acc: torch.Tensor, grads: torch.Tensor, c0: int, c1: int, chunk_len: int,
                     n_chunks: int) -> None:
    """acc[chunk (c - 1) mod n_chunks] += grads[c]: the adjoint of _prev_chunks."""
    flat = grads.reshape(acc.shape[0], -1, *acc.shape[2:])
    if c0 > 0:
        acc[:, (c0 - 1) * chunk_len:(c1 - 1) * chunk_len] += flat
    else:
        acc[:, (n_chunks - 1) * chunk_len:] += flat[:, :chunk_len]
        acc[:, :(c1 - 1) * chunk_len] += flat[:, chunk_len:]


class _Plan(BlockPlan):
    """The shared plan, walked the eager way: blocks of rows, steps of whole chunks, windows copied."""

    def row_blocks(self):
        """Yield (row slice, bh index per row, perm rows, rank rows, chunks per step)."""
        rows = self.perm.shape[0] * self.n_rounds
        seq_len = self.perm.shape[-1]
        perm_rows = self.perm.reshape(rows, seq_len)
        rank_rows = self.rank.reshape(rows, seq_len)
        per_chunk = self.chunk_len * self.window * self.chunk_len
        for r0, r1, step in _row_blocks(rows, self.n_chunks, per_chunk, self.budget):
            bh = torch.arange(r0, r1, device=self.perm.device) // self.n_rounds
            yield slice(r0, r1), bh, perm_rows[r0:r1], rank_rows[r0:r1], step

    def steps(self, step: int):
        for c0 in range(0, self.n_chunks, step):
            yield c0, min(self.n_chunks, c0 + step)

    def window_of(self, x_sorted: torch.Tensor, c0: int, c1: int) -> torch.Tensor:
        """Keys (or values, positions) each chunk attends to: own chunk, then the previous one."""
        own = _chunks(x_sorted, c0, c1, self.chunk_len)
        if self.window == 1:
            return own
        return torch.cat([own, _prev_chunks(x_sorted, c0, c1, self.chunk_len, self.n_chunks)], dim=2)

    def masked_scores(self, q_blk, k_blk, bh, q_pos, k_pos):
        """Scores q.k of a block with the self / causal masks and the dedup correction applied,
        in the accumulation dtype; also returns the causal mask (None without causality).

        The self mask is the diagonal of the own chunk (the window's first C keys): the sorted order
        is a permutation per round, so a query's own position appears only at its own slot."""
        scores = _bmm(q_blk, k_blk.transpose(-1, -2)).to(self.acc)
        scores.diagonal(0, -2, -1).fill_(self.self_value)
        future = None
        if self.causal:
            future = k_pos.unsqueeze(-2) > q_pos.unsqueeze(-1)
            scores.masked_fill_(future, self.causal_value)
        if self.dedup:
            counts = dedup_counts(self.rank[bh], q_pos, k_pos, self.chunk_len, self.n_chunks)
            scores.sub_(counts.to(self.acc).log_())
        return scores, future


def _bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(G, c, m, k) @ (G, c, k, n) as one torch.bmm over G*c. Unlike torch.matmul on 4-d operands,
    bmm takes transposed and sliced (strided) operands as they are, where matmul may copy them."""
    out = torch.bmm(a.flatten(0, 1), b.flatten(0, 1))
    return out.view(*a.shape[:2], *out.shape[1:])


def _to_sorted(x: torch.Tensor, order: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Gather (G, N[, D]) rows into sorted order: out[g, s] = x[g, order[g, s]]."""
    if x.dim() == 2:
        return x.gather(1, order)
    # Whole D-vectors at a time: index_select copies rows, where gather with an expanded index
    # would read one index per element (several times slower on the CPU).
    groups, seq_len, d = x.shape
    offsets = torch.arange(groups, device=x.device).unsqueeze(-1) * seq_len
    return select_rows(x.reshape(-1, d), (order + offsets).reshape(-1), out, (groups, seq_len, d))


class _ChunkedLSHAttention(torch.autograd.Function):
    """Chunked attention of every hash round, rounds combined: returns out (BH, N, D), original order.

    Per block of (batch x head x round) rows: gather q, k, v into the round's sorted order once,
    attend chunk against (own, previous) chunk with contiguous slices, and gather the results back
    to original order with the inverse permutation. Gathers only: no scatter with collisions, so
    the backward accumulates dk / dv of the two windows a key is in with contiguous adds.

    Rounds are combined online, o = sum_r w_r o_r with w_r = exp(lse_r - logsumexp_r lse_r), so no
    per-round output outlives its block. The backward needs only o, lse_r and L: with
    dO_r = w_r dO, dL/ds_ij = P_ij (dO_r . v_j - w_r dO . o) (the lse_r path through w_r cancels
    the dO_r . o_r term), so neither per-round outputs nor their gradients are ever stored.
    """

    @staticmethod
    def forward(ctx, q, v, plan: _Plan):
        batch, heads, seq_len, d = q.shape  # (B, H, N, D), any strides with unit last stride
        bh_rows = batch * heads
        q_rows, v_rows = RowTable(q), RowTable(v)
        # The online combination of the rounds (see combine_round_).
        combined = torch.zeros(bh_rows, seq_len, d, dtype=plan.acc, device=q.device)
        lse_max = torch.full((bh_rows, seq_len), float("-inf"), dtype=plan.acc, device=q.device)
        weight_sum = torch.zeros(bh_rows, seq_len, dtype=plan.acc, device=q.device)
        lse_rounds = torch.empty(bh_rows * plan.n_rounds, seq_len, dtype=plan.acc, device=q.device)
        buffers = Buffers(q.device)
        for rows, bh, perm, rank, step in plan.row_blocks():
            g = perm.shape[0]
            with phase("lsh.gather"):
                q_s = q_rows.sorted_rows(bh, perm, out=buffers.get("q", (g, seq_len, d), q.dtype))
                v_s = v_rows.sorted_rows(bh, perm, out=buffers.get("v", (g, seq_len, d), v.dtype))
                # Keys are normalised here, per block, from the sorted queries: no full-size key tensor
                # exists, and the normalisation's gradient is folded into dq in the backward.
                k_s, _ = unit_keys(q_s, out=buffers.get("k", (g, seq_len, d), q.dtype))
            with phase("lsh.attend"):
                out_s, lse_s = buffers.get("out", (g, seq_len, d), q.dtype), lse_rounds.new_empty(perm.shape)
                for c0, c1 in plan.steps(step):
                    scores, _ = plan.masked_scores(_chunks(q_s, c0, c1, plan.chunk_len),
                                                   plan.window_of(k_s, c0, c1), bh,
                                                   _chunks(perm, c0, c1, plan.chunk_len), plan.window_of(perm, c0, c1))
                    row_max = scores.amax(dim=-1, keepdim=True)
                    probs = scores.sub_(row_max).exp_()
                    row_sum = probs.sum(dim=-1, keepdim=True)
                    probs.div_(row_sum)
                    span = slice(c0 * plan.chunk_len, c1 * plan.chunk_len)
                    out_s[:, span] = _bmm(probs.to(v.dtype), plan.window_of(v_s, c0, c1)).flatten(1, 2)
                    lse_s[:, span] = (row_max + row_sum.log()).flatten(1)
            with phase("lsh.unsort"):
                out_rows = _to_sorted(out_s, rank, out=buffers.get("out_rows", (g, seq_len, d), q.dtype))
                lse_rows = _to_sorted(lse_s, rank)
                lse_rounds[rows] = lse_rows
            with phase("lsh.combine"):
                for i, row_bh in enumerate(bh.tolist()):  # rows are (bh, round) pairs, bh-major
                    combine_round_(combined[row_bh], lse_max[row_bh], weight_sum[row_bh], out_rows[i], lse_rows[i])
        del buffers
        with phase("lsh.combine"):
            combined.div_(weight_sum.unsqueeze(-1))
        ctx.save_for_backward(q, v, combined, lse_rounds, lse_max, weight_sum)
        ctx.plan = plan
        return combined.view(batch, heads, seq_len, d).to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        q, v, combined, lse_rounds, lse_max, weight_sum = ctx.saved_tensors
        plan: _Plan = ctx.plan
        batch, heads, seq_len, d = q.shape
        bh_rows = batch * heads
        q_rows, v_rows, grad_rows = RowTable(q), RowTable(v), RowTable(grad_out)
        # dO . o per (bh, position)
        with phase("lsh.backward.prepare"):
            out_dot = (grad_out.to(plan.acc) * combined.view(grad_out.shape)).sum(-1).reshape(bh_rows, seq_len)
            dq = torch.zeros(bh_rows, seq_len, d, dtype=plan.acc, device=q.device)
            dv = torch.zeros_like(dq)
        buffers = Buffers(q.device)
        for rows, bh, perm, rank, step in plan.row_blocks():
            g = perm.shape[0]
            with phase("lsh.backward.gather"):
                q_s = q_rows.sorted_rows(bh, perm, out=buffers.get("q", (g, seq_len, d), q.dtype))
                v_s = v_rows.sorted_rows(bh, perm, out=buffers.get("v", (g, seq_len, d), v.dtype))
                k_s, norm_s = unit_keys(q_s, out=buffers.get("k", (g, seq_len, d), q.dtype))
                lse_s = _to_sorted(lse_rounds[rows], perm)
                # w_r = exp(lse_r - max) / sum, in sorted order
                weight_s = (lse_s - _to_sorted(lse_max[bh], perm)).exp_().div_(_to_sorted(weight_sum[bh], perm))
                d_out_s = grad_rows.sorted_rows(bh, perm, out=buffers.get("d_out", (g, seq_len, d), grad_out.dtype))
                d_out_s = d_out_s.mul_(weight_s.unsqueeze(-1).to(d_out_s.dtype))
                row_term = _to_sorted(out_dot[bh], perm).mul_(weight_s)  # w_r dO . o
                dq_s, dk_s, dv_s = (buffers.get(name, (g, seq_len, d), plan.acc).zero_() for name in ("dq", "dk", "dv"))
            with phase("lsh.backward.attend"):
                for c0, c1 in plan.steps(step):
                    span = slice(c0 * plan.chunk_len, c1 * plan.chunk_len)
                    q_c = _chunks(q_s, c0, c1, plan.chunk_len)
                    k_w, v_w = plan.window_of(k_s, c0, c1), plan.window_of(v_s, c0, c1)
                    d_out_c = _chunks(d_out_s, c0, c1, plan.chunk_len)
                    scores, future = plan.masked_scores(q_c, k_w, bh, _chunks(perm, c0, c1, plan.chunk_len),
                                                        plan.window_of(perm, c0, c1))
                    probs = scores.sub_(_chunks(lse_s, c0, c1, plan.chunk_len).unsqueeze(-1)).exp_()
                    # dL/ds_ij = P_ij (dO_r . v_j - w_r dO . o)
                    d_scores = _bmm(d_out_c, v_w.transpose(-1, -2)).to(plan.acc)
                    d_scores.sub_(_chunks(row_term, c0, c1, plan.chunk_len).unsqueeze(-1)).mul_(probs)
                    # Constant-filled scores (self, future) depend on neither q nor k.
                    d_scores.diagonal(0, -2, -1).zero_()
                    if future is not None:
                        d_scores.masked_fill_(future, 0.0)
                    d_scores = d_scores.to(q.dtype)
                    dq_s[:, span] += _bmm(d_scores, k_w).flatten(1, 2)
                    probs = probs.to(v.dtype)
                    # dk, dv of the own chunk and of the previous chunk, as separate products so each
                    # lands contiguous in the sorted accumulators.
                    own, prev = slice(0, plan.chunk_len), slice(plan.chunk_len, None)
                    for acc, weights, rhs in ((dk_s, d_scores, q_c), (dv_s, probs, d_out_c)):
                        acc[:, span] += _bmm(weights[..., own].transpose(-1, -2), rhs).flatten(1, 2)
                        if plan.window == 2:
                            _add_prev_chunks(acc, _bmm(weights[..., prev].transpose(-1, -2), rhs),
                                             c0, c1, plan.chunk_len, plan.n_chunks)
            # Back to original order, summed over the rounds (rows) of each (batch x head).
            # q reaches k through k = q / |q|
            with phase("lsh.backward.keys"):
                dq_s += keys_backward_(dk_s, k_s.to(plan.acc), norm_s.to(plan.acc),
                                        scratch=buffers.get("scratch", (g, seq_len, d), plan.acc))
            with phase("lsh.backward.unsort"):
                for acc, grads_s in ((dq, dq_s), (dv, dv_s)):
                    acc.index_add_(0, bh, _to_sorted(grads_s, rank,
                                                     out=buffers.get("orig", (g, seq_len, d), plan.acc)))
        return dq.view(q.shape).to(q.dtype), dv.view(v.shape).to(v.dtype), None


def lsh_attention(qk: torch.Tensor, v: torch.Tensor, cfg: LSHConfig,
                  buckets: torch.Tensor | None = None) -> torch.Tensor:
    """The contract's LSH attention; (batch, heads, seq, d_head) -> same shape. Differentiable.

    buckets: optional precomputed hash_buckets(qk, cfg), e.g. replayed by a reversible layer's
    backward so that its recomputation attends exactly as the forward did.
    """
    order = sorted_order(qk, v, cfg, buckets)
    batch, heads, seq_len, d_head = qk.shape
    bh_rows = batch * heads
    plan = _Plan(order.perm.reshape(bh_rows, cfg.n_hashes, seq_len),
                 order.rank.reshape(bh_rows, cfg.n_hashes, seq_len),
                 order.chunk_len, cfg.causal, cfg.dedup, qk.dtype)
    # qk and v go in as they are (a transposed projection is gathered from in place, not copied).
    return _ChunkedLSHAttention.apply(qk, v, plan)


class EagerBackend:
    name = "eager"

    def available(self) -> tuple[bool, str]:
        return True, ""

    def attend(self, qk: torch.Tensor, v: torch.Tensor, cfg: LSHConfig,
               buckets: torch.Tensor | None = None) -> torch.Tensor:
        return lsh_attention(qk, v, cfg, buckets=buckets)
