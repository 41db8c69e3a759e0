"""harness.measure.memory: the CPU tracker counts exact tensor storage bytes; sizes parse; cross-checks never raise."""
from __future__ import annotations

import sys

import pytest
import torch

# pytester's in-process sessions drop the modules they import when they end, and triton (which
# flop_counter imports) aborts the process when imported a second time: import it here, once.
import torch.utils.flop_counter

from harness.measure.memory import (
    CPU_METHOD,
    NvmlSampler,
    process_peak_rss_bytes,
    track_peak_memory,
)
from harness.units import parse_size
from impls import LSHConfig, get_backend


def nbytes(*shape: int, dtype: torch.dtype = torch.float32) -> int:
    return torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()


def test_known_allocations_give_exact_bytes():
    with track_peak_memory("cpu") as peak:
        a = torch.empty(1000, dtype=torch.float32)
        b = torch.zeros(3, 7, dtype=torch.float64)
    assert peak.method == CPU_METHOD
    assert peak.peak_bytes == nbytes(1000) + nbytes(3, 7, dtype=torch.float64)
    assert peak.retained_bytes == peak.peak_bytes
    del a, b


def test_freed_temporary_lowers_live_bytes_but_peak_keeps_it():
    with track_peak_memory("cpu") as peak:
        kept = torch.ones(100)
        temporary = kept * 2 + 1  # `kept * 2` is an unnamed temporary freed inside the expression
        del temporary
        later = torch.ones(10)
    # Peak: kept + (kept*2) + (kept*2 + 1) alive together for an instant.
    assert peak.peak_bytes == 3 * nbytes(100)
    assert peak.retained_bytes == nbytes(100) + nbytes(10)
    del kept, later


def test_views_and_in_place_ops_do_not_double_count():
    before = torch.zeros(64, 64)
    with track_peak_memory("cpu") as peak:
        base = torch.zeros(32, 32)
        views = [base.view(-1), base.t(), base[::2], base.unsqueeze(0).expand(4, 32, 32), base.reshape(1024)]
        base.add_(1.0)
        before.mul_(2.0)  # in place on a tensor that was live at entry: adds nothing
        alias = before[:8]
    assert peak.peak_bytes == nbytes(32, 32)
    del views, alias


def test_storage_released_only_when_last_view_dies():
    with track_peak_memory("cpu") as peak:
        base = torch.zeros(256)
        view = base[:16]
        del base  # the view keeps the whole storage alive
        second = torch.zeros(256)
    assert peak.peak_bytes == 2 * nbytes(256)
    assert peak.retained_bytes == 2 * nbytes(256)
    del view, second


class _AllocatesInBackward(torch.autograd.Function):
    scratch_elements = 0

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        scratch = torch.zeros(_AllocatesInBackward.scratch_elements)
        return grad * 2 + scratch.sum()


@pytest.mark.parametrize("scratch_elements", [0, 1 << 18])
def test_backward_pass_allocations_are_seen(scratch_elements):
    _AllocatesInBackward.scratch_elements = scratch_elements
    x = torch.randn(64, 64, requires_grad=True)
    with track_peak_memory("cpu") as peak:
        _AllocatesInBackward.apply(x).sum().backward()
    scratch = nbytes(scratch_elements)
    # Forward output, the gradient and its product are a few (64 x 64) tensors; the scratch buffer
    # exists only inside backward, so it shows in the peak exactly when it is allocated.
    assert (peak.peak_bytes >= scratch + nbytes(64, 64)) and (peak.peak_bytes < scratch + 4 * nbytes(64, 64))
    assert peak.retained_bytes == nbytes(64, 64)  # x.grad; the forward output was a temporary


def _eager_forward_backward_peak(seq_len: int, backward: bool) -> int:
    gen = torch.Generator().manual_seed(0)
    qk = torch.randn(1, 2, seq_len, 16, generator=gen, requires_grad=True)
    v = torch.randn(1, 2, seq_len, 16, generator=gen, requires_grad=True)
    with track_peak_memory("cpu") as peak:
        out = get_backend("eager").attend(qk, v, LSHConfig(n_buckets=8, n_hashes=2, seed=0))
        if backward:
            out.sum().backward()
    return peak.peak_bytes


def test_lsh_backward_gradient_buffers_are_counted():
    # The eager backward accumulates dq, dk, dv as three fp32 (batch*heads*seq, d_head) buffers at once.
    seq_len = 128
    assert _eager_forward_backward_peak(seq_len, backward=True) >= 3 * nbytes(2 * seq_len, 16)
    assert _eager_forward_backward_peak(seq_len, backward=True) > _eager_forward_backward_peak(seq_len, False)


def test_cpu_figures_are_deterministic():
    figures = {_eager_forward_backward_peak(128, backward=True) for _ in range(3)}
    assert len(figures) == 1


