"""The duplication task of the Reformer paper (Kitaev et al. 2020, section 2.1, Table 2).

A sequence is `0 w 0 w`: w is word_len symbols drawn uniformly from 1 .. vocab - 1 and 0 separates
the copies, so a sequence has seq_len = 2 * (word_len + 1) tokens. A 1-layer model is trained as a
language model with its loss and accuracy counted on the second copy only (`target_mask` says which
targets and why): the first copy is random and cannot be predicted, the second is predicted exactly
by attending word_len positions back. Trained with full attention or LSH, a model is then evaluated
with full attention and with 1, 2, 4 and 8 hash rounds on the same weights (the hash rotations are
seeded, not parameters, so only the backend and n_hashes change).

Read top to bottom:
  DuplicationTask -> make_batch -> target_mask -> loss_and_accuracy
  -> model_config / build_model (the 1-layer model) -> TrainConfig / train (seeded, checkpointed,
  resumable) -> evaluate (one trained state under one attention) -> Suite (the sizes of the table).

Depends on torch and impls only.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F

from impls.config import require_int as _require_int
from impls.model import ModelConfig, ReformerLM

# Training batches come from a generator seeded with seed, evaluation batches from seed + EVAL_STREAM,
# and both seeds are below EVAL_STREAM: the CPU generator keeps only 32 bits of a seed (2**32 seeds
# like 0), so splitting the 32-bit range in two is what keeps the streams apart.
EVAL_STREAM = 1 << 31


# --- the data ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DuplicationTask:
    """Sequences `0 w 0 w` with |w| = word_len and w's symbols uniform in 1 .. vocab - 1.

    vocab >= 3: with vocab = 2, w is all ones and the task needs no attention at all.
    """

    word_len: int = 511
    vocab: int = 128

    def __post_init__(self) -> None:
        _require_int("word_len", self.word_len, 1)
        _require_int("vocab", self.vocab, 3)

    @property
    def seq_len(self) -> int:
        return 2 * (self.word_len + 1)


def make_batch(task: DuplicationTask, batch: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, seq_len) int64 tokens `0 w 0 w`, a fresh w per row drawn from `generator` only."""
    _require_int("batch", batch, 1)
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got generator={type(generator).__name__}")
    w = torch.randint(1, task.vocab, (batch, task.word_len), generator=generator)
    zero = torch.zeros(batch, 1, dtype=torch.int64)
    return torch.cat([zero, w, zero, w], dim=1)


def scored_slice(task: DuplicationTask) -> slice:
    """The scored next-token targets as a slice of positions 0 .. seq_len - 2 (see target_mask)."""
    return slice(task.word_len + 1, 2 * task.word_len + 1)


def target_mask(task: DuplicationTask) -> torch.Tensor:
    """(seq_len - 1,) bool over next-token targets: target j is token j + 1, predicted at position j.

    With n = word_len, tokens are 0 (position 0), w_1..w_n (1..n), 0 (n + 1), w_1..w_n (n + 2 .. 2n + 1).
    Scored: j = n + 1 .. 2n, the n predictions of the second copy's symbols: target j is w_(j - n),
    which the first copy holds at position j - n, so each is exactly predictable by attending n
    positions back. Not scored: j < n, the first copy (uniformly random: no model beats chance), and
    j = n, the second 0 (the same token at the same position in every sequence: a position embedding
    predicts it without attention). This is trax's loss mask for the task (weights on the last
    word_len tokens; trax's generator draws w from 1 .. vocab - 2, one symbol fewer than here).
    """
    mask = torch.zeros(task.seq_len - 1, dtype=torch.bool)
    mask[scored_slice(task)] = True
    return mask


def loss_and_accuracy(model: torch.nn.Module, tokens: torch.Tensor,
                      task: DuplicationTask) -> tuple[torch.Tensor, float]:
    """Mean cross-entropy (nats, differentiable) and accuracy (fraction of argmax hits) on the scored
    targets only.

    model: an impls.model language model (hidden(tokens) and head). Logits are built for the scored
    positions alone (batch x word_len x vocab), half of what model.loss would build.
    """
    if tokens.dim() != 2 or tokens.shape[1] != task.seq_len:
        raise ValueError(f"tokens must be (batch, seq_len={task.seq_len}), got shape={tuple(tokens.shape)}")
    scored = scored_slice(task)
    hidden = model.hidden(tokens)[:, scored]
    targets = tokens[:, scored.start + 1:scored.stop + 1]
    logits = model.head(hidden)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    accuracy = float((logits.detach().argmax(dim=-1) == targets).float().mean())
    return loss, accuracy


