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
import re
import resource
import sys
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

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
    """

    def __init__(self, method: str) -> None:
        self.method = method
        self.peak_bytes = 0
        self.retained_bytes: int | None = None

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
    """

    def __init__(self, result: PeakMemory, device_type: str) -> None:
        super().__init__()
        self._result = result
        self._device_type = device_type
        self._lock = threading.RLock()  # finalizers can fire inside an op, on any thread
        self._live_nbytes: dict[int, int] = {}
        self._finalizers: list[weakref.finalize] = []
        self.live_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        input_keys = {key for key, _ in _storages(tree_flatten((args, kwargs))[0])}
        out = func(*args, **kwargs)
        with self._lock:
            for key, storage in _storages(tree_flatten(out)[0]):
                if storage.device.type != self._device_type:
                    continue
                if key in self._live_nbytes:
                    # A tracked storage may have been resized in place (resize_, out= variants).
                    self._add(key, storage.nbytes() - self._live_nbytes[key])
                elif key not in input_keys:
                    self._live_nbytes[key] = 0
                    self._add(key, storage.nbytes())
                    self._finalizers.append(weakref.finalize(storage, self._free, key))
        return out

    def _add(self, key: int, nbytes: int) -> None:
        self._live_nbytes[key] += nbytes
        self.live_bytes += nbytes
        self._result.peak_bytes = max(self._result.peak_bytes, self.live_bytes)

    def _free(self, key: int) -> None:
        with self._lock:
            self.live_bytes -= self._live_nbytes.pop(key, 0)

    def detach(self) -> None:
        """Stop following storages that outlive the region (their finalizers would keep running)."""
        with self._lock:
            for finalizer in self._finalizers:
                finalizer.detach()
            self._finalizers.clear()
            self._live_nbytes.clear()


def _storages(leaves) -> Iterator[tuple[int, torch.UntypedStorage]]:
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor) and leaf.layout == torch.strided and leaf.device.type != "meta":
            try:
                storage = leaf.untyped_storage()
            except (RuntimeError, NotImplementedError):  # tensor subclasses without a real storage
                continue
            yield storage._cdata, storage


def _as_device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must name a torch device such as 'cpu' or 'cuda:0', got device={device!r}") from exc


@contextmanager
def track_peak_memory(device: str | torch.device) -> Iterator[PeakMemory]:
    """Measure the peak memory the enclosed code adds on `device`; yields a PeakMemory.

    CPU: exact peak of live tensor storage bytes created inside the region (method CPU_METHOD).
    CUDA: max_memory_allocated() - memory_allocated() at entry, after reset_peak_memory_stats()
    (method CUDA_METHOD). Resetting the peak statistics means CUDA regions must not be nested.
    """
    dev = _as_device(device)
    if dev.type == "cpu":
        result = PeakMemory(CPU_METHOD)
        tracker = _StorageTracker(result, "cpu")
        try:
            with tracker:
                yield result
        finally:
            result.retained_bytes = tracker.live_bytes
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


_SIZE_UNITS = {
    "b": 1,
    "kb": 1000, "kib": 1024,
    "mb": 1000 ** 2, "mib": 1024 ** 2,
    "gb": 1000 ** 3, "gib": 1024 ** 3,
}
_SIZE_PATTERN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Bytes in a size such as "64 MiB", "1.5GB", "512" (plain bytes) or an int.

    Units: B, KB = 1000 B, KiB = 1024 B, MB = 1000**2 B, MiB = 1024**2 B, GB, GiB (case-insensitive).
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"size must be >= 0 bytes, got size={text!r}")
        return text
    if not isinstance(text, str):
        raise ValueError(  # the project reports every bad input as ValueError
            f"size must be a string like '64 MiB' or an int, got size={text!r}")
    match = _SIZE_PATTERN.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or (unit and unit not in _SIZE_UNITS):
        raise ValueError(f"size must be a number with an optional unit B, KB, KiB, MB, MiB, GB or GiB, "
                         f"got size={text!r}")
    return round(float(match.group(1)) * _SIZE_UNITS[unit or "b"])


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
