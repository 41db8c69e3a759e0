"""A deliberately naive, loop-per-query implementation of the LSH attention contract.

It shares only the hashing with the backends (hash_buckets is tested against its argmax definition
separately) and rebuilds sorting, windows, masks, dedup counts and round combining from docs/DESIGN.md's
words, so a backend that matches it matches the contract, not itself.
"""
from __future__ import annotations

import math

import torch

from impls import LSHConfig
from impls.lsh import hash_buckets


def windows_per_round(buckets_bh: torch.Tensor, chunk_len: int) -> list[list[list[int]]]:
    """For one (batch, head): windows[r][i] = original positions query i sees in round r."""
    n_rounds, seq_len = buckets_bh.shape
    n_chunks = seq_len // chunk_len
    windows = []
    for r in range(n_rounds):
        order = sorted(range(seq_len), key=lambda p: (int(buckets_bh[r, p]), p))
        slot_of = {p: s for s, p in enumerate(order)}
        chunks = [order[c * chunk_len:(c + 1) * chunk_len] for c in range(n_chunks)]
        round_windows = []
        for i in range(seq_len):
            c = slot_of[i] // chunk_len
            seen = list(chunks[c])
            if n_chunks > 1:
                seen += chunks[(c - 1) % n_chunks]
            round_windows.append(seen)
        windows.append(round_windows)
    return windows


def reference_lsh_attention(qk: torch.Tensor, v: torch.Tensor, cfg: LSHConfig) -> torch.Tensor:
    batch, heads, seq_len, _ = qk.shape
    chunk_len = cfg.resolve_chunk_len(seq_len)
    buckets = hash_buckets(qk, cfg)
    keys = qk / qk.norm(dim=-1, keepdim=True)
    out = torch.zeros_like(v)
    for b in range(batch):
        for h in range(heads):
            windows = windows_per_round(buckets[b, h], chunk_len)
            for i in range(seq_len):
                outs, lses = [], []
                for r in range(cfg.n_hashes):
                    scores = []
                    for j in windows[r][i]:
                        s = qk[b, h, i] @ keys[b, h, j]
                        if j == i:
                            s = torch.full_like(s, -1e5)
                        if cfg.causal and j > i:
                            s = torch.full_like(s, -1e9)
                        if cfg.dedup:
                            n_ij = sum(j in windows[rr][i] for rr in range(cfg.n_hashes))
                            s = s - math.log(n_ij)
                        scores.append(s)
                    scores = torch.stack(scores)
                    lse = torch.logsumexp(scores, 0)
                    probs = torch.exp(scores - lse)
                    outs.append(probs @ v[b, h, windows[r][i]])
                    lses.append(lse)
                weights = torch.softmax(torch.stack(lses), 0)
                out[b, h, i] = (weights[:, None] * torch.stack(outs)).sum(0)
    return out