def test_nested_trackers_both_count():
    with track_peak_memory("cpu") as outer:
        first = torch.zeros(100)
        with track_peak_memory("cpu") as inner:
            second = torch.zeros(50)
    assert inner.peak_bytes == nbytes(50)
    assert outer.peak_bytes == nbytes(150)
    del first, second


def test_bad_device_is_a_clear_error():
    with pytest.raises(ValueError, match="device='not-a-device'"), track_peak_memory("not-a-device"):
        pass
    with pytest.raises(ValueError, match="device='meta'"), track_peak_memory("meta"):
        pass


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when CUDA is absent")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"), track_peak_memory("cuda"):
        pass


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_allocator_peak_sees_a_freed_temporary():
    size = 32 << 20
    with track_peak_memory("cuda") as peak:
        kept = torch.empty(size, dtype=torch.uint8, device="cuda")
        temporary = torch.empty(size, dtype=torch.uint8, device="cuda")
        del temporary
    assert peak.peak_bytes >= 2 * size
    assert peak.retained_bytes >= size
    del kept


def test_nvml_sampler_without_nvml_gives_none(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    with NvmlSampler(interval_s=0.001) as sampler:
        torch.zeros(10)
    assert sampler.peak_used_bytes is None


def test_nvml_sampler_rejects_bad_interval():
    with pytest.raises(ValueError, match="interval_s=0"):
        NvmlSampler(interval_s=0)


def test_process_peak_rss_is_in_bytes_and_covers_a_resident_tensor():
    resident = torch.ones(64 << 20, dtype=torch.uint8)  # written, so every page is resident
    assert process_peak_rss_bytes() >= resident.numel()


@pytest.mark.parametrize(("text", "expected"), [
    ("64 MiB", 64 * 1024 ** 2),
    ("64MiB", 64 * 1024 ** 2),
    ("1.5 GB", 1_500_000_000),
    ("2 gib", 2 * 1024 ** 3),
    ("10 KB", 10_000),
    ("3KiB", 3 * 1024),
    ("7 MB", 7_000_000),
    ("512", 512),
    ("512 B", 512),
    (4096, 4096),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "MiB", "64 MiBs", "64 TB", "-1 MiB", "1e3", -5, 1.5, None, True])
def test_parse_size_rejects_bad_input_naming_it(bad):
    with pytest.raises(ValueError, match="size="):
        parse_size(bad)


# --- the max_memory marker (harness.pytest_plugin), run in throwaway pytest sessions ----------------

MARKED_TESTS = '''
import pytest
import torch

@pytest.mark.max_memory("1 MiB")
def test_below_limit():
    kept = torch.zeros(128 * 1024)  # 512 KiB
    assert kept.sum() == 0

@pytest.mark.max_memory("1 MiB")
def test_above_limit():
    first = torch.zeros(128 * 1024)
    second = torch.zeros(256 * 1024)  # 512 KiB + 1 MiB live together
    del first, second

@pytest.mark.max_memory("1 MiB")
def test_freed_temporaries_still_count():
    for _ in range(3):
        torch.ones(512 * 1024).sum()  # 2 MiB each, freed at once: the peak is 2 MiB

@pytest.mark.max_memory(limit=2 * 1024 * 1024 + 4)
def test_int_limit_keyword():
    torch.ones(512 * 1024).sum()  # 2 MiB + the 4-byte sum

@pytest.mark.max_memory("lots")
def test_bad_limit():
    pass

@pytest.mark.max_memory("1 MiB", device="tpu")
def test_bad_device():
    pass
'''


def test_max_memory_marker_fails_only_tests_over_their_limit(pytester):
    pytester.makepyfile(test_marked=MARKED_TESTS)
    result = pytester.runpytest_inprocess("-p", "harness.pytest_plugin", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=4)
    result.stdout.fnmatch_lines([
        "*test_above_limit*",
        (f"*peak memory 1.50 MiB ({3 * 512 * 1024} B, cpu-tensor-tracker on cpu) exceeds max_memory "
         f"1.00 MiB ({1024 * 1024} B)*"),
    ])
    result.stdout.fnmatch_lines(["*test_freed_temporaries_still_count*", "*peak memory 2.00 MiB*"])
    result.stdout.fnmatch_lines(["*test_bad_limit*", "*max_memory: size must be a number*got size='lots'*"])
    result.stdout.fnmatch_lines(["*test_bad_device*", "*max_memory: device must name a torch device*'tpu'*"])
    outcomes = {r.nodeid.split("::")[-1]: r.outcome for r in result.reprec.getreports("pytest_runtest_logreport")
                if r.when == "call"}
    assert outcomes == {"test_below_limit": "passed", "test_above_limit": "failed",
                        "test_freed_temporaries_still_count": "failed", "test_int_limit_keyword": "passed",
                        "test_bad_limit": "failed", "test_bad_device": "failed"}
