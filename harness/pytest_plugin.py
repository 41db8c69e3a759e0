"""pytest integration: the `--benchmark` switch, the `max_memory` marker and benchmark machine info.

Loaded by tests/conftest.py (`pytest_plugins = ["harness.pytest_plugin"]`), or with
`-p harness.pytest_plugin`.

- `pytest` runs the tests and deselects every test that uses pytest-benchmark's `benchmark` fixture;
  `pytest --benchmark` runs exactly those (pytest-benchmark's own --benchmark-* flags still apply).
- `@pytest.mark.max_memory("64 MiB", device="cpu")` fails a test whose peak memory during its call
  phase (fixtures excluded) exceeds the limit, measured by harness.measure.memory.track_peak_memory: the same
  code path that fills `mem_peak_bytes` in results rows and in benchmark extra_info.
- `pytest_benchmark_update_machine_info` adds torch / CUDA / GPU / driver / triton versions and the
  gate's device class to pytest-benchmark's machine_info, so saved runs say what they ran on.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
import torch

from harness.measure.memory import format_size, track_peak_memory
from harness.units import parse_size

BENCHMARK_FIXTURE = "benchmark"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("reformer-bench")
    group.addoption("--benchmark", action="store_true", default=False, dest="run_benchmarks",
                    help="run only the pytest-benchmark tests (CI sizes); without it they are deselected")
    group.addoption("--bench-device", default="auto", choices=("auto", "cpu", "cuda"),
                    help="device for the benchmark tests: auto = cuda when available, else cpu")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "max_memory(limit, device='cpu'): fail the test if its peak memory exceeds limit "
        "(e.g. '64 MiB'; exact tensor bytes on CPU, CUDA allocator peak on GPU)",
    )


def _benchmarks_selected(config: pytest.Config) -> bool:
    # --benchmark-only means "benchmarks only" to pytest-benchmark; honour it the same way.
    return bool(config.getoption("run_benchmarks") or config.getoption("benchmark_only", default=False))


def pytest_report_header(config: pytest.Config) -> str:
    if _benchmarks_selected(config):
        return f"benchmarks: only benchmark tests run (--benchmark), device {resolve_bench_device(config)}"
    return "benchmarks: deselected (run them with --benchmark)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    want_benchmarks = _benchmarks_selected(config)
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        is_benchmark = BENCHMARK_FIXTURE in getattr(item, "fixturenames", ())
        (keep if is_benchmark == want_benchmarks else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def resolve_bench_device(config: pytest.Config) -> str:
    """The device named by --bench-device, with auto resolved to cuda when it is available."""
    choice = config.getoption("bench_device", default="auto")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--bench-device=cuda was given but CUDA is not available")
    return choice


@pytest.fixture
def bench_device(request: pytest.FixtureRequest) -> str:
    """The benchmark device (see --bench-device)."""
    return resolve_bench_device(request.config)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    marker = item.get_closest_marker("max_memory")
    if marker is None:
        return (yield)
    limit, mem_device = _max_memory_args(marker)
    region = contextlib.ExitStack()
    try:
        peak = region.enter_context(track_peak_memory(mem_device))
    except ValueError as exc:  # e.g. device="cuda" where there is none
        pytest.fail(f"max_memory: {exc}", pytrace=False)
    with region:
        result = yield
    item.user_properties.append(("mem_peak_bytes", peak.peak_bytes))
    if peak.peak_bytes > limit:
        pytest.fail(
            f"peak memory {format_size(peak.peak_bytes)} ({peak.peak_bytes} B, {peak.method} on {mem_device}) "
            f"exceeds max_memory {format_size(limit)} ({limit} B)",
            pytrace=False,
        )
    return result


def _max_memory_args(marker: pytest.Mark) -> tuple[int, str]:
    """(limit in bytes, device) from max_memory(limit, device='cpu'); bad arguments fail the test."""
    args, kwargs = list(marker.args), dict(marker.kwargs)
    if "limit" in kwargs:
        args.insert(0, kwargs.pop("limit"))
    mem_device = kwargs.pop("device", "cpu")
    if len(args) != 1 or kwargs:
        pytest.fail(f"max_memory takes one limit and an optional device=, got args={marker.args!r} "
                    f"kwargs={marker.kwargs!r}", pytrace=False)
    try:
        return parse_size(args[0]), mem_device
    except ValueError as exc:
        pytest.fail(f"max_memory: {exc}", pytrace=False)


class _CallOnce:
    """A workload made of a callable that builds its own inputs (so that they count), for the
    measurements of harness.measure.stages."""

    input_bytes = 0
    hashes_in_call = True  # the analytic FLOP count has no formula for a user's callable anyway

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn

    def __call__(self):
        return self.fn()

    def reset(self) -> None:
        pass

    def gradients(self) -> list:
        return []


def measure_extra_info(run_once: Callable[[], Any], device: str) -> dict[str, Any]:
    """Untimed figures for a benchmark's extra_info: every metric the table marks `benchmark`
    (harness.measure.metrics), by the same measurements that fill results rows, each on separate
    calls of run_once (which should build its own inputs, so that they count, as in results rows),
    and the device. With the built-in table: mem_peak_bytes (exact on CPU), mem_method and
    flops_counted (None where FlopCounterMode counts 0: a kernel it has no formula for)."""
    from harness.measure import stages
    from harness.measure.metrics import measurements, metrics

    wanted = {m.name for m in metrics(lambda m: m.benchmark)}
    ctx = stages.Context(case=None, workload=_CallOnce(run_once), device=device)
    info: dict[str, Any] = {}
    for measurement in measurements():
        if wanted & set(measurement.metrics):
            figures = measurement.measure(ctx) or {}
            info.update({key: value for key, value in figures.items() if key in wanted})
    info["device"] = device
    return info


def synchronized(fn: Callable[[], Any], device: str) -> Callable[[], Any]:
    """fn followed by a device synchronisation, so a wall-clock timer sees the finished GPU work."""
    if torch.device(device).type != "cuda":
        return fn

    def call():
        result = fn()
        torch.cuda.synchronize()
        return result

    return call


def torch_machine_info() -> dict[str, Any]:
    """torch, CUDA, cuDNN, the backends' packages (triton, the peers), GPU and driver versions, and the
    gate's device class."""
    from harness.env import backend_packages, cuda_gpu_names, nvidia_driver, package_version
    from harness.gate import device_class

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        **{package.replace("-", "_"): package_version(package) for package in backend_packages()},
        "threads": torch.get_num_threads(),
        "gpus": cuda_gpu_names(),
        "gpu_driver": None,
        "device_class": device_class("cuda" if torch.cuda.is_available() else "cpu"),
    }
    if info["gpus"]:
        info["gpu_driver"] = nvidia_driver()
    return info


@pytest.hookimpl(optionalhook=True)  # a pytest-benchmark hook: no error where that plugin is absent
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine_info["reformer_bench"] = torch_machine_info()
