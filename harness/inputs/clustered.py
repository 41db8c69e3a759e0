"""Structured inputs for attention fidelity: keys and queries around a few centres.

On `randn` inputs dense shared-QK attention is nearly uniform (unit keys, scores q . k of a few units
at most), so the relative error of LSH only measures how many keys a window holds. In a trained layer
attention is peaked: a query puts most of its mass on the few keys that point its way. These inputs
have that structure, drawn per (batch, head) row from `generator`:

    centres c_1 .. c_K      unit vectors, uniform on the sphere
    token i                 a centre a_i, uniform over the K
    qk_i = norm * (c_{a_i} + spread * n_i / sqrt(d)) / |c_{a_i} + spread * n_i / sqrt(d)|,  n_i ~ N(0, I)
    v_i  = u_{a_i} + value_noise * m_i,   u_k ~ N(0, I) a value per centre, m_i ~ N(0, I)

Why these parameters (their defaults):
- norm is the inverse temperature: keys are unit vectors, so a score is norm * cos. Two tokens of one
  centre have cos ~ 1 / (1 + spread^2); tokens of different centres have cos ~ 0 +- 1 / sqrt(d)
  (random directions). A query's own centre (seq_len / K keys) then outweighs the other
  (K - 1) seq_len / K keys by a factor of about exp(norm / (1 + spread^2) - norm^2 / (2 d)) / (K - 1),
  which the defaults make large: nearly all of the dense mass lies on the query's own centre. norm
  is of the order of the query norms that layers trained on a copy task reach (a trained
  layer's scores are that sharp); much smaller and attention spreads over all centres (the randn
  regime).
- spread: 1 / (1 + spread^2) is about the cosine such trained layers show between a query and the
  key it attends to. Large enough that one centre's tokens fall into different buckets of a round
  at the larger bucket counts (one round misses part of a peak; more rounds recover it, which is
  what the sweep over n_hashes measures); small enough that scores within a centre differ by less
  than a unit, so attention spreads over the centre instead of picking one nearest neighbour,
  which no hashing finds reliably.
- n_centres sets the width of a peak: seq_len / n_centres keys. 64 centres at 4096 tokens make a
  peak of 64 keys, as many as the smallest window of the sweep (two chunks of 32 at 256 buckets)
  holds, so at every bucket count a window can hold a whole peak when hashing sorts it together,
  and a window that holds part of it shows. Far fewer centres make broad peaks (towards randn's
  uniform attention); far more make peaks of a few keys.
- value_noise: in a layer qk and v are projections of the same hidden state, so tokens of one
  centre carry related values: a value is its centre's value u_k plus noise. With value_noise = 2
  the shared part is a fifth of a value's variance: a window that misses a peak entirely gives an
  error of the order of the output itself, and one that holds a different part of the peak still
  shows (its own-token parts average differently). With values independent of the keys, rel_error
  would again measure window size; with no noise, only whether a window touched the peak at all.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from impls.config import require_int as _require_int


def _require_nonnegative(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {name}={value!r}")


def clustered_inputs(batch: int, heads: int, seq_len: int, d_head: int, generator: torch.Generator,
                     n_centres: int = 64, spread: float = 0.3, norm: float = 12.0, value_noise: float = 2.0,
                     dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(qk, v), each (batch, heads, seq_len, d_head), with qk around n_centres centres per (batch, head)
    row (see the module docstring). Drawn on the CPU from `generator` only: one generator state gives
    the same tensors every time."""
    for name, value, minimum in (("batch", batch, 1), ("heads", heads, 1), ("seq_len", seq_len, 1),
                                 ("d_head", d_head, 1), ("n_centres", n_centres, 1)):
        _require_int(name, value, minimum)
    for name, amount in (("spread", spread), ("norm", norm), ("value_noise", value_noise)):
        _require_nonnegative(name, amount)
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got generator={type(generator).__name__}")
    rows = (batch, heads)
    centres = F.normalize(torch.randn(*rows, n_centres, d_head, generator=generator, dtype=torch.float64), dim=-1)
    values = torch.randn(*rows, n_centres, d_head, generator=generator, dtype=torch.float64)
    owner = torch.randint(0, n_centres, (*rows, seq_len), generator=generator)
    index = owner.unsqueeze(-1).expand(*rows, seq_len, d_head)
    noise = torch.randn(*rows, seq_len, d_head, generator=generator, dtype=torch.float64)
    # noise / sqrt(d) has norm ~ 1, so `spread` is the noise-to-centre ratio whatever d_head is.
    qk = norm * F.normalize(centres.gather(-2, index) + spread * noise / d_head ** 0.5, dim=-1)
    v = values.gather(-2, index) + value_noise * torch.randn(*rows, seq_len, d_head, generator=generator,
                                                             dtype=torch.float64)
    return qk.to(dtype), v.to(dtype)
