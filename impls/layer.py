"""One attention layer with its projections, x (batch, seq, heads * d_head) -> same shape: the unit a
benchmark of a backend's `layer` workload times, as a model would call it (the projections' transposed
outputs go to attend() as they are, without a contiguous copy).

    qk = x W_qk, v = x W_v  (heads * d_head -> heads x d_head each, no bias)
    out = Attn(qk, v) W_o + b_o
"""
from __future__ import annotations

import torch
from torch import nn

from .config import LSHConfig
from .registry import backend_info, get_backend


class AttentionLayer(nn.Module):
    def __init__(self, backend: str, heads: int, d_head: int, cfg: LSHConfig) -> None:
        super().__init__()
        width = heads * d_head
        self.heads, self.d_head, self.cfg = heads, d_head, cfg
        self.backend = get_backend(backend)
        self.to_qk = nn.Linear(width, width, bias=False)
        self.to_v = nn.Linear(width, width, bias=False)
        self.to_out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq_len, width = x.shape
        qk = self.to_qk(x).view(batch, seq_len, self.heads, self.d_head).transpose(1, 2)
        v = self.to_v(x).view(batch, seq_len, self.heads, self.d_head).transpose(1, 2)
        out = self.backend.attend(qk, v, self.cfg)
        return self.to_out(out.transpose(1, 2).reshape(batch, seq_len, width))


def build_layer(backend: str, heads: int, d_head: int, cfg: LSHConfig, seq_len: int) -> nn.Module:
    """The attention layer of `backend`: its own (a peer's layer builder) or AttentionLayer."""
    info = backend_info(backend)
    if info.layer is not None:
        return info.layer(heads, d_head, cfg, seq_len)
    return AttentionLayer(backend, heads, d_head, cfg)
