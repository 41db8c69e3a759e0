"""Language modelling on a real corpus (issue 21): the paper's Figure 4 and Figure 3 on this machine.

A corpus registered in harness.corpora (a book, images as pixel sequences, music) gives uint8 tokens
(bytes or grey levels, vocab 256) and a fixed split. A causal model is trained on windows of seq_len
tokens drawn from the training runs and scored on the fixed held-out windows in bits per token
(`bits_per_dim`). Trained with full attention (the exact shared-QK `dense`, the paper's convention) or
LSH-n on the same initial weights and the same batches (both come from the case's seed only), then
evaluated with full attention and LSH-1/2/4/8 on the same weights, as the duplication task is.

Figure 3's ablations are [task] keys: share_qk = false (full attention with separate query and key
projections), residual = "plain" (a one-stream Transformer instead of the two-stream RevNet wiring)
and reversible = true (the two-stream model with the memory-saving reversible backward: the same
function, so the same bits up to rounding, at its own cost in time).

Read top to bottom: TABLE_DEFAULTS -> corpus data (available / load) -> the model (build_model) ->
the loss -> training with a held-out curve (train) -> evaluation -> LanguageModelling (the protocol).
The report section is harness.tasks.lm_report.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from impls.config import require_int

from .lm_metrics import NAMES as METRIC_NAMES
from .registry import Evaluation, Section, Task, TaskRun, TaskShape
from .training import TrainConfig, TrainResult, load_checkpoint
from .training import train as _train

VOCAB = 256  # a token is one uint8: a byte of text or a grey level

# The keys of a suite's [task] table and their defaults (the CPU-sized text suite, suites/lm_text.toml,
# says why these sizes). curve_every: a held-out point (curve_windows windows, under the training
# attention) every this many steps and at the end. eval_windows x seq_len: the held-out windows an
# evaluation case scores (spread evenly over the held-out blocks), eval_batch at a time.
TABLE_DEFAULTS = {"corpus": "kjv", "seq_len": 1024, "d_model": 128, "layers": 2, "heads": 4, "d_ff": 512,
                  "share_qk": True, "residual": "two_stream", "reversible": False,
                  "steps": 300, "batch": 8, "lr": 3e-3, "warmup_steps": 20, "grad_clip": 1.0, "log_every": 10,
                  "checkpoint_every": 50, "curve_every": 50, "curve_windows": 8, "eval_windows": 32,
                  "eval_batch": 8}
RESIDUALS = ("two_stream", "plain")


# --- the corpus --------------------------------------------------------------------------------------

def corpus_of(config: dict):
    from harness import corpora

    return corpora.get(config["corpus"])


def load_data(config: dict):
    """(CorpusData, Split) of the table's corpus; CorpusUnavailable when it is not installed."""
    from harness.corpora import load
    from harness.corpora.split import corpus_split

    data = load(config["corpus"])
    return data, corpus_split(data)


def align_of(corpus) -> int:
    """Training windows of an image corpus start at an image's first pixel; text windows anywhere."""
    return corpus.block_len if corpus.token == "pixel" else 1


def setting_label(config: dict) -> str:
    """The training setting, as a row's lm_setting says it."""
    parts = ["shared QK" if config["share_qk"] else "separate Q and K"]
    parts.append("plain residuals" if config["residual"] == "plain" else "two streams")
    if config["reversible"]:
        parts.append("reversible backward")
    return ", ".join(parts)


# --- the model ---------------------------------------------------------------------------------------

def build_model(config: dict, run: TaskRun, n_hashes: int) -> torch.nn.Module:
    """The table's causal model with full attention (n_hashes = 0: the registry's reference backend,
    exact shared-QK attention unless share_qk is false) or LSH with n_hashes rounds (run.lsh_backend).

    One learned vector per position (max_seq_len = seq_len), no dropout (every batch is a fresh
    window of a corpus far larger than the steps x batch x seq_len a suite trains on). The LSH rotations
    are seeded by run.seed, not parameters: a state dict moves between the attentions unchanged.
    """
    import impls
    from impls.model import ModelConfig, ReformerLM, TransformerLM

    require_int("n_hashes", n_hashes, 0)
    if n_hashes and not config["share_qk"]:
        raise ValueError("share_qk=false is full attention only (LSH hashes shared query-keys): "
                         "set train_n_hashes / eval_n_hashes to 0")
    if n_hashes and config["residual"] == "plain":
        raise ValueError("residual='plain' (a one-stream Transformer) is full attention only: "
                         "set train_n_hashes / eval_n_hashes to 0")
    cfg = ModelConfig(vocab=VOCAB, d_model=config["d_model"], heads=config["heads"], d_ff=config["d_ff"],
                      layers=config["layers"], max_seq_len=config["seq_len"], causal=True,
                      n_hashes=max(1, n_hashes), chunk_len=run.chunk_len, n_buckets=run.n_buckets, dropout=0.0,
                      ff_chunks=1, axial_shape=None, seed=run.seed, share_qk=config["share_qk"])
    if config["residual"] == "plain":
        return TransformerLM(cfg, backend=impls.reference_backend())
    backend = (run.lsh_backend or impls.list_backends("lsh")[0]) if n_hashes else impls.reference_backend()
    return ReformerLM(cfg, backend=backend, reversible=config["reversible"])


