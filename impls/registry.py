"""The backend protocol and the registry that maps names to backends."""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

from .config import LSHConfig


@runtime_checkable
class AttentionBackend(Protocol):
    """What every backend offers. attend() computes the contract of DESIGN.md."""

    name: str
    #: "lsh" for backends that hash (eager, compiled, triton), "dense" for full-attention baselines.
    kind: str

    def available(self) -> tuple[bool, str]:
        ...

    def attend(self, qk: torch.Tensor, v: torch.Tensor, cfg: LSHConfig) -> torch.Tensor:
        """LSH backends also accept `buckets=` (precomputed impls.lsh.hash_buckets(qk, cfg))."""
        ...


_FACTORIES: dict[str, Callable[[], AttentionBackend]] = {}
_INSTANCES: dict[str, AttentionBackend] = {}


def register_backend(name: str, factory: Callable[[], AttentionBackend]) -> None:
    _FACTORIES[name] = factory


def list_backends() -> list[str]:
    return list(_FACTORIES)


def get_backend(name: str) -> AttentionBackend:
    if name not in _FACTORIES:
        raise ValueError(f"unknown backend {name!r}; known backends: {', '.join(_FACTORIES)}")
    if name not in _INSTANCES:
        _INSTANCES[name] = _FACTORIES[name]()
    return _INSTANCES[name]
