"""The blocked algorithm that the eager and compiled backends share: work on blocks of (batch x head
x round) rows in sorted order, in reused buffers, and combine the hash rounds online.

- SCORE_BLOCK_ELEMENTS / score_budget: how many query-key scores one step materialises.
- RowTable: gathers the D-vectors of a (B, H, N, D) tensor into sorted order in place of a copy.
- Buffers: work buffers allocated once per call.
- combine_round_: folds one round's output and log-sum-exp into the running combination.
- unit_keys / keys_backward_: keys = queries at unit length, and the gradient through that.
- BlockPlan: what forward and backward of one call share (sorted order, chunking, masks, dtypes).
"""
from __future__ import annotations

import torch

from .lsh import accum_dtype, mask_values, window_chunks

# Upper bound on query-key scores materialised at once (per temporary), by device type. CPU: 256K
# fp32 = 1 MiB, the fastest of the sizes timed (docs/DESIGN.md, "Tuned constants"): the temporaries
# stay in cache. CUDA: each step is ~20 kernel launches, so steps must be large enough for launches not
# to dominate (16 MiB).
SCORE_BLOCK_ELEMENTS = {"cpu": 1 << 18, "cuda": 1 << 22}


def score_budget(device: torch.device) -> int:
    """SCORE_BLOCK_ELEMENTS for a device (the CPU's for device types it does not list)."""
    return SCORE_BLOCK_ELEMENTS.get(device.type, SCORE_BLOCK_ELEMENTS["cpu"])


class RowTable:
    """The D-vectors of a (B, H, N, D) tensor as rows of a 2-d view of its storage, so that a strided
    input (a transposed projection, typically) is gathered from in place instead of copied whole:
    vector (b, h, n) is rows[start[b*H + h] + n * step]."""

    def __init__(self, x: torch.Tensor) -> None:
        batch, heads, _, d = x.shape
        if not rows_addressable(x):
            x = x.contiguous()
        s_b, s_h, s_n, _ = x.stride()
        n_rows = x.untyped_storage().nbytes() // x.element_size() // d
        self.rows = x.as_strided((n_rows, d), (d, 1), 0)
        starts = (torch.arange(batch, device=x.device).unsqueeze(1) * s_b
                  + torch.arange(heads, device=x.device).unsqueeze(0) * s_h + x.storage_offset())
        self.start = (starts // d).reshape(-1)
        self.step = s_n // d
        self.d = d

    def sorted_rows(self, bh: torch.Tensor, perm: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """(G, N, D) with out[g, s] = x[bh[g], perm[g, s]]: one gather."""
        index = (self.start[bh].unsqueeze(-1) + perm * self.step).reshape(-1)
        return select_rows(self.rows, index, out, (*perm.shape, self.d))


def rows_addressable(x: torch.Tensor) -> bool:
    d = x.shape[-1]
    return (x.stride(-1) == 1 and x.storage_offset() % d == 0
            and all(stride % d == 0 and stride > 0 for stride in x.stride()[:-1]))


def select_rows(rows: torch.Tensor, index: torch.Tensor, out: torch.Tensor | None, shape) -> torch.Tensor:
    if out is None:
        return rows.index_select(0, index).view(shape)
    torch.index_select(rows, 0, index, out=out.view(-1, shape[-1]))
    return out


class Buffers:
    """Work buffers, allocated once per call and reused by every block of rows.

    Fresh buffers of a long row (16 MiB at 64K tokens x 64 dims) come from the OS on every block
    (glibc maps large blocks anew): first-touch page faults then cost more than the arithmetic.
    Every buffer starts `lead` elements into its storage (impls.compiled needs views that never
    start at storage offset 0, a value dynamo specialises).
    """

    def __init__(self, device, lead: int = 0) -> None:
        self.device, self.lead = device, lead
        self._store: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A contiguous `shape` view of buffer (name, dtype), grown when too small."""
        numel = 1
        for size in shape:
            numel *= size
        key = (name, dtype)
        store = self._store.get(key)
        if store is None or store.numel() < self.lead + numel:
            store = self._store[key] = torch.empty(self.lead + numel, dtype=dtype, device=self.device)
        return store[self.lead:self.lead + numel].view(shape)


def combine_round_(combined, lse_max, weight_sum, out_r, lse_r) -> None:
    """Fold one round's output and log-sum-exp (original order) into the online combination, in
    place: running max of lse_r, sum of exp(lse_r - max), sum of exp(lse_r - max) o_r.

    A running max, not a running logsumexp: lse values near the -1e5 self mask (a token seeing only
    itself) are spaced ~0.008 apart in fp32, so exp(lse_r - logsumexp) would not sum to 1; weights
    exp(lse_r - max) / sum do."""
    new_max = torch.maximum(lse_max, lse_r)
    rescale = (lse_max - new_max).exp_()
    weight = (lse_r - new_max).exp_()
    combined.mul_(rescale.unsqueeze(-1)).addcmul_(out_r.to(combined.dtype), weight.unsqueeze(-1))
    weight_sum.mul_(rescale).add_(weight)
    lse_max.copy_(new_max)


# F.normalize's floor on the norm: keys are x / max(|x|, eps), so a zero query gives a zero key.
NORM_EPS = 1e-12


def unit_keys(q_s: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys of a block of sorted rows: the queries at unit length (into out), and the norms."""
    norm = torch.linalg.vector_norm(q_s, dim=-1, keepdim=True).clamp_min_(NORM_EPS)
    return torch.div(q_s, norm, out=out), norm


def keys_backward_(d_keys: torch.Tensor, keys: torch.Tensor, norm: torch.Tensor,
                    scratch: torch.Tensor) -> torch.Tensor:
    """Gradient through k = q / max(|q|, eps), in place in d_keys: (dk - k (k . dk)) / max(|q|, eps).

    Below the floor this differs from F.normalize's dk / eps only by k (k . dk) with |k| < 1 there;
    for a zero query (k = 0) the two agree exactly."""
    along = torch.mul(keys, d_keys, out=scratch).sum(-1, keepdim=True)
    return d_keys.addcmul_(keys, along, value=-1).div_(norm)


class BlockPlan:
    """Everything about one call that forward and backward share (no tensors that need grad).

    perm[bh, r, i]: the original position at sorted slot i of round r; rank: its inverse."""

    def __init__(self, perm: torch.Tensor, rank: torch.Tensor, chunk_len: int, causal: bool, dedup: bool,
                 dtype: torch.dtype) -> None:
        self.perm, self.rank = perm, rank  # (BH, R, N)
        self.n_rounds = perm.shape[1]
        self.chunk_len = chunk_len
        self.n_chunks = perm.shape[-1] // chunk_len
        self.window = window_chunks(self.n_chunks)
        self.causal, self.dedup = causal, dedup
        self.acc = accum_dtype(dtype)
        # float64 inputs are scored in float64 (acc); other dtypes use their own finite constants.
        self.self_value, self.causal_value = mask_values(self.acc if dtype == torch.float64 else dtype)
        self.budget = score_budget(perm.device)