# --- the model ---------------------------------------------------------------------------------------

def model_config(task: DuplicationTask, d_model: int = 256, heads: int = 4, d_ff: int = 256,
                 chunk_len: int = 64, n_hashes: int = 1, n_buckets: int | None = None,
                 seed: int = 0) -> ModelConfig:
    """The paper's 1-layer causal model for `task`: d_model = d_ff = 256, 4 heads by default.

    Position embeddings: one learned vector per position (max_seq_len = seq_len). The task is
    positional (the query at j must find the key at j - word_len, whatever the symbols), so position
    embeddings are needed, and a learned table lets each pair of positions word_len apart share a
    direction; axial embeddings would only save parameters, which do not matter at this length.
    n_buckets=None: 2 * seq_len / chunk_len buckets per round (the paper's rule). n_hashes is what a
    model trained with LSH uses; evaluation swaps it (build_model). No dropout: the data are fresh
    random sequences at every step, so there is nothing to overfit.
    """
    return ModelConfig(vocab=task.vocab, d_model=d_model, heads=heads, d_ff=d_ff, layers=1,
                       max_seq_len=task.seq_len, causal=True, n_hashes=max(1, n_hashes),
                       chunk_len=chunk_len, n_buckets=n_buckets, dropout=0.0, ff_chunks=1,
                       axial_shape=None, seed=seed)


def build_model(config: ModelConfig, n_hashes: int, lsh_backend: str | None = None) -> ReformerLM:
    """The model of `config` with full attention (n_hashes = 0: the registry's reference backend, the
    exact shared-QK attention) or LSH attention with n_hashes rounds (lsh_backend, by default the
    first LSH backend registered).

    Not reversible: with one layer the reversible stack saves one layer's activations (small here)
    and costs a recomputation of the layer in every backward; both wirings compute the same function
    with the same parameters, so a state dict moves between them.
    """
    import impls

    _require_int("n_hashes", n_hashes, 0)
    if n_hashes == 0:
        return ReformerLM(config, backend=impls.reference_backend(), reversible=False)
    lsh_backend = lsh_backend or impls.list_backends("lsh")[0]
    return ReformerLM(replace(config, n_hashes=n_hashes), backend=lsh_backend, reversible=False)


# --- training ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained on the task.

    steps: optimizer steps, one fresh batch of `batch` sequences each (the data never repeat).
    lr: Adam's learning rate after a linear warmup over warmup_steps; constant afterwards, so a run
        can be extended by raising `steps` and resuming. Adam without weight decay: decay would pull
        the query norms down, and the query norm is the attention's temperature (keys are unit
        vectors), which this task needs to be free to grow.
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
            _require_int(name, getattr(self, name), minimum)
        _require_int("seed", self.seed, 0, below=EVAL_STREAM)
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
    (None when it ran none). resumed_from: the checkpoint's step, or None for a fresh run."""

    curve: list[tuple[int, float, float]] = field(default_factory=list)
    steps: int = 0
    tokens_per_s: float | None = None
    wall_s: float | None = None
    resumed_from: int | None = None


def _fingerprint(model: torch.nn.Module, task: DuplicationTask, cfg: TrainConfig) -> dict:
    train = {k: v for k, v in asdict(cfg).items() if k not in _RESUMABLE_CHANGES}
    backend = getattr(getattr(model, "backend", None), "name", None)
    return {"task": asdict(task), "train": train, "model": repr(getattr(model, "cfg", None)), "backend": backend}


