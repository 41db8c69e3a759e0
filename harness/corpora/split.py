"""The fixed split of a corpus: held-out blocks interleaved through it, never its tail.

The tokens are cut into blocks of block_len; block i is held out when i % every == every // 2 (so
the first held-out block is not the corpus's opening and the last block is not favoured), every
other token is training data. Training data are kept as runs: the maximal stretches between held-out
blocks (a final partial block joins the last run), so a training window never straddles a held-out
block and never joins text that was not adjacent.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Split:
    """train: contiguous runs of training tokens, in corpus order. held_out: (n_blocks, block_len) tensor.
    held_out_starts: each held-out block's first position in the corpus."""

    train: list[torch.Tensor]
    held_out: torch.Tensor
    held_out_starts: list[int]
    block_len: int
    every: int

    @property
    def train_tokens(self) -> int:
        return sum(len(run) for run in self.train)

    @property
    def held_out_tokens(self) -> int:
        return self.held_out.numel()

    def describe(self) -> str:
        return (f"held out: block i of {self.block_len} tokens with i % {self.every} == {self.every // 2} "
                f"({self.held_out.shape[0]} blocks, {self.held_out_tokens} tokens); "
                f"train: {self.train_tokens} tokens in {len(self.train)} runs")


def held_out_block(index: int, every: int) -> bool:
    return index % every == every // 2


def split(tokens: torch.Tensor, block_len: int, every: int) -> Split:
    """Split 1-D `tokens` (see the module docstring); ValueError when no block would be held out."""
    for name, value, minimum in (("block_len", block_len, 1), ("every", every, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {name}={value!r}")
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be 1-D, got shape={tuple(tokens.shape)}")
    blocks = len(tokens) // block_len
    held = [i for i in range(blocks) if held_out_block(i, every)]
    if not held:
        raise ValueError(f"{len(tokens)} tokens make {blocks} blocks of block_len={block_len}: "
                         f"none is held out with every={every}")
    train, start = [], 0
    for i in held:
        if i * block_len > start:
            train.append(tokens[start:i * block_len])
        start = (i + 1) * block_len
    if start < len(tokens):
        train.append(tokens[start:])
    starts = [i * block_len for i in held]
    held_out = torch.stack([tokens[s:s + block_len] for s in starts])
    return Split(train=train, held_out=held_out, held_out_starts=starts, block_len=block_len, every=every)


def corpus_split(data) -> Split:
    """The corpus's own fixed split of a loaded corpus (harness.corpora.source.CorpusData)."""
    return split(data.tokens, data.corpus.block_len, data.corpus.held_out_every)
