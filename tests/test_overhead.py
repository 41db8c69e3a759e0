"""What the harness adds to a timed call: a backend whose call is a known sleep, measured by a real worker
process, must be timed at its sleep and no less (nothing skipped), and not much more (nothing of the
harness's own inside the timed region). Sleeping, not computing, so that the bound holds on a busy
machine: a sleep overshoots by the scheduler's wake-up latency, not by the load's share of the cores."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.run import launch
from harness.suite import load_suite

SLEEP_S = 0.02

PLUGIN = f'''
import time

import torch

from impls import register_backend


class Sleeps:
    def available(self):
        return True, ""

    def attend(self, qk, v, cfg):
        time.sleep({SLEEP_S})
        return v.clone()


register_backend("sleeps_{int(SLEEP_S * 1000)}ms", Sleeps, kind="dense")
'''


@pytest.mark.slow
def test_the_timed_region_holds_the_call_and_little_else(tmp_path: Path):
    (tmp_path / "sleeper.py").write_text(PLUGIN)
    suite = tmp_path / "overhead.toml"
    suite.write_text(f"""
[suite]
plugins = ["sleeper"]
threads = 1
count_flops = false
measure_peak = false

[defaults]
backend = "sleeps_{int(SLEEP_S * 1000)}ms"
seq_len = 64
heads = 1
d_head = 8
repeats = 15
warmup = 2
""")
    (case,) = load_suite(suite).cases
    row = launch.run_case_in_worker(case)
    assert row["status"] == "ok", row["reason"]
    assert row["repeats"] == 15
    assert row["time_min_s"] >= SLEEP_S  # every timed call contains the whole call
    # Wake-up latency and a timer read on each side: well under a quarter of the sleep.
    assert row["time_median_s"] < 1.25 * SLEEP_S, row["time_median_s"]
    assert 0 < row["worker_setup_s"] < row["wall_s"]