def _save_atomic(state: dict, path: str) -> None:
    # Written beside the target and renamed over it: a run killed mid-write leaves the previous
    # checkpoint intact, never a truncated one.
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def train(model: torch.nn.Module, task: DuplicationTask, cfg: TrainConfig, checkpoint_path: str | None = None,
          on_step: Callable[[int, float, float], None] | None = None) -> TrainResult:
    """Train `model` in place on fresh batches of `task`; see TrainConfig.

    Deterministic on the CPU for a given thread count (kernels may sum in a thread-dependent order).
    With checkpoint_path, writes {model, optimizer, generator and torch RNG states, step, curve}
    atomically every checkpoint_every steps and at the end; if the file exists the run resumes from
    it, and then reaches the same weights and curve as a run that was never interrupted. A checkpoint
    of another task, configuration or model is refused. on_step(step, loss, accuracy) after every step.
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
    fingerprint = _fingerprint(model, task, cfg)
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
    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        tokens = make_batch(task, cfg.batch, generator).to(device)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr_at(step)
        loss, accuracy = loss_and_accuracy(model, tokens, task)
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
    ran = cfg.steps - start
    result.steps = cfg.steps
    if ran:
        result.wall_s = time.perf_counter() - t0
        result.tokens_per_s = ran * cfg.batch * task.seq_len / result.wall_s
    return result


# --- evaluation --------------------------------------------------------------------------------------

def eval_batches(task: DuplicationTask, batches: int, batch: int, seed: int) -> list[torch.Tensor]:
    """The held-out batches of evaluate: the same for every call with the same arguments."""
    _require_int("batches", batches, 1)
    _require_int("seed", seed, 0, below=EVAL_STREAM)
    generator = torch.Generator().manual_seed(seed + EVAL_STREAM)
    return [make_batch(task, batch, generator) for _ in range(batches)]


@torch.no_grad()
def evaluate(model_state: dict, model_config: ModelConfig, task: DuplicationTask, n_hashes: int,
             batches: int = 8, batch: int = 16, seed: int = 0, lsh_backend: str | None = None) -> float:
    """Accuracy (fraction) of the weights `model_state` on held-out batches, with full attention
    (n_hashes = 0) or LSH with n_hashes rounds (build_model), on the device the state's tensors are on.

    Every evaluation with the same task, batches, batch and seed sees the same sequences, so the
    columns of a table differ only by the attention. The global RNG is left as it was (building the
    model draws initial weights, which the state then replaces).
    """
    with torch.random.fork_rng(devices=[]):
        model = build_model(model_config, n_hashes, lsh_backend)
    device = next(iter(model_state.values())).device  # evaluated where the state lies
    model.load_state_dict(model_state)
    model.to(device).eval()
    hits = 0.0
    count = 0
    for tokens in eval_batches(task, batches, batch, seed):
        _, accuracy = loss_and_accuracy(model, tokens.to(device), task)
        hits += accuracy * tokens.shape[0]
        count += tokens.shape[0]
    return hits / count


# --- a suite's [task] table ----------------------------------------------------------------------------

# The keys of a suite's [task] table and their defaults: the task, the model (d_model, heads, d_ff;
# 1 layer, see model_config), training (TrainConfig) and evaluation (eval_batches x eval_batch held-out
# sequences). The defaults are the CPU-sized table of suites/duplication.toml, which says why.
TABLE_DEFAULTS = {"word_len": 255, "vocab": 128, "d_model": 256, "heads": 4, "d_ff": 256, "steps": 500, "batch": 16,
                  "lr": 1e-3, "warmup_steps": 20, "grad_clip": 1.0, "log_every": 10, "checkpoint_every": 50,
                  "eval_batches": 8, "eval_batch": 16}


def resolve_table(table: dict) -> dict:
    """The [task] table with its defaults, checked (a ValueError names the key and the value)."""
    unknown = [key for key in table if key not in TABLE_DEFAULTS]
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} in [task] (keys: {', '.join(TABLE_DEFAULTS)})")
    resolved = {**TABLE_DEFAULTS, **table}
    for key in ("d_model", "heads", "d_ff", "eval_batches", "eval_batch"):
        _require_int(key, resolved[key], 1)
    if resolved["d_model"] % resolved["heads"]:
        raise ValueError(f"d_model must be a multiple of heads, got d_model={resolved['d_model']}, "
                         f"heads={resolved['heads']}")
    task_of(resolved)
    train_config_of(resolved, seed=0)
    return resolved


def task_of(table: dict) -> DuplicationTask:
    return DuplicationTask(word_len=table["word_len"], vocab=table["vocab"])


def train_config_of(table: dict, seed: int) -> TrainConfig:
    return TrainConfig(steps=table["steps"], batch=table["batch"], lr=table["lr"], warmup_steps=table["warmup_steps"],
                       grad_clip=table["grad_clip"], seed=seed, log_every=table["log_every"],
                       checkpoint_every=table["checkpoint_every"])
