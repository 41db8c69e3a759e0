"""The case parameter table (harness.suite.parameters): a plugin adds a parameter as it adds a metric, and
it is checked, hashed into the case id, carried to the worker, and a key of rows, `show` and the report,
with no harness file changed; the built-in ones keep the case ids of the committed baseline."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from harness import cli
from harness.errors import UserError
from harness.suite import load_suite, parameters
from harness.suite.case import Case

REPO = Path(__file__).resolve().parents[1]

PLUGIN = '''
"""A case parameter (a score scale) and a metric that reports what the worker saw of it."""
from harness.measure.metrics import Metric, register_metric
from harness.suite.parameters import Parameter, register_parameter

register_parameter(Parameter("score_scale", 1.0, "number", "a toy scale the worker reports", role="grouping",
                             minimum=0.0, column="parameter", title="score scale"))


def scale_seen(ctx):
    return {"scale_seen": float(ctx.case.extra["score_scale"])}


register_metric(Metric("scale_seen", unit="1", how="score_scale as the worker saw it", title="scale seen",
                       terminal=True), measure=scale_seen)
'''

SUITE = '''
[suite]
plugins = ["param_plugin"]
threads = 1
count_flops = false
fidelity = false
measure_peak = false

[defaults]
backend = "dense"
heads = 1
d_head = 8
seq_len = 64
repeats = 1
warmup = 0
timeout_s = 120

[sweep]
score_scale = [1.0, 0.5]
'''


def _harness_digest() -> str:
    files = sorted((REPO / "harness").rglob("*.py"))
    return hashlib.sha1(b"".join(p.read_bytes() for p in files)).hexdigest()


@pytest.mark.slow  # runs a suite through the CLI: a worker process per case
def test_a_parameter_from_a_plugin_module(tmp_path, capsys, tables_restored):
    before = _harness_digest()
    (tmp_path / "param_plugin.py").write_text(PLUGIN)
    suite_file = tmp_path / "param.toml"
    suite_file.write_text(SUITE)

    # Checked like a built-in one: its type and range, with the file named.
    bad = tmp_path / "bad.toml"
    bad.write_text(SUITE.replace("score_scale = [1.0, 0.5]", "score_scale = [-1.0]"))
    with pytest.raises(UserError, match=r"bad.toml: score_scale must be a number >= 0.0, got score_scale=-1.0"):
        load_suite(bad)
    misspelt = tmp_path / "misspelt.toml"
    misspelt.write_text(SUITE.replace("score_scale = [1.0, 0.5]", "score_scal = [1.0]"))
    with pytest.raises(UserError, match=r"unknown key 'score_scal' in \[sweep\] \(did you mean 'score_scale'\?\)"):
        load_suite(misspelt)

    # In the case id: the default keeps the id a case without the parameter has; another value is named.
    suite = load_suite(suite_file)
    ids = [c.case_id for c in suite.cases]
    assert len(set(ids)) == 2 and "score_scale0.5" in ids[1] and "score_scale" not in ids[0]
    (tmp_path / "without").mkdir()  # the plugin loaded, its parameter not set; the suite's name the same
    (tmp_path / "without" / "param_plugin.py").write_text(PLUGIN)
    without = tmp_path / "without" / "param.toml"
    without.write_text(SUITE.replace("score_scale = [1.0, 0.5]", "seq_len = [64]"))
    assert load_suite(without).cases[0].case_id == ids[0]
    # It survives the trip to the worker (Case.to_json / from_json).
    assert Case.from_json(suite.cases[1].to_json()).extra == {"score_scale": 0.5}

    out = tmp_path / "run"
    assert cli.main(["run", str(suite_file), "--out", str(out), "--no-report"]) == 0
    capsys.readouterr()
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["score_scale"] for r in rows] == [1.0, 0.5]
    assert [r["scale_seen"] for r in rows] == [1.0, 0.5]  # what the worker saw
    assert list(rows[0]).index("score_scale") < list(rows[0]).index("status")  # a parameter, before the metrics

    assert cli.main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "score scale" in shown and "scale seen" in shown and "0.5" in shown
    assert cli.main(["report", str(out), "-o", str(out / "report.html"), "--plotly-js", "cdn"]) == 0
    capsys.readouterr()
    page = (out / "report.html").read_text()
    assert "score scale" in page  # its column in the cases table
    assert _harness_digest() == before


def test_a_plugin_cannot_replace_a_built_in_parameter():
    with pytest.raises(ValueError, match="built in"):
        parameters.register_parameter(parameters.Parameter("seq_len", 1, "int", "x", role="series"))


def test_committed_baseline_case_ids_are_what_the_gate_suite_makes():
    baseline = json.loads((REPO / "reports" / "baselines" / "cpu.json").read_text())
    ids = {c.case_id for c in load_suite(REPO / "suites" / "gate.toml").cases}
    assert set(baseline["cases"]) <= ids


def test_lists_derive_from_the_table():
    from harness.report.analysis import context_keys, grid_keys
    from harness.results.store import numeric_keys, row_keys

    table = parameters.PARAMETERS_TABLE
    assert row_keys()[:3] == ("case_id", "suite", "backend")
    assert set(numeric_keys()) >= {p.name for p in table.values() if p.numeric and p.in_row}
    assert "replay_buckets" in grid_keys() and "replay_buckets" not in context_keys()
    assert parameters.defaults()["n_buckets"] == "auto" and "case_id" not in parameters.defaults()
