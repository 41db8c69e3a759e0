"""The core contract: config validation, hashing, eager LSH vs dense and vs a naive reference."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from impls import LSHConfig, get_backend, list_backends
from impls.lsh import hash_buckets, random_rotations
from tests.reference_lsh import reference_lsh_attention

eager = get_backend("eager")
dense = get_backend("dense")


def inputs(batch=1, heads=2, seq=64, d=16, dtype=torch.float32, seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    qk = torch.randn(batch, heads, seq, d, generator=gen, dtype=torch.float64).to(dtype)
    v = torch.randn(batch, heads, seq, d, generator=gen, dtype=torch.float64).to(dtype)
    return qk.requires_grad_(requires_grad), v.requires_grad_(requires_grad)


def max_rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# --- exactness: 2 chunks per round -> every query sees every key -> LSH == dense ---------------

@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_hashes", [1, 2, 4])
@pytest.mark.parametrize("dedup", [False, True])
def test_two_chunks_equal_dense_outputs_and_gradients(causal, n_hashes, dedup):
    qk, v = inputs(batch=2, seq=128, requires_grad=True)
    cfg = LSHConfig(n_buckets=8, n_hashes=n_hashes, chunk_len=64, causal=causal, dedup=dedup, seed=3)
    out, ref = eager.attend(qk, v, cfg), dense.attend(qk, v, cfg)
    assert max_rel(out, ref) < 1e-5
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((out * weights).sum(), (qk, v))
    ref_grads = torch.autograd.grad((ref * weights).sum(), (qk, v))
    for g, rg in zip(grads, ref_grads):
        assert max_rel(g, rg) < 1e-5


# --- outside the exact regime: against the naive reference implementation ----------------------

@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dedup", [False, True])
def test_many_chunks_match_naive_reference(causal, dedup):
    qk, v = inputs(seq=32, d=8, dtype=torch.float64, requires_grad=True)
    cfg = LSHConfig(n_buckets=8, n_hashes=3, chunk_len=4, causal=causal, dedup=dedup, seed=7)
    out, ref = eager.attend(qk, v, cfg), reference_lsh_attention(qk, v, cfg)
    assert max_rel(out, ref) < 1e-10
    grads = torch.autograd.grad(out.square().sum(), (qk, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (qk, v))
    for g, rg in zip(grads, ref_grads):
        assert max_rel(g, rg) < 1e-10


def test_one_chunk_per_round_sees_only_itself():
    qk, v = inputs(seq=16, d=8, dtype=torch.float64)
    cfg = LSHConfig(n_buckets=2, n_hashes=2, chunk_len=16)
    assert max_rel(eager.attend(qk, v, cfg), dense.attend(qk, v, cfg)) < 1e-12


@pytest.mark.slow
def test_gradcheck_small_many_chunks():
    qk, v = inputs(seq=24, d=4, dtype=torch.float64, requires_grad=True)
    cfg = LSHConfig(n_buckets=6, n_hashes=2, chunk_len=4, causal=True, dedup=True)
    assert torch.autograd.gradcheck(lambda a, b: eager.attend(a, b, cfg), (qk, v))


# --- hashing ------------------------------------------------------------------------------------

def test_hash_buckets_is_the_argmax_definition():
    qk, _ = inputs(batch=2, heads=3, seq=200, d=16)
    cfg = LSHConfig(n_buckets=16, n_hashes=3, seed=5)
    rot = random_rotations(cfg, heads=3, d_head=16)
    assert rot.shape == (3, 16, 3, 8)
    projected = torch.einsum("bhnd,hdrk->bhrnk", qk, rot)
    expected = torch.cat([projected, -projected], dim=-1).argmax(dim=-1)
    assert torch.equal(hash_buckets(qk, cfg), expected)


def test_hash_blocks_agree_with_one_block(monkeypatch):
    import impls.lsh as lsh
    qk, _ = inputs(seq=256, d=16)
    cfg = LSHConfig(n_buckets=32, n_hashes=2)
    whole = hash_buckets(qk, cfg)
    monkeypatch.setattr(lsh, "HASH_BLOCK_ELEMENTS", {"cpu": 100})
    assert torch.equal(lsh.hash_buckets(qk, cfg), whole)


@pytest.mark.slow
def test_hashing_a_transposed_batch_copies_one_block_at_a_time(monkeypatch):
    """The model's qk is a transposed projection (batch, seq, heads, d) -> (batch, heads, seq, d):
    hashing must not copy it whole (blocks of 128 positions here), and must not depend on the
    default dtype."""
    import impls.lsh as lsh
    from harness.measure.memory import track_peak_memory

    monkeypatch.setattr(lsh, "HASH_BLOCK_ELEMENTS", {"cpu": 2 * 4 * 2 * 32 * 128})
    qk = torch.randn(2, 4096, 4, 64, generator=torch.Generator().manual_seed(0)).transpose(1, 2)
    cfg = LSHConfig(n_buckets=64, n_hashes=2)
    with track_peak_memory("cpu") as peak:
        buckets = lsh.hash_buckets(qk, cfg)
    assert peak.peak_bytes < qk.numel() * qk.element_size() // 4, peak.peak_bytes
    assert torch.equal(buckets, lsh.hash_buckets(qk.contiguous(), cfg))
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert torch.equal(lsh.hash_buckets(qk, cfg), buckets)
    finally:
        torch.set_default_dtype(default)


def test_same_seed_same_output_other_seed_other_buckets():
    qk, v = inputs(seq=256)
    cfg = LSHConfig(n_buckets=16, n_hashes=2, seed=11)
    assert torch.equal(eager.attend(qk, v, cfg), eager.attend(qk, v, cfg))
    other = LSHConfig(n_buckets=16, n_hashes=2, seed=12)
    assert not torch.equal(hash_buckets(qk, cfg), hash_buckets(qk, other))
    assert not torch.equal(eager.attend(qk, v, cfg), eager.attend(qk, v, other))


def test_buckets_argument_replaces_hashing():
    qk, v = inputs(seq=128)
    cfg = LSHConfig(n_buckets=16, n_hashes=2, chunk_len=16, seed=1)
    other_seed = LSHConfig(n_buckets=16, n_hashes=2, chunk_len=16, seed=2)
    replayed = eager.attend(qk, v, cfg, buckets=hash_buckets(qk, other_seed))
    assert torch.equal(replayed, eager.attend(qk, v, other_seed))
    assert not torch.equal(replayed, eager.attend(qk, v, cfg))


# --- causality ----------------------------------------------------------------------------------

def test_causal_never_reads_future_values():
    qk, v = inputs(seq=128)
    cfg = LSHConfig(n_buckets=16, n_hashes=4, chunk_len=8, causal=True)
    i = 60
    v2 = v.clone()
    v2[:, :, i + 1:] = torch.randn_like(v2[:, :, i + 1:])
    a, b = eager.attend(qk, v, cfg), eager.attend(qk, v2, cfg)
    assert torch.equal(a[:, :, :i + 1], b[:, :, :i + 1])
    assert not torch.equal(a[:, :, i + 1:], b[:, :, i + 1:])


def test_causal_exact_regime_ignores_any_future_change():
    qk, v = inputs(seq=64)
    cfg = LSHConfig(n_buckets=8, n_hashes=2, chunk_len=32, causal=True)
    i = 40
    qk2, v2 = qk.clone(), v.clone()
    qk2[:, :, i + 1:] = torch.randn_like(qk2[:, :, i + 1:])
    v2[:, :, i + 1:] = torch.randn_like(v2[:, :, i + 1:])
    a, b = eager.attend(qk, v, cfg), eager.attend(qk2, v2, cfg)
    assert max_rel(a[:, :, :i + 1], b[:, :, :i + 1]) < 1e-6


def test_first_causal_token_attends_to_itself():
    qk, v = inputs(seq=64)
    cfg = LSHConfig(n_buckets=8, n_hashes=2, chunk_len=8, causal=True)
    out = eager.attend(qk, v, cfg)
    assert torch.allclose(out[:, :, 0], v[:, :, 0], atol=1e-6)


# --- fidelity -----------------------------------------------------------------------------------

def test_fidelity_improves_with_hash_rounds_on_clustered_inputs():
    gen = torch.Generator().manual_seed(0)
    seq, d, n_clusters = 512, 32, 16
    centres = torch.randn(n_clusters, d, generator=gen) * 3
    assign = torch.randint(0, n_clusters, (seq,), generator=gen)
    qk = (centres[assign] + 0.5 * torch.randn(seq, d, generator=gen)).view(1, 1, seq, d)
    v = torch.randn(1, 1, seq, d, generator=gen)
    ref = dense.attend(qk, v, LSHConfig())
    errors = []
    for n_hashes in (1, 2, 4, 8):
        cfg = LSHConfig(n_buckets=32, n_hashes=n_hashes, chunk_len=32, seed=1)
        out = eager.attend(qk, v, cfg)
        errors.append(((out - ref).norm() / ref.norm()).item())
    assert errors[0] > errors[1] > errors[2] > errors[3], errors
    assert errors[3] < 0.5 * errors[0], errors


# --- memory shape: no seq x seq tensor ----------------------------------------------------------

class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_eager_never_builds_a_seq_by_seq_tensor():
    seq = 2048
    qk, v = inputs(seq=seq, heads=1, d=16, requires_grad=True)
    cfg = LSHConfig(n_buckets=64, n_hashes=2, chunk_len=64)
    with _LargestTensor() as mode:
        eager.attend(qk, v, cfg).sum().backward()
    assert mode.largest < seq * seq // 4, mode.largest
    with _LargestTensor() as mode:
        dense.attend(qk.detach(), v.detach(), cfg)
    assert mode.largest >= seq * seq  # the check itself sees a seq x seq tensor when there is one


# --- dtypes -------------------------------------------------------------------------------------

def test_bfloat16_runs_and_stays_close_to_float32():
    qk, v = inputs(seq=128)
    cfg = LSHConfig(n_buckets=8, n_hashes=2, chunk_len=16, causal=True)
    out32 = eager.attend(qk, v, cfg)
    out16 = eager.attend(qk.bfloat16(), v.bfloat16(), cfg)
    assert out16.dtype == torch.bfloat16 and torch.isfinite(out16).all()
    assert max_rel(out16.float(), out32) < 5e-2


def test_sdpa_backend_is_standard_causal_attention():
    qk, v = inputs(seq=64)
    cfg = LSHConfig(causal=True)
    out = get_backend("sdpa").attend(qk, v, cfg)
    scores = qk @ qk.transpose(-1, -2) / qk.shape[-1] ** 0.5
    scores = scores.masked_fill(torch.ones(64, 64, dtype=torch.bool).triu(1), float("-inf"))
    assert max_rel(out, torch.softmax(scores, -1) @ v) < 1e-5


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, needle", [
    (dict(n_buckets=7), "n_buckets=7"),
    (dict(n_hashes=0), "n_hashes=0"),
    (dict(chunk_len=0), "chunk_len=0"),
    (dict(causal="yes"), "causal='yes'"),
])
def test_config_rejects_bad_values(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        LSHConfig(**kwargs)


def test_attend_rejects_bad_inputs():
    qk, v = inputs(seq=64)
    with pytest.raises(ValueError, match="seq_len=64 is not a multiple of chunk_len=24"):
        eager.attend(qk, v, LSHConfig(chunk_len=24))
    with pytest.raises(ValueError, match=r"v.shape=\(1, 2, 32, 16\)"):
        eager.attend(qk, v[:, :, :32], LSHConfig(chunk_len=16))
    with pytest.raises(ValueError, match="v.dtype=torch.float64"):
        eager.attend(qk, v.double(), LSHConfig(chunk_len=16))
    with pytest.raises(ValueError, match="qk must be"):
        eager.attend(qk[0], v[0], LSHConfig(chunk_len=16))
    with pytest.raises(ValueError, match="unknown backend 'nope'; known backends: eager"):
        get_backend("nope")
    assert {"eager", "dense", "sdpa", "compiled", "triton"} <= set(list_backends())


@pytest.mark.slow
@pytest.mark.parametrize("budget", [1, 3 * 16 * 32, 10**9])
def test_block_sizes_do_not_change_results(monkeypatch, budget):
    """Small budgets split rows into chunk steps (with the circular wrap inside a row)."""
    import impls.blocked as blocked_module
    qk, v = inputs(seq=128, dtype=torch.float64, requires_grad=True)
    cfg = LSHConfig(n_buckets=16, n_hashes=3, chunk_len=16, causal=True, dedup=True)
    ref = reference_lsh_attention(qk, v, cfg)
    ref_grads = torch.autograd.grad(ref.square().sum(), (qk, v))
    monkeypatch.setattr(blocked_module, "SCORE_BLOCK_ELEMENTS", {"cpu": budget})
    out = eager.attend(qk, v, cfg)
    assert max_rel(out, ref) < 1e-10
    for g, rg in zip(torch.autograd.grad(out.square().sum(), (qk, v)), ref_grads):
        assert max_rel(g, rg) < 1e-10


def test_strided_inputs_and_expanded_gradients():
    """A transposed projection (qk, v as (B, N, H, D) memory) is gathered in place, and out.sum()'s
    stride-0 gradient is handled: same outputs and gradients as contiguous inputs."""
    gen = torch.Generator().manual_seed(5)
    projected = torch.randn(2, 128, 2, 16, generator=gen, dtype=torch.float64)  # (B, N, H, D)
    values = torch.randn(2, 128, 2, 16, generator=gen, dtype=torch.float64)
    cfg = LSHConfig(n_buckets=16, n_hashes=2, chunk_len=16, causal=True)
    results = []
    for make in (lambda t: t.transpose(1, 2), lambda t: t.transpose(1, 2).contiguous()):
        qk_leaf, v_leaf = projected.clone().requires_grad_(), values.clone().requires_grad_()
        qk, v = make(qk_leaf), make(v_leaf)
        out = eager.attend(qk, v, cfg)
        out.sum().backward()
        results.append((out.detach(), qk_leaf.grad, v_leaf.grad))
    from impls.blocked import rows_addressable
    assert rows_addressable(projected.transpose(1, 2))  # the strided case really gathers in place
    for strided, contiguous in zip(*results):
        assert max_rel(strided, contiguous) < 1e-12
