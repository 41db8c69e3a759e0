"""A case: one measurement of one backend at one configuration, and how to run it.

Case parameters (harness.suite.parameters, the table) are what a suite file sets per case; the rest
of a Case is derived by harness.suite.build (kind, resolved buckets, fidelity) or comes from the
suite's [suite] table (how to run). A plugin's parameters travel in Case.extra. A case id is readable
and stable: the same parameters give the same id in every run, which is what --resume and comparisons
across runs match on.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, Field, asdict, field, make_dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..tasks.registry import attention_label as attention_label  # how a task's attention is named
from .parameters import BUILT_IN, parameters, plugin_parameters, row_parameters

# What a Case holds besides its parameters: how to run it and where it came from. A parameter's field
# comes from the parameter table (harness.suite.parameters), so a parameter is declared once; a size
# parameter is held resolved, in bytes, as <name>_bytes (mem_limit_bytes: memory the case may add after
# setup: on the CPU, address space over the worker's size (RLIMIT_AS); on CUDA, allocator memory over
# what is allocated (per-process memory fraction)).
_RUN_FIELDS: tuple[tuple[str, Any, Any], ...] = (
    # (name, type, default; dataclasses.MISSING: required)
    ("fidelity", bool, MISSING),
    ("count_flops", bool, MISSING),
    # On the CPU, run a backend registered with a cpu_interpreter_env under it (the Triton interpreter).
    ("interpret", bool, MISSING),
    ("threads", int | None, MISSING),
    ("plugins", tuple, ()),
    ("plugin_dir", str | None, None),
    ("task_config", dict | None, None),  # the [task] table, resolved
    ("depends_on", str | None, None),  # the case whose result this one needs (an evaluation: its training)
    # Parameters whose value the suite derived from seq_len ("auto" n_buckets / chunk_len, batch
    # under fixed_tokens): they change along a series, so series_key leaves them out. Not hashed
    # into case_id (the resolved values are).
    ("from_seq_len", tuple, ()),
    # Parameters that plugins declared (harness.suite.parameters.register_parameter): name -> value.
    ("extra", dict, field(default_factory=dict)),
    # Profiles the suite asks for ([suite] phases / peak_live / profile, or run's flags): untimed passes
    # that say where the time and the memory go; they change no figure, so no case id.
    ("phases", bool, False),
    ("peak_live", bool, False),
    ("profile", bool, False),
)


class _CaseRecord:
    """The methods of a Case; its fields are made from the parameter table below."""

    if TYPE_CHECKING:  # a type checker sees the table's fields as attributes of any type
        __dataclass_fields__: ClassVar[dict[str, Field[Any]]]  # made a dataclass by make_dataclass below
        case_id: str
        from_seq_len: tuple[str, ...]
        extra: dict

        def __init__(self, **fields: Any) -> None: ...

        def __getattr__(self, name: str) -> Any: ...

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Case:
        data = json.loads(text)
        data["plugins"] = tuple(data.get("plugins") or ())
        data["from_seq_len"] = tuple(data.get("from_seq_len") or ())
        data["extra"] = data.get("extra") or {}
        return cls(**data)

    def parameters(self) -> dict:
        """The case's row parameters (harness.suite.parameters.row_parameters): what its row starts with."""
        values = asdict(self) | self.extra
        return {key: values.get(key) for key in row_parameters()}

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


def _case_fields() -> list[tuple]:
    # A task parameter is None in a case it does not apply to (an attention case, or an LSH task case's
    # full_attention); the build passes every other parameter.
    from_table = [(f"{p.name}_bytes" if p.type == "size" else p.name, Any,
                   field(default=None) if p.default is None or p.role == "task" else MISSING)
                  for p in parameters(lambda p: p.name in BUILT_IN)]
    made = from_table + list(_RUN_FIELDS)
    # Fields without a default first (a dataclass needs them so); Cases are always built by keyword.
    return ([(n, t) for n, t, d in made if d is MISSING]
            + [(n, t, d if isinstance(d, type(field())) else field(default=d)) for n, t, d in made if d is not MISSING])


if TYPE_CHECKING:
    Case = _CaseRecord
else:
    #: One measurement of one backend at one configuration: a frozen dataclass whose fields are the
    #: built-in parameters (the table) and _RUN_FIELDS.
    Case = make_dataclass("Case", _case_fields(), bases=(_CaseRecord,), frozen=True)
    Case.__module__ = __name__  # where pickle (Ray) finds it


# Case fields that are not parameters but are hashed only when set (added after ids were published).
_HASHED_WHEN_SET = {"task_config": None}
# Case fields that say how a case was made or where its files lie, not what it measures.
_NOT_HASHED = ("plugin_dir", "from_seq_len", "depends_on", "extra", "phases", "peak_live", "profile")


def case_id(params: dict) -> str:
    """A readable, stable id: the main parameters, then a hash of everything that defines the case.

    Where the suite file lies (plugin_dir) is left out so that ids do not depend on the checkout's
    path, and so is from_seq_len, which says how values were chosen, not what they are. A parameter
    whose default is not hashed (harness.suite.parameters: added after ids were published, or a
    plugin's) is hashed only when set to something else, so that the cases that existed before it
    keep their ids (resume and cross-run comparisons match on them).
    """
    p = params
    when_set = _HASHED_WHEN_SET | {q.name: q.default for q in parameters(lambda q: not q.hashed_default)}
    plugin_defaults = {q.name: q.default for q in plugin_parameters()}
    extra = {k: v for k, v in (p.get("extra") or {}).items() if k not in plugin_defaults or v != plugin_defaults[k]}
    hashed = {k: v for k, v in p.items() if k not in _NOT_HASHED and not (k in when_set and v == when_set[k])}
    hashed.update(extra)
    lsh = "" if p["n_hashes"] is None else f"-nb{p['n_buckets']}-r{p['n_hashes']}-c{p['chunk_len']}"
    workload = "" if p["workload"] == "attention" else f"{p['workload']}-"
    if p.get("task"):
        trained = f"-train{p['train_n_hashes']}" + ("" if p["eval_n_hashes"] is None else f"-eval{p['eval_n_hashes']}")
        if p.get("full_attention") not in (None, when_set["full_attention"]):  # named when not the default
            trained += f"-full{p['full_attention']}"
        workload = f"{p['task']}{trained}-"
    plugins = "".join(f"-{q.name}{extra[q.name]}" for q in plugin_parameters() if q.name in extra)
    readable = (f"{p['backend']}-{workload}{p['mode']}-n{p['seq_len']}-b{p['batch']}-h{p['heads']}-d{p['d_head']}"
                f"{lsh}{'-causal' if p['causal'] else ''}{plugins}-{p['dtype']}-{p['device']}")
    digest = hashlib.sha1(json.dumps(hashed, sort_keys=True, default=list).encode()).hexdigest()[:8]
    return f"{readable}-{digest}"
