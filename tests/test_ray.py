"""Sweeps on Ray (harness.run.ray): a real Ray head on 127.0.0.1, started once for the module, and
`reformer-bench run ... --ray 127.0.0.1:PORT` drivers in subprocesses, as a user runs them.

Shown: a sweep through Ray gives the local run's cases and statuses (a worker that kills itself
included); a Ray worker that dies mid-case is a crashed row while the others finish; a killed driver
keeps its rows and --resume completes the sweep; Ctrl-C cancels the running tasks (their workers
end) and keeps the rows. Cases that must be mid-case when the driver goes wait on a file the test
creates, so no test depends on timing. Without ray installed only the checks that need no Ray run.
"""
from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import cli
from harness.results.store import RESULTS_FILE, read_rows, read_run_json
from harness.run.ray import task_resources, unplaceable
from harness.suite import load_suite
from tests.processes import alive

# Most tests here start a Ray head and run sweeps on it.
pytestmark = pytest.mark.slow

SUITES = Path(__file__).parent / "suites"
REPO = Path(__file__).resolve().parent.parent

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="ray is not installed (pip install -e '.[ray]'; .ci/setup installs it)")

# Every Ray process here stays on the loopback interface (Ray otherwise advertises the machine's
# outward address even for a head started on 127.0.0.1), reports no usage statistics, and shares a
# token of this test run's own (leaving ~/.ray/auth_token alone).
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}

# A plugin of backends for the Ray tests, written next to each test's suite. `gated` blocks in its
# first call until the file "release" exists beside the plugin, after leaving its worker's pid in
# "started-PID": the test knows a case is mid-measurement and can check later that its worker is gone.
# `kills_launcher` SIGKILLs the process that launched its worker: on Ray, the task's Ray worker.
RAY_PLUGIN = '''
import os
import secrets
import shutil
import signal
import time
from pathlib import Path

from impls import register_backend

HERE = Path(__file__).parent


class _Fake:
    def __init__(self, name, attend):
        self.name, self._attend = name, attend

    def available(self):
        return True, ""

    def attend(self, qk, v, cfg):
        return self._attend(qk, v)


def _gated(qk, v):
    (HERE / f"started-{os.getpid()}").write_text("")
    while not (HERE / "release").exists():
        time.sleep(0.05)
    return v.clone()


def _kills_launcher(qk, v):
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(60)


register_backend("gated", lambda: _Fake("gated", _gated), kind="dense")
register_backend("kills_launcher", lambda: _Fake("kills_launcher", _kills_launcher), kind="dense")
'''


