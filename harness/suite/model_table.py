"""The [model] table: the language model of workload = "model" cases (impls.model.ModelConfig fields, not
the LSH ones nor causal, which are case parameters, and `reversible`), swept as model.<key>."""
from __future__ import annotations

import copy
import dataclasses
from typing import Any

from ..errors import UserError
from .checks import MODEL_PREFIX, check_keys, flat_dotted_keys, is_int

# [model] keys that the case sets: LSH settings and causality are case axes, swept like any other.
MODEL_KEYS_FROM_CASE = ("n_hashes", "chunk_len", "n_buckets", "causal", "dedup")
MODEL_EXTRA_KEYS = ("reversible",)  # passed to impls.model.build_model, not a ModelConfig field
MODEL_HINT = "model keys go into [model], or as model.<key> into [sweep] / [[include]]"


def model_fields() -> list[str]:
    from impls.model import ModelConfig

    return [f.name for f in dataclasses.fields(ModelConfig) if f.name not in MODEL_KEYS_FROM_CASE]


def model_keys() -> list[str]:
    """Every key a [model] table may hold."""
    return model_fields() + list(MODEL_EXTRA_KEYS)


def check_model_keys(table: dict, where: str, section: str) -> None:
    for key in table:
        if key in MODEL_KEYS_FROM_CASE:
            raise UserError(f"{where}: {section} {key} is a case parameter: set it in [defaults] or [sweep]")
    check_keys(table, model_keys(), where, section)


def flat_model_keys(table: dict, where: str, section: str) -> dict:
    """{"model": {"layers": [2, 4]}} (TOML `model.layers = [2, 4]`) -> {"model.layers": [2, 4]}."""
    flat, nested = flat_dotted_keys(table, "model", where, section)
    if nested is not None:
        check_model_keys(nested, where, f"{section} model.")
    return flat


def resolve_model(model: dict, p: dict, where: str) -> dict:
    if not model and not any(k.startswith(MODEL_PREFIX) for k in p):
        raise UserError(f"{where}: workload = \"model\" (or mode = \"train_step\") needs a [model] table")
    case_model = copy.deepcopy(model)
    case_model.update({k[len(MODEL_PREFIX):]: v for k, v in p.items() if k.startswith(MODEL_PREFIX)})
    if "reversible" in case_model and not isinstance(case_model["reversible"], bool):
        raise UserError(f"{where}: [model] reversible must be true or false, "
                        f"got reversible={case_model['reversible']!r}")
    d_model, heads = case_model.get("d_model"), case_model.get("heads")
    if not (is_int(d_model) and is_int(heads) and heads >= 1 and d_model >= 1 and d_model % heads == 0):
        raise UserError(f"{where}: [model] needs integers d_model and heads with d_model % heads == 0, "
                        f"got d_model={d_model!r}, heads={heads!r}")
    return case_model


def check_model_config(case_model: dict, p: dict, n_buckets, chunk_len, n_hashes, dedup, where: str) -> None:
    """Build the ModelConfig the worker will build, so that a bad value is an error here."""
    from impls.model import ModelConfig

    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in case_model.items()
                              if k not in MODEL_EXTRA_KEYS}
    fields.setdefault("max_seq_len", p["seq_len"])
    lsh = {} if n_hashes is None else {"n_hashes": n_hashes, "chunk_len": chunk_len, "n_buckets": n_buckets,
                                       "dedup": bool(dedup)}
    try:
        ModelConfig(**fields, **lsh, causal=p["causal"])
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where}: [model]: {exc}") from None
