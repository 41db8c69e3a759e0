"""harness.gate: passes an unchanged run, fails a regression naming the case, refuses unusable input.

Results directories here are synthetic (the README's format, written directly) so the tests are fast;
the real suite is gated by .ci/run and tox -e gate.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import cli
from harness.gate import compare, device_class, parse_tolerance, slug

MIB = 1 << 20


def main(argv: list[str]) -> int:
    """`reformer-bench gate ARGV...`."""
    return cli.main(["gate", *argv])


def row(case_id: str, mem: int | None, time_s: float | None = 0.01, status: str = "ok", device: str = "cpu",
        reason: str | None = None) -> dict:
    return {"case_id": case_id, "suite": "gate", "backend": "eager", "seq_len": 256, "device": device,
            "status": status, "reason": reason, "mem_peak_bytes": mem, "time_median_s": time_s}


def write_results(path: Path, rows: list[dict], device_name: str = "Some CPU") -> Path:
    path.mkdir(parents=True)
    run = {"suite": "gate", "environment": {"git_commit": "0123456789abcdef", "device_name": device_name}}
    (path / "run.json").write_text(json.dumps(run))
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


BASE_ROWS = [row("case-a", 10 * MIB), row("case-b", 20 * MIB, 0.5), row("case-c", 3 * MIB)]


@pytest.fixture
def baseline(tmp_path) -> Path:
    """A baseline written by the gate's own --update from BASE_ROWS."""
    path = tmp_path / "baselines" / "cpu.json"
    assert main([str(write_results(tmp_path / "trusted", BASE_ROWS)), "--baseline", str(path), "--update"]) == 0
    return path


def gate(tmp_path, rows, baseline, *extra, name="new") -> int:
    return main([str(write_results(tmp_path / name, rows)), "--baseline", str(baseline), *extra])


def test_update_writes_every_case_and_the_device_class(baseline):
    data = json.loads(baseline.read_text())
    assert data["device_class"] == "cpu"
    assert data["commit"] == "0123456789abcdef"
    assert data["cases"] == {r["case_id"]: {"mem_peak_bytes": r["mem_peak_bytes"],
                                            "time_median_s": r["time_median_s"]} for r in BASE_ROWS}


def test_unchanged_run_passes(tmp_path, baseline, capsys):
    assert gate(tmp_path, BASE_ROWS, baseline) == 0
    assert "gate PASSED: 3 cases compared" in capsys.readouterr().out


def test_inflated_memory_fails_naming_the_case(tmp_path, baseline, capsys):
    rows = [row("case-a", 10 * MIB), row("case-b", 22 * MIB, 0.5), row("case-c", 3 * MIB)]
    assert gate(tmp_path, rows, baseline) == 1
    out = capsys.readouterr().out
    regression_lines = [line for line in out.splitlines() if "REGRESSION" in line]
    assert len(regression_lines) == 1 and regression_lines[0].startswith("case-b")
    assert "+10.00%" in regression_lines[0]
    assert "gate FAILED" in out


def test_lowered_baseline_fails_the_same_run(tmp_path, baseline, capsys):
    data = json.loads(baseline.read_text())
    data["cases"]["case-c"]["mem_peak_bytes"] = 2 * MIB
    baseline.write_text(json.dumps(data))
    assert gate(tmp_path, BASE_ROWS, baseline) == 1
    assert any(line.startswith("case-c") and "REGRESSION" in line for line in capsys.readouterr().out.splitlines())


def test_tolerance_decides_a_small_increase(tmp_path, baseline):
    rows = [row("case-a", int(10 * MIB * 1.04)), *BASE_ROWS[1:]]
    assert gate(tmp_path, rows, baseline, name="default") == 0  # +4% < 5%
    assert gate(tmp_path, rows, baseline, "--tolerance", "3%", name="tight") == 1


def test_improvement_is_reported_and_passes(tmp_path, baseline, capsys):
    rows = [row("case-a", 5 * MIB), *BASE_ROWS[1:]]
    assert gate(tmp_path, rows, baseline) == 0
    out = capsys.readouterr().out
    assert any(line.startswith("case-a") and "improvement" in line and "-50.00%" in line for line in out.splitlines())
    assert "1 improvement" in out


def test_time_is_gated_only_when_asked(tmp_path, baseline, capsys):
    rows = [row("case-a", 10 * MIB), row("case-b", 20 * MIB, 0.9), row("case-c", 3 * MIB)]
    assert gate(tmp_path, rows, baseline, name="memory-only") == 0
    assert gate(tmp_path, rows, baseline, "--time-tolerance", "10%", name="with-time") == 1
    assert any(line.startswith("case-b") and "time" in line and "REGRESSION" in line
               for line in capsys.readouterr().out.splitlines())


