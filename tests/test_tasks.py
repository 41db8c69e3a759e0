"""The task registry: a task declared only by a suite plugin (tests/suites/toy_task.py) is validated,
trained and evaluated through the runner, and its rows and report section reach the written report;
the registry's own checks."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import UserError
from harness.report.page import write_report
from harness.results.store import read_rows
from harness.run.runner import run_suite
from harness.suite import load_suite
from harness.tasks import Task, get_task, list_tasks, register_task

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "tests" / "suites" / "toy_task.toml"


@pytest.mark.slow  # runs a suite: a training and its evaluations, each in a worker process
def test_a_plugin_task_trains_evaluates_and_gets_its_report_section(tmp_path, tables_restored):
    suite = load_suite(TOY)
    assert [(c.mode, c.train_n_hashes, c.eval_n_hashes) for c in suite.cases] == [
        ("train", 2, None), ("evaluate", 2, 0), ("evaluate", 2, 2)]
    assert all(c.seq_len == 32 and c.task_config["vocab"] == 16 for c in suite.cases)
    run_suite(suite, tmp_path / "run")
    rows = {(r["mode"], r["eval_n_hashes"]): r for r in read_rows(tmp_path / "run")}
    assert all(r["status"] == "ok" for r in rows.values()), [r["reason"] for r in rows.values()]
    assert rows["train", None]["train_steps"] == 60 and len(rows["train", None]["train_curve"]) == 6
    assert rows["evaluate", 2]["copy_accuracy"] > 0.9 and rows["evaluate", 2]["backend"] == "eager"
    assert rows["evaluate", 0]["backend"] == "dense" and 0 <= rows["evaluate", 0]["copy_accuracy"] <= 1
    assert (tmp_path / "run" / "tasks" / rows["train", None]["case_id"] / "checkpoint.pt").exists()

    page = write_report([tmp_path / "run"], tmp_path / "r.html").read_text()
    section = page.split('<section id="toy-copy">')[1].split("</section>")[0]
    assert "The toy copy task" in section and "Toy copy accuracy" in section and "Copy with offset 8" in section
    assert f"{rows['evaluate', 2]['copy_accuracy'] * 100:.1f}" in section
    assert 'id="fig-toy-curves"' in section and '"id":"fig-toy-curves"' in page
    assert page.index('<section id="toy-copy">') < page.index('<section id="scaling">')  # first after the summary
    assert '<section id="paper">' not in page  # the duplication task has no rows here

    # Nothing in the harness names the toy task: it came in through the plugin alone.
    for path in (REPO / "harness").rglob("*.py"):
        text = path.read_text().lower()
        assert "copy_with_offset" not in text and "toy_task" not in text, path


def test_bad_task_names_and_tables_are_one_line(tmp_path):
    text = TOY.read_text()
    for change, message in ((('task = "copy_with_offset"', 'task = "copy_with_ofset"'),
                             "unknown task 'copy_with_ofset' (did you mean 'copy_with_offset'?)"),
                            (("steps = 60", "stepz = 60"), "unknown key 'stepz' in [task] (did you mean 'steps'?)"),
                            (("steps = 60", "seq_len = 30"), "[task]: seq_len must be a multiple of 8")):
        path = tmp_path / "toy_task.toml"
        path.write_text(text.replace(*change))
        (tmp_path / "toy_task.py").write_text((REPO / "tests" / "suites" / "toy_task.py").read_text())
        with pytest.raises(UserError) as info:
            load_suite(path)
        assert message in str(info.value) and "\n" not in str(info.value)


def test_the_registry_builds_a_task_once_and_refuses_what_is_not_one():
    assert list_tasks()[0] == "duplication" and isinstance(get_task("duplication"), Task)
    assert get_task("duplication") is get_task("duplication")
    built = []

    class Nothing(Task):
        def check_table(self, config): ...
        def shape(self, config): ...
        def train(self, config, run, checkpoint_path, on_step=None): ...
        def evaluate(self, config, run, checkpoint_path): ...

    register_task("lazy_for_test", lambda: built.append(1) or Nothing())
    register_task("broken_for_test", lambda: "not a task")
    try:
        assert built == [] and get_task("lazy_for_test") is get_task("lazy_for_test") and built == [1]
        assert get_task("lazy_for_test").report_sections(None) == []
        with pytest.raises(ValueError, match="not a Task"):
            get_task("broken_for_test")
    finally:
        from harness.tasks import registry

        registry._TASKS.pop("lazy_for_test")
        registry._TASKS.pop("broken_for_test")
    with pytest.raises(ValueError, match="identifier"):
        register_task("no name", Nothing())
    with pytest.raises(ValueError, match="a Task or a function"):
        register_task("fine", 3)
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        get_task("nope")