def _suite(tmp_path: Path, cases: str) -> Path:
    """A suite of one-CPU cases using the Ray test plugin and fake_backends, in tmp_path."""
    (tmp_path / "ray_plugin.py").write_text(RAY_PLUGIN)
    (tmp_path / "fake_backends.py").write_text((SUITES / "fake_backends.py").read_text())
    suite = tmp_path / "suite.toml"
    suite.write_text(f'''
[suite]
name = "ray_test"
plugins = ["fake_backends", "ray_plugin"]
threads = 1
count_flops = false

[defaults]
heads = 1
d_head = 16
repeats = 1
warmup = 0
timeout_s = 60
{cases}
''')
    return suite


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    # PYTHONPATH: the drivers, and the Ray workers the head starts, import this checkout.
    return {**os.environ, **RAY_ENV, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray head on 127.0.0.1 with 2 CPUs, stopped (with every process it started) at the end.

    `ray start --block` stays in the foreground and stops what it started when terminated, so the
    teardown ends exactly this head (`ray stop` would end every Ray instance on the machine)."""
    port = _free_port()
    # A temp dir of its own keeps this head out of /tmp/ray, where `--ray auto` looks for clusters;
    # short, because Ray's socket paths under it must fit in 107 characters.
    temp_dir = Path(f"/tmp/rb-ray-{os.getpid()}")
    log = tmp_path_factory.mktemp("ray-head") / "head.log"
    with open(log, "w") as out:
        head = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={port}",
             "--node-ip-address=127.0.0.1", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
             "--disable-usage-stats", f"--temp-dir={temp_dir}"],
            cwd=REPO, env=_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        head.terminate()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _run(suite: Path, out: Path, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "harness.cli", "run", str(suite), "--out", str(out), "--no-report", *extra]
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)


def _start(suite: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "harness.cli", "run", str(suite), "--out", str(out), "--no-report", *extra]
    return subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _rows(out: Path) -> list[dict]:
    path = out / RESULTS_FILE
    return read_rows(path) if path.exists() else []


@needs_ray
def test_a_ray_sweep_gives_the_local_run_s_cases_and_statuses(ray_head, tmp_path):
    suite = SUITES / "ray_small.toml"
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    done = _run(suite, local)
    assert done.returncode == 0, done.stderr
    done = _run(suite, on_ray, "--ray", ray_head)
    assert done.returncode == 0, done.stderr
    local_rows, ray_rows = read_rows(local), read_rows(on_ray)
    statuses = {r["case_id"]: r["status"] for r in local_rows}
    assert {r["case_id"]: r["status"] for r in ray_rows} == statuses
    assert sorted(statuses.values()) == ["crashed", "ok", "ok", "ok"]
    assert len(ray_rows) == len(load_suite(suite).cases)
    for row in ray_rows:
        assert row["node"] == socket.gethostname()  # a CPU case: the host alone
        if row["status"] == "ok":
            assert row["time_median_s"] > 0 and row["mem_peak_bytes"] > 0 and row["wall_s"] > 0
        else:  # the worker's own death, seen by its launcher on the node as locally
            assert row["backend"] == "fake_dies" and "SIGKILL" in row["reason"] and "timing" in row["reason"]
    # The exact CPU memory figure is deterministic: a case measures the same wherever it runs.
    assert ({r["case_id"]: r["mem_peak_bytes"] for r in ray_rows}
            == {r["case_id"]: r["mem_peak_bytes"] for r in local_rows})
    assert read_run_json(local)["executor"] == "local"
    assert read_run_json(on_ray)["executor"] == f"ray {ray_head}"
    assert {r["node"] for r in local_rows} == {socket.gethostname()}


@needs_ray
def test_a_dead_ray_worker_is_a_crashed_row_and_the_other_cases_finish(ray_head, tmp_path):
    suite = _suite(tmp_path, '''
[sweep]
backend = ["kills_launcher", "sdpa", "fake_unavailable"]
seq_len = [32]
''')
    done = _run(suite, tmp_path / "out", "--ray", ray_head)
    assert done.returncode == 0, done.stderr
    rows = {r["backend"]: r for r in read_rows(tmp_path / "out")}
    assert {b: r["status"] for b, r in rows.items()} == {
        "kills_launcher": "crashed", "sdpa": "ok", "fake_unavailable": "unavailable"}
    crashed = rows["kills_launcher"]
    assert crashed["reason"].startswith(f"the Ray worker running the case on {socket.gethostname()} died")
    assert crashed["node"] == socket.gethostname() and crashed["wall_s"] is not None


GATED_CASES = '''
[sweep]                 # the unavailable case ends at once; the two gated ones wait for "release"
backend = ["fake_unavailable", "gated"]
seq_len = [32]

[[include]]
backend = "gated"
seq_len = 64
'''


def _started_workers(tmp_path: Path) -> list[int]:
    return [int(p.name.split("-")[1]) for p in tmp_path.glob("started-*")]


@needs_ray
def test_a_killed_ray_driver_keeps_its_rows_and_resume_completes_the_sweep(ray_head, tmp_path):
    suite, out = _suite(tmp_path, GATED_CASES), tmp_path / "out"
    driver = _start(suite, out, "--ray", ray_head)
    _wait_for(lambda: _rows(out) and _started_workers(tmp_path), "a row and a case mid-measurement")
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert [r["status"] for r in read_rows(out)] == ["unavailable"]
    # Ray ends a dead driver's tasks; each case's worker dies with its launcher.
    _wait_for(lambda: not any(alive(pid) for pid in _started_workers(tmp_path)), "the orphaned workers to end")
    (tmp_path / "release").write_text("")
    done = _run(suite, out, "--resume", "--ray", ray_head)
    assert done.returncode == 0, done.stderr
    rows = read_rows(out)
    assert sorted((r["backend"], r["seq_len"], r["status"]) for r in rows) == [
        ("fake_unavailable", 32, "unavailable"), ("gated", 32, "ok"), ("gated", 64, "ok")]
    assert len({r["case_id"] for r in rows}) == 3
    info = read_run_json(out)
    assert [r["executor"] for r in info["resumed"]] == [info["executor"]]


@needs_ray
def test_ctrl_c_cancels_the_running_ray_tasks_and_keeps_the_finished_rows(ray_head, tmp_path):
    suite, out = _suite(tmp_path, GATED_CASES), tmp_path / "out"
    driver = _start(suite, out, "--ray", ray_head)
    _wait_for(lambda: _rows(out) and _started_workers(tmp_path), "a row and a case mid-measurement")
    workers = _started_workers(tmp_path)
    driver.send_signal(signal.SIGINT)
    _, stderr = driver.communicate(timeout=60)
    assert driver.returncode == 130, stderr
    assert f"rerun with --resume --out {out}" in stderr
    assert [r["status"] for r in read_rows(out)] == ["unavailable"]
    # Cancelled, not left to Ray's clean-up of a departed driver: gone by the time the driver exits.
    assert not any(alive(pid) for pid in workers)


@needs_ray
def test_an_address_nobody_answers_on_is_a_one_line_error(tmp_path):
    port = _free_port()
    started = time.monotonic()
    done = _run(SUITES / "three_cases.toml", tmp_path / "out", "--ray", f"127.0.0.1:{port}", timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith(f"reformer-bench: error: --ray 127.0.0.1:{port}: no Ray head node answers there")
    assert len(done.stderr.strip().splitlines()) == 1
    assert time.monotonic() - started < 30
    assert not _rows(tmp_path / "out")


@needs_ray
def test_a_cuda_index_is_refused_on_ray(tmp_path, capsys):
    suite = tmp_path / "cuda1.toml"
    suite.write_text('[defaults]\nbackend = "eager"\ndevice = "cuda:1"\n')
    assert cli.main(["run", str(suite), "--out", str(tmp_path / "out"), "--ray", "local"]) == 2
    err = capsys.readouterr().err
    assert "device='cuda:1'" in err and 'use device = "cuda"' in err and len(err.strip().splitlines()) == 1


def test_without_ray_the_flag_is_a_one_line_error_naming_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code = cli.main(["run", str(SUITES / "three_cases.toml"), "--out", str(tmp_path / "out"), "--ray", "local"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == ("reformer-bench: error: --ray needs Ray, which is not installed here: "
                   "pip install -e '.[ray]' (the `ray` extra)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--ray", "nowhere"], "--ray 'nowhere': expected auto, local or HOST:PORT (the head node's GCS port, "
                           "e.g. 10.0.0.1:6379)"),
    (["--ray", "host:99999"], "--ray 'host:99999': expected auto, local or HOST:PORT (the head node's GCS port, "
                              "e.g. 10.0.0.1:6379)"),
    (["--ray", "local", "--ray-cpus-per-case", "0"], "--ray-cpus-per-case must be a positive integer, got 0"),
    (["--ray-cpus-per-case", "2"], "--ray-cpus-per-case 2: only with --ray ADDRESS"),
])
def test_bad_ray_flags_are_one_line_errors(tmp_path, capsys, args, message):
    code = cli.main(["run", str(SUITES / "three_cases.toml"), "--out", str(tmp_path / "out"), *args])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"reformer-bench: error: {message}"


def _case(**overrides):
    import dataclasses

    return dataclasses.replace(load_suite(SUITES / "ray_small.toml").cases[0], **overrides)


def test_task_resources_follow_the_device_and_the_threads():
    assert task_resources(_case(device="cuda"), None, 16) == {"num_gpus": 1, "num_cpus": 1}
    assert task_resources(_case(device="cuda", threads=4), 8, 16) == {"num_gpus": 1, "num_cpus": 4}
    assert task_resources(_case(threads=1), None, 16) == {"num_cpus": 1, "num_gpus": 0}
    assert task_resources(_case(threads=1), 4, 16) == {"num_cpus": 4, "num_gpus": 0}
    # threads unset: torch takes every core, so the case takes a whole (the largest) node
    assert task_resources(_case(threads=None), None, 16) == {"num_cpus": 16, "num_gpus": 0}
    assert task_resources(_case(threads=64), None, 16) == {"num_cpus": 16, "num_gpus": 0}


def test_unplaceable_says_what_no_node_has():
    cpu_nodes = [{"CPU": 8.0}, {"CPU": 16.0}]
    assert unplaceable({"num_cpus": 16, "num_gpus": 0}, cpu_nodes) is None
    assert unplaceable({"num_cpus": 1, "num_gpus": 1}, cpu_nodes) == "no node of the Ray cluster has a GPU"
    assert unplaceable({"num_cpus": 32, "num_gpus": 0}, cpu_nodes) == (
        "no node of the Ray cluster has 32 CPUs (the largest has 16)")
    assert unplaceable({"num_cpus": 4, "num_gpus": 1}, [{"CPU": 2.0, "GPU": 1.0}]) == (
        "no node of the Ray cluster has a GPU and 4 CPUs")


def test_node_names_the_host_and_a_cuda_case_s_gpu():
    from harness.env import node_facts

    assert node_facts("cpu") == {"node": socket.gethostname(), "node_gpu": None}
    # node_gpu: the GPU's name where NVML finds it, else None; node: the host either way
    assert node_facts("cuda")["node"] == socket.gethostname()


# A task whose trainings each wait, before training, until every training of the suite has started: run
# one after another, the first would wait in vain and end in error. Built on the toy task's plugin.
TOGETHER_PLUGIN = '''
import time
from pathlib import Path

from harness.tasks import get_task, register_task

import toy_task

HERE = Path(__file__).parent
TRAININGS = 2


class TrainsTogether(type(get_task("copy_with_offset"))):
    def train(self, config, run, checkpoint_path, on_step=None):
        (HERE / f"training-{run.n_hashes}").write_text("")
        deadline = time.monotonic() + 60
        while len(list(HERE.glob("training-*"))) < TRAININGS:
            if time.monotonic() > deadline:
                raise RuntimeError("the other training did not start while this one waited")
            time.sleep(0.05)
        return super().train(config, run, checkpoint_path, on_step)


register_task("copy_together", TrainsTogether())
'''


@needs_ray
def test_a_task_suite_s_trainings_run_at_once_on_ray_each_evaluation_after_its_own(ray_head, tmp_path):
    (tmp_path / "toy_task.py").write_text((SUITES / "toy_task.py").read_text())
    (tmp_path / "together.py").write_text(TOGETHER_PLUGIN)
    suite = tmp_path / "together.toml"
    suite.write_text('''
[suite]
name = "together"
plugins = ["together"]
threads = 1               # one CPU a case: the test head's two CPUs run both trainings
measure_peak = false

[defaults]
task = "copy_together"
backend = "eager"
chunk_len = 8
timeout_s = 300

[sweep]
train_n_hashes = [1, 2]
eval_n_hashes = [0, 1]

[task]
steps = 20
''')
    done = _run(suite, tmp_path / "out", "--ray", ray_head, timeout=240)
    assert done.returncode == 0, done.stderr
    rows = read_rows(tmp_path / "out")
    assert len(rows) == 6 and all(row["status"] == "ok" for row in rows), [(r["case_id"], r["reason"]) for r in rows]
    from datetime import datetime

    def span(row):
        start = datetime.fromisoformat(row["started_at"]).timestamp()
        return start, start + row["wall_s"]

    trainings = {row["case_id"]: span(row) for row in rows if row["eval_n_hashes"] is None}
    (a_start, a_end), (b_start, b_end) = trainings.values()
    assert a_start < b_end and b_start < a_end  # they overlapped
    cases = {case.case_id: case for case in load_suite(suite).cases}
    for row in rows:
        if row["eval_n_hashes"] is not None:
            assert span(row)[0] >= trainings[cases[row["case_id"]].depends_on][1]
