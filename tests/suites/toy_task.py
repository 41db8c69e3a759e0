"""A task registered from a suite plugin (`plugins = ["toy_task"]`): copy with an offset.

A sequence is OFFSET random symbols from 1 .. vocab - 1, repeated to seq_len tokens, so token i equals
token i - OFFSET from position OFFSET on: a model predicts those by attending OFFSET positions back.
Accuracy is counted on those targets only. The task declares its own row metric (copy_accuracy) and
its own report section; no harness file names it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.measure.metrics import Metric, register_metric
from harness.tasks import Evaluation, Section, Table, Task, TaskShape, Text, register_task
from harness.tasks.charts import training_curve_chart
from harness.tasks.training import EVAL_STREAM, TrainConfig, load_checkpoint, train

OFFSET = 8


def _batch(config: dict, batch: int, generator: torch.Generator) -> torch.Tensor:
    word = torch.randint(1, config["vocab"], (batch, OFFSET), generator=generator)
    return word.repeat(1, config["seq_len"] // OFFSET)


def _loss_and_accuracy(model, tokens: torch.Tensor) -> tuple[torch.Tensor, float]:
    logits = model.head(model.hidden(tokens)[:, OFFSET - 1:-1])  # predictions of tokens OFFSET ..
    targets = tokens[:, OFFSET:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return loss, float((logits.detach().argmax(-1) == targets).float().mean())


def _model(config: dict, run):
    import impls
    from impls.model import ModelConfig, ReformerLM

    cfg = ModelConfig(vocab=config["vocab"], d_model=config["d_model"], heads=2, d_ff=config["d_model"], layers=1,
                      max_seq_len=config["seq_len"], causal=True, n_hashes=max(1, run.n_hashes),
                      chunk_len=run.chunk_len, n_buckets=run.n_buckets, dropout=0.0, seed=run.seed)
    backend = run.lsh_backend if run.n_hashes else impls.reference_backend()
    return ReformerLM(cfg, backend=backend, reversible=False)


class CopyWithOffset(Task):
    table_defaults = {"seq_len": 32, "vocab": 16, "d_model": 32, "steps": 60, "batch": 16, "lr": 3e-3}
    metrics = ("copy_accuracy",)

    def check_table(self, config: dict) -> None:
        if config["seq_len"] % OFFSET:
            raise ValueError(f"seq_len must be a multiple of {OFFSET}, got seq_len={config['seq_len']}")

    def shape(self, config: dict) -> TaskShape:
        return TaskShape(seq_len=config["seq_len"], batch=config["batch"], heads=2, d_head=config["d_model"] // 2)

    def train(self, config, run, checkpoint_path, on_step=None):
        torch.manual_seed(run.seed)
        model = _model(config, run)
        cfg = TrainConfig(steps=config["steps"], batch=config["batch"], lr=config["lr"], warmup_steps=5,
                          seed=run.seed, log_every=10, checkpoint_every=20)
        return train(model, cfg, lambda g: _batch(config, cfg.batch, g), _loss_and_accuracy,
                     {"task": "copy_with_offset", **config}, checkpoint_path=checkpoint_path, on_step=on_step)

    @torch.no_grad()
    def evaluate(self, config, run, checkpoint_path):
        state, steps = load_checkpoint(checkpoint_path, run.device)
        with torch.random.fork_rng(devices=[]):
            model = _model(config, run)
        model.load_state_dict(state)
        model.eval()
        tokens = _batch(config, 64, torch.Generator().manual_seed(run.seed + EVAL_STREAM))
        return Evaluation({"copy_accuracy": _loss_and_accuracy(model, tokens)[1]}, train_steps=steps)

    def report_sections(self, frame):
        rows = frame[frame["copy_accuracy"].notna()]
        if rows.empty:
            return []
        table = rows.pivot_table(index="train_n_hashes", columns="eval_n_hashes", values="copy_accuracy") * 100
        parts = [Text(f"Copy with offset {OFFSET}: accuracy (%) by the attention trained with (rows) and "
                      "evaluated with (columns), 0 = full attention."), Table("Toy copy accuracy", table.round(1))]
        chart = training_curve_chart(frame, key="toy-curves")
        return [Section("toy-copy", "The toy copy task", parts + ([chart] if chart else []))]


register_metric(Metric("copy_accuracy", "1", "toy task: accuracy on the copied targets, held-out batch",
                       title="copy accuracy", shown_unit="%", fmt=".1f"))
register_task("copy_with_offset", CopyWithOffset())
