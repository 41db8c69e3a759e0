"""Profiles (issue 22): named phases and the phases pass, the live set at the CPU peak, traces, and that a
run which asks for none of them runs none of their code."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
import torch

import impls
from harness.errors import UserError
from harness.measure import live_set
from harness.measure.memory import track_peak_memory
from harness.measure.phases import OTHER, phase_profile, phase_times, profiled_call, write_trace
from harness.results.store import row_checks
from harness.run import launch
from harness.run.worker import run_case
from harness.suite import load_suite
from impls import LSHConfig, phases

ROOT = Path(__file__).resolve().parents[1]
FORWARD_PHASES = {"lsh.hash", "lsh.sort", "lsh.gather", "lsh.attend", "lsh.unsort", "lsh.combine"}
BACKWARD_PHASES = {"lsh.backward.prepare", "lsh.backward.gather", "lsh.backward.attend", "lsh.backward.keys",
                   "lsh.backward.unsort"}


def _attention_call(backend: str = "eager", seq_len: int = 1024, grad: bool = True):
    gen = torch.Generator().manual_seed(0)
    qk = torch.randn(1, 2, seq_len, 64, generator=gen, requires_grad=grad)
    v = torch.randn(1, 2, seq_len, 64, generator=gen, requires_grad=grad)
    grad_out = torch.randn(1, 2, seq_len, 64, generator=gen)
    cfg = LSHConfig(n_buckets=16, n_hashes=2, chunk_len=64, seed=0)
    attention = impls.get_backend(backend)

    def call():
        if not grad:
            with torch.no_grad():
                return attention.attend(qk, v, cfg)
        qk.grad = v.grad = None
        out = attention.attend(qk, v, cfg)
        out.backward(grad_out)
        return out.detach()

    return call


# --- phases -----------------------------------------------------------------------------------------

def test_phases_are_off_unless_enabled():
    assert phases.phase("lsh.attend") is phases.phase("lsh.hash")  # the one shared no-op
    assert phases.stack() == ()
    with phases.enabled(record=False):
        with phases.phase("lsh.attend"):
            assert phases.stack() == ("lsh.attend",)
    assert phases.stack() == () and phases.phase("x") is phases.phase("y")


def test_the_phases_of_a_call_add_up_to_its_time():
    """The phases' exclusive times plus `other` are the call's range exactly (to float rounding); the named
    phases, never counted twice, are at most the call and cover most of it. What they leave to `other` is
    the Python between the ranges and the autograd engine; the profiler's own cost (its per-op events, a
    few microseconds each) is inside both, which is why a share is the figure to compare, not a time.
    Tolerance: 60% coverage at 1,024 tokens fwd+bwd (the ranges cover every tensor op of the backend)."""
    call = _attention_call()
    call()
    started = time.perf_counter()
    profile = phase_profile(call, "cpu")
    wall = time.perf_counter() - started
    named = {k: v for k, v in profile.times_s.items() if k != OTHER}
    assert set(named) == FORWARD_PHASES | BACKWARD_PHASES
    assert sum(profile.times_s.values()) == pytest.approx(profile.total_s, rel=1e-9)
    assert sum(named.values()) <= profile.total_s
    assert sum(named.values()) >= 0.6 * profile.total_s, profile.shares
    assert 0 < profile.total_s <= wall  # the range sits inside the profiled region
    assert sum(profile.shares.values()) == pytest.approx(1.0)


def test_nested_phases_are_counted_once():
    """A range nested in another (a model's own range around a backend's phases) is taken out of the outer
    one: exclusive times, exactly the ranges' own durations apart. Sleeps of 30 and 60 ms bound them from
    below (a sleep never ends early; a loaded machine may make it longer)."""
    with phases.enabled() as seen, torch.profiler.profile() as prof:
        with torch.profiler.record_function("reformer_bench.call"):
            with phases.phase("outer"):
                time.sleep(0.03)
                with phases.phase("inner"):
                    time.sleep(0.06)
    events = prof.events()
    profile = phase_times(events, set(seen))
    duration = {e.name: e.time_range.elapsed_us() * 1e-6 for e in events if e.name in ("outer", "inner")}
    assert profile.times_s["inner"] == pytest.approx(duration["inner"], rel=1e-9)
    assert profile.times_s["outer"] == pytest.approx(duration["outer"] - duration["inner"], rel=1e-9)
    assert profile.times_s["inner"] >= 0.06 and profile.times_s["outer"] >= 0.03
    assert sum(profile.times_s.values()) == pytest.approx(profile.total_s, rel=1e-9)


@pytest.mark.parametrize("backend", ["dense", "sdpa"])
def test_a_backend_without_phases_is_one_phase(backend):
    profile = phase_profile(_attention_call(backend, seq_len=256), "cpu")
    assert list(profile.times_s) == [OTHER] and profile.shares[OTHER] == pytest.approx(1.0)


def test_phases_are_in_every_lsh_backend_on_the_cpu():
    """compiled's ranges sit in its Python loop, around (never inside) the compiled kernels: no graph break."""
    call = _attention_call("compiled", seq_len=256)
    call()
    impls.get_backend("compiled").reset_compile_stats()  # the instance is shared: this test's calls alone
    _, names = profiled_call(call, "cpu")
    assert FORWARD_PHASES | BACKWARD_PHASES <= names
    stats = impls.get_backend("compiled").compile_stats()
    assert not stats["fell_back"], stats["reason"]


