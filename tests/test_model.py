"""impls.model: reversible == plain autograd, chunking is exact, causality, depth-independent saved
activations, the chunked loss, and bad input."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from impls.model import ModelConfig, ReformerLM, TransformerLM, chunked_lm_loss

SMALL = {"vocab": 48, "d_model": 32, "heads": 2, "d_ff": 64, "layers": 3, "max_seq_len": 128,
         "causal": True, "n_hashes": 3, "chunk_len": 8, "n_buckets": None, "dropout": 0.0, "ff_chunks": 1,
         "axial_shape": None}


pytestmark = pytest.mark.usefixtures("one_thread")


def config(**overrides) -> ModelConfig:
    return ModelConfig(**{**SMALL, **overrides})


def make(model_cls, cfg, dtype=torch.float64, **kwargs):
    torch.manual_seed(0)  # same construction seed -> same weights for every variant
    return model_cls(cfg, **kwargs).to(dtype)


def tokens(cfg, batch=2, seq=64, seed=1):
    return torch.randint(0, cfg.vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def max_rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def train_step(model, toks, dropout_seed=5):
    """Loss, parameter gradients, and the next draw of the global RNG after the step."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(dropout_seed)
    loss = model.loss(toks)
    loss.backward()
    next_draw = torch.rand(4)
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}, next_draw


# --- reversible == plain autograd -------------------------------------------------------------------

@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("backend, ff_chunks", [("eager", 1), ("eager", 3), ("dense", 2)])
def test_reversible_matches_plain_loss_and_gradients(dtype, tol, backend, ff_chunks):
    # 8 chunks of 8 per round: outside the exact regime, so hashing and its replay matter.
    cfg = config(dropout=0.1, n_hashes=3, ff_chunks=ff_chunks)
    toks = tokens(cfg)
    rev = make(ReformerLM, cfg, dtype, backend=backend, reversible=True)
    plain = make(ReformerLM, cfg, dtype, backend=backend, reversible=False)
    loss_r, grads_r, draw_r = train_step(rev, toks)
    loss_p, grads_p, draw_p = train_step(plain, toks)
    assert max_rel(loss_r, loss_p) <= tol
    assert grads_r.keys() == grads_p.keys()
    worst = max(max_rel(grads_r[name], grads_p[name]) for name in grads_p)
    assert worst <= tol, worst
    # The reversible backward replays dropout without consuming the caller's random stream.
    assert torch.equal(draw_r, draw_p)


def test_reversible_backward_replays_the_forward_buckets(monkeypatch):
    # Stand-in for a recomputed qk whose last-bit difference flips a hash: a hash function that
    # answers differently on every call. Replaying the forward's buckets keeps the gradients equal
    # to the plain model's (which hashes once per layer); hashing again in the backward would not.
    import impls.model as model_module
    real_hash = model_module.hash_buckets
    calls = []

    def drifting_hash(qk, cfg):
        calls.append(cfg.seed)
        return real_hash(qk, replace(cfg, seed=cfg.seed + 1000 * len(calls)))

    monkeypatch.setattr(model_module, "hash_buckets", drifting_hash)
    cfg = config()
    results = []
    for reversible in (True, False):
        calls.clear()
        results.append(train_step(make(ReformerLM, cfg, reversible=reversible), tokens(cfg)))
        assert calls == [0, 1, 2]  # one hash per layer, in the forward only
    (_, grads_r, _), (_, grads_p, _) = results
    assert max(max_rel(grads_r[n], grads_p[n]) for n in grads_p) <= 1e-10


def test_dropout_is_active_in_the_equivalence_setting():
    # Guards the test above: with dropout on, different seeds give different losses, so matching
    # gradients require the masks to be replayed.
    cfg = config(dropout=0.1)
    model = make(ReformerLM, cfg)
    loss_a, _, _ = train_step(model, tokens(cfg), dropout_seed=5)
    loss_b, _, _ = train_step(model, tokens(cfg), dropout_seed=6)
    assert max_rel(loss_a, loss_b) > 1e-6


def test_reversible_gradients_reach_autograd_grad():
    cfg = config()
    model = make(ReformerLM, cfg)
    params = list(model.blocks[0].attn.parameters())
    grads = torch.autograd.grad(model.loss(tokens(cfg)), params)
    model.zero_grad(set_to_none=True)
    model.reversible = False
    ref = torch.autograd.grad(model.loss(tokens(cfg)), params)
    for g, r in zip(grads, ref):
        assert max_rel(g, r) <= 1e-10


