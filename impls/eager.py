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
(SCORE_BLOCK_ELEMENTS).
"""
from __future__ import annotations

from collections.abc import Iterator

import torch

from .config import LSHConfig
from .lsh import (
    accum_dtype,
    dedup_counts,
    mask_values,
    sorted_order,
    window_chunks,
)

# Upper bound on query-key scores materialised at once (per temporary), by device type. CPU: 256K
# fp32 = 1 MiB, measured fastest here (16K tokens fwd+bwd: 0.69 s at 2^18 vs 0.81 s at 2^22; 2^16 is
# slower again): the temporaries stay in cache. CUDA: each step is ~20 kernel launches, so steps must
# be large enough for launches not to dominate (16 MiB).
SCORE_BLOCK_ELEMENTS = {"cpu": 1 << 18, "cuda": 1 << 22}


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


class _Plan:
    """Everything about one call that forward and backward share (no tensors that need grad)."""

    def __init__(self, perm, rank, n_rounds, chunk_len, causal, dedup, dtype):
        self.perm = perm  # (BH, R, N): original position at each sorted slot
        self.rank = rank  # (BH, R, N): sorted slot of each original position
        self.n_rounds = n_rounds
        self.chunk_len = chunk_len
        self.n_chunks = perm.shape[-1] // chunk_len
        self.window = window_chunks(self.n_chunks)
        self.causal = causal
        self.dedup = dedup
        self.acc = accum_dtype(dtype)
        self.self_value, self.causal_value = mask_values(self.acc if dtype == torch.float64 else dtype)

    def row_blocks(self):
        """Yield (row slice, bh index per row, perm rows, rank rows, chunks per step)."""
        rows = self.perm.shape[0] * self.n_rounds
        seq_len = self.perm.shape[-1]
        perm_rows = self.perm.reshape(rows, seq_len)
        rank_rows = self.rank.reshape(rows, seq_len)
        per_chunk = self.chunk_len * self.window * self.chunk_len
        budget = SCORE_BLOCK_ELEMENTS.get(self.perm.device.type, SCORE_BLOCK_ELEMENTS["cpu"])
        for r0, r1, step in _row_blocks(rows, self.n_chunks, per_chunk, budget):
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
    return _select_rows(x.reshape(-1, d), (order + offsets).reshape(-1), out, (groups, seq_len, d))


class _RowTable:
    """The D-vectors of a (B, H, N, D) tensor as rows of a 2-d view of its storage, so that a strided
    input (a transposed projection, typically) is gathered from in place instead of copied whole:
    vector (b, h, n) is rows[start[b*H + h] + n * step]."""

    def __init__(self, x: torch.Tensor) -> None:
        batch, heads, _, d = x.shape
        if not _rows_addressable(x):
            x = x.contiguous()
        s_b, s_h, s_n, _ = x.stride()
        n_rows = x.untyped_storage().nbytes() // x.element_size() // d
        self.rows = x.as_strided((n_rows, d), (d, 1), 0)
        starts = (torch.arange(batch, device=x.device).unsqueeze(1) * s_b
                  + torch.arange(heads, device=x.device).unsqueeze(0) * s_h + x.storage_offset())
        self.start = (starts // d).reshape(-1)
        self.step = s_n // d
        self.d = d

    def sorted_rows(self, bh: torch.Tensor, perm: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """(G, N, D) with out[g, s] = x[bh[g], perm[g, s]]: one gather."""
        index = (self.start[bh].unsqueeze(-1) + perm * self.step).reshape(-1)
        return _select_rows(self.rows, index, out, (*perm.shape, self.d))


def _rows_addressable(x: torch.Tensor) -> bool:
    d = x.shape[-1]
    return (x.stride(-1) == 1 and x.storage_offset() % d == 0
            and all(stride % d == 0 and stride > 0 for stride in x.stride()[:-1]))


def _select_rows(rows: torch.Tensor, index: torch.Tensor, out: torch.Tensor | None, shape) -> torch.Tensor:
    if out is None:
        return rows.index_select(0, index).view(shape)
    torch.index_select(rows, 0, index, out=out.view(-1, shape[-1]))
    return out


class _Buffers:
    """Work buffers, allocated once per call and reused by every block of rows.

    Fresh buffers of a long row (16 MiB at 64K tokens x 64 dims) come from the OS on every block
    (glibc maps large blocks anew): first-touch page faults then cost more than the arithmetic.
    Every buffer starts `lead` elements into its storage (impls.compiled needs views that never
    start at storage offset 0, a value dynamo specialises).
    """

    def __init__(self, device, lead: int = 0) -> None:
        self.device, self.lead = device, lead
        self._store: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A contiguous `shape` view of buffer (name, dtype), grown when too small."""
        numel = 1
        for size in shape:
            numel *= size
        key = (name, dtype)
        store = self._store.get(key)
        if store is None or store.numel() < self.lead + numel:
            store = self._store[key] = torch.empty(self.lead + numel, dtype=dtype, device=self.device)
        return store[self.lead:self.lead + numel].view(shape)