@pytest.mark.parametrize("backend, expected", [("hf_lsh", {"lsh.hash", "lsh.sort", "lsh.gather", "lsh.attend"}),
                                               ("reformer_pytorch", {"lsh.hash"})])
def test_a_peer_s_forward_phases_are_ranged_where_its_code_has_a_method_for_them(backend, expected):
    info = impls.backend_info(backend)
    ok, why = impls.get_backend(backend).available()
    if not ok:
        pytest.skip(why)
    profile = phase_profile(_attention_call(backend, seq_len=256), "cpu")
    assert set(profile.times_s) == expected | {OTHER}  # its backward, autograd's, is "other"
    assert all(profile.times_s[name] > 0 for name in expected)
    assert sum(profile.times_s.values()) == pytest.approx(profile.total_s, rel=1e-9)
    assert info.kind == "peer"


# --- the live set at the peak ------------------------------------------------------------------------

def test_the_live_set_at_the_peak_is_what_lived_then():
    """Storages freed after the peak count, storages made after it do not, a storage resized in place
    counts at its size then, and the groups sum to the peak exactly."""
    with track_peak_memory("cpu", where=lambda: "here") as peak:
        a = torch.empty(1000, dtype=torch.uint8)
        b = torch.empty(3000, dtype=torch.uint8)  # the peak: a + b = 4000
        del a
        c = torch.empty(500, dtype=torch.uint8)
        del b, c
        d = torch.empty(100, dtype=torch.uint8)
        d.resize_(200)  # still below the peak
    live = peak.live_at_peak
    assert peak.peak_bytes == 4000
    assert sorted(s.nbytes for s in live) == [1000, 3000]
    assert sum(s.nbytes for s in live) == peak.peak_bytes
    assert {s.op for s in live} == {"aten::empty"} and {s.where for s in live} == {"here"}
    del d


def test_a_resize_that_makes_the_peak_counts_its_new_size():
    with track_peak_memory("cpu", where=lambda: "") as peak:
        a = torch.empty(100, dtype=torch.uint8)
        a.resize_(5000)
        del a
    assert peak.peak_bytes == 5000
    assert [s.nbytes for s in peak.live_at_peak] == [5000]


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
def test_the_memory_pass_breakdown_sums_to_mem_peak_bytes_exactly(tmp_path, mode):
    suite = _suite(tmp_path, f'mode = "{mode}"', peak_live="true")
    case = suite.cases[0]
    row = _run_in_process(case, tmp_path)
    groups = json.loads((tmp_path / row["peak_live_file"]).read_text())["groups"]
    assert sum(g["bytes"] for g in groups) == row["mem_peak_bytes"]
    assert sum(g["bytes"] for g in row["peak_live_top"]) <= row["mem_peak_bytes"]
    assert any(g["op"] == live_set.BEFORE_CALL_OP for g in groups)
    assert any("lsh." in g["where"] for g in groups)  # made inside a named phase
    # Recording the live set changes no figure of the memory pass.
    plain = _run_in_process(dataclasses.replace(case, peak_live=False), tmp_path / "plain")
    assert plain["mem_peak_bytes"] == row["mem_peak_bytes"] and plain["peak_live_top"] is None


def test_the_live_set_names_the_modules_of_a_model(tmp_path):
    suite = _suite(tmp_path, 'workload = "model"\nmode = "forward"\nseq_len = 256',
                   extra="[model]\nvocab = 32\nd_model = 64\nheads = 2\nlayers = 2", peak_live="true")
    row = _run_in_process(suite.cases[0], tmp_path)
    groups = json.loads((tmp_path / row["peak_live_file"]).read_text())["groups"]
    assert sum(g["bytes"] for g in groups) == row["mem_peak_bytes"]
    assert any(g["where"].split(" | ")[0] not in ("(no module)",) for g in groups if g["count"])


