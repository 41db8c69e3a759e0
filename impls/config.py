"""LSHConfig: the settings every LSH backend reads, validated once where they are made."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LSHConfig:
    """Settings of one LSH attention call (see docs/DESIGN.md, "The attention contract").

    n_buckets: buckets per hash round (even; the rotation draws n_buckets // 2 directions).
    n_hashes: hash rounds, combined with log-sum-exp weights.
    chunk_len: sorted positions per chunk; None means 2 * seq_len / n_buckets (the paper's choice,
        so that a bucket of average size spans about two chunks).
    causal: a query never attends to a later original position.
    dedup: subtract log N_ij (paper Eq. 16), N_ij = rounds in which key j is in query i's window.
    seed: seeds the torch.Generator that draws the random rotations.
    """

    n_buckets: int = 64
    n_hashes: int = 4
    chunk_len: int | None = None
    causal: bool = False
    dedup: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        require_int("n_buckets", self.n_buckets)
        require_int("n_hashes", self.n_hashes)
        require_int("seed", self.seed)
        if self.n_buckets < 2 or self.n_buckets % 2:
            raise ValueError(f"n_buckets must be an even integer >= 2, got n_buckets={self.n_buckets}")
        if self.n_hashes < 1:
            raise ValueError(f"n_hashes must be >= 1, got n_hashes={self.n_hashes}")
        if self.chunk_len is not None:
            require_int("chunk_len", self.chunk_len)
            if self.chunk_len < 1:
                raise ValueError(f"chunk_len must be >= 1, got chunk_len={self.chunk_len}")
        for flag in ("causal", "dedup"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be a bool, got {flag}={getattr(self, flag)!r}")

    def resolve_chunk_len(self, seq_len: int) -> int:
        """The chunk length used for a sequence of seq_len tokens; raises if it does not tile it."""
        return resolve_buckets(seq_len, self.n_buckets, self.chunk_len)[1]


def resolve_buckets(seq_len: int, n_buckets: int | None, chunk_len: int | None) -> tuple[int, int]:
    """The one "auto" bucket rule, (n_buckets, chunk_len) for a sequence of seq_len tokens: None for one
    of the two means n_buckets = 2 * seq_len / chunk_len, or chunk_len = 2 * seq_len / n_buckets (the
    paper's choice, so that a bucket of average size spans about two chunks). ValueError where the
    values do not tile seq_len."""
    if n_buckets is None:
        if chunk_len is None:
            raise ValueError("n_buckets and chunk_len cannot both be automatic (None or \"auto\"): set one of them")
        if seq_len % chunk_len:
            raise ValueError(f"seq_len={seq_len} is not a multiple of chunk_len={chunk_len}")
        return max(2, 2 * seq_len // chunk_len), chunk_len  # 2 * (seq / chunk_len): even
    if chunk_len is None:
        if (2 * seq_len) % n_buckets:
            raise ValueError(
                f"an automatic chunk_len is 2*seq_len/n_buckets, which is not an integer for "
                f"seq_len={seq_len}, n_buckets={n_buckets}; set chunk_len explicitly"
            )
        chunk_len = max(1, 2 * seq_len // n_buckets)
    if seq_len % chunk_len:
        raise ValueError(f"seq_len={seq_len} is not a multiple of chunk_len={chunk_len}")
    return n_buckets, chunk_len


def require_int(name: str, value: object, minimum: int | None = None, below: int | None = None) -> None:
    """ValueError naming the parameter unless value is an integer (not a bool), >= minimum and < below
    where given: the project reports every bad value as a one-line ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {name}={value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {name}={value}")
    if below is not None and value >= below:
        raise ValueError(f"{name} must be < {below}, got {name}={value}")
