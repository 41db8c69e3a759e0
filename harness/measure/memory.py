"""Peak memory of a region of code: the one measuring path behind results rows, the max_memory marker
and the gate.

- CPU: exact peak of live tensor storage bytes, counted at the PyTorch dispatcher (deterministic:
  the same ops allocate the same storages on every run, whatever the allocator or the OS do).
- CPU, every allocation: torch.profiler's allocator events (profile_memory) see each allocation and
  free through PyTorch's CPU allocator, kernel workspaces and torch.compile'd code included: the peak
  of their running sum is what the region added. It tells where the tensor figure is a lower bound
  (an ATen kernel's internal scratch never reaches the dispatcher as a tensor) and measures the
  compiled backend, which dynamo does not run under a dispatch mode.
- CUDA: the caching allocator's peak (`max_memory_allocated`) over what was allocated at entry.
- Cross-checks that are not gated: NVML device memory sampled in a thread (includes the CUDA context,
  the allocator's cache and other processes), the process's peak resident set size, and its RSS over
  the region sampled by memory-profiler.

All figures are bytes.
"""
from __future__ import annotations

import contextlib
import resource
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from typing_extensions import Self  # a torch dependency; typing.Self needs 3.11

CPU_METHOD = "cpu-tensor-tracker"
CPU_ALLOCATOR_METHOD = "cpu-allocator-profiler"
CUDA_METHOD = "cuda-allocator"


class PeakMemory:
    """Result of track_peak_memory: peak_bytes = max over the region of (live bytes - live at entry).

    peak_bytes: int, bytes. method: how it was measured (CPU_METHOD, CPU_ALLOCATOR_METHOD or CUDA_METHOD).
    retained_bytes: bytes allocated inside the region and still live at its exit (None until exit).
    live_at_peak: with track_peak_memory(..., where=...) on the CPU, the storages alive at the moment of
    the peak (LiveStorage each; their bytes sum to peak_bytes), else None.
    """

    def __init__(self, method: str) -> None:
        self.method = method
        self.peak_bytes = 0
        self.retained_bytes: int | None = None
        self.live_at_peak: list[LiveStorage] | None = None


@dataclass(frozen=True)
class LiveStorage:
    """A storage the region made: the op that made it, where (the caller's description of the moment:
    module, phase), its bytes, the shape and dtype of the tensor the op returned, and when it was made
    (an event count of the tracker; a storage resized in place is a new one from then on)."""

    op: str
    where: str
    nbytes: int
    shape: str
    seq: int

    def __repr__(self) -> str:
        return f"PeakMemory(peak_bytes={self.peak_bytes}, method={self.method!r})"