def test_the_reversible_backward_s_peak_holds_no_stream_of_the_forward(tmp_path):
    """At the peak of a reversible model's loss and gradients (inside its stack's backward) the forward's
    own tensors are gone but for the inputs: the outputs the backward reconstructs from are dropped
    once read (they were held to its end as saved tensors, two residual streams)."""
    seq_len, d_model = 2048, 64
    suite = _suite(tmp_path, f'workload = "model"\nmode = "forward_backward"\nseq_len = {seq_len}\ncausal = true',
                   extra=f"[model]\nvocab = 32\nd_model = {d_model}\nheads = 2\nlayers = 2\nreversible = true",
                   peak_live="true")
    row = _run_in_process(suite.cases[0], tmp_path)
    groups = json.loads((tmp_path / row["peak_live_file"]).read_text())["groups"]
    assert any("backward of ReversibleStackBackward" in g["where"] for g in groups)
    made_by_forward = sum(g["bytes"] for g in groups
                          if "backward of" not in g["where"] and g["op"] != live_set.BEFORE_CALL_OP)
    assert made_by_forward < seq_len * d_model * 4  # less than one residual stream


def test_the_reversible_backward_runs_once_per_forward_on_its_unmodified_outputs():
    from impls.model import ModelConfig, ReformerLM, ReversibleStack

    model = ReformerLM(ModelConfig(vocab=16, d_model=32, heads=2, d_ff=32, layers=2, max_seq_len=64, causal=True,
                                   chunk_len=16, n_hashes=1, dropout=0.0, seed=0), reversible=True)
    loss = model.hidden(torch.randint(0, 16, (1, 64))).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="runs once per forward"):
        loss.backward()
    # Its outputs are not saved tensors, so it checks their versions itself, as autograd would.
    y1, y2 = ReversibleStack.apply(model.embed(torch.randint(0, 16, (1, 64))), list(model.blocks),
                                   model.lsh_configs(64), model.ff_chunks, *model.blocks.parameters())
    y1.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (y1.sum() + y2.sum()).backward()


# --- traces --------------------------------------------------------------------------------------

