"""One case's parameters -> Case(s): the table's checks (harness.suite.parameters), then what depends on
the backend, the workload and the suite's settings; every problem is one UserError line."""
from __future__ import annotations

import json
from typing import Any

from ..errors import UserError
from ..units import parse_size
from .case import Case, case_id
from .checks import MODEL_PREFIX, did_you_mean, expect, is_int
from .model_table import check_model_config, resolve_model
from .parameters import dense_backends, parameters, plugin_parameters
from .settings import PROFILE_SETTINGS


def check_parameters(p: dict, where: str) -> None:
    """Each parameter a suite sets against its declaration (type, range, choices); the backend is
    checked against the registry by the caller."""
    for parameter in parameters(lambda q: q.in_suite and q.name != "backend"):
        error = parameter.suite_error(p[parameter.name])
        if error:
            raise UserError(f"{where}: {error}")


def check_applies(case: dict, where: str) -> None:
    """A parameter set to something else than its default in a case it means nothing for is an error."""
    for parameter in parameters(lambda q: q.applies is not None):
        value, applies = case[parameter.name], parameter.applies
        if value != parameter.default and applies is not None and not applies(case):
            shown = json.dumps(value, default=str)
            raise UserError(f"{where}: {parameter.name} = {shown} needs {parameter.applies_to}, got "
                            f"backend={case['backend']!r} ({case['backend_kind']}), workload={case['workload']!r}"
                            + (f", task={case['task']!r}" if case.get("task") is not None else ""))


def make_case(params: dict, settings: dict, model: dict, known: list[str], where: str) -> Case:
    import impls

    p = dict(params)
    name = p["backend"]
    expect(isinstance(name, str), where, "backend", name, "a backend name")
    if name not in known:
        raise UserError(f"{where}: unknown backend {name!r}{did_you_mean(name, known)}; "
                        f"known: {', '.join(known)}")
    info = impls.backend_info(name)
    kind = info.kind
    check_parameters(p, where)
    if p["mode"] == "train_step":
        # An optimizer step needs parameters: train_step is a step of the model (the default
        # workload "attention" is read as "model" here, so older suites keep their meaning).
        expect(p["workload"] in ("model", "attention"), where, "workload", p["workload"],
               "\"model\" with mode = \"train_step\"")
        p["workload"] = "model"
    check_applies(p | {"backend_kind": kind}, where)
    if p["n_buckets"] == "auto" and p["chunk_len"] == "auto":
        raise UserError(f"{where}: n_buckets and chunk_len cannot both be \"auto\" "
                        f"(seq_len={p['seq_len']})")
    if settings["fixed_tokens"] is not None:
        if settings["fixed_tokens"] % p["seq_len"]:
            raise UserError(f"{where}: [suite] fixed_tokens={settings['fixed_tokens']} is not a multiple "
                            f"of seq_len={p['seq_len']}")
        p["batch"] = settings["fixed_tokens"] // p["seq_len"]
    expect(is_int(p["batch"]) and p["batch"] >= 1, where, "batch", p["batch"], "a positive integer")
    mem_limit = mem_limit_bytes(p["mem_limit"], where)

    from_seq_len = ["batch"] if settings["fixed_tokens"] is not None else []
    # LSH settings mean nothing for a dense baseline: None there, so that a sweep over n_hashes does
    # not run the same dense case once per value.
    lsh_only: dict[str, Any] = {q.name: None for q in parameters(lambda q: q.role == "lsh-only")}
    if kind != "dense":
        lsh_only = {key: p[key] for key in lsh_only}
        lsh_only["n_buckets"], lsh_only["chunk_len"] = resolve_buckets(p, where)
        from_seq_len += [key for key in ("n_buckets", "chunk_len") if p[key] == "auto"]
    heads, d_head = p["heads"], p["d_head"]
    case_model = None
    if p["workload"] == "model":
        case_model = resolve_model(model, p, where)
        if "max_seq_len" not in model and f"{MODEL_PREFIX}max_seq_len" not in p:
            from_seq_len.append(f"{MODEL_PREFIX}max_seq_len")
        heads, d_head = case_model["heads"], case_model["d_model"] // case_model["heads"]
        check_model_config(case_model, p, lsh_only["n_buckets"], lsh_only["chunk_len"], lsh_only["n_hashes"],
                           lsh_only["dedup"], where)
        if kind == "peer" and info.model is None:
            raise UserError(f"{where}: backend {name!r} offers no language model (workload = \"model\")")
    elif any(key.startswith(MODEL_PREFIX) for key in p):
        raise UserError(f"{where}: model.* keys apply to workload = \"model\" cases, got workload={p['workload']!r}")
    if p["workload"] == "layer" and p["mode"] not in ("forward", "forward_backward"):
        raise UserError(f"{where}: workload = \"layer\" times forward or forward_backward, got mode={p['mode']!r}")
    fidelity = (settings["fidelity"] and p["workload"] == "attention" and kind != "dense"
                and p["seq_len"] <= settings["fidelity_max_seq_len"])
    case_params = {
        "suite": settings["name"], "backend": name, "backend_kind": kind, "workload": p["workload"],
        "mode": p["mode"], "seq_len": p["seq_len"], "batch": p["batch"], "heads": heads, "d_head": d_head,
        **lsh_only, "causal": p["causal"], "dtype": p["dtype"], "device": p["device"], "seed": p["seed"],
        "repeats": p["repeats"], "warmup": p["warmup"], "timeout_s": float(p["timeout_s"]),
        "mem_limit_bytes": mem_limit, "fidelity": fidelity, "count_flops": settings["count_flops"],
        "interpret": settings["interpret"], "threads": settings["threads"],
        "plugins": settings["plugins"], "plugin_dir": settings["plugin_dir"],
        "model": case_model, "from_seq_len": tuple(from_seq_len), "inputs": p["inputs"],
        "extra": plugin_values(p), **{key: settings[key] for key in PROFILE_SETTINGS},
    }
    return Case(case_id=case_id(case_params), **case_params)