def test_missing_and_failed_cases_fail(tmp_path, baseline, capsys):
    rows = [row("case-a", None, status="oom", reason="CUDA out of memory\ntraceback..."), row("case-b", 20 * MIB, 0.5),
            row("case-new", 1 * MIB)]
    assert gate(tmp_path, rows, baseline) == 1
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("case-a") and "FAILED" in line and "status oom: CUDA out of memory" in line
               for line in lines)
    assert any(line.startswith("case-c") and "MISSING" in line and "not in the results" in line for line in lines)
    assert "1 case not in the baseline" in lines[-1]


def test_missing_baseline_is_refused_with_a_hint(tmp_path, capsys):
    missing = tmp_path / "baselines" / "cpu.json"
    assert gate(tmp_path, BASE_ROWS, missing) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "does not exist" in err and "--update" in err and str(missing) in err


def test_baseline_of_another_device_class_is_refused(tmp_path, baseline, capsys):
    data = json.loads(baseline.read_text())
    data["device_class"] = "cuda-nvidia-h200"
    baseline.write_text(json.dumps(data))
    assert gate(tmp_path, BASE_ROWS, baseline) == 2
    err = capsys.readouterr().err
    assert "'cuda-nvidia-h200'" in err and "'cpu'" in err


def test_update_refuses_failed_cases_and_foreign_baselines(tmp_path, baseline, capsys):
    rows = [row("case-a", None, status="timeout"), *BASE_ROWS[1:]]
    fresh = tmp_path / "fresh.json"
    assert gate(tmp_path, rows, fresh, "--update") == 2
    assert "case-a (status timeout)" in capsys.readouterr().err
    assert not fresh.exists()
    gpu_rows = [row(r["case_id"], r["mem_peak_bytes"], device="cuda") for r in BASE_ROWS]
    results = write_results(tmp_path / "gpu", gpu_rows, device_name="NVIDIA H200")
    assert main([str(results), "--baseline", str(baseline), "--update"]) == 2
    assert "write reports/baselines/cuda-nvidia-h200.json" in capsys.readouterr().err


