"""`eager` backend: the contract's LSH attention in plain PyTorch.

Shape of the computation, per (batch x head) row and hash round r:
  hash -> sort by (bucket, position) -> chunks of C sorted slots -> each chunk's queries attend to
  the keys of their own chunk and of the previous chunk (circular within the round) -> output and
  log-sum-exp scattered back to original positions -> rounds combined by their log-sum-exp.

Memory: the chunked attention is a custom autograd.Function that works on blocks of chunks and
saves only its inputs, the sort permutation and the per-round log-sum-exp; the backward recomputes
each block's scores (flash-attention style). No seq x seq tensor and no R-fold sorted copies of
q, k, v are ever built: the live set is O(seq * d * R) for the per-round outputs plus one block
of scores (SCORE_BLOCK_ELEMENTS), independent of seq.
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from .config import LSHConfig
from .lsh import (
    accum_dtype,
    check_inputs,
    combine_rounds,
    dedup_counts,
    hash_buckets,
    mask_values,
    sort_by_buckets,
    window_chunks,
)

# Upper bound on query-key scores materialised at once (per temporary). 4M fp32 = 16 MiB: big
# enough that the batched matmuls run near peak, small enough to stay near cache-friendly sizes.
SCORE_BLOCK_ELEMENTS = 1 << 22


def _blocks(rows: int, n_chunks: int, chunk_len: int, window: int) -> Iterator[tuple[int, int, int, int]]:
    """(row0, row1, chunk0, chunk1) blocks covering rows x chunks within the score budget."""
    per_chunk = chunk_len * window * chunk_len
    chunks_per_block = max(1, SCORE_BLOCK_ELEMENTS // per_chunk)
    if chunks_per_block >= n_chunks:
        rows_per_block = max(1, chunks_per_block // n_chunks)
        for r0 in range(0, rows, rows_per_block):
            yield r0, min(rows, r0 + rows_per_block), 0, n_chunks
    else:
        for r0 in range(rows):
            for c0 in range(0, n_chunks, chunks_per_block):
                yield r0, r0 + 1, c0, min(n_chunks, c0 + chunks_per_block)


def _window_slots(perm_rows: torch.Tensor, c0: int, c1: int, chunk_len: int, n_chunks: int,
                  window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Original positions of a block's queries (G, cb, C) and of their keys (G, cb, W*C).

    perm_rows: (G, N) original position at each sorted slot. Keys of chunk c are chunk c then
    chunk c-1 (mod n_chunks): the same order in forward and backward, so gradients line up.
    """
    g = perm_rows.shape[0]
    cb = c1 - c0
    q_pos = perm_rows[:, c0 * chunk_len:c1 * chunk_len].view(g, cb, chunk_len)
    if window == 1:
        return q_pos, q_pos
    if c0 > 0:
        prev = perm_rows[:, (c0 - 1) * chunk_len:(c1 - 1) * chunk_len]
    else:
        prev = torch.cat([perm_rows[:, (n_chunks - 1) * chunk_len:], perm_rows[:, :(c1 - 1) * chunk_len]], 1)
    k_pos = torch.cat([q_pos, prev.view(g, cb, chunk_len)], dim=2)
    return q_pos, k_pos


