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

    from ..tasks import TASKS

    run_dir = os.environ.get(RUN_DIR_ENV)
    if not run_dir:
        row["status"] = "error"
        row["reason"] = (f"a task case needs its run directory (${RUN_DIR_ENV}, set by the runner) for the "
                         "checkpoints; on a cluster it must be a shared directory")
        return
    task = TASKS[case.task]
    table = case.task_config
    if case.threads:
        torch.set_num_threads(case.threads)
    # A model trained with full attention has no chunk length of its own (its weights do not depend
    # on one): one chunk of the whole sequence. Its LSH evaluations bring their own.
    chunk_len = case.chunk_len or case.seq_len
    if case.mode == "train":
        _train(case, row, task, table, task_dir(run_dir, case.case_id), chunk_len)
    else:
        _evaluate(case, row, task, table, task_dir(run_dir, case.depends_on), chunk_len)


def _model_config(task, table: dict, chunk_len: int, n_buckets, seed: int):
    return task.model_config(task.task_of(table), d_model=table["d_model"], heads=table["heads"], d_ff=table["d_ff"],
                             chunk_len=chunk_len, n_buckets=n_buckets, seed=seed)


def _train(case, row: dict, task, table: dict, where: Path, chunk_len: int) -> None:
    import torch

    where.mkdir(parents=True, exist_ok=True)
    config = _model_config(task, table, chunk_len, case.n_buckets, case.seed)
    torch.manual_seed(case.seed)  # the initial weights; train() seeds the rest
    model = task.build_model(config, case.train_n_hashes, case.backend if case.train_n_hashes else None)
    model.to(case.device)
    cfg = task.train_config_of(table, case.seed)
    last = [0.0]

    def on_step(step: int, loss: float, accuracy: float) -> None:
        # A line at every checkpoint, every 30 s and at the end: enough to watch a run converge without
        # flooding a CI log.
        if step == cfg.steps or step % cfg.checkpoint_every == 0 or time.perf_counter() - last[0] > 30:
            last[0] = time.perf_counter()
            progress(f"{case.task} trained with {_attention(case.train_n_hashes)}: step {step}/{cfg.steps}, "
                     f"loss {loss:.3f}, accuracy {accuracy:.1%}")

    result = task.train(model, task.task_of(table), cfg, checkpoint_path=str(where / CHECKPOINT), on_step=on_step)
    curve = [list(point) for point in result.curve]
    (where / CURVE).write_text(json.dumps({"case_id": case.case_id, "train_n_hashes": case.train_n_hashes,
                                           "curve": curve}))
    final = curve[-1] if curve else [None, None, None]
    ran = result.steps - (result.resumed_from or 0)
    row.update(train_steps=result.steps, train_loss=final[1], train_accuracy=final[2], train_curve=curve,
               train_s=result.wall_s, train_step_s=(result.wall_s / ran) if ran and result.wall_s else None,
               tokens_per_s=result.tokens_per_s, resumed_from_step=result.resumed_from)
    row["checkpoint"] = str(where / CHECKPOINT)


def _evaluate(case, row: dict, task, table: dict, where: Path, chunk_len: int) -> None:
    import torch

    checkpoint = where / CHECKPOINT
    if not checkpoint.exists():
        row["status"] = "error"
        row["reason"] = f"no checkpoint of its training case {case.depends_on} at {checkpoint}"
        return
    state = torch.load(checkpoint, map_location=case.device, weights_only=False)
    config = _model_config(task, table, chunk_len, case.n_buckets, case.seed)
    start = time.perf_counter()
    accuracy = task.evaluate(state["model"], config, task.task_of(table), case.eval_n_hashes,
                             batches=table["eval_batches"], batch=table["eval_batch"], seed=case.seed,
                             lsh_backend=case.backend if case.eval_n_hashes else None)
    row.update(task_accuracy=accuracy, eval_s=time.perf_counter() - start, train_steps=state["step"])
    progress(f"{case.task} trained with {_attention(case.train_n_hashes)}, evaluated with "
             f"{_attention(case.eval_n_hashes)}: {accuracy:.2%}")
