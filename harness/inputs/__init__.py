"""Attention inputs by name: the `inputs` case parameter of the attention workload (randn, clustered, and
whatever a suite plugin registers).

An inputs function makes (qk, v) for one case:

    make(shape, *, seed, dtype, device, generator) -> (qk, v)

shape: (batch, heads, seq_len, d_head). generator: the case's generator on its device, seeded with seed;
what the workload draws after the inputs (grad_out) continues from it. Inputs drawn on the CPU from
their own generator seeded with `seed` are the same on every device.

A plugin adds one with `register_inputs("mine", make)`. Importing this package imports no torch: the
built-in functions load their module on first use.
"""
from __future__ import annotations

from collections.abc import Callable

InputsFn = Callable[..., tuple]

#: name -> function, in registration order (harness.suite.case.INPUTS is this dict: a suite checks
#: `inputs` against what is registered when it is read).
INPUTS: dict[str, InputsFn] = {}


def register_inputs(name: str, make: InputsFn) -> None:
    """Register `make` under `name`; a second registration of a name replaces the first."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"inputs name must be an identifier, got name={name!r}")
    if not callable(make):
        raise ValueError(f"inputs {name!r}: make must be callable, got make={make!r}")
    INPUTS[name] = make


def get_inputs(name: str) -> InputsFn:
    if name not in INPUTS:
        raise ValueError(f"unknown inputs {name!r}; known: {', '.join(INPUTS)}")
    return INPUTS[name]


def list_inputs() -> list[str]:
    return list(INPUTS)


def _randn(shape, *, seed, dtype, device, generator):
    """Standard normal qk and v, drawn from the case's generator on its device (qk first)."""
    import torch

    return (torch.randn(shape, generator=generator, device=device, dtype=dtype),
            torch.randn(shape, generator=generator, device=device, dtype=dtype))


def _clustered(shape, *, seed, dtype, device, generator):
    """harness.inputs.clustered: keys and queries around a few centres (peaked attention, as in trained
    layers). Drawn on the CPU from a generator of its own, then moved: the same inputs on every device."""
    import torch

    from .clustered import clustered_inputs

    qk, v = clustered_inputs(*shape, torch.Generator().manual_seed(seed), dtype=dtype)
    return qk.to(device), v.to(device)


register_inputs("randn", _randn)
register_inputs("clustered", _clustered)
