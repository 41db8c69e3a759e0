"""A task case in the worker: train a model (checkpointed, resumable) or evaluate a trained one.

The training case of a model writes, under RUN_DIR/tasks/<its case id>/, checkpoint.pt (written
every checkpoint_every steps and at the end: a worker killed mid-training resumes from it when the
sweep is resumed) and curve.json ([step, loss, accuracy] of the logged steps). An evaluation case
loads that checkpoint's weights and evaluates them with its own attention. Progress goes to the
launcher as `progress: ...` lines on stderr (the runner shows them).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from ..suite.case import attention_label as _attention

RUN_DIR_ENV = "REFORMER_BENCH_RUN_DIR"
CHECKPOINT, CURVE = "checkpoint.pt", "curve.json"


def task_dir(run_dir: str | os.PathLike, training_case_id: str) -> Path:
    return Path(run_dir) / "tasks" / training_case_id


def progress(text: str) -> None:
    print(f"progress: {text}", file=sys.stderr, flush=True)


def measure(case, row: dict) -> None:
    """Fill the row of a task case (its metrics, or its status and reason)."""
    import torch

    from ..tasks import TaskRun, get_task

    run_dir = os.environ.get(RUN_DIR_ENV)
    if not run_dir:
        row["status"] = "error"
        row["reason"] = (f"a task case needs its run directory (${RUN_DIR_ENV}, set by the runner) for the "
                         "checkpoints; on a cluster it must be a shared directory")
        return
    task = get_task(case.task)
    ok, reason = task.available(case.task_config)
    if not ok:
        row["status"], row["reason"] = "unavailable", reason
        return
    if case.threads:
        torch.set_num_threads(case.threads)
    n_hashes = case.train_n_hashes if case.mode == "train" else case.eval_n_hashes
    # A model trained with full attention has no chunk length of its own (its weights do not depend
    # on one): one chunk of the whole sequence. Its LSH evaluations bring their own.
    run = TaskRun(n_hashes=n_hashes, lsh_backend=case.backend if n_hashes else None,
                  chunk_len=case.chunk_len or case.seq_len, n_buckets=case.n_buckets, seed=case.seed,
                  device=case.device, full_backend=case.full_attention)
    if case.mode == "train":
        _train(case, row, task, run, task_dir(run_dir, case.case_id))
    else:
        _evaluate(case, row, task, run, task_dir(run_dir, case.depends_on))


def _train(case, row: dict, task, run, where: Path) -> None:
    where.mkdir(parents=True, exist_ok=True)
    last = [0.0]

    def line(step: int, loss: float, accuracy: float | None) -> str:
        return (f"{case.task} trained with {_attention(case.train_n_hashes)}: step {step}, loss {loss:.3f}"
                + ("" if accuracy is None else f", accuracy {accuracy:.1%}"))

    def on_step(step: int, loss: float, accuracy: float | None) -> None:
        # A line every 30 s and at the end: enough to watch a run converge without flooding a CI log.
        if time.perf_counter() - last[0] > 30:
            last[0] = time.perf_counter()
            progress(line(step, loss, accuracy))

    result = task.train(case.task_config, run, str(where / CHECKPOINT), on_step=on_step)
    if result.curve:
        progress(line(*result.curve[-1]) + " (done)")
    curve = [list(point) for point in result.curve]
    (where / CURVE).write_text(json.dumps({"case_id": case.case_id, "train_n_hashes": case.train_n_hashes,
                                           "curve": curve}))
    final = curve[-1] if curve else [None, None, None]
    ran = result.steps - (result.resumed_from or 0)
    row.update(train_steps=result.steps, train_loss=final[1], train_accuracy=final[2], train_curve=curve,
               train_s=result.wall_s, train_step_s=(result.wall_s / ran) if ran and result.wall_s else None,
               tokens_per_s=result.tokens_per_s, resumed_from_step=result.resumed_from)
    row["checkpoint"] = str(where / CHECKPOINT)
    if _undeclared(case, row, task, result.metrics):
        return
    row.update(result.metrics)


def _evaluate(case, row: dict, task, run, where: Path) -> None:
    from ..measure.metrics import METRICS

    checkpoint = where / CHECKPOINT
    if not checkpoint.exists():
        row["status"] = "error"
        row["reason"] = f"no checkpoint of its training case {case.depends_on} at {checkpoint}"
        return
    start = time.perf_counter()
    evaluation = task.evaluate(case.task_config, run, str(checkpoint))
    eval_s = time.perf_counter() - start
    if _undeclared(case, row, task, evaluation.metrics):
        return
    row.update(evaluation.metrics, eval_s=eval_s, train_steps=evaluation.train_steps)
    shown = ", ".join(f"{METRICS[name].title or name} {_shown(METRICS[name], value)}"
                      for name, value in evaluation.metrics.items())
    progress(f"{case.task} trained with {_attention(case.train_n_hashes)}, evaluated with "
             f"{_attention(case.eval_n_hashes)}: {shown}")


def _undeclared(case, row: dict, task, metrics: dict) -> bool:
    """Whether `metrics` names a metric the task did not declare (then the row says so, status error)."""
    from ..measure.metrics import METRICS

    undeclared = [name for name in metrics if name not in task.metrics or name not in METRICS]
    if undeclared:
        row["status"] = "error"
        row["reason"] = (f"task {case.task!r} returned metric {undeclared[0]!r}, which is not among its metrics "
                         f"{task.metrics} or not in the metric table (register_metric)")
    return bool(undeclared)


def _shown(metric, value) -> str:
    text = metric.format(value)
    unit = metric.shown_unit if metric.shown_unit is not None else metric.unit
    return f"{text}{unit if unit == '%' else ''}" if text is not None else "—"