def _combine_round_(combined, lse_max, weight_sum, out_r, lse_r) -> None:
    """Fold one round's output and log-sum-exp (original order) into the online combination, in
    place: running max of lse_r, sum of exp(lse_r - max), sum of exp(lse_r - max) o_r.

    A running max, not a running logsumexp: lse values near the -1e5 self mask (a token seeing only
    itself) are spaced ~0.008 apart in fp32, so exp(lse_r - logsumexp) would not sum to 1; weights
    exp(lse_r - max) / sum do."""
    new_max = torch.maximum(lse_max, lse_r)
    rescale = (lse_max - new_max).exp_()
    weight = (lse_r - new_max).exp_()
    combined.mul_(rescale.unsqueeze(-1)).addcmul_(out_r.to(combined.dtype), weight.unsqueeze(-1))
    weight_sum.mul_(rescale).add_(weight)
    lse_max.copy_(new_max)


# F.normalize's floor on the norm: keys are x / max(|x|, eps), so a zero query gives a zero key.
NORM_EPS = 1e-12


def _unit_keys(q_s: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys of a block of sorted rows: the queries at unit length (into out), and the norms."""
    norm = torch.linalg.vector_norm(q_s, dim=-1, keepdim=True).clamp_min_(NORM_EPS)
    return torch.div(q_s, norm, out=out), norm


def _keys_backward_(d_keys: torch.Tensor, keys: torch.Tensor, norm: torch.Tensor,
                    scratch: torch.Tensor) -> torch.Tensor:
    """Gradient through k = q / max(|q|, eps), in place in d_keys: (dk - k (k . dk)) / max(|q|, eps).

    Below the floor this differs from F.normalize's dk / eps only by k (k . dk) with |k| < 1 there;
    for a zero query (k = 0) the two agree exactly."""
    along = torch.mul(keys, d_keys, out=scratch).sum(-1, keepdim=True)
    return d_keys.addcmul_(keys, along, value=-1).div_(norm)


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
        q_rows, v_rows = _RowTable(q), _RowTable(v)
        # The online combination of the rounds (see _combine_round_).
        combined = torch.zeros(bh_rows, seq_len, d, dtype=plan.acc, device=q.device)
        lse_max = torch.full((bh_rows, seq_len), float("-inf"), dtype=plan.acc, device=q.device)
        weight_sum = torch.zeros(bh_rows, seq_len, dtype=plan.acc, device=q.device)
        lse_rounds = torch.empty(bh_rows * plan.n_rounds, seq_len, dtype=plan.acc, device=q.device)
        buffers = _Buffers(q.device)
        for rows, bh, perm, rank, step in plan.row_blocks():
            g = perm.shape[0]
            q_s = q_rows.sorted_rows(bh, perm, out=buffers.get("q", (g, seq_len, d), q.dtype))
            v_s = v_rows.sorted_rows(bh, perm, out=buffers.get("v", (g, seq_len, d), v.dtype))
            # Keys are normalised here, per block, from the sorted queries: no full-size key tensor
            # exists, and the normalisation's gradient is folded into dq in the backward.
            k_s, _ = _unit_keys(q_s, out=buffers.get("k", (g, seq_len, d), q.dtype))
            out_s, lse_s = buffers.get("out", (g, seq_len, d), q.dtype), lse_rounds.new_empty(perm.shape)
            for c0, c1 in plan.steps(step):
                scores, _ = plan.masked_scores(_chunks(q_s, c0, c1, plan.chunk_len), plan.window_of(k_s, c0, c1),
                                               bh, _chunks(perm, c0, c1, plan.chunk_len), plan.window_of(perm, c0, c1))
                row_max = scores.amax(dim=-1, keepdim=True)
                probs = scores.sub_(row_max).exp_()
                row_sum = probs.sum(dim=-1, keepdim=True)
                probs.div_(row_sum)
                span = slice(c0 * plan.chunk_len, c1 * plan.chunk_len)
                out_s[:, span] = _bmm(probs.to(v.dtype), plan.window_of(v_s, c0, c1)).flatten(1, 2)
                lse_s[:, span] = (row_max + row_sum.log()).flatten(1)
            out_rows = _to_sorted(out_s, rank, out=buffers.get("out_rows", (g, seq_len, d), q.dtype))
            lse_rows = _to_sorted(lse_s, rank)
            lse_rounds[rows] = lse_rows
            for i, row_bh in enumerate(bh.tolist()):  # rows are (bh, round) pairs, bh-major
                _combine_round_(combined[row_bh], lse_max[row_bh], weight_sum[row_bh], out_rows[i], lse_rows[i])
        del buffers
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
        q_rows, v_rows, grad_rows = _RowTable(q), _RowTable(v), _RowTable(grad_out)
        # dO . o per (bh, position)
        out_dot = (grad_out.to(plan.acc) * combined.view(grad_out.shape)).sum(-1).reshape(bh_rows, seq_len)
        dq = torch.zeros(bh_rows, seq_len, d, dtype=plan.acc, device=q.device)
        dv = torch.zeros_like(dq)
        buffers = _Buffers(q.device)
        for rows, bh, perm, rank, step in plan.row_blocks():
            g = perm.shape[0]
            q_s = q_rows.sorted_rows(bh, perm, out=buffers.get("q", (g, seq_len, d), q.dtype))
            v_s = v_rows.sorted_rows(bh, perm, out=buffers.get("v", (g, seq_len, d), v.dtype))
            k_s, norm_s = _unit_keys(q_s, out=buffers.get("k", (g, seq_len, d), q.dtype))
            lse_s = _to_sorted(lse_rounds[rows], perm)
            # w_r = exp(lse_r - max) / sum, in sorted order
            weight_s = (lse_s - _to_sorted(lse_max[bh], perm)).exp_().div_(_to_sorted(weight_sum[bh], perm))
            d_out_s = grad_rows.sorted_rows(bh, perm, out=buffers.get("d_out", (g, seq_len, d), grad_out.dtype))
            d_out_s = d_out_s.mul_(weight_s.unsqueeze(-1).to(d_out_s.dtype))
            row_term = _to_sorted(out_dot[bh], perm).mul_(weight_s)  # w_r dO . o
            dq_s, dk_s, dv_s = (buffers.get(name, (g, seq_len, d), plan.acc).zero_() for name in ("dq", "dk", "dv"))
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
            dq_s += _keys_backward_(dk_s, k_s.to(plan.acc), norm_s.to(plan.acc),
                                    scratch=buffers.get("scratch", (g, seq_len, d), plan.acc))
            for acc, grads_s in ((dq, dq_s), (dv, dv_s)):
                acc.index_add_(0, bh, _to_sorted(grads_s, rank, out=buffers.get("orig", (g, seq_len, d), plan.acc)))
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
                 cfg.n_hashes, order.chunk_len, cfg.causal, cfg.dedup, qk.dtype)
    # qk and v go in as they are (a transposed projection is gathered from in place, not copied).
    return _ChunkedLSHAttention.apply(qk, v, plan)


class EagerBackend:
    name = "eager"
    kind = "lsh"

    def available(self) -> tuple[bool, str]:
        return True, ""

    def attend(self, qk: torch.Tensor, v: torch.Tensor, cfg: LSHConfig,
               buckets: torch.Tensor | None = None) -> torch.Tensor:
        return lsh_attention(qk, v, cfg, buckets=buckets)
