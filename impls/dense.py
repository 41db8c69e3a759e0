"""Full-attention baselines: `dense` (the exact function LSH approximates) and `sdpa`."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import LSHConfig
from .lsh import accum_dtype, check_dense_inputs, mask_values


def dense_shared_qk_attention(qk: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """Exact shared-QK attention: keys are the unit-normalised queries, score q.k unscaled,
    self-mask and causal mask as in the LSH contract. Materialises (seq x seq) scores."""
    check_dense_inputs(qk, v)
    seq_len = qk.shape[2]
    keys = F.normalize(qk, p=2.0, dim=-1)
    scores = torch.matmul(qk, keys.transpose(-1, -2)).to(accum_dtype(qk.dtype))
    self_value, causal_value = mask_values(qk.dtype)
    positions = torch.arange(seq_len, device=qk.device)
    scores = scores.masked_fill(positions[:, None] == positions[None, :], self_value)
    if causal:
        scores = scores.masked_fill(positions[None, :] > positions[:, None], causal_value)
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    return torch.matmul(probs, v)


class DenseBackend:
    """The reference: exact shared-QK attention, O(seq^2) memory."""

    name = "dense"

    def available(self) -> tuple[bool, str]:
        return True, ""

    def attend(self, qk: torch.Tensor, v: torch.Tensor, cfg: LSHConfig) -> torch.Tensor:
        return dense_shared_qk_attention(qk, v, cfg.causal)


class SdpaBackend:
    """Standard attention as a user would write it today: torch's scaled_dot_product_attention
    (flash / memory-efficient kernels where the device has them) with qk as both query and key
    and the usual 1/sqrt(d) scale. A speed and memory baseline, not the LSH reference: it has no
    key normalisation and no self-mask, so it computes a different function from `dense`."""

    name = "sdpa"

    def available(self) -> tuple[bool, str]:
        return True, ""

    def attend(self, qk: torch.Tensor, v: torch.Tensor, cfg: LSHConfig) -> torch.Tensor:
        check_dense_inputs(qk, v)
        return F.scaled_dot_product_attention(qk, qk, v, is_causal=cfg.causal)