def plugin_values(p: dict) -> dict:
    """The values of the parameters plugins declared (Case.extra)."""
    return {q.name: p[q.name] for q in plugin_parameters() if q.name in p}


def resolve_buckets(p: dict, where: str) -> tuple[int, int]:
    """(n_buckets, chunk_len) of a case by impls' one "auto" rule; n_buckets even."""
    from impls.config import resolve_buckets as rule

    if p["n_buckets"] != "auto" and p["n_buckets"] % 2:
        raise UserError(f"{where}: n_buckets must be even, got n_buckets={p['n_buckets']}")
    try:
        return rule(p["seq_len"], None if p["n_buckets"] == "auto" else p["n_buckets"],
                    None if p["chunk_len"] == "auto" else p["chunk_len"])
    except ValueError as exc:
        raise UserError(f"{where}: {exc}") from None


def mem_limit_bytes(value: Any, where: str) -> int | None:
    if value in ("none", None):
        return None
    try:
        return parse_size(value)
    except ValueError:
        raise UserError(f"{where}: mem_limit must be a size such as \"512 MiB\" or \"none\", "
                        f"got mem_limit={value!r}") from None


# --- task cases ---------------------------------------------------------------------------------------

def _task_cases(params: dict, settings: dict, table: dict, known: list[str], where: str) -> list[Case]:
    """A trained model and one evaluation of it: the training case (made once per training setting,
    however many evaluations name it) and the evaluation, which depends on it."""
    import impls

    from ..tasks import get_task, list_tasks

    p = dict(params)
    name = p["task"]
    tasks = list_tasks()
    if name not in tasks:
        raise UserError(f"{where}: unknown task {name!r}{did_you_mean(name, tasks)}; known: {', '.join(tasks)}")
    task = get_task(name)
    try:
        config = task.resolve_table(table)
        shape = task.shape(config)
    except ValueError as exc:
        raise UserError(f"{where}: [task]: {exc}") from None
    expect(p["backend"] in known and impls.backend_info(p["backend"]).kind == "lsh", where, "backend",
            p["backend"], "an LSH backend (it runs the hash rounds; full attention is full_attention's)")
    for key in ("train_n_hashes", "eval_n_hashes"):
        expect(p[key] is None or (is_int(p[key]) and p[key] >= 0), where, key, p[key],
                "an integer >= 0 (0 = full attention)")
    expect(p["train_n_hashes"] is not None, where, "train_n_hashes", None, "set for a task case (0 = full attention)")
    full = p["full_attention"]
    dense = dense_backends()
    if full not in dense:
        raise UserError(f"{where}: full_attention must be a dense backend, got full_attention={full!r}"
                        f"{did_you_mean(str(full), dense)}; dense backends: {', '.join(dense)}")
    expect(is_int(p["chunk_len"]) and p["chunk_len"] >= 1, where, "chunk_len", p["chunk_len"],
            "a positive integer for a task")
    expect(is_int(p["seed"]) and 0 <= p["seed"] < 2 ** 31, where, "seed", p["seed"], "an integer in [0, 2**31)")
    # A task trains and evaluates in the dtypes it declares: another dtype would be a row that says what
    # did not happen.
    expect(p["dtype"] in task.dtypes, where, "dtype", p["dtype"],
           " | ".join(f'"{d}"' for d in task.dtypes) + " for a task")
    expect(isinstance(p["device"], str) and (p["device"] == "cpu" or p["device"].startswith("cuda")),
            where, "device", p["device"], "'cpu', 'cuda' or 'cuda:N'")
    expect(isinstance(p["timeout_s"], (int, float)) and not isinstance(p["timeout_s"], bool)
            and p["timeout_s"] > 0, where, "timeout_s", p["timeout_s"], "a positive number of seconds")
    seq_len = shape.seq_len
    if seq_len % p["chunk_len"]:
        raise UserError(f"{where}: chunk_len={p['chunk_len']} does not tile the task's seq_len={seq_len}")
    n_buckets = resolve_buckets({**p, "seq_len": seq_len}, where)[0] if p["n_buckets"] == "auto" else p["n_buckets"]
    expect(is_int(n_buckets) and n_buckets >= 2 and n_buckets % 2 == 0, where, "n_buckets", n_buckets,
            "an even integer >= 2 or \"auto\"")

    def one(mode: str, n_hashes: int, depends_on: str | None) -> Case:
        backend = p["backend"] if n_hashes else full
        # Only a case whose model meets full attention (trained with it, or evaluated with it) names it:
        # an LSH training and its LSH evaluations are the same cases whatever full_attention says, so a
        # sweep over it trains each LSH model once.
        uses_full = p["train_n_hashes"] == 0 or (mode == "evaluate" and p["eval_n_hashes"] == 0)
        fields = {
            **{q.name: None for q in parameters(lambda q: q.role == "lsh-only")},
            "suite": settings["name"], "backend": backend, "backend_kind": impls.backend_info(backend).kind,
            "workload": "task", "mode": mode, "seq_len": seq_len, "batch": shape.batch,
            "heads": shape.heads, "d_head": shape.d_head,
            "n_buckets": n_buckets if n_hashes else None, "n_hashes": n_hashes or None,
            "chunk_len": p["chunk_len"] if n_hashes else None, "causal": task.causal,
            "dedup": False if n_hashes else None,
            "dtype": p["dtype"], "device": p["device"], "seed": p["seed"], "repeats": 1,
            "warmup": 0, "timeout_s": float(p["timeout_s"]), "mem_limit_bytes": mem_limit_bytes(p["mem_limit"], where),
            "fidelity": False, "count_flops": False, "interpret": settings["interpret"], "threads": settings["threads"],
            "plugins": settings["plugins"], "plugin_dir": settings["plugin_dir"], "inputs": None, "task": name,
            "train_n_hashes": p["train_n_hashes"], "eval_n_hashes": None if mode == "train" else p["eval_n_hashes"],
            "task_config": config, "depends_on": depends_on,
        }
        if uses_full:  # hashed into the id only away from its default (parameters: hashed_default)
            fields["full_attention"] = full
        return Case(case_id=case_id(fields), **fields)

    training = one("train", p["train_n_hashes"], None)
    if p["eval_n_hashes"] is None:
        return [training]
    return [training, one("evaluate", p["eval_n_hashes"], training.case_id)]
