"""Peer backends: public Reformer implementations behind our interface, for side-by-side runs.

    hf_lsh            transformers' (Hugging Face) Reformer: LSHSelfAttention, its layer, ReformerModelWithLMHead
    reformer_pytorch  lucidrains' reformer-pytorch: LSHAttention, LSHSelfAttention, ReformerLM

Each peer is measured at three levels, as our backends are (the harness's `workload`):
- attention: attend(qk, v, cfg), the peer's attention with its projections bypassed (below);
- layer: the peer's own attention layer with its projections (hf_lsh_layer / reformer_pytorch_layer),
  x (batch, seq, heads * d_head) -> same shape, cost-matched: chunk length, hash rounds and bucket
  count from the case (transformers: lsh_attn_chunk_length, num_hashes, num_buckets, one chunk before,
  none after; reformer-pytorch: bucket_size = chunk_len, seq / chunk_len buckets, its own rule);
- model: the peer's whole language model (hf_lsh_model / reformer_pytorch_model) with a loss(tokens)
  of next-token cross-entropy, shaped by our ModelConfig (see each builder for the mapping).

Both are optional (`pip install '.[peers]'`); without the package a peer's available() says so and
the harness records status "unavailable". They are cost-matched to our backends, not equal to them:

- Same inputs: qk and v of shape (batch, heads, seq, d_head), with the peer's projections bypassed
  (hf_lsh: the query_key / value Linear layers are replaced by slices of [qk ; v], so no projection
  FLOPs are added; reformer_pytorch: LSHAttention takes (batch * heads, seq, d_head) directly).
- Same cost knobs: chunk length and hash rounds, and a window of the own chunk plus one before.
  hf_lsh: lsh_attn_chunk_length = chunk_len, num_buckets = n_buckets, num_hashes = n_hashes,
  lsh_num_chunks_before = 1, lsh_num_chunks_after = 0. reformer_pytorch: bucket_size = chunk_len,
  n_hashes = n_hashes; it always uses seq / bucket_size buckets (n_buckets is ignored) and needs
  seq to be a multiple of 2 * chunk_len.
- Different functions: each draws its own random rotations (its own seeding), hf_lsh looks back
  across hash-round boundaries, reformer_pytorch scales scores by 1/sqrt(d_head). So outputs differ
  from ours for the same seed. Fidelity (rel_error) is measured against the exact attention each
  peer approximates: reformer_pytorch offers score_scale(d_head), and its reference is dense
  attention on qk * score_scale (keys are unit-normalised, so only the scores scale). Its rows
  carry the bucket count it really uses (effective_n_buckets), which the FLOP count follows.
"""
from __future__ import annotations

import functools
import inspect

import torch
from torch import nn

from .config import LSHConfig
from .lsh import check_inputs
from .phases import phase

# A peer's own methods that are one of our named phases (impls.phases), wrapped in it on the peer's
# classes. A peer's backward is autograd's, with no range of its own (its time is the phases pass's
# "other"), except where a reversible peer model re-runs these methods in its backward (transformers'
# layers re-attend, reformer-pytorch re-hashes): those count in their phase. transformers' unsort
# (ReverseSort) and round combination are inline: "other".
HF_PHASES = {"_hash_vectors": "lsh.hash", "_get_sorted_bucket_idx_and_undo_sorted_bucket_idx": "lsh.sort",
             "_gather_by_expansion": "lsh.gather", "_attend": "lsh.attend"}
# reformer-pytorch sorts, gathers and attends inline in LSHAttention.forward: hashing alone is a method.
REFORMER_PYTORCH_PHASES = {"hash_vectors": "lsh.hash"}


def with_phases(module: nn.Module, phases_of: dict[str, str]) -> nn.Module:
    """module, with each method named in phases_of, of its class and its submodules' classes, run inside
    its phase. On the class, once (a marked wrapper is not wrapped again), so that copies and pickles of
    the module are plain; the range is the shared no-op unless the phases pass is on."""
    for sub in module.modules():
        for method, name in phases_of.items():
            owner = next((c for c in type(sub).__mro__ if method in c.__dict__), None)
            original = owner.__dict__[method] if owner is not None else None
            # Plain functions only (a staticmethod wrapped as one would be bound); a marked one is ours.
            if inspect.isfunction(original) and not getattr(original, "_reformer_bench_phase", None):
                setattr(owner, method, _in_phase(original, name))
    return module


