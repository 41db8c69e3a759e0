"""Triton kernels of the `triton` backend: chunked LSH attention over the (round, bucket)-sorted order.

Hashing and sorting happen in torch (impls.lsh); these kernels receive, per (batch x head) row,
  qk, v        (BH, N, D)  in original order (any strides),
  perm         (BH, R, N)  int32, the original position at every sorted slot of every round,
  chunk_ids    (BH, R, N)  int32, sorted slot // chunk_len of every original position (dedup only),
and gather rows through perm inside the kernel, so no sorted copy of q, k or v is ever built.

One launch per hash round. A program owns BLOCK_M consecutive sorted slots of one chunk c of that
round (all of it when chunk_len <= BLOCK_M): its queries attend to the keys of chunk c and of chunk
c-1 (circular; only chunk c when a round is one chunk), read BLOCK_N keys at a time with an online
softmax. Keys are the queries normalised in-kernel, k = q / max(||q||, 1e-12) (F.normalize), so
only qk is read and no key tensor is stored.

Rounds are combined as one softmax. With L_i = logsumexp_r lse_r,i the contract's output is
    o_i = sum_r exp(lse_r,i - L_i) o_r,i = sum_r sum_{j in window_r(i)} exp(s_ij - L_i) v_j,
so the forward keeps a running (o, L) per position across the round launches (an online softmax
over rounds; a position is owned by exactly one program per round, so there are no races), and
the backward needs only L and Delta_i = g_i . o_i (g = dLoss/do), as in flash attention:
    p_ij = exp(s_ij - L_i), dS_ij = p_ij (g_i . v_j - Delta_i)   (0 where s_ij is a mask constant),
    dq_i = sum_j dS_ij k_j, dk_j = sum_i dS_ij q_i, dv_j = sum_i p_ij g_i.
The backward program of a slot block computes dk, dv for its keys (query chunks c, c+1), sends dk
through the normalisation, then adds dq for its queries (key chunks c, c-1):
    dqk = dq + (dk - k (k . dk)) / max(||q||, eps),
and adds dqk and dv into the gradients: R read-modify-writes per position, no atomics.

The running output and gradients are stored in the input dtype between round launches. For bf16 /
fp16 that rounds each position's running sum R times instead of once; fp32 accumulators would
instead add 4 B H N D bytes per tensor, i.e. double (bf16) the memory of output and gradients, and
the memory bound of the fused kernel is the point of it.

L_i is kept as two fp32 numbers, the running max score M_i and log S_i = log sum exp(s - M_i), and
p = exp((s - M) - log S): where every score of a row is a mask constant (|s| = 1e5, where fp32 is
spaced 0.008 apart) a single fp32 L would put the probabilities off by up to 0.4%.

Triton reads TRITON_INTERPRET when @triton.jit runs, i.e. when this module is first imported;
INTERPRETED records which way the kernels were built.
"""
from __future__ import annotations

import os

import triton
import triton.language as tl

# triton.knobs (Triton >= 3.4) reads the variable as Triton's decorator does; older releases read it
# from the environment directly.
_KNOBS = getattr(triton, "knobs", None)
INTERPRETED: bool = (bool(_KNOBS.runtime.interpret) if _KNOBS is not None
                     else os.environ.get("TRITON_INTERPRET", "0") == "1")

# Integer arguments Triton must not specialise: it compiles a value of 1 as a constant and one
# divisible by 16 with an alignment hint, so the round index (0, 1, 2, ...) would compile three
# versions of each round kernel per configuration, n_rounds one for a single round and one for
# several, and n_chunks up to three per chunk length as the sequence length changes. None of the
# hints helps: round_idx and n_rounds only multiply seq_len, which keeps its own, and n_chunks never
# offsets a pointer.
_RUNTIME_INTS = ["round_idx", "n_rounds", "n_chunks"]


@triton.jit
def _load_rows(base, pos, stride_n, stride_d, offs_d, row_ok, d_ok):
    """Rows `pos` of an (N, D) matrix (any strides); padding rows and columns read as 0."""
    ptrs = base + pos[:, None] * stride_n + offs_d[None, :] * stride_d
    return tl.load(ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)


@triton.jit
def _unit_rows(x):
    """(x / max(||x||, eps) in fp32, 1 / max(||x||, eps), ||x|| > eps) row-wise; eps = 1e-12 as in
    F.normalize."""
    xf = x.to(tl.float32)
    norm = tl.sqrt(tl.sum(xf * xf, 1))
    inv_norm = 1.0 / tl.maximum(norm, 1e-12)
    return xf * inv_norm[:, None], inv_norm, norm > 1e-12


