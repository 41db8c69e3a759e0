"""Language-model batches and held-out scoring over any corpus split (corpus-generic helpers).

Training windows are drawn from the training runs only, uniformly over every start position where a
whole window fits inside one run (a multiple of `align` into the run: align = block_len for images,
so a window starts at an image's first pixel). Held-out windows are fixed: the held-out blocks cut
into consecutive windows, or, when a window is longer than a block, consecutive held-out blocks
joined (allowed only when seq_len is a whole number of blocks: independent images may be joined,
a book's distant passages may not be cut mid-block).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from impls.model import ReformerLM, TransformerLM


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {name}={value!r}")
    return value


def sample_windows(runs: list[torch.Tensor], seq_len: int, batch: int, generator: torch.Generator,
                   align: int = 1) -> torch.Tensor:
    """(batch, seq_len) int64 windows of the runs, drawn with `generator` only (see the module docstring)."""
    _positive_int("seq_len", seq_len)
    _positive_int("batch", batch)
    _positive_int("align", align)
    starts_per_run = torch.tensor([max(0, (len(run) - seq_len) // align + 1) for run in runs])
    total = int(starts_per_run.sum())
    if total == 0:
        raise ValueError(f"no training run holds a window of seq_len={seq_len} "
                         f"(longest run: {max((len(r) for r in runs), default=0)} tokens)")
    ends = starts_per_run.cumsum(0)
    picks = torch.randint(0, total, (batch,), generator=generator)
    rows = []
    for pick in picks.tolist():
        run = int(torch.searchsorted(ends, pick, right=True))
        offset = (pick - (int(ends[run - 1]) if run else 0)) * align
        rows.append(runs[run][offset:offset + seq_len])
    return torch.stack(rows).long()


def held_out_windows(held_out: torch.Tensor, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """(n, seq_len) int64 fixed held-out windows; with max_windows, that many spread evenly over them."""
    _positive_int("seq_len", seq_len)
    blocks, block_len = held_out.shape
    if seq_len <= block_len:
        windows = held_out[:, :block_len // seq_len * seq_len].reshape(-1, seq_len)
    elif seq_len % block_len == 0:
        per = seq_len // block_len
        windows = held_out[:blocks // per * per].reshape(-1, seq_len)
    else:
        raise ValueError(f"seq_len={seq_len} is longer than a held-out block ({block_len} tokens) and "
                         f"not a whole number of blocks")
    if len(windows) == 0:
        raise ValueError(f"the held-out split holds no window of seq_len={seq_len}")
    if max_windows is not None and _positive_int("max_windows", max_windows) < len(windows):
        index = torch.linspace(0, len(windows) - 1, max_windows).round().long().unique()
        windows = windows[index]
    return windows.long()


@torch.no_grad()
def held_out_bits(model: ReformerLM | TransformerLM, windows: torch.Tensor, batch: int) -> float:
    """Mean next-token cross-entropy of `model` (an impls.model LM: hidden and head) on the windows,
    in bits per token, over all windows x (seq_len - 1) predicted tokens. Runs in eval mode and
    restores the module's mode afterwards."""
    _positive_int("batch", batch)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for rows in windows.split(batch):
            rows = rows.to(device)
            logits = model.head(model.hidden(rows)[:, :-1])
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1),
                                           reduction="sum"))
            count += rows[:, 1:].numel()
    finally:
        model.train(was_training)
    return total / count / math.log(2)