def _in_phase(method, name: str):
    @functools.wraps(method)
    def ranged(*args, **kwargs):
        with phase(name):
            return method(*args, **kwargs)
    ranged._reformer_bench_phase = name  # type: ignore[attr-defined]
    return ranged


class _Slice(nn.Module):
    """x[..., start:stop], contiguous: stands in for a peer's projection Linear."""

    def __init__(self, start: int, stop: int) -> None:
        super().__init__()
        self.start, self.stop = start, stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., self.start:self.stop].contiguous()


class HFLSHBackend:
    """transformers' LSHSelfAttention with its projections bypassed (see the module docstring)."""

    name = "hf_lsh"
    kind = "peer"
    package = "transformers"

    def __init__(self) -> None:
        self._modules: dict[tuple, nn.Module] = {}

    def available(self) -> tuple[bool, str]:
        try:
            from transformers.models.reformer.modeling_reformer import LSHSelfAttention  # noqa: F401
        except ImportError as exc:
            return False, f"transformers' Reformer is not importable ({exc}); pip install '.[peers]'"
        return True, ""

    def _module(self, heads: int, d_head: int, seq_len: int, cfg: LSHConfig, chunk_len: int, dtype, device):
        key = (heads, d_head, seq_len, cfg, chunk_len, dtype, device)
        if key not in self._modules:
            from transformers import ReformerConfig
            from transformers.models.reformer.modeling_reformer import LSHSelfAttention

            config = ReformerConfig(
                hidden_size=heads * d_head, num_attention_heads=heads, attention_head_size=d_head,
                num_hashes=cfg.n_hashes, num_buckets=cfg.n_buckets, lsh_attn_chunk_length=chunk_len,
                lsh_num_chunks_before=1, lsh_num_chunks_after=0, is_decoder=cfg.causal, hash_seed=cfg.seed,
                lsh_attention_probs_dropout_prob=0.0, max_position_embeddings=seq_len,
                attn_layers=["lsh"],
            )
            module = LSHSelfAttention(config)
            width = heads * d_head
            module.query_key = _Slice(0, width)
            module.value = _Slice(width, 2 * width)
            module.eval()  # no dropout; hashing is the same in train and eval mode
            self._modules[key] = with_phases(module.to(device=device, dtype=dtype), HF_PHASES)
        return self._modules[key]

    def attend(self, qk: torch.Tensor, v: torch.Tensor, cfg: LSHConfig) -> torch.Tensor:
        chunk_len = check_inputs(qk, v, cfg)
        batch, heads, seq_len, d_head = qk.shape
        module = self._module(heads, d_head, seq_len, cfg, chunk_len, qk.dtype, qk.device)
        # (B, N, [H*D of qk ; H*D of v]): the replaced projections slice the two halves back out.
        hidden = torch.cat([qk.transpose(1, 2).reshape(batch, seq_len, heads * d_head),
                            v.transpose(1, 2).reshape(batch, seq_len, heads * d_head)], dim=-1)
        out = module(hidden).hidden_states  # (B, N, H*D)
        return out.view(batch, seq_len, heads, d_head).transpose(1, 2)


class ReformerPytorchBackend:
    """reformer-pytorch's LSHAttention on (batch * heads, seq, d_head) inputs."""

    name = "reformer_pytorch"
    kind = "peer"
    package = "reformer-pytorch"

    def __init__(self) -> None:
        self._modules: dict[tuple, nn.Module] = {}

    def available(self) -> tuple[bool, str]:
        try:
            from reformer_pytorch.reformer_pytorch import LSHAttention  # noqa: F401
        except ImportError as exc:
            return False, f"reformer-pytorch is not importable ({exc}); pip install '.[peers]'"
        return True, ""

    def effective_n_buckets(self, cfg: LSHConfig, seq_len: int) -> int:
        """reformer-pytorch ignores n_buckets: it hashes into seq / bucket_size buckets."""
        return seq_len // cfg.resolve_chunk_len(seq_len)

    def score_scale(self, d_head: int) -> float:
        """reformer-pytorch multiplies q . k_unit by d_head**-0.5 (our contract does not): the exact
        attention it approximates is dense attention on qk scaled by this factor."""
        return d_head ** -0.5

    def attend(self, qk: torch.Tensor, v: torch.Tensor, cfg: LSHConfig) -> torch.Tensor:
        chunk_len = check_inputs(qk, v, cfg)
        batch, heads, seq_len, d_head = qk.shape
        if seq_len % (2 * chunk_len):
            raise ValueError(f"reformer_pytorch needs seq_len to be a multiple of 2 * chunk_len, got "
                             f"seq_len={seq_len}, chunk_len={chunk_len}")
        key = (chunk_len, cfg.n_hashes, cfg.causal)
        if key not in self._modules:
            from reformer_pytorch.reformer_pytorch import LSHAttention

            self._modules[key] = with_phases(
                LSHAttention(bucket_size=chunk_len, n_hashes=cfg.n_hashes, causal=cfg.causal).eval(),
                REFORMER_PYTORCH_PHASES)
        # Rotations come from torch's global generator in reformer-pytorch: seed it for repeatability.
        torch.manual_seed(cfg.seed)
        out, _, _ = self._modules[key](qk.reshape(batch * heads, seq_len, d_head),
                                       v.reshape(batch * heads, seq_len, d_head))
        return out.view(batch, heads, seq_len, d_head)


