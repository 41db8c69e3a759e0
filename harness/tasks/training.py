"""Training a language model on a task's batches: seeded, checkpointed, resumable. Shared by every task.

A task hands train() its model, its batches (a function of a torch.Generator) and its loss (a function
of the model and a batch, returning the loss and an accuracy), and what identifies its data
(task_fingerprint); train() does the rest: Adam with a linear warmup, gradient clipping, the logged
curve, atomic checkpoints and resuming from them. load_checkpoint gives an evaluation the trained
weights.

Depends on torch only.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from impls.config import require_int

# Training batches come from a generator seeded with seed, evaluation batches from seed + EVAL_STREAM,
# and both seeds are below EVAL_STREAM: the CPU generator keeps only 32 bits of a seed (2**32 seeds
# like 0), so splitting the 32-bit range in two is what keeps the streams apart.
EVAL_STREAM = 1 << 31


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained on a task.

    steps: optimizer steps, one fresh batch of `batch` sequences each (the data never repeat).
    lr: Adam's learning rate after a linear warmup over warmup_steps; constant afterwards, so a run
        can be extended by raising `steps` and resuming. Adam without weight decay: decay would pull
        the query norms down, and the query norm is the attention's temperature (keys are unit
        vectors), which a task needs to be free to grow.
    grad_clip: clip the global gradient norm to this (None: no clipping).
    seed: seeds the data generator and the global torch RNG (nothing else draws from it here).
    log_every: record (step, loss, accuracy) of the training batch every this many steps (and at the
        last step); each batch is new data, so these are held-out figures for the weights before the step.
    checkpoint_every: write the checkpoint every this many steps (and at the last step).
    """

    steps: int = 400
    batch: int = 16
    lr: float = 1e-3
    warmup_steps: int = 20
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float | None = 1.0
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        for name, minimum in (("steps", 1), ("batch", 1), ("warmup_steps", 0), ("log_every", 1),
                              ("checkpoint_every", 1)):
            require_int(name, getattr(self, name), minimum)
        require_int("seed", self.seed, 0, below=EVAL_STREAM)
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ValueError(f"lr must be a positive number, got lr={self.lr!r}")
        if self.grad_clip is not None and not (isinstance(self.grad_clip, (int, float)) and self.grad_clip > 0):
            raise ValueError(f"grad_clip must be a positive number or None, got grad_clip={self.grad_clip!r}")
        object.__setattr__(self, "betas", tuple(self.betas))

    def lr_at(self, step: int) -> float:
        """Learning rate of step `step` (0-based)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        return self.lr


# What must match for a checkpoint to continue this run: everything but how long and how often to save.
_RESUMABLE_CHANGES = ("steps", "checkpoint_every")


@dataclass
class TrainResult:
    """curve: (step, loss, accuracy) of the logged steps, from step 1 (a resumed run includes the
    checkpoint's). steps: the last step done. tokens_per_s, wall_s: of the steps this call ran
    (None when it ran none). resumed_from: the checkpoint's step, or None for a fresh run. metrics: row
    metrics of the training case a task adds (names among its `metrics`, e.g. a held-out curve)."""

    curve: list[tuple[int, float, float]] = field(default_factory=list)
    steps: int = 0
    tokens_per_s: float | None = None
    wall_s: float | None = None
    resumed_from: int | None = None
    metrics: dict = field(default_factory=dict)


def _fingerprint(model: torch.nn.Module, task_fingerprint: dict, cfg: TrainConfig) -> dict:
    train = {k: v for k, v in asdict(cfg).items() if k not in _RESUMABLE_CHANGES}
    backend = getattr(getattr(model, "backend", None), "name", None)
    return {"task": task_fingerprint, "train": train, "model": repr(getattr(model, "cfg", None)), "backend": backend}


def _save_atomic(state: dict, path: str) -> None:
    # Written beside the target and renamed over it: a run killed mid-write leaves the previous
    # checkpoint intact, never a truncated one.
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def train(model: torch.nn.Module, cfg: TrainConfig, make_batch: Callable[[torch.Generator], torch.Tensor],
          loss_and_accuracy: Callable[[torch.nn.Module, torch.Tensor], tuple[torch.Tensor, float]],
          task_fingerprint: dict, checkpoint_path: str | None = None,
          on_step: Callable[[int, float, float], None] | None = None) -> TrainResult:
    """Train `model` in place on fresh batches make_batch(generator) (drawn on the CPU); see TrainConfig.

    Deterministic on the CPU for a given thread count (kernels may sum in a thread-dependent order).
    With checkpoint_path, writes {model, optimizer, generator and torch RNG states, step, curve}
    atomically every checkpoint_every steps and at the end; if the file exists the run resumes from
    it, and then reaches the same weights and curve as a run that was never interrupted. A checkpoint
    of another task (task_fingerprint), configuration or model is refused. on_step(step, loss,
    accuracy) after every step.
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
    fingerprint = _fingerprint(model, task_fingerprint, cfg)
    result = TrainResult()
    start = 0
    if checkpoint_path is not None and os.path.exists(checkpoint_path):
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        if state["fingerprint"] != fingerprint:
            raise ValueError(f"checkpoint_path={checkpoint_path!r} holds another run: "
                             f"{state['fingerprint']} != {fingerprint}")
        if state["step"] > cfg.steps:
            raise ValueError(f"checkpoint_path={checkpoint_path!r} is at step {state['step']}, "
                             f"past steps={cfg.steps}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start = result.resumed_from = state["step"]
        result.curve = [tuple(point) for point in state["curve"]]
    else:
        torch.manual_seed(cfg.seed)

    def checkpoint(step: int) -> None:
        _save_atomic({"fingerprint": fingerprint, "step": step, "curve": list(result.curve),
                      "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "generator": generator.get_state(), "torch_rng": torch.get_rng_state()}, checkpoint_path)

    model.train()
    device = next(model.parameters()).device  # batches are drawn on the CPU: the same data on any device
    tokens_seen = 0
    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        tokens = make_batch(generator).to(device)
        tokens_seen += tokens.numel()
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr_at(step)
        loss, accuracy = loss_and_accuracy(model, tokens)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is {loss.item()} at step {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            result.curve.append((done, loss.item(), accuracy))
        if checkpoint_path is not None and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            checkpoint(done)
        if on_step is not None:
            on_step(done, loss.item(), accuracy)
    result.steps = cfg.steps
    if cfg.steps > start:
        result.wall_s = time.perf_counter() - t0
        result.tokens_per_s = tokens_seen / result.wall_s
    return result


def load_checkpoint(path: str, device: str) -> tuple[dict, int]:
    """(model state dict on `device`, the step it was saved at) of a checkpoint train() wrote."""
    state = torch.load(path, map_location=device, weights_only=False)
    return state["model"], state["step"]
