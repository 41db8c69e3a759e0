"""The fork launcher (harness.run.forkserver) keeps every case as isolated as a spawned worker: the same
memory figures, a compile of its own, its own RNG state, the interpreter's environment; a timeout kills
the case's own process tree and nothing else; a server that dies is a crashed row and a new server."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from harness.run import launch
from harness.suite import load_suite
from tests.processes import alive

ROOT = Path(__file__).resolve().parents[1]

# slow: every test here starts fork servers and runs cases in their children.
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(launch.DEFAULT_LAUNCH != "fork", reason="the fork launcher is Linux's")]


@pytest.fixture(autouse=True)
def own_servers():
    """Every test starts its servers afresh and leaves none behind."""
    launch.close_servers()
    yield
    launch.close_servers()


def _server_pids() -> set[int]:
    return {server.proc.pid for server in launch._servers.values() if server.alive()}


PLUGIN = '''
import os
import signal
import subprocess
import sys
import time

import torch

from harness.measure.metrics import Metric, register_metric
from impls import register_backend


class Plain:
    def available(self):
        return True, ""

    def attend(self, qk, v, cfg):
        return v.clone()


class StartsAChildAndHangs(Plain):
    def attend(self, qk, v, cfg):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open(os.environ["PID_FILE"], "w") as f:
            f.write(str(child.pid))
        time.sleep(600)


class KillsItsServer(Plain):
    def attend(self, qk, v, cfg):
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(600)


register_backend("plain", Plain, kind="dense")
register_backend("hangs", StartsAChildAndHangs, kind="dense")
register_backend("kills_server", KillsItsServer, kind="dense")


def rng_draws(ctx):
    # The output of the memory call follows from the case's seeded draws (inputs, hash rotations);
    # then one draw of torch's global generator, which no case seeds.
    inputs = [float(t.double().sum()) for t in (ctx.workload.qk, ctx.workload.v)]
    return {"rng_draws": [*inputs, float(ctx.output.double().sum()), float(torch.rand(1))]}


register_metric(Metric("rng_draws", "", "seeded draws, then an unseeded one", kind="trace"), measure=rng_draws)
'''


def _suite(tmp_path: Path, defaults: str, sweep: str = "", timeout_s: int = 60) -> list:
    (tmp_path / "fork_plugin.py").write_text(PLUGIN)
    path = tmp_path / "fork.toml"
    path.write_text(f"""
[suite]
plugins = ["fork_plugin"]
threads = 1
count_flops = false
fidelity = false

[defaults]
seq_len = 64
heads = 1
d_head = 8
repeats = 1
warmup = 0
timeout_s = {timeout_s}
{defaults}

