"""The live set at the memory peak, by what made it: which op, in which module and phase (and, in a
backward, for which autograd node) each storage alive at the peak was created, grouped and summed.

- creation_site(roots): a context that follows the module stack (global forward hooks) and returns a
  function describing the present moment: "module path | backward of NODE | phase" (impls.phases'
  stack; the autograd node the engine is running, in a backward).
- breakdown(live, before_bytes): the live storages grouped by (op, where), largest first, plus one
  group for what lived before the call; their bytes sum to mem_peak_bytes exactly.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

# The group of what lives before the call (inputs, parameters, optimizer state): mem_peak_bytes counts it.
BEFORE_CALL_OP = "(before the call)"
BEFORE_CALL_WHERE = "inputs, parameters, optimizer state"
# Distinct (shape, dtype) examples kept per group.
SHAPES_PER_GROUP = 3


@contextlib.contextmanager
def creation_site(roots: list) -> Iterator[Callable[[], str]]:
    """Follow the modules being run (qualified names under the nn.Module roots; a module outside them
    by its class name) and the phases (impls.phases, stack only, no profiler ranges); yields where()."""
    from impls import phases

    names: dict[int, str] = {}
    for root in roots:
        if isinstance(root, torch.nn.Module):
            for name, module in root.named_modules():
                names.setdefault(id(module), name or type(root).__name__)
    modules: list[str] = []

    def enter(module, args) -> None:
        modules.append(names.get(id(module), type(module).__name__))

    def leave(module, args, output) -> None:
        if modules:
            modules.pop()

    def where() -> str:
        parts = [modules[-1] if modules else "(no module)"]
        node = torch._C._current_autograd_node()
        if node is not None:
            parts.append(f"backward of {node.name()}")
        stack = phases.stack()
        if stack:
            parts.append(stack[-1])
        return " | ".join(parts)

    from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

    handles = [register_module_forward_pre_hook(enter), register_module_forward_hook(leave, always_call=True)]
    try:
        with phases.enabled(record=False):
            yield where
    finally:
        for handle in handles:
            handle.remove()


def breakdown(live: list, before_bytes: int) -> list[dict]:
    """[{op, where, bytes, count, shapes}] largest first: the live storages at the peak grouped by the
    op and the moment that made them, and what lived before the call (count null: not tensors the
    call made)."""
    groups: dict[tuple[str, str], dict] = {}
    for storage in live:
        group = groups.setdefault((storage.op, storage.where), {"op": storage.op, "where": storage.where,
                                                                 "bytes": 0, "count": 0, "shapes": []})
        group["bytes"] += storage.nbytes
        group["count"] += 1
        if storage.shape not in group["shapes"] and len(group["shapes"]) < SHAPES_PER_GROUP:
            group["shapes"].append(storage.shape)
    rows = list(groups.values())
    if before_bytes:
        rows.append({"op": BEFORE_CALL_OP, "where": BEFORE_CALL_WHERE, "bytes": before_bytes, "count": None,
                     "shapes": []})
    return sorted(rows, key=lambda g: -g["bytes"])


def top(groups: list[dict], n: int) -> list[dict]:
    """The n largest groups as a row carries them: {op, where, bytes, count}."""
    return [{key: g[key] for key in ("op", "where", "bytes", "count")} for g in groups[:n]]
