"""The runner: every way a case can end becomes a row, sweeps resume, rows survive kills.

Each case of a sweep runs in a real worker process (1-3 s each here), so the suites are tiny, the
failure sweep runs once per module, and what needs no process boundary (non-finite output, an
unavailable backend, train_step) is checked with harness.run.worker.run_case in this process.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness.results.store import RESULTS_FILE, ResultsWriter, read_rows, read_run_json
from harness.run.runner import SweepInterrupted, run_suite
from harness.suite import load_suite
from tests.processes import alive

SUITES = Path(__file__).parent / "suites"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def failure_run(tmp_path_factory):
    suite = load_suite(SUITES / "failures.toml")
    run_dir = tmp_path_factory.mktemp("failures")
    result = run_suite(suite, run_dir)
    return suite, run_dir, {row["backend"]: row for row in result.rows}


@pytest.mark.slow  # the failure_run fixture runs a whole sweep
def test_every_failure_is_a_row_with_its_status(failure_run):
    suite, _, rows = failure_run
    assert len(rows) == len(suite.cases) == 6
    assert {b: r["status"] for b, r in rows.items()} == {
        "eager": "ok",
        "fake_raises": "error",
        "fake_dies": "crashed",
        "fake_hangs": "timeout",
        "dense": "oom",
        "sdpa": "ok",
    }


@pytest.mark.slow  # the failure_run fixture runs a whole sweep
def test_failure_reasons_say_what_happened(failure_run):
    _, _, rows = failure_run
    assert "fake_raises: deliberate failure" in rows["fake_raises"]["reason"]
    assert "SIGKILL" in rows["fake_dies"]["reason"] and "timing" in rows["fake_dies"]["reason"]
    assert "timeout_s=4" in rows["fake_hangs"]["reason"]
    assert "allocate" in rows["dense"]["reason"].lower() or "memory" in rows["dense"]["reason"].lower()
    # The hanging worker was killed near its timeout, not left to run for its hour.
    assert 4 <= rows["fake_hangs"]["wall_s"] < 15


@pytest.mark.slow  # the failure_run fixture runs a whole sweep
def test_ok_row_is_complete(failure_run):
    _, _, rows = failure_run
    row = rows["eager"]
    for key in ("time_median_s", "time_q1_s", "time_q3_s", "time_iqr_s", "time_min_s", "first_call_s",
                "mem_peak_bytes", "rss_peak_bytes", "flops_analytic", "achieved_flops_per_s", "rel_error",
                "attn_mass_recall", "worker_setup_s", "wall_s"):
        assert row[key] is not None, key
    assert row["compile_time_s"] is None  # eager compiles nothing: no compile time, rather than a 0
    assert row["interpreted"] is False
    assert row["repeats"] == 2
    assert row["mem_method"] == "cpu-tensor-tracker"
    assert row["flops_counted"] is None  # count_flops = false in this suite
    # mem_peak_bytes = input bytes + the exact peak increment of the call, which is deterministic:
    # the same call measured here, in this process, must give the same figure to the byte.
    from harness.measure.memory import track_peak_memory
    from impls import LSHConfig, get_backend

    case = _case("failures.toml", "eager")
    gen = torch.Generator().manual_seed(case.seed)
    shape = (case.batch, case.heads, case.seq_len, case.d_head)
    qk, v = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    cfg = LSHConfig(n_buckets=case.n_buckets, n_hashes=case.n_hashes, chunk_len=case.chunk_len, seed=case.seed)
    assert case.mode == "forward"
    with torch.no_grad():
        get_backend("eager").attend(qk, v, cfg)  # as the worker's timed calls do before: rotations cached
    with torch.no_grad(), track_peak_memory("cpu") as peak:
        get_backend("eager").attend(qk, v, cfg)
    assert peak.peak_bytes > 0
    assert row["mem_peak_bytes"] == 2 * qk.numel() * 4 + peak.peak_bytes


def _case(suite_file, which, **overrides):
    import dataclasses

    case = next(c for c in load_suite(SUITES / suite_file).cases if c.backend == which)
    return dataclasses.replace(case, **overrides)


def test_nonfinite_output_is_its_own_status():
    from harness.run.worker import run_case

    row = run_case(_case("three_cases.toml", "fake_unavailable", backend="fake_nan"))
    assert row["status"] == "nonfinite"
    assert "non-finite" in row["reason"]
    assert row["time_median_s"] is not None  # it was timed before the check


def test_unavailable_backend_is_its_own_status():
    from harness.run.worker import run_case

    row = run_case(_case("three_cases.toml", "fake_unavailable"))
    assert row["status"] == "unavailable"
    assert "not on this machine" in row["reason"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_train_step_case(backend):
    from harness.run.worker import run_case

    row = run_case(_case("train_step.toml", backend))
    assert row["status"] == "ok", row["reason"]
    assert row["mode"] == "train_step"
    assert (row["heads"], row["d_head"]) == (2, 16)
    assert row["time_median_s"] > 0 and row["mem_peak_bytes"] > 0
    assert row["flops_counted"] > 0 and row["flops_analytic"] is None
    assert row["model"]["layers"] == 2


@pytest.mark.slow  # the failure_run fixture runs a whole sweep
def test_rows_are_written_in_order_with_run_metadata(failure_run):
    suite, run_dir, _ = failure_run
    on_disk = read_rows(run_dir)
    assert [r["case_id"] for r in on_disk] == [c.case_id for c in suite.cases]
    info = read_run_json(run_dir)
    assert info["suite"] == "failures"
    for key in ("git_commit", "torch", "python", "cpu_model", "torch_threads", "device_name"):
        assert key in info["environment"]


@pytest.mark.slow  # the failure_run fixture runs a whole sweep
def test_resume_of_a_finished_run_runs_nothing(failure_run):
    suite, run_dir, _ = failure_run
    before = (run_dir / RESULTS_FILE).read_text()
    result = run_suite(suite, run_dir, resume=True)
    assert result.rows == [] and result.skipped == len(suite.cases)
    assert (run_dir / RESULTS_FILE).read_text() == before
    assert len(read_run_json(run_dir)["resumed"]) == 1


def test_partial_last_line_is_skipped_and_not_glued_to(tmp_path):
    path = tmp_path / RESULTS_FILE
    path.write_text(json.dumps({"case_id": "a", "status": "ok"}) + "\n" + '{"case_id": "b", "sta')
    assert [r["case_id"] for r in read_rows(path)] == ["a"]
    with ResultsWriter(path) as writer:
        writer.append({"case_id": "c", "status": "ok"})
    assert [r["case_id"] for r in read_rows(path)] == ["a", "c"]


@pytest.mark.slow
def test_ctrl_c_keeps_finished_rows(tmp_path):
    suite = load_suite(SUITES / "three_cases.toml")

    class InterruptSecondCase:
        def begin(self, total, skipped=0):
            self.started = 0

        def start(self, case):
            self.started += 1
            if self.started == 2:
                raise KeyboardInterrupt

        def finish(self, row):
            pass

        def close(self):
            pass

    with pytest.raises(SweepInterrupted) as info:
        run_suite(suite, tmp_path, progress=InterruptSecondCase())
    assert info.value.rows_written == 1
    assert [r["seq_len"] for r in read_rows(tmp_path)] == [32]


@pytest.mark.slow
def test_results_survive_a_killed_sweep_and_resume_completes_it(tmp_path):
    suite_file = SUITES / "three_cases.toml"
    # Spawned workers: forked ones end these three unavailable cases within one poll of the file, so the
    # kill would land after the last row (the test is of resume, not of a launcher).
    cmd = [sys.executable, "-m", "harness.cli", "run", str(suite_file), "--out", str(tmp_path), "--no-report",
           "--launch", "spawn"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = tmp_path / RESULTS_FILE
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (results.exists() and read_rows(results)):
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    survived = read_rows(results)
    assert 1 <= len(survived) < 3, "kill the sweep after its first row and before its last"
    assert all(r["status"] == "unavailable" for r in survived)
    done = subprocess.run(cmd + ["--resume"], check=False, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = read_rows(results)
    assert sorted(r["seq_len"] for r in rows) == [32, 64, 128]
    assert len({r["case_id"] for r in rows}) == 3


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and PR_SET_PDEATHSIG")
@pytest.mark.parametrize("launch", ["spawn", "fork"])
def test_killed_runner_takes_its_worker_with_it(tmp_path, launch):
    # A worker that would hang for an hour must not outlive a runner killed with SIGKILL.
    suite = tmp_path / "hang.toml"
    suite.write_text('[suite]\nmeasure_peak = false\nplugins = ["fake_backends"]\n[defaults]\nbackend = "fake_hangs"\n'
                     'seq_len = 32\nheads = 1\nd_head = 8\n')
    (tmp_path / "fake_backends.py").write_text((SUITES / "fake_backends.py").read_text())
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(suite), "--out", str(out),
                             "--no-report", "--launch", launch], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    worker_pid = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and worker_pid is None:
        worker_pid = _child_pid(proc.pid)
        time.sleep(0.1)
    assert worker_pid is not None
    pids = [worker_pid]
    if launch == "fork":  # the runner's child is the fork server; the case's worker is its child
        # The server forks the case once its imports are done: on a loaded machine that takes a while.
        # The runner's first child may be a short-lived one (git, asked for the run's commit): ask again
        # which child the runner has until that child has a child of its own, the case's worker.
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and len(pids) == 1:
            server = _child_pid(proc.pid) or worker_pid
            case_worker = _child_pid(server)
            if case_worker is not None:
                pids = [server, case_worker]
            time.sleep(0.1)
        assert len(pids) == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.1)
    assert not any(alive(pid) for pid in pids)


def _child_pid(pid: int) -> int | None:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None
