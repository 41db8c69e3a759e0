"""harness.measure.fidelity: relative error and the attention mass that LSH windows recall."""
from __future__ import annotations

import pytest
import torch

from harness.measure.fidelity import attention_mass_recall, relative_error
from impls import LSHConfig, get_backend
from impls.lsh import hash_buckets, sort_by_buckets


def qk_of(batch=1, heads=2, seq_len=128, d_head=16, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(batch, heads, seq_len, d_head, generator=gen)


def test_relative_error():
    ref = torch.tensor([[3.0, 4.0]])
    assert relative_error(ref, ref) == 0.0
    assert relative_error(torch.tensor([[3.0, 5.0]]), ref) == pytest.approx(1 / 5)
    with pytest.raises(ValueError, match="shape"):
        relative_error(torch.zeros(2), torch.zeros(3))


@pytest.mark.parametrize("causal", [False, True])
def test_exact_regime_recalls_everything(causal):
    # Two chunks per round: every query's window is the whole sequence.
    qk = qk_of(seq_len=128)
    cfg = LSHConfig(n_buckets=4, n_hashes=1, chunk_len=64, causal=causal)
    assert attention_mass_recall(qk, cfg) == pytest.approx(1.0, abs=1e-9)
    v = qk_of(seed=1)
    out = get_backend("eager").attend(qk, v, cfg)
    assert relative_error(out, get_backend("dense").attend(qk, v, cfg)) < 1e-5


def brute_force_recall(qk, cfg):
    """Window sets built slot by slot from the sorted permutation, then summed dense probabilities."""
    batch, heads, seq_len, _ = qk.shape
    chunk_len = cfg.resolve_chunk_len(seq_len)
    n_chunks = seq_len // chunk_len
    perm = sort_by_buckets(hash_buckets(qk, cfg), chunk_len).perm
    x = qk.double()
    keys = torch.nn.functional.normalize(x, dim=-1)
    total = 0.0
    for b in range(batch):
        for h in range(heads):
            scores = x[b, h] @ keys[b, h].T
            scores.fill_diagonal_(-1e5)
            if cfg.causal:
                scores.masked_fill_(torch.ones(seq_len, seq_len).triu(1).bool(), -1e9)
            probs = torch.softmax(scores, -1)
            for i in range(seq_len):
                window = set()
                for r in range(cfg.n_hashes):
                    slot = int((perm[b, h, r] == i).nonzero())
                    for c in {slot // chunk_len, (slot // chunk_len - 1) % n_chunks}:
                        window.update(perm[b, h, r, c * chunk_len:(c + 1) * chunk_len].tolist())
                total += float(probs[i, sorted(window)].sum())
    return total / (batch * heads * seq_len)


@pytest.mark.parametrize("n_hashes, causal", [(1, False), (3, False), (2, True)])
def test_recall_matches_brute_force(n_hashes, causal):
    qk = qk_of(batch=1, heads=2, seq_len=64, d_head=8, scale=3.0)  # peaked attention
    cfg = LSHConfig(n_buckets=8, n_hashes=n_hashes, chunk_len=8, causal=causal)
    recall = attention_mass_recall(qk, cfg)
    assert 0.0 < recall < 1.0
    assert recall == pytest.approx(brute_force_recall(qk, cfg), abs=1e-9)


def test_more_rounds_recall_more():
    # Rounds are unions of windows: with peaked attention many rounds approach full recall.
    qk = qk_of(seq_len=256, d_head=16, scale=4.0)
    one, eight = (attention_mass_recall(qk, LSHConfig(n_buckets=16, n_hashes=r, chunk_len=16)) for r in (1, 8))
    assert one < eight
