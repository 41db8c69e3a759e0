"""The duplication task of the Reformer paper (Kitaev et al. 2020, section 2.1, Table 2).

A sequence is `0 w 0 w`: w is word_len symbols drawn uniformly from 1 .. max_symbol (vocab - 1, or
vocab - 2 as the authors' trax code draws them: `symbols`) and 0 separates the copies, so a sequence
has seq_len = 2 * (word_len + 1) tokens. A 1-layer model is trained as a
language model with its loss and accuracy counted on the second copy only (`target_mask` says which
targets and why): the first copy is random and cannot be predicted, the second is predicted exactly
by attending word_len positions back. Trained with full attention or LSH, a model is then evaluated
with full attention and with 1, 2, 4 and 8 hash rounds on the same weights (the hash rotations are
seeded, not parameters, so only the backend and n_hashes change). Full attention is a dense backend
chosen by name (TaskRun.full_backend): `dense` is the paper's text (unit keys, self masked), `sdpa` the
authors' copy-task config (q.q / sqrt(d), raw keys, self visible); the report says where each comes from.

Read top to bottom:
  DuplicationTask -> make_batch -> target_mask -> loss_and_accuracy
  -> model_config / build_model (the 1-layer model) -> train (harness.tasks.training: seeded,
  checkpointed, resumable) -> evaluate (one trained state under one attention) -> TABLE_DEFAULTS (a
  suite's [task] table) -> Duplication (the task protocol; registered in harness.tasks).
The paper's Table 2 (PAPER_TABLE2) is here; the report's section, Table 2 measured beside it, is in
harness.tasks.duplication_report.

Depends on torch, impls and harness.tasks' registry and trainer only.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

from impls.config import require_int as _require_int
from impls.model import ModelConfig, ReformerLM

from .registry import Evaluation, Section, Task, TaskRun, TaskShape
from .training import EVAL_STREAM, TrainConfig, TrainResult, load_checkpoint
from .training import train as _train

__all__ = ["EVAL_STREAM", "FASTAI_TABLE2", "PAPER_TABLE2", "SYMBOLS", "TASK", "DuplicationTask", "TrainConfig",
           "TrainResult", "build_model",
           "eval_batches", "evaluate", "loss_and_accuracy", "make_batch", "model_config", "target_mask", "train"]

# Kitaev et al. (2020), Table 2: accuracy (%) on the duplication task of a 1-layer model, by the
# attention it was trained with (rows) and evaluated with (columns). 0 = full attention. Read from the
# crop of the paper's Table 2 in arampacha/reformer_fastai, docs/images/paper_table2.png at commit 72ee639
# (the LSH-2 / LSH-2 cell is 98.1).
PAPER_TABLE2 = {
    0: {0: 100.0, 8: 94.8, 4: 92.5, 2: 76.9, 1: 52.5},
    4: {0: 0.8, 8: 100.0, 4: 99.9, 2: 99.4, 1: 91.9},
    2: {0: 0.8, 8: 100.0, 4: 99.9, 2: 98.1, 1: 86.8},
    1: {0: 0.8, 8: 99.9, 4: 99.6, 2: 94.8, 1: 77.9},
}

# The fast.ai community reproduction (arampacha/reformer_fastai, nbs/10c_experiment.synthetic-task-analysis
# .ipynb), laid out as PAPER_TABLE2: it followed the paper's text (shared-QK full attention with unit keys
# and the self mask, reformer_fastai/attention.py).
FASTAI_TABLE2 = {
    0: {0: 100.0, 8: 1.37, 4: 1.85, 2: 3.0, 1: 4.56},
    4: {0: 46.5, 8: 99.71, 4: 99.77, 2: 93.05, 1: 77.62},
    2: {0: 75.9, 8: 96.6, 4: 97.45, 2: 97.08, 1: 86.06},
    1: {0: 70.7, 8: 76.61, 4: 79.68, 2: 79.34, 1: 56.09},
}

# Which symbols w draws from, by name: the highest symbol as a function of vocab. "all": 1 .. vocab - 1,
# every non-separator symbol. "trax": 1 .. vocab - 2, as the authors' data did (trax/inputs.py draws
# w with numpy's randint(1, vocab - 1), whose high end is exclusive): chance is then 1 / (vocab - 2).
SYMBOLS = {"all": lambda vocab: vocab - 1, "trax": lambda vocab: vocab - 2}


# --- the data ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DuplicationTask:
    """Sequences `0 w 0 w` with |w| = word_len and w's symbols uniform in 1 .. max_symbol (SYMBOLS).

    At least two symbols: with one, w is all ones and the task needs no attention at all.
    """

    word_len: int = 511
    vocab: int = 128
    symbols: str = "all"

    def __post_init__(self) -> None:
        _require_int("word_len", self.word_len, 1)
        _require_int("vocab", self.vocab, 3)
        if self.symbols not in SYMBOLS:
            raise ValueError(f"symbols must be {' | '.join(repr(k) for k in SYMBOLS)}, got symbols={self.symbols!r}")
        if self.max_symbol < 2:
            raise ValueError(f"symbols={self.symbols!r} leaves fewer than 2 symbols with vocab={self.vocab}")

    @property
    def max_symbol(self) -> int:
        return SYMBOLS[self.symbols](self.vocab)

    @property
    def chance(self) -> float:
        """The accuracy of a uniform guess among the symbols a scored target may be."""
        return 1.0 / self.max_symbol

    def fingerprint(self) -> dict:
        """What a checkpoint records of the task; symbols only away from "all", so that checkpoints
        written before it existed still resume."""
        fields = asdict(self)
        if fields["symbols"] == "all":
            del fields["symbols"]
        return fields

    @property
    def seq_len(self) -> int:
        return 2 * (self.word_len + 1)


def make_batch(task: DuplicationTask, batch: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, seq_len) int64 tokens `0 w 0 w`, a fresh w per row drawn from `generator` only."""
    _require_int("batch", batch, 1)
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got generator={type(generator).__name__}")
    w = torch.randint(1, task.max_symbol + 1, (batch, task.word_len), generator=generator)
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
    word_len tokens; trax's generator draws w from 1 .. vocab - 2: symbols = "trax").
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


