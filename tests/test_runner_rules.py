"""Runner rules: skip_larger_after_failure follows a series across lengths, a run directory with
rows is not appended to without resume, and a worker that cannot start is a row.

The skip test runs one real worker (the shortest case fails at once); the other cases must be
skipped without a worker.
"""
from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.results.store import RESULTS_FILE, read_rows
from harness.run import launch
from harness.run.runner import run_suite
from harness.suite import load_suite

SUITES = Path(__file__).parent / "suites"

# An LSH-kind backend that runs out of memory from seq_len 64 on, before any real work.
FAILING_LSH_PLUGIN = '''
from impls import register_backend


class _OomLSH:
    name = "rules_oom_lsh"

    def available(self):
        return True, ""

    def attend(self, qk, v, cfg):
        if qk.shape[-2] >= 64:
            raise MemoryError("rules_oom_lsh: deliberate out of memory")
        return v.clone()


register_backend("rules_oom_lsh", lambda: _OomLSH(), kind="lsh")
'''


def _failing_lsh_suite(tmp_path: Path, extra_defaults: str = "", sweep: str = "") -> Path:
    (tmp_path / "rules_plugin.py").write_text(FAILING_LSH_PLUGIN)
    suite = tmp_path / "skip.toml"
    suite.write_text(f"""
[suite]
measure_peak = false
plugins = ["rules_plugin"]
skip_larger_after_failure = true
fidelity_max_seq_len = 64      # fidelity flips between 64 and 128: still one series
count_flops = false
threads = 1

[defaults]
backend = "rules_oom_lsh"
heads = 1
d_head = 8
n_hashes = 1
repeats = 1
warmup = 0
timeout_s = 120
{extra_defaults}

[sweep]
seq_len = [256, 64, 128, 512]  # run shortest first whatever the order here
{sweep}
""")
    return suite


@pytest.mark.slow
def test_longer_lsh_cases_of_a_failed_series_are_not_run(tmp_path, monkeypatch):
    # n_buckets = "auto" (the default) is 2 * seq_len / chunk_len: different at every length.
    suite = load_suite(_failing_lsh_suite(tmp_path, extra_defaults="chunk_len = 16"))
    assert len({c.n_buckets for c in suite.cases}) == 4 and len({c.fidelity for c in suite.cases}) == 2
    started = []
    real = launch.run_case_in_worker
    monkeypatch.setattr(launch, "run_case_in_worker",
                        lambda case, *where: started.append(case.seq_len) or real(case, *where))
    rows = {r["seq_len"]: r for r in run_suite(suite, tmp_path / "out", environment={}).rows}
    assert started == [64], "only the failing case runs; longer ones are skipped"
    assert rows[64]["status"] == "oom" and "deliberate" in rows[64]["reason"]
    for n in (128, 256, 512):
        assert rows[n]["status"] == "oom", rows[n]
        assert rows[n]["stage"] == "skipped" and rows[n]["wall_s"] == 0.0
        assert "seq_len=64" in rows[n]["reason"]
    assert [r["seq_len"] for r in read_rows(tmp_path / "out")] == [64, 128, 256, 512]


def test_series_with_auto_chunk_len_and_token_budget_skip_too(tmp_path, monkeypatch):
    # chunk_len = "auto" (2 * seq_len / n_buckets) and batch = fixed_tokens / seq_len also vary.
    suite_file = _failing_lsh_suite(tmp_path, extra_defaults='n_buckets = 4\nchunk_len = "auto"')
    suite_file.write_text(suite_file.read_text().replace("[suite]\n", "[suite]\nfixed_tokens = 1024\n"))
    suite = load_suite(suite_file)
    assert len({(c.chunk_len, c.batch) for c in suite.cases}) == 4
    started = []
    monkeypatch.setattr(launch, "run_case_in_worker",
                        lambda case, *where: started.append(case.seq_len) or _oom_row(case))
    rows = {r["seq_len"]: r for r in run_suite(suite, tmp_path / "out", environment={}).rows}
    assert started == [64]
    assert {n: rows[n]["stage"] for n in (128, 256, 512)} == {128: "skipped", 256: "skipped", 512: "skipped"}


