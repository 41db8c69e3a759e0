"""The `compiled` backend: same function and gradients as `eager`, one compile across a sweep, and
fallbacks to uncompiled code recorded, never hidden.

Compiles take tens of seconds on a small CPU, so every test shares the registry's one backend
instance (dynamo caches the compiled kernels per backend) and the sizes are tiny.
"""
import pytest
import torch

import impls.blocked as blocked_module
import impls.compiled as compiled_module
from impls import LSHConfig, get_backend
from impls.lsh import hash_buckets

# torch.compile compilations: seconds each on a CPU.
pytestmark = pytest.mark.slow

HEADS, D_HEAD, CHUNK_LEN, N_BUCKETS = 2, 16, 16, 8


@pytest.fixture(scope="module")
def backend():
    be = get_backend("compiled")
    ok, reason = be.available()
    assert ok, reason
    return be


def _inputs(seq_len: int, dtype=torch.float32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    qk = torch.randn(1, HEADS, seq_len, D_HEAD, generator=gen, dtype=dtype)
    v = torch.randn(1, HEADS, seq_len, D_HEAD, generator=gen, dtype=dtype)
    grad = torch.randn(1, HEADS, seq_len, D_HEAD, generator=gen, dtype=dtype)
    return qk, v, grad


def _output_and_grads(be, qk, v, grad, cfg, buckets):
    qk, v = qk.clone().requires_grad_(), v.clone().requires_grad_()
    out = be.attend(qk, v, cfg, buckets=buckets)
    out.backward(grad)
    return out.detach(), qk.grad, v.grad


def _assert_matches_eager(be, seq_len, cfg, dtype=torch.float32, tol=1e-5):
    qk, v, grad = _inputs(seq_len, dtype)
    buckets = hash_buckets(qk, cfg)
    got = _output_and_grads(be, qk, v, grad, cfg, buckets)
    want = _output_and_grads(get_backend("eager"), qk, v, grad, cfg, buckets)
    for name, g, w in zip(("output", "d qk", "d v"), got, want):
        torch.testing.assert_close(g, w, rtol=tol, atol=tol, msg=lambda m, name=name: f"{name}: {m}")


def test_sweep_matches_eager_with_one_compile(backend):
    """Two sequence lengths, causal and not, 1 and 4 hash rounds, in one process: outputs and
    gradients equal eager's within 1e-5, and only the first case of each masking variant compiles
    (its softmax and score-gradient kernels); every later case reuses the dynamic-shape graphs."""
    seen, compilations = set(), []
    for seq_len in (64, 128):
        for causal in (False, True):
            for n_hashes in (1, 4):
                cfg = LSHConfig(n_buckets=N_BUCKETS, n_hashes=n_hashes, chunk_len=CHUNK_LEN, causal=causal)
                backend.reset_compile_stats()
                _assert_matches_eager(backend, seq_len, cfg)
                stats = backend.compile_stats()
                assert not stats["fell_back"], stats["reason"]
                compilations.append((seq_len, causal, n_hashes, stats["compilations"]))
                if causal in seen:
                    assert stats["compilations"] == 0, compilations
                else:  # 0 when an earlier test compiled this variant already
                    assert stats["compilations"] <= 2, compilations
                seen.add(causal)


def test_own_hashing_gives_eager_buckets(backend):
    """attend() without buckets= hashes with the compiled bucket kernel: same buckets as
    impls.lsh.hash_buckets, ties included (a zero query ties every direction), hence eager's output."""
    from impls.lsh import bucket_of_projection

    cfg = LSHConfig(n_buckets=N_BUCKETS, n_hashes=2, chunk_len=CHUNK_LEN)
    qk, v, _ = _inputs(64)
    qk[0, 0, :5] = 0.0
    want = hash_buckets(qk, cfg)
    got = hash_buckets(qk, cfg, bucket_of=backend._bucket_of)
    assert torch.equal(got, want)
    proj = torch.randn(2, 3, 5, 2, 8)
    proj[0, 0, 0, 0, 3] = proj[0, 0, 0, 0, 6] = proj[0, 0, 0, 0].abs().max() + 1  # a tied maximum
    assert torch.equal(backend._bucket_of(proj), bucket_of_projection(proj))
    with torch.no_grad():
        torch.testing.assert_close(backend.attend(qk, v, cfg), get_backend("eager").attend(qk, v, cfg),
                                   rtol=1e-5, atol=1e-5)


def test_own_hashing_and_one_chunk_rounds_compile_once_across_shapes(backend):
    """attend() without buckets= over batch 1 / 2, heads 1 / 2, 1 / 2 rounds and a round of one chunk
    (no leading copy, steps starting at the buffer's first slot): after the first case, nothing
    compiles again."""
    eager = get_backend("eager")
    counts = []
    for batch, heads, n_hashes, seq_len in ((1, 2, 2, 64), (2, 2, 2, 64), (1, 1, 2, 64), (1, 2, 1, 64),
                                            (1, 2, 2, 16), (2, 3, 3, 128)):
        gen = torch.Generator().manual_seed(seq_len + batch)
        qk, v = (torch.randn(batch, heads, seq_len, D_HEAD, generator=gen) for _ in range(2))
        cfg = LSHConfig(n_buckets=N_BUCKETS, n_hashes=n_hashes, chunk_len=CHUNK_LEN)
        backend.reset_compile_stats()
        with torch.no_grad():
            torch.testing.assert_close(backend.attend(qk, v, cfg), eager.attend(qk, v, cfg), rtol=1e-5, atol=1e-5)
        counts.append(backend.compile_stats()["compilations"])
    assert counts[0] <= 2 and counts[1:] == [0] * 5, counts


def test_dedup_and_default_chunk_len_match_eager(backend):
    cfg = LSHConfig(n_buckets=N_BUCKETS, n_hashes=3, chunk_len=None, causal=True, dedup=True)
    backend.reset_compile_stats()
    _assert_matches_eager(backend, 64, cfg)
    assert not backend.compile_stats()["fell_back"], backend.compile_stats()["reason"]


@pytest.mark.parametrize("causal", [False, True])
def test_long_rows_walked_in_chunk_steps_match_eager_without_recompiling(backend, monkeypatch, causal):
    """The path that bounds memory for long sequences: with a score budget of 3 windows, below one
    row's 8 chunks (+ its leading copy), every block is one row walked in steps of 2-3 windows,
    through the same graphs as blocks of several whole rows."""
    cfg = LSHConfig(n_buckets=N_BUCKETS, n_hashes=2, chunk_len=CHUNK_LEN, causal=causal)
    # Both rows in one step: 2 x (1 leading copy + 8 chunks) - 1 = 17 windows (one is discarded).
    assert _blocks_of(cfg, 128) == [(r, 0, 2, [(0, 17)]) for r in range(2)]
    _assert_matches_eager(backend, 128, cfg)  # the graphs exist from here on
    monkeypatch.setitem(blocked_module.SCORE_BLOCK_ELEMENTS, "cpu", 3 * CHUNK_LEN * 2 * CHUNK_LEN)
    steps = [(0, 2), (2, 5), (5, 8)]
    assert _blocks_of(cfg, 128) == [(r, bh, bh + 1, steps) for r in range(2) for bh in range(HEADS)]
    backend.reset_compile_stats()
    _assert_matches_eager(backend, 128, cfg)
    assert backend.compile_stats() == {"compilations": 0, "fell_back": False, "reason": ""}


def test_blocks_of_several_rows_and_a_shorter_last_block_match_eager(backend, monkeypatch):
    """batch 3 x 1 head, a budget of 2 rows per block: blocks of rows (0, 1) and (2,), with the
    discarded window between the two rows of a block; outputs and gradients still equal eager's."""
    monkeypatch.setitem(blocked_module.SCORE_BLOCK_ELEMENTS, "cpu", 10 * CHUNK_LEN * 2 * CHUNK_LEN)
    cfg = LSHConfig(n_buckets=N_BUCKETS, n_hashes=2, chunk_len=CHUNK_LEN, causal=True)
    gen = torch.Generator().manual_seed(3)
    qk, v, grad = (torch.randn(3, 1, 64, D_HEAD, generator=gen) for _ in range(3))
    buckets = hash_buckets(qk, cfg)
    got = _output_and_grads(backend, qk, v, grad, cfg, buckets)
    want = _output_and_grads(get_backend("eager"), qk, v, grad, cfg, buckets)
    for name, g, w in zip(("output", "d qk", "d v"), got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    from impls.lsh import sort_by_buckets

    order = sort_by_buckets(buckets, CHUNK_LEN)
    plan = compiled_module._Plan(order.perm.reshape(3, 2, 64), order.rank.reshape(3, 2, 64), CHUNK_LEN,
                                 True, False, torch.float32)
    assert [(b.round, b.bh0, b.bh1, b.steps) for b in plan.blocks()] == [
        (0, 0, 2, [(0, 9)]), (0, 2, 3, [(0, 4)]), (1, 0, 2, [(0, 9)]), (1, 2, 3, [(0, 4)])]


def _blocks_of(cfg, seq_len):
    """[(round, first bh row, end bh row, window steps)] of the compiled backend's plan."""
    from impls.lsh import sort_by_buckets

    qk, _, _ = _inputs(seq_len)
    order = sort_by_buckets(hash_buckets(qk, cfg), CHUNK_LEN)
    plan = compiled_module._Plan(order.perm.reshape(HEADS, cfg.n_hashes, seq_len),
                                 order.rank.reshape(HEADS, cfg.n_hashes, seq_len),
                                 CHUNK_LEN, cfg.causal, cfg.dedup, torch.float32)
    return [(b.round, b.bh0, b.bh1, b.steps) for b in plan.blocks()]


def test_recompile_limit_hit_is_recorded_as_fallback(backend):
    """float64 needs new graphs; with dynamo's recompile limit at 1 the kernels, already compiled
    for float32, cannot get them. The call still returns eager's result, and the stats say that
    it did not run compiled code, and why."""
    cfg = LSHConfig(n_buckets=N_BUCKETS, n_hashes=2, chunk_len=CHUNK_LEN)
    _assert_matches_eager(backend, 64, cfg)  # float32 graphs exist (compiled here or before)
    backend.reset_compile_stats()
    with torch._dynamo.config.patch(recompile_limit=1):
        _assert_matches_eager(backend, 64, cfg, dtype=torch.float64, tol=1e-10)
    stats = backend.compile_stats()
    assert stats["fell_back"] is True
    assert "recompile" in stats["reason"].lower() or "limit" in stats["reason"].lower(), stats["reason"]
    assert stats["compilations"] == 0
    backend.reset_compile_stats()
    assert backend.compile_stats() == {"compilations": 0, "fell_back": False, "reason": ""}


def test_force_eager_stance_is_recorded_as_fallback(backend):
    cfg = LSHConfig(n_buckets=N_BUCKETS, n_hashes=2, chunk_len=CHUNK_LEN, causal=True)
    backend.reset_compile_stats()
    with torch.compiler.set_stance("force_eager"):
        _assert_matches_eager(backend, 64, cfg)
    stats = backend.compile_stats()
    assert stats["fell_back"] is True and "force_eager" in stats["reason"], stats


def test_bad_input_is_a_clear_value_error(backend):
    qk, v, _ = _inputs(64)
    with pytest.raises(ValueError, match="chunk_len=24"):
        backend.attend(qk, v, LSHConfig(n_buckets=N_BUCKETS, chunk_len=24))
    with pytest.raises(ValueError, match="v.shape"):
        backend.attend(qk, v[..., :8], LSHConfig(n_buckets=N_BUCKETS, chunk_len=CHUNK_LEN))