def test_a_trace_opens_as_json_with_the_named_phases(tmp_path):
    files = write_trace(_attention_call(seq_len=256), "cpu", tmp_path)
    trace = json.loads(Path(files["trace"]).read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    assert FORWARD_PHASES | BACKWARD_PHASES <= names
    ops = json.loads(Path(files["ops"]).read_text())
    assert any(op["op"] == "aten::bmm" and op["flops"] and op["input_shapes"] for op in ops)
    assert (tmp_path / "ops.txt").read_text().strip()


# --- runs with and without profiles --------------------------------------------------------------

DEFAULTS = {"backend": '"eager"', "seq_len": "512", "heads": "2", "n_hashes": "2", "repeats": "2", "warmup": "0",
            "mode": '"forward_backward"'}


def _suite(tmp_path: Path, defaults: str = "", extra: str = "", **settings: str):
    """A small suite: DEFAULTS with `defaults` ("key = value" lines) over them, `extra` tables after."""
    table = dict(DEFAULTS)
    table.update(dict(line.split(" = ", 1) for line in defaults.splitlines() if line.strip()))
    lines = "\n".join(f"{key} = {value}" for key, value in settings.items())
    path = tmp_path / "profiles_suite.toml"
    path.write_text(f"""
[suite]
fidelity = false
count_flops = false
measure_peak = false
threads = 1
{lines}

[defaults]
""" + "\n".join(f"{key} = {value}" for key, value in table.items()) + f"\n\n{extra}\n")
    return load_suite(path)


def _run_in_process(case, run_dir: Path) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    import os

    from harness.run.task_case import RUN_DIR_ENV

    saved = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    try:
        row = run_case(case)
    finally:
        if saved is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = saved
    assert row["status"] == "ok", row["reason"]
    return row


PROFILE_METRICS = ("phase_times", "phase_shares", "phase_total_s", "peak_live_top", "peak_live_file", "trace_file",
                   "op_table_file")


def test_profiling_off_runs_no_profile_stage_and_leaves_no_figure(tmp_path, capsys):
    row = _run_in_process(_suite(tmp_path).cases[0], tmp_path)
    err = capsys.readouterr().err
    assert "stage: timing" in err and "stage: phases" not in err and "stage: trace" not in err
    assert all(row[key] is None for key in PROFILE_METRICS)
    assert not (tmp_path / "profiles").exists()
    assert not phases._active  # the timed calls of the next case run with the ranges off


def test_profiling_on_runs_after_the_timed_calls(tmp_path, capsys):
    suite = _suite(tmp_path, phases="true", profile="true", peak_live="true")
    row = _run_in_process(suite.cases[0], tmp_path)
    err = capsys.readouterr().err
    stages = [line.split(": ", 1)[1] for line in err.splitlines() if line.startswith("stage: ")]
    assert stages.index("timing") < stages.index("memory") < stages.index("phases") < stages.index("trace")
    assert all(row[key] is not None for key in PROFILE_METRICS)
    assert row["phase_shares"]["lsh.attend"] > 0
    assert not phases._active


@pytest.mark.parametrize("profiles", [False, True])
def test_the_timed_calls_run_the_same_code_whether_profiles_are_asked_for_or_not(tmp_path, monkeypatch, profiles):
    """Profiling off changes no timed figure: every timed call, of a case that asks for every profile too,
    runs with the phases off, no profiler and no dispatch mode (the memory tracker's) active. That the
    medians agree within noise is a measurement, not a unit test: README, "Profiles"."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    from harness.measure import timing

    states = []
    time_call = timing.time_call

    def watched_time_call(fn, *args, **kwargs):
        def call():
            states.append((phases._active, torch.autograd.profiler._is_profiler_enabled,
                           len(_get_current_dispatch_mode_stack())))
            return fn()
        return time_call(call, *args, **kwargs)

    monkeypatch.setattr(timing, "time_call", watched_time_call)
    on = {"phases": "true", "profile": "true", "peak_live": "true"} if profiles else {}
    row = _run_in_process(_suite(tmp_path, **on).cases[0], tmp_path)
    assert row["status"] == "ok" and row["time_median_s"] > 0
    assert (row["phase_shares"] is not None) == profiles
    assert len(states) == 1 + row["repeats"]  # the first call and the timed calls (warmup = 0)
    assert set(states) == {(False, False, 0)}


@pytest.mark.parametrize("method", launch.LAUNCH_METHODS)
def test_both_launchers_write_the_profiles(tmp_path, method):
    if method == "fork" and launch.DEFAULT_LAUNCH != "fork":
        pytest.skip("the fork launcher is Linux's")
    suite = _suite(tmp_path, phases="true", profile="true", peak_live="true")
    try:
        row = launch.run_case_in_worker(suite.cases[0], tmp_path, launch=method)
    finally:
        launch.close_servers()
    assert row["status"] == "ok", row["reason"]
    for key in ("peak_live_file", "trace_file", "op_table_file"):
        assert (tmp_path / row[key]).is_file(), key
    assert set(row["phase_times"]) >= FORWARD_PHASES


def test_profile_settings_and_flags(tmp_path):
    from harness.cli import with_profiles

    suite = _suite(tmp_path)
    assert not any(c.phases or c.peak_live or c.profile for c in suite.cases)
    on = with_profiles(suite, ["phases", "profile"])
    assert all(c.phases and c.profile and not c.peak_live for c in on.cases)
    assert [c.case_id for c in on.cases] == [c.case_id for c in suite.cases]  # no new case ids
    assert on.settings["phases"] is True
    with pytest.raises(UserError, match=r"\[suite\] phases"):
        _suite(tmp_path, phases='"yes"')


def test_rows_check_the_profile_figures():
    checks = row_checks()
    assert checks["phase_shares"]({"lsh.hash": 0.5, "other": 0.5}) is None
    assert checks["phase_shares"]("lsh.hash") is not None
    assert checks["phase_shares"]({"lsh.hash": "half"}) is not None
    assert checks["peak_live_top"]([{"op": "aten::bmm", "where": "x", "bytes": 1, "count": None}]) is None
    assert checks["peak_live_top"]([{"op": ["nested"]}]) is not None


def test_the_million_token_suite_loads():
    suite = load_suite(ROOT / "suites" / "million.toml")
    (case,) = suite.cases
    assert case.seq_len == 1 << 20 and case.workload == "model" and case.mode == "forward_backward"
    assert case.peak_live and case.n_hashes == 2 and case.n_buckets == 1024 and case.chunk_len == 64
    assert case.model["axial_shape"] == [1024, 1024] and case.model["layers"] == 2