class _Plan:
    """Everything about one call that forward and backward share (no tensors that need grad)."""

    def __init__(self, perm, rank, n_rounds, chunk_len, causal, dedup, dtype):
        self.perm = perm  # (BH, R, N)
        self.rank = rank  # (BH, R, N)
        self.n_rounds = n_rounds
        self.chunk_len = chunk_len
        self.n_chunks = perm.shape[-1] // chunk_len
        self.window = window_chunks(self.n_chunks)
        self.causal = causal
        self.dedup = dedup
        self.acc = accum_dtype(dtype)
        self.self_value, self.causal_value = mask_values(self.acc if dtype == torch.float64 else dtype)

    def blocks(self):
        rows = self.perm.shape[0] * self.n_rounds
        seq_len = self.perm.shape[-1]
        perm_rows = self.perm.reshape(rows, seq_len)
        for r0, r1, c0, c1 in _blocks(rows, self.n_chunks, self.chunk_len, self.window):
            q_pos, k_pos = _window_slots(perm_rows[r0:r1], c0, c1, self.chunk_len, self.n_chunks, self.window)
            bh = (torch.arange(r0, r1, device=self.perm.device) // self.n_rounds).view(-1, 1, 1)
            yield r0, r1, bh, q_pos, k_pos

    def masked_scores(self, q_blk, k_blk, bh, q_pos, k_pos):
        """Scores q.k of a block with the self / causal masks and the dedup correction applied,
        in the accumulation dtype; also returns the mask of constant-filled entries."""
        scores = torch.matmul(q_blk, k_blk.transpose(-1, -2)).to(self.acc)
        q_p, k_p = q_pos.unsqueeze(-1), k_pos.unsqueeze(-2)
        masked = q_p == k_p
        scores.masked_fill_(masked, self.self_value)
        if self.causal:
            future = k_p > q_p
            scores.masked_fill_(future, self.causal_value)
            masked |= future
        if self.dedup:
            counts = dedup_counts(self.rank[bh.view(-1)], q_pos, k_pos, self.chunk_len, self.n_chunks)
            scores.sub_(counts.to(self.acc).log_())
        return scores, masked

    def probabilities(self, q_blk, k_blk, bh, q_pos, k_pos):
        """Softmax of the masked scores and its log-sum-exp: one exp pass, in place."""
        probs, _ = self.masked_scores(q_blk, k_blk, bh, q_pos, k_pos)
        row_max = probs.amax(dim=-1, keepdim=True)
        probs.sub_(row_max).exp_()
        row_sum = probs.sum(dim=-1, keepdim=True)
        probs.div_(row_sum)
        return probs, (row_max + row_sum.log()).squeeze(-1)


class _ChunkedLSHAttention(torch.autograd.Function):
    """Per-round chunked attention in original order: returns out (BH, R, N, D) and lse (BH, R, N)."""

    @staticmethod
    def forward(ctx, q, k, v, plan: _Plan):
        bh_rows, seq_len, d = q.shape
        n_rounds = plan.n_rounds
        out = q.new_empty(bh_rows * n_rounds, seq_len, d)  # (rows, N, D), original order
        lse_out = torch.empty(bh_rows * n_rounds, seq_len, dtype=plan.acc, device=q.device)
        row_ids = torch.arange(bh_rows * n_rounds, device=q.device).view(-1, 1, 1)
        for r0, r1, bh, q_pos, k_pos in plan.blocks():
            probs, lse = plan.probabilities(q[bh, q_pos], k[bh, k_pos], bh, q_pos, k_pos)
            out[row_ids[r0:r1], q_pos] = torch.matmul(probs.to(v.dtype), v[bh, k_pos])
            lse_out[row_ids[r0:r1], q_pos] = lse
        # out and lse are saved too: backward rebuilds probabilities as exp(score - lse) and gets
        # sum_j P_ij dP_ij as dO_i . O_i (both cheaper than recomputing a softmax). out is the
        # tensor autograd keeps for combine_rounds anyway, so saving it costs no memory.
        ctx.save_for_backward(q, k, v, out, lse_out)
        ctx.plan = plan
        return out.view(bh_rows, n_rounds, seq_len, d), lse_out.view(bh_rows, n_rounds, seq_len)

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse_out = ctx.saved_tensors
        plan: _Plan = ctx.plan
        bh_rows, seq_len, d = q.shape
        rows = bh_rows * plan.n_rounds
        grad_out = (torch.zeros_like(q).unsqueeze(1).expand(-1, plan.n_rounds, -1, -1)
                    if grad_out is None else grad_out).reshape(rows, seq_len, d)
        grad_lse = (torch.zeros(rows, seq_len, dtype=plan.acc, device=q.device)
                    if grad_lse is None else grad_lse.reshape(rows, seq_len))
        # Accumulate in flat (BH*N, D) views: index_add_ sums the contributions of every round and
        # of the two chunks (own, previous) in which a key appears.
        dq = torch.zeros(bh_rows * seq_len, d, dtype=plan.acc, device=q.device)
        dk = torch.zeros_like(dq)
        dv = torch.zeros_like(dq)
        row_ids = torch.arange(rows, device=q.device).view(-1, 1, 1)
        for r0, r1, bh, q_pos, k_pos in plan.blocks():
            q_blk, k_blk, v_blk = q[bh, q_pos], k[bh, k_pos], v[bh, k_pos]
            rows_blk = row_ids[r0:r1]
            probs, masked = plan.masked_scores(q_blk, k_blk, bh, q_pos, k_pos)
            probs.sub_(lse_out[rows_blk, q_pos].unsqueeze(-1)).exp_()
            d_out = grad_out[rows_blk, q_pos]
            row_dot = (d_out.to(plan.acc) * out[rows_blk, q_pos].to(plan.acc)).sum(-1)
            # dL/ds_ij = P_ij (dP_ij - sum_k P_ik dP_ik + dL/dlse_i), with dP = dO V^T.
            d_scores = torch.matmul(d_out, v_blk.transpose(-1, -2)).to(plan.acc)
            d_scores.sub_((row_dot - grad_lse[rows_blk, q_pos]).unsqueeze(-1)).mul_(probs)
            # Constant-filled (masked) scores do not depend on q or k.
            d_scores.masked_fill_(masked, 0.0)
            d_scores = d_scores.to(q.dtype)
            q_index = (bh * seq_len + q_pos).reshape(-1)
            k_index = (bh * seq_len + k_pos).reshape(-1)
            dq.index_add_(0, q_index, torch.matmul(d_scores, k_blk).reshape(-1, d).to(plan.acc))
            dk.index_add_(0, k_index, torch.matmul(d_scores.transpose(-1, -2), q_blk).reshape(-1, d).to(plan.acc))
            dv.index_add_(0, k_index, torch.matmul(probs.to(v.dtype).transpose(-1, -2), d_out)
                          .reshape(-1, d).to(plan.acc))
        shape = (bh_rows, seq_len, d)
        return dq.view(shape).to(q.dtype), dk.view(shape).to(k.dtype), dv.view(shape).to(v.dtype), None


def lsh_attention(qk: torch.Tensor, v: torch.Tensor, cfg: LSHConfig,
                  buckets: torch.Tensor | None = None) -> torch.Tensor:
    """The contract's LSH attention; (batch, heads, seq, d_head) -> same shape. Differentiable.

    buckets: optional precomputed hash_buckets(qk, cfg), e.g. replayed by a reversible layer's
    backward so that its recomputation attends exactly as the forward did.
    """
    chunk_len = check_inputs(qk, v, cfg)
    batch, heads, seq_len, d_head = qk.shape
    if buckets is None:
        buckets = hash_buckets(qk, cfg)
    order = sort_by_buckets(buckets, chunk_len)
    bh_rows = batch * heads
    # Keys are the unit-normalised queries; the normalisation stays in torch so its gradient is
    # autograd's, and the chunked kernel sees q and k as independent inputs.
    keys = F.normalize(qk, p=2.0, dim=-1)
    plan = _Plan(order.perm.reshape(bh_rows, cfg.n_hashes, seq_len),
                 order.rank.reshape(bh_rows, cfg.n_hashes, seq_len),
                 cfg.n_hashes, chunk_len, cfg.causal, cfg.dedup, qk.dtype)
    out_rounds, lse_rounds = _ChunkedLSHAttention.apply(
        qk.reshape(bh_rows, seq_len, d_head), keys.reshape(bh_rows, seq_len, d_head),
        v.reshape(bh_rows, seq_len, d_head), plan)
    out_rounds = out_rounds.view(batch, heads, cfg.n_hashes, seq_len, d_head)
    lse_rounds = lse_rounds.view(batch, heads, cfg.n_hashes, seq_len)
    return combine_rounds(out_rounds, lse_rounds)


class EagerBackend:
    name = "eager"
    kind = "lsh"

    def available(self) -> tuple[bool, str]:
        return True, ""

    def attend(self, qk: torch.Tensor, v: torch.Tensor, cfg: LSHConfig,
               buckets: torch.Tensor | None = None) -> torch.Tensor:
        return lsh_attention(qk, v, cfg, buckets=buckets)