def build_model(config: ModelConfig, n_hashes: int, lsh_backend: str | None = None,
                full_backend: str | None = None) -> ReformerLM:
    """The model of `config` with full attention (n_hashes = 0: through full_backend, a dense backend, by
    default the registry's reference backend, the exact shared-QK attention) or LSH attention with
    n_hashes rounds (lsh_backend, by default the first LSH backend registered).

    Not reversible: with one layer the reversible stack saves one layer's activations (small here)
    and costs a recomputation of the layer in every backward; both wirings compute the same function
    with the same parameters, so a state dict moves between them.
    """
    import impls

    _require_int("n_hashes", n_hashes, 0)
    if n_hashes == 0:
        full_backend = full_backend or impls.reference_backend()
        if impls.backend_info(full_backend).kind != "dense":
            raise ValueError(f"full_backend must be a dense backend ({', '.join(impls.list_backends('dense'))}), "
                             f"got full_backend={full_backend!r}")
        return ReformerLM(config, backend=full_backend, reversible=False)
    lsh_backend = lsh_backend or impls.list_backends("lsh")[0]
    return ReformerLM(replace(config, n_hashes=n_hashes), backend=lsh_backend, reversible=False)


# --- training (harness.tasks.training: seeded, checkpointed, resumable) -------------------------------

def train(model: torch.nn.Module, task: DuplicationTask, cfg: TrainConfig, checkpoint_path: str | None = None,
          on_step: Callable[[int, float, float], None] | None = None) -> TrainResult:
    """Train `model` in place on fresh batches of `task` (harness.tasks.training.train, which says how
    it checkpoints and resumes); a checkpoint of another task is refused."""
    return _train(model, cfg, lambda generator: make_batch(task, cfg.batch, generator),
                  lambda m, tokens: loss_and_accuracy(m, tokens, task), task.fingerprint(),
                  checkpoint_path=checkpoint_path, on_step=on_step)


# --- evaluation --------------------------------------------------------------------------------------

def eval_batches(task: DuplicationTask, batches: int, batch: int, seed: int) -> list[torch.Tensor]:
    """The held-out batches of evaluate: the same for every call with the same arguments."""
    _require_int("batches", batches, 1)
    _require_int("seed", seed, 0, below=EVAL_STREAM)
    generator = torch.Generator().manual_seed(seed + EVAL_STREAM)
    return [make_batch(task, batch, generator) for _ in range(batches)]