def test_a_failure_skips_only_its_own_series(tmp_path, monkeypatch):
    # Fixed n_buckets 4 and 8 are two series: only the failing one is cut short.
    suite = load_suite(_failing_lsh_suite(tmp_path, extra_defaults="chunk_len = 16", sweep="n_buckets = [4, 8]"))
    started = []

    def fake(case, *where):
        started.append((case.n_buckets, case.seq_len))
        row = _oom_row(case)
        if case.n_buckets == 8:
            row["status"] = "ok"
        return row

    monkeypatch.setattr(launch, "run_case_in_worker", fake)
    run_suite(suite, tmp_path / "out", environment={})
    assert sorted(started) == [(4, 64), (8, 64), (8, 128), (8, 256), (8, 512)]


def test_timeout_skips_like_oom(tmp_path, monkeypatch):
    suite = load_suite(_failing_lsh_suite(tmp_path, extra_defaults="chunk_len = 16"))

    def timed_out(case, *where):
        row = _oom_row(case)
        row["status"], row["reason"] = "timeout", "no result within timeout_s=120"
        return row

    monkeypatch.setattr(launch, "run_case_in_worker", timed_out)
    rows = run_suite(suite, tmp_path / "out", environment={}).rows
    assert [r["status"] for r in rows] == ["timeout"] * 4
    assert [r["stage"] for r in rows] == ["measure", "skipped", "skipped", "skipped"]


def test_a_resumed_sweep_remembers_earlier_failures(tmp_path, monkeypatch):
    """An interrupted sweep whose 64-token case ran out of memory: the resume skips the longer
    cases of that series instead of running them."""
    suite = load_suite(_failing_lsh_suite(tmp_path, extra_defaults="chunk_len = 16"))
    out = tmp_path / "out"
    monkeypatch.setattr(launch, "run_case_in_worker", _oom_row)
    first = [c for c in suite.cases if c.seq_len == 64]
    run_suite(dataclasses.replace(suite, cases=first), out, environment={})
    started = []
    monkeypatch.setattr(launch, "run_case_in_worker",
                        lambda case, *where: started.append(case.seq_len) or _oom_row(case))
    rows = run_suite(suite, out, resume=True, environment={}).rows
    assert started == []
    assert [(r["seq_len"], r["stage"]) for r in rows] == [(128, "skipped"), (256, "skipped"), (512, "skipped")]
    assert all("seq_len=64" in r["reason"] for r in rows)


def _oom_row(case, *where) -> dict:
    from harness.results.store import new_row

    row = new_row(case)
    row.update(status="oom", reason="fake oom", stage="measure", wall_s=0.1)
    return row


def test_run_dir_with_rows_is_refused_without_resume(tmp_path, monkeypatch):
    suite = load_suite(SUITES / "three_cases.toml")
    monkeypatch.setattr(launch, "run_case_in_worker", _oom_row)
    run_suite(suite, tmp_path, environment={})
    before = (tmp_path / RESULTS_FILE).read_text()
    run_json = (tmp_path / "run.json").read_text()
    with pytest.raises(UserError, match="already holds 3 result rows"):
        run_suite(suite, tmp_path, environment={})
    assert (tmp_path / RESULTS_FILE).read_text() == before
    assert (tmp_path / "run.json").read_text() == run_json
    assert run_suite(suite, tmp_path, resume=True, environment={}).skipped == 3


@pytest.mark.slow
def test_worker_that_cannot_start_is_a_crashed_row_and_the_sweep_goes_on(tmp_path, monkeypatch):
    suite = load_suite(SUITES / "three_cases.toml")
    real = subprocess.Popen
    calls = []

    def popen(argv, *args, **kwargs):
        if "harness.run.worker" in argv or "harness.run.forkserver" in argv:  # either launcher's start
            calls.append(argv)
            if len(calls) == 1:
                raise OSError(24, "Too many open files")
        return real(argv, *args, **kwargs)

    monkeypatch.setattr(launch.subprocess, "Popen", popen)
    rows = run_suite(suite, tmp_path, environment={}).rows
    assert [r["status"] for r in rows] == ["crashed", "unavailable", "unavailable"]
    assert "could not start the worker" in rows[0]["reason"] and "Too many open files" in rows[0]["reason"]
    assert rows[0]["stage"] == "start-up" and rows[0]["wall_s"] is not None
    assert len(read_rows(tmp_path)) == 3