class _StorageTracker(TorchDispatchMode):
    """Counts the bytes of every tensor storage that an op creates inside the region, until it is freed.

    A storage is identified by its StorageImpl (`_cdata`); views and in-place results share their
    input's storage, so only storages that none of the op's inputs hold are new. Storages have
    PyObject preservation in torch 2.x, so a finalizer on the Python storage fires exactly when the
    last tensor using it dies. The mode sits below autograd and the engine propagates it to the
    backward pass, so allocations inside custom autograd.Function forward/backward are counted too.
    Storages that were live at entry and die inside the region are not subtracted (they are not
    known to the tracker), so the figure is the peak of memory the region itself added. Scratch
    buffers that one ATen kernel allocates and frees internally (e.g. CPU flash attention's
    workspace) never reach the dispatcher as op outputs and are not counted; torch.compile'd code
    does not run under a dispatch mode at all (its CPU memory comes from track_allocator_peak).

    With `where` (a function describing the moment: module, phase), it also keeps which storages are
    alive at the peak, at O(1) per event: each live storage's LiveStorage, the event count of the last
    new peak, and the storages that were alive then and have died since (cleared at every new peak).
    The live set at the peak is then the live storages made up to that event plus those.
    """

    def __init__(self, result: PeakMemory, device_type: str, where: Callable[[], str] | None = None) -> None:
        super().__init__()
        self._result = result
        self._device_type = device_type
        self._lock = threading.RLock()  # finalizers can fire inside an op, on any thread
        self._live_nbytes: dict[int, int] = {}
        self._finalizers: list[weakref.finalize] = []
        self.live_bytes = 0
        self._where = where
        self._made: dict[int, LiveStorage] = {}
        self._seq = 0
        self._peak_seq = -1
        self._died_since_peak: list[LiveStorage] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        input_keys = {key for key, _ in _storages(tree_flatten((args, kwargs))[0])}
        out = func(*args, **kwargs)
        with self._lock:
            for leaf, (key, storage) in _storage_leaves(tree_flatten(out)[0]):
                if storage.device.type != self._device_type:
                    continue
                if key in self._live_nbytes:
                    # A tracked storage may have been resized in place (resize_, out= variants).
                    if self._where is not None and storage.nbytes() != self._live_nbytes[key]:
                        self._retire(key)
                        self._record(key, func, leaf, storage.nbytes())
                    self._add(key, storage.nbytes() - self._live_nbytes[key])
                elif key not in input_keys:
                    self._live_nbytes[key] = 0
                    if self._where is not None:
                        self._record(key, func, leaf, storage.nbytes())
                    self._add(key, storage.nbytes())
                    self._finalizers.append(weakref.finalize(storage, self._free, key))
        return out

    def _record(self, key: int, func, leaf: torch.Tensor, nbytes: int) -> None:
        self._seq += 1
        name = getattr(getattr(func, "_schema", None), "name", None) or str(func)
        self._made[key] = LiveStorage(op=name, where=self._where() if self._where else "", nbytes=nbytes,
                                      shape=f"{tuple(leaf.shape)} {str(leaf.dtype).removeprefix('torch.')}",
                                      seq=self._seq)

    def _retire(self, key: int) -> None:
        made = self._made.pop(key, None)
        if made is not None and made.seq <= self._peak_seq:
            self._died_since_peak.append(made)

    def _add(self, key: int, nbytes: int) -> None:
        self._live_nbytes[key] += nbytes
        self.live_bytes += nbytes
        if self.live_bytes > self._result.peak_bytes:
            self._result.peak_bytes = self.live_bytes
            self._peak_seq = self._seq
            self._died_since_peak.clear()

    def _free(self, key: int) -> None:
        with self._lock:
            self.live_bytes -= self._live_nbytes.pop(key, 0)
            if self._where is not None:
                self._retire(key)

    def live_at_peak(self) -> list[LiveStorage]:
        """The storages alive at the moment of the peak (made by then, not dead by then)."""
        with self._lock:
            return [m for m in self._made.values() if m.seq <= self._peak_seq] + list(self._died_since_peak)

    def detach(self) -> None:
        """Stop following storages that outlive the region (their finalizers would keep running)."""
        with self._lock:
            for finalizer in self._finalizers:
                finalizer.detach()
            self._finalizers.clear()
            self._live_nbytes.clear()
            self._made.clear()
            self._died_since_peak.clear()


def _storages(leaves) -> Iterator[tuple[int, torch.UntypedStorage]]:
    for _, found in _storage_leaves(leaves):
        yield found


def _storage_leaves(leaves) -> Iterator[tuple[torch.Tensor, tuple[int, torch.UntypedStorage]]]:
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor) and leaf.layout == torch.strided and leaf.device.type != "meta":
            try:
                storage = leaf.untyped_storage()
            except (RuntimeError, NotImplementedError):  # tensor subclasses without a real storage
                continue
            yield leaf, (storage._cdata, storage)


def _as_device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must name a torch device such as 'cpu' or 'cuda:0', got device={device!r}") from exc