# --- layers and models ----------------------------------------------------------------------------

def _hf_attention_config(heads: int, d_head: int, cfg: LSHConfig, chunk_len: int, seq_len: int, **extra):
    from transformers import ReformerConfig

    return ReformerConfig(hidden_size=heads * d_head, num_attention_heads=heads, attention_head_size=d_head,
                          num_hashes=cfg.n_hashes, num_buckets=cfg.n_buckets, lsh_attn_chunk_length=chunk_len,
                          lsh_num_chunks_before=1, lsh_num_chunks_after=0, is_decoder=cfg.causal,
                          hash_seed=cfg.seed, lsh_attention_probs_dropout_prob=0.0,
                          max_position_embeddings=seq_len, **extra)


class _HiddenStates(nn.Module):
    """transformers' LSHSelfAttention returns an output object: its hidden_states are the layer's output."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x).hidden_states


def hf_lsh_layer(heads: int, d_head: int, cfg: LSHConfig, seq_len: int) -> nn.Module:
    """transformers' LSHSelfAttention with its query_key and value projections (it has no output
    projection: ReformerSelfOutput is a module of its own)."""
    from transformers.models.reformer.modeling_reformer import LSHSelfAttention

    chunk_len = cfg.resolve_chunk_len(seq_len)
    return _HiddenStates(with_phases(LSHSelfAttention(_hf_attention_config(heads, d_head, cfg, chunk_len, seq_len,
                                                                           attn_layers=["lsh"])), HF_PHASES))


class _Seeded(nn.Module):
    """Seeds torch's global generator before every call: reformer-pytorch draws its rotations from it."""

    def __init__(self, module: nn.Module, seed: int) -> None:
        super().__init__()
        self.module, self.seed = module, seed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(self.seed)
        return self.module(x)


def reformer_pytorch_layer(heads: int, d_head: int, cfg: LSHConfig, seq_len: int) -> nn.Module:
    """reformer-pytorch's LSHSelfAttention (qk, v and output projections) with bucket_size = chunk_len
    and n_hashes: it hashes into seq / chunk_len buckets whatever n_buckets says."""
    from reformer_pytorch import LSHSelfAttention

    chunk_len = cfg.resolve_chunk_len(seq_len)
    return _Seeded(with_phases(LSHSelfAttention(dim=heads * d_head, heads=heads, dim_head=d_head,
                                                bucket_size=chunk_len, n_hashes=cfg.n_hashes, causal=cfg.causal),
                               REFORMER_PYTORCH_PHASES), cfg.seed)


def _axial_shape(cfg) -> tuple[int, int]:
    """cfg.axial_shape, else (chunk_len, max_seq_len / chunk_len): transformers needs axial embeddings."""
    if cfg.axial_shape is not None:
        return tuple(cfg.axial_shape)
    if cfg.chunk_len and cfg.max_seq_len % cfg.chunk_len == 0 and cfg.max_seq_len > cfg.chunk_len:
        return cfg.chunk_len, cfg.max_seq_len // cfg.chunk_len
    return 1, cfg.max_seq_len


def _require_reversible(name: str, reversible: bool | None) -> None:
    if reversible is False:
        raise ValueError(f"{name}: the peer's language model is reversible; reversible=false is ours only")