def test_gpu_results_default_to_their_device_class_baseline(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    gpu_rows = [row(r["case_id"], r["mem_peak_bytes"], device="cuda:0") for r in BASE_ROWS]
    results = write_results(tmp_path / "gpu", gpu_rows, device_name="NVIDIA H200")
    assert main([str(results)]) == 2
    assert "reports/baselines/cuda-nvidia-h200.json" in capsys.readouterr().err
    assert main([str(results), "--update"]) == 0
    assert json.loads((tmp_path / "reports/baselines/cuda-nvidia-h200.json").read_text())["device_class"] == \
        "cuda-nvidia-h200"
    assert main([str(results)]) == 0


@pytest.mark.parametrize(("bad_baseline", "named"), [
    ("not json", "not valid JSON"),
    ('{"cases": {"a": {"mem_peak_bytes": 1}}}', "device_class=None"),
    ('{"device_class": "cpu", "cases": {}}', "'cases' must be a non-empty object"),
    ('{"device_class": "cpu", "cases": {"case-a": {"mem_peak_bytes": "big"}}}', "cases['case-a'].mem_peak_bytes='big'"),
])
def test_malformed_baseline_names_the_problem(tmp_path, capsys, bad_baseline, named):
    path = tmp_path / "bad.json"
    path.write_text(bad_baseline)
    assert gate(tmp_path, BASE_ROWS, path) == 2
    assert named in capsys.readouterr().err


def test_unreadable_results_are_one_line(tmp_path, baseline, capsys):
    assert main([str(tmp_path / "nowhere"), "--baseline", str(baseline)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nowhere" in err


def test_mixed_device_classes_are_refused(tmp_path, baseline, capsys):
    rows = [*BASE_ROWS, row("case-gpu", MIB, device="cuda")]
    assert gate(tmp_path, rows, baseline) == 2
    assert "several device classes" in capsys.readouterr().err


def test_bad_tolerance_is_a_usage_error(tmp_path, baseline, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gate(tmp_path, BASE_ROWS, baseline, "--tolerance", "five")
    assert exit_info.value.code == 2
    assert "tolerance must be a percentage such as '5%', got 'five'" in capsys.readouterr().err


def test_parse_tolerance():
    assert parse_tolerance("5%") == pytest.approx(0.05)
    assert parse_tolerance("12.5") == pytest.approx(0.125)
    assert parse_tolerance("0%") == 0


def test_device_class_names():
    assert slug("NVIDIA H200") == "nvidia-h200"
    assert slug("  NVIDIA GeForce RTX 4090 (24GB) ") == "nvidia-geforce-rtx-4090-24gb"
    assert device_class("cpu", "whatever CPU") == "cpu"
    assert device_class("cuda:1", "NVIDIA A100-SXM4-80GB") == "cuda-nvidia-a100-sxm4-80gb"


def test_compare_counts_only_baseline_cases():
    report = compare({"a": {"mem_peak_bytes": 100}}, [row("a", 100), row("b", 10 ** 9)], {"mem_peak_bytes": 0.0})
    assert report.passed and report.compared == 1 and report.new_cases == ["b"]


def test_gate_is_a_subcommand_of_the_cli(tmp_path, baseline, capsys):
    results = write_results(tmp_path / "via-cli", BASE_ROWS)
    assert cli.main(["gate", str(results), "--baseline", str(baseline)]) == 0
    assert "gate PASSED" in capsys.readouterr().out


# --- the committed CPU gate: suites/gate.toml and reports/baselines/cpu.json -------------------------

REPO = Path(__file__).resolve().parents[1]


def test_cpu_baseline_covers_exactly_the_gate_suite():
    from harness.suite import load_suite

    suite_ids = {case.case_id for case in load_suite(REPO / "suites" / "gate.toml").cases}
    baseline = json.loads((REPO / "reports" / "baselines" / "cpu.json").read_text())
    assert baseline["device_class"] == "cpu"
    assert set(baseline["cases"]) == suite_ids


@pytest.mark.slow
def test_gate_suite_memory_is_deterministic():
    # The runner's own measurement (harness.run.worker.run_case), twice in this process: the exact CPU
    # figure must not depend on allocator state, earlier tests or timing.
    from harness.run.worker import run_case
    from harness.suite import load_suite

    cases = sorted(load_suite(REPO / "suites" / "gate.toml").cases, key=lambda c: (c.seq_len, c.n_hashes or 0))
    for case in cases[:2]:
        first, second = run_case(case), run_case(case)
        assert first["status"] == second["status"] == "ok", first["reason"]
        assert first["mem_method"] == "cpu-tensor-tracker"
        assert first["mem_peak_bytes"] == second["mem_peak_bytes"] > 0


def test_the_gpu_a_row_ran_on_names_its_class_and_an_empty_run_is_refused(tmp_path, capsys):
    # On a Ray cluster the driver's environment is a CPU: the rows' node_gpu says which GPU they ran on.
    rows = [dict(row(r["case_id"], r["mem_peak_bytes"], device="cuda"), node="gpu-node-3", node_gpu="NVIDIA H200")
            for r in BASE_ROWS]
    results = write_results(tmp_path / "ray", rows, device_name="Some CPU")
    assert main([str(results), "--baseline", str(tmp_path / "h200.json"), "--update"]) == 0
    assert json.loads((tmp_path / "h200.json").read_text())["device_class"] == "cuda-nvidia-h200"
    empty = write_results(tmp_path / "empty", [])
    assert main([str(empty), "--baseline", str(tmp_path / "h200.json")]) == 2
    assert "no result rows" in capsys.readouterr().err


def test_machine_facts_are_row_fields_read_back_as_stored():
    import socket

    from harness.env import describe_node, node_facts, recorded_commit, recorded_gpu_name, row_gpu_name

    facts = node_facts("cpu")
    assert facts == {"node": socket.gethostname(), "node_gpu": None}
    assert describe_node(facts) == socket.gethostname()
    assert describe_node({"node": "gpu-3", "node_gpu": "NVIDIA H200"}) == "gpu-3 (NVIDIA H200)"
    assert row_gpu_name({"node": "gpu-3", "node_gpu": "NVIDIA H200"}) == "NVIDIA H200"
    assert row_gpu_name({"node": "gpu-3 (NVIDIA H200)"}) is None  # a host name is never parsed for a GPU
    run = {"environment": {"git_commit": "abc123", "device_name": "NVIDIA H200"}}
    assert recorded_gpu_name(run) == "NVIDIA H200" and recorded_commit(run) == "abc123"
    assert recorded_gpu_name({}) is None and recorded_gpu_name({"environment": None}) is None
