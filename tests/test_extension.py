"""The extension points: a backend is one plugin module next to a suite, a metric is one declaration
plus its measuring function, and no harness file changes for either."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from harness import cli
from harness.measure import metrics

REPO = Path(__file__).resolve().parents[1]

PLUGIN = '''
"""A dense backend (softmax(q k^T / sqrt(d)) v in two matmuls) and a metric (max |out|), as a user adds them."""
import torch

from harness.measure.metrics import Metric, register_metric
from impls import register_backend


class TwoMatmuls:
    def available(self):
        return True, ""

    def attend(self, qk, v, cfg):
        scores = qk @ qk.transpose(-1, -2) / qk.shape[-1] ** 0.5
        if cfg.causal:
            future = torch.ones(scores.shape[-2:], dtype=torch.bool, device=qk.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        return torch.softmax(scores, dim=-1) @ v


register_backend("two_matmuls", TwoMatmuls, kind="dense", description="a plugin's dense attention")


def out_abs_max(ctx):
    return {"out_abs_max": float(ctx.output.abs().max())}


register_metric(Metric("out_abs_max", unit="1", how="max |out| of the untimed call", title="max abs out",
                       terminal=True), measure=out_abs_max)
'''

SUITE = '''
[suite]
plugins = ["ext_plugin"]
threads = 1
count_flops = false
fidelity = false

[defaults]
heads = 1
d_head = 16
chunk_len = 32
n_hashes = 1
repeats = 2
warmup = 0
timeout_s = 120

[sweep]
backend = ["eager", "dense", "two_matmuls"]
seq_len = [64, 128]
'''


def _harness_digest() -> str:
    files = sorted((REPO / "harness").rglob("*.py"))
    return hashlib.sha1(b"".join(p.read_bytes() for p in files)).hexdigest()


def _figure_traces(report: Path) -> list[dict]:
    payload = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', report.read_text(),
                        re.S).group(1)
    figures = json.loads(payload)["figures"]
    return [trace for figure in figures if figure["id"].startswith("fig-scaling-time") for trace in figure["data"]]


@pytest.fixture
def table_restored():
    """The plugin's metric joins this process's metric table: take it out again for the other tests."""
    saved_metrics, saved_measurements = dict(metrics.METRICS), list(metrics.MEASUREMENTS)
    yield
    metrics.METRICS.clear()
    metrics.METRICS.update(saved_metrics)
    metrics.MEASUREMENTS[:] = saved_measurements


@pytest.mark.slow
def test_a_backend_and_a_metric_from_one_plugin_module(tmp_path, capsys, table_restored):
    before = _harness_digest()
    (tmp_path / "ext_plugin.py").write_text(PLUGIN)
    suite = tmp_path / "ext.toml"
    suite.write_text(SUITE)

    assert cli.main(["list", str(suite)]) == 0
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "two_matmuls" in listed and "dense" in listed["two_matmuls"] and "available" in listed["two_matmuls"]

    out = tmp_path / "run"
    assert cli.main(["run", str(suite), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    plugin_rows = [r for r in rows if r["backend"] == "two_matmuls"]
    assert len(plugin_rows) == 2 and all(r["status"] == "ok" and r["backend_kind"] == "dense" for r in plugin_rows)
    # The metric: in every row, measured, in the end-of-run table and in `show`.
    assert all(r["out_abs_max"] is not None and r["out_abs_max"] > 0 for r in rows)
    assert "max abs out" in printed
    assert cli.main(["show", str(out)]) == 0
    assert "max abs out" in capsys.readouterr().out

    # The report: the metric's column in the cases table, and the backend's series in a colour of its own.
    report = out / "report.html"
    assert "max abs out" in report.read_text()
    traces = [t for t in _figure_traces(report) if t.get("mode") == "lines+markers"]
    colours = {t["name"].split()[0]: t["line"]["color"] for t in traces}
    assert {"eager", "dense", "two_matmuls"} <= set(colours)
    assert colours["two_matmuls"] not in {c for name, c in colours.items() if name != "two_matmuls"}
    assert _harness_digest() == before