class _PeerLM(nn.Module):
    """A peer's language model with our model interface: forward(tokens) -> logits, loss(tokens)."""

    def __init__(self, model: nn.Module, logits, loss) -> None:
        super().__init__()
        self.model = model
        self._logits, self._loss = logits, loss

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._logits(self.model, tokens)

    def loss(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._loss(self.model, tokens)


def hf_lsh_model(cfg, reversible: bool | None = None) -> nn.Module:
    """transformers' ReformerModelWithLMHead: attn_layers ["lsh"] * layers, lsh_attn_chunk_length =
    chunk_len, num_hashes, num_buckets = n_buckets or 2 * max_seq_len / chunk_len, one chunk before and
    none after, is_decoder = causal, axial position embeddings (_axial_shape) of d_model / 2 each,
    GELU, dropout, chunk_size_feed_forward = max_seq_len / ff_chunks (0: unchunked). Its loss is its own
    shifted next-token cross-entropy (labels = tokens)."""
    _require_reversible("hf_lsh", reversible)
    from transformers import ReformerConfig, ReformerModelWithLMHead

    n_buckets = cfg.n_buckets or max(2, 2 * cfg.max_seq_len // cfg.chunk_len)
    config = ReformerConfig(
        vocab_size=cfg.vocab, hidden_size=cfg.d_model, num_attention_heads=cfg.heads,
        attention_head_size=cfg.d_model // cfg.heads, feed_forward_size=cfg.d_ff, attn_layers=["lsh"] * cfg.layers,
        lsh_attn_chunk_length=cfg.chunk_len, num_hashes=cfg.n_hashes, num_buckets=n_buckets,
        lsh_num_chunks_before=1, lsh_num_chunks_after=0, is_decoder=cfg.causal,
        max_position_embeddings=cfg.max_seq_len, axial_pos_embds=True, axial_pos_shape=_axial_shape(cfg),
        axial_pos_embds_dim=(cfg.d_model // 2, cfg.d_model // 2), hidden_act="gelu",
        hidden_dropout_prob=cfg.dropout, lsh_attention_probs_dropout_prob=cfg.dropout, hash_seed=cfg.seed,
        pad_token_id=0, eos_token_id=1,
        chunk_size_feed_forward=0 if cfg.ff_chunks == 1 else cfg.max_seq_len // cfg.ff_chunks)
    return _PeerLM(with_phases(ReformerModelWithLMHead(config), HF_PHASES),
                   lambda m, tokens: m(input_ids=tokens).logits,
                   lambda m, tokens: m(input_ids=tokens, labels=tokens).loss)


def reformer_pytorch_model(cfg, reversible: bool | None = None) -> nn.Module:
    """reformer-pytorch's ReformerLM: depth = layers, bucket_size = chunk_len (seq / chunk_len buckets),
    n_hashes, ff_mult = d_ff / d_model, causal, ff_chunks, its default position embedding; loss =
    mean next-token cross-entropy of its logits."""
    _require_reversible("reformer_pytorch", reversible)
    from reformer_pytorch import ReformerLM as LucidReformerLM

    model = LucidReformerLM(num_tokens=cfg.vocab, dim=cfg.d_model, depth=cfg.layers, max_seq_len=cfg.max_seq_len,
                            heads=cfg.heads, dim_head=cfg.d_model // cfg.heads, bucket_size=cfg.chunk_len,
                            n_hashes=cfg.n_hashes, ff_mult=cfg.d_ff // cfg.d_model, causal=cfg.causal,
                            ff_chunks=cfg.ff_chunks, lsh_dropout=cfg.dropout, ff_dropout=cfg.dropout,
                            post_attn_dropout=cfg.dropout)

    def loss(m, tokens):
        logits = m(tokens)
        return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, cfg.vocab), tokens[:, 1:].reshape(-1))

    return _PeerLM(with_phases(model, REFORMER_PYTORCH_PHASES), lambda m, tokens: m(tokens), loss)


def register_peers(register_backend) -> None:
    """Register every peer under its name (impls.register_backend)."""
    register_backend("hf_lsh", HFLSHBackend, kind="peer", package="transformers", layer=hf_lsh_layer,
                     model=hf_lsh_model, description="Hugging Face transformers' Reformer")
    register_backend("reformer_pytorch", ReformerPytorchBackend, kind="peer", package="reformer-pytorch",
                     layer=reformer_pytorch_layer, model=reformer_pytorch_model,
                     capabilities={"score_scale", "effective_n_buckets"},
                     description="lucidrains' reformer-pytorch")
