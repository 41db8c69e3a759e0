"""`pytest --benchmark` runs exactly the benchmark tests and their JSON carries the memory figures;
plain `pytest` runs none. (These are ordinary tests: they drive throwaway pytest sessions.)"""
from __future__ import annotations

import json

import pytest
import torch

# pytester's in-process sessions drop the modules they import when they end, and triton (which
# flop_counter imports) aborts the process when imported a second time: import it here, once.
import torch.utils.flop_counter

SESSION_TESTS = '''
import pytest
import torch
from harness.pytest_plugin import measure_extra_info, synchronized

def test_plain():
    assert True

def test_timed(benchmark, bench_device):
    def run_once():
        kept = torch.zeros(1000, device=bench_device)  # 4000 bytes
        return kept + 1  # 4000 more
    benchmark.extra_info.update(measure_extra_info(run_once, bench_device))
    benchmark(synchronized(run_once, bench_device))
'''
FAST = ("--benchmark-min-rounds=1", "--benchmark-max-time=0.0001", "--benchmark-warmup=off")


def run_session(pytester, *args):
    pytester.makepyfile(test_session=SESSION_TESTS)
    return pytester.runpytest_inprocess("-p", "harness.pytest_plugin", "-p", "no:cacheprovider",
                                        "--bench-device=cpu", *args)


@pytest.mark.filterwarnings("ignore:Not saving anything")  # the inner session has nothing to save
def test_plain_run_deselects_benchmarks(pytester):
    result = run_session(pytester, *FAST, "--benchmark-json=out.json")
    result.assert_outcomes(passed=1, deselected=1)
    result.stdout.fnmatch_lines(["benchmarks: deselected (run them with --benchmark)"])
    assert not (pytester.path / "out.json").exists()


def test_benchmark_option_runs_only_benchmarks_and_records_memory(pytester):
    result = run_session(pytester, "--benchmark", *FAST, "--benchmark-json=out.json")
    result.assert_outcomes(passed=1, deselected=1)
    saved = json.loads((pytester.path / "out.json").read_text())
    [bench] = saved["benchmarks"]
    assert bench["name"] == "test_timed"
    assert bench["extra_info"]["mem_peak_bytes"] == 2 * 1000 * 4
    assert bench["extra_info"]["mem_method"] == "cpu-tensor-tracker"
    assert bench["extra_info"]["device"] == "cpu"
    info = saved["machine_info"]["reformer_bench"]
    assert info["torch"] == torch.__version__
    assert info["device_class"] == ("cpu" if not torch.cuda.is_available() else info["device_class"])
    assert {"cuda_runtime", "triton", "gpus", "gpu_driver"} <= set(info)


def test_benchmark_flags_keep_working(pytester):
    # Autosave into a storage folder, then compare with it and fail on a (loose) threshold.
    storage = f"--benchmark-storage=file://{pytester.path / 'store'}"
    first = run_session(pytester, "--benchmark", *FAST, storage, "--benchmark-autosave")
    first.assert_outcomes(passed=1, deselected=1)
    assert len(list((pytester.path / "store").rglob("*.json"))) == 1
    second = run_session(pytester, "--benchmark", *FAST, storage, "--benchmark-compare",
                         "--benchmark-compare-fail=median:100000%")
    second.assert_outcomes(passed=1, deselected=1)
    assert second.ret == 0
