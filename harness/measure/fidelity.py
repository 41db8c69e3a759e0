"""Fidelity of an LSH output against exact dense shared-QK attention on the same inputs.

rel_error        = ||out - dense|| / ||dense||   (Frobenius norms over the whole tensor, in float64)
attn_mass_recall = mean over queries i of  sum_{j in S_i} P_ij, where P is the exact dense attention
                   (the contract: unit-normalised keys, unscaled scores, self and causal masks) and S_i
                   is the union over hash rounds of the keys in i's LSH window (its sorted chunk and
                   the previous one, circularly within the round, as impls/eager.py attends). 1.0 means
                   LSH attends to every key that carries dense attention mass.
Both build seq x seq scores, so the harness calls them only when the dense reference fits
(fidelity_max_seq_len in the suite).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# Queries per block when building dense probabilities: bounds the block to QUERY_BLOCK x seq floats.
QUERY_BLOCK = 1024


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    """||out - reference|| / ||reference|| in float64 (Frobenius norm over all elements)."""
    if out.shape != reference.shape:
        raise ValueError(f"out.shape={tuple(out.shape)} does not match reference.shape={tuple(reference.shape)}")
    ref = reference.detach().double()
    return float((out.detach().double() - ref).norm() / ref.norm())


def attention_mass_recall(qk: torch.Tensor, cfg) -> float:
    """Mean over queries of the dense attention mass on keys that some LSH round's window contains.

    qk: (batch, heads, seq, d_head); cfg: impls.LSHConfig (hashing, chunk length, causal flag).
    """
    from impls.lsh import hash_buckets, mask_values, sort_by_buckets, window_chunks

    batch, heads, seq_len, _ = qk.shape
    chunk_len = cfg.resolve_chunk_len(seq_len)
    n_chunks = seq_len // chunk_len
    two_chunks = window_chunks(n_chunks) == 2
    order = sort_by_buckets(hash_buckets(qk, cfg), chunk_len)
    chunk_of = order.rank // chunk_len  # (B, H, R, N): chunk of every original position per round
    x = qk.detach().double()
    keys = F.normalize(x, p=2.0, dim=-1)
    self_value, causal_value = mask_values(torch.float64)
    positions = torch.arange(seq_len, device=qk.device)
    total = 0.0
    for b in range(batch):
        for h in range(heads):
            for q0 in range(0, seq_len, QUERY_BLOCK):
                q1 = min(seq_len, q0 + QUERY_BLOCK)
                scores = x[b, h, q0:q1] @ keys[b, h].T
                q_pos = positions[q0:q1, None]
                scores.masked_fill_(q_pos == positions[None, :], self_value)
                if cfg.causal:
                    scores.masked_fill_(positions[None, :] > q_pos, causal_value)
                probs = torch.softmax(scores, dim=-1)
                q_chunk = chunk_of[b, h, :, q0:q1].unsqueeze(-1)  # (R, Q, 1)
                k_chunk = chunk_of[b, h].unsqueeze(-2)  # (R, 1, N)
                in_window = k_chunk == q_chunk
                if two_chunks:
                    in_window |= k_chunk == (q_chunk - 1) % n_chunks
                total += float((probs * in_window.any(dim=0)).sum())
    return total / (batch * heads * seq_len)
