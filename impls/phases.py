"""Named phases of a backend's call (hash, sort, gather, attend, combine, and the backward's), off unless
a caller turns them on.

Backends wrap each phase in `with phase("lsh.attend"):`. Off (the default), phase() returns one shared
no-op context: the timed calls pay an attribute read and a function call per phase, no profiler op. On
(`enabled()`), each phase is a torch.profiler.record_function range of that name (so a profiler sees it:
its time, its ops, a trace) and its name is on `stack()` while it runs (so a memory tracker can say in
which phase a tensor was made). `sync`: a function called at every phase's entry and exit, e.g.
torch.cuda.synchronize, so that a CPU-side range covers the device work it launched (asynchronous
launches would otherwise be timed as the launch alone).

Phases do not nest within one backend; a caller that nests its own ranges around them (a model's
layers) gets the inner phases' time out of the outer ones (exclusive times, harness.measure.phases).
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import torch

_NULL = contextlib.nullcontext()


class _State(threading.local):
    def __init__(self) -> None:
        self.on = False
        self.record = True
        self.sync: Callable[[], None] | None = None
        self.stack: list[str] = []
        self.seen: set[str] = set()


_state = _State()
# Whether any thread has phases on: read first, so that the default path touches no thread-local.
_active = False


class _Phase:
    __slots__ = ("name", "_range")

    def __init__(self, name: str) -> None:
        self.name = name
        self._range = torch.profiler.record_function(name) if _state.record else None

    def __enter__(self) -> None:
        if _state.sync is not None:
            _state.sync()
        if self._range is not None:
            self._range.__enter__()
        _state.stack.append(self.name)
        _state.seen.add(self.name)

    def __exit__(self, *exc) -> None:
        if _state.sync is not None:
            _state.sync()
        _state.stack.pop()
        if self._range is not None:
            self._range.__exit__(*exc)


def phase(name: str):
    """A context manager around one phase of a backend's call; a no-op unless enabled()."""
    if not _active or not _state.on:
        return _NULL
    return _Phase(name)


@contextlib.contextmanager
def enabled(record: bool = True, sync: Callable[[], None] | None = None) -> Iterator[set[str]]:
    """Turn phases on in this thread for the enclosed code; yields the set of phase names entered.

    record: open a record_function range per phase (False: only keep stack(), e.g. for a memory
    tracker, which needs no profiler op). sync: called at each phase's entry and exit."""
    global _active
    saved = (_state.on, _state.record, _state.sync, _state.stack, _state.seen)
    _state.on, _state.record, _state.sync, _state.stack, _state.seen = True, record, sync, [], set()
    _active = True
    try:
        yield _state.seen
    finally:
        _state.on, _state.record, _state.sync, _state.stack, _state.seen = saved
        _active = _state.on


def stack() -> tuple[str, ...]:
    """The phases open in this thread, outermost first (empty when phases are off)."""
    return tuple(_state.stack)
