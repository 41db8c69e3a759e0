"""Reference figures a reader needs to judge a model's held-out bits per token: the held-out split's
unigram entropy (what predicting by frequency alone gives) and general-purpose compressors' bits per
byte on the same bytes (bz2 and xz at their strongest presets)."""
from __future__ import annotations

import bz2
import lzma
import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class References:
    """tokens: how many held-out tokens the figures are of. unigram_bits: entropy of the held-out tokens'
    own frequencies, bits per token. unigram_train_bits: cross-entropy of the held-out tokens under the
    training split's frequencies (add-one smoothed), what a frequency-only model actually scores.
    bz2_bits, xz_bits: compressed size in bits per byte of the held-out blocks concatenated."""

    tokens: int
    unigram_bits: float
    unigram_train_bits: float | None
    bz2_bits: float
    xz_bits: float


def unigram_entropy(tokens: torch.Tensor, vocab: int = 256) -> float:
    """Entropy in bits per token of the tokens' own frequencies."""
    counts = torch.bincount(tokens.reshape(-1).long(), minlength=vocab).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * torch.log2(p)).sum())


def unigram_cross_entropy(tokens: torch.Tensor, reference: torch.Tensor, vocab: int = 256) -> float:
    """Bits per token of `tokens` under `reference`'s frequencies with one added to every count."""
    ref = torch.bincount(reference.reshape(-1).long(), minlength=vocab).double() + 1.0
    log_p = torch.log2(ref / ref.sum())
    counts = torch.bincount(tokens.reshape(-1).long(), minlength=vocab).double()
    return float(-(counts * log_p).sum() / counts.sum())


def compressed_bits_per_byte(data: bytes) -> tuple[float, float]:
    """(bz2 -9, xz -9e) bits per byte of `data`."""
    if not data:
        raise ValueError("compressed_bits_per_byte needs at least one byte")
    bz2_size = len(bz2.compress(data, compresslevel=9))
    xz_size = len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
    return 8 * bz2_size / len(data), 8 * xz_size / len(data)


def references(held_out: torch.Tensor, train: list[torch.Tensor] | None = None, vocab: int = 256) -> References:
    """The figures of a held-out split (uint8 tokens, any shape) and, given, its training runs."""
    if held_out.dtype != torch.uint8:
        raise ValueError(f"held_out must be uint8 tokens, got dtype={held_out.dtype}")
    flat = held_out.reshape(-1).contiguous()
    bz2_bits, xz_bits = compressed_bits_per_byte(flat.numpy().tobytes())
    train_bits = unigram_cross_entropy(flat, torch.cat(train), vocab) if train else None
    return References(tokens=flat.numel(), unigram_bits=unigram_entropy(flat, vocab),
                      unigram_train_bits=train_bits, bz2_bits=bz2_bits, xz_bits=xz_bits)


def bits_from_nats(nats: float) -> float:
    return nats / math.log(2)
