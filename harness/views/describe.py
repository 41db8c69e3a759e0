"""How the terminal names a case: its mode, the model keys that tell rows apart, a one-line setting."""
from __future__ import annotations

import json

from ..suite.parameters import flag_labels

MODE_SHORT = {"forward": "fwd", "forward_backward": "fwd+bwd", "train_step": "train step"}


def varying_model_keys(rows: list[dict]) -> list[str]:
    """The model keys whose value differs between rows (the ones worth naming)."""
    models = [r.get("model") or {} for r in rows]
    keys = sorted({k for m in models for k in m})
    return [k for k in keys if len({json.dumps(m.get(k), default=str) for m in models}) > 1]


def describe(row: dict, with_backend: bool = False, leave_out=(), model_keys=None) -> str:
    """e.g. "layer fwd+bwd, 16,384 tokens, batch 1, 4 rounds, chunk 64"."""
    parts = [row["backend"]] if with_backend else []
    workload = row.get("workload") or "attention"
    mode = str(row.get("mode"))
    mode = MODE_SHORT.get(mode, mode)
    parts.append(mode if workload == "attention" else f"{workload} {mode}")
    parts.append(f"{row['seq_len']:,} tokens" if isinstance(row.get("seq_len"), int) else "")
    if row.get("batch") not in (None, 1):
        parts.append(f"batch {row['batch']}")
    if row.get("n_hashes") is not None:
        parts.append(f"{row['n_hashes']} rounds, chunk {row['chunk_len']}")
    parts += flag_labels(row)  # "dedup", "buckets replayed"
    if row.get("inputs") not in (None, "randn"):
        parts.append(f"{row['inputs']} inputs")
    if row.get("causal"):
        parts.append("causal")
    if row.get("dtype") not in (None, "float32"):
        parts.append(row["dtype"])
    if row.get("device") not in (None, "cpu"):
        parts.append(row["device"])
    model = {k: v for k, v in (row.get("model") or {}).items()
             if k not in leave_out and (model_keys is None or k in model_keys)}
    if model:
        parts.append(" ".join(f"{k}={v}" for k, v in model.items()))
    return ", ".join(p for p in parts if p)