@triton.jit
def _slots(perm_round, chunk, start, offs, CHUNK: tl.constexpr):
    """Original positions at sorted slots chunk * CHUNK + start + offs, and which are in the chunk."""
    ok = start + offs < CHUNK
    pos = tl.load(perm_round + chunk * CHUNK + start + offs, mask=ok, other=0).to(tl.int64)
    return pos, ok


@triton.jit
def _window_counts(cid_bh, q_pos, k_pos, q_ok, k_ok, seq_len, n_rounds, n_chunks, WINDOW: tl.constexpr):
    """N_ij: in how many rounds key j lies in query i's window (chunk of i, or the one before it).
    Clamped to >= 1 so that padding entries stay finite under log()."""
    counts = tl.zeros([q_pos.shape[0], k_pos.shape[0]], dtype=tl.int32)
    for r in range(n_rounds):
        q_chunk = tl.load(cid_bh + r * seq_len + q_pos, mask=q_ok, other=0)
        k_chunk = tl.load(cid_bh + r * seq_len + k_pos, mask=k_ok, other=0)
        hit = k_chunk[None, :] == q_chunk[:, None]
        if WINDOW == 2:
            hit = hit | (k_chunk[None, :] == ((q_chunk + n_chunks - 1) % n_chunks)[:, None])
        counts += hit.to(tl.int32)
    return tl.maximum(counts, 1)


