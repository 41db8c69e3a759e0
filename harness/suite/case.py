"""A case: one measurement of one backend at one configuration, and how to run it.

Case parameters (PARAMETERS, with their built-in defaults) are what a suite file sets per case; the
rest of a Case is derived by harness.suite.load (kind, resolved buckets, fidelity) or comes from the
suite's [suite] table (how to run). A case id is readable and stable: the same parameters give the
same id in every run, which is what --resume and comparisons across runs match on.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from ..inputs import INPUTS as INPUTS  # the attention inputs registered by name (randn, clustered, plugins')
from ..tasks.registry import attention_label as attention_label  # how a task's attention is named

WORKLOADS = ("attention", "layer", "model")
MODES = ("forward", "forward_backward", "train_step")
# A task case trains a model (mode "train") or evaluates a trained one (mode "evaluate"): set by the
# suite loader from train_n_hashes / eval_n_hashes, never in a suite file.
TASK_MODES = ("train", "evaluate")
DTYPES = ("float32", "float64", "float16", "bfloat16")

# Case parameters and their built-in defaults. "auto": n_buckets = 2 * seq_len / chunk_len, or
# chunk_len = 2 * seq_len / n_buckets (LSHConfig's rule); at most one of the two may be "auto".
PARAMETERS: dict[str, Any] = {
    "backend": None,  # None: the first LSH backend registered (impls.list_backends("lsh"))
    # attention: attend(qk, v); layer: x -> projections -> attention -> output projection;
    # model: the backend's language model (tokens -> loss), shaped by the [model] table.
    "workload": "attention",
    "mode": "forward",
    "seq_len": 1024,
    "batch": 1,
    "heads": 4,
    "d_head": 64,
    "n_buckets": "auto",
    "n_hashes": 4,
    "chunk_len": 64,
    "causal": False,
    "dedup": False,
    # LSH attention only: hash once before timing and pass the buckets to every call, so the figures
    # are of the attention alone (hashing and its sort excluded).
    "replay_buckets": False,
    # attention workload: randn (standard normal qk and v) or clustered (harness.inputs.clustered: keys
    # and queries around a few centres, so that dense attention is peaked as in trained layers).
    "inputs": "randn",
    # A task (a [task] table sizes it): the case trains a model with train_n_hashes rounds (0 = full
    # attention) and, for each eval_n_hashes, evaluates it with that many (0 = full attention).
    "task": None,
    "train_n_hashes": None,
    "eval_n_hashes": None,
    "dtype": "float32",
    "device": "cpu",
    "seed": 0,
    "repeats": 5,
    "warmup": 2,
    "timeout_s": 300.0,
    "mem_limit": "none",
}

# What a results row says about its case, in README order ("Results format").
ROW_PARAMETERS = ("case_id", "suite", "backend", "backend_kind", "workload", "mode", "seq_len", "batch", "heads",
                  "d_head", "n_buckets", "n_hashes", "chunk_len", "causal", "dedup", "replay_buckets", "inputs",
                  "dtype", "device", "seed", "model", "task", "train_n_hashes", "eval_n_hashes")


@dataclass(frozen=True)
class Case:
    case_id: str
    suite: str
    backend: str
    backend_kind: str  # "lsh" | "dense" | "peer" (impls.backend_info)
    workload: str
    mode: str
    seq_len: int
    batch: int
    heads: int
    d_head: int
    n_buckets: int | None
    n_hashes: int | None
    chunk_len: int | None
    causal: bool
    dedup: bool | None
    replay_buckets: bool | None
    inputs: str | None
    dtype: str
    device: str
    seed: int
    repeats: int
    warmup: int
    timeout_s: float
    # Memory the case may add after setup: on the CPU, address space over the worker's size
    # (RLIMIT_AS); on CUDA, allocator memory over what is allocated (per-process memory fraction).
    mem_limit_bytes: int | None
    fidelity: bool
    count_flops: bool
    # On the CPU, run a backend registered with a cpu_interpreter_env under it (the Triton interpreter).
    interpret: bool
    threads: int | None
    plugins: tuple[str, ...] = ()
    plugin_dir: str | None = None
    # workload = "model": impls.model.ModelConfig fields (+ "reversible"); LSH settings and causal
    # come from the case.
    model: dict | None = None
    task: str | None = None
    train_n_hashes: int | None = None
    eval_n_hashes: int | None = None
    task_config: dict | None = None  # the [task] table, resolved
    depends_on: str | None = None  # the case whose result this one needs (an evaluation: its training)
    # Parameters whose value the suite derived from seq_len ("auto" n_buckets / chunk_len, batch
    # under fixed_tokens): they change along a series, so series_key leaves them out. Not hashed
    # into case_id (the resolved values are).
    from_seq_len: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Case:
        data = json.loads(text)
        data["plugins"] = tuple(data.get("plugins") or ())
        data["from_seq_len"] = tuple(data.get("from_seq_len") or ())
        return cls(**data)

    def parameters(self) -> dict:
        """The case's ROW_PARAMETERS values (what its row starts with)."""
        values = asdict(self)
        return {key: values[key] for key in ROW_PARAMETERS}

    def series_key(self) -> str:
        """Identifies the case with its sequence length left out, and with it what follows from the
        length: batch, "auto" n_buckets / chunk_len (from_seq_len), fidelity (off above
        fidelity_max_seq_len) and max_seq_len of a model that follows seq_len. The cases of one
        series differ only in length; see skip_larger_after_failure."""
        left_out = {"case_id", "seq_len", "batch", "fidelity", "from_seq_len", *self.from_seq_len}
        params = {k: v for k, v in asdict(self).items() if k not in left_out}
        if params.get("model") and "model.max_seq_len" in self.from_seq_len:
            params["model"] = {k: v for k, v in params["model"].items() if k != "max_seq_len"}
        return json.dumps(params, sort_keys=True, default=list)


# Parameters added after case ids were published: hashed only when set to something else than this, so
# that the cases that existed before keep their ids (resume and cross-run comparisons match on them).
HASHED_WHEN_SET = {"inputs": "randn", "task": None, "train_n_hashes": None, "eval_n_hashes": None,
                   "task_config": None}


def case_id(params: dict) -> str:
    """A readable, stable id: the main parameters, then a hash of everything that defines the case.

    Where the suite file lies (plugin_dir) is left out so that ids do not depend on the checkout's
    path, and so is from_seq_len, which says how values were chosen, not what they are.
    """
    p = params
    hashed = {k: v for k, v in p.items() if k not in ("plugin_dir", "from_seq_len", "depends_on")
              and not (k in HASHED_WHEN_SET and v == HASHED_WHEN_SET[k])}
    lsh = "" if p["n_hashes"] is None else f"-nb{p['n_buckets']}-r{p['n_hashes']}-c{p['chunk_len']}"
    workload = "" if p["workload"] == "attention" else f"{p['workload']}-"
    if p.get("task"):
        trained = f"-train{p['train_n_hashes']}" + ("" if p["eval_n_hashes"] is None else f"-eval{p['eval_n_hashes']}")
        workload = f"{p['task']}{trained}-"
    readable = (f"{p['backend']}-{workload}{p['mode']}-n{p['seq_len']}-b{p['batch']}-h{p['heads']}-d{p['d_head']}"
                f"{lsh}{'-causal' if p['causal'] else ''}-{p['dtype']}-{p['device']}")
    digest = hashlib.sha1(json.dumps(hashed, sort_keys=True, default=list).encode()).hexdigest()[:8]
    return f"{readable}-{digest}"
