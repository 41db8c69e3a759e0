"""Peer backends: public Reformer implementations behind our attend() interface, for side-by-side runs.

    hf_lsh            transformers' ReformerModel LSHSelfAttention (Hugging Face)
    reformer_pytorch  lucidrains' reformer-pytorch LSHAttention

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

import importlib.metadata

import torch
from torch import nn

from .config import LSHConfig
from .lsh import check_inputs


def _package_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


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

    def peer_info(self) -> str:
        return f"{self.package} {_package_version(self.package)}"

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
            self._modules[key] = module.to(device=device, dtype=dtype)
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

    def peer_info(self) -> str:
        return f"{self.package} {_package_version(self.package)}"

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

            self._modules[key] = LSHAttention(bucket_size=chunk_len, n_hashes=cfg.n_hashes, causal=cfg.causal).eval()
        # Rotations come from torch's global generator in reformer-pytorch: seed it for repeatability.
        torch.manual_seed(cfg.seed)
        out, _, _ = self._modules[key](qk.reshape(batch * heads, seq_len, d_head),
                                       v.reshape(batch * heads, seq_len, d_head))
        return out.view(batch, heads, seq_len, d_head)


PEER_BACKENDS = {"hf_lsh": HFLSHBackend, "reformer_pytorch": ReformerPytorchBackend}


def register_peers(register_backend) -> None:
    """Register every peer under its name (impls.register_backend)."""
    for name, factory in PEER_BACKENDS.items():
        register_backend(name, factory)