@contextmanager
def track_peak_memory(device: str | torch.device, where: Callable[[], str] | None = None) -> Iterator[PeakMemory]:
    """Measure the peak memory the enclosed code adds on `device`; yields a PeakMemory.

    CPU: exact peak of live tensor storage bytes created inside the region (method CPU_METHOD); with
    `where` (called at each storage's creation, returning a description of the moment), also the
    storages alive at the peak (PeakMemory.live_at_peak, summing to peak_bytes).
    CUDA: max_memory_allocated() - memory_allocated() at entry, after reset_peak_memory_stats()
    (method CUDA_METHOD). Resetting the peak statistics means CUDA regions must not be nested.
    """
    dev = _as_device(device)
    if dev.type == "cpu":
        result = PeakMemory(CPU_METHOD)
        tracker = _StorageTracker(result, "cpu", where)
        try:
            with tracker:
                yield result
        finally:
            result.retained_bytes = tracker.live_bytes
            if where is not None:
                result.live_at_peak = tracker.live_at_peak()
            tracker.detach()
    elif dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={str(dev)!r} was asked for but CUDA is not available")
        result = PeakMemory(CUDA_METHOD)
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        at_entry = torch.cuda.memory_allocated(dev)
        try:
            yield result
        finally:
            torch.cuda.synchronize(dev)
            result.peak_bytes = torch.cuda.max_memory_allocated(dev) - at_entry
            result.retained_bytes = torch.cuda.memory_allocated(dev) - at_entry
    else:
        raise ValueError(f"device={str(dev)!r}: memory tracking supports 'cpu' and 'cuda' devices only")


@contextmanager
def track_allocator_peak() -> Iterator[PeakMemory]:
    """CPU: the peak, over the region, of bytes allocated minus bytes freed through PyTorch's CPU
    allocator (torch.profiler with profile_memory; method CPU_ALLOCATOR_METHOD). Read peak_bytes after
    the region. Unlike track_peak_memory it sees allocations that are not tensors of an op's output
    (kernel workspaces) and compiled code; it does not see memory a kernel gets elsewhere (its stack,
    its own malloc, numpy). One profiler at a time: regions must not be nested."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    result = PeakMemory(CPU_ALLOCATOR_METHOD)
    profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with profiler:
        yield result
    events = [e for e in profiler.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()  # negative for a free
        peak = max(peak, live)
    result.peak_bytes, result.retained_bytes = peak, live


def rss_trace(fn, interval_s: float = 0.01) -> tuple[list[tuple[float, int]], object]:
    """(samples, fn's result): this process's RSS in bytes against seconds since the call started,
    sampled every interval_s by memory-profiler (a monitoring process reading /proc) while fn runs."""
    from memory_profiler import memory_usage

    # max_iterations=1: memory-profiler would otherwise call fn again, at a finer interval, when one call
    # gives it fewer than a few samples; the samples must be of one call, the measured one.
    samples, value = memory_usage((fn, (), {}), interval=interval_s, timestamps=True, retval=True,
                                  include_children=False, backend="psutil", max_iterations=1)
    start = samples[0][1] if samples else 0.0
    return [(t - start, int(mib * 2 ** 20)) for mib, t in samples], value


class NvmlSampler:
    """Samples NVML's device-wide "memory used" every interval_s seconds in a thread.

    peak_used_bytes: highest sample in bytes, or None when NVML or the GPU is unavailable (never
    raises for that). Device-wide: includes the CUDA context, the allocator's cached blocks and other
    processes, so it is a cross-check of the allocator figure, not a replacement. device_index is
    NVML's (physical) index, which differs from torch's when CUDA_VISIBLE_DEVICES reorders devices.
    """

    def __init__(self, device_index: int = 0, interval_s: float = 0.005) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got interval_s={interval_s}")
        self.device_index = device_index
        self.interval_s = interval_s
        self.peak_used_bytes: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml = None
        self._handle = None

    def __enter__(self) -> Self:
        # No library, no driver, no such GPU: the cross-check is simply absent.
        try:
            import pynvml
        except ImportError:
            return self
        try:
            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(self.device_index)
        except pynvml.NVMLError:
            return self
        self._nvml = pynvml
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="nvml-sampler", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        try:
            used = int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)
        except self._nvml.NVMLError:
            return
        if self.peak_used_bytes is None or used > self.peak_used_bytes:
            self.peak_used_bytes = used

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._sample()
        if self._nvml is not None:
            with contextlib.suppress(self._nvml.NVMLError):
                self._nvml.nvmlShutdown()


def process_peak_rss_bytes() -> int:
    """Peak resident set size of this process so far, in bytes (getrusage ru_maxrss: KiB on Linux,
    bytes on macOS). Process-wide and monotone, so only a cross-check for a single region."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def format_size(nbytes: float | None) -> str:
    """Human-readable binary size: 67108864 -> '64.00 MiB'."""
    if nbytes is None:
        return "-"
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB"):
        if abs(value) < 1024:
            return f"{value:.0f} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} GiB"