[sweep]
{sweep}
""")
    return load_suite(path).cases


def test_gate_memory_figures_are_identical_under_fork_and_spawn():
    cases = [c for c in load_suite(ROOT / "suites" / "gate.toml").cases if c.seq_len <= 512]
    assert len(cases) >= 3 and {c.backend for c in cases} == {"eager"} and any(c.causal for c in cases)
    dense = [c for c in load_suite(ROOT / "suites" / "gate.toml").cases if c.backend == "dense"]
    for case in cases + dense:
        forked = launch.run_case_in_worker(case, launch="fork")
        spawned = launch.run_case_in_worker(case, launch="spawn")
        assert forked["status"] == spawned["status"] == "ok", (forked["reason"], spawned["reason"])
        assert forked["mem_peak_bytes"] == spawned["mem_peak_bytes"], case.case_id
        assert forked["mem_alloc_peak_bytes"] == spawned["mem_alloc_peak_bytes"], case.case_id
        assert forked["mem_bound"] == spawned["mem_bound"]


def test_a_compiled_case_after_another_compiles_again():
    smoke = load_suite(ROOT / "suites" / "smoke.toml").cases
    (case,) = [c for c in smoke if c.backend == "compiled"]
    first = launch.run_case_in_worker(case, launch="fork")
    second = launch.run_case_in_worker(case, launch="fork")
    assert first["status"] == second["status"] == "ok", (first["reason"], second["reason"])
    assert first["compilations"] >= 1 and second["compilations"] == first["compilations"]
    # The second case found no compiled code in memory or on disk: its first call compiles as long.
    assert second["compile_time_s"] > 0.3 * first["compile_time_s"], (first["compile_time_s"],
                                                                         second["compile_time_s"])


def test_rng_draws_do_not_depend_on_what_ran_before(tmp_path):
    case, other = _suite(tmp_path, 'backend = "eager"\nchunk_len = 16\nn_hashes = 2', "seed = [0, 7]")
    alone = launch.run_case_in_worker(case, launch="fork")
    others = [launch.run_case_in_worker(other, launch="fork") for _ in range(2)]
    after_others = launch.run_case_in_worker(case, launch="fork")
    spawned = launch.run_case_in_worker(case, launch="spawn")
    assert all(r["status"] == "ok" for r in (alone, after_others, spawned, *others)), alone["reason"]
    seeded = alone["rng_draws"][:3]
    assert seeded == after_others["rng_draws"][:3] == spawned["rng_draws"][:3]
    assert others[0]["rng_draws"][:3] == others[1]["rng_draws"][:3] != seeded
    # Unseeded draws differ from child to child, as from one fresh interpreter to the next.
    unseeded = [r["rng_draws"][3] for r in (alone, *others, after_others)]
    assert len(set(unseeded)) == len(unseeded), unseeded
    assert len(_server_pids()) == 1  # the four forked cases came from one server


def test_a_triton_case_runs_interpreted_in_a_server_of_its_environment():
    pytest.importorskip("triton")
    smoke = load_suite(ROOT / "suites" / "smoke.toml").cases
    triton = next(c for c in smoke if c.backend == "triton" and c.mode == "forward")
    eager = next(c for c in smoke if c.backend == "eager" and c.seq_len == 256 and c.mode == "forward")
    row = launch.run_case_in_worker(triton, launch="fork")
    assert row["status"] == "ok", row["reason"]
    assert row["interpreted"] is True
    plain = launch.run_case_in_worker(eager, launch="fork")
    assert plain["status"] == "ok" and plain["interpreted"] is False
    assert len(_server_pids()) == 2  # TRITON_INTERPRET=1 is an import-time environment of its own


def test_a_timed_out_case_kills_its_own_process_tree_only(tmp_path, monkeypatch):
    pid_file = tmp_path / "grandchild.pid"
    monkeypatch.setenv("PID_FILE", str(pid_file))
    hangs, plain = _suite(tmp_path, "", 'backend = ["hangs", "plain"]', timeout_s=8)
    monkeypatch.setattr(launch, "KILL_GRACE_S", 0.5)
    row = launch.run_case_in_worker(hangs, launch="fork")
    assert row["status"] == "timeout", row["reason"]
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(grandchild), "the case's own child outlived it"
    (server,) = _server_pids()
    assert alive(server), "the server is not the case's: it stays"
    after = launch.run_case_in_worker(plain, launch="fork")
    assert after["status"] == "ok", after["reason"]
    assert _server_pids() == {server}


def test_a_dead_server_is_a_crashed_row_and_a_new_server(tmp_path):
    kills, plain = _suite(tmp_path, "", 'backend = ["kills_server", "plain"]')
    started = time.monotonic()
    row = launch.run_case_in_worker(kills, launch="fork")
    assert time.monotonic() - started < 50, "the run waited for a case whose server is gone"
    assert row["status"] == "crashed"
    assert "fork server was killed by signal 9" in row["reason"] and "died with it" in row["reason"]
    assert row["overhead_s"] == row["wall_s"]  # no work was measured
    after = launch.run_case_in_worker(plain, launch="fork")
    assert after["status"] == "ok", after["reason"]
    assert len(_server_pids()) == 1


def test_the_server_imported_but_ran_nothing():
    server = launch._server_for(_plain_case(), dict(os.environ))
    ready = server.ready
    assert ready["ready"] == server.proc.pid
    assert ready["cuda_initialized"] is False
    os.kill(server.proc.pid, signal.SIGTERM)
    server.proc.wait(timeout=10)
    assert not server.alive() and launch._server_for(_plain_case(), dict(os.environ)).alive()


def _plain_case():
    return next(c for c in load_suite(ROOT / "suites" / "smoke.toml").cases if c.backend == "dense")
