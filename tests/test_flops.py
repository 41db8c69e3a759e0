"""harness.measure.flops: the analytic formulas agree with FlopCounterMode's matmul count."""
from __future__ import annotations

import pytest
import torch

from harness.measure.flops import counted_flops, dense_attention_flops, lsh_attention_flops
from impls import LSHConfig, get_backend


def inputs(batch, heads, seq_len, d_head, grad=False):
    gen = torch.Generator().manual_seed(0)
    qk = torch.randn(batch, heads, seq_len, d_head, generator=gen).requires_grad_(grad)
    v = torch.randn(batch, heads, seq_len, d_head, generator=gen).requires_grad_(grad)
    return qk, v


@pytest.mark.parametrize("batch, heads, seq_len, d_head, n_buckets, n_hashes, chunk_len, causal", [
    (1, 2, 256, 32, 16, 2, 32, False),
    (2, 1, 512, 16, 8, 4, 128, True),
    (1, 3, 128, 8, 4, 1, 64, False),   # two chunks: the exact regime
    (1, 1, 64, 16, 2, 3, 64, False),   # one chunk per round: the window is the chunk alone (W = 1)
])
def test_lsh_forward_matches_counted(batch, heads, seq_len, d_head, n_buckets, n_hashes, chunk_len, causal):
    qk, v = inputs(batch, heads, seq_len, d_head)
    cfg = LSHConfig(n_buckets=n_buckets, n_hashes=n_hashes, chunk_len=chunk_len, causal=causal)
    eager = get_backend("eager")
    with torch.no_grad():
        counted = counted_flops(lambda: eager.attend(qk, v, cfg))
    assert counted == lsh_attention_flops(batch, heads, seq_len, d_head, n_buckets, n_hashes, chunk_len)


def test_lsh_backward_counts_the_documented_recompute():
    batch, heads, seq_len, d_head, n_buckets, n_hashes, chunk_len = 1, 2, 256, 16, 16, 2, 32
    qk, v = inputs(batch, heads, seq_len, d_head, grad=True)
    cfg = LSHConfig(n_buckets=n_buckets, n_hashes=n_hashes, chunk_len=chunk_len)
    eager = get_backend("eager")
    counted = counted_flops(lambda: eager.attend(qk, v, cfg).sum().backward())
    analytic = lsh_attention_flops(batch, heads, seq_len, d_head, n_buckets, n_hashes, chunk_len, backward=True)
    recompute_qk = 2 * batch * heads * seq_len * (2 * chunk_len) * d_head * n_hashes
    assert counted == analytic + recompute_qk


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("backward", [False, True])
def test_dense_matches_counted(causal, backward):
    batch, heads, seq_len, d_head = 2, 3, 96, 16
    qk, v = inputs(batch, heads, seq_len, d_head, grad=backward)
    dense = get_backend("dense")
    cfg = LSHConfig(causal=causal)
    if backward:
        counted = counted_flops(lambda: dense.attend(qk, v, cfg).sum().backward())
    else:
        with torch.no_grad():
            counted = counted_flops(lambda: dense.attend(qk, v, cfg))
    assert counted == dense_attention_flops(batch, heads, seq_len, d_head, backward=backward)


def test_formulas_scale_as_stated():
    # LSH attention is linear in seq_len at a fixed chunk length; dense is quadratic.
    lsh = [lsh_attention_flops(1, 1, n, 64, 2 * n // 64, 4, 64) - 2 * n * 64 * 4 * (n // 64)
           for n in (1024, 2048)]
    assert lsh[1] == 2 * lsh[0]
    assert dense_attention_flops(1, 1, 2048, 64) == 4 * dense_attention_flops(1, 1, 1024, 64)


def test_analytic_flops_follow_the_bucket_count_a_backend_really_uses():
    from pathlib import Path

    from harness.measure.flops import analytic_flops
    from harness.suite import expand_suite

    suite = {"suite": {"name": "t"}, "defaults": {"backend": "eager", "seq_len": 1024, "heads": 2, "d_head": 16,
                                                  "chunk_len": 32, "n_hashes": 2}}
    case = expand_suite(suite, Path("t.toml")).cases[0]
    assert case.n_buckets == 64  # "auto": 2 * seq / chunk_len
    as_asked = analytic_flops(case)
    as_used = analytic_flops(case, n_buckets=32)  # reformer-pytorch: seq / chunk_len
    hashing = lsh_attention_flops(1, 2, 1024, 16, 64, 2, 32) - lsh_attention_flops(1, 2, 1024, 16, 32, 2, 32)
    assert as_asked - as_used == hashing == 2 * 1024 * 2 * 16 * 2 * 16