def saved_activation_bytes(model, toks) -> int:
    """Bytes autograd keeps for the backward of one loss (forward only)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.loss(toks)
    return total


def test_reversible_saved_activations_do_not_grow_with_depth():
    shallow, deep = config(layers=1), config(layers=4)
    toks = tokens(shallow)
    rev = [saved_activation_bytes(make(ReformerLM, c), toks) for c in (shallow, deep)]
    plain = [saved_activation_bytes(make(ReformerLM, c, reversible=False), toks) for c in (shallow, deep)]
    assert rev[1] == rev[0]
    per_layer = plain[1] - plain[0]
    assert per_layer > 3 * 0.5 * plain[0]  # grows by at least half a 1-layer model per extra layer


# --- chunking is exact ------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_chunked_feed_forward_gives_the_same_output_and_gradients(backend):
    cfg = config()
    toks = tokens(cfg)
    whole = make(ReformerLM, cfg, backend=backend)
    sliced = make(ReformerLM, cfg, backend=backend, ff_chunks=5)  # 64 tokens in uneven slices
    assert sliced.ff_chunks == 5
    whole.eval()
    sliced.eval()
    with torch.no_grad():
        assert max_rel(sliced(toks), whole(toks)) <= 1e-12
    _, grads_whole, _ = train_step(whole, toks)
    _, grads_sliced, _ = train_step(sliced, toks)
    assert max(max_rel(grads_sliced[n], grads_whole[n]) for n in grads_whole) <= 1e-10


def test_chunked_loss_equals_full_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 37, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    head = torch.nn.Linear(16, 11).double()
    targets = torch.randint(0, 11, (2, 37), generator=gen)
    # 2 * 11 logits per position, 60-element blocks -> slices of 2 positions.
    loss = chunked_lm_loss(hidden, head, targets, block_elements=60)
    ref = F.cross_entropy(head(hidden).reshape(-1, 11), targets.reshape(-1))
    assert max_rel(loss, ref) <= 1e-12
    grads = torch.autograd.grad(loss, (hidden, head.weight, head.bias))
    ref_grads = torch.autograd.grad(ref, (hidden, head.weight, head.bias))
    for g, r in zip(grads, ref_grads):
        assert max_rel(g, r) <= 1e-12


def test_model_loss_is_next_token_cross_entropy_of_its_logits():
    cfg = config()
    toks = tokens(cfg)
    for model in (make(ReformerLM, cfg), make(TransformerLM, cfg, backend="dense")):
        model.eval()
        logits = model(toks)
        assert logits.shape == (2, 64, cfg.vocab)
        ref = F.cross_entropy(logits[:, :-1].reshape(-1, cfg.vocab), toks[:, 1:].reshape(-1))
        assert max_rel(model.loss(toks), ref) <= 1e-12


# --- causality --------------------------------------------------------------------------------------

def future_dependence(model, cfg, seq, cut) -> float:
    """Largest change of logits at positions <= cut when every token after cut is replaced."""
    model.eval()
    toks = tokens(cfg, seq=seq)
    changed = toks.clone()
    # Add 1 .. vocab-1 (mod vocab) to every later token: each one changes.
    shift = 1 + tokens(cfg, seq=seq, seed=9)[:, cut + 1:] % (cfg.vocab - 1)
    changed[:, cut + 1:] = (toks[:, cut + 1:] + shift) % cfg.vocab
    assert (changed[:, cut + 1:] != toks[:, cut + 1:]).all()
    with torch.no_grad():
        return (model(changed)[:, :cut + 1] - model(toks)[:, :cut + 1]).abs().max().item()


@pytest.mark.parametrize("build", [
    pytest.param(lambda c: ReformerLM(c, backend="dense"), id="reformer-dense"),
    pytest.param(lambda c: ReformerLM(c, backend="sdpa"), id="reformer-sdpa"),
    pytest.param(lambda c: TransformerLM(c, backend="sdpa"), id="transformer-sdpa"),
    pytest.param(lambda c: TransformerLM(c, backend="dense"), id="transformer-dense"),
    # LSH in the exact regime: 2 chunks of 32 cover the 64 tokens in every round.
    pytest.param(lambda c: ReformerLM(replace(c, chunk_len=32), backend="eager"),
                 id="reformer-lsh-exact"),
])
@pytest.mark.parametrize("cut", [0, 20, 47])
def test_causal_output_does_not_depend_on_later_tokens(build, cut):
    cfg = config()
    torch.manual_seed(0)
    model = build(cfg).double()
    assert future_dependence(model, cfg, seq=64, cut=cut) <= 1e-12


def test_non_causal_output_does_depend_on_later_tokens():
    # The control for the test above: the same measurement sees the future when it is visible.
    cfg = config(causal=False)
    torch.manual_seed(0)
    model = ReformerLM(cfg, backend="dense").double()
    assert future_dependence(model, cfg, seq=64, cut=20) > 1e-4


# --- configuration and bad input --------------------------------------------------------------------

def test_axial_position_embedding_covers_its_shape_and_rejects_longer_sequences():
    cfg = config(axial_shape=(8, 16))
    model = make(ReformerLM, cfg)
    positions = model.embed.positions(128)
    assert positions.shape == (128, cfg.d_model)
    # position r * 16 + c is [row_r ; col_c]
    axial = model.embed.positions
    assert torch.equal(positions[3 * 16 + 5], torch.cat([axial.rows[3], axial.cols[5]]))
    assert torch.equal(axial(40), positions[:40])
    message = r"sequence length 136 exceeds axial_shape=\(8, 16\) \(128 positions\)"
    with pytest.raises(ValueError, match=message):
        model(tokens(cfg, seq=136))


def test_plain_position_embedding_rejects_longer_sequences():
    model = make(ReformerLM, config())
    with pytest.raises(ValueError, match="sequence length 136 exceeds max_seq_len=128"):
        model(tokens(model.cfg, seq=136))


def test_lsh_config_per_layer():
    cfg = config(chunk_len=16, seed=7)
    lsh = cfg.lsh_config(2, 256)
    assert (lsh.n_buckets, lsh.chunk_len, lsh.n_hashes, lsh.causal, lsh.seed) == (32, 16, 3, True, 9)
    assert cfg.lsh_config(0, 16).n_buckets == 2
    assert config(n_buckets=6).lsh_config(0, 256).n_buckets == 6
    with pytest.raises(ValueError, match="seq_len=100 is not a multiple of chunk_len=16"):
        cfg.lsh_config(0, 100)


@pytest.mark.parametrize("overrides, message", [
    ({"d_model": 30, "heads": 4}, "d_model must be a multiple of heads"),
    ({"layers": 0}, "layers must be >= 1, got layers=0"),
    ({"vocab": 2.5}, "vocab must be an integer"),
    ({"dropout": 1.0}, "dropout must be a number in"),
    ({"n_buckets": 7}, "n_buckets must be an even integer"),
    ({"chunk_len": None, "n_buckets": None}, "chunk_len=None and n_buckets=None"),
    ({"ff_chunks": 0}, "ff_chunks must be >= 1"),
    ({"causal": 1}, "causal must be a bool"),
    ({"axial_shape": (8, 8)}, r"axial_shape=\(8, 8\) must multiply to max_seq_len=128"),
    ({"axial_shape": (128,)}, "axial_shape must be two positive integers"),
])
def test_bad_config_is_rejected_by_name(overrides, message):
    with pytest.raises(ValueError, match=message):
        config(**overrides)


def test_bad_model_arguments_are_rejected_by_name():
    cfg = config()
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        ReformerLM(cfg, backend="nope")
    with pytest.raises(ValueError, match="backend='eager' is a 'lsh' backend"):
        TransformerLM(cfg, backend="eager")
    with pytest.raises(ValueError, match="ff_chunks must be >= 1, got ff_chunks=0"):
        ReformerLM(cfg, ff_chunks=0)
    with pytest.raises(ValueError, match="reversible must be a bool"):
        ReformerLM(cfg, reversible="yes")
    model = ReformerLM(cfg)
    with pytest.raises(ValueError, match=r"tokens must be in \[0, vocab=48\), got values in \[0, 48\]"):
        model(torch.tensor([[0, 48]]))
    with pytest.raises(ValueError, match="tokens must be a \\(batch, seq\\) int64 tensor"):
        model(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="seq_len=60 is not a multiple of chunk_len=8"):
        model(tokens(cfg, seq=60))
