"""The report's templates and its comparison's source: a task may render its section with its own
(autoescaped) template; the metrics compared between two runs, in the report and the gate, are the
metric table's, a plugin's included."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from harness import cli
from harness.measure.metrics import METRICS, Metric
from harness.report import write_report
from harness.report.analysis import compare, compared_metrics, ratio_key
from harness.report.data import load_frame
from harness.tasks import Section, Table, Task, Text, registry
from tests.test_report import row, scaling_rows, write_results_dir

HOSTILE = "<script>alert(1)</script>"


class TemplatedTask(Task):
    """A task that only reports: one section rendered by the template file it names."""

    def __init__(self, template: str | None):
        self.template = template

    def check_table(self, config):
        pass

    def shape(self, config):
        raise NotImplementedError

    def train(self, config, run, checkpoint_path, on_step=None):
        raise NotImplementedError

    def evaluate(self, config, run, checkpoint_path):
        raise NotImplementedError

    def report_sections(self, frame):
        table = pd.DataFrame({"accuracy": [0.5]}, index=[HOSTILE])
        return [Section("templated", f"Templated {HOSTILE}", [Text(f"said {HOSTILE}"), Table("The numbers", table)],
                        template=self.template)]


def task_rows() -> list[dict]:
    return [row(backend="eager", mode="evaluate", seq_len=64, case_id="t-1", task="templated_for_test")]


def test_a_task_section_renders_with_the_template_it_ships(tmp_path, monkeypatch):
    template = tmp_path / "mine.html.j2"
    template.write_text('{% import "macros.html.j2" as m %}<div class="mine">{{ data.section.title }}'
                        '{% for part in data.parts %}[{{ part.kind }}: {{ part.text if part.kind == "text" '
                        'else part.html }}]{% endfor %}</div>{{ m.empty("nothing else") }}')
    monkeypatch.setitem(registry._TASKS, "templated_for_test", TemplatedTask(str(template)))
    page = write_report([write_results_dir(tmp_path / "run", task_rows())], tmp_path / "r.html").read_text()
    section = page.split('<section id="templated">')[1].split("</section>")[0]
    assert '<div class="mine">Templated &lt;script&gt;' in section and "[text: said &lt;script&gt;" in section
    assert "[table: <div class=\"table-box\"><table" in section and "<th>&lt;script&gt;" in section
    assert '<p class="empty">nothing else</p>' in section and HOSTILE not in section


def test_a_task_section_without_a_template_gets_the_generic_one(tmp_path, monkeypatch):
    monkeypatch.setitem(registry._TASKS, "templated_for_test", TemplatedTask(None))
    page = write_report([write_results_dir(tmp_path / "run", task_rows())], tmp_path / "r.html").read_text()
    section = page.split('<section id="templated">')[1].split("</section>")[0]
    assert "<p>said &lt;script&gt;alert(1)&lt;/script&gt;</p>" in section and "<h3>The numbers</h3>" in section
    assert HOSTILE not in page.split('<section id="summary">')[1]


def test_a_missing_or_broken_task_template_is_one_line(tmp_path, monkeypatch, capsys):
    run = str(write_results_dir(tmp_path / "run", task_rows()))
    monkeypatch.setitem(registry._TASKS, "templated_for_test", TemplatedTask(str(tmp_path / "gone.html.j2")))
    assert cli.main(["report", run, "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gone.html.j2" in err and "not a file" in err
    broken = tmp_path / "broken.html.j2"
    broken.write_text("<p>fine</p>\n{% for part in data.parts %}no end")
    monkeypatch.setitem(registry._TASKS, "templated_for_test", TemplatedTask(str(broken)))
    assert cli.main(["report", run, "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "broken.html.j2:2" in err and "Traceback" not in err


def test_the_comparison_compares_the_metrics_the_table_gives_a_tolerance(tmp_path, monkeypatch):
    assert [m.name for m in compared_metrics()] == [m.name for m in METRICS.values() if m.tolerance is not None]
    monkeypatch.setitem(METRICS, "out_abs_max", Metric("out_abs_max", "1", "max |out|", tolerance=0.2,
                                                       quantity="output size"))
    baseline_rows, candidate_rows = scaling_rows(), scaling_rows()
    for number, (base, cand) in enumerate(zip(baseline_rows, candidate_rows)):
        base["out_abs_max"] = 1.0
        cand["out_abs_max"] = 1.5 if number == 0 else 1.1  # only the first beyond its 20%
    _, base = load_frame([write_results_dir(tmp_path / "b", baseline_rows)])
    _, cand = load_frame([write_results_dir(tmp_path / "c", candidate_rows)])
    compared = compare(base, cand)
    assert ratio_key(METRICS["out_abs_max"]) == "output_size_ratio"
    assert sorted(compared["output_size_ratio"].round(6).unique().tolist()) == [1.1, 1.5]
    flagged = compared[compared["verdict"].str.contains("output size x1.50")]
    assert flagged["case_id"].tolist() == [baseline_rows[0]["case_id"]]
    page = write_report([tmp_path / "c"], tmp_path / "r.html", baseline_dirs=[tmp_path / "b"]).read_text()
    comparison = page.split('<section id="comparison">')[1].split("</section>")[0]
    assert "its output size grew by more than 20%" in comparison
    assert "<th>output size base</th>" in comparison and "<th>output size ×</th>" in comparison
    assert "output size ratio" in page  # the ratio chart's legend


def test_the_gate_requires_and_compares_an_always_gated_plugin_metric(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(METRICS, "out_abs_max", Metric("out_abs_max", "1", "max |out|", gate="always",
                                                       tolerance=0.2))

    def results(name, values):
        path = tmp_path / name
        path.mkdir()
        (path / "run.json").write_text(json.dumps({"suite": "gate", "environment": {"git_commit": "abc"}}))
        rows = [{"case_id": f"case-{i}", "suite": "gate", "backend": "eager", "seq_len": 256, "device": "cpu",
                 "status": "ok", "mem_peak_bytes": 1000, "time_median_s": 0.01, "out_abs_max": value}
                for i, value in enumerate(values)]
        (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(path)

    baseline = str(tmp_path / "cpu.json")
    assert cli.main(["gate", results("unmeasured", [1.0, None]), "--baseline", baseline, "--update"]) == 2
    assert "case-1" in capsys.readouterr().err
    assert cli.main(["gate", results("trusted", [1.0, 1.0]), "--baseline", baseline, "--update"]) == 0
    written = json.loads(open(baseline).read())
    assert written["cases"]["case-0"]["out_abs_max"] == 1.0 and written["tolerance"]["out_abs_max"] == 0.2
    assert cli.main(["gate", results("same", [1.0, 1.1]), "--baseline", baseline]) == 0
    capsys.readouterr()
    assert cli.main(["gate", results("larger", [1.0, 1.3]), "--baseline", baseline]) == 1
    out = capsys.readouterr().out
    assert any(line.startswith("case-1") and "out_abs_max" in line and "REGRESSION" in line
               for line in out.splitlines())


@pytest.mark.parametrize("name", ["report.css", "report.js"])
def test_the_static_files_are_inlined_verbatim(tmp_path, name):
    from harness.report.page import TEMPLATES

    page = write_report([write_results_dir(tmp_path / "run", scaling_rows())], tmp_path / "r.html").read_text()
    assert (TEMPLATES / name).read_text().strip() in page
