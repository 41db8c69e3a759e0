"""impls.peers: the public implementations behind our interface, cost-matched; absent -> unavailable."""
from __future__ import annotations

import sys

import pytest
import torch

from impls import LSHConfig, get_backend
from impls.peers import HFLSHBackend, ReformerPytorchBackend


def inputs(seq_len=256, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 2, seq_len, 16, generator=gen), torch.randn(2, 2, seq_len, 16, generator=gen))


@pytest.mark.parametrize("causal", [False, True])
def test_hf_lsh_equals_dense_in_the_exact_regime(causal):
    pytest.importorskip("transformers")
    qk, v = inputs()
    # Two chunks and one round: every query sees every key. (With more rounds Hugging Face's
    # look-back crosses into the previous round's chunks, so it is exact only for one round.)
    cfg = LSHConfig(n_buckets=4, n_hashes=1, chunk_len=128, causal=causal)
    out = HFLSHBackend().attend(qk, v, cfg)
    ref = get_backend("dense").attend(qk, v, cfg)
    assert out.shape == qk.shape
    assert float((out - ref).norm() / ref.norm()) < 1e-5


def test_hf_lsh_approximates_like_ours():
    pytest.importorskip("transformers")
    qk, v = inputs(seq_len=512)
    cfg = LSHConfig(n_buckets=16, n_hashes=4, chunk_len=32)
    ref = get_backend("dense").attend(qk, v, cfg)
    err = {name: float((b.attend(qk, v, cfg) - ref).norm() / ref.norm())
           for name, b in (("hf", HFLSHBackend()), ("eager", get_backend("eager")))}
    assert 0.0 < err["hf"] < 2 * err["eager"] and 0.0 < err["eager"] < 2 * err["hf"]


def test_reformer_pytorch_runs_cost_matched():
    pytest.importorskip("reformer_pytorch")
    qk, v = inputs()
    cfg = LSHConfig(n_buckets=8, n_hashes=2, chunk_len=32)
    backend = ReformerPytorchBackend()
    out = backend.attend(qk, v, cfg)
    assert out.shape == qk.shape and torch.isfinite(out).all()
    assert torch.equal(out, backend.attend(qk, v, cfg))  # seeded rotations: repeatable
    module = next(iter(backend._modules.values()))
    assert (module.bucket_size, module.n_hashes) == (32, 2)
    with pytest.raises(ValueError, match="multiple of 2 \\* chunk_len"):
        backend.attend(*inputs(seq_len=96), cfg)


@pytest.mark.parametrize("backend, module", [(HFLSHBackend, "transformers"),
                                             (ReformerPytorchBackend, "reformer_pytorch")])
def test_absent_package_is_unavailable_with_a_reason(monkeypatch, backend, module):
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    ok, reason = backend().available()
    assert not ok and "peers" in reason


def test_peers_are_registered_as_peers():
    from impls import backend_info, list_backends

    names = list_backends()
    assert {"hf_lsh", "reformer_pytorch"} <= set(names)
    assert backend_info("hf_lsh").kind == backend_info("reformer_pytorch").kind == "peer"


def test_reformer_pytorch_equals_its_scaled_dense_reference_in_the_exact_regime():
    """reformer-pytorch scores q . k_unit / sqrt(d): with two chunks and one round it is exactly
    dense attention on qk * score_scale, the reference the harness measures its rel_error against."""
    pytest.importorskip("reformer_pytorch")
    qk, v = inputs(seq_len=64)
    cfg = LSHConfig(n_buckets=4, n_hashes=1, chunk_len=32)
    backend = ReformerPytorchBackend()
    out = backend.attend(qk, v, cfg)
    scaled_ref = get_backend("dense").attend(qk * backend.score_scale(16), v, cfg)
    unscaled_ref = get_backend("dense").attend(qk, v, cfg)
    assert float((out - scaled_ref).norm() / scaled_ref.norm()) < 1e-5
    assert float((out - unscaled_ref).norm() / unscaled_ref.norm()) > 1e-2  # the scale matters
    # It hashes into seq / bucket_size buckets whatever n_buckets says; FLOPs follow that count.
    assert backend.effective_n_buckets(cfg, 64) == 2
    assert backend.effective_n_buckets(LSHConfig(n_buckets=64, chunk_len=32), 1024) == 32