@triton.jit
def _masked_scores(q, k, q_pos, k_pos, q_ok, k_ok, cid_bh, seq_len, n_rounds, n_chunks,
                   self_value, causal_value,
                   WINDOW: tl.constexpr, CAUSAL: tl.constexpr, DEDUP: tl.constexpr,
                   DOT_PRECISION: tl.constexpr):
    """fp32 scores q k^T with the contract's masks in eager's order (self, causal, then - log N_ij);
    padding keys get -inf. Also returns where a mask constant replaced the score (zero gradient)."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    masked = q_pos[:, None] == k_pos[None, :]
    s = tl.where(masked, self_value, s)
    if CAUSAL:
        future = k_pos[None, :] > q_pos[:, None]
        s = tl.where(future, causal_value, s)
        masked = masked | future
    if DEDUP:
        counts = _window_counts(cid_bh, q_pos, k_pos, q_ok, k_ok, seq_len, n_rounds, n_chunks, WINDOW)
        s = s - tl.log(counts.to(tl.float32))
    s = tl.where(k_ok[None, :], s, float("-inf"))
    return s, masked


@triton.jit
def _attend_chunk(acc, m_i, l_i, q, q_pos, q_ok, key_chunk, perm_round, qk_bh, v_bh,
                  stride_qn, stride_qd, stride_vn, stride_vd, offs_d, d_ok,
                  cid_bh, seq_len, n_rounds, n_chunks, self_value, causal_value,
                  CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, WINDOW: tl.constexpr, CAUSAL: tl.constexpr,
                  DEDUP: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Fold the keys of one chunk into the online softmax (acc, running max m_i, running sum l_i)."""
    offs_n = tl.arange(0, BLOCK_N)
    for start in range(0, CHUNK, BLOCK_N):
        k_pos, k_ok = _slots(perm_round, key_chunk, start, offs_n, CHUNK)
        k, _, _ = _unit_rows(_load_rows(qk_bh, k_pos, stride_qn, stride_qd, offs_d, k_ok, d_ok))
        v = _load_rows(v_bh, k_pos, stride_vn, stride_vd, offs_d, k_ok, d_ok)
        s, _ = _masked_scores(q, k.to(q.dtype), q_pos, k_pos, q_ok, k_ok, cid_bh, seq_len, n_rounds,
                              n_chunks, self_value, causal_value, WINDOW, CAUSAL, DEDUP, DOT_PRECISION)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def lsh_forward_round(
    QK, V, PERM, CHUNK_IDS, OUT, ROW_MAX, ROW_LOGSUM,
    stride_qb, stride_qn, stride_qd, stride_vb, stride_vn, stride_vd,
    round_idx, seq_len, n_rounds, n_chunks, self_value, causal_value,
    HEAD_DIM: tl.constexpr, CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, WINDOW: tl.constexpr, CAUSAL: tl.constexpr, DEDUP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Round `round_idx`; program_id(0) = chunk * cdiv(CHUNK, BLOCK_M) + block, program_id(1) = row.
    Attends, then folds the round into the running output: OUT ((BH, N, D), normalised) and
    ROW_MAX, ROW_LOGSUM (fp32 (BH, N)) hold the combination of the rounds so far."""
    blocks_per_chunk: tl.constexpr = (CHUNK + BLOCK_M - 1) // BLOCK_M
    chunk = tl.program_id(0) // blocks_per_chunk
    start = (tl.program_id(0) % blocks_per_chunk) * BLOCK_M
    bh = tl.program_id(1).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    perm_round = PERM + (bh * n_rounds + round_idx) * seq_len
    cid_bh = CHUNK_IDS + bh * n_rounds * seq_len
    qk_bh = QK + bh * stride_qb
    v_bh = V + bh * stride_vb

    q_pos, q_ok = _slots(perm_round, chunk, start, tl.arange(0, BLOCK_M), CHUNK)
    q = _load_rows(qk_bh, q_pos, stride_qn, stride_qd, offs_d, q_ok, d_ok)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc, m_i, l_i = _attend_chunk(acc, m_i, l_i, q, q_pos, q_ok, chunk, perm_round, qk_bh, v_bh,
                                  stride_qn, stride_qd, stride_vn, stride_vd, offs_d, d_ok,
                                  cid_bh, seq_len, n_rounds, n_chunks, self_value, causal_value,
                                  CHUNK, BLOCK_N, WINDOW, CAUSAL, DEDUP, DOT_PRECISION)
    if WINDOW == 2:
        acc, m_i, l_i = _attend_chunk(acc, m_i, l_i, q, q_pos, q_ok, (chunk + n_chunks - 1) % n_chunks,
                                      perm_round, qk_bh, v_bh,
                                      stride_qn, stride_qd, stride_vn, stride_vd, offs_d, d_ok,
                                      cid_bh, seq_len, n_rounds, n_chunks, self_value, causal_value,
                                      CHUNK, BLOCK_N, WINDOW, CAUSAL, DEDUP, DOT_PRECISION)
    o = acc / l_i[:, None]
    logsum = tl.log(l_i)

    row = bh * seq_len + q_pos
    tile = row[:, None] * HEAD_DIM + offs_d[None, :]
    tile_ok = q_ok[:, None] & d_ok[None, :]
    if round_idx != 0:
        m_old = tl.load(ROW_MAX + row, mask=q_ok, other=0.0)
        weight_old = tl.exp(m_old - tl.maximum(m_old, m_i) + tl.load(ROW_LOGSUM + row, mask=q_ok, other=0.0))
        scale_new = tl.exp(m_i - tl.maximum(m_old, m_i))
        total = weight_old + l_i * scale_new
        o_old = tl.load(OUT + tile, mask=tile_ok, other=0.0).to(tl.float32)
        o = (o_old * weight_old[:, None] + acc * scale_new[:, None]) / total[:, None]
        logsum = tl.log(total)
        m_i = tl.maximum(m_old, m_i)
    tl.store(ROW_MAX + row, m_i, mask=q_ok)
    tl.store(ROW_LOGSUM + row, logsum, mask=q_ok)
    tl.store(OUT + tile, o.to(OUT.dtype.element_ty), mask=tile_ok)


@triton.jit
def output_grad_dot(G, OUT, DELTA, stride_gb, stride_gn, stride_gd, seq_len,
                    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Delta_i = g_i . o_i in fp32 for BLOCK_N positions of row program_id(1); OUT is contiguous."""
    bh = tl.program_id(1).to(tl.int64)
    # int64: pos * stride_gn passes 2^31 for a sequence-major gradient (stride heads x d_head) at 1M tokens.
    pos = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    ok = pos < seq_len
    d_ok = offs_d < HEAD_DIM
    g = _load_rows(G + bh * stride_gb, pos, stride_gn, stride_gd, offs_d, ok, d_ok).to(tl.float32)
    o = _load_rows(OUT + bh * seq_len * HEAD_DIM, pos, HEAD_DIM, 1, offs_d, ok, d_ok).to(tl.float32)
    tl.store(DELTA + bh * seq_len + pos, tl.sum(g * o, 1), mask=ok)


@triton.jit
def _grad_block(q, k, v, g, row_max, row_logsum, delta, q_pos, k_pos, q_ok, k_ok, cid_bh, seq_len, n_rounds,
                n_chunks, self_value, causal_value,
                WINDOW: tl.constexpr, CAUSAL: tl.constexpr, DEDUP: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Recomputed probabilities p (padding zeroed) and score gradients dS (zero where masked)."""
    s, masked = _masked_scores(q, k, q_pos, k_pos, q_ok, k_ok, cid_bh, seq_len, n_rounds, n_chunks,
                               self_value, causal_value, WINDOW, CAUSAL, DEDUP, DOT_PRECISION)
    valid = q_ok[:, None] & k_ok[None, :]
    p = tl.where(valid, tl.exp((s - row_max[:, None]) - row_logsum[:, None]), 0.0)
    dp = tl.dot(g, tl.trans(v), input_precision=DOT_PRECISION)
    ds = tl.where(valid & (masked == 0), p * (dp - delta[:, None]), 0.0)
    return p, ds


@triton.jit
def _query_grad_chunk(dq, q, g, row_max, row_logsum, delta, q_pos, q_ok, key_chunk, perm_round, qk_bh, v_bh,
                      stride_qn, stride_qd, stride_vn, stride_vd, offs_d, d_ok,
                      cid_bh, seq_len, n_rounds, n_chunks, self_value, causal_value,
                      CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, WINDOW: tl.constexpr,
                      CAUSAL: tl.constexpr, DEDUP: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """dq += dS k over the keys of one chunk."""
    offs_n = tl.arange(0, BLOCK_N)
    for start in range(0, CHUNK, BLOCK_N):
        k_pos, k_ok = _slots(perm_round, key_chunk, start, offs_n, CHUNK)
        k, _, _ = _unit_rows(_load_rows(qk_bh, k_pos, stride_qn, stride_qd, offs_d, k_ok, d_ok))
        k = k.to(q.dtype)
        v = _load_rows(v_bh, k_pos, stride_vn, stride_vd, offs_d, k_ok, d_ok)
        _, ds = _grad_block(q, k, v, g, row_max, row_logsum, delta, q_pos, k_pos, q_ok, k_ok, cid_bh, seq_len,
                            n_rounds, n_chunks, self_value, causal_value, WINDOW, CAUSAL, DEDUP, DOT_PRECISION)
        dq += tl.dot(ds.to(q.dtype), k, input_precision=DOT_PRECISION)
    return dq


@triton.jit
def _key_grad_chunk(dk, dv, k, v, k_pos, k_ok, query_chunk, perm_round, qk_bh, g_bh, max_bh, logsum_bh,
                    delta_bh, stride_qn, stride_qd, stride_gn, stride_gd, offs_d, d_ok,
                    cid_bh, seq_len, n_rounds, n_chunks, self_value, causal_value,
                    CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, WINDOW: tl.constexpr,
                    CAUSAL: tl.constexpr, DEDUP: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """dk += dS^T q and dv += p^T g over the queries of one chunk."""
    offs_n = tl.arange(0, BLOCK_N)
    for start in range(0, CHUNK, BLOCK_N):
        q_pos, q_ok = _slots(perm_round, query_chunk, start, offs_n, CHUNK)
        q = _load_rows(qk_bh, q_pos, stride_qn, stride_qd, offs_d, q_ok, d_ok)
        g = _load_rows(g_bh, q_pos, stride_gn, stride_gd, offs_d, q_ok, d_ok)
        row_max = tl.load(max_bh + q_pos, mask=q_ok, other=0.0)
        row_logsum = tl.load(logsum_bh + q_pos, mask=q_ok, other=0.0)
        delta = tl.load(delta_bh + q_pos, mask=q_ok, other=0.0)
        p, ds = _grad_block(q, k, v, g, row_max, row_logsum, delta, q_pos, k_pos, q_ok, k_ok, cid_bh, seq_len,
                            n_rounds, n_chunks, self_value, causal_value, WINDOW, CAUSAL, DEDUP, DOT_PRECISION)
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION)
        dv += tl.dot(tl.trans(p.to(g.dtype)), g, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def _accumulate(X, tile, tile_ok, x, round_idx):
    """X[tile] += x across the round launches (stored in X's dtype), X[tile] = x in the first."""
    if round_idx != 0:
        x += tl.load(X + tile, mask=tile_ok, other=0.0).to(tl.float32)
    tl.store(X + tile, x.to(X.dtype.element_ty), mask=tile_ok)


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def lsh_backward_round(
    QK, V, G, PERM, CHUNK_IDS, ROW_MAX, ROW_LOGSUM, DELTA, DQK, DV,
    stride_qb, stride_qn, stride_qd, stride_vb, stride_vn, stride_vd, stride_gb, stride_gn, stride_gd,
    round_idx, seq_len, n_rounds, n_chunks, self_value, causal_value,
    HEAD_DIM: tl.constexpr, CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, WINDOW: tl.constexpr, CAUSAL: tl.constexpr, DEDUP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Round `round_idx`, programs as in lsh_forward_round: gradients of the block's positions as
    queries (dq) and as keys (dk, dv), added to DQK and DV."""
    blocks_per_chunk: tl.constexpr = (CHUNK + BLOCK_M - 1) // BLOCK_M
    chunk = tl.program_id(0) // blocks_per_chunk
    start = (tl.program_id(0) % blocks_per_chunk) * BLOCK_M
    bh = tl.program_id(1).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    perm_round = PERM + (bh * n_rounds + round_idx) * seq_len
    cid_bh = CHUNK_IDS + bh * n_rounds * seq_len
    qk_bh = QK + bh * stride_qb
    v_bh = V + bh * stride_vb
    g_bh = G + bh * stride_gb
    max_bh = ROW_MAX + bh * seq_len
    logsum_bh = ROW_LOGSUM + bh * seq_len
    delta_bh = DELTA + bh * seq_len

    pos, ok = _slots(perm_round, chunk, start, tl.arange(0, BLOCK_M), CHUNK)
    q = _load_rows(qk_bh, pos, stride_qn, stride_qd, offs_d, ok, d_ok)
    k, inv_norm, normalised = _unit_rows(q)
    k = k.to(q.dtype)
    v = _load_rows(v_bh, pos, stride_vn, stride_vd, offs_d, ok, d_ok)
    g = _load_rows(g_bh, pos, stride_gn, stride_gd, offs_d, ok, d_ok)
    row_max = tl.load(max_bh + pos, mask=ok, other=0.0)
    row_logsum = tl.load(logsum_bh + pos, mask=ok, other=0.0)
    delta = tl.load(delta_bh + pos, mask=ok, other=0.0)

    # As keys: the queries of this chunk and of the next one (whose window holds this chunk).
    dk = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    dk, dv = _key_grad_chunk(dk, dv, k, v, pos, ok, chunk, perm_round, qk_bh, g_bh, max_bh, logsum_bh,
                             delta_bh, stride_qn, stride_qd, stride_gn, stride_gd, offs_d, d_ok,
                             cid_bh, seq_len, n_rounds, n_chunks, self_value, causal_value,
                             CHUNK, BLOCK_N, WINDOW, CAUSAL, DEDUP, DOT_PRECISION)
    if WINDOW == 2:
        dk, dv = _key_grad_chunk(dk, dv, k, v, pos, ok, (chunk + 1) % n_chunks, perm_round, qk_bh, g_bh,
                                 max_bh, logsum_bh, delta_bh, stride_qn, stride_qd, stride_gn, stride_gd,
                                 offs_d, d_ok, cid_bh, seq_len, n_rounds, n_chunks, self_value, causal_value,
                                 CHUNK, BLOCK_N, WINDOW, CAUSAL, DEDUP, DOT_PRECISION)
    tile = (bh * seq_len + pos)[:, None] * HEAD_DIM + offs_d[None, :]
    tile_ok = ok[:, None] & d_ok[None, :]
    _accumulate(DV, tile, tile_ok, dv, round_idx)
    # Through k = q / max(||q||, eps): d qk = (dk - k (k . dk)) / max(||q||, eps), where the
    # projection vanishes if the norm is clamped (k is then q / eps, a linear map). Taken before the
    # query pass, and dv stored before it, so that at most two fp32 accumulators are live at a time
    # (fewer register spills).
    k_f32 = q.to(tl.float32) * inv_norm[:, None]
    radial = tl.where(normalised, tl.sum(k_f32 * dk, 1), 0.0)
    dqk = (dk - k_f32 * radial[:, None]) * inv_norm[:, None]
    # As queries: the keys of this chunk and of the previous one.
    dqk = _query_grad_chunk(dqk, q, g, row_max, row_logsum, delta, pos, ok, chunk, perm_round, qk_bh, v_bh,
                            stride_qn, stride_qd, stride_vn, stride_vd, offs_d, d_ok,
                            cid_bh, seq_len, n_rounds, n_chunks, self_value, causal_value,
                            CHUNK, BLOCK_N, WINDOW, CAUSAL, DEDUP, DOT_PRECISION)
    if WINDOW == 2:
        dqk = _query_grad_chunk(dqk, q, g, row_max, row_logsum, delta, pos, ok,
                                (chunk + n_chunks - 1) % n_chunks, perm_round, qk_bh, v_bh,
                                stride_qn, stride_qd, stride_vn, stride_vd, offs_d, d_ok,
                                cid_bh, seq_len, n_rounds, n_chunks, self_value, causal_value,
                                CHUNK, BLOCK_N, WINDOW, CAUSAL, DEDUP, DOT_PRECISION)

    _accumulate(DQK, tile, tile_ok, dqk, round_idx)