@torch.no_grad()
def evaluate(model_state: dict, model_config: ModelConfig, task: DuplicationTask, n_hashes: int,
             batches: int = 8, batch: int = 16, seed: int = 0, lsh_backend: str | None = None,
             full_backend: str | None = None) -> float:
    """Accuracy (fraction) of the weights `model_state` on held-out batches, with full attention
    (n_hashes = 0, through full_backend) or LSH with n_hashes rounds (build_model), on the device the
    state's tensors are on.

    Every evaluation with the same task, batches, batch and seed sees the same sequences, so the
    columns of a table differ only by the attention. The global RNG is left as it was (building the
    model draws initial weights, which the state then replaces).
    """
    with torch.random.fork_rng(devices=[]):
        model = build_model(model_config, n_hashes, lsh_backend, full_backend)
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
# sequences). The defaults are the CPU-sized table of suites/duplication.toml, which says why; symbols
# (SYMBOLS) defaults to every non-separator symbol, as before the key existed.
TABLE_DEFAULTS = {"word_len": 255, "vocab": 128, "symbols": "all", "d_model": 256, "heads": 4, "d_ff": 256,
                  "steps": 500, "batch": 16,
                  "lr": 1e-3, "warmup_steps": 20, "grad_clip": 1.0, "log_every": 10, "checkpoint_every": 50,
                  "eval_batches": 8, "eval_batch": 16}


def task_of(table: dict) -> DuplicationTask:
    return DuplicationTask(word_len=table["word_len"], vocab=table["vocab"],
                           symbols=table.get("symbols", TABLE_DEFAULTS["symbols"]))


def train_config_of(table: dict, seed: int) -> TrainConfig:
    return TrainConfig(steps=table["steps"], batch=table["batch"], lr=table["lr"], warmup_steps=table["warmup_steps"],
                       grad_clip=table["grad_clip"], seed=seed, log_every=table["log_every"],
                       checkpoint_every=table["checkpoint_every"])


def model_config_of(table: dict, run: TaskRun) -> ModelConfig:
    return model_config(task_of(table), d_model=table["d_model"], heads=table["heads"], d_ff=table["d_ff"],
                        chunk_len=run.chunk_len, n_buckets=run.n_buckets, seed=run.seed)


# --- the task, as the harness sees it (harness.tasks.registry) -----------------------------------------

class Duplication(Task):
    """The duplication task through the task protocol: a [task] table sizes it, a training case trains
    the 1-layer model with the case's attention, an evaluation case scores the trained weights under its
    own (row metric task_accuracy), and the report shows Table 2 beside the paper's."""

    table_defaults = TABLE_DEFAULTS
    metrics = ("task_accuracy", "chance_accuracy")
    # Kitaev et al. 2020, Table 2, and the fast.ai reproduction of it
    references = {"paper": PAPER_TABLE2, "fastai": FASTAI_TABLE2}

    def resolve_table(self, table) -> dict:
        """As Task.resolve_table, with symbols left out at its default: the resolved table is hashed into
        case ids, and the cases from before the key existed keep theirs."""
        resolved = super().resolve_table(table)
        if resolved["symbols"] == TABLE_DEFAULTS["symbols"]:
            del resolved["symbols"]
        return resolved

    def check_table(self, config: dict) -> None:
        for key in ("d_model", "heads", "d_ff", "eval_batches", "eval_batch"):
            _require_int(key, config[key], 1)
        if config["d_model"] % config["heads"]:
            raise ValueError(f"d_model must be a multiple of heads, got d_model={config['d_model']}, "
                             f"heads={config['heads']}")
        task_of(config)
        train_config_of(config, seed=0)

    def shape(self, config: dict) -> TaskShape:
        return TaskShape(seq_len=task_of(config).seq_len, batch=config["batch"], heads=config["heads"],
                         d_head=config["d_model"] // config["heads"])

    def train(self, config: dict, run: TaskRun, checkpoint_path: str,
              on_step: Callable[[int, float, float], None] | None = None) -> TrainResult:
        torch.manual_seed(run.seed)  # the initial weights; train() seeds the rest
        model = build_model(model_config_of(config, run), run.n_hashes, run.lsh_backend, run.full_backend)
        model.to(run.device)
        return train(model, task_of(config), train_config_of(config, run.seed), checkpoint_path=checkpoint_path,
                     on_step=on_step)

    def evaluate(self, config: dict, run: TaskRun, checkpoint_path: str) -> Evaluation:
        state, steps = load_checkpoint(checkpoint_path, run.device)
        accuracy = evaluate(state, model_config_of(config, run), task_of(config), run.n_hashes,
                            batches=config["eval_batches"], batch=config["eval_batch"], seed=run.seed,
                            lsh_backend=run.lsh_backend, full_backend=run.full_backend)
        return Evaluation({"task_accuracy": accuracy, "chance_accuracy": task_of(config).chance}, train_steps=steps)

    def report_sections(self, frame) -> list[Section]:
        from .duplication_report import report_sections

        return report_sections(frame, self.references["paper"], self.references["fastai"])


TASK = Duplication()
