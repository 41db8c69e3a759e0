"""Task cases through the runner: a training case per trained model (checkpointed into the run
directory, resumable), an evaluation case per attention it is evaluated with, rows as each ends."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.results.store import read_rows
from harness.run.runner import run_suite
from harness.suite import load_suite

REPO = Path(__file__).resolve().parents[1]

TINY = """
[suite]
name = "tiny_task"
threads = 1
measure_peak = false

[defaults]
task = "duplication"
backend = "eager"
chunk_len = 8
timeout_s = 300
{defaults}

[sweep]
train_n_hashes = {train}
eval_n_hashes = [0, 2]

[task]
word_len = 15
vocab = 8
d_model = 32
heads = 2
d_ff = 32
steps = {steps}
batch = 8
lr = 3e-3
warmup_steps = 5
log_every = 5
checkpoint_every = 20
eval_batches = 2
eval_batch = 8
"""


def _suite(tmp_path: Path, train="[0, 1]", steps=80, defaults="") -> Path:
    path = tmp_path / "tiny_task.toml"
    path.write_text(TINY.format(train=train, steps=steps, defaults=defaults))
    return path


@pytest.mark.slow
def test_a_task_suite_trains_then_evaluates_with_each_attention(tmp_path):
    suite = load_suite(_suite(tmp_path))
    modes = [(c.mode, c.train_n_hashes, c.eval_n_hashes) for c in suite.cases]
    assert modes == [("train", 0, None), ("evaluate", 0, 0), ("evaluate", 0, 2),
                     ("train", 1, None), ("evaluate", 1, 0), ("evaluate", 1, 2)]
    assert all(c.depends_on == suite.cases[0].case_id for c in suite.cases[1:3])
    result = run_suite(suite, tmp_path / "run")
    rows = {(r["train_n_hashes"], r["eval_n_hashes"]): r for r in result.rows}
    assert all(r["status"] == "ok" for r in rows.values()), [r["reason"] for r in rows.values()]
    trained = rows[0, None]
    assert trained["train_steps"] == 80 and trained["tokens_per_s"] > 0 and trained["train_s"] > 0
    curve = json.loads((tmp_path / "run" / "tasks" / trained["case_id"] / "curve.json").read_text())["curve"]
    assert [point[0] for point in curve] == list(range(5, 81, 5)) and curve == trained["train_curve"]
    assert rows[0, 0]["task_accuracy"] > 0.9  # full attention learns the copy in 80 steps at this size
    assert 0 <= rows[1, 2]["task_accuracy"] <= 1 and rows[1, 2]["backend"] == "eager"
    assert rows[0, 0]["backend"] == "dense" and rows[0, 0]["n_hashes"] is None


@pytest.mark.slow
def test_a_killed_training_resumes_from_its_checkpoint_to_the_same_result(tmp_path):
    straight = tmp_path / "straight"
    run_suite(load_suite(_suite(_mk(tmp_path / "a"), train="[1]", steps=120)), straight)
    suite_file = _suite(_mk(tmp_path / "b"), train="[1]", steps=120)
    run_dir = tmp_path / "killed"
    driver = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(suite_file), "--out", str(run_dir),
                               "--no-report"], cwd=REPO, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint_dir = run_dir / "tasks"
    deadline = time.monotonic() + 240
    while not list(checkpoint_dir.glob("*/checkpoint.pt")) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)  # the runner and its worker, mid-training
    driver.wait()
    assert list(checkpoint_dir.glob("*/checkpoint.pt")), "no checkpoint was written before the kill"
    assert not (run_dir / "results.jsonl").exists() or not read_rows(run_dir)
    resumed = run_suite(load_suite(suite_file), run_dir, resume=True)
    rows = {r["mode"]: r for r in resumed.rows}
    assert rows["train"]["resumed_from_step"] >= 20 and rows["train"]["train_steps"] == 120
    want = {r["eval_n_hashes"]: r["task_accuracy"] for r in read_rows(straight) if r["mode"] == "evaluate"}
    got = {r["eval_n_hashes"]: r["task_accuracy"] for r in resumed.rows if r["mode"] == "evaluate"}
    assert got == want  # deterministic on the CPU: the resumed run ends where the straight one does


def _mk(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.slow
def test_a_failed_training_leaves_its_evaluations_not_run(tmp_path):
    suite = load_suite(_suite(tmp_path, train="[1]", defaults='mem_limit = "1 MiB"'))
    rows = run_suite(suite, tmp_path / "run").rows
    assert rows[0]["mode"] == "train" and rows[0]["status"] in ("oom", "error")
    for row in rows[1:]:
        assert row["status"] == "error" and f"needs {rows[0]['case_id']}" in row["reason"]


@pytest.mark.parametrize("change, message", [
    (("word_len = 15", "word_len = 0"), "word_len must be >= 1"),
    (("vocab = 8", "vocabulary = 8"), "unknown key 'vocabulary' in [task]"),
    (('backend = "eager"', 'backend = "dense"'), "backend must be an LSH backend"),
    (("chunk_len = 8", "chunk_len = 7"), "does not tile"),
    (("eval_n_hashes = [0, 2]", "eval_n_hashes = [-1]"), "eval_n_hashes must be an integer >= 0"),
    (("timeout_s = 300", "timeout_s = \"x\""), "timeout_s must be a positive number"),
    (("timeout_s = 300", 'timeout_s = 300\ndtype = "bfloat16"'), "dtype must be \"float32\" for a task"),
])
def test_bad_task_parameters_are_one_line(tmp_path, change, message):
    path = _suite(tmp_path)
    path.write_text(path.read_text().replace(*change))
    with pytest.raises(UserError) as info:
        load_suite(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_shipped_task_suites_keep_sixteen_chunks_per_round():
    # One round then shows a query 2 of 16 chunks (1/8 of the keys), as the paper's 1,024 / 64.
    for name in ("duplication", "duplication_paper"):
        cases = load_suite(REPO / "suites" / f"{name}.toml").cases
        # Under two full attentions: one table's 4 trainings and 20 evaluations, and the other's own full
        # training, its 5 evaluations and the LSH models under its full attention (3): LSH-only cells are shared.
        assert len([c for c in cases if c.mode == "train"]) == 5 and len(cases) == 24 + 1 + 5 + 3
        for case in cases:
            assert case.causal and (case.chunk_len is None or case.seq_len // case.chunk_len >= 16)
    paper = load_suite(REPO / "suites" / "duplication_paper.toml").cases[0]
    assert (paper.task_config["word_len"], paper.task_config["vocab"], paper.seq_len) == (511, 128, 1024)


# --- full_attention: which dense backend a task's full attention is -----------------------------------

# The ids of TINY's cases before full_attention and symbols existed: the cases that leave both at their
# defaults keep them (resume and comparisons across runs match on ids).
TINY_IDS = ["dense-duplication-train0-train-n32-b8-h2-d16-causal-float32-cpu-61e3e7a6",
            "dense-duplication-train0-eval0-evaluate-n32-b8-h2-d16-causal-float32-cpu-c1da0c08",
            "eager-duplication-train0-eval2-evaluate-n32-b8-h2-d16-nb8-r2-c8-causal-float32-cpu-12229565",
            "eager-duplication-train1-train-n32-b8-h2-d16-nb8-r1-c8-causal-float32-cpu-12c15e78",
            "dense-duplication-train1-eval0-evaluate-n32-b8-h2-d16-causal-float32-cpu-b8b2dd74",
            "eager-duplication-train1-eval2-evaluate-n32-b8-h2-d16-nb8-r2-c8-causal-float32-cpu-2056675b"]


@pytest.mark.parametrize("defaults", ["", 'full_attention = "dense"'])
def test_case_ids_are_unchanged_at_the_default_full_attention_and_symbols(tmp_path, defaults):
    cases = load_suite(_suite(tmp_path, defaults=defaults)).cases
    assert [c.case_id for c in cases] == TINY_IDS
    assert [c.full_attention for c in cases] == ["dense", "dense", "dense", None, "dense", None]


def test_an_lsh_training_is_one_case_whatever_the_full_attention(tmp_path):
    path = _suite(tmp_path)
    path.write_text(path.read_text().replace("eval_n_hashes = [0, 2]",
                                             'eval_n_hashes = [0, 2]\nfull_attention = ["dense", "sdpa"]'))
    cases = load_suite(path).cases
    by_setting = {}
    for case in cases:
        by_setting.setdefault((case.mode, case.train_n_hashes, case.eval_n_hashes), []).append(case)
    # LSH-1 is trained once and evaluated with LSH-2 once, for both tables; full attention twice.
    assert len(by_setting["train", 1, None]) == 1 and by_setting["train", 1, None][0].full_attention is None
    assert len(by_setting["evaluate", 1, 2]) == 1
    assert sorted(c.backend for c in by_setting["evaluate", 1, 0]) == ["dense", "sdpa"]
    assert all(c.depends_on == by_setting["train", 1, None][0].case_id for c in by_setting["evaluate", 1, 0])
    trained_full = {c.full_attention: c for c in by_setting["train", 0, None]}
    assert sorted(trained_full) == ["dense", "sdpa"] and trained_full["sdpa"].backend == "sdpa"
    # A full-trained model evaluated with LSH is two cases: one per trained model.
    lsh_of_full = {c.full_attention: c for c in by_setting["evaluate", 0, 2]}
    assert {full: c.depends_on for full, c in lsh_of_full.items()} == {
        full: c.case_id for full, c in trained_full.items()}
    assert len(cases) == 3 + 4 + 3 and len({c.case_id for c in cases}) == len(cases)


@pytest.mark.parametrize("value, message", [
    ('"sdpx"', "full_attention must be a dense backend, got full_attention='sdpx' (did you mean 'sdpa'?); "
               "dense backends: dense, sdpa"),
    ('"eager"', "full_attention must be a dense backend, got full_attention='eager'"),
    ("3", "full_attention must be a dense backend, got full_attention=3"),
])
def test_full_attention_names_a_dense_backend(tmp_path, value, message):
    with pytest.raises(UserError) as info:
        load_suite(_suite(tmp_path, defaults=f"full_attention = {value}"))
    assert message in str(info.value) and "\n" not in str(info.value) and "tiny_task.toml" in str(info.value)


def test_full_attention_needs_a_task_case(tmp_path):
    path = tmp_path / "plain.toml"
    path.write_text('[defaults]\nbackend = "eager"\nseq_len = 64\nfull_attention = "sdpa"\n')
    with pytest.raises(UserError, match="full_attention = \"sdpa\" needs a task case"):
        load_suite(path)


def test_symbols_is_a_task_key_checked_in_one_line(tmp_path):
    path = _suite(tmp_path)
    path.write_text(path.read_text().replace("vocab = 8", 'vocab = 8\nsymbols = "trax"'))
    case = load_suite(path).cases[0]
    assert case.task_config["symbols"] == "trax" and case.case_id not in TINY_IDS
    path.write_text(path.read_text().replace('symbols = "trax"', 'symbols = "numpy"'))
    with pytest.raises(UserError) as info:
        load_suite(path)
    assert "[task]: symbols must be 'all' | 'trax', got symbols='numpy'" in str(info.value)