def loss_and_accuracy(model: torch.nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Mean next-token cross-entropy (nats) over every position of the windows, and the argmax accuracy."""
    logits = model.head(model.hidden(tokens)[:, :-1])
    targets = tokens[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return loss, float((logits.detach().argmax(dim=-1) == targets).float().mean())


# --- training, with a held-out curve ------------------------------------------------------------------

def train_config_of(config: dict, seed: int) -> TrainConfig:
    return TrainConfig(steps=config["steps"], batch=config["batch"], lr=config["lr"],
                       warmup_steps=config["warmup_steps"], grad_clip=config["grad_clip"], seed=seed,
                       log_every=config["log_every"], checkpoint_every=config["checkpoint_every"])


def curve_path(checkpoint_path: str) -> str:
    """Where a training keeps its held-out curve, beside its checkpoint."""
    return f"{checkpoint_path}.heldout.json"


def _checkpoint_step(checkpoint_path: str) -> int:
    if not os.path.exists(checkpoint_path):
        return 0
    return int(torch.load(checkpoint_path, map_location="cpu", weights_only=False)["step"])


def _read_curve(path: str, up_to: int) -> dict[int, list]:
    """The held-out points a killed run wrote, up to its checkpoint's step (later ones are redone)."""
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        points = json.load(f)
    return {int(p[0]): list(p) for p in points if int(p[0]) <= up_to}


def _write_curve(path: str, curve: dict[int, list]) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump([curve[step] for step in sorted(curve)], f)
    os.replace(tmp, path)  # renamed over: a killed run leaves the previous curve whole


def train(config: dict, run: TaskRun, checkpoint_path: str,
          on_step: Callable[[int, float, float], None] | None = None) -> TrainResult:
    """Train the table's model from seed run.seed with run's attention (harness.tasks.training: resumes
    from checkpoint_path when it exists). Before every curve_every-th step (the weights as the step
    finds them) and at the end, the held-out bits per token under the training attention join the
    curve (TrainResult.metrics["heldout_curve"], [step, bits, training seconds so far]); the time
    spent on them is taken out of the training seconds and tokens/s."""
    from harness.corpora.lm import held_out_bits, held_out_windows, sample_windows

    data, split = load_data(config)
    corpus = data.corpus
    torch.manual_seed(run.seed)  # the initial weights: the same for every attention of one seed
    model = build_model(config, run, run.n_hashes).to(run.device)
    cfg = train_config_of(config, run.seed)
    windows = held_out_windows(split.held_out, config["seq_len"], config["curve_windows"])
    align = align_of(corpus)
    start = _checkpoint_step(checkpoint_path)
    path = curve_path(checkpoint_path)
    curve = _read_curve(path, start)
    state = {"step": start, "curve_s": 0.0, "t0": time.perf_counter(),
             "offset_s": curve[start][2] if start in curve else None}

    def point(step: int) -> None:
        began = time.perf_counter()
        train_s = began - state["t0"] - state["curve_s"]
        seconds = None if state["offset_s"] is None and start else (state["offset_s"] or 0.0) + train_s
        with torch.random.fork_rng(devices=[]):  # the training's random stream is left as it was
            bits = held_out_bits(model, windows, config["eval_batch"])
        curve[step] = [step, bits, seconds]
        _write_curve(path, curve)
        state["curve_s"] += time.perf_counter() - began

    def batches(generator: torch.Generator) -> torch.Tensor:
        if state["step"] % config["curve_every"] == 0:
            point(state["step"])
        state["step"] += 1
        return sample_windows(split.train, config["seq_len"], cfg.batch, generator, align)

    fingerprint = {"task": "lm", "corpus": corpus.name, "corpus_sha256": data.sha256,
                   "seq_len": config["seq_len"], "residual": config["residual"], "reversible": config["reversible"]}
    result = _train(model, cfg, batches, loss_and_accuracy, fingerprint, checkpoint_path=checkpoint_path,
                    on_step=on_step)
    in_loop_s = state["curve_s"]
    if result.steps not in curve:
        point(result.steps)
    if result.wall_s:
        train_s = max(result.wall_s - in_loop_s, 1e-9)
        result.tokens_per_s = result.tokens_per_s * result.wall_s / train_s
        result.wall_s = train_s
    result.metrics = {"heldout_curve": [curve[step] for step in sorted(curve)], "lm_setting": setting_label(config),
                      **_provenance(data), **held_out_references(data, split)}
    return result


def held_out_references(data, split) -> dict:
    """The held-out split's unigram entropy and bz2 / xz bits per byte (harness.corpora.reference),
    computed once per corpus checksum and kept beside the corpus's cached extraction."""
    from dataclasses import asdict

    from harness.corpora.reference import references

    cached = data.cache_path.with_name(f"{data.corpus.name}-{data.sha256[:16]}.references.json")
    if cached.exists():
        figures = json.loads(cached.read_text(encoding="utf-8"))
    else:
        figures = asdict(references(split.held_out, split.train))
        tmp = cached.with_name(f"{cached.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(figures), encoding="utf-8")
        os.replace(tmp, cached)
    return {"heldout_unigram_bits": figures["unigram_bits"],
            "heldout_unigram_train_bits": figures["unigram_train_bits"], "heldout_bz2_bits": figures["bz2_bits"],
            "heldout_xz_bits": figures["xz_bits"]}


def _provenance(data) -> dict:
    from harness.corpora import provenance

    return provenance(data)


# --- evaluation --------------------------------------------------------------------------------------

def evaluate(config: dict, run: TaskRun, checkpoint_path: str) -> Evaluation:
    """bits_per_dim of the checkpoint's weights under run's attention on the fixed held-out windows (the
    same windows for every attention, so a row differs from its neighbours only by the attention)."""
    from harness.corpora.lm import held_out_bits, held_out_windows

    data, split = load_data(config)
    state, steps = load_checkpoint(checkpoint_path, run.device)
    with torch.random.fork_rng(devices=[]):  # building draws initial weights, which the state replaces
        model = build_model(config, run, run.n_hashes)
    model.load_state_dict(state)
    model.to(run.device)
    windows = held_out_windows(split.held_out, config["seq_len"], config["eval_windows"])
    bits = held_out_bits(model, windows, config["eval_batch"])
    metrics = {"bits_per_dim": bits, "eval_tokens": int(windows[:, 1:].numel()), "lm_setting": setting_label(config),
               **_provenance(data)}
    return Evaluation(metrics, train_steps=steps)


# --- the task, as the harness sees it ------------------------------------------------------------------

class LanguageModelling(Task):
    """The lm task through the task protocol (see the module docstring)."""

    table_defaults = TABLE_DEFAULTS
    metrics = METRIC_NAMES

    def check_table(self, config: dict) -> None:
        corpus = corpus_of(config)
        for key in ("seq_len", "d_model", "layers", "heads", "d_ff", "curve_every", "curve_windows",
                    "eval_windows", "eval_batch"):
            require_int(key, config[key], 1)
        if config["d_model"] % config["heads"]:
            raise ValueError(f"d_model must be a multiple of heads, got d_model={config['d_model']}, "
                             f"heads={config['heads']}")
        for key in ("share_qk", "reversible"):
            if not isinstance(config[key], bool):
                raise ValueError(f"{key} must be true or false, got {key}={config[key]!r}")
        if config["residual"] not in RESIDUALS:
            raise ValueError(f"residual must be one of {', '.join(RESIDUALS)}, got residual={config['residual']!r}")
        if config["residual"] == "plain" and config["reversible"]:
            raise ValueError("reversible=true needs residual='two_stream' (a plain residual stream has no "
                             "reversible form)")
        seq_len, block = config["seq_len"], corpus.block_len
        if seq_len > block and seq_len % block:
            raise ValueError(f"seq_len={seq_len} is longer than a held-out block of corpus {corpus.name!r} "
                             f"({block} tokens) and not a whole number of blocks")
        train_config_of(config, seed=0)

    def shape(self, config: dict) -> TaskShape:
        return TaskShape(seq_len=config["seq_len"], batch=config["batch"], heads=config["heads"],
                         d_head=config["d_model"] // config["heads"])

    def available(self, config: dict) -> tuple[bool, str]:
        from harness.corpora import available

        return available(corpus_of(config))

    def train(self, config: dict, run: TaskRun, checkpoint_path: str,
              on_step: Callable[[int, float, float], None] | None = None) -> TrainResult:
        return train(config, run, checkpoint_path, on_step=on_step)

    def evaluate(self, config: dict, run: TaskRun, checkpoint_path: str) -> Evaluation:
        return evaluate(config, run, checkpoint_path)

    def report_sections(self, frame) -> list[Section]:
        from .lm_report import report_sections

        return report_sections(frame)


TASK = LanguageModelling()
